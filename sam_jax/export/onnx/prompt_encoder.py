"""ONNX emitters of `modeling/prompt_encoder.py`: the point embedding, the mask downscaling and the
dense positional encoding, which is computed in the graph from the (2, C/2) Gaussian matrix as
the official `SamOnnxModel` does through `get_dense_pe` (a (C, h, w) constant would be 4 MB for
vit_b; onnxruntime folds the computation once, when it loads the model)."""

from __future__ import annotations

import numpy as np

from ...modeling.prompt_encoder import IGNORE_LABEL, PositionEmbeddingRandom, PromptEncoder
from .builder import GraphBuilder, conv, gelu, layer_norm


def pe_encoding(g: GraphBuilder, pe_layer: PositionEmbeddingRandom, coords: str) -> str:
    """PositionEmbeddingRandom._pe_encoding: (..., 2) points normalised to [0, 1] -> (..., C)."""
    coords = g.op("Sub", g.op("Mul", coords, g.const(2.0)), g.const(1.0))
    coords = g.small_matmul(coords, g.param(pe_layer.positional_encoding_gaussian_matrix))
    coords = g.op("Mul", coords, g.const(2 * np.pi))
    return g.op("Concat", g.op("Sin", coords), g.op("Cos", coords), axis=-1)


def position_embedding(g: GraphBuilder, pe_layer: PositionEmbeddingRandom, size: tuple[int, int]) -> str:
    """PositionEmbeddingRandom.__call__: the (h, w, C) encoding of the pixel centres of a grid."""
    h, w = size

    def centres(n: int) -> str:  # (arange(n) + 0.5) / n
        return g.op("Div", g.op("Add", g.op("Range", g.const(0.0), g.const(n), g.const(1.0)), g.const(0.5)), g.const(n))

    x = g.op("Expand", g.unsqueeze(centres(w), [0]), g.ints([h, w]))
    y = g.op("Expand", g.unsqueeze(centres(h), [1]), g.ints([h, w]))
    grid = g.op("Concat", g.unsqueeze(x, [-1]), g.unsqueeze(y, [-1]), axis=-1)  # (h, w, 2) xy
    return pe_encoding(g, pe_layer, grid)


def forward_with_coords(g: GraphBuilder, pe_layer: PositionEmbeddingRandom, coords: str, image_size: tuple[int, int]) -> str:
    """(B, N, 2) xy pixel coordinates in an image of size (H, W) -> (B, N, C)."""
    coords = g.op("Div", coords, g.const([image_size[1], image_size[0]]))
    return pe_encoding(g, pe_layer, coords)


def get_dense_pe(g: GraphBuilder, pe: PromptEncoder) -> str:
    """(1, C, h, w) positional encoding of the image-embedding grid."""
    return g.unsqueeze(g.op("Transpose", position_embedding(g, pe.pe_layer, pe.image_embedding_size), perm=[2, 0, 1]), [0])


def embed_points(g: GraphBuilder, pe: PromptEncoder, points: str, labels: str) -> str:
    """PromptEncoder.embed_points: (B, N, 2) xy in the resized-input frame and (B, N) float labels
    (1, 0, 2 and 3 for box corners, -1 the "not a point" pad) -> (B, N, C). Row label + 2 of the
    table is added (label -1: not_a_point_embed; IGNORE_LABEL, which the ONNX inputs never
    hold: zero), and the position encoding is dropped for negative labels."""
    points = g.op("Add", points, g.const(0.5))  # shift to the centre of the pixel
    encoding = forward_with_coords(g, pe.pe_layer, points, pe.input_image_size)
    # As the modeling code's astype(int32) then clip (truncation is monotone: the order is free).
    labels = g.cast(g.op("Clip", labels, g.const(IGNORE_LABEL), g.const(3.0)), np.int64)
    encoding = g.op("Where", g.unsqueeze(g.op("Less", labels, g.ints(0)), [-1]), g.const(0.0), encoding)
    embeddings = [pe.not_a_point_embed, *pe.point_embeddings]  # rows for labels -1 .. 3
    table = g.op("Concat", g.const(np.zeros((1, pe.embed_dim))), *(g.param(e.embedding) for e in embeddings), axis=0)
    onehot = g.cast(g.op("Equal", g.unsqueeze(labels, [-1]), g.ints(np.arange(IGNORE_LABEL, 4))), np.float32)
    return g.op("Add", encoding, g.small_matmul(onehot, table))


def embed_masks(g: GraphBuilder, pe: PromptEncoder, masks: str) -> str:
    """PromptEncoder.embed_masks (mask_downscaling): (B, 1, 4h, 4w) mask logits -> (B, C, h, w)."""
    conv1, norm1, _, conv2, norm2, _, conv3 = pe.mask_downscaling
    x = gelu(g, layer_norm(g, norm1, conv(g, conv1, masks), axis=1))
    x = gelu(g, layer_norm(g, norm2, conv(g, conv2, x), axis=1))
    return conv(g, conv3, x)
