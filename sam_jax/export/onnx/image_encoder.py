"""ONNX graph of the ViT image encoder, emitted node by node from a loaded model's parameters.

Input `image` float32 (B, 3, S, S), normalised and zero-padded as `Sam.preprocess` makes it (B is
dynamic); output `image_embeddings` float32 (B, C, S/16, S/16), the decoder export's input.
Activations are (B, H, W, E) between the patch embedding and the neck, as in the official code.

Attention is the plain batched maths of the official `Attention` (all heads in one MatMul, the
decomposed relative-position bias added to the logits before the softmax), not the CPU-blocked
schedule of `sam_jax.modeling.image_encoder.attention`: a runtime chooses its own kernels. The
relative-position tables stay initializers (the model's parameters) and are gathered in the
graph with constant indexes.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper

from ...modeling import Sam
from .graph import _Builder, _np


def _i64(g: _Builder, values) -> str:
    return g.const(values, dtype=np.int64)


def _conv_no_bias(g: _Builder, x: str, conv, prefix: str, pad: int) -> str:
    """nnx.Conv without bias (kernel kh, kw, in, out) on NCHW, stride 1, `pad` on every side."""
    w = g.const(_np(conv.kernel).transpose(3, 2, 0, 1), f"{prefix}.kernel")
    return g.op("Conv", x, w, pads=[pad] * 4)


def _rel_pos_bias(g: _Builder, q: str, attn, prefix: str, size: int, heads: int) -> tuple[str, str]:
    """The decomposed relative-position bias of (B', heads, N, hd) queries on a size x size grid:
    rel_h (B', heads, N, size, 1) and rel_w (B', heads, N, 1, size), official `add_decomposed_rel_pos`."""
    hd = _np(attn.rel_pos_h).shape[1]
    # q_size == k_size here: the official relative coordinates are (q - k) + (k - 1), integers.
    idx = np.arange(size)[:, None] - np.arange(size)[None, :] + (size - 1)
    r_q = g.op("Reshape", q, _i64(g, [-1, heads, size, size, hd]))  # (B', n, y, x, c)
    out = []
    for axis, name in ((2, "rel_pos_h"), (3, "rel_pos_w")):
        table = g.const(_np(getattr(attn, name)), f"{prefix}.{name}")  # (2 size - 1, hd)
        rel_t = g.op("Transpose", g.op("Gather", table, _i64(g, idx), axis=0), perm=[0, 2, 1])  # (q, hd, k)
        # The grid axis that indexes the table goes first, so one batched MatMul contracts c per row.
        other = 3 if axis == 2 else 2
        front = g.op("Transpose", r_q, perm=[axis, 0, 1, other, 4])  # (q, B', n, other, c)
        prod = g.op("MatMul", g.op("Reshape", front, _i64(g, [size, -1, hd])), rel_t)  # (q, B' n other, k)
        prod = g.op("Reshape", prod, _i64(g, [size, -1, heads, size, size]))  # (q, B', n, other, k)
        prod = g.op("Transpose", prod, perm=[1, 2, 0, 3, 4] if axis == 2 else [1, 2, 3, 0, 4])  # (B', n, y, x, k)
        shape = [-1, heads, size * size, size, 1] if axis == 2 else [-1, heads, size * size, 1, size]
        out.append(g.op("Reshape", prod, _i64(g, shape)))
    return out[0], out[1]


def _attention(g: _Builder, x: str, attn, prefix: str, size: int, dim: int) -> str:
    """The official encoder `Attention` on (B', size, size, dim) -> (B', size, size, dim)."""
    heads = attn.num_heads
    hd, n = dim // heads, size * size
    qkv = g.linear(x, attn.qkv, f"{prefix}.qkv")
    qkv = g.op("Transpose", g.op("Reshape", qkv, _i64(g, [-1, n, 3, heads, hd])), perm=[2, 0, 3, 1, 4])
    q, k, v = (g.op("Gather", qkv, g.const(np.int64(i), dtype=np.int64), axis=0) for i in range(3))  # (B', n, N, hd)
    logits = g.op("MatMul", g.op("Mul", q, g.const(np.float32(attn.scale))), g.op("Transpose", k, perm=[0, 1, 3, 2]))
    if attn.use_rel_pos:
        rel_h, rel_w = _rel_pos_bias(g, q, attn, prefix, size, heads)
        logits = g.op("Reshape", logits, _i64(g, [-1, heads, n, size, size]))
        logits = g.op("Reshape", g.op("Add", g.op("Add", logits, rel_h), rel_w), _i64(g, [-1, heads, n, n]))
    out = g.op("MatMul", g.op("Softmax", logits, axis=-1), v)  # (B', n, N, hd)
    out = g.op("Reshape", g.op("Transpose", out, perm=[0, 2, 1, 3]), _i64(g, [-1, size, size, dim]))
    return g.linear(out, attn.proj, f"{prefix}.proj")


def _block(g: _Builder, x: str, blk, prefix: str, grid: int, dim: int) -> str:
    """One encoder Block on (B, grid, grid, dim): windowed (zero-padded to whole windows) or global."""
    shortcut = x
    x = g.layer_norm(x, blk.norm1, f"{prefix}.norm1", -1)
    ws = blk.window_size
    if ws > 0:
        pad = (ws - grid % ws) % ws
        if pad:
            x = g.op("Pad", x, _i64(g, [0, 0, 0, 0, 0, pad, pad, 0]))
        nw = (grid + pad) // ws
        x = g.op("Transpose", g.op("Reshape", x, _i64(g, [-1, nw, ws, nw, ws, dim])), perm=[0, 1, 3, 2, 4, 5])
        x = g.op("Reshape", x, _i64(g, [-1, ws, ws, dim]))
        x = _attention(g, x, blk.attn, f"{prefix}.attn", ws, dim)
        x = g.op("Transpose", g.op("Reshape", x, _i64(g, [-1, nw, nw, ws, ws, dim])), perm=[0, 1, 3, 2, 4, 5])
        x = g.op("Reshape", x, _i64(g, [-1, nw * ws, nw * ws, dim]))
        if pad:
            x = g.op("Slice", x, _i64(g, [0, 0]), _i64(g, [grid, grid]), _i64(g, [1, 2]))
    else:
        x = _attention(g, x, blk.attn, f"{prefix}.attn", grid, dim)
    x = g.op("Add", shortcut, x)
    h = g.gelu(g.linear(g.layer_norm(x, blk.norm2, f"{prefix}.norm2", -1), blk.mlp.lin1, f"{prefix}.mlp.lin1"))
    return g.op("Add", x, g.linear(h, blk.mlp.lin2, f"{prefix}.mlp.lin2"))


def build_encoder_graph(model: Sam, opset: int) -> onnx.ModelProto:
    """The ONNX model of `model.image_encoder` (see the module docstring)."""
    cfg, enc = model.config, model.image_encoder
    S, dim, grid = cfg.image_size, cfg.encoder_embed_dim, cfg.image_embedding_size
    g = _Builder(opset)
    x = g.conv("image", enc.patch_embed.proj, "image_encoder.patch_embed.proj", cfg.patch_size)  # (B, E, g, g)
    x = g.op("Transpose", x, perm=[0, 2, 3, 1])
    if enc.pos_embed is not None:
        x = g.op("Add", x, g.const(_np(enc.pos_embed), "image_encoder.pos_embed"))
    for i, blk in enumerate(enc.blocks):
        x = _block(g, x, blk, f"image_encoder.blocks.{i}", grid, dim)
    x = g.op("Transpose", x, perm=[0, 3, 1, 2])  # the neck runs on NCHW, as the official one
    conv1, ln1, conv2, ln2 = enc.neck
    x = g.layer_norm(_conv_no_bias(g, x, conv1, "image_encoder.neck.0", 0), ln1, "image_encoder.neck.1", 1)
    x = g.layer_norm(_conv_no_bias(g, x, conv2, "image_encoder.neck.2", 1), ln2, "image_encoder.neck.3", 1)
    g.nodes[-1].output[0] = "image_embeddings"

    f32 = TensorProto.FLOAT
    inputs = [helper.make_tensor_value_info("image", f32, ["batch", cfg.in_chans, S, S])]
    outputs = [helper.make_tensor_value_info("image_embeddings", f32, ["batch", cfg.prompt_embed_dim, grid, grid])]
    graph = helper.make_graph(g.nodes, "sam_jax_image_encoder", inputs, outputs, initializer=g.inits)
    opsets = [helper.make_opsetid("", opset)]
    return helper.make_model(
        graph, opset_imports=opsets, producer_name="sam-jax", ir_version=helper.find_min_ir_version_for(opsets)
    )
