"""A loadable model from any training state a run saved: the base checkpoint's parameters with the
trained ones of that step, LoRA factors merged into plain weights, written as a checkpoint folder
that `sam_jax.load` opens (and `sam-jax export-pth`, `export-onnx` take).

    export_step("runs/ft", sam_jax.load("vit_b"), "runs/ft-step300", step=300)
    sam-jax train-export --run runs/ft --checkpoint vit_b --step 300 --output runs/ft-step300

A run saves only its trained parameters (the rest is the base model's), so the base checkpoint it
started from is needed again; its content digest must be the one the run recorded.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from ..build_sam import model_from_params
from ..convert import folder
from ..modeling import Sam
from .lora import merge_params
from .run_folder import RECORD_FILE, RunFolder, flat_params, model_record, params_digest


def saved_steps(run: str | os.PathLike) -> list[int]:
    """The optimizer steps whose training state `run` holds (state/), oldest first."""
    _record(run)
    return sorted(RunFolder(run, 1).state_manager().all_steps())


def export_step(run: str | os.PathLike, base: Sam, output: str | os.PathLike, step: int | None = None,
                overwrite: bool = False) -> Path:
    """Writes the model of training state `step` (default: the last saved) of the run in folder
    `run`, started from `base`, to the checkpoint folder `output`; returns its path."""
    run = Path(run)
    record = _record(run)
    if params_digest(nnx.state(base)) != record["base_checkpoint_sha256"]:
        raise ValueError(f"{run} was not trained from this checkpoint (its content digest differs from the run's base): "
                         "pass the checkpoint that `sam-jax train` started from")
    manager = RunFolder(run, 1).state_manager()
    steps = sorted(manager.all_steps())
    if not steps:
        raise ValueError(f"{run} holds no saved training state")
    step = steps[-1] if step is None else step
    if step not in steps:
        raise ValueError(f"{run} holds no training state of step {step} (saved: {', '.join(map(str, steps))})")
    restored = manager.restore(step, args=ocp.args.Composite(train=ocp.args.StandardRestore()))["train"]["params"]
    model = trained_model(base, _flatten(restored), record["settings"].get("lora", {}).get("scale", 1.0))
    return folder.save(output, model.config, flat_params(model), overwrite=overwrite, record=model_record(record, step))


def trained_model(base: Sam, trained: dict[tuple, np.ndarray], lora_scale: float = 1.0) -> Sam:
    """A plain Sam: `base` with the `trained` parameters ({path: array}, a run's; LoRA factors
    merged at `lora_scale`)."""
    params = flat_params(base)
    params.update(trained)
    return model_from_params(base.config, merge_params(params, lora_scale))


def _record(run: str | os.PathLike) -> dict:
    path = Path(run) / RECORD_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{run} is not a sam-jax training run (no {RECORD_FILE})")
    try:
        return json.loads(path.read_text())
    except ValueError as e:
        raise ValueError(f"{path}: not a readable training record ({e})") from None


def _flatten(tree, prefix: tuple = ()) -> dict[tuple, np.ndarray]:
    """Orbax's nested dict (string keys) -> {path: array}, list positions as ints (nnx's paths)."""
    if not isinstance(tree, dict):
        return {prefix: np.asarray(tree)}
    out = {}
    for k, v in tree.items():
        key = int(k) if isinstance(k, str) and k.isdigit() else k
        out.update(_flatten(v, prefix + (key,)))
    return out
