"""ONNX emitters of `modeling/image_encoder.py`: the ViT image encoder, its windows and its neck
(the graph and its file: `encoder_onnx.py`).

Activations are (B, H, W, E) between the patch embedding and the neck, as in the official code;
B is dynamic, every grid static (fixed by the model's input size).

Attention is the plain batched maths of the official `Attention` (all heads in one MatMul, the
decomposed relative-position bias added to the logits before the softmax), not the CPU-blocked
schedule of `sam_jax.modeling.image_encoder.attention`: a runtime chooses its own kernels. The
relative-position tables stay initializers (the model's parameters) and are gathered in the
graph with constant indexes.
"""

from __future__ import annotations

import numpy as np

from ...modeling.common import Sequential
from ...modeling.image_encoder import ImageEncoderViT
from .builder import GraphBuilder, conv, gelu, layer_norm, linear


def _rel_pos_bias(g: GraphBuilder, q: str, attn, size: int, heads: int) -> tuple[str, str]:
    """The decomposed relative-position bias of (B', heads, N, hd) queries on a size x size grid:
    rel_h (B', heads, N, size, 1) and rel_w (B', heads, N, 1, size), official `add_decomposed_rel_pos`."""
    hd = attn.rel_pos_h.shape[1]
    # q_size == k_size here: the official relative coordinates are (q - k) + (k - 1), integers.
    idx = np.arange(size)[:, None] - np.arange(size)[None, :] + (size - 1)
    r_q = g.op("Reshape", q, g.ints([-1, heads, size, size, hd]))  # (B', n, y, x, c)
    out = []
    for axis, name in ((2, "rel_pos_h"), (3, "rel_pos_w")):
        table = g.param(getattr(attn, name))  # (2 size - 1, hd)
        rel_t = g.op("Transpose", g.op("Gather", table, g.ints(idx), axis=0), perm=[0, 2, 1])  # (q, hd, k)
        # The grid axis that indexes the table goes first, so one batched MatMul contracts c per row.
        other = 3 if axis == 2 else 2
        front = g.op("Transpose", r_q, perm=[axis, 0, 1, other, 4])  # (q, B', n, other, c)
        prod = g.op("MatMul", g.op("Reshape", front, g.ints([size, -1, hd])), rel_t)  # (q, B' n other, k)
        prod = g.op("Reshape", prod, g.ints([size, -1, heads, size, size]))  # (q, B', n, other, k)
        prod = g.op("Transpose", prod, perm=[1, 2, 0, 3, 4] if axis == 2 else [1, 2, 3, 0, 4])  # (B', n, y, x, k)
        shape = [-1, heads, size * size, size, 1] if axis == 2 else [-1, heads, size * size, 1, size]
        out.append(g.op("Reshape", prod, g.ints(shape)))
    return out[0], out[1]


def _attention(g: GraphBuilder, x: str, attn, size: int, dim: int) -> str:
    """The official encoder `Attention` on (B', size, size, dim) -> (B', size, size, dim)."""
    heads = attn.num_heads
    hd, n = dim // heads, size * size
    qkv = linear(g, attn.qkv, x)
    qkv = g.op("Transpose", g.op("Reshape", qkv, g.ints([-1, n, 3, heads, hd])), perm=[2, 0, 3, 1, 4])
    q, k, v = (g.op("Gather", qkv, g.ints(i), axis=0) for i in range(3))  # (B', n, N, hd)
    logits = g.op("MatMul", g.op("Mul", q, g.const(attn.scale)), g.op("Transpose", k, perm=[0, 1, 3, 2]))
    if attn.use_rel_pos:
        rel_h, rel_w = _rel_pos_bias(g, q, attn, size, heads)
        logits = g.op("Reshape", logits, g.ints([-1, heads, n, size, size]))
        logits = g.op("Reshape", g.op("Add", g.op("Add", logits, rel_h), rel_w), g.ints([-1, heads, n, n]))
    out = g.op("MatMul", g.op("Softmax", logits, axis=-1), v)  # (B', n, N, hd)
    out = g.op("Reshape", g.op("Transpose", out, perm=[0, 2, 1, 3]), g.ints([-1, size, size, dim]))
    return linear(g, attn.proj, out)


def window_partition(g: GraphBuilder, x: str, window_size: int, size: int, dim: int) -> tuple[str, int]:
    """(B, size, size, dim) -> (B * nw * nw, ws, ws, dim) windows, zero-padding the grid at the end
    to a multiple of ws (the padded tokens take part in attention, as in the official code).
    Returns the windows and nw."""
    ws = window_size
    pad = (ws - size % ws) % ws
    if pad:
        x = g.op("Pad", x, g.ints([0, 0, 0, 0, 0, pad, pad, 0]))
    nw = (size + pad) // ws
    x = g.op("Transpose", g.op("Reshape", x, g.ints([-1, nw, ws, nw, ws, dim])), perm=[0, 1, 3, 2, 4, 5])
    return g.op("Reshape", x, g.ints([-1, ws, ws, dim])), nw


def window_unpartition(g: GraphBuilder, windows: str, window_size: int, nw: int, size: int, dim: int) -> str:
    """Inverse of window_partition: (B * nw * nw, ws, ws, dim) -> (B, size, size, dim) without padding."""
    ws = window_size
    x = g.op("Transpose", g.op("Reshape", windows, g.ints([-1, nw, nw, ws, ws, dim])), perm=[0, 1, 3, 2, 4, 5])
    x = g.op("Reshape", x, g.ints([-1, nw * ws, nw * ws, dim]))
    return g.op("Slice", x, g.ints([0, 0]), g.ints([size, size]), g.ints([1, 2])) if nw * ws != size else x


def _block(g: GraphBuilder, x: str, blk, grid: int, dim: int) -> str:
    """One encoder Block on (B, grid, grid, dim): windowed (zero-padded to whole windows) or global."""
    shortcut = x
    x = layer_norm(g, blk.norm1, x)
    ws = blk.window_size
    if ws > 0:
        windows, nw = window_partition(g, x, ws, grid, dim)
        x = window_unpartition(g, _attention(g, windows, blk.attn, ws, dim), ws, nw, grid, dim)
    else:
        x = _attention(g, x, blk.attn, grid, dim)
    x = g.op("Add", shortcut, x)
    h = gelu(g, linear(g, blk.mlp.lin1, layer_norm(g, blk.norm2, x)))
    return g.op("Add", x, linear(g, blk.mlp.lin2, h))


def image_encoder_vit(g: GraphBuilder, enc: ImageEncoderViT, image: str, grid: int) -> tuple[str, str | None]:
    """ImageEncoderViT on (B, 3, S, S) with grid = S / patch_size -> (image_embeddings (B, C, grid,
    grid), early (B, grid, grid, E): the output of the first global-attention block, HQ-SAM's
    `interm_embeddings[0]`, or None when every block is windowed)."""
    dim = enc.patch_embed.proj.out_features
    x = g.op("Transpose", conv(g, enc.patch_embed.proj, image), perm=[0, 2, 3, 1])  # (B, g, g, E)
    if enc.pos_embed is not None:
        x = g.op("Add", x, g.param(enc.pos_embed))
    early = None
    for blk in enc.blocks:
        x = _block(g, x, blk, grid, dim)
        early = x if early is None and blk.window_size == 0 else early
    return neck(g, enc.neck, g.op("Transpose", x, perm=[0, 3, 1, 2])), early


def neck(g: GraphBuilder, seq: Sequential, x: str) -> str:
    """The encoders' neck on NCHW, as the official one: 1x1 conv, LayerNorm2d, 3x3 conv, LayerNorm2d."""
    conv1, ln1, conv2, ln2 = seq
    x = layer_norm(g, ln1, conv(g, conv1, x), axis=1)
    return layer_norm(g, ln2, conv(g, conv2, x), axis=1)
