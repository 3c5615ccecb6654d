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

import os
import shutil
from pathlib import Path

import numpy as np

from ...modeling import Sam
from ...io.outputs import partial_path
from .builder import GraphBuilder, conv, gelu, layer_norm, linear
from .files import ONNX_OUTPUT, check_export_output, is_own_onnx
from .sam_onnx import require

EXTERNAL_DATA_THRESHOLD = 2**31 - 2**26  # weights beyond this leave the 2 GB protobuf room for the graph


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


def _block(g: GraphBuilder, x: str, blk, grid: int, dim: int) -> str:
    """One encoder Block on (B, grid, grid, dim): windowed (zero-padded to whole windows) or global."""
    shortcut = x
    x = layer_norm(g, blk.norm1, x)
    ws = blk.window_size
    if ws > 0:
        pad = (ws - grid % ws) % ws
        if pad:
            x = g.op("Pad", x, g.ints([0, 0, 0, 0, 0, pad, pad, 0]))
        nw = (grid + pad) // ws
        x = g.op("Transpose", g.op("Reshape", x, g.ints([-1, nw, ws, nw, ws, dim])), perm=[0, 1, 3, 2, 4, 5])
        x = g.op("Reshape", x, g.ints([-1, ws, ws, dim]))
        x = _attention(g, x, blk.attn, ws, dim)
        x = g.op("Transpose", g.op("Reshape", x, g.ints([-1, nw, nw, ws, ws, dim])), perm=[0, 1, 3, 2, 4, 5])
        x = g.op("Reshape", x, g.ints([-1, nw * ws, nw * ws, dim]))
        if pad:
            x = g.op("Slice", x, g.ints([0, 0]), g.ints([grid, grid]), g.ints([1, 2]))
    else:
        x = _attention(g, x, blk.attn, grid, dim)
    x = g.op("Add", shortcut, x)
    h = gelu(g, linear(g, blk.mlp.lin1, layer_norm(g, blk.norm2, x)))
    return g.op("Add", x, linear(g, blk.mlp.lin2, h))


def build_encoder_graph(model: Sam, opset: int):
    """The onnx.ModelProto of `model.image_encoder` (see the module docstring)."""
    cfg, enc = model.config, model.image_encoder
    S, dim, grid = cfg.image_size, cfg.encoder_embed_dim, cfg.image_embedding_size
    g = GraphBuilder(model, opset)
    x = conv(g, enc.patch_embed.proj, "image")  # (B, E, g, g)
    x = g.op("Transpose", x, perm=[0, 2, 3, 1])
    if enc.pos_embed is not None:
        x = g.op("Add", x, g.param(enc.pos_embed))
    for blk in enc.blocks:
        x = _block(g, x, blk, grid, dim)
    x = g.op("Transpose", x, perm=[0, 3, 1, 2])  # the neck runs on NCHW, as the official one
    conv1, ln1, conv2, ln2 = enc.neck
    x = layer_norm(g, ln1, conv(g, conv1, x), axis=1)
    x = layer_norm(g, ln2, conv(g, conv2, x), axis=1)
    return g.to_model(
        inputs=[("image", np.float32, ["batch", cfg.in_chans, S, S])],
        outputs=[(x, "image_embeddings", np.float32, ["batch", cfg.prompt_embed_dim, grid, grid])],
        graph_name="sam_jax_image_encoder",
    )


def export_encoder_onnx(
    model: Sam,
    output_path: str | os.PathLike,
    *,
    opset: int = 17,
    external_data_threshold: int = EXTERNAL_DATA_THRESHOLD,
    overwrite: bool = False,
) -> Path:
    """Writes the image encoder of `model` as ONNX (input `image` (B, 3, S, S) normalised and
    padded, output `image_embeddings` (B, C, S/16, S/16)) and returns its path; `overwrite` as
    `export_onnx` (a sam-jax ONNX model only).

    When the weights exceed `external_data_threshold` bytes (protobuf caps a file at 2 GB; vit_h's
    encoder is 2.5 GB) they go to `<output>.data` beside it, which must travel with it."""
    onnx = require("onnx")
    from onnx.external_data_helper import convert_model_to_external_data  # an optional dependency

    path = Path(output_path)
    check_export_output(path, overwrite, is_own_onnx, ONNX_OUTPUT)
    if not 11 <= opset <= onnx.defs.onnx_opset_version():
        raise ValueError(f"opset must be between 11 and {onnx.defs.onnx_opset_version()}, got {opset}")
    proto = build_encoder_graph(model, opset)
    data = path.with_name(path.name + ".data")
    external = sum(len(t.raw_data) for t in proto.graph.initializer) > external_data_threshold
    if external:
        convert_model_to_external_data(proto, all_tensors_to_one_file=True, location=data.name, size_threshold=1024)
    # Written in a temporary folder and checked there (from the file: a large model cannot be
    # checked in memory), then moved into place, the weights before the graph that names them.
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = partial_path(path)
    tmp.mkdir()
    try:
        onnx.save_model(proto, tmp / path.name)
        onnx.checker.check_model(str(tmp / path.name))
        if external:
            os.replace(tmp / data.name, data)
        os.replace(tmp / path.name, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path
