"""Prompt encoder (the official `modeling/prompt_encoder.py`).

Point labels: 1 foreground, 0 background, 2/3 top-left/bottom-right box corner (the official ONNX
convention), -1 the official "not a point" padding token. Label -2 marks a bucket-padding slot
that is not a token at all: it gets a zero embedding and the mask decoder excludes it from every
attention, so padded prompts give exactly the unpadded result.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from .common import GELU, Buffer, LayerNorm2d, Sequential

IGNORE_LABEL = -2


class PromptEncoder(nnx.Module):
    def __init__(
        self,
        embed_dim: int,
        image_embedding_size: tuple[int, int],
        input_image_size: tuple[int, int],
        mask_in_chans: int,
        *,
        rngs: nnx.Rngs,
    ):
        self.embed_dim = embed_dim
        self.input_image_size = tuple(input_image_size)
        self.image_embedding_size = tuple(image_embedding_size)
        self.pe_layer = PositionEmbeddingRandom(embed_dim // 2, rngs=rngs)
        self.num_point_embeddings = 4  # pos/neg point + 2 box corners
        self.point_embeddings = nnx.List([nnx.Embed(1, embed_dim, rngs=rngs) for _ in range(4)])
        self.not_a_point_embed = nnx.Embed(1, embed_dim, rngs=rngs)
        self.mask_input_size = (4 * image_embedding_size[0], 4 * image_embedding_size[1])
        self.mask_downscaling = Sequential(
            [
                nnx.Conv(1, mask_in_chans // 4, (2, 2), strides=(2, 2), padding="VALID", rngs=rngs),
                LayerNorm2d(mask_in_chans // 4, rngs=rngs),
                GELU(),
                nnx.Conv(mask_in_chans // 4, mask_in_chans, (2, 2), strides=(2, 2), padding="VALID", rngs=rngs),
                LayerNorm2d(mask_in_chans, rngs=rngs),
                GELU(),
                nnx.Conv(mask_in_chans, embed_dim, (1, 1), rngs=rngs),
            ]
        )
        self.no_mask_embed = nnx.Embed(1, embed_dim, rngs=rngs)

    def get_dense_pe(self) -> jax.Array:
        """(1, embed_dim, h, w) positional encoding of the image-embedding grid."""
        return jnp.transpose(self.pe_layer(self.image_embedding_size), (2, 0, 1))[None]

    def _embed_points(self, points: jax.Array, labels: jax.Array, pad: bool) -> jax.Array:
        """(B, N, 2) xy in the resized-input frame, (B, N) labels -> (B, N (+1 if pad), C)."""
        points = points + 0.5  # shift to the centre of the pixel
        if pad:
            points = jnp.concatenate([points, jnp.zeros((points.shape[0], 1, 2), points.dtype)], axis=1)
            labels = jnp.concatenate([labels, -jnp.ones((labels.shape[0], 1), labels.dtype)], axis=1)
        pe = self.pe_layer.forward_with_coords(points, self.input_image_size)
        # Row i + 1 of the table is added for label i; "not a point" replaces the encoding.
        table = jnp.concatenate(
            [jnp.zeros((1, self.embed_dim)), self.not_a_point_embed.embedding[...]]
            + [e.embedding[...] for e in self.point_embeddings]
        )
        labels = labels.astype(jnp.int32)
        pe = jnp.where((labels < 0)[..., None], 0.0, pe)
        return pe + table[jnp.clip(labels, IGNORE_LABEL, 3) + 2]

    def _embed_boxes(self, boxes: jax.Array) -> jax.Array:
        """(B, 4) xyxy boxes in the resized-input frame -> (B, 2, C) corner embeddings."""
        coords = (boxes + 0.5).reshape(-1, 2, 2)
        corner = self.pe_layer.forward_with_coords(coords, self.input_image_size)
        corner = corner.at[:, 0, :].add(self.point_embeddings[2].embedding[0])
        return corner.at[:, 1, :].add(self.point_embeddings[3].embedding[0])

    def _embed_masks(self, masks: jax.Array) -> jax.Array:
        """(B, 1, 4h, 4w) mask logits -> (B, C, h, w)."""
        x = self.mask_downscaling(jnp.transpose(masks, (0, 2, 3, 1)))
        return jnp.transpose(x, (0, 3, 1, 2))

    def __call__(
        self,
        points: tuple[jax.Array, jax.Array] | None,
        boxes: jax.Array | None,
        masks: jax.Array | None,
    ) -> tuple[jax.Array, jax.Array]:
        """Returns sparse (B, N, C) and dense (B, C, h, w) embeddings, like the official forward."""
        bs = _get_batch_size(points, boxes, masks)
        sparse = jnp.zeros((bs, 0, self.embed_dim))
        if points is not None:
            coords, labels = points
            sparse = jnp.concatenate([sparse, self._embed_points(coords, labels, pad=boxes is None)], axis=1)
        if boxes is not None:
            sparse = jnp.concatenate([sparse, self._embed_boxes(boxes)], axis=1)
        if masks is not None:
            dense = self._embed_masks(masks)
        else:
            h, w = self.image_embedding_size
            dense = jnp.broadcast_to(self.no_mask_embed.embedding[...].reshape(1, -1, 1, 1), (bs, self.embed_dim, h, w))
        return sparse, dense


def _get_batch_size(points, boxes, masks) -> int:
    if points is not None:
        return points[0].shape[0]
    if boxes is not None:
        return boxes.shape[0]
    if masks is not None:
        return masks.shape[0]
    return 1


class PositionEmbeddingRandom(nnx.Module):
    """Positional encoding with random spatial frequencies (Tancik et al.)."""

    def __init__(self, num_pos_feats: int = 64, scale: float | None = None, *, rngs: nnx.Rngs):
        if scale is None or scale <= 0.0:
            scale = 1.0
        self.positional_encoding_gaussian_matrix = Buffer(
            scale * jax.random.normal(rngs.params(), (2, num_pos_feats))
        )

    def _pe_encoding(self, coords: jax.Array) -> jax.Array:
        """(..., 2) points normalised to [0, 1] -> (..., 2 * num_pos_feats)."""
        coords = 2 * coords - 1
        g = self.positional_encoding_gaussian_matrix[...]
        # A K=2 product written out: a matmul here would run at bf16 on TPU by default.
        coords = coords[..., 0:1] * g[0] + coords[..., 1:2] * g[1]
        coords = 2 * np.pi * coords
        return jnp.concatenate([jnp.sin(coords), jnp.cos(coords)], axis=-1)

    def __call__(self, size: tuple[int, int]) -> jax.Array:
        """(h, w, C) encoding of a grid of the given size."""
        h, w = size
        y_embed = (jnp.arange(h, dtype=jnp.float32) + 0.5) / h
        x_embed = (jnp.arange(w, dtype=jnp.float32) + 0.5) / w
        grid = jnp.stack(jnp.broadcast_arrays(x_embed[None, :], y_embed[:, None]), axis=-1)
        return self._pe_encoding(grid)

    def forward_with_coords(self, coords_input: jax.Array, image_size: tuple[int, int]) -> jax.Array:
        """(B, N, 2) xy pixel coordinates in an image of size (H, W) -> (B, N, C)."""
        coords = coords_input / jnp.asarray([image_size[1], image_size[0]], dtype=coords_input.dtype)
        return self._pe_encoding(coords.astype(jnp.float32))
