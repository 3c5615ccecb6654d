"""Pure device-side functions of a split model: `graphdef` (static structure) and `params` (the
arrays, an `nnx.State`). Pass both explicitly, so `jax.jit`, `jax.vmap` and `jax.grad` work
on them and no weights or image features are ever baked into a compiled function as constants.

    graphdef, params = nnx.split(model)
    emb = embed_images_jit(graphdef, params, images, input_sizes)

Prompt layout. Points are (B, N, 2) xy in the resized-input frame with labels (B, N): 1 positive,
0 negative, -1 the official "not a point" token, -2 an empty bucket slot (excluded from every
attention, so padding never changes a result). A box is two corner points with labels 2 and 3;
`boxes` (B, 4) plus `has_box` (B,) build them here. All of it is shape-static: one compilation
serves every prompt count up to the bucket size, with or without boxes and masks.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
from flax import nnx

from .modeling.prompt_encoder import IGNORE_LABEL
from .modeling.sam import postprocess_masks, preprocess


def embed_images(graphdef: nnx.GraphDef, params: nnx.State, images: jax.Array, input_sizes: jax.Array) -> jax.Array:
    """Image embeddings of a batch.

    images: (B, S, S, 3) uint8 (or float) RGB, each resized image in the top-left corner, S the
        model's image_size; input_sizes: (B, 2) int (h, w) of each resized image.
    Returns (B, C, S/16, S/16) float32.
    """
    model = nnx.merge(graphdef, params)
    S = model.config.image_size
    x = preprocess(model.config, jnp.transpose(images, (0, 3, 1, 2)))
    # The official code pads after normalising: zero outside each image's resized region.
    rows = jnp.arange(S)[None, :, None] < input_sizes[:, 0, None, None]
    cols = jnp.arange(S)[None, None, :] < input_sizes[:, 1, None, None]
    x = jnp.where((rows & cols)[:, None], x, 0.0)
    return model.image_encoder(x)


def decode_prompts(
    graphdef: nnx.GraphDef,
    params: nnx.State,
    image_embeddings: jax.Array,
    point_coords: jax.Array,
    point_labels: jax.Array,
    boxes: jax.Array,
    has_box: jax.Array,
    mask_input: jax.Array | None,
    has_mask: jax.Array | None,
    multimask_output: bool,
) -> tuple[jax.Array, jax.Array]:
    """Low-resolution mask logits for B prompts.

    image_embeddings: (1 or B, C, h, w); point_coords (B, N, 2) float, point_labels (B, N) int;
    boxes (B, 4) xyxy in the resized-input frame and has_box (B,) bool; mask_input (B, 1, 4h, 4w)
    logits and has_mask (B,) bool, or both None when no prompt has a mask (then the image keys
    are shared by all prompts up to the first image-to-token attention, computed once). Returns logits (B, M, 4h, 4w) and IoU predictions (B, M),
    M = num_multimask_outputs if multimask_output else 1.
    """
    model = nnx.merge(graphdef, params)
    B = point_coords.shape[0]
    # Official token order: points, then the "not a point" pad if there are points but no box,
    # then the box corners.
    has_points = jnp.any(point_labels != IGNORE_LABEL, axis=1)
    pad_label = jnp.where(has_points & ~has_box, -1, IGNORE_LABEL)[:, None]
    corner_labels = jnp.where(has_box[:, None], jnp.array([[2, 3]]), IGNORE_LABEL)
    coords = jnp.concatenate([point_coords, jnp.zeros((B, 1, 2)), boxes.reshape(B, 2, 2)], axis=1)
    labels = jnp.concatenate([point_labels.astype(jnp.int32), pad_label, corner_labels], axis=1)

    pe = model.prompt_encoder
    sparse = pe._embed_points(coords.astype(jnp.float32), labels, pad=False)
    no_mask = jnp.broadcast_to(pe.no_mask_embed.embedding[...].reshape(1, -1, 1, 1), (1, pe.embed_dim) + pe.image_embedding_size)
    dense = no_mask if mask_input is None else jnp.where(has_mask[:, None, None, None], pe._embed_masks(mask_input), no_mask)
    return model.mask_decoder(
        image_embeddings, pe.get_dense_pe(), sparse, dense, multimask_output, token_mask=labels != IGNORE_LABEL
    )


def upscale_masks(
    low_res_logits: jax.Array,
    config,
    input_size: tuple[int, int],
    original_size: tuple[int, int],
    mask_threshold: float | None,
) -> jax.Array:
    """(..., 4h, 4w) logits -> (..., H, W) logits at the original size, or boolean masks when a
    threshold is given. Compiled once per (input_size, original_size)."""
    masks = postprocess_masks(config, low_res_logits, input_size, original_size)
    return masks if mask_threshold is None else masks > mask_threshold


embed_images_jit = jax.jit(embed_images, static_argnums=0)
decode_prompts_jit = jax.jit(decode_prompts, static_argnums=(0, 9))
upscale_masks_jit = jax.jit(upscale_masks, static_argnums=(1, 2, 3, 4))
