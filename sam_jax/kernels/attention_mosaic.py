"""The fused attention as a Mosaic kernel (TPU), written in Pallas.

The same maths as the Triton kernel, laid out for the TPU: one program per (group, query
block of up to 512 queries), the group's whole K and V resident in VMEM (their block index does
not change along the query axis, so they are copied in once per group), and a loop over key
blocks of whole key rows.

Queries run along the 128 lanes and keys along the sublanes: the program computes the
transposed logits s^T = k_block @ q^T (block_k, block_q), so that
- the rel_w tile (row, block_q) of the query block, repeated once per row of the key block, is
  built once before the loop;
- each row's rel_h factor is one (1, block_q) row of rel_h^T, broadcast along the sublanes;
- both are plain vector-unit adds in float32, no MXU pass for the bias;
- the softmax reduces over sublanes, and out^T += v_block^T @ p^T is an ordinary product.
Key blocks are a multiple of 128 keys (lcm of the padded row and 128: two rows of 64 at 1024 px,
eight of 48 at 768, eight padded rows of 16 for a 14x14 window), so V^T blocks stay lane-aligned;
K, V^T and rel_h^T are split into blocks along a leading axis and the loop indexes only that
axis, never a tiled one.

Products: bfloat16 inputs on the MXU in bfloat16 with float32 accumulation (P rounded to
bfloat16, as the XLA path); float32 at exact precision with `Precision.HIGHEST` (the MXU's
six-pass bfloat16 product, float32-equivalent); float32 at "fast" precision with the default
single pass.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from . import layout as L

MAX_BLOCK_Q = 512


def _kernel(q_ref, k_ref, vt_ref, rh_ref, rw_ref, o_ref, *, layout: L.KeyRows, precision):
    """q_ref (bq, C); k_ref (blocks, bk, C) and vt_ref (blocks, C, bk): the whole group;
    rh_ref (blocks, rows, bq) and rw_ref (row, bq) float32; o_ref (C, bq) float32 (out^T)."""
    bq, rows, row = q_ref.shape[0], layout.rows, layout.row
    q = q_ref[...]
    rel_w = jnp.concatenate([rw_ref[...]] * rows, axis=0) if rows > 1 else rw_ref[...]  # (bk, bq)

    def body(b, state):
        m, l, acc = state  # (1, bq), (1, bq), (C, bq)
        s = jax.lax.dot_general(k_ref[b], q, (((1,), (1,)), ((), ())), precision=precision,
                                preferred_element_type=jnp.float32)
        rh = rh_ref[b]  # (rows, bq): one factor per key row, broadcast along the row's keys
        rel_h = jnp.concatenate([jnp.broadcast_to(rh[r:r + 1], (row, bq)) for r in range(rows)], axis=0)
        s = s + rel_w + rel_h
        m_new = jnp.maximum(m, s.max(axis=0, keepdims=True))
        p = jnp.exp(s - m_new)
        alpha = jnp.exp(m - m_new)
        l = l * alpha + p.sum(axis=0, keepdims=True)
        pv = jax.lax.dot_general(vt_ref[b], p.astype(vt_ref.dtype), (((1,), (0,)), ((), ())), precision=precision,
                                 preferred_element_type=jnp.float32)
        return m_new, l, acc * alpha + pv

    init = (jnp.full((1, bq), -jnp.inf, jnp.float32), jnp.zeros((1, bq), jnp.float32),
            jnp.zeros(o_ref.shape, jnp.float32))
    _, l, acc = jax.lax.fori_loop(0, layout.blocks, body, init)
    o_ref[...] = acc / l


def attention(q, k, v, rel_h, rel_w, k_size: tuple[int, int], *, exact: bool, interpret: bool = False,
              block_q: int = MAX_BLOCK_Q) -> jax.Array:
    """`fused_attention` on Mosaic: q, k, v (G, N, C) (q scaled), rel_h (G, N, k_h) and rel_w
    (G, N, k_w) or None. Returns (G, N, C) float32."""
    G, N, C = q.shape
    row, block_k = L.lane_rows(k_size[1])
    layout = L.key_rows(k_size, row, block_k)
    bq = min(block_q, L.round_up(N, 128))
    n_q, c_pad = L.round_up(N, bq), L.round_up(C, 16)
    rel_h, rel_w = L.pad_factors(rel_h, rel_w, layout, n_q, G, N)
    # Blocks along a leading axis; the factors and V transposed (queries and keys on lanes).
    rh_t = rel_h.transpose(0, 2, 1).reshape(G, layout.blocks, layout.rows, n_q)
    rw_t = rel_w.transpose(0, 2, 1)
    q = L.pad_queries(q, n_q, c_pad)
    k = L.pad_keys(k, layout, c_pad).reshape(G, layout.blocks, layout.block_k, c_pad)
    v_t = L.pad_keys(v, layout, c_pad).reshape(G, layout.blocks, layout.block_k, c_pad).transpose(0, 1, 3, 2)
    precision = None
    if q.dtype == jnp.float32:
        precision = jax.lax.Precision.HIGHEST if exact else jax.lax.Precision.DEFAULT
    whole_group = lambda shape: pl.BlockSpec((None, *shape), lambda g, i: (g, 0, 0, 0))
    out_t = pl.pallas_call(
        functools.partial(_kernel, layout=layout, precision=precision),
        grid=(G, n_q // bq),
        in_specs=[pl.BlockSpec((None, bq, c_pad), lambda g, i: (g, i, 0)),
                  whole_group((layout.blocks, layout.block_k, c_pad)),
                  whole_group((layout.blocks, c_pad, layout.block_k)),
                  pl.BlockSpec((None, layout.blocks, layout.rows, bq), lambda g, i: (g, 0, 0, i)),
                  pl.BlockSpec((None, layout.row, bq), lambda g, i: (g, 0, i))],
        out_specs=pl.BlockSpec((None, c_pad, bq), lambda g, i: (g, 0, i)),
        out_shape=jax.ShapeDtypeStruct((G, c_pad, n_q), jnp.float32),
        compiler_params=pltpu.CompilerParams(dimension_semantics=("parallel", "arbitrary")),
        interpret=interpret,
        name="sam_attention_mosaic",
    )(q, k, v_t, rh_t, rw_t)
    return out_t.transpose(0, 2, 1)[:, :N, :C]
