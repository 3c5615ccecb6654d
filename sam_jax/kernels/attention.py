"""Fused attention with SAM's decomposed relative-position bias, as a Pallas kernel.

    out = softmax(q @ k^T + bias) @ v,   bias[i, j] = rel_h[i, ky(j)] + rel_w[i, kx(j)]

for key j at (ky, kx) = divmod(j, k_w) of the key grid. Flash-attention style: each program owns
a block of queries, streams the keys in blocks through an online softmax, and keeps only
(block_q, C) state, so neither the (N, N) logits nor an (N, N) bias is ever written to memory.

The bias enters each block as one more small product: the query block's factors
[rel_h | rel_w] (block_q, k_h + k_w) against the key block's one-hot coordinates
(block_k, k_h + k_w), a matrix with two ones per row (ky and k_h + kx). At float32-exact
precision this product is the sum rel_h + rel_w, rounded once; the logits and P @ V products
run at the precision the caller traces under (see `sam_jax.numerics`) and in the inputs' dtype
(bfloat16 inputs: float32 accumulation and softmax, P cast to bfloat16 for P @ V, as the XLA path).

Two drivers share the block update:
- "triton" (NVIDIA GPUs): a (groups, query blocks) grid; each program loops over the key blocks.
  Triton tiles must be powers of two, so the head dim, the factor width and the blocks are
  padded to powers of two (zeros, and padded keys are masked out).
- "mosaic" (TPU): a (groups, query blocks, key blocks) grid whose last axis runs in order,
  carrying the softmax state in VMEM scratch between key blocks: the canonical TPU pattern.
Both run in Pallas interpret mode on any backend (`interpret=True`), which the tests use.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu
from jax.experimental.pallas import triton as pltriton

BACKENDS = ("triton", "mosaic")
# (block_q, block_k) per backend: 64 keeps a Triton program's float32 tiles (head dim padded up
# to 128 for vit_h) in registers; 128 matches the TPU's 128-lane tiles.
BLOCKS = {"triton": (64, 64), "mosaic": (128, 128)}


def _pow2(n: int, minimum: int = 16) -> int:
    return max(minimum, 1 << (n - 1).bit_length())


def _dot(a, b, contract_b: int, precision=None):
    """a (m, k) against b (k, n) (contract_b=0) or b (n, k) (contract_b=1), float32 out."""
    return jax.lax.dot_general(a, b, (((1,), (contract_b,)), ((), ())), precision=precision,
                               preferred_element_type=jnp.float32)


def _block_update(q, k, v, factors, coords, key_start, n_keys, state):
    """One key block of the online softmax. q (bq, C), k and v (bk, C); factors (bq, R) and
    coords (bk, R) or None; state (m, l, acc): running max (bq, 1), sum (bq, 1), (bq, C)."""
    m, l, acc = state
    s = _dot(q, k, 1)
    if factors is not None:
        # Exact: each row of coords has ones at ky and k_h + kx, the rest zeros.
        s = s + _dot(factors, coords, 1, precision=jax.lax.Precision.HIGHEST)
    if n_keys is not None:  # padded keys take no part
        s = jnp.where(key_start + jax.lax.broadcasted_iota(jnp.int32, s.shape, 1) < n_keys, s, -jnp.inf)
    m_new = jnp.maximum(m, s.max(axis=1, keepdims=True))
    p = jnp.exp(s - m_new)
    scale = jnp.exp(m - m_new)
    return m_new, l * scale + p.sum(axis=1, keepdims=True), acc * scale + _dot(p.astype(v.dtype), v, 0)


def _looped_kernel(q_ref, k_ref, v_ref, *refs, block_k: int, n_keys, has_bias: bool):
    """Triton driver: one (group, query block) per program, a loop over the key blocks."""
    f_ref, c_ref, o_ref = refs if has_bias else (None, None, refs[0])
    q = q_ref[...]
    factors = f_ref[...] if has_bias else None
    bq = q.shape[0]

    def body(j, state):
        start = pl.multiple_of(j * block_k, block_k)
        keys = pl.ds(start, block_k)
        coords = c_ref[keys, :] if has_bias else None
        return _block_update(q, k_ref[keys, :], v_ref[keys, :], factors, coords, start, n_keys, state)

    init = (jnp.full((bq, 1), -jnp.inf, jnp.float32), jnp.zeros((bq, 1), jnp.float32), jnp.zeros(o_ref.shape, jnp.float32))
    _, l, acc = jax.lax.fori_loop(0, k_ref.shape[0] // block_k, body, init)
    o_ref[...] = (acc / l).astype(o_ref.dtype)


def _gridded_kernel(q_ref, k_ref, v_ref, *refs, block_k: int, n_keys, has_bias: bool):
    """Mosaic driver: key blocks are the innermost grid axis; the state lives in VMEM scratch."""
    f_ref, c_ref, o_ref, m_ref, l_ref, acc_ref = refs if has_bias else (None, None, *refs)
    j = pl.program_id(2)

    @pl.when(j == 0)
    def _init():
        m_ref[...] = jnp.full(m_ref.shape, -jnp.inf, jnp.float32)
        l_ref[...] = jnp.zeros(l_ref.shape, jnp.float32)
        acc_ref[...] = jnp.zeros(acc_ref.shape, jnp.float32)

    factors, coords = (f_ref[...], c_ref[...]) if has_bias else (None, None)
    state = (m_ref[...], l_ref[...], acc_ref[...])
    m_ref[...], l_ref[...], acc_ref[...] = _block_update(
        q_ref[...], k_ref[...], v_ref[...], factors, coords, j * block_k, n_keys, state)

    @pl.when(j == pl.num_programs(2) - 1)
    def _finish():
        o_ref[...] = (acc_ref[...] / l_ref[...]).astype(o_ref.dtype)


def key_coordinates(k_size: tuple[int, int], n_padded: int, width: int) -> np.ndarray:
    """(n_padded, width) float32: row j < k_h * k_w has ones at ky and k_h + kx; other rows zero."""
    k_h, k_w = k_size
    j = np.arange(k_h * k_w)
    coords = np.zeros((n_padded, width), np.float32)
    coords[j, j // k_w] = 1.0
    coords[j, k_h + j % k_w] = 1.0
    return coords


def fused_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    rel_h: jax.Array | None,
    rel_w: jax.Array | None,
    k_size: tuple[int, int],
    *,
    backend: str,
    interpret: bool = False,
    blocks: tuple[int, int] | None = None,
) -> jax.Array:
    """softmax(q @ k^T + bias) @ v for q, k, v (G, N, C) (q already scaled), the decomposed bias
    given by rel_h (G, N, k_h) and rel_w (G, N, k_w) (both None: no bias), N = k_h * k_w.
    Returns (G, N, C) float32, as `sam_jax.modeling.image_encoder.attention`.

    backend: "triton" (GPU) or "mosaic" (TPU); interpret: run the kernel in Pallas interpret mode
    (any backend); blocks: (block_q, block_k), powers of two (default `BLOCKS[backend]`,
    shrunk for short sequences)."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    G, N, C = q.shape
    bq, bk = blocks or BLOCKS[backend]
    bq, bk = min(bq, _pow2(N)), min(bk, _pow2(N))
    n_pad = -(-N // max(bq, bk)) * max(bq, bk)
    c_pad = _pow2(C) if backend == "triton" else C
    pad = lambda x, n, c: jnp.pad(x, ((0, 0), (0, n - x.shape[1]), (0, c - x.shape[2])))
    q, k, v = (pad(x, n_pad, c_pad) for x in (q, k, v))
    has_bias = rel_h is not None
    operands = [q, k, v]
    if has_bias:
        width = _pow2(sum(k_size))
        factors = pad(jnp.concatenate([rel_h, rel_w], axis=-1).astype(jnp.float32), n_pad, width)
        operands += [factors, jnp.asarray(key_coordinates(k_size, n_pad, width))]
    n_keys = N if n_pad > N else None
    params = dict(block_k=bk, n_keys=n_keys, has_bias=has_bias)
    out_shape = jax.ShapeDtypeStruct((G, n_pad, c_pad), jnp.float32)

    if backend == "triton":
        whole = lambda g, i: (g, 0, 0)
        in_specs = [pl.BlockSpec((None, bq, c_pad), lambda g, i: (g, i, 0)),
                    pl.BlockSpec((None, n_pad, c_pad), whole), pl.BlockSpec((None, n_pad, c_pad), whole)]
        if has_bias:
            in_specs += [pl.BlockSpec((None, bq, width), lambda g, i: (g, i, 0)),
                         pl.BlockSpec((n_pad, width), lambda g, i: (0, 0))]
        out = pl.pallas_call(
            functools.partial(_looped_kernel, **params),
            grid=(G, n_pad // bq),
            in_specs=in_specs,
            out_specs=pl.BlockSpec((None, bq, c_pad), lambda g, i: (g, i, 0)),
            out_shape=out_shape,
            compiler_params=pltriton.CompilerParams(num_warps=4, num_stages=2),
            interpret=interpret,
            name="sam_fused_attention",
        )(*operands)
    else:
        in_specs = [pl.BlockSpec((None, bq, c_pad), lambda g, i, j: (g, i, 0)),
                    pl.BlockSpec((None, bk, c_pad), lambda g, i, j: (g, j, 0)),
                    pl.BlockSpec((None, bk, c_pad), lambda g, i, j: (g, j, 0))]
        if has_bias:
            in_specs += [pl.BlockSpec((None, bq, width), lambda g, i, j: (g, i, 0)),
                         pl.BlockSpec((bk, width), lambda g, i, j: (j, 0))]
        out = pl.pallas_call(
            functools.partial(_gridded_kernel, **params),
            grid=(G, n_pad // bq, n_pad // bk),
            in_specs=in_specs,
            out_specs=pl.BlockSpec((None, bq, c_pad), lambda g, i, j: (g, i, 0)),
            out_shape=out_shape,
            scratch_shapes=[pltpu.VMEM((bq, 1), jnp.float32), pltpu.VMEM((bq, 1), jnp.float32),
                            pltpu.VMEM((bq, c_pad), jnp.float32)],
            compiler_params=pltpu.CompilerParams(dimension_semantics=("parallel", "parallel", "arbitrary")),
            interpret=interpret,
            name="sam_fused_attention",
        )(*operands)
    return out[:, :N, :C]
