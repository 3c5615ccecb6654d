"""Fine-tuning losses (the SAM paper, appendix A; SAM 2's training loss is the reference code).

Per mask: `focal_weight * focal + dice_weight * dice` on the mask logits, plus `iou_weight *` the
IoU head's error against the actual IoU of the thresholded prediction (under stop_gradient), each
over the image's own pixels (`region`: the padding of the model's input square is no pixel of the
image, so that the focal term of a 2:1 image is a mean over its pixels, not half of one). With
several candidate outputs only the one with the lowest `focal_weight * focal + dice_weight * dice`
is supervised (the first on ties). Each term is summed over the valid objects of the batch and
divided by their global count (at least 1), so the loss of a sharded batch is the same number.

Everything here is a pure function of arrays; the leading axes are free, the last two are pixels.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from .config import LossSettings


def _sum_pixels(x: jax.Array, region: jax.Array | None) -> jax.Array:
    return (x if region is None else jnp.where(region, x, 0)).sum(axis=(-2, -1))


def sigmoid_focal_loss(logits: jax.Array, targets: jax.Array, alpha: float = 0.25, gamma: float = 2.0,
                       region: jax.Array | None = None) -> jax.Array:
    """Focal loss (Lin et al.) averaged over the pixels: (..., H, W) logits and 0/1 targets -> (...).
    region (..., H, W) bool, broadcast against them: the pixels averaged over (None: all)."""
    targets = targets.astype(logits.dtype)
    p = jax.nn.sigmoid(logits)
    # Binary cross-entropy with logits in its stable form, as torch's.
    ce = jnp.maximum(logits, 0) - logits * targets + jnp.log1p(jnp.exp(-jnp.abs(logits)))
    p_t = p * targets + (1 - p) * (1 - targets)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    if region is None:
        return loss.mean(axis=(-2, -1))
    count = jnp.broadcast_to(region, loss.shape).sum(axis=(-2, -1))
    return _sum_pixels(loss, region) / jnp.maximum(count, 1)


def dice_loss(logits: jax.Array, targets: jax.Array, region: jax.Array | None = None) -> jax.Array:
    """`1 - (2 sum(p y) + 1) / (sum p + sum y + 1)` on sigmoid probabilities: (..., H, W) -> (...),
    the sums over `region` (as `sigmoid_focal_loss`)."""
    targets = targets.astype(logits.dtype)
    p = jax.nn.sigmoid(logits)
    numerator = 2 * _sum_pixels(p * targets, region)
    denominator = _sum_pixels(p, region) + _sum_pixels(targets, region)
    return 1 - (numerator + 1) / (denominator + 1)


def mask_iou(logits: jax.Array, targets: jax.Array, threshold: float = 0.0, region: jax.Array | None = None) -> jax.Array:
    """IoU of `logits > threshold` with the 0/1 targets over `region`, (..., H, W) -> (...); 0
    when both are empty (the union is clamped to 1, as SAM 2 does)."""
    pred = logits > threshold
    pred = pred if region is None else pred & region
    gt = targets > 0.5
    inter = jnp.sum(pred & gt, axis=(-2, -1)).astype(jnp.float32)
    union = jnp.sum(pred | gt, axis=(-2, -1)).astype(jnp.float32)
    return inter / jnp.maximum(union, 1.0)


class MaskTerms(NamedTuple):
    """Per-object terms of one prediction step, each (P,), and the supervised output index."""

    focal: jax.Array
    dice: jax.Array
    iou: jax.Array
    best: jax.Array  # (P,) int32
    actual_iou: jax.Array  # (P,) IoU of the supervised output with the target (a metric, no gradient)


def mask_terms(
    logits: jax.Array,
    iou_predictions: jax.Array,
    targets: jax.Array,
    candidates: jax.Array | None = None,
    settings: LossSettings = LossSettings(),
    region: jax.Array | None = None,
) -> MaskTerms:
    """The loss terms of P objects with M outputs each.

    logits (P, M, H, W), iou_predictions (P, M), targets (P, H, W) 0/1; candidates (P, M) bool
    marks the outputs that count (None: all); region (P, H, W) bool: each object's image pixels
    (None: all; the rollout passes the resized image, without the padding). The output with the
    lowest weighted focal + dice among the candidates is the supervised one."""
    P, M = iou_predictions.shape
    candidates = jnp.ones((P, M), bool) if candidates is None else candidates
    t = targets[:, None]
    r = None if region is None else region[:, None]
    focal = sigmoid_focal_loss(logits, t, settings.focal_alpha, settings.focal_gamma, r)
    dice = dice_loss(logits, t, r)
    actual = jax.lax.stop_gradient(mask_iou(logits, t, region=r))
    err = iou_predictions - actual
    iou = jnp.abs(err) if settings.iou_loss == "l1" else err**2
    combo = settings.focal_weight * focal + settings.dice_weight * dice
    best = jnp.argmin(jnp.where(candidates, jax.lax.stop_gradient(combo), jnp.inf), axis=1)
    pick = lambda x: jnp.take_along_axis(x, best[:, None], axis=1)[:, 0]
    if settings.supervise_all_iou:
        iou_term = jnp.sum(jnp.where(candidates, iou, 0.0), axis=1) / jnp.maximum(candidates.sum(axis=1), 1)
    else:
        iou_term = pick(iou)
    return MaskTerms(pick(focal), pick(dice), iou_term, best.astype(jnp.int32), pick(actual))


def reduce_terms(terms: MaskTerms, valid: jax.Array, num_objects: jax.Array, settings: LossSettings = LossSettings()):
    """(weighted total, {"focal", "dice", "iou"}) of one step: each term summed over the valid
    objects (valid (P,) bool) and divided by `num_objects` (the batch's global count, >= 1)."""
    n = jnp.maximum(num_objects, 1).astype(jnp.float32)
    mean = lambda x: jnp.sum(jnp.where(valid, x, 0.0)) / n
    parts = {"focal": mean(terms.focal), "dice": mean(terms.dice), "iou": mean(terms.iou)}
    total = settings.focal_weight * parts["focal"] + settings.dice_weight * parts["dice"] + settings.iou_weight * parts["iou"]
    return total, parts


def sam_loss(
    logits: jax.Array,
    iou_predictions: jax.Array,
    targets: jax.Array,
    valid: jax.Array,
    num_objects: jax.Array | None = None,
    candidates: jax.Array | None = None,
    settings: LossSettings = LossSettings(),
    region: jax.Array | None = None,
):
    """One step's loss: `mask_terms` then `reduce_terms`. num_objects None: the valid count here."""
    num_objects = jnp.sum(valid) if num_objects is None else num_objects
    return reduce_terms(mask_terms(logits, iou_predictions, targets, candidates, settings, region), valid, num_objects, settings)
