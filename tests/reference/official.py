"""The official PyTorch SAM as the parity tests and the benchmarks use it: built for any SamConfig
(or at another input size), every tensor perturbed, saved with torch.save, converted by our
converter and loaded back (`make_case`: the two sides of every parity test)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch

from sam_jax import SamConfig, get_config, load
from sam_jax.convert import convert_checkpoint

torch.set_grad_enabled(False)  # the reference only evaluates (the training transcription turns autograd on itself)


def build_official(cfg: SamConfig, seed: int = 0):
    """The official model for any SamConfig, built from the official classes (random init)."""
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    torch.manual_seed(seed)
    grid = cfg.image_size // cfg.patch_size
    sam = Sam(
        image_encoder=ImageEncoderViT(
            depth=cfg.encoder_depth, embed_dim=cfg.encoder_embed_dim, img_size=cfg.image_size,
            mlp_ratio=cfg.mlp_ratio, norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            num_heads=cfg.encoder_num_heads, patch_size=cfg.patch_size, in_chans=cfg.in_chans,
            qkv_bias=cfg.qkv_bias, use_abs_pos=cfg.use_abs_pos, use_rel_pos=cfg.use_rel_pos,
            global_attn_indexes=cfg.encoder_global_attn_indexes, window_size=cfg.window_size,
            out_chans=cfg.prompt_embed_dim,
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=cfg.prompt_embed_dim, image_embedding_size=(grid, grid),
            input_image_size=(cfg.image_size, cfg.image_size), mask_in_chans=cfg.mask_in_chans,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=cfg.num_multimask_outputs,
            transformer=TwoWayTransformer(
                depth=cfg.decoder_depth, embedding_dim=cfg.prompt_embed_dim, mlp_dim=cfg.decoder_mlp_dim,
                num_heads=cfg.decoder_num_heads, attention_downsample_rate=cfg.attention_downsample_rate,
            ),
            transformer_dim=cfg.prompt_embed_dim, iou_head_depth=cfg.iou_head_depth,
            iou_head_hidden_dim=cfg.iou_head_hidden_dim,
        ),
        pixel_mean=list(cfg.pixel_mean), pixel_std=list(cfg.pixel_std),
    )
    return perturb(sam.eval(), seed)


def official_at_size(official, cfg: SamConfig | None, image_size: int, build=None):
    """(model, config): the official model built for `image_size` inputs, holding `official`'s
    weights with `pos_embed` resized by `F.interpolate(mode="bicubic", align_corners=False)` and
    each rel-pos table whose length changes (the global blocks') by `F.interpolate(mode="linear")`:
    the torch-side reference of `sam_jax.load(..., image_size=N)`. cfg: `official`'s config, or
    None to read it off its tensor shapes (as our converter does); build: the builder of a
    family's model from a config (default `build_official`; sam-hq's: `families.build_hq_official`)."""
    import torch.nn.functional as F

    cfg = cfg or config_of(official)
    new_cfg = dataclasses.replace(cfg, image_size=image_size)
    target = (build or build_official)(new_cfg)
    shapes = {k: v.shape for k, v in target.state_dict().items()}
    state = {}
    for key, value in official.state_dict().items():
        if value.shape != shapes[key] and key.endswith("pos_embed"):  # (1, g, g, C)
            value = F.interpolate(value.permute(0, 3, 1, 2), size=shapes[key][1:3], mode="bicubic", align_corners=False)
            value = value.permute(0, 2, 3, 1)
        elif value.shape != shapes[key]:  # rel_pos_h / rel_pos_w (L, head_dim)
            value = F.interpolate(value.T[None], size=shapes[key][0], mode="linear", align_corners=False)[0].T
        state[key] = value.contiguous()
    target.load_state_dict(state, strict=True)
    return target.eval().to(next(official.parameters()).device), new_cfg


def config_of(official) -> SamConfig:
    """The SamConfig of an official model, read off its tensor shapes (the decoder's 8 heads and
    the official pixel statistics are the defaults)."""
    from sam_jax.convert.keys import infer_config, resolve_config

    return resolve_config(infer_config({k: v.cpu().numpy() for k, v in official.state_dict().items()}), None)


def perturb(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Adds noise to every floating tensor of the state dict. The official init leaves pos_embed and
    rel_pos at zero and norms at 1/0, where a parity test could not see a bug. BatchNorm running
    variances are scaled by a log-normal factor (they stay positive); counters such as
    `num_batches_tracked` are left alone."""
    g = torch.Generator().manual_seed(seed + 1)
    for key, t in model.state_dict().items():  # shares storage with the model
        if not t.is_floating_point():
            continue
        if key.endswith("running_var"):
            t.mul_(torch.exp(0.5 * torch.randn(t.shape, generator=g)))
            continue
        scale = float(t.float().std()) if t.numel() > 1 else 0.0
        t.add_(torch.randn(t.shape, generator=g) * (0.5 * scale if scale > 0 else 0.05))
    return model


@dataclass
class ParityCase:
    name: str
    config: SamConfig
    official: torch.nn.Module
    pth: Path
    model_dir: Path
    model: object


def make_case(name: str, tmp: Path, cfg: SamConfig | None = None, official=None) -> ParityCase:
    cfg = cfg or get_config(name)
    official = official if official is not None else build_official(cfg)
    pth = tmp / f"{name}.pth"
    torch.save(official.state_dict(), pth)
    cfg_file = tmp / f"{name}.json"
    cfg.save(cfg_file)
    out = tmp / f"{name}_jax"
    convert_checkpoint(pth, out, config_file=cfg_file)
    return ParityCase(name, cfg, official, pth, out, load(out))
