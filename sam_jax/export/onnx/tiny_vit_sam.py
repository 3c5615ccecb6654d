"""ONNX emitters of `modeling/tiny_vit_sam.py`: the TinyViT image encoder of MobileSAM, of
LiteMedSAM (its 1x1 stem) and of sam-hq's vit_tiny.

The convolutional modules run on NCHW maps as in the official code; the attention stages on
(B, H, W, C) tokens, with the depthwise `local_conv` of each block transposed to NCHW and back.
BatchNorm is emitted in inference form (`BatchNormalization` on its running statistics, which the
model never updates either). Each attention's bias table stays an initializer (the model's
parameter) and is gathered in the graph by the constant (N, N) offset index of its window, as the
official `attention_biases[:, attention_bias_idxs]`. Windows are zero-padded as the official block
pads them; every grid is static, fixed by the input size at export.
"""

from __future__ import annotations

from ...modeling.tiny_vit_sam import (
    Attention, BatchNorm2d, Conv2d_BN, MBConv, Mlp, PatchEmbed, PatchMerging, TinyViT, TinyViTBlock, attention_bias_idxs,
)
from .builder import GraphBuilder, conv, gelu, layer_norm, linear
from .image_encoder import neck, window_partition, window_unpartition

NHWC, NCHW = [0, 2, 3, 1], [0, 3, 1, 2]


def batch_norm(g: GraphBuilder, bn: BatchNorm2d, x: str) -> str:
    """BatchNorm2d with its running statistics on (B, C, H, W)."""
    return g.op("BatchNormalization", x, g.param(bn.scale), g.param(bn.bias), g.param(bn.mean), g.param(bn.var),
                epsilon=bn.eps)


def conv2d_bn(g: GraphBuilder, m: Conv2d_BN, x: str) -> str:
    """(B, a, H, W) -> (B, b, H', W'): the bias-free (possibly depthwise) convolution, then BatchNorm."""
    return batch_norm(g, m.bn, conv(g, m.c, x))


def _out_size(m: Conv2d_BN, size: int) -> int:
    """The side of `m`'s output on a size x size map (torch's formula, as ONNX's Conv)."""
    (k, _), (s, _), ((p, _), _) = m.c.kernel_size, m.c.strides, m.c.padding
    return (size + 2 * p - k) // s + 1


def patch_embed(g: GraphBuilder, m: PatchEmbed, x: str) -> str:
    """The stem: Conv2d_BN, GELU, Conv2d_BN on (B, 3, S, S)."""
    c1, _, c2 = m.seq
    return conv2d_bn(g, c2, gelu(g, conv2d_bn(g, c1, x)))


def mbconv(g: GraphBuilder, m: MBConv, x: str) -> str:
    """Inverted residual on (B, C, H, W): 1x1 expand, 3x3 depthwise, 1x1 project, residual, GELU."""
    y = gelu(g, conv2d_bn(g, m.conv2, gelu(g, conv2d_bn(g, m.conv1, x))))
    return gelu(g, g.op("Add", conv2d_bn(g, m.conv3, y), x))


def patch_merging(g: GraphBuilder, m: PatchMerging, x: str) -> str:
    """(B, dim, H, W) -> (B, out_dim, H / stride, W / stride): 1x1, 3x3 depthwise, 1x1 convolutions."""
    return conv2d_bn(g, m.conv3, gelu(g, conv2d_bn(g, m.conv2, gelu(g, conv2d_bn(g, m.conv1, x)))))


def attention(g: GraphBuilder, m: Attention, x: str) -> str:
    """Biased self-attention of (G, N, dim) window tokens (its LayerNorm first) -> (G, N, dim)."""
    n = m.resolution[0] * m.resolution[1]
    qkv = linear(g, m.qkv, layer_norm(g, m.norm, x))
    # Per head the features are [q (key_dim), k (key_dim), v (d)].
    qkv = g.op("Transpose", g.op("Reshape", qkv, g.ints([0, n, m.num_heads, -1])), perm=[0, 2, 1, 3])  # (G, heads, N, .)
    kd = m.key_dim
    q, k, v = (g.slice(qkv, [a], [b], [3]) for a, b in ((0, kd), (kd, 2 * kd), (2 * kd, 2 * kd + m.d)))
    bias = g.op("Gather", g.param(m.attention_biases), g.ints(attention_bias_idxs(m.resolution)), axis=1)  # (heads, N, N)
    logits = g.op("Add", g.op("Mul", g.op("MatMul", q, g.op("Transpose", k, perm=[0, 1, 3, 2])), g.const(m.scale)), bias)
    out = g.op("MatMul", g.op("Softmax", logits, axis=-1), v)  # (G, heads, N, d)
    return linear(g, m.proj, g.op("Reshape", g.op("Transpose", out, perm=[0, 2, 1, 3]), g.ints([0, n, m.dh])))


def mlp(g: GraphBuilder, m: Mlp, x: str) -> str:
    return linear(g, m.fc2, gelu(g, linear(g, m.fc1, layer_norm(g, m.norm, x))))


def tiny_vit_block(g: GraphBuilder, blk: TinyViTBlock, x: str, size: int, dim: int) -> str:
    """(B, size, size, dim) -> the same: windowed attention (residual), local_conv, MLP (residual)."""
    ws = blk.window_size
    windows, nw = window_partition(g, x, ws, size, dim)
    attn = g.op("Reshape", attention(g, blk.attn, g.op("Reshape", windows, g.ints([-1, ws * ws, dim]))),
                g.ints([-1, ws, ws, dim]))
    x = g.op("Add", x, window_unpartition(g, attn, ws, nw, size, dim))
    x = g.op("Transpose", conv2d_bn(g, blk.local_conv, g.op("Transpose", x, perm=NCHW)), perm=NHWC)
    return g.op("Add", x, mlp(g, blk.mlp, x))


def tiny_vit(g: GraphBuilder, enc: TinyViT, image: str, image_size: int) -> tuple[str, str]:
    """TinyViT with its neck on (B, 3, S, S), S = image_size -> (image_embeddings (B, C, g, g),
    early (B, g, g, early_dim): the output of layers[1], HQ-SAM's `interm_embeddings[0]`)."""
    x = patch_embed(g, enc.patch_embed, image)
    size = image_size
    for stem_conv in enc.patch_embed.seq[::2]:
        size = _out_size(stem_conv, size)
    early = None
    for i, layer in enumerate(enc.layers):
        if i == 0:
            for blk in layer.blocks:
                x = mbconv(g, blk, x)
        else:
            dim = layer.blocks[0].local_conv.c.in_features
            x = g.op("Transpose", x, perm=NHWC)
            for blk in layer.blocks:
                x = tiny_vit_block(g, blk, x, size, dim)
            x = g.op("Transpose", x, perm=NCHW)
        if layer.downsample is not None:
            x = patch_merging(g, layer.downsample, x)
            size = _out_size(layer.downsample.conv2, size)
        if i == 1:
            early = g.op("Transpose", x, perm=NHWC)
    return neck(g, enc.neck, x), early
