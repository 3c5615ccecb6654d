"""Model configuration: every constructor argument of the official SAM classes and of the SAM
family's (MobileSAM's and LiteMedSAM's TinyViT encoder, HQ-SAM's decoder, the preprocessing of
MedSAM and LiteMedSAM), in one dataclass."""

from __future__ import annotations

import dataclasses
import json
import math
import os
from importlib import resources
from typing import Any

MODEL_TYPES = ("vit_b", "vit_l", "vit_h")  # the official SAM's
# The SAM family's shipped configs (configs/<name>.json): MobileSAM, HQ-SAM, MedSAM, LiteMedSAM, SlimSAM.
FAMILY_TYPES = ("vit_t", "sam_hq_vit_b", "sam_hq_vit_l", "sam_hq_vit_h", "sam_hq_vit_tiny", "medsam_vit_b", "lite_medsam",
                "slimsam_50", "slimsam_77")
ENCODERS = ("vit", "tiny_vit")  # ImageEncoderViT; MobileSAM's TinyViT
DECODERS = ("sam", "hq")  # MaskDecoder; HQ-SAM's MaskDecoderHQ
# How an image becomes the encoder's input (`sam_jax.modeling.sam.preprocess`): the official SAM's
# (longest side resized to the input size, mean/std, zero padding), LiteMedSAM's (longest side,
# min-max to [0, 1] over the resized image, zero padding), MedSAM's (square resize, min-max).
PREPROCESS = ("official", "lite_medsam", "medsam")
# The fields each encoder family reads; the other family's are not written to config.json and
# must keep their defaults.
VIT_FIELDS = ("encoder_embed_dim", "encoder_depth", "encoder_num_heads", "encoder_global_attn_indexes", "window_size",
              "qkv_bias", "use_abs_pos", "use_rel_pos")
TINY_VIT_FIELDS = ("tiny_vit_embed_dims", "tiny_vit_depths", "tiny_vit_num_heads", "tiny_vit_window_sizes",
                   "tiny_vit_mbconv_expand_ratio", "tiny_vit_local_conv_size")
# TinyViT's PatchMerging keeps the resolution (stride 1) when its output width is one of these: the
# official code's way of leaving the last stage at the third stage's grid, written for its three
# published widths (5M: 320, 11M: 448, 21M: 576), kept as it is so that every official
# configuration builds the same network.
TINY_VIT_STRIDE_1_MERGE_DIMS = (320, 448, 576)
# Bounds on the sizes a config may ask for, far above every published model (vit_h: 32 blocks,
# width 1280), so that a hand-edited or hostile config.json is refused in one line before any
# model is built: building 100000 blocks would hang, and shapes of 1e9 would exhaust memory.
UPPER_BOUNDS = {"encoder_depth": 256, "decoder_depth": 64, "iou_head_depth": 64, "num_multimask_outputs": 64,
                "image_size": 16384, "patch_size": 1024}
MAX_WIDTH = 65536  # any other integer field: widths, heads, window and MLP sizes
MAX_STAGES = 16  # TinyViT stages

TUPLE_FIELDS = ("encoder_global_attn_indexes", "pixel_mean", "pixel_std", "tiny_vit_embed_dims", "tiny_vit_depths",
                "tiny_vit_num_heads", "tiny_vit_window_sizes")


@dataclasses.dataclass(frozen=True)
class SamConfig:
    """Hyper-parameters of a SAM model, named after the official `build_sam.py` arguments.

    Defaults are the official `vit_b` values; `vit_l`/`vit_h` differ only in the encoder fields.
    `encoder`, `decoder` and `preprocess` name the family (a config.json without them is the
    official SAM's: vit, sam, official); the `tiny_vit_*` fields are TinyViT's per-stage
    arguments (MobileSAM's `tiny_vit_sam.py`), whose total stride is `patch_size` (16 for
    MobileSAM's stem, 4 for LiteMedSAM's 1x1 stem).
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
    # The family
    encoder: str = "vit"
    decoder: str = "sam"
    preprocess: str = "official"
    # TinyViT (encoder "tiny_vit"): per stage; stage 0 is convolutional, the others windowed attention
    tiny_vit_embed_dims: tuple[int, ...] = (64, 128, 160, 320)
    tiny_vit_depths: tuple[int, ...] = (2, 2, 6, 2)
    tiny_vit_num_heads: tuple[int, ...] = (2, 4, 5, 10)
    tiny_vit_window_sizes: tuple[int, ...] = (7, 7, 14, 7)
    tiny_vit_mbconv_expand_ratio: float = 4.0
    tiny_vit_local_conv_size: int = 3

    def __post_init__(self) -> None:
        # JSON gives lists; keep tuples so configs are hashable (usable as static jit arguments).
        for name in TUPLE_FIELDS:
            if isinstance(getattr(self, name), list):
                object.__setattr__(self, name, tuple(getattr(self, name)))
        self.validate()

    @property
    def image_embedding_size(self) -> int:
        """Side of the square image-embedding grid (64 for the official models)."""
        return self.image_size // self.patch_size

    @property
    def early_feature_dim(self) -> int:
        """Width of the image encoder's early feature (HQ-SAM's `vit_dim`): the ViT's embed dim (the
        first global block's output), or TinyViT's third stage width (the output of its second stage)."""
        return self.encoder_embed_dim if self.encoder == "vit" else self.tiny_vit_embed_dims[2]

    @property
    def tiny_vit_stride(self) -> int:
        """TinyViT's total stride for these stages: the stem (4 when patch_size is 16, else 1) times
        each stage merge's (2, or 1 into the widths of TINY_VIT_STRIDE_1_MERGE_DIMS)."""
        from_stem = 4 if self.patch_size == 16 else 1
        return from_stem * math.prod(1 if d in TINY_VIT_STRIDE_1_MERGE_DIMS else 2 for d in self.tiny_vit_embed_dims[1:])

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
        problems += self._family_problems()
        if problems:
            raise ValueError("invalid SamConfig: " + "; ".join(problems))

    def _family_problems(self) -> list[str]:
        """What is wrong with the family fields (names, TinyViT's stages, the other family's fields)."""
        problems = []
        for name, allowed in (("encoder", ENCODERS), ("decoder", DECODERS), ("preprocess", PREPROCESS)):
            if getattr(self, name) not in allowed:
                problems.append(f"{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r:.40}")
        if problems:
            return problems
        unused = VIT_FIELDS if self.encoder == "tiny_vit" else TINY_VIT_FIELDS
        changed = [f for f in unused if getattr(self, f) != getattr(SamConfig, f)]
        if changed:
            problems.append(f"{', '.join(changed)} do not apply to the {self.encoder} encoder (leave them out)")
        if self.encoder == "tiny_vit":
            stages = [self.tiny_vit_embed_dims, self.tiny_vit_depths, self.tiny_vit_num_heads, self.tiny_vit_window_sizes]
            if len({len(t) for t in stages}) != 1 or len(self.tiny_vit_depths) < 3:
                problems.append("the tiny_vit_* lists must have one entry per stage, at least 3 stages")
            elif any(d % h for d, h in zip(self.tiny_vit_embed_dims[1:], self.tiny_vit_num_heads[1:])):
                problems.append("each tiny_vit_num_heads must divide its tiny_vit_embed_dims")
            elif self.patch_size not in (4, 16) or self.image_size % self.tiny_vit_stride:
                problems.append(f"a TinyViT's patch_size is 16 (MobileSAM's stem) or 4 (LiteMedSAM's), and image_size a "
                                f"multiple of its stride {self.tiny_vit_stride if self.patch_size in (4, 16) else ''}")
            elif self.tiny_vit_stride != self.patch_size:
                problems.append(f"these TinyViT stages give a stride of {self.tiny_vit_stride}, not patch_size {self.patch_size}")
        return problems

    def _bad_fields(self) -> list[tuple[str, str]]:
        """(field, what it must be) for the fields whose value has the wrong type or range."""
        bad = []
        for f in dataclasses.fields(self):
            v, d = getattr(self, f.name), f.default
            if isinstance(d, bool):
                ok, kind = type(v) is bool, "true or false"
            elif isinstance(d, int):
                low = 0 if f.name in ("window_size", "num_multimask_outputs") else 1
                high = UPPER_BOUNDS.get(f.name, MAX_WIDTH)
                ok, kind = type(v) is int and low <= v <= high, f"an integer in {low}..{high}"
            elif isinstance(d, float):
                ok, kind = type(v) in (int, float) and math.isfinite(v), "a finite number"
                if f.name == "mlp_ratio":
                    ok, kind = ok and v > 0, "a positive number"
            elif isinstance(d, str):
                ok, kind = type(v) is str, "a string"
            elif f.name == "encoder_global_attn_indexes":
                ok, kind = isinstance(v, tuple) and all(type(i) is int for i in v), "a list of block indexes"
            elif f.name.startswith("tiny_vit_"):
                high = UPPER_BOUNDS["encoder_depth"] if f.name == "tiny_vit_depths" else MAX_WIDTH
                ok = isinstance(v, tuple) and len(v) <= MAX_STAGES and all(type(i) is int and 1 <= i <= high for i in v)
                kind = f"a list of at most {MAX_STAGES} integers in 1..{high}"
            else:  # pixel_mean, pixel_std
                ok = isinstance(v, tuple) and len(v) == 3 and all(type(x) in (int, float) and math.isfinite(x) for x in v)
                ok, kind = ok and (f.name != "pixel_std" or min(v) > 0), "a list of 3 (positive, for std) numbers"
            if not ok:
                bad.append((f.name, kind))
        return bad

    def to_dict(self) -> dict[str, Any]:
        """Every field this model's family reads (the other encoder family's are left out)."""
        unused = VIT_FIELDS if self.encoder == "tiny_vit" else TINY_VIT_FIELDS
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items() if k not in unused}

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
