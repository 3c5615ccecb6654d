"""Official PyTorch state-dict keys <-> sam_jax parameter paths, and the config the tensor shapes
imply: the pipeline's second stage. Pure naming and array layout; what each architecture's
module paths are is in `families/`.

Each of our parameters has exactly one official key: the official module path with our leaf name
in place of the official one. The layer kind, and with it the layout change, is read off the
official module path (the families' `RULES`; a module matching none is a Linear):

    kind              official leaf, layout            ours
    linear            weight (out, in)                 kernel (in, out)
    conv              weight (out, in/groups, kh, kw)  kernel (kh, kw, in/groups, out)
    conv_transpose    weight (in, out, kh, kw)         kernel (kh, kw, in, out)
    layer_norm        weight                           scale
    batch_norm        weight, running_mean/_var        scale, mean, var (num_batches_tracked dropped)
    embedding         weight                           embedding
    anything          bias, pos_embed, rel_pos_h/w,    same name, same layout
                      positional_encoding_gaussian_matrix, attention_biases

Shapes are checked against the model by the next stage (`shapes.check_params`).

The way back (`reference_state_dict`, what `sam-jax export-pth` writes) is the same table read
the other way, plus what the converter dropped that the family's own PyTorch model still holds:
each BatchNorm's `num_batches_tracked` (written as 0: eval mode never reads it, and training
with a momentum does not either) and each family's `restore` (TinyViT's unused classifier).
"""

from __future__ import annotations

import re

import numpy as np

from sam_jax.config import SamConfig

from . import families
from .families.common import ConversionError

Path = tuple[str | int, ...]

# kind -> {official leaf: (our leaf, permutation of the official layout into ours, or None)}
LEAVES: dict[str, dict[str, tuple[str, tuple[int, ...] | None]]] = {
    "linear": {"weight": ("kernel", (1, 0))},
    "conv": {"weight": ("kernel", (2, 3, 1, 0))},
    "conv_transpose": {"weight": ("kernel", (2, 3, 0, 1))},
    "layer_norm": {"weight": ("scale", None)},
    "batch_norm": {"weight": ("scale", None), "running_mean": ("mean", None), "running_var": ("var", None)},
    "embedding": {"weight": ("embedding", None)},
}
_RULES = [(kind, re.compile(rx)) for f in families.FAMILIES for kind, rx in f.RULES]
# Keys the published files carry that no model uses: BatchNorm's step counter, and each family's.
_DROPPED = re.compile("|".join([r".*\.num_batches_tracked"] + [rx for f in families.FAMILIES for rx in f.DROPPED]))


def _kind(module: str) -> str:
    return next((kind for kind, rx in _RULES if rx.fullmatch(module)), "linear")


def _parse(part: str) -> str | int:
    return int(part) if part.isdigit() else part


def is_dropped(key: str) -> bool:
    """True for a key of a published file that no model uses (see `families`)."""
    return bool(_DROPPED.fullmatch(key))


def param_path(key: str) -> tuple[Path, tuple[int, ...] | None]:
    """Official key -> (our parameter path, permutation of the official layout into ours or None)."""
    module, _, leaf = key.rpartition(".")
    ours, perm = LEAVES[_kind(module)].get(leaf, (leaf, None))
    return tuple(_parse(p) for p in module.split(".")) + (ours,), perm


def official_key(path: Path) -> tuple[str, tuple[int, ...] | None]:
    """Our parameter path -> (official key, permutation of our layout into the official one or None)."""
    module = ".".join(str(p) for p in path[:-1])
    for official, (ours, perm) in LEAVES[_kind(module)].items():
        if ours == path[-1]:
            return f"{module}.{official}", (None if perm is None else _inverse(perm))
    return f"{module}.{path[-1]}", None


def _inverse(perm: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(int(i) for i in np.argsort(perm))


def official_to_params(state_dict: dict[str, np.ndarray]) -> dict[Path, np.ndarray]:
    """An official state dict as {our path: float32 array in our layout}, the dropped keys left
    out. Nothing else is checked here: a weight whose rank does not fit its layer stays as it is,
    for the shape check (`shapes.check_params`) to name it with every other problem."""
    params = {}
    for key, value in state_dict.items():
        if is_dropped(key):
            continue
        path, perm = param_path(key)
        value = np.asarray(value)
        if perm is not None and value.ndim == len(perm):
            value = np.transpose(value, perm)
        params[path] = np.ascontiguousarray(value, dtype=np.float32)
    return params


def params_to_official(params: dict[Path, np.ndarray]) -> dict[str, np.ndarray]:
    """The inverse: {our path: array} -> an official-layout state dict (NumPy)."""
    out = {}
    for path, value in params.items():
        key, perm = official_key(path)
        value = np.asarray(value)
        out[key] = np.ascontiguousarray(np.transpose(value, perm)) if perm is not None else value
    return out


def reference_state_dict(config: SamConfig, params: dict[Path, np.ndarray]) -> dict[str, np.ndarray]:
    """{our path: array} of a model of `config` -> the state dict of the family's own PyTorch
    model (the keys its `load_state_dict(strict=True)` wants), arrays in its layout. The
    transposed arrays are views, made contiguous by whoever writes them. The parameters must be
    the model's (`shapes.check_params`)."""
    state: dict[str, np.ndarray] = {}
    for path, value in params.items():
        key, perm = official_key(path)
        value = np.asarray(value)
        state[key] = value if perm is None else np.transpose(value, perm)
        if key.endswith(".running_var"):
            state[key.removesuffix("running_var") + "num_batches_tracked"] = np.zeros((), np.int64)
    for family in (families.ENCODERS[config.encoder], families.DECODERS[config.decoder]):
        state.update(family.restore(config))
    return state


def official_shape(path: Path, shape: tuple[int, ...]) -> tuple[int, ...]:
    """The official shape of our parameter `path` of our `shape` (for error messages)."""
    _, perm = official_key(path)
    return tuple(shape[i] for i in perm) if perm is not None and len(perm) == len(shape) else tuple(shape)


def infer_config(state: dict[str, np.ndarray]) -> dict:
    """The SamConfig fields that tensor shapes determine, from the state's image-encoder family
    and decoder family (named by their keys). Fields shapes cannot tell (the decoder head count,
    pixel statistics, the preprocessing, except LiteMedSAM's own stem) are absent and come from
    the defaults or a named config."""
    encoder, decoder = families.encoder_of(state), families.decoder_of(state)
    fields = {"encoder": encoder, "decoder": decoder, **families.ENCODERS[encoder].infer(state), **families.sam.infer(state)}
    if decoder != "sam":
        fields.update(families.DECODERS[decoder].infer(state))
    return fields


def resolve_config(inferred: dict, base: SamConfig | None, base_name: str = "") -> SamConfig:
    """Cross-checks the inferred fields against a named config (error on any disagreement) and
    completes them from it, or from the official defaults when none is named."""
    if base is not None:
        ours = base.to_dict()
        diff = [f"{k}: checkpoint {v!r}, {base_name or 'config'} {ours[k]!r}" for k, v in inferred.items()
                if _norm(v) != _norm(ours[k])]
        if diff:
            raise ConversionError(f"checkpoint does not match {base_name or 'the given config'}: " + "; ".join(diff))
        return base
    return SamConfig.from_dict({**SamConfig().to_dict(), **inferred})


def _norm(v):
    return list(v) if isinstance(v, (list, tuple)) else v


__all__ = [
    "ConversionError", "LEAVES", "infer_config", "is_dropped", "official_key", "official_shape", "official_to_params",
    "param_path", "params_to_official", "reference_state_dict", "resolve_config",
]
