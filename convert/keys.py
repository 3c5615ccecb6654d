"""Official PyTorch state-dict keys <-> sam_jax parameter paths, and the config implied by the
tensor shapes. A leaf: pure naming and array layout, no model code (of sam_jax, only the config).

Each of our parameters has exactly one official key: the official module path with our leaf name
(`kernel`, `scale`, `embedding`, ...) in place of the official one (`weight`). The layer kind, and
with it the layout change, is read off the official module path (see `_KINDS`):

    kind              official leaf, layout            ours
    Linear            weight (out, in)                 kernel (in, out)
    Conv2d            weight (out, in, kh, kw)         kernel (kh, kw, in, out)
    ConvTranspose2d   weight (in, out, kh, kw)         kernel (kh, kw, in, out)
    LayerNorm(2d)     weight                           scale
    Embedding         weight                           embedding
    anything          bias, pos_embed, rel_pos_h/w,    same name, same layout
                      positional_encoding_gaussian_matrix

Shapes are checked against the model by the loader (`sam_jax.build_sam.model_from_params`).
"""

from __future__ import annotations

import re

import numpy as np

from sam_jax.config import SamConfig

Path = tuple[str | int, ...]


class ConversionError(ValueError):
    """The checkpoint does not match the model: lists every missing, unexpected and mis-shaped key."""


# Official module paths by layer kind; a module matching none of them is a Linear.
_KINDS: list[tuple[str, re.Pattern, str, tuple[int, ...] | None]] = [
    # (kind, module path pattern, our leaf for `weight`, permutation official -> ours)
    ("embedding", re.compile(r"prompt_encoder\.(point_embeddings\.\d+|not_a_point_embed|no_mask_embed)"
                             r"|mask_decoder\.(iou_token|mask_tokens)"), "embedding", None),
    ("layer_norm", re.compile(r".*\.norm\w*|image_encoder\.neck\.[13]|prompt_encoder\.mask_downscaling\.[14]"
                              r"|mask_decoder\.output_upscaling\.1"), "scale", None),
    ("conv_transpose", re.compile(r"mask_decoder\.output_upscaling\.[03]"), "kernel", (2, 3, 0, 1)),
    ("conv", re.compile(r"image_encoder\.(patch_embed\.proj|neck\.[02])|prompt_encoder\.mask_downscaling\.[036]"),
     "kernel", (2, 3, 1, 0)),
    ("linear", re.compile(r".*"), "kernel", (1, 0)),
]


def _kind(module: str) -> tuple[str, tuple[int, ...] | None]:
    return next((leaf, perm) for _, rx, leaf, perm in _KINDS if rx.fullmatch(module))


def _parse(part: str) -> str | int:
    return int(part) if part.isdigit() else part


def param_path(key: str) -> tuple[Path, tuple[int, ...] | None]:
    """Official key -> (our parameter path, permutation of the official layout into ours or None)."""
    module, _, leaf = key.rpartition(".")
    if leaf == "weight":
        ours, perm = _kind(module)
    else:
        ours, perm = leaf, None
    return tuple(_parse(p) for p in module.split(".")) + (ours,), perm


def official_key(path: Path) -> tuple[str, tuple[int, ...] | None]:
    """Our parameter path -> (official key, permutation of our layout into the official one or None)."""
    module = ".".join(str(p) for p in path[:-1])
    leaf = path[-1]
    if leaf in ("kernel", "scale", "embedding"):
        _, perm = _kind(module)
        return f"{module}.weight", (None if perm is None else _inverse(perm))
    return f"{module}.{leaf}", None


def _inverse(perm: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(int(i) for i in np.argsort(perm))


def official_to_params(state_dict: dict[str, np.ndarray]) -> dict[Path, np.ndarray]:
    """An official state dict as {our path: float32 array in our layout}. Nothing is checked
    here: a weight whose rank does not fit its layer stays as it is, for the loader's shape check
    (`sam_jax.build_sam.check_params`) to name it with every other problem."""
    params = {}
    for key, value in state_dict.items():
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


def official_shape(path: Path, shape: tuple[int, ...]) -> tuple[int, ...]:
    """The official shape of our parameter `path` of our `shape` (for error messages)."""
    _, perm = official_key(path)
    return tuple(shape[i] for i in perm) if perm is not None and len(perm) == len(shape) else tuple(shape)


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
