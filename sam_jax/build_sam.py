"""Model construction (the official `build_sam.py` registry) and `load`, the one entry point for
every kind of checkpoint.

    sam = sam_jax.load("vit_b")                           # a model name: downloaded and converted once
    sam = sam_jax.load("sam_vit_b")                       # a folder written by `sam-jax convert`
    sam = sam_jax.load("sam_vit_b_01ec64.pth")            # an official checkpoint, converted in memory
    sam = sam_jax.load("facebook-sam-vit-base/")          # a Hugging Face folder (model.safetensors)
    sam = sam_jax.load("sam_vit_b", image_size=512)       # any multiple of 16: weights resampled
    sam = sam_jax.sam_model_registry["vit_b"](checkpoint="sam_vit_b_01ec64.pth")   # as the official

How a name or a file becomes parameters is `sam_jax.convert` (its `pipeline.py`, top to bottom).
"""

from __future__ import annotations

import os

import jax.numpy as jnp
import numpy as np
from flax import nnx

from .config import SamConfig, get_config
from .convert import ConversionError, check_params, read
from .convert.shapes import abstract_model
from .modeling import Sam, with_numerics
from .numerics import Numerics
from .runtime.memory import release_host_memory


def load(
    path_or_name: str | os.PathLike,
    *,
    model_type: str | None = None,
    image_size: int | None = None,
    dtype: str = "float32",
    precision: str = "exact",
) -> Sam:
    """The model stored at `path_or_name` (a sam-jax folder, an official `.pth`, a Hugging Face
    `model.safetensors` or its folder), or the weights of a model name ("vit_b",
    "sam_vit_b_01ec64.pth", "facebook/sam-vit-base", ...; see `sam_jax.convert.weights`),
    downloaded and converted on first use. An existing path wins over a name.

    model_type: "vit_b", "vit_l" or "vit_h" to check the checkpoint against (default: the
    configuration is read from the checkpoint, or inferred from its tensor shapes).
    image_size: the model's input side when it should differ from the checkpoint's (a multiple
    of the patch size, 16, or of a TinyViT's stride, 16 or LiteMedSAM's 4; see
    `sam_jax.convert.with_image_size`): prompts, masks and embeddings (square, S / the patch size)
    all follow it.
    dtype: compute dtype, "float32" or "bfloat16" (parameters stay float32; see `with_numerics`).
    precision: "exact" (float32-equivalent matmuls on every backend) or "fast" (the backend's
    default; see `sam_jax.numerics`)."""
    numerics = Numerics(dtype, precision).check()  # before the (slow) read
    checkpoint = read(path_or_name, model_type, image_size=image_size)
    model = model_from_params(checkpoint.config, checkpoint.params)
    release_host_memory()  # the reader's staging buffers
    return model if numerics == model.numerics else with_numerics(model, **numerics._asdict())


def model_from_params(config: SamConfig, params: dict[tuple, np.ndarray]) -> Sam:
    """A Sam whose every variable comes from `params` ({variable path: array}), checked first
    (`check_params`): nothing is left at its random init, nothing is ignored."""
    check_params(config, params)
    graphdef, state = nnx.split(abstract_model(config))
    flat = nnx.to_flat_state(state)
    for path, var in flat:
        var.set_value(jnp.asarray(params[path], dtype=var.dtype))
    return nnx.merge(graphdef, nnx.from_flat_state(flat))


def build_sam_from_config(config: SamConfig | str, checkpoint: str | os.PathLike | None = None, seed: int = 0) -> Sam:
    """A model of `config` (a SamConfig or a shipped config name): random weights (`seed`) when
    `checkpoint` is None, else the checkpoint's (a path or a model name), which must match `config`."""
    name = config if isinstance(config, str) else None
    config = get_config(config) if isinstance(config, str) else config
    if checkpoint is None:
        return Sam(config, rngs=nnx.Rngs(seed))
    try:
        found = read(checkpoint, config=config)
    except ConversionError as e:
        raise ValueError(f"{checkpoint} does not hold a {name or 'model of the requested config'}: {e}") from None
    model = model_from_params(found.config, found.params)
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
