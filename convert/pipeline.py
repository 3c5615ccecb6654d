"""From a file or a model name to a model's parameters, top to bottom:

    read(path_or_name)
      1. a name that is not a path        -> fetch(name): its converted folder in the cache, or
                                             weights.download_weights + convert, once (weights.py)
      2. the file's reader                -> folder.py (ours), safetensors.py, torch_pickle.py (.pth)
         and its names                    -> hf.py (Hugging Face names to official ones)
      3. keys and config                  -> keys.py (families/: which layer each key is; the
                                             config from the shapes, checked against a given one)
      4. every parameter against the model-> shapes.check_params
      5. another input size               -> image_size.with_image_size

    convert_checkpoint(source, output)    -> read, then folder.save: what `sam-jax convert` runs

`sam_jax.load` is `read` followed by building the model (`sam_jax.build_sam.model_from_params`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import NamedTuple

import numpy as np

from sam_jax.config import SamConfig, get_config
from sam_jax.io.outputs import check_output, file_digest
from sam_jax.runtime.progress import say

from . import folder, weights
from .download import exclusive
from .hf import hf_to_official, is_hf_state_dict
from .hf_config import HF_CONFIG, hf_config_fields, is_hf_config
from .image_size import with_image_size
from .keys import ConversionError, infer_config, official_to_params, resolve_config
from .safetensors import read_safetensors
from .shapes import check_params, check_structure, parameter_shapes
from .torch_pickle import load_torch_state_dict

HF_WEIGHTS = ("model.safetensors", "pytorch_model.bin")  # what a transformers model folder holds


class Checkpoint(NamedTuple):
    """What `read` found: the model's config and {our parameter path: float32 array}, and the
    config file beside the weights that supplied the config (a Hugging Face config.json), if any."""

    config: SamConfig
    params: dict[tuple, np.ndarray]
    config_file: Path | None = None


def read(
    path_or_name: str | os.PathLike,
    model_type: str | None = None,
    config: SamConfig | None = None,
    image_size: int | None = None,
    quiet: bool = False,
) -> Checkpoint:
    """The checkpoint at `path_or_name` (a sam-jax folder, an official `.pth`, a Hugging Face
    `model.safetensors` or its folder), or the weights of a model name (see `weights`), fetched
    into the cache on first use. An existing path wins over a name. `model_type` or `config`
    cross-checks the configuration (and, for an official file, supplies what no tensor shape
    tells); `image_size` resamples the model to another input size."""
    path = Path(path_or_name)
    if not path.exists():
        path = fetch(str(path_or_name), quiet=quiet)  # a model name, else FileNotFoundError listing the names
    if path.is_dir() and folder.is_checkpoint(path):
        checkpoint = _read_folder(path, model_type, config)
    else:
        checkpoint = read_file(path, model_type, config)
    if image_size is not None:
        checkpoint = checkpoint._replace(**dict(zip(("config", "params"), with_image_size(checkpoint.config, checkpoint.params, image_size))))
    return checkpoint


def _read_folder(path: Path, model_type: str | None, config: SamConfig | None) -> Checkpoint:
    """A sam-jax folder. Its stored parameter shapes are checked against the model its
    config.json builds before anything is read, so a hand-edited config fails here, naming them."""
    stored = folder.read_config(path)
    expected = config or (get_config(model_type) if model_type else None)
    if expected is not None and stored != expected:
        raise ValueError(f"{path} holds a model whose config differs from {model_type or 'the requested config'}")
    try:
        shapes = folder.stored_shapes(path)
        check_structure(stored, shapes)  # before building the model that check_params compares with
        check_params(stored, shapes)
    except ConversionError as e:
        raise ConversionError(f"{path}: its {folder.CONFIG_FILE} does not describe its parameters: {e}") from None
    return Checkpoint(stored, folder.read_params(path, parameter_shapes(stored)))


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


def read_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """The official-named state dict of a checkpoint file or a Hugging Face folder's weights:
    `.safetensors` files with the safetensors reader (Hugging Face names, or official names
    saved so), anything else as a `torch.save` file."""
    return _read_state(weights_file(path))[0]


def _read_state(file: Path) -> tuple[dict[str, np.ndarray], bool]:
    """(official-named state dict, whether the file used Hugging Face names)."""
    state = read_safetensors(file) if file.suffix == ".safetensors" else load_torch_state_dict(file)
    hf = is_hf_state_dict(state)
    return (hf_to_official(state) if hf else state), hf


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


def read_file(path: str | os.PathLike, model_type: str | None = None, config: SamConfig | None = None) -> Checkpoint:
    """The config and parameters of an official `.pth`, a Hugging Face `model.safetensors` /
    `pytorch_model.bin`, or a Hugging Face model folder, every parameter checked.

    For a Hugging Face checkpoint the config comes from the transformers `config.json` beside it
    (unless `config` is given): the mask decoder's head count is in no tensor shape, so without
    either (or `model_type`) it is refused rather than assumed. An official `.pth` is the official
    architecture, whose decoder always has 8 heads."""
    file = weights_file(path)
    state, hf = _read_state(file)
    name, config_file = "the given config", None
    if hf and config is None:
        beside = file.parent / HF_CONFIG
        if beside.is_file():
            config, name, config_file = read_config_file(beside), str(beside), beside
        elif model_type is None:
            raise ConversionError(
                f"{file} is a Hugging Face checkpoint without the {HF_CONFIG} it was saved with: its mask decoder's "
                f"head count is in no tensor shape; put that {HF_CONFIG} beside it, or pass --config (or --model-type)"
            )
    config, params = convert_state_dict(state, model_type, config, name)
    check_params(config, params)
    return Checkpoint(config, params, config_file)


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


def fetch(name: str, *, quiet: bool = False) -> Path:
    """The converted checkpoint folder of a model name (see `weights`): from the cache, or
    downloaded, verified and converted into it once. Raises FileNotFoundError for an unknown name,
    `weights.DownloadError` (one line) when the download fails."""
    if name in weights.BUNDLED:
        return weights.BUNDLED[name]
    src = weights.source(name)
    target = weights.converted_path(src)
    if folder.is_checkpoint(target):
        return target
    # One process fetches and converts a name at a time; the others wait, then find it done.
    with exclusive(target.with_name(f".{target.name}.lock"), f"fetching {name}", quiet):
        if folder.is_checkpoint(target):
            return target
        if target.exists():  # not ours to replace
            raise FileExistsError(f"{target} exists but is not a sam-jax checkpoint: remove it to fetch {name}")
        raw = weights.download_weights(src, quiet=quiet)
        say(f"converting {raw.name} into {target} (once)", quiet)
        convert_checkpoint(raw, target, model_type=src.model_type)
        if weights.is_downloaded(src):
            raw.unlink(missing_ok=True)  # the converted copy is what later calls load
    return target


def convert_checkpoint(
    source: str | os.PathLike,
    output: str | os.PathLike,
    model_type: str | None = None,
    config_file: str | os.PathLike | None = None,
    overwrite: bool = False,
    image_size: int | None = None,
) -> SamConfig:
    """Converts an official `.pth` (or HF checkpoint or folder) into a sam-jax checkpoint folder:
    what `sam-jax convert` runs. `config_file` (a SamConfig JSON, or a transformers config.json)
    is checked against the shapes and supplies what they cannot tell (the decoder's head count).

    Before anything is read, `output` is checked (`sam_jax.io.outputs.check_output`): never the
    input or a folder holding it, never an existing file; an existing folder only with
    `overwrite`, and only a sam-jax checkpoint holding nothing else. The folder's record.json
    states the source's SHA-256 and the settings, so two conversions of the same file write the
    same record. `image_size`: write the model resampled to this input size."""
    file = weights_file(source)
    inputs = [source, file] + ([config_file] if config_file is not None else [])
    check_output(output, kind="dir", overwrite=overwrite, is_own=folder.is_own_folder, what=folder.OWN_OUTPUT, inputs=inputs)
    config = read_config_file(config_file) if config_file is not None else None
    checkpoint = read_file(file, model_type, config)
    config, params = checkpoint.config, checkpoint.params
    if image_size is not None:
        config, params = with_image_size(config, params, image_size)
    config_file = config_file if config_file is not None else checkpoint.config_file
    record = {
        "producer": "sam-jax convert",
        "source_sha256": file_digest(file),
        "config_sha256": None if config_file is None else file_digest(config_file),
        "model_type": model_type,
        "image_size": image_size,
    }
    folder.save(output, config, params, overwrite=overwrite, record=record)
    return config
