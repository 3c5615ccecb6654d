"""The training step: a pure function of (graphdef, state, frozen parameters, batch), compiled once.

    state, metrics = train_step_jit(graphdef, state, fixed, batch, settings=settings)

The loss is the rollout's (`rollout.batch_loss`); its gradient goes through the optax chain of
`optim.make_optimizer`. With `StepSettings.grad_accum` N > 1 every call is one micro-batch and
`optax.MultiSteps` applies the mean gradient of N of them: N micro-batches of B images are one
batch of N * B (their objects draw the same prompts, `rollout.object_keys`; the mean of the
micro-batches' losses is the big batch's when they hold equally many objects). With a `mesh` (static; `sam_jax.parallel.make_mesh`) the batch is
constrained to be split over every device and the new state to `sharding.state_shardings`
(replicated, or split over `fsdp`); pass the state and the frozen parameters placed that way
(`parallel.place`). The compiler reduces the gradients: nothing here is a hand-written collective.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh

from .losses import LossSettings
from .optim import OptimizerSettings, learning_rate, make_optimizer
from .prompts import PromptSettings
from .rollout import Batch, batch_loss
from .sharding import batch_shardings, state_shardings


class TrainState(NamedTuple):
    step: jax.Array  # () int32 batches taken (micro-batches with gradient accumulation; optimizer steps: step // grad_accum)
    params: nnx.State  # the trainable parameters
    opt_state: optax.OptState
    rng: jax.Array  # (2,) uint32 base key; step k uses fold_in(rng, k)


class StepSettings(NamedTuple):
    """Everything static about a step (hashable by value: equal settings reuse one compilation).
    A step alone knows no run length: `optimizer` is a run's (`TrainConfig.optimizer_settings`),
    or one whose schedule needs none (the default: constant after the warmup)."""

    prompts: PromptSettings = PromptSettings()
    loss: LossSettings = LossSettings()
    optimizer: OptimizerSettings = OptimizerSettings(schedule="constant")
    encoder_depth: int = 12  # blocks of the image encoder, for the layer-wise learning-rate decay
    encoder_stage_depths: tuple[int, ...] = ()  # a TinyViT's blocks per stage (a ViT: none)
    grad_accum: int = 1  # micro-batches per optimizer step (optax.MultiSteps)
    batch_size: int | None = None  # images of a micro-batch before padding (numbers the objects); None: its rows


def optimizer_for(settings: StepSettings, params: nnx.State) -> optax.GradientTransformation:
    """The step's optax transformation: `make_optimizer`, under `optax.MultiSteps` with accumulation."""
    optimizer = make_optimizer(settings.optimizer, params, settings.encoder_depth, settings.encoder_stage_depths)
    if settings.grad_accum > 1:
        optimizer = optax.MultiSteps(optimizer, every_k_schedule=settings.grad_accum).gradient_transformation()
    return optimizer


def encoder_layers(config) -> tuple[int, tuple[int, ...]]:
    """(encoder_depth, encoder_stage_depths) of a model config, as StepSettings takes them."""
    if config.encoder == "tiny_vit":
        return sum(config.tiny_vit_depths), tuple(config.tiny_vit_depths)
    return config.encoder_depth, ()


def train_step(
    graphdef: nnx.GraphDef,
    state: TrainState,
    fixed: nnx.State,
    batch: Batch,
    settings: StepSettings,
    mesh: Mesh | None = None,
) -> tuple[TrainState, dict]:
    """One optimizer step. Returns the new state and scalar metrics (loss and its parts, gradient
    norm, learning rate, object count, and iou_first / iou_last: the mean IoU, against the
    training targets at the model's input size, of the supervised output (the candidate with the
    lowest loss, as SAM trains) after the first prompt (a random click or a noisy box) and after
    the last round of the simulated interaction. They follow training; they are not the mIoU a
    user gets, which takes the output of best predicted IoU on fixed prompts: validation's,
    `sam_jax.evaluation`)."""
    if mesh is not None:
        batch = jax.lax.with_sharding_constraint(batch, batch_shardings(batch, mesh))
    optimizer_step, micro = jnp.divmod(state.step, settings.grad_accum)
    key = jax.random.fold_in(state.rng, optimizer_step)
    B, K = batch.valid.shape
    offset = micro * (B if settings.batch_size is None else settings.batch_size) * K
    grad_fn = jax.value_and_grad(batch_loss, has_aux=True)
    (loss, (out, valid)), grads = grad_fn(state.params, graphdef, fixed, batch, key, settings, offset)
    updates, opt_state = optimizer_for(settings, state.params).update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    new = TrainState(state.step + 1, params, opt_state, state.rng)
    if mesh is not None:
        new = jax.lax.with_sharding_constraint(new, state_shardings(new, mesh))
    n = jnp.maximum(jnp.sum(valid), 1)
    metrics = {
        "loss": loss, **out.parts,
        "grad_norm": optax.tree.norm(grads),
        "lr": learning_rate(optimizer_step, settings.optimizer),
        "objects": jnp.sum(valid),
        "iou_first": jnp.sum(jnp.where(valid, out.iou_first, 0.0)) / n,
        "iou_last": jnp.sum(jnp.where(valid, out.iou_last, 0.0)) / n,
    }
    return new, metrics


def init_state(trainable: nnx.State, settings: StepSettings, seed: int) -> TrainState:
    """Step 0. The parameters are copied: the step donates its state, and the model they came from keeps its own."""
    trainable = jax.tree.map(jnp.copy, trainable)
    return TrainState(jnp.zeros((), jnp.int32), trainable, optimizer_for(settings, trainable).init(trainable), jax.random.PRNGKey(seed))


train_step_jit = jax.jit(
    train_step,
    static_argnames=("graphdef", "settings", "mesh"),
    donate_argnames=("state",),
)
