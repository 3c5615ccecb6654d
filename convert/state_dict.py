"""Official PyTorch state dict <-> sam_jax parameters, and the config implied by tensor shapes.

Each of our parameters has exactly one official key: the module path joined with dots plus the
official leaf name. Layouts differ by layer type (see `_RULES`); nothing is filled by default.
"""

from __future__ import annotations

import re
from typing import Callable

import numpy as np
from flax import nnx

from sam_jax.config import SamConfig
from sam_jax.modeling.mask_decoder import ConvTranspose2x2

Path = tuple[str | int, ...]


class ConversionError(ValueError):
    """The checkpoint does not match the model: lists every missing, unexpected and mis-shaped key."""


def _t(perm):
    return lambda a: np.ascontiguousarray(np.transpose(a, perm))


def _inv(perm):
    return tuple(int(i) for i in np.argsort(perm))


# (module type, our leaf) -> (official leaf, permutation from the official layout to ours)
_RULES: dict[tuple[type, str], tuple[str, tuple[int, ...] | None]] = {
    (nnx.Linear, "kernel"): ("weight", (1, 0)),  # torch (out, in)
    (nnx.Conv, "kernel"): ("weight", (2, 3, 1, 0)),  # torch (out, in, kh, kw)
    (ConvTranspose2x2, "kernel"): ("weight", (2, 3, 0, 1)),  # torch (in, out, kh, kw)
    (nnx.LayerNorm, "scale"): ("weight", None),
    (nnx.Embed, "embedding"): ("weight", None),
}


def parameter_table(model: nnx.Module) -> dict[str, tuple[Path, tuple[int, ...] | None, tuple[int, ...]]]:
    """official key -> (our path, permutation official->ours or None, our shape), for every variable."""
    table = {}
    for module_path, module in nnx.iter_modules(model):
        for name, var in vars(module).items():
            if not isinstance(var, nnx.Variable):
                continue
            leaf, perm = _RULES.get((type(module), name), (name, None))
            key = ".".join(str(p) for p in module_path + (leaf,))
            table[key] = (module_path + (name,), perm, tuple(var.shape))
    return table


def official_to_params(state_dict: dict[str, np.ndarray], model: nnx.Module) -> dict[Path, np.ndarray]:
    """Maps an official state dict onto `model`'s variables: {our path: float32 array}.

    Every official key must be used and every variable filled with the right shape, or a
    ConversionError names all the problems at once."""
    table = parameter_table(model)
    missing = sorted(set(table) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(table))
    params, misshaped = {}, []
    for key, (path, perm, shape) in table.items():
        if key not in state_dict:
            continue
        value = np.asarray(state_dict[key])
        if perm is not None and value.ndim == len(perm):
            value = _t(perm)(value)
        if tuple(value.shape) != shape:
            misshaped.append(f"{key}: checkpoint {tuple(state_dict[key].shape)}, model expects {_official_shape(shape, perm)}")
            continue
        params[path] = value.astype(np.float32)
    problems = []
    if missing:
        problems.append(f"missing keys ({len(missing)}): {', '.join(missing)}")
    if unexpected:
        problems.append(f"unexpected keys ({len(unexpected)}): {', '.join(unexpected)}")
    if misshaped:
        problems.append(f"wrong shapes ({len(misshaped)}): {'; '.join(misshaped)}")
    if problems:
        raise ConversionError("checkpoint does not match the model config: " + " | ".join(problems))
    return params


def params_to_official(model: nnx.Module) -> dict[str, np.ndarray]:
    """The inverse: our model's variables as an official-layout state dict (numpy)."""
    flat = dict(nnx.to_flat_state(nnx.state(model)))
    out = {}
    for key, (path, perm, _) in parameter_table(model).items():
        value = np.asarray(flat[path].get_value())
        out[key] = _t(_inv(perm))(value) if perm is not None else value
    return out


def _official_shape(shape, perm):
    return tuple(shape[i] for i in _inv(perm)) if perm is not None else tuple(shape)


def _count(state: dict, pattern: str) -> int:
    rx = re.compile(pattern)
    return len({m.group(1) for k in state if (m := rx.match(k))})


def infer_config(state: dict[str, np.ndarray]) -> dict:
    """The SamConfig fields that tensor shapes determine. Fields shapes cannot tell (the decoder
    head count, pixel statistics) are absent and come from the defaults or a named config."""
    def shape(key):
        if key not in state:
            raise ConversionError(f"cannot infer the model config: checkpoint has no {key!r}")
        return state[key].shape

    cfg: dict = {}
    embed_dim, in_chans, patch, _ = shape("image_encoder.patch_embed.proj.weight")
    cfg.update(encoder_embed_dim=embed_dim, in_chans=in_chans, patch_size=patch)
    depth = _count(state, r"image_encoder\.blocks\.(\d+)\.")
    cfg["encoder_depth"] = depth
    cfg["mlp_ratio"] = shape("image_encoder.blocks.0.mlp.lin1.weight")[0] / embed_dim
    cfg["qkv_bias"] = "image_encoder.blocks.0.attn.qkv.bias" in state
    cfg["use_abs_pos"] = "image_encoder.pos_embed" in state
    cfg["use_rel_pos"] = "image_encoder.blocks.0.attn.rel_pos_h" in state
    cfg["prompt_embed_dim"] = shape("image_encoder.neck.0.weight")[0]
    # The mask input is 4x the embedding grid and the grid is image_size / patch_size.
    grid = None
    if cfg["use_abs_pos"]:
        grid = shape("image_encoder.pos_embed")[1]
    if cfg["use_rel_pos"]:
        head_dim = shape("image_encoder.blocks.0.attn.rel_pos_h")[1]
        cfg["encoder_num_heads"] = embed_dim // head_dim
        sizes = [(shape(f"image_encoder.blocks.{i}.attn.rel_pos_h")[0] + 1) // 2 for i in range(depth)]
        grid = grid or max(sizes)
        cfg["encoder_global_attn_indexes"] = [i for i, s in enumerate(sizes) if s == grid]
        windows = {s for s in sizes if s != grid}
        if len(windows) > 1:
            raise ConversionError(f"blocks use several window sizes {sorted(windows)}: not a SAM encoder")
        cfg["window_size"] = windows.pop() if windows else 0
    if grid is not None:
        cfg["image_size"] = grid * patch
    cfg["mask_in_chans"] = shape("prompt_encoder.mask_downscaling.3.weight")[0]
    cfg["decoder_depth"] = _count(state, r"mask_decoder\.transformer\.layers\.(\d+)\.")
    cfg["decoder_mlp_dim"] = shape("mask_decoder.transformer.layers.0.mlp.lin1.weight")[0]
    internal = shape("mask_decoder.transformer.final_attn_token_to_image.q_proj.weight")[0]
    cfg["attention_downsample_rate"] = cfg["prompt_embed_dim"] // internal
    cfg["num_multimask_outputs"] = shape("mask_decoder.mask_tokens.weight")[0] - 1
    cfg["iou_head_depth"] = _count(state, r"mask_decoder\.iou_prediction_head\.layers\.(\d+)\.")
    cfg["iou_head_hidden_dim"] = shape("mask_decoder.iou_prediction_head.layers.0.weight")[0]
    return cfg


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
