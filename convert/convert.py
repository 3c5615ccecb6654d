"""Conversion of official checkpoints to sam_jax parameters (`sam-jax convert`)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from sam_jax.config import SamConfig, get_config

from . import checkpoint
from .state_dict import infer_config, official_to_params, resolve_config


def convert_state_dict(
    state: dict[str, np.ndarray], model_type: str | None = None, config: SamConfig | None = None
) -> tuple[SamConfig, dict[tuple, np.ndarray]]:
    """Official state dict -> (config, {param path: float32 array}).

    The config is inferred from the tensor shapes and, when `model_type` or `config` is given,
    checked against it (and completed from it)."""
    from sam_jax.build_sam import abstract_model

    base, name = config, "the given config"
    if base is None and model_type is not None:
        base, name = get_config(model_type), model_type
    cfg = resolve_config(infer_config(state), base, name)
    return cfg, official_to_params(state, abstract_model(cfg))


def convert_checkpoint(
    checkpoint_path: str | os.PathLike,
    output: str | os.PathLike,
    model_type: str | None = None,
    config_file: str | os.PathLike | None = None,
    overwrite: bool = False,
) -> SamConfig:
    """Reads an official `.pth` (or HF `.safetensors`) file and writes an Orbax checkpoint dir."""
    output = Path(output)
    if output.exists() and not overwrite:
        raise FileExistsError(f"{output} already exists (use --overwrite to replace it)")
    config = SamConfig.load(config_file) if config_file is not None else None
    state = checkpoint.read_state_dict(checkpoint_path)
    cfg, params = convert_state_dict(state, model_type, config)
    checkpoint.save(output, cfg, params, overwrite=overwrite)
    return cfg
