"""A fine-tuning run's settings, in one object: every default written once (here and in the
nested settings), the derived fields computed once (the optimizer schedule's length is the run's
`steps`, its warmup 250 steps or a tenth of the run), every value checked when it is made.
`sam-jax train` reads its flags' defaults from these classes.

    config = TrainConfig(steps=500, freeze=("image_encoder",), optimizer=OptimizerSettings(learning_rate=1e-3))
    config.optimizer_settings.total_steps, config.optimizer_settings.warmup_steps       # 500, 50
"""

from __future__ import annotations

import dataclasses
import json

from ..numerics import DTYPES
from .augment import AugmentSettings
from .lora import LoraSettings
from .losses import LossSettings
from .optim import OptimizerSettings
from .prompts import PromptSettings

BOX_NOISE = ("normal", "uniform")
IOU_LOSSES = ("mse", "l1")


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
