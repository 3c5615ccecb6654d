"""The same model at another input size: the pipeline's fourth stage.

    config, params = with_image_size(config, params, 512)

For a ViT (SAM, HQ-SAM, MedSAM, SlimSAM) the resolution-dependent weights are resampled on the
host with torch's formulas (`sam_jax.resample`): the absolute position embedding (1, g, g, C)
bicubically (as SAM variants do when changing resolution) and the relative-position tables of
the global-attention blocks (2g - 1, head_dim) linearly (as the official `get_rel_pos` does);
windowed blocks keep theirs. A TinyViT (MobileSAM, LiteMedSAM, sam-hq's vit_tiny) has no
position table: its attention biases are per window, its convolutions take any size, so only
the config changes. Everything else is shared, unchanged.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from sam_jax.config import SamConfig
from sam_jax.resample import resize_bicubic, resize_linear


def with_image_size(config: SamConfig, params: dict[tuple, np.ndarray], image_size: int) -> tuple[SamConfig, dict[tuple, np.ndarray]]:
    """(config, params) of the same model for square inputs of side `image_size`: a multiple of
    the patch size, which for a TinyViT is its total stride (checked by the config: 16 for
    MobileSAM, 4 for LiteMedSAM). Each of TinyViT's stride-2 convolutions (3x3, padding 1) maps a
    side n to ceil(n / 2), so at a multiple of the stride every stage's grid halves exactly and
    the last is image_size / patch_size, the grid the prompt encoder is built for."""
    p = config.patch_size
    kind = "TinyViT's stride" if config.encoder == "tiny_vit" else "patch size"
    if isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer)) or image_size <= 0 or image_size % p:
        raise ValueError(f"image_size must be a positive multiple of the {kind} {p}, got {image_size!r}")
    if image_size == config.image_size:
        return config, params
    new = dataclasses.replace(config, image_size=int(image_size))
    if config.encoder == "tiny_vit":
        return new, params
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
