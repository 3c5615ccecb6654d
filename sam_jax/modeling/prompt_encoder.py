"""Prompt encoder (the official `modeling/prompt_encoder.py`).

Point labels: 1 foreground, 0 background, 2/3 top-left/bottom-right box corner (the official ONNX
convention), -1 the official "not a point" padding token. Label -2 marks a bucket-padding slot
that is not a token at all: it gets a zero embedding and the mask decoder excludes it from every
attention, so padded prompts give exactly the unpadded result. Label 4 is a point with its
positional encoding only: what the official `_embed_points` makes of a point labelled 2 or 3
(it adds embeddings for labels -1, 0 and 1 only; box corners get theirs in `_embed_boxes`), so
`prompt_tokens` gives user points labelled 2 or 3 that label.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ..numerics import Numerics, traced_with_numerics
from .common import GELU, Buffer, LayerNorm2d, Sequential

IGNORE_LABEL = -2
PLAIN_POINT_LABEL = 4


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
        self.numerics = Numerics()
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

    @traced_with_numerics
    def embed(
        self,
        point_coords: jax.Array,
        point_labels: jax.Array,
        boxes: jax.Array,
        has_box: jax.Array,
        mask_input: jax.Array | None = None,
        has_mask: jax.Array | None = None,
    ) -> tuple[jax.Array, jax.Array, jax.Array]:
        """Fixed-shape prompt embedding, the form every compiled caller uses.

        point_coords (B, N, 2) xy in the resized-input frame, point_labels (B, N) (IGNORE_LABEL
        for empty slots); boxes (B, 4) xyxy in that frame with has_box (B,) bool; mask_input
        (B, 1, 4h, 4w) logits with has_mask (B,) bool, or None when no prompt has a mask.
        Returns sparse (B, N + 3, C), dense (B, C, h, w), or (1, C, h, w) when mask_input is
        None (one no-mask embedding shared by all prompts), and token_mask (B, N + 3), True
        for the tokens that exist (see `prompt_tokens` for the slots)."""
        coords, labels = prompt_tokens(point_coords, point_labels, boxes, has_box)
        sparse = self.embed_points(coords, labels)
        h, w = self.image_embedding_size
        no_mask = jnp.broadcast_to(self.no_mask_embed.embedding[...].reshape(1, -1, 1, 1), (1, self.embed_dim, h, w))
        if mask_input is None:
            dense = no_mask
        else:
            has_mask = jnp.ones(mask_input.shape[0], bool) if has_mask is None else has_mask
            dense = jnp.where(has_mask[:, None, None, None], self.embed_masks(mask_input), no_mask)
        return sparse, dense, labels != IGNORE_LABEL

    def embed_points(self, points: jax.Array, labels: jax.Array) -> jax.Array:
        """Tokens already in the official order (the official `_embed_points` without its `pad`
        argument: padding is `prompt_tokens`' job). (B, N, 2) xy in the resized-input frame,
        (B, N) labels -> (B, N, C); box corners are points labelled 2 and 3, the "not a point"
        pad is label -1, IGNORE_LABEL an empty slot (zero embedding), PLAIN_POINT_LABEL a point
        with no label embedding."""
        points = points + 0.5  # shift to the centre of the pixel
        pe = self.pe_layer.forward_with_coords(points, self.input_image_size)
        # Row i + 2 of the table is added for label i; "not a point" and empty slots replace the encoding.
        table = jnp.concatenate(
            [jnp.zeros((1, self.embed_dim)), self.not_a_point_embed.embedding[...]]
            + [e.embedding[...] for e in self.point_embeddings]
            + [jnp.zeros((1, self.embed_dim))]
        )
        labels = labels.astype(jnp.int32)
        pe = jnp.where((labels < 0)[..., None], 0.0, pe)
        return pe + table[jnp.clip(labels, IGNORE_LABEL, PLAIN_POINT_LABEL) + 2]

    @traced_with_numerics
    def embed_masks(self, masks: jax.Array) -> jax.Array:
        """The official `_embed_masks`: (B, 1, 4h, 4w) mask logits -> (B, C, h, w)."""
        x = self.mask_downscaling(jnp.transpose(masks, (0, 2, 3, 1)))
        return jnp.transpose(x, (0, 3, 1, 2))

    def __call__(
        self,
        points: tuple[jax.Array, jax.Array] | None,
        boxes: jax.Array | None,
        masks: jax.Array | None,
    ) -> tuple[jax.Array, jax.Array]:
        """The official forward: sparse (B, N (+1 pad without boxes) (+2 corners), C) and dense
        (B, C, h, w) embeddings. Runs `embed` and keeps the slots the official code would emit."""
        bs = _get_batch_size(points, boxes, masks)
        coords, labels = points if points is not None else (jnp.zeros((bs, 0, 2)), jnp.zeros((bs, 0), jnp.int32))
        n = coords.shape[1]
        has_box = jnp.full((bs,), boxes is not None)
        box = boxes if boxes is not None else jnp.zeros((bs, 4))
        sparse, dense, _ = self.embed(coords, labels, box, has_box, masks)
        slots = list(range(n)) + ([n] if points is not None and boxes is None else []) + ([n + 1, n + 2] if boxes is not None else [])
        return sparse[:, jnp.asarray(slots, jnp.int32)], jnp.broadcast_to(dense, (bs,) + dense.shape[1:])


def prompt_tokens(
    point_coords: jax.Array, point_labels: jax.Array, boxes: jax.Array, has_box: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """The official token order in fixed slots: the N points, then the "not a point" pad (label
    -1, only when a prompt has points and no box), then the two box corners (labels 2 and 3).
    Slots a prompt does not use are labelled IGNORE_LABEL; points labelled 2 or 3 become
    PLAIN_POINT_LABEL, as the official encoder treats them. (B, N, 2), (B, N), (B, 4), (B,) ->
    coords (B, N + 3, 2) and labels (B, N + 3) int32. Works on NumPy arrays too (host code)."""
    B = point_coords.shape[0]
    point_labels = jnp.asarray(point_labels).astype(jnp.int32)
    point_labels = jnp.where((point_labels == 2) | (point_labels == 3), PLAIN_POINT_LABEL, point_labels)
    has_points = jnp.any(point_labels != IGNORE_LABEL, axis=1)
    pad_label = jnp.where(has_points & ~has_box, -1, IGNORE_LABEL)[:, None]
    corner_labels = jnp.where(has_box[:, None], jnp.array([[2, 3]]), IGNORE_LABEL)
    coords = jnp.concatenate([point_coords, jnp.zeros((B, 1, 2)), jnp.reshape(boxes, (B, 2, 2))], axis=1)
    labels = jnp.concatenate([point_labels, pad_label, corner_labels], axis=1)
    return coords.astype(jnp.float32), labels


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
