"""Prompt simulation for training (the SAM paper, appendix A), as pure functions of arrays.

The first prompt of each object is, with equal probability, a point drawn uniformly in its mask or
its bounding box with each coordinate moved by noise. Each later step adds a correction click drawn
uniformly from the error region of the previous prediction (positive in false negatives, negative
in false positives; a negative background click when the prediction is already right), or adds
nothing (a "mask-only" step: the previous logits alone refine the mask). Randomness enters only
through explicit noise arrays, so the sampling can be replayed exactly from the same noise.

Coordinates are integer pixel positions (x, y) in the model-input frame; `inside` (P, H, W) marks
each object's resized image (clicks never land in the padding).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from .config import PromptSettings


def sample_points(gt: jax.Array, pred: jax.Array, noise: jax.Array, inside: jax.Array) -> tuple[jax.Array, jax.Array]:
    """One click per object, uniform over its error region.

    gt, pred, inside: (P, H, W) bool; noise: (P, H, W) uniform in [0, 1). The click is the pixel of
    largest noise in the region (uniform when the noise is i.i.d.; the first on ties). Returns
    coords (P, 2) float32 xy and labels (P,) int32: 1 in a false negative, else 0."""
    P, H, W = gt.shape
    fn = gt & ~pred & inside
    fp = ~gt & pred & inside
    wrong = fn | fp
    right = ~jnp.any(wrong, axis=(1, 2))
    region = wrong | (right[:, None, None] & ~gt & inside)
    k = jnp.argmax(jnp.where(region, noise, -1.0).reshape(P, H * W), axis=1)
    y, x = k // W, k % W
    labels = jnp.take_along_axis(fn.reshape(P, H * W), k[:, None], axis=1)[:, 0]
    return jnp.stack([x, y], axis=1).astype(jnp.float32), labels.astype(jnp.int32)


def mask_boxes(gt: jax.Array) -> jax.Array:
    """(P, H, W) bool -> (P, 4) float32 xyxy of the inclusive pixel extent (zeros when empty)."""
    P, H, W = gt.shape
    cols, rows = jnp.any(gt, axis=1), jnp.any(gt, axis=2)
    x0, y0 = jnp.argmax(cols, axis=1), jnp.argmax(rows, axis=1)
    x1, y1 = W - 1 - jnp.argmax(cols[:, ::-1], axis=1), H - 1 - jnp.argmax(rows[:, ::-1], axis=1)
    box = jnp.stack([x0, y0, x1, y1], axis=1).astype(jnp.float32)
    return jnp.where(jnp.any(cols, axis=1)[:, None], box, 0.0)


def noisy_boxes(gt: jax.Array, noise: jax.Array, input_sizes: jax.Array, settings: PromptSettings = PromptSettings()) -> jax.Array:
    """Bounding boxes of the masks, each coordinate moved by its noise, kept inside the image.

    noise (P, 4): standard normal ("normal": std box_noise_scale * side, clipped to
    +-box_noise_max) or uniform in [-1, 1] ("uniform", as SAM 2: times min(scale * side, max)).
    input_sizes (P, 2) (h, w) of the resized images. Returns (P, 4) float32 xyxy, x0 <= x1, y0 <= y1."""
    box = mask_boxes(gt)
    side = jnp.stack([box[:, 2] - box[:, 0], box[:, 3] - box[:, 1]] * 2, axis=1)
    if settings.box_noise == "normal":
        d = jnp.clip(noise * settings.box_noise_scale * side, -settings.box_noise_max, settings.box_noise_max)
    else:
        d = noise * jnp.minimum(settings.box_noise_scale * side, settings.box_noise_max)
    sizes = input_sizes.astype(jnp.float32)
    hi = jnp.stack([sizes[:, 1], sizes[:, 0]] * 2, axis=1) - 1
    box = jnp.clip(box + d, 0.0, hi)
    return jnp.stack(
        [jnp.minimum(box[:, 0], box[:, 2]), jnp.minimum(box[:, 1], box[:, 3]),
         jnp.maximum(box[:, 0], box[:, 2]), jnp.maximum(box[:, 1], box[:, 3])], axis=1
    )


def box_noise(key: jax.Array, shape: tuple[int, ...], settings: PromptSettings) -> jax.Array:
    """The noise `noisy_boxes` takes: standard normal or uniform in [-1, 1], (..., 4)."""
    if settings.box_noise == "normal":
        return jax.random.normal(key, shape + (4,))
    return jax.random.uniform(key, shape + (4,), minval=-1.0, maxval=1.0)


def mask_only_schedule(key: jax.Array, num_objects: int, settings: PromptSettings) -> jax.Array:
    """(num_steps - 1, P) bool: which steps after the first add no click. The last does (when
    mask_only_steps >= 1); the other mask_only_steps - 1 fall at random positions among the rest."""
    later = settings.num_steps - 1
    k = settings.mask_only_steps
    if k == 0:
        return jnp.zeros((later, num_objects), bool)
    before_last = later - 1
    # The k - 1 smallest of i.i.d. uniforms are a uniform random subset of the positions.
    u = jax.random.uniform(key, (before_last, num_objects))
    rank = jnp.argsort(jnp.argsort(u, axis=0), axis=0)
    return jnp.concatenate([rank < k - 1, jnp.ones((1, num_objects), bool)], axis=0)


def in_image(input_sizes: jax.Array, size: int) -> jax.Array:
    """(P, 2) resized (h, w) -> (P, size, size) bool, True inside the resized image."""
    r = jnp.arange(size)
    return (r[None, :, None] < input_sizes[:, 0, None, None]) & (r[None, None, :] < input_sizes[:, 1, None, None])
