"""The predictor's device side: pure functions of a split model, `graphdef` (static structure) and `params` (the
arrays, an `nnx.State`). Pass both explicitly, so `jax.jit`, `jax.vmap` and `jax.grad` work
on them and no weights or image features are ever baked into a compiled function as constants.

    graphdef, params = nnx.split(model)
    emb = embed_images_jit(graphdef, params, images, input_sizes)

Prompt layout (`Prompts`). Points are (B, N, 2) xy in the resized-input frame with labels (B, N):
1 positive, 0 negative, 2 and 3 points without a label embedding (as the official predictor
takes them), -1 the official "not a point" token, IGNORE_LABEL (-2) an empty slot
(excluded from every attention, so padding never changes a result). A box is `boxes` (B, 4) with
`has_box` (B,); a mask input (B, 1, 4h, 4w) comes with `has_mask` (B,). All of it is
shape-static: one compilation serves every prompt count up to the bucket size, with or without
boxes and masks (`SamPredictor` pads prompts to the buckets on the host).

Every compiled function is declared the same way, `jax.jit(name, static_argnames=...)`: at module
level as `name_jit`, or bound to one model structure by `bind_model` (what the predictor and the
generator use: a call then passes only arrays).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from ..modeling.sam import postprocess_masks, preprocess
from ..resample import BAND_TILE, band_resample, band_weights


class Prompts(NamedTuple):
    """B prompts in fixed-shape slots (see the module docstring)."""

    point_coords: jax.Array  # (B, N, 2) float32, resized-input frame
    point_labels: jax.Array  # (B, N) int32, IGNORE_LABEL for empty slots
    boxes: jax.Array  # (B, 4) float32 xyxy, resized-input frame
    has_box: jax.Array  # (B,) bool
    mask_input: jax.Array | None = None  # (B, 1, 4h, 4w) float32 logits, or None for no masks at all
    has_mask: jax.Array | None = None  # (B,) bool


def bucket(n: int) -> int:
    """The next power of two >= n (at least 1): the padded size that a count n compiles for."""
    return 1 << max(0, n - 1).bit_length()


class ImageFeatures(NamedTuple):
    """What the decoder needs of a batch of images: the embeddings (B, C, h, w), and for an
    HQ-SAM decoder its per-image HQ features (B, 4h, 4w, C/8) (None for every other model)."""

    embeddings: jax.Array
    hq_features: jax.Array | None = None


def image_features(graphdef: nnx.GraphDef, params: nnx.State, images: jax.Array, input_sizes: jax.Array) -> ImageFeatures:
    """The `ImageFeatures` of a batch.

    images: (B, S, S, 3) uint8 (or float) RGB, each resized image in the top-left corner, S the
        model's image_size; input_sizes: (B, 2) int (h, w) of each resized image.
    """
    model = nnx.merge(graphdef, params)
    # Normalised as the model's preprocessing profile says, zero outside each resized region.
    x = preprocess(model.config, jnp.transpose(images, (0, 3, 1, 2)), input_sizes)
    if model.config.decoder != "hq":
        return ImageFeatures(model.image_encoder(x))
    embeddings, early = model.image_encoder.with_early_features(x)
    return ImageFeatures(embeddings, model.mask_decoder.hq_features(embeddings, early))


def embed_images(graphdef: nnx.GraphDef, params: nnx.State, images: jax.Array, input_sizes: jax.Array) -> jax.Array:
    """Image embeddings of a batch: (B, C, S/16, S/16) float32 (see `image_features` for the
    arguments, and for what an HQ-SAM decoder needs besides)."""
    return image_features(graphdef, params, images, input_sizes).embeddings


def dense_pe(graphdef: nnx.GraphDef, params: nnx.State) -> jax.Array:
    """The prompt encoder's positional encoding of the embedding grid, (1, C, h, w) float32: a
    function of the model alone (`PromptEncoder.get_dense_pe`), which callers that decode many
    times on one model compute once and pass to `decode_prompts`."""
    return nnx.merge(graphdef, params).prompt_encoder.get_dense_pe()


def decode_prompts(
    graphdef: nnx.GraphDef,
    params: nnx.State,
    image_embeddings: jax.Array,
    prompts: Prompts,
    multimask_output: bool,
    hq_features: jax.Array | None = None,
    hq_token_only: bool = False,
    image_pe: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
    """Low-resolution mask logits for B prompts.

    image_embeddings: (1 or B, C, h, w). Without mask inputs the image keys are shared by all
    prompts up to the first image-to-token attention (computed once). Returns logits
    (B, M, 4h, 4w) and IoU predictions (B, M), M = num_multimask_outputs if multimask_output else 1.
    With an HQ-SAM decoder, hq_features ((1 or B, 4h, 4w, C/8), from `image_features`) is
    required and M = 1: sam-hq's output (the best SAM mask plus the HQ mask, or the HQ mask alone
    with hq_token_only, static). image_pe: `dense_pe` of this model, or None to compute it here
    (its sines and cosines are 5 ms of a 30 ms TinyViT click on a CPU).
    """
    model = nnx.merge(graphdef, params)
    pe = model.prompt_encoder
    sparse, dense, token_mask = pe.embed(*prompts)
    image_pe = pe.get_dense_pe() if image_pe is None else image_pe
    if model.config.decoder == "hq":
        if hq_features is None:
            raise ValueError("an HQ-SAM decoder needs the image's hq_features (functional.image_features)")
        return model.mask_decoder.decode(image_embeddings, image_pe, sparse, dense, hq_features, multimask_output,
                                         hq_token_only, token_mask)
    return model.mask_decoder(image_embeddings, image_pe, sparse, dense, multimask_output, token_mask=token_mask)


def upscale_masks(
    low_res_logits: jax.Array,
    config,
    input_size: tuple[int, int],
    original_size: tuple[int, int],
    mask_threshold: float | None,
) -> jax.Array:
    """(..., 4h, 4w) logits -> (..., H, W) logits at the original size, or boolean masks when a
    threshold is given. Compiled once per (input_size, original_size).

    The official postprocess (upsample to the square input, crop the padding, resize) is taken
    as one banded matmul per axis (`resample.band_weights`, as automatic masks do): no
    image_size-squared intermediate, a third of the time of two gather-and-lerp resizes on a
    CPU, and the same logits to float32 rounding. MedSAM's one-step resize stays as it is."""
    if config.preprocess == "medsam":
        masks = postprocess_masks(config, low_res_logits, input_size, original_size)
    else:
        low = jnp.asarray(low_res_logits, jnp.float32)
        (rows, cols) = (
            band_weights(low.shape[axis], config.image_size, int(i), int(o), -(-int(o) // BAND_TILE) * BAND_TILE, int(o))
            for axis, i, o in ((-2, input_size[0], original_size[0]), (-1, input_size[1], original_size[1]))
        )
        masks = band_resample(band_resample(low, cols, axis=-1), rows, axis=-2)
        masks = masks[..., : original_size[0], : original_size[1]]
    return masks if mask_threshold is None else masks > mask_threshold


image_features_jit = jax.jit(image_features, static_argnames="graphdef")
embed_images_jit = jax.jit(embed_images, static_argnames="graphdef")
decode_prompts_jit = jax.jit(decode_prompts, static_argnames=("graphdef", "multimask_output", "hq_token_only"))
upscale_masks_jit = jax.jit(upscale_masks, static_argnames=("config", "input_size", "original_size", "mask_threshold"))


@functools.lru_cache(maxsize=32)
def bind_model(fn: Callable, graphdef: nnx.GraphDef, treedef, static_argnames: tuple[str, ...] = ()) -> Callable:
    """`fn(graphdef, params, *args)` compiled as a closure over `graphdef`, called as
    `bound(leaves, *args)` with `leaves = jax.tree.leaves(params)` (params of tree structure
    `treedef`). A `*_jit` call hashes the graphdef and flattens the nnx.State each time, about
    2 ms, more than a whole decoder call on an accelerator; here both happen once, when bound."""

    def call(leaves, *args, **kwargs):
        return fn(graphdef, jax.tree.unflatten(treedef, leaves), *args, **kwargs)

    call.__name__ = call.__qualname__ = fn.__name__  # compile events and profiles name the function
    return jax.jit(call, static_argnames=static_argnames)
