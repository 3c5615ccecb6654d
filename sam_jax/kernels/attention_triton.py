"""The fused attention as a Triton kernel (NVIDIA GPUs), written in Pallas.

One program per (group, query block of 64) loops over key blocks of whole key rows
(`layout.py`): for SAM's 64x64 global grid a block is one row of 64 keys, as in
segment-anything-fast's aligned kernel; for a 14x14 window (rows padded to 16 keys, to 16 rows)
four rows, so a window is four blocks of 64 keys. Float32 at exact precision halves the blocks
(half rows; two rows of a window) to stay within registers and shared memory.

- Logits: q @ k^T on tensor cores, float32 accumulation; the head dim in power-of-two tiles
  (vit_h's 80 as 64 + 16 rather than padded to 128: 37% fewer products and registers).
- Bias: float32, added to the float32 logits as two broadcast adds. The rel_w tile is loaded
  once per query block (gathered into a repeating tile when a block holds several rows); per
  block one rel_h column (several, gathered, for multi-row blocks). Padded keys are -inf in
  the factors, so no mask is computed per block.
- Online softmax in float32; P @ V on tensor cores with P in the inputs' precision.

Operand precision, per `mode`: "bf16" (bfloat16 inputs: bfloat16 products, P rounded to
bfloat16 as the XLA bfloat16 path does), "tf32x3" (float32 inputs at exact precision: every
product split into three TF32 products, `split.py`, error ~1e-7 against float32), "tf32"
(float32 inputs at the "fast" precision: one TF32 product, XLA's default on these GPUs).
"""

from __future__ import annotations

import functools
import operator
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

from . import layout as L
from .split import dot_tf32x3, split_tf32

MODES = ("bf16", "tf32x3", "tf32")


class Config(NamedTuple):
    block_q: int  # queries per program
    block_k: int  # keys per block, at least one padded row
    num_warps: int
    num_stages: int


# Chosen so that no compiled kernel spills on sm_90a and several programs share an SM
# (tests/test_kernel_build.py checks the spills; the shared memory per program is in its output).
CONFIGS = {
    "bf16": Config(block_q=64, block_k=64, num_warps=4, num_stages=2),
    # float32 operands (twice the bytes; three products per dot for tf32x3): half-row key blocks
    # keep registers and shared memory within one program's share of two per SM.
    "tf32": Config(block_q=64, block_k=32, num_warps=4, num_stages=2),
    "tf32x3": Config(block_q=64, block_k=32, num_warps=4, num_stages=2),
}


def head_tiles(c: int) -> tuple[tuple[int, int], ...]:
    """(start, size) power-of-two tiles covering c (a multiple of 16), largest first: 80 -> 64 + 16."""
    tiles, start = [], 0
    for bit in reversed(range(c.bit_length())):
        if c & (1 << bit):
            tiles.append((start, 1 << bit))
            start += 1 << bit
    return tuple(tiles)


def _operand(x: jax.Array, mode: str):
    """x as the products take it: its TF32 split for tf32x3, else itself."""
    return split_tf32(x) if mode == "tf32x3" else x


def _product(a, b, contract_b: int, mode: str) -> jax.Array:
    """a (m, k) @ b (k, n) (contract_b=0) or b (n, k) (contract_b=1), float32 out."""
    if mode == "tf32x3":
        return dot_tf32x3(a, b, contract_b)
    precision = jax.lax.Precision.HIGH if mode == "tf32" else None  # HIGH: TF32 in Pallas' Triton lowering
    return jax.lax.dot_general(a, b, (((1,), (contract_b,)), ((), ())), precision=precision,
                               preferred_element_type=jnp.float32)


def _kernel(q_ref, k_ref, v_ref, rh_ref, rw_ref, o_ref, *, layout: L.KeyRows, tiles, mode: str):
    """q_ref (bq, C), k_ref and v_ref (n_keys, C) (the whole group), rh_ref (bq, k_h_padded),
    rw_ref (bq, row) float32; o_ref (bq, C) float32."""
    bq, bk, row = q_ref.shape[0], layout.block_k, layout.row
    q = [_operand(q_ref[:, pl.ds(*tile)], mode) for tile in tiles]
    if layout.rows > 1:  # the rel_w tile of every block: the row's factors once per row
        i = jax.lax.broadcasted_iota(jnp.int32, (bq, bk), 0)
        j = jax.lax.broadcasted_iota(jnp.int32, (bq, bk), 1)
        rel_w = rw_ref[i, jax.lax.rem(j, row)]
    elif layout.parts == 1:
        rel_w = rw_ref[...]

    def bias(b):
        """The (bq, bk) or broadcastable parts of block b's bias: rel_h and rel_w."""
        if layout.rows > 1:  # one rel_h column per row of the block, gathered
            return rel_w, rh_ref[i, b * layout.rows + jax.lax.div(j, row)]
        if layout.parts > 1:  # part b % parts of row b // parts
            part = pl.ds(pl.multiple_of(jax.lax.rem(b, layout.parts) * bk, bk), bk)
            return rw_ref[:, part], rh_ref[:, pl.ds(jax.lax.div(b, layout.parts), 1)]
        return rel_w, rh_ref[:, pl.ds(b, 1)]  # one row: one (bq, 1) column

    def body(b, state):
        m, l, acc = state
        keys = pl.ds(pl.multiple_of(b * bk, bk), bk)
        s = functools.reduce(operator.add, (_product(qt, _operand(k_ref[keys, pl.ds(*tile)], mode), 1, mode)
                                            for qt, tile in zip(q, tiles)))
        rel_w_b, rel_h_b = bias(b)
        s = s + rel_w_b + rel_h_b
        m_new = jnp.maximum(m, s.max(axis=1, keepdims=True))
        p = jnp.exp(s - m_new)
        alpha = jnp.exp(m - m_new)
        l = l * alpha + p.sum(axis=1, keepdims=True)
        p = _operand(p.astype(v_ref.dtype), mode)  # bfloat16 P for bfloat16 V, as the XLA path
        acc = tuple(a * alpha + _product(p, _operand(v_ref[keys, pl.ds(*tile)], mode), 0, mode)
                    for a, tile in zip(acc, tiles))
        return m_new, l, acc

    init = (jnp.full((bq, 1), -jnp.inf, jnp.float32), jnp.zeros((bq, 1), jnp.float32),
            tuple(jnp.zeros((bq, c), jnp.float32) for _, c in tiles))
    _, l, acc = jax.lax.fori_loop(0, layout.blocks, body, init)
    for a, tile in zip(acc, tiles):
        o_ref[:, pl.ds(*tile)] = a / l


def attention(q, k, v, rel_h, rel_w, k_size: tuple[int, int], *, mode: str, interpret: bool = False,
              config: Config | None = None) -> jax.Array:
    """`fused_attention` on Triton: q, k, v (G, N, C) (q scaled; bfloat16 for mode "bf16", else
    float32), rel_h (G, N, k_h) and rel_w (G, N, k_w) or None. Returns (G, N, C) float32."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    G, N, C = q.shape
    cfg = config or CONFIGS[mode]
    layout = L.key_rows(k_size, L.pow2(k_size[1]), cfg.block_k)
    bq = min(cfg.block_q, L.pow2(N))
    n_q, c_pad = L.round_up(N, bq), L.round_up(C, 16)
    rel_h, rel_w = L.pad_factors(rel_h, rel_w, layout, n_q, G, N)
    q = L.pad_queries(q, n_q, c_pad)
    k, v = (L.pad_keys(x, layout, c_pad) for x in (k, v))
    per_query_block = lambda width: pl.BlockSpec((None, bq, width), lambda g, i: (g, i, 0))
    whole_group = pl.BlockSpec((None, layout.n_keys, c_pad), lambda g, i: (g, 0, 0))
    out = pl.pallas_call(
        functools.partial(_kernel, layout=layout, tiles=head_tiles(c_pad), mode=mode),
        grid=(G, n_q // bq),
        in_specs=[per_query_block(c_pad), whole_group, whole_group,
                  per_query_block(layout.k_h_padded), per_query_block(layout.row)],
        out_specs=per_query_block(c_pad),
        out_shape=jax.ShapeDtypeStruct((G, n_q, c_pad), jnp.float32),
        compiler_params=pltriton.CompilerParams(num_warps=cfg.num_warps, num_stages=cfg.num_stages),
        interpret=interpret,
        name="sam_attention_triton",
    )(q, k, v, rel_h, rel_w)
    return out[:, :N, :C]
