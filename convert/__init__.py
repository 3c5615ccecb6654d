"""Checkpoint readers and the official key mapping: official `.pth` files (torch's zip and legacy
formats, read without torch and without executing their pickle) and Hugging Face `transformers`
SAM checkpoints, to an official-named state dict, then to sam_jax parameter paths and a config.

A leaf of the package: of sam_jax it imports only `sam_jax.config`. Writing the converted model
(Orbax) is `sam_jax.checkpoint`'s job, building it `sam_jax.build_sam`'s.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from sam_jax.config import SamConfig, get_config

from .hf import hf_to_official, is_hf_state_dict, read_safetensors
from .keys import ConversionError, infer_config, official_to_params, params_to_official, resolve_config
from .torch_pickle import CheckpointFormatError, UnsafeCheckpointError, load_torch_state_dict

__all__ = [
    "CheckpointFormatError", "ConversionError", "UnsafeCheckpointError", "convert_state_dict",
    "official_to_params", "params_to_official", "read_state_dict",
]


def read_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Reads a checkpoint file into an official-named state dict of NumPy arrays.

    `.safetensors` files are read as Hugging Face `transformers` SAM checkpoints (or official
    names saved as safetensors); anything else as a `torch.save` file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    state = read_safetensors(path) if path.suffix == ".safetensors" else load_torch_state_dict(path)
    if is_hf_state_dict(state):  # HF names (safetensors or pytorch_model.bin)
        state = hf_to_official(state)
    return state


def convert_state_dict(
    state: dict[str, np.ndarray], model_type: str | None = None, config: SamConfig | None = None
) -> tuple[SamConfig, dict[tuple, np.ndarray]]:
    """Official state dict -> (config, {our parameter path: float32 array}).

    The config is inferred from the tensor shapes and, when `model_type` or `config` is given,
    checked against it (and completed from it)."""
    base, name = config, "the given config"
    if base is None and model_type is not None:
        base, name = get_config(model_type), model_type
    return resolve_config(infer_config(state), base, name), official_to_params(state)
