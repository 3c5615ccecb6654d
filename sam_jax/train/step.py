"""The training step: a pure function of (graphdef, state, frozen parameters, batch), compiled once.

Per object the step simulates `PromptSettings.num_steps` rounds of interaction (first prompt,
correction clicks, mask-only steps) in a `lax.scan` with a fixed number of point slots, feeding
back the low-resolution logits of the output with the best predicted IoU; the per-round losses are
summed. Nothing depends on the object count at trace time: objects are (image, slot) pairs with a
`valid` flag, and the loss divides by the batch's valid count, a global sum under sharding.

    state, metrics = train_step_jit(graphdef, state, fixed, batch, settings=settings)

Sharding: with a `mesh` (static; `sam_jax.parallel.make_mesh`) the batch is constrained to be split
over every device and the new state to `state_shardings` (replicated, or split over `fsdp`); pass
the state and the frozen parameters placed that way (`parallel.place`). The compiler reduces the
gradients: nothing here is a hand-written collective.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh

from ..functional import Prompts, embed_images
from ..modeling.common import interpolate_linear, linear_taps
from ..modeling.prompt_encoder import IGNORE_LABEL
from ..parallel import batch_sharding, fsdp_shardings, replicated
from .losses import LossSettings, mask_terms, reduce_terms
from .model import decode_all
from .optim import OptimizerSettings, learning_rate, make_optimizer
from .prompts import PromptSettings, box_noise, in_image, mask_only_schedule, noisy_boxes, sample_points


class Batch(NamedTuple):
    """B images with K object slots each. Exactly one of images / embeddings is given."""

    images: jax.Array | None  # (B, S, S, 3) uint8, resized image top-left, zero padding
    embeddings: jax.Array | None  # (B, C, h, w) float32 precomputed image embeddings
    input_sizes: jax.Array  # (B, 2) int32 (h, w) of the resized images
    masks: jax.Array  # (B, K, S, S) bool, in the model-input frame
    valid: jax.Array  # (B, K) bool


class TrainState(NamedTuple):
    step: jax.Array  # () int32
    params: nnx.State  # the trainable parameters
    opt_state: optax.OptState
    rng: jax.Array  # (2,) uint32 base key; step k uses fold_in(rng, k)


class StepSettings(NamedTuple):
    """Everything static about a step (hashable by value: equal settings reuse one compilation)."""

    prompts: PromptSettings = PromptSettings()
    loss: LossSettings = LossSettings()
    optimizer: OptimizerSettings = OptimizerSettings()
    encoder_depth: int = 12  # for the layer-wise learning-rate decay


class Rollout(NamedTuple):
    """What a rollout returns besides the loss (metrics, and the prompts for inspection)."""

    parts: dict  # "focal", "dice", "iou": summed over rounds, each normalised by the object count
    iou_first: jax.Array  # (P,) IoU of the supervised output after the first prompt
    iou_last: jax.Array  # (P,) after the last round
    point_coords: jax.Array  # (P, N, 2) the clicks of the last round
    point_labels: jax.Array  # (P, N)
    boxes: jax.Array  # (P, 4)
    has_box: jax.Array  # (P,)


def upsample_logits(x: jax.Array, size: int) -> jax.Array:
    """(..., n, n) -> (..., size, size): torch's bilinear resize (align_corners=False, the model's
    `postprocess_masks` first stage), written with slices when size is a multiple of n. The
    gather form's gradient is a scatter whose constant indices XLA spends minutes folding."""
    return _upsample_axis(_upsample_axis(x, size, x.ndim - 1), size, x.ndim - 2)


def _upsample_axis(x: jax.Array, out: int, axis: int) -> jax.Array:
    n = x.shape[axis]
    if out == n:
        return x
    i0, i1, w0, w1 = linear_taps(n, out)
    f = out // n
    # Output f*i + r reads padded positions (i + a_r, i + a_r + 1), where padded j is x[clip(j - 1)].
    offsets = [int(i0[f + r]) for r in range(f)] if out % n == 0 and n > 1 else []
    i = np.arange(n)
    exact = bool(offsets) and all(
        np.array_equal(np.clip(i + a - 1, 0, n - 1), i0[r::f]) and np.array_equal(np.clip(i + a, 0, n - 1), i1[r::f])
        for r, a in enumerate(offsets)
    )
    if not exact:
        return interpolate_linear(x, out, axis)
    first = jax.lax.slice_in_dim(x, 0, 1, axis=axis)
    last = jax.lax.slice_in_dim(x, n - 1, n, axis=axis)
    xp = jnp.concatenate([first, x, last], axis=axis)
    shape = [1] * x.ndim
    shape[axis] = n
    phases = []
    for r, a in enumerate(offsets):
        lo = jax.lax.slice_in_dim(xp, a, a + n, axis=axis)
        hi = jax.lax.slice_in_dim(xp, a + 1, a + 1 + n, axis=axis)
        phases.append(lo * jnp.asarray(w0[r::f].reshape(shape), x.dtype) + hi * jnp.asarray(w1[r::f].reshape(shape), x.dtype))
    y = jnp.stack(phases, axis=axis + 1)
    return y.reshape(x.shape[:axis] + (out,) + x.shape[axis + 1 :])


class RolloutNoise(NamedTuple):
    """Every random draw of a rollout of P objects on S x S masks."""

    is_box: jax.Array  # (P,) bool: the first prompt is a box
    box: jax.Array  # (P, 4) `box_noise`
    first_point: jax.Array  # (P, S, S) uniform: the first click
    mask_only: jax.Array  # (T - 1, P) bool: `mask_only_schedule`
    step_keys: jax.Array  # (T - 1, 2) keys of the later rounds' click noise (`click_noise`)


def rollout_noise(key: jax.Array, num_objects: int, size: int, settings: PromptSettings) -> RolloutNoise:
    P = num_objects
    k_box, k_first, k_point, k_sched, k_steps = jax.random.split(key, 5)
    return RolloutNoise(
        jax.random.uniform(k_first, (P,)) < settings.box_probability,
        box_noise(k_box, (P,), settings),
        click_noise(k_point, P, size),
        mask_only_schedule(k_sched, P, settings),
        jax.random.split(k_steps, settings.num_steps - 1),
    )


def click_noise(key: jax.Array, num_objects: int, size: int) -> jax.Array:
    """(P, S, S) uniform noise of one round's clicks (drawn inside the scan, one round at a time)."""
    return jax.random.uniform(key, (num_objects, size, size))


def rollout_loss(model, image_embeddings, gt, valid, input_sizes, num_objects, noise: RolloutNoise, settings: StepSettings):
    """Summed loss of the simulated interaction for P objects.

    image_embeddings (P, C, h, w); gt (P, S, S) bool; valid (P,) bool; input_sizes (P, 2);
    num_objects: the normaliser (global valid count). Returns (loss, Rollout)."""
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
        terms = mask_terms(up, iou.astype(jnp.float32), gt, candidates, ls)
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
        point, label = sample_points(gt, pred, click_noise(key_t, P, S), inside)
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


def batch_loss(trainable, graphdef, fixed, batch: Batch, key, settings: StepSettings):
    """(loss, (Rollout, valid)) of a batch: embed the images (unless given), then the rollout for
    every (image, slot) object."""
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
    noise = rollout_noise(key, B * K, S, settings.prompts)
    loss, out = rollout_loss(
        model, per_object(embeddings), batch.masks.reshape(B * K, S, S).astype(bool), valid,
        per_object(batch.input_sizes), jnp.sum(valid), noise, settings,
    )
    return loss, (out, valid)


def train_step(
    graphdef: nnx.GraphDef,
    state: TrainState,
    fixed: nnx.State,
    batch: Batch,
    settings: StepSettings,
    mesh: Mesh | None = None,
) -> tuple[TrainState, dict]:
    """One optimizer step. Returns the new state and scalar metrics (loss and its parts, gradient
    norm, learning rate, object count, mean IoU after the first and the last round)."""
    if mesh is not None:
        batch = jax.lax.with_sharding_constraint(batch, batch_shardings(batch, mesh))
    key = jax.random.fold_in(state.rng, state.step)
    grad_fn = jax.value_and_grad(batch_loss, has_aux=True)
    (loss, (out, valid)), grads = grad_fn(state.params, graphdef, fixed, batch, key, settings)
    optimizer = make_optimizer(settings.optimizer, state.params, settings.encoder_depth)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    new = TrainState(state.step + 1, params, opt_state, state.rng)
    if mesh is not None:
        new = jax.lax.with_sharding_constraint(new, state_shardings(new, mesh))
    n = jnp.maximum(jnp.sum(valid), 1)
    metrics = {
        "loss": loss, **out.parts,
        "grad_norm": optax.tree.norm(grads),
        "lr": learning_rate(state.step, settings.optimizer),
        "objects": jnp.sum(valid),
        "iou_first": jnp.sum(jnp.where(valid, out.iou_first, 0.0)) / n,
        "iou_last": jnp.sum(jnp.where(valid, out.iou_last, 0.0)) / n,
    }
    return new, metrics


def state_shardings(state: TrainState, mesh: Mesh) -> TrainState:
    """Where a `TrainState` lives on `mesh`: parameters and optimizer state by
    `parallel.fsdp_shardings` (replicated with fsdp 1; the AdamW moments have their parameters'
    shapes, so they are split alike), step and key replicated."""
    return TrainState(replicated(mesh), fsdp_shardings(state.params, mesh), fsdp_shardings(state.opt_state, mesh), replicated(mesh))


def batch_shardings(batch: Batch, mesh: Mesh) -> Batch:
    """Every field's leading (image) axis split over all devices of `mesh`."""
    return Batch(*(None if x is None else batch_sharding(mesh, x.ndim) for x in batch))


def init_state(trainable: nnx.State, settings: StepSettings, seed: int) -> TrainState:
    """Step 0. The parameters are copied: the step donates its state, and the model they came from keeps its own."""
    trainable = jax.tree.map(jnp.copy, trainable)
    optimizer = make_optimizer(settings.optimizer, trainable, settings.encoder_depth)
    return TrainState(jnp.zeros((), jnp.int32), trainable, optimizer.init(trainable), jax.random.PRNGKey(seed))


train_step_jit = jax.jit(
    train_step,
    static_argnames=("graphdef", "settings", "mesh"),
    donate_argnames=("state",),
)
