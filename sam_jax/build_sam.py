"""Model construction and loading: the official `build_sam.py` registry, and `load`, the one entry
point for every kind of checkpoint.

    sam = sam_jax.load("sam_vit_b")                       # a folder written by `sam-jax convert`
    sam = sam_jax.load("sam_vit_b_01ec64.pth")            # an official checkpoint, converted in memory
    sam = sam_jax.load("facebook-sam-vit-base/")          # a Hugging Face folder (model.safetensors)
    sam = sam_jax.sam_model_registry["vit_b"](checkpoint="sam_vit_b_01ec64.pth")   # as the official
"""

from __future__ import annotations

import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from . import checkpoint
from .config import SamConfig, get_config
from .convert import ConversionError, convert_state_dict, read_state_dict
from .convert.keys import official_key, official_shape
from .modeling import Sam
from .modeling.sam import with_numerics
from .numerics import Numerics
from .utils.memory import release_host_memory

HF_WEIGHTS = "model.safetensors"


def abstract_model(config: SamConfig) -> Sam:
    """The model's structure with shape-only variables: no memory allocated, no random init."""
    return nnx.eval_shape(lambda: Sam(config, rngs=nnx.Rngs(0)))


def check_params(config: SamConfig, params: dict[tuple, object]) -> None:
    """Raises ConversionError naming, by official key, every parameter of the model `config`
    builds that `params` lacks, every entry it has that the model does not, and every shape that
    differs (`params` values: arrays or anything with a `.shape`)."""
    expected = {p: tuple(v.shape) for p, v in nnx.to_flat_state(nnx.state(abstract_model(config)))}
    key = lambda p: official_key(p)[0]
    missing = sorted(key(p) for p in expected.keys() - params.keys())
    unexpected = sorted(key(p) if isinstance(p, tuple) else str(p) for p in params.keys() - expected.keys())
    misshaped = [
        f"{key(p)}: checkpoint {official_shape(p, tuple(params[p].shape))}, model expects {official_shape(p, shape)}"
        for p, shape in expected.items() if p in params and tuple(params[p].shape) != shape
    ]
    problems = []
    if missing:
        problems.append(f"missing keys ({len(missing)}): {', '.join(missing)}")
    if unexpected:
        problems.append(f"unexpected keys ({len(unexpected)}): {', '.join(unexpected)}")
    if misshaped:
        problems.append(f"wrong shapes ({len(misshaped)}): {'; '.join(sorted(misshaped))}")
    if problems:
        raise ConversionError("checkpoint does not match the model config: " + " | ".join(problems))


def model_from_params(config: SamConfig, params: dict[tuple, np.ndarray]) -> Sam:
    """A Sam whose every variable comes from `params` ({variable path: array}), checked first
    (`check_params`): nothing is left at its random init, nothing is ignored."""
    check_params(config, params)
    graphdef, state = nnx.split(abstract_model(config))
    flat = nnx.to_flat_state(state)
    for path, var in flat:
        var.set_value(jnp.asarray(params[path], dtype=var.dtype))
    return nnx.merge(graphdef, nnx.from_flat_state(flat))


def read_params(
    path: str | os.PathLike, model_type: str | None = None, config: SamConfig | None = None
) -> tuple[SamConfig, dict[tuple, np.ndarray]]:
    """(config, {parameter path: array}) from any checkpoint on disk: a sam-jax folder, an official
    `.pth`, a Hugging Face `model.safetensors` or its folder. `model_type` or `config` cross-checks
    the configuration (and, for an official file, supplies what no tensor shape tells)."""
    path = Path(path)
    if path.is_dir() and checkpoint.is_checkpoint(path):
        stored = checkpoint.read_config(path)
        expected = config or (get_config(model_type) if model_type else None)
        if expected is not None and stored != expected:
            raise ValueError(f"{path} holds a model whose config differs from {model_type or 'the requested config'}")
        config = stored
        abstract = {p: jax.ShapeDtypeStruct(v.shape, v.dtype) for p, v in nnx.to_flat_state(nnx.state(abstract_model(config)))}
        return config, checkpoint.load(path, abstract)
    if path.is_dir():
        if not (path / HF_WEIGHTS).is_file():
            raise FileNotFoundError(f"{path} is neither a sam-jax checkpoint (config.json + params/) nor a folder with {HF_WEIGHTS}")
        path = path / HF_WEIGHTS
    return convert_state_dict(read_state_dict(path), model_type, config)


def load(
    path_or_name: str | os.PathLike, *, model_type: str | None = None, dtype: str = "float32", precision: str = "exact"
) -> Sam:
    """The model stored at `path_or_name` (see `read_params` for what it may be).

    model_type: "vit_b", "vit_l" or "vit_h" to check the checkpoint against (default: the
    configuration is read from the checkpoint, or inferred from its tensor shapes).
    dtype: compute dtype, "float32" or "bfloat16" (parameters stay float32; see `with_numerics`).
    precision: "exact" (float32-equivalent matmuls on every backend) or "fast" (the backend's
    default; see `sam_jax.numerics`)."""
    numerics = Numerics(dtype, precision).check()  # before the (slow) read
    path = Path(path_or_name)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    model = model_from_params(*read_params(path, model_type))
    release_host_memory()  # the reader's staging buffers
    return model if numerics == model.numerics else with_numerics(model, **numerics._asdict())


def convert_checkpoint(
    source: str | os.PathLike,
    output: str | os.PathLike,
    model_type: str | None = None,
    config_file: str | os.PathLike | None = None,
    overwrite: bool = False,
) -> SamConfig:
    """Converts an official `.pth` (or HF checkpoint) into a sam-jax checkpoint folder: what
    `sam-jax convert` runs. `config_file` (a SamConfig JSON) is checked against the shapes and
    supplies what they cannot tell (the decoder's head count)."""
    output = Path(output)
    if output.exists() and not overwrite:
        raise FileExistsError(f"{output} already exists (use --overwrite to replace it)")
    source = Path(source)
    if source.is_dir() and (source / HF_WEIGHTS).is_file():
        source = source / HF_WEIGHTS
    config = SamConfig.load(config_file) if config_file is not None else None
    cfg, params = convert_state_dict(read_state_dict(source), model_type, config)
    check_params(cfg, params)
    checkpoint.save(output, cfg, params, overwrite=overwrite)
    return cfg


def build_sam_from_config(config: SamConfig | str, checkpoint: str | os.PathLike | None = None, seed: int = 0) -> Sam:
    """A model of `config` (a SamConfig or a shipped config name): random weights (`seed`) when
    `checkpoint` is None, else the checkpoint's, which must match `config`."""
    name = config if isinstance(config, str) else None
    config = get_config(config) if isinstance(config, str) else config
    if checkpoint is None:
        return Sam(config, rngs=nnx.Rngs(seed))
    try:
        cfg, params = read_params(checkpoint, config=config)
    except ConversionError as e:
        raise ValueError(f"{checkpoint} does not hold a {name or 'model of the requested config'}: {e}") from None
    model = model_from_params(cfg, params)
    release_host_memory()
    return model


def build_sam_vit_h(checkpoint: str | os.PathLike | None = None) -> Sam:
    return build_sam_from_config("vit_h", checkpoint)


def build_sam_vit_l(checkpoint: str | os.PathLike | None = None) -> Sam:
    return build_sam_from_config("vit_l", checkpoint)


def build_sam_vit_b(checkpoint: str | os.PathLike | None = None) -> Sam:
    return build_sam_from_config("vit_b", checkpoint)


build_sam = build_sam_vit_h  # as the official module

sam_model_registry = {
    "default": build_sam_vit_h,
    "vit_h": build_sam_vit_h,
    "vit_l": build_sam_vit_l,
    "vit_b": build_sam_vit_b,
}
