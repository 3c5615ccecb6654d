"""Model configuration: every constructor argument of the official SAM classes, in one dataclass."""

from __future__ import annotations

import dataclasses
import json
import math
import os
from importlib import resources
from typing import Any

MODEL_TYPES = ("vit_b", "vit_l", "vit_h")


@dataclasses.dataclass(frozen=True)
class SamConfig:
    """Hyper-parameters of a SAM model, named after the official `build_sam.py` arguments.

    Defaults are the official `vit_b` values; `vit_l`/`vit_h` differ only in the encoder fields.
    """

    # ImageEncoderViT
    image_size: int = 1024
    patch_size: int = 16
    in_chans: int = 3
    encoder_embed_dim: int = 768
    encoder_depth: int = 12
    encoder_num_heads: int = 12
    encoder_global_attn_indexes: tuple[int, ...] = (2, 5, 8, 11)
    window_size: int = 14
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    use_abs_pos: bool = True
    use_rel_pos: bool = True
    # PromptEncoder (prompt_embed_dim is also the encoder's out_chans and the decoder's transformer_dim)
    prompt_embed_dim: int = 256
    mask_in_chans: int = 16
    # MaskDecoder / TwoWayTransformer
    decoder_depth: int = 2
    decoder_num_heads: int = 8
    decoder_mlp_dim: int = 2048
    attention_downsample_rate: int = 2
    num_multimask_outputs: int = 3
    iou_head_depth: int = 3
    iou_head_hidden_dim: int = 256
    # Sam
    pixel_mean: tuple[float, float, float] = (123.675, 116.28, 103.53)
    pixel_std: tuple[float, float, float] = (58.395, 57.12, 57.375)
    mask_threshold: float = 0.0

    def __post_init__(self) -> None:
        # JSON gives lists; keep tuples so configs are hashable (usable as static jit arguments).
        for name in ("encoder_global_attn_indexes", "pixel_mean", "pixel_std"):
            if isinstance(getattr(self, name), list):
                object.__setattr__(self, name, tuple(getattr(self, name)))
        self.validate()

    @property
    def image_embedding_size(self) -> int:
        """Side of the square image-embedding grid (64 for the official models)."""
        return self.image_size // self.patch_size

    def validate(self) -> None:
        """ValueError naming every field of the wrong type or range, and every inconsistency
        (a hand-edited config.json gets a one-line error, not a traceback later)."""
        problems = [f"{name} must be {kind}, got {getattr(self, name)!r:.60}" for name, kind in self._bad_fields()]
        if problems:
            raise ValueError("invalid SamConfig: " + "; ".join(problems))
        if self.image_size % self.patch_size:
            problems.append(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        if self.encoder_embed_dim % self.encoder_num_heads:
            problems.append("encoder_embed_dim must be divisible by encoder_num_heads")
        internal = self.prompt_embed_dim // self.attention_downsample_rate
        if self.prompt_embed_dim % self.decoder_num_heads or internal % self.decoder_num_heads:
            problems.append("prompt_embed_dim (and its downsampled width) must be divisible by decoder_num_heads")
        if self.prompt_embed_dim % 8:
            problems.append("prompt_embed_dim must be divisible by 8 (the mask upscaling divides it by 4 and 8)")
        bad = [i for i in self.encoder_global_attn_indexes if not 0 <= i < self.encoder_depth]
        if bad:
            problems.append(f"encoder_global_attn_indexes {bad} outside 0..{self.encoder_depth - 1}")
        if problems:
            raise ValueError("invalid SamConfig: " + "; ".join(problems))

    def _bad_fields(self) -> list[tuple[str, str]]:
        """(field, what it must be) for the fields whose value has the wrong type or range."""
        bad = []
        for f in dataclasses.fields(self):
            v, d = getattr(self, f.name), f.default
            if isinstance(d, bool):
                ok, kind = type(v) is bool, "true or false"
            elif isinstance(d, int):
                low = 0 if f.name in ("window_size", "num_multimask_outputs") else 1
                ok, kind = type(v) is int and v >= low, f"an integer >= {low}"
            elif isinstance(d, float):
                ok, kind = type(v) in (int, float) and math.isfinite(v), "a finite number"
                if f.name == "mlp_ratio":
                    ok, kind = ok and v > 0, "a positive number"
            elif f.name == "encoder_global_attn_indexes":
                ok, kind = isinstance(v, tuple) and all(type(i) is int for i in v), "a list of block indexes"
            else:  # pixel_mean, pixel_std
                ok = isinstance(v, tuple) and len(v) == 3 and all(type(x) in (int, float) and math.isfinite(x) for x in v)
                ok, kind = ok and (f.name != "pixel_std" or min(v) > 0), "a list of 3 (positive, for std) numbers"
            if not ok:
                bad.append((f.name, kind))
        return bad

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "SamConfig":
        if not isinstance(data, dict):
            raise ValueError(f"a SamConfig is a JSON object, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown SamConfig fields: {unknown}")
        return cls(**data)

    def save(self, path: str | os.PathLike) -> None:
        with open(path, "w") as f:
            json.dump(self.to_dict(), f, indent=2)
            f.write("\n")

    @classmethod
    def load(cls, path: str | os.PathLike) -> "SamConfig":
        try:
            with open(path) as f:
                data = json.load(f)
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
            raise ValueError(f"{path}: not a readable JSON config ({type(e).__name__})") from None
        try:
            return cls.from_dict(data)
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None


def get_config(name: str) -> SamConfig:
    """Returns a named configuration shipped in `configs/` (vit_b, vit_l, vit_h, and the test configs)."""
    try:
        text = resources.files("sam_jax.configs").joinpath(f"{name}.json").read_text()
    except FileNotFoundError:
        raise ValueError(f"unknown model type {name!r}; shipped configs: {available_configs()}") from None
    return SamConfig.from_dict(json.loads(text))


def available_configs() -> list[str]:
    files = resources.files("sam_jax.configs").iterdir()
    return sorted(f.name[:-5] for f in files if f.name.endswith(".json"))
