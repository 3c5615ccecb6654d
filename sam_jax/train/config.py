"""A fine-tuning run's settings, in one object: every default written once (here and in the
nested settings), the derived fields computed once (the optimizer schedule's length is the run's
`steps`, its warmup 250 steps or a tenth of the run), every value checked when it is made.
`sam-jax train` reads its flags' defaults from these classes, before it imports JAX: the nested
settings are defined here (and imported by the modules that use them: prompts, losses, optim, lora),
so this module needs only NumPy.

    config = TrainConfig(steps=500, freeze=("image_encoder",), optimizer=OptimizerSettings(learning_rate=1e-3))
    config.optimizer_settings.total_steps, config.optimizer_settings.warmup_steps       # 500, 50
"""

from __future__ import annotations

import dataclasses
import json
from typing import NamedTuple

import numpy as np

from ..options import DTYPES
from .augment import AugmentSettings

BOX_NOISE = ("normal", "uniform")
IOU_LOSSES = ("mse", "l1")


class PromptSettings(NamedTuple):
    """How prompts are simulated (`prompts.py`, `rollout.py`)."""

    correction_points: int = 8  # correction clicks after the first prompt
    mask_only_steps: int = 2  # steps adding no click: the last one, the others at random positions
    box_probability: float = 0.5  # first prompt a box (else a point)
    box_noise: str = "normal"  # "normal": std box_noise_scale * side, clipped; "uniform": SAM 2's
    box_noise_scale: float = 0.1
    box_noise_max: float = 20.0  # pixels of the model input
    grad_through_masks: bool = False  # let gradients flow through the fed-back logits

    @property
    def num_steps(self) -> int:
        """Decoder calls per object: the first prompt, the corrections and the mask-only steps."""
        return 1 + self.correction_points + self.mask_only_steps

    @property
    def num_point_slots(self) -> int:
        """Point slots of every prompt (the first point and the corrections)."""
        return 1 + self.correction_points


class LossSettings(NamedTuple):
    """The training loss (`losses.py`)."""

    focal_weight: float = 20.0
    dice_weight: float = 1.0
    iou_weight: float = 1.0
    focal_alpha: float = 0.25  # < 0: no alpha weighting
    focal_gamma: float = 2.0
    iou_loss: str = "mse"  # "mse" or "l1"
    supervise_all_iou: bool = False  # IoU head loss averaged over all candidate outputs, not only the best


SCHEDULES = ("step", "cosine", "constant")
WARMUP_STEPS = 250  # the paper's linear warmup


class OptimizerSettings(NamedTuple):
    """AdamW and its schedule (`optim.py`)."""

    learning_rate: float = 1e-4  # peak, after the warmup
    total_steps: int | None = None  # the schedule's length; None: the run's steps (`TrainConfig` fills it in)
    schedule: str = "step"  # after the warmup: "step" (/10 drops at decay_boundaries), "cosine" or "constant"
    warmup_steps: int | None = None  # None: WARMUP_STEPS (the paper's), or a tenth of total_steps when that is less
    decay_boundaries: tuple[float, ...] = (60000 / 90000, 86666 / 90000)  # fractions of total_steps
    decay_factor: float = 0.1
    weight_decay: float = 0.1
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    clip_norm: float | None = 0.1  # None or 0: no clipping
    layer_decay: float = 1.0  # 1: no layer-wise decay (the paper used 0.8 for ViT-H)

    def resolve(self, total_steps: int | None = None) -> "OptimizerSettings":
        """These settings with the derived fields computed (total_steps from the run when unset,
        the warmup default) and every value checked: ValueError naming the field otherwise."""
        total = self.total_steps
        if total is not None and total_steps is not None and total != total_steps:
            raise ValueError(f"optimizer total_steps {total} differs from the run's {total_steps} steps: leave it unset")
        total = total if total is not None else total_steps
        if total is None and self.schedule in ("step", "cosine"):
            raise ValueError(f"the {self.schedule!r} schedule needs total_steps (the run's length)")
        warmup = self.warmup_steps if self.warmup_steps is not None else (WARMUP_STEPS if total is None else min(WARMUP_STEPS, total // 10))
        problems = []
        if self.schedule not in SCHEDULES:
            problems.append(f"unknown schedule {self.schedule!r} ({', '.join(SCHEDULES)})")
        if not self.learning_rate > 0:
            problems.append(f"learning_rate must be positive, got {self.learning_rate}")
        if total is not None and total < 1:
            problems.append(f"total_steps must be at least 1, got {total}")
        if warmup < 0:
            problems.append(f"warmup_steps must not be negative, got {warmup}")
        if not all(0 < b <= 1 for b in self.decay_boundaries):
            problems.append(f"decay_boundaries are fractions of the run in (0, 1], got {self.decay_boundaries}")
        if self.weight_decay < 0:
            problems.append(f"weight_decay must not be negative, got {self.weight_decay}")
        if self.clip_norm is not None and self.clip_norm < 0:
            problems.append(f"clip_norm must not be negative, got {self.clip_norm}")
        if not 0 < self.layer_decay <= 1:
            problems.append(f"layer_decay must be in (0, 1], got {self.layer_decay}")
        if problems:
            raise ValueError("; ".join(problems))
        return self._replace(total_steps=total, warmup_steps=warmup, clip_norm=self.clip_norm or None,
                             decay_boundaries=tuple(self.decay_boundaries))


TARGETS = ("qkv", "proj")  # LoRA's attention layers


class LoraSettings(NamedTuple):
    """LoRA factors on the image encoder's attention (`lora.py`)."""

    rank: int = 0  # r; 0: no LoRA
    scale: float = 1.0  # the update is scale * x A B (PEFT's lora_alpha / r)
    targets: tuple[str, ...] = ("qkv",)  # the attention layers that get factors: qkv, proj or both

    def problems(self) -> list[str]:
        out = []
        if not (type(self.rank) is int and self.rank >= 0):
            out.append(f"lora rank must be an integer >= 0, got {self.rank!r}")
        if not (isinstance(self.scale, (int, float)) and np.isfinite(self.scale) and self.scale != 0):
            out.append(f"lora scale must be a finite non-zero number, got {self.scale!r}")
        if not self.targets or not set(self.targets) <= set(TARGETS) or len(set(self.targets)) != len(self.targets):
            out.append(f"lora targets must be one or both of {', '.join(TARGETS)}, got {','.join(map(str, self.targets))!r}")
        return out


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    steps: int = 1000
    batch_size: int = 4  # images per step, over all devices and processes
    objects_per_image: int = 4  # masks sampled per image
    seed: int = 0
    dtype: str = "float32"  # compute dtype: float32 or bfloat16
    remat: bool = False  # recompute encoder activations in the backward pass (less memory)
    freeze: tuple[str, ...] = ()  # module names or regular expressions over parameter paths
    cache_embeddings: bool = True  # when the image encoder is frozen: embed each image once
    grad_accum: int = 1  # micro-batches of batch_size images per optimizer step (optax.MultiSteps)
    log_every: int = 10  # steps between metrics lines
    val_every: int = 0  # 0: validate only at the end (when there is validation data)
    val_images: int = 0  # the first N validation images, a fixed sample; 0: all of them
    patience: int = 0  # stop after this many validations without a better one-click mIoU; 0: never
    checkpoint_every: int = 100  # steps between saved training states
    keep_checkpoints: int = 2
    prompts: PromptSettings = PromptSettings()
    loss: LossSettings = LossSettings()
    optimizer: OptimizerSettings = OptimizerSettings()
    lora: LoraSettings = LoraSettings()
    augment: AugmentSettings = AugmentSettings()

    def __post_init__(self) -> None:
        problems = []
        for name in ("steps", "batch_size", "objects_per_image", "grad_accum", "log_every", "keep_checkpoints"):
            if not (type(getattr(self, name)) is int and getattr(self, name) >= 1):
                problems.append(f"{name} must be an integer >= 1, got {getattr(self, name)!r}")
        for name in ("val_every", "val_images", "patience", "checkpoint_every"):
            if not (type(getattr(self, name)) is int and getattr(self, name) >= 0):
                problems.append(f"{name} must be an integer >= 0, got {getattr(self, name)!r}")
        if self.dtype not in DTYPES:
            problems.append(f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        p, l = self.prompts, self.loss
        if p.correction_points < 0 or p.mask_only_steps < 0:
            problems.append("prompts.correction_points and prompts.mask_only_steps must not be negative")
        if p.box_noise not in BOX_NOISE:
            problems.append(f"prompts.box_noise must be one of {', '.join(BOX_NOISE)}, got {p.box_noise!r}")
        if l.iou_loss not in IOU_LOSSES:
            problems.append(f"loss.iou_loss must be one of {', '.join(IOU_LOSSES)}, got {l.iou_loss!r}")
        object.__setattr__(self, "lora", self.lora._replace(targets=tuple(self.lora.targets)))
        problems += self.lora.problems() + self.augment.problems()
        if self.lora.rank and "image_encoder" in self.freeze:
            problems.append("LoRA trains factors inside the image encoder: do not also freeze image_encoder "
                            "(its other weights are frozen under LoRA anyway)")
        if self.patience and not self.val_every:
            problems.append("patience (early stopping) counts validations: it needs val_every")
        try:
            self.optimizer.resolve(self.steps if type(self.steps) is int else None)
        except ValueError as e:
            problems.append(f"optimizer: {e}")
        if problems:
            raise ValueError("invalid TrainConfig: " + "; ".join(problems))
        object.__setattr__(self, "freeze", tuple(self.freeze))

    def replace(self, **changes) -> "TrainConfig":
        """A copy with `changes`, checked again (derived fields follow: they are computed, not stored)."""
        return dataclasses.replace(self, **changes)

    @property
    def optimizer_settings(self) -> OptimizerSettings:
        """The optimizer this run uses: `optimizer` with the schedule's length set to `steps` and
        the warmup default filled in (`OptimizerSettings.resolve`)."""
        return self.optimizer.resolve(self.steps)

    def to_dict(self) -> dict:
        """Every setting, the optimizer's derived ones filled in: what a run's record states."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["optimizer"] = self.optimizer_settings
        for k in ("prompts", "loss", "optimizer", "lora", "augment"):
            d[k] = d[k]._asdict()
        return json.loads(json.dumps(d))  # tuples -> lists, as read back


def defaults() -> dict:
    """Every default of a run by flag-like name: TrainConfig's fields, and the nested settings'
    own (prompts, loss, optimizer, augment) under their names, LoRA's as lora_*; what the CLI shows and uses."""
    nested = ("prompts", "loss", "optimizer", "lora", "augment")
    out = {f.name: f.default for f in dataclasses.fields(TrainConfig) if f.name not in nested}
    for settings in (PromptSettings, LossSettings, OptimizerSettings, AugmentSettings):
        out.update(settings._field_defaults)
    out.update({f"lora_{k}": v for k, v in LoraSettings._field_defaults.items()})
    return out
