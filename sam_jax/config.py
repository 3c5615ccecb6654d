"""Model configuration: every constructor argument of the official SAM classes, in one dataclass."""

from __future__ import annotations

import dataclasses
import json
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
            object.__setattr__(self, name, tuple(getattr(self, name)))
        self.validate()

    @property
    def image_embedding_size(self) -> int:
        """Side of the square image-embedding grid (64 for the official models)."""
        return self.image_size // self.patch_size

    def validate(self) -> None:
        problems = []
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

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "SamConfig":
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
        with open(path) as f:
            return cls.from_dict(json.load(f))


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
