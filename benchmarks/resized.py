"""The official SAM rebuilt for another input size (the benchmarks' reference for
`sam_jax.load(..., image_size=N)`); the tests have their own, for any config, in tests/helpers.py."""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer


def official_at_size(sam, image_size: int):
    """The official model built for `image_size` inputs (the official classes; `_build_sam` fixes
    1024) holding `sam`'s weights, pos_embed resized by F.interpolate(bicubic) and the global
    blocks' rel-pos tables linearly: the reference for `sam_jax.load(..., image_size=N)`."""
    enc = sam.image_encoder
    grid = image_size // 16
    blocks = enc.blocks
    official = Sam(
        image_encoder=ImageEncoderViT(
            depth=len(blocks), embed_dim=enc.pos_embed.shape[-1], img_size=image_size, mlp_ratio=4,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), num_heads=blocks[0].attn.num_heads, patch_size=16,
            qkv_bias=True, use_rel_pos=True, global_attn_indexes=[i for i, b in enumerate(blocks) if b.window_size == 0],
            window_size=14, out_chans=256,
        ),
        prompt_encoder=PromptEncoder(embed_dim=256, image_embedding_size=(grid, grid), input_image_size=(image_size, image_size), mask_in_chans=16),
        mask_decoder=MaskDecoder(num_multimask_outputs=3, transformer=TwoWayTransformer(depth=2, embedding_dim=256, mlp_dim=2048, num_heads=8),
                                 transformer_dim=256, iou_head_depth=3, iou_head_hidden_dim=256),
        pixel_mean=[123.675, 116.28, 103.53], pixel_std=[58.395, 57.12, 57.375],
    )
    shapes = {k: v.shape for k, v in official.state_dict().items()}
    state = {}
    for key, value in sam.state_dict().items():
        if value.shape != shapes[key] and key.endswith("pos_embed"):
            value = F.interpolate(value.permute(0, 3, 1, 2), size=(grid, grid), mode="bicubic", align_corners=False).permute(0, 2, 3, 1)
        elif value.shape != shapes[key]:  # a global block's rel_pos_h / rel_pos_w
            value = F.interpolate(value.T[None], size=shapes[key][0], mode="linear", align_corners=False)[0].T
        state[key] = value.contiguous()
    official.load_state_dict(state, strict=True)
    return official.eval().to(next(sam.parameters()).device)
