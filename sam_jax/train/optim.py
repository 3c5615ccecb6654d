"""Optimizer for fine-tuning, from optax: AdamW with weight decay masked off biases and norms,
linear warmup then step decay (the paper's /10 drops) or cosine, gradient clipping, and
layer-wise learning-rate decay over the ViT blocks. Freezing is done before the optimizer sees
the parameters (`model.split_trainable`): frozen parameters get neither gradients nor state.

The paper (SAM, appendix A): AdamW (beta1 0.9, beta2 0.999), 250 linear warmup steps, lr drops by
10 at 60k and 86,666 of 90k steps (the default boundaries are those fractions of --steps),
weight decay 0.1, layer-wise decay 0.8. Gradient clipping at 0.1 follows SAM 2's training config.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from .config import SCHEDULES, OptimizerSettings

# Biases, the scales of every norm (nnx.LayerNorm, TinyViT's BatchNorm) and TinyViT's attention
# biases (its `no_weight_decay_keywords`).
NO_DECAY_LEAVES = ("bias", "scale", "attention_biases")


def learning_rate(step: jax.Array, s: OptimizerSettings) -> jax.Array:
    """The learning rate at `step` (0-based): linear warmup to learning_rate over warmup_steps
    (step k uses (k + 1) / warmup_steps of it), then the schedule."""
    s = s.resolve()
    step = jnp.asarray(step, jnp.float32)
    warm = jnp.minimum(1.0, (step + 1) / s.warmup_steps) if s.warmup_steps > 0 else 1.0
    if s.schedule == "step":
        drops = sum(jnp.where(step >= b, 1.0, 0.0) for b in decay_steps(s))
        base = s.learning_rate * s.decay_factor**drops
    elif s.schedule == "cosine":
        span = max(s.total_steps - s.warmup_steps, 1)
        t = jnp.clip((step - s.warmup_steps) / span, 0.0, 1.0)
        base = s.learning_rate * 0.5 * (1 + jnp.cos(math.pi * t))
    else:  # "constant"
        base = jnp.asarray(s.learning_rate, jnp.float32)
    return warm * base


def decay_steps(s: OptimizerSettings) -> list[int]:
    """The steps at which the "step" schedule divides the learning rate."""
    s = s.resolve()
    return [int(round(b * s.total_steps)) for b in s.decay_boundaries]


def layer_id(path: tuple, depth: int, stage_depths: tuple[int, ...] = ()) -> int:
    """ViTDet's layer index of a parameter: 0 for the patch and position embeddings, i + 1 for
    encoder block i, depth + 1 for everything after the blocks (neck, prompt encoder, decoder).
    A TinyViT's blocks (stage_depths: its blocks per stage) are numbered in order across the
    stages, and a stage's patch merging takes its last block's index (TinyViT's own
    `set_layer_lr_decay`)."""
    if path[0] == "image_encoder":
        if path[1] in ("patch_embed", "pos_embed"):
            return 0
        if path[1] == "blocks":
            return int(path[2]) + 1
        if path[1] == "layers":
            stage = int(path[2])
            before = sum(stage_depths[:stage])
            return before + (int(path[4]) + 1 if path[3] == "blocks" else stage_depths[stage])
    return depth + 1


def layer_decay_table(params: nnx.State, depth: int, decay: float, stage_depths: tuple[int, ...] = ()) -> nnx.State:
    """Learning-rate multipliers, a tree like `params`: decay ** (depth + 1 - layer_id)."""
    return _map_paths(lambda p, v: decay ** (depth + 1 - layer_id(p, depth, stage_depths)), params)


def weight_decay_mask(params: nnx.State) -> nnx.State:
    """True for the parameters that weight decay applies to (not biases, not norm scales)."""
    return _map_paths(lambda p, v: p[-1] not in NO_DECAY_LEAVES, params)


def make_optimizer(settings: OptimizerSettings, params: nnx.State, depth: int,
                   stage_depths: tuple[int, ...] = ()) -> optax.GradientTransformation:
    """The optax chain for the trainable `params` (an nnx.State) of a model whose image encoder
    has `depth` blocks (a TinyViT: `stage_depths` per stage). Equivalent to torch's AdamW with one
    parameter group per (layer, decay)."""
    settings = settings.resolve()
    parts = []
    if settings.clip_norm:
        parts.append(optax.clip_by_global_norm(settings.clip_norm))
    parts += [
        optax.scale_by_adam(settings.b1, settings.b2, settings.eps),
        optax.add_decayed_weights(settings.weight_decay, mask=weight_decay_mask(params)),
        optax.scale_by_schedule(lambda step: -learning_rate(step, settings)),
    ]
    if settings.layer_decay != 1.0:
        parts.append(scale_by_tree(layer_decay_table(params, depth, settings.layer_decay, stage_depths)))
    return optax.chain(*parts)


def scale_by_tree(multipliers) -> optax.GradientTransformation:
    """Multiplies each update by the fixed number at its place in `multipliers` (stateless)."""

    def update(updates, state, params=None):
        return jax.tree.map(lambda u, m: u * jnp.asarray(m, u.dtype), updates, multipliers), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def _map_paths(fn, state: nnx.State) -> nnx.State:
    flat = [(path, var.replace(fn(path, var.get_value()))) for path, var in nnx.to_flat_state(state)]
    return nnx.from_flat_state(flat)
