"""The simulated interaction of one training step (the SAM paper, appendix A), as pure functions.

Per object the rollout runs `PromptSettings.num_steps` rounds (first prompt, correction clicks,
mask-only steps) in a `lax.scan` with a fixed number of point slots, feeding back the
low-resolution logits of the output with the best predicted IoU; the per-round losses are summed.
Nothing depends on the object count at trace time: objects are (image, slot) pairs with a `valid`
flag, and the loss divides by the batch's valid count, a global sum under sharding. Every random
draw is an explicit noise array (`RolloutNoise`), so a rollout can be replayed exactly.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from ..functional import Prompts, embed_images
from ..modeling.prompt_encoder import IGNORE_LABEL
from ..resample import upsample_logits
from .losses import mask_terms, reduce_terms
from .prompts import PromptSettings, box_noise, in_image, mask_only_schedule, noisy_boxes, sample_points
from .trainable import decode_all


class Batch(NamedTuple):
    """B images with K object slots each. Exactly one of images / embeddings is given."""

    images: jax.Array | None  # (B, S, S, 3) uint8, resized image top-left, zero padding
    embeddings: jax.Array | None  # (B, C, h, w) float32 precomputed image embeddings
    input_sizes: jax.Array  # (B, 2) int32 (h, w) of the resized images
    masks: jax.Array  # (B, K, S, S) bool, in the model-input frame
    valid: jax.Array  # (B, K) bool


class Rollout(NamedTuple):
    """What a rollout returns besides the loss (metrics, and the prompts for inspection)."""

    parts: dict  # "focal", "dice", "iou": summed over rounds, each normalised by the object count
    iou_first: jax.Array  # (P,) IoU of the supervised output after the first prompt
    iou_last: jax.Array  # (P,) after the last round
    point_coords: jax.Array  # (P, N, 2) the clicks of the last round
    point_labels: jax.Array  # (P, N)
    boxes: jax.Array  # (P, 4)
    has_box: jax.Array  # (P,)


class RolloutNoise(NamedTuple):
    """Every random draw of a rollout of P objects on S x S masks."""

    is_box: jax.Array  # (P,) bool: the first prompt is a box
    box: jax.Array  # (P, 4) `box_noise`
    first_point: jax.Array  # (P, S, S) uniform: the first click
    mask_only: jax.Array  # (T - 1, P) bool: `mask_only_schedule`
    step_keys: jax.Array  # (T - 1, P, 2) each object's key of each later round's click noise (`click_noise`)


def object_keys(key: jax.Array, num_objects: int, offset: jax.Array | int = 0) -> jax.Array:
    """(P, 2) keys of objects offset .. offset + P - 1 of a step whose key is `key`. Each object's
    draws depend on its position alone, so a blank padding row or a split of the batch into
    micro-batches (`StepSettings.grad_accum`) changes no other object's prompts."""
    return jax.vmap(lambda i: jax.random.fold_in(key, i))(offset + jnp.arange(num_objects))


def rollout_noise(key: jax.Array, num_objects: int, size: int, settings: PromptSettings, offset: jax.Array | int = 0) -> RolloutNoise:
    """The noise of objects offset .. offset + num_objects - 1 of a step (see `object_keys`)."""

    def one(k):
        k_box, k_first, k_point, k_sched, k_steps = jax.random.split(k, 5)
        return RolloutNoise(
            jax.random.uniform(k_first) < settings.box_probability,
            box_noise(k_box, (), settings),
            jax.random.uniform(k_point, (size, size)),
            mask_only_schedule(k_sched, 1, settings)[:, 0],
            jax.random.split(k_steps, settings.num_steps - 1),
        )

    return jax.vmap(one, out_axes=RolloutNoise(0, 0, 0, 1, 1))(object_keys(key, num_objects, offset))


def click_noise(keys: jax.Array, size: int) -> jax.Array:
    """(P, S, S) uniform noise of one round's clicks from the objects' keys (P, 2) of that round
    (drawn inside the scan, one round at a time)."""
    return jax.vmap(lambda k: jax.random.uniform(k, (size, size)))(keys)


def rollout_loss(model, image_embeddings, gt, valid, input_sizes, num_objects, noise: RolloutNoise, settings):
    """Summed loss of the simulated interaction for P objects.

    image_embeddings (P, C, h, w); gt (P, S, S) bool; valid (P,) bool; input_sizes (P, 2);
    num_objects: the normaliser (global valid count); settings: the step's `StepSettings` (its
    prompts and loss). Returns (loss, Rollout)."""
    ps, ls = settings.prompts, settings.loss
    P, S = gt.shape[0], gt.shape[-1]
    N = ps.num_point_slots
    inside = in_image(input_sizes, S)
    slot0 = jnp.arange(N)[None, :] == 0

    def predict(prompts, has_one_point):
        logits, iou = decode_all(model, image_embeddings, prompts)
        M1 = iou.shape[1]
        # Multimask (outputs 1..M) only for a single point; otherwise the single output 0.
        multi = jnp.arange(M1)[None, :] > 0
        candidates = jnp.where(has_one_point[:, None], multi, ~multi)
        up = upsample_logits(logits, S).astype(jnp.float32)
        terms = mask_terms(up, iou.astype(jnp.float32), gt, candidates, ls, inside)
        loss, parts = reduce_terms(terms, valid, num_objects, ls)
        chosen = jnp.argmax(jnp.where(candidates, iou, -jnp.inf), axis=1)  # fed back: best predicted IoU
        take = lambda x: jnp.take_along_axis(x, chosen[:, None, None, None], axis=1)
        feedback = take(logits).astype(jnp.float32)
        feedback = feedback if ps.grad_through_masks else jax.lax.stop_gradient(feedback)
        return loss, parts, terms.actual_iou, feedback, take(up)[:, 0] > 0

    # Round 0: a point uniform in the mask, or a noisy box.
    is_box = noise.is_box
    box = noisy_boxes(gt, noise.box, input_sizes, ps)
    point, label = sample_points(gt, jnp.zeros_like(gt), noise.first_point, inside)
    coords = jnp.where(slot0[..., None], point[:, None], 0.0)
    labels = jnp.where(slot0 & ~is_box[:, None], label[:, None], IGNORE_LABEL).astype(jnp.int32)
    n_points = (~is_box).astype(jnp.int32)
    loss, parts, iou_first, feedback, pred = predict(Prompts(coords, labels, box, is_box), n_points == 1)

    def round_(carry, xs):
        coords, labels, n_points, feedback, pred = carry
        key_t, mask_only = xs
        point, label = sample_points(gt, pred, click_noise(key_t, S), inside)
        slot = (jnp.arange(N)[None, :] == n_points[:, None]) & ~mask_only[:, None]
        coords = jnp.where(slot[..., None], point[:, None], coords)
        labels = jnp.where(slot, label[:, None], labels)
        n_points = n_points + (~mask_only).astype(jnp.int32)
        prompts = Prompts(coords, labels, box, is_box, feedback, jnp.ones((P,), bool))
        loss, parts, actual, feedback, pred = predict(prompts, (n_points == 1) & ~is_box)
        return (coords, labels, n_points, feedback, pred), (loss, parts, actual)

    if ps.num_steps > 1:
        (coords, labels, _, _, _), (losses, step_parts, actuals) = jax.lax.scan(
            round_, (coords, labels, n_points, feedback, pred), (noise.step_keys, noise.mask_only)
        )
        loss = loss + losses.sum()
        parts = {k: parts[k] + step_parts[k].sum() for k in parts}
        iou_last = actuals[-1]
    else:
        iou_last = iou_first
    return loss, Rollout(parts, iou_first, iou_last, coords, labels, box, is_box)


def batch_loss(trainable, graphdef, fixed, batch: Batch, key, settings, offset: jax.Array | int = 0):
    """(loss, (Rollout, valid)) of a batch: embed the images (unless given), then the rollout for
    every (image, slot) object; `offset`: the position of its first object in the step's (a
    micro-batch's objects continue the numbering of the ones before it, `rollout_noise`)."""
    model = nnx.merge(graphdef, trainable, fixed)
    if batch.embeddings is None:
        full_graphdef, full_state = nnx.split(model)
        embeddings = embed_images(full_graphdef, full_state, batch.images, batch.input_sizes)
    else:
        embeddings = batch.embeddings
    B, K = batch.valid.shape
    S = batch.masks.shape[-1]
    per_object = lambda x: jnp.repeat(x, K, axis=0)
    valid = batch.valid.reshape(B * K)
    noise = rollout_noise(key, B * K, S, settings.prompts, offset)
    loss, out = rollout_loss(
        model, per_object(embeddings), batch.masks.reshape(B * K, S, S).astype(bool), valid,
        per_object(batch.input_sizes), jnp.sum(valid), noise, settings,
    )
    return loss, (out, valid)
