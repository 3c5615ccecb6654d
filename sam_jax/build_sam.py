"""Model construction and loading, mirroring the official `build_sam.py` registry."""

from __future__ import annotations

import os
from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from .config import SamConfig, get_config
from .modeling import Sam
from .utils.memory import release_host_memory


def abstract_model(config: SamConfig) -> Sam:
    """The model's structure with shape-only variables: no memory allocated, no random init."""
    return nnx.eval_shape(lambda: Sam(config, rngs=nnx.Rngs(0)))


def model_from_params(config: SamConfig, params: dict[tuple, np.ndarray]) -> Sam:
    """A Sam whose every variable comes from `params` ({variable path: array}); nothing is left at init."""
    graphdef, state = nnx.split(abstract_model(config))
    flat = nnx.to_flat_state(state)
    missing = [p for p, _ in flat if p not in params]
    if missing:
        raise ValueError(f"parameters missing for {len(missing)} variables, e.g. {'.'.join(map(str, missing[0]))}")
    for path, var in flat:
        var.set_value(jnp.asarray(params[path], dtype=var.dtype))
    return nnx.merge(graphdef, nnx.from_flat_state(flat))


def build_sam(config: SamConfig | str, checkpoint: str | os.PathLike | None = None, seed: int = 0) -> Sam:
    """Builds a model of `config` (a SamConfig or a shipped config name).

    checkpoint: None for random weights; a directory written by `sam-jax convert`; or an official
    `.pth` / HF `.safetensors` file, converted in memory (and checked against `config`)."""
    name = config if isinstance(config, str) else None
    config = get_config(config) if isinstance(config, str) else config
    if checkpoint is None:
        return Sam(config, rngs=nnx.Rngs(seed))
    path = Path(checkpoint)
    if path.is_dir():
        model = load(path)
        if model.config != config:
            raise ValueError(f"{path} holds a model whose config differs from {name or 'the requested config'}")
        return model
    from .convert.checkpoint import read_state_dict
    from .convert.convert import convert_state_dict

    cfg, params = convert_state_dict(read_state_dict(path), config=config)
    return model_from_params(cfg, params)


def load(directory: str | os.PathLike) -> Sam:
    """Loads a model from a directory written by `sam-jax convert` (config.json + Orbax params)."""
    from .convert import checkpoint

    config = checkpoint.read_config(directory)
    graphdef, state = nnx.split(abstract_model(config))
    abstract = {p: jax.ShapeDtypeStruct(v.shape, v.dtype) for p, v in nnx.to_flat_state(state)}
    config, params = checkpoint.load(directory, abstract)
    model = model_from_params(config, params)
    release_host_memory()  # the restore's staging buffers
    return model


sam_model_registry = {
    "default": partial(build_sam, "vit_h"),
    "vit_h": partial(build_sam, "vit_h"),
    "vit_l": partial(build_sam, "vit_l"),
    "vit_b": partial(build_sam, "vit_b"),
}
