"""Model construction and loading: the official `build_sam.py` registry, and `load`, the one entry
point for every kind of checkpoint.

    sam = sam_jax.load("vit_b")                           # a model name: downloaded and converted once (weights.py)
    sam = sam_jax.load("sam_vit_b")                       # a folder written by `sam-jax convert`
    sam = sam_jax.load("sam_vit_b_01ec64.pth")            # an official checkpoint, converted in memory
    sam = sam_jax.load("facebook-sam-vit-base/")          # a Hugging Face folder (model.safetensors)
    sam = sam_jax.load("sam_vit_b", image_size=512)       # any multiple of 16: weights resampled
    sam = sam_jax.sam_model_registry["vit_b"](checkpoint="sam_vit_b_01ec64.pth")   # as the official
"""

from __future__ import annotations

import functools
import dataclasses
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from . import checkpoint, weights
from .config import SamConfig, get_config
from .convert import ConversionError, load_checkpoint, read_config_file, weights_file
from .convert.keys import official_key, official_shape
from .modeling import Sam
from .utils.download import exclusive
from .utils.io import check_output, file_digest
from .modeling.sam import with_numerics
from .numerics import Numerics
from .utils.memory import release_host_memory
from .utils.progress import say
from .utils.resample import resize_bicubic, resize_linear


def abstract_model(config: SamConfig) -> Sam:
    """The model's structure with shape-only variables: no memory allocated, no random init."""
    return nnx.eval_shape(lambda: Sam(config, rngs=nnx.Rngs(0)))


def parameter_shapes(config: SamConfig) -> dict[tuple, jax.ShapeDtypeStruct]:
    """{variable path: shape and dtype} of the model `config` builds."""
    return dict(_parameter_shapes(config))


@functools.lru_cache(maxsize=8)
def _parameter_shapes(config: SamConfig) -> tuple[tuple[tuple, jax.ShapeDtypeStruct], ...]:
    # Tracing the model's construction takes seconds; a load needs the shapes twice (the check
    # and the restore), and a session often loads the same configuration again.
    return tuple((p, jax.ShapeDtypeStruct(v.shape, v.dtype)) for p, v in nnx.to_flat_state(nnx.state(abstract_model(config))))


def check_params(config: SamConfig, params: dict[tuple, object]) -> None:
    """Raises ConversionError naming, by official key, every parameter of the model `config`
    builds that `params` lacks, every entry it has that the model does not, and every shape that
    differs (`params` values: arrays, anything with a `.shape`, or shape tuples)."""
    expected = {p: tuple(v.shape) for p, v in parameter_shapes(config).items()}
    shapes = {p: tuple(v) if isinstance(v, tuple) else tuple(v.shape) for p, v in params.items()}
    key = lambda p: official_key(p)[0]
    missing = sorted(key(p) for p in expected.keys() - shapes.keys())
    unexpected = sorted(key(p) if isinstance(p, tuple) else str(p) for p in shapes.keys() - expected.keys())
    misshaped = [
        f"{key(p)}: checkpoint {official_shape(p, shapes[p])}, model expects {official_shape(p, shape)}"
        for p, shape in expected.items() if p in shapes and shapes[p] != shape
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
    `.pth`, a Hugging Face `model.safetensors` or its folder (with its `config.json`). `model_type`
    or `config` cross-checks the configuration (and, for an official file, supplies what no tensor
    shape tells). A sam-jax folder's stored parameter shapes are checked against the model its
    config.json builds before anything is read, so a hand-edited config fails here, naming them."""
    path = Path(path)
    if path.is_dir() and checkpoint.is_checkpoint(path):
        stored = checkpoint.read_config(path)
        expected = config or (get_config(model_type) if model_type else None)
        if expected is not None and stored != expected:
            raise ValueError(f"{path} holds a model whose config differs from {model_type or 'the requested config'}")
        config = stored
        try:
            check_params(config, checkpoint.stored_shapes(path))
        except ConversionError as e:
            raise ConversionError(f"{path}: its {checkpoint.CONFIG_FILE} does not describe its parameters: {e}") from None
        return config, checkpoint.load(path, parameter_shapes(config))
    loaded = load_checkpoint(path, model_type, config)
    return loaded.config, loaded.params


def with_image_size(config: SamConfig, params: dict[tuple, np.ndarray], image_size: int) -> tuple[SamConfig, dict[tuple, np.ndarray]]:
    """(config, params) of the same model for square inputs of side `image_size` (a multiple of
    the patch size). The resolution-dependent weights are resampled on the host with torch's
    formulas: the absolute position embedding (1, g, g, C) bicubically (as SAM variants do when
    changing resolution) and the relative-position tables of the global-attention blocks
    (2g - 1, head_dim) linearly (as the official `get_rel_pos` does); windowed blocks keep theirs.
    Everything else is shared, unchanged."""
    p = config.patch_size
    if isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer)) or image_size <= 0 or image_size % p:
        raise ValueError(f"image_size must be a positive multiple of the patch size {p}, got {image_size!r}")
    if image_size == config.image_size:
        return config, params
    new = dataclasses.replace(config, image_size=int(image_size))
    grid, rel = new.image_embedding_size, 2 * new.image_embedding_size - 1
    params = dict(params)
    if config.use_abs_pos:
        key = ("image_encoder", "pos_embed")
        params[key] = resize_bicubic(np.asarray(params[key], np.float32), (grid, grid), axes=(1, 2))
    if config.use_rel_pos:
        for i in range(config.encoder_depth):
            if config.window_size == 0 or i in config.encoder_global_attn_indexes:
                for name in ("rel_pos_h", "rel_pos_w"):
                    key = ("image_encoder", "blocks", i, "attn", name)
                    params[key] = resize_linear(np.asarray(params[key], np.float32), rel, axis=0)
    return new, params


def load(
    path_or_name: str | os.PathLike,
    *,
    model_type: str | None = None,
    image_size: int | None = None,
    dtype: str = "float32",
    precision: str = "exact",
) -> Sam:
    """The model stored at `path_or_name` (see `read_params` for what it may be), or the official
    weights of a model name ("vit_b", "sam_vit_b_01ec64.pth", "facebook/sam-vit-base", ...; see
    `weights`), downloaded and converted on first use. An existing path wins over a name.

    model_type: "vit_b", "vit_l" or "vit_h" to check the checkpoint against (default: the
    configuration is read from the checkpoint, or inferred from its tensor shapes).
    image_size: the model's input side when it should differ from the checkpoint's (a multiple
    of 16; see `with_image_size`): prompts, masks and embeddings (S/16 square) all follow it.
    dtype: compute dtype, "float32" or "bfloat16" (parameters stay float32; see `with_numerics`).
    precision: "exact" (float32-equivalent matmuls on every backend) or "fast" (the backend's
    default; see `sam_jax.numerics`)."""
    numerics = Numerics(dtype, precision).check()  # before the (slow) read
    path = Path(path_or_name)
    if not path.exists():
        path = fetch(str(path_or_name))  # a model name, else FileNotFoundError listing the names
    config, params = read_params(path, model_type)
    if image_size is not None:
        config, params = with_image_size(config, params, image_size)
    model = model_from_params(config, params)
    release_host_memory()  # the reader's staging buffers
    return model if numerics == model.numerics else with_numerics(model, **numerics._asdict())


def fetch(name: str, *, quiet: bool = False) -> Path:
    """The converted checkpoint folder of a model name (see `weights`): from the cache, or
    downloaded, verified and converted into it once. Raises FileNotFoundError for an unknown name,
    `weights.DownloadError` (one line) when the download fails."""
    src = weights.source(name)
    folder = weights.converted_path(src)
    if checkpoint.is_checkpoint(folder):
        return folder
    # One process fetches and converts a name at a time; the others wait, then find it done.
    with exclusive(folder.with_name(f".{folder.name}.lock"), f"fetching {name}", quiet):
        if checkpoint.is_checkpoint(folder):
            return folder
        if folder.exists():  # not ours to replace
            raise FileExistsError(f"{folder} exists but is not a sam-jax checkpoint: remove it to fetch {name}")
        raw = weights.download_weights(src, quiet=quiet)
        say(f"converting {raw.name} into {folder} (once)", quiet)
        convert_checkpoint(raw, folder, model_type=src.model_type)
        if src.official is not None:
            raw.unlink(missing_ok=True)  # the converted copy is what later calls load
    return folder


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

    Before anything is read, `output` is checked (`utils.io.check_output`): never the input or a
    folder holding it, never an existing file; an existing folder only with `overwrite`, and only
    a sam-jax checkpoint holding nothing else. The folder's record.json states the source's
    SHA-256 and the settings, so two conversions of the same file write the same record.
    `image_size`: write the model resampled to this input size (`with_image_size`)."""
    weights_path = weights_file(source)
    inputs = [source, weights_path] + ([config_file] if config_file is not None else [])
    check_output(output, kind="dir", overwrite=overwrite, is_own=checkpoint.is_own_folder,
                 what=checkpoint.OWN_OUTPUT, inputs=inputs)
    config = read_config_file(config_file) if config_file is not None else None
    loaded = load_checkpoint(weights_path, model_type, config)
    config, params = loaded.config, loaded.params
    if image_size is not None:
        config, params = with_image_size(config, params, image_size)
    check_params(config, params)
    config_file = config_file if config_file is not None else loaded.config_file
    record = {
        "producer": "sam-jax convert",
        "source_sha256": file_digest(weights_path),
        "config_sha256": None if config_file is None else file_digest(config_file),
        "model_type": model_type,
        "image_size": image_size,
    }
    checkpoint.save(output, config, params, overwrite=overwrite, record=record)
    return config


def build_sam_from_config(config: SamConfig | str, checkpoint: str | os.PathLike | None = None, seed: int = 0) -> Sam:
    """A model of `config` (a SamConfig or a shipped config name): random weights (`seed`) when
    `checkpoint` is None, else the checkpoint's, which must match `config`."""
    name = config if isinstance(config, str) else None
    config = get_config(config) if isinstance(config, str) else config
    if checkpoint is None:
        return Sam(config, rngs=nnx.Rngs(seed))
    if not Path(checkpoint).exists():
        checkpoint = fetch(str(checkpoint))  # an official file name, as the official notebooks pass it
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
