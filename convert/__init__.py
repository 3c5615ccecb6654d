"""Checkpoint readers and the official key mapping: official `.pth` files (torch's zip and legacy
formats, read without torch and without executing their pickle) and Hugging Face `transformers`
SAM checkpoints, to an official-named state dict, then to sam_jax parameter paths and a config.

A leaf of the package: of sam_jax it imports only `sam_jax.config`. Writing the converted model
(Orbax) is `sam_jax.checkpoint`'s job, building it `sam_jax.build_sam`'s.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import NamedTuple

import numpy as np

from sam_jax.config import SamConfig, get_config

from .hf import hf_to_official, is_hf_state_dict, read_safetensors
from .hf_config import HF_CONFIG, hf_config_fields, is_hf_config
from .keys import ConversionError, infer_config, official_to_params, params_to_official, resolve_config
from .torch_pickle import CheckpointFormatError, UnsafeCheckpointError, load_torch_state_dict

__all__ = [
    "Checkpoint", "CheckpointFormatError", "ConversionError", "HF_WEIGHTS", "UnsafeCheckpointError", "convert_state_dict",
    "load_checkpoint", "official_to_params", "params_to_official", "read_config_file", "read_state_dict",
    "weights_file",
]

HF_WEIGHTS = ("model.safetensors", "pytorch_model.bin")  # what a transformers model folder holds


def weights_file(path: str | os.PathLike) -> Path:
    """The checkpoint file at `path`: the file itself, or the weights of a Hugging Face folder."""
    path = Path(path)
    if path.is_dir():
        found = [path / name for name in HF_WEIGHTS if (path / name).is_file()]
        if not found:
            raise FileNotFoundError(
                f"{path} is neither a sam-jax checkpoint (config.json + params/) nor a Hugging Face model folder "
                f"({' or '.join(HF_WEIGHTS)})"
            )
        return found[0]
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    return path


def _read(path: Path) -> tuple[dict[str, np.ndarray], bool]:
    """(official-named state dict, whether the file used Hugging Face names)."""
    state = read_safetensors(path) if path.suffix == ".safetensors" else load_torch_state_dict(path)
    hf = is_hf_state_dict(state)  # HF names (safetensors or pytorch_model.bin)
    return (hf_to_official(state) if hf else state), hf


def read_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Reads a checkpoint file (or a Hugging Face folder's weights) into an official-named state
    dict of NumPy arrays.

    `.safetensors` files are read as Hugging Face `transformers` SAM checkpoints (or official
    names saved as safetensors); anything else as a `torch.save` file."""
    return _read(weights_file(path))[0]


def read_config_file(path: str | os.PathLike) -> SamConfig:
    """A SamConfig JSON file (ours), or a transformers SamConfig (a Hugging Face config.json)."""
    try:
        with open(path) as f:
            data = json.load(f)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise ValueError(f"{path}: not a readable JSON config ({type(e).__name__})") from None
    if is_hf_config(data):
        fields = hf_config_fields(data, os.fspath(path))
        return SamConfig.from_dict({**SamConfig().to_dict(), **fields})
    return SamConfig.load(path)


def convert_state_dict(
    state: dict[str, np.ndarray], model_type: str | None = None, config: SamConfig | None = None,
    config_name: str = "the given config",
) -> tuple[SamConfig, dict[tuple, np.ndarray]]:
    """Official state dict -> (config, {our parameter path: float32 array}).

    The config is inferred from the tensor shapes and, when `model_type` or `config` is given,
    checked against it (and completed from it); given both, they must be the same model."""
    base, name = config, config_name
    if model_type is not None:
        named = get_config(model_type)
        if base is None:
            base, name = named, model_type
        elif base != named:
            diff = [f"{k}: {v!r} vs {model_type} {named.to_dict()[k]!r}" for k, v in base.to_dict().items()
                    if v != named.to_dict()[k]]
            raise ConversionError(f"{config_name} describes another model than {model_type}: " + "; ".join(diff))
    return resolve_config(infer_config(state), base, name), official_to_params(state)


class Checkpoint(NamedTuple):
    """What `load_checkpoint` read: the model's config and parameters, and the config file beside
    the weights that supplied the config (a Hugging Face config.json), if any."""

    config: SamConfig
    params: dict[tuple, np.ndarray]
    config_file: Path | None


def load_checkpoint(
    path: str | os.PathLike, model_type: str | None = None, config: SamConfig | None = None
) -> Checkpoint:
    """The config and {our parameter path: float32 array} of an official `.pth`, a Hugging Face
    `model.safetensors` / `pytorch_model.bin`, or a Hugging Face model folder.

    For a Hugging Face checkpoint the config comes from the transformers `config.json` beside it
    (unless `config` is given): the mask decoder's head count is in no tensor shape, so without
    either (or `model_type`) it is refused rather than assumed. An official `.pth` is the official
    architecture, whose decoder always has 8 heads."""
    weights = weights_file(path)
    state, hf = _read(weights)
    name, config_file = "the given config", None
    if hf and config is None:
        beside = weights.parent / HF_CONFIG
        if beside.is_file():
            config, name, config_file = read_config_file(beside), str(beside), beside
        elif model_type is None:
            raise ConversionError(
                f"{weights} is a Hugging Face checkpoint without the {HF_CONFIG} it was saved with: its mask decoder's "
                f"head count is in no tensor shape; put that {HF_CONFIG} beside it, or pass --config (or --model-type)"
            )
    return Checkpoint(*convert_state_dict(state, model_type, config, name), config_file)
