"""Float32-exact products on TF32 tensor cores, the split written out ("TF32x3").

A float32 x is split into hi = tf32(x) and lo = tf32(x - hi), two floats with at most 11
significant bits each (TF32's 10 stored bits and the implicit one). Then

    a @ b  ~  a_lo @ b_hi + a_hi @ b_lo + a_hi @ b_hi

drops only a_lo @ b_lo and the residues x - hi - lo, both about 2^-22 of |a| |b|: the error
against a float32 product (Precision.HIGHEST) is ~1e-7 relative, where one bfloat16 split
(bf16x3) leaves ~6e-6 on SAM's attention. Every partial product of two 11-bit values is exact
in float32, and each of the three products is one TF32 tensor-core matmul with float32
accumulation (`Precision.HIGH`, which Pallas' Triton lowering maps to TF32). Because the
operands are already TF32 values, the tensor core's own truncation of its inputs changes
nothing, and a float32 product of the same operands (CPU, interpret mode) computes the same
sums: the interpret-mode tests run the GPU's arithmetic, up to the order of the float32 adds.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

# Bits of a float32 below TF32's 10-bit mantissa; adding half of their range before clearing
# them rounds to nearest (ties away from zero), carrying into the exponent when needed.
_TF32_DROP = 13
_ROUND = 1 << (_TF32_DROP - 1)
_KEEP = -(1 << _TF32_DROP)  # 0xFFFFE000 as an int32


def round_tf32(x: jax.Array) -> jax.Array:
    """float32 x rounded to the nearest TF32 value (kept in float32); finite inputs."""
    bits = jax.lax.bitcast_convert_type(x, jnp.int32)
    return jax.lax.bitcast_convert_type((bits + _ROUND) & _KEEP, jnp.float32)


def split_tf32(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(hi, lo), TF32 values with x ~ hi + lo to 2^-22 |x|; x - hi is exact in float32."""
    hi = round_tf32(x)
    return hi, round_tf32(x - hi)


def dot_tf32x3(a: tuple[jax.Array, jax.Array], b: tuple[jax.Array, jax.Array], contract_b: int) -> jax.Array:
    """a (m, k) @ b, from their splits (hi, lo): b (k, n) (contract_b=0) or (n, k) (contract_b=1).
    (m, n) float32; the small terms are summed first."""
    (a_hi, a_lo), (b_hi, b_lo) = a, b
    dot = lambda x, y: jax.lax.dot_general(x, y, (((1,), (contract_b,)), ((), ())),
                                           precision=jax.lax.Precision.HIGH, preferred_element_type=jnp.float32)
    return (dot(a_lo, b_hi) + dot(a_hi, b_lo)) + dot(a_hi, b_hi)
