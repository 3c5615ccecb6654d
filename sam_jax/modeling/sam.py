"""The SAM model: encoders and decoder together, with the official pre- and postprocessing as
pure functions (the official `modeling/sam.py`). The config's family picks the parts: the image
encoder (ViT, or MobileSAM's TinyViT), the mask decoder (SAM's, or HQ-SAM's) and the
preprocessing profile (the official one, LiteMedSAM's or MedSAM's)."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from ..config import SamConfig
from ..numerics import Numerics
from ..parallel.devices import as_sharding
from ..resample import interpolate_bilinear
from .image_encoder import ImageEncoderViT
from .mask_decoder import ConvTranspose2x2, MaskDecoder
from .mask_decoder_hq import MaskDecoderHQ
from .prompt_encoder import PromptEncoder
from .tiny_vit_sam import TinyViT
from .transformer import TwoWayTransformer


class Sam(nnx.Module):
    image_format: str = "RGB"

    def __init__(self, config: SamConfig, *, rngs: nnx.Rngs):
        c = config
        self.config = c
        # How the model computes; its submodules hold the same settings (see `with_numerics`).
        self.numerics = Numerics()
        self.image_encoder = image_encoder(c, rngs)
        grid = (c.image_embedding_size, c.image_embedding_size)
        self.prompt_encoder = PromptEncoder(
            c.prompt_embed_dim, grid, (c.image_size, c.image_size), c.mask_in_chans, rngs=rngs
        )
        transformer = TwoWayTransformer(
            c.decoder_depth, c.prompt_embed_dim, c.decoder_num_heads, c.decoder_mlp_dim,
            c.attention_downsample_rate, rngs=rngs,
        )
        decoder = dict(transformer_dim=c.prompt_embed_dim, transformer=transformer, num_multimask_outputs=c.num_multimask_outputs,
                       iou_head_depth=c.iou_head_depth, iou_head_hidden_dim=c.iou_head_hidden_dim, rngs=rngs)
        self.mask_decoder = MaskDecoderHQ(vit_dim=c.early_feature_dim, **decoder) if c.decoder == "hq" else MaskDecoder(**decoder)

    @property
    def mask_threshold(self) -> float:
        return self.config.mask_threshold

    def preprocess(self, x: jax.Array) -> jax.Array:
        """The official `Sam.preprocess`, by the model's profile: (..., 3, h, w) resized pixels
        0..255 -> (..., 3, S, S) encoder input (see the module function `preprocess`)."""
        return preprocess(self.config, x)

    def postprocess_masks(self, masks: jax.Array, input_size: tuple[int, int], original_size: tuple[int, int]) -> jax.Array:
        """The official `Sam.postprocess_masks` (see the module function)."""
        return postprocess_masks(self.config, jnp.asarray(masks, jnp.float32), input_size, original_size)

    @property
    def device(self) -> jax.Device:
        """The first device holding the parameters (as torch's `module.device` in the official notebooks)."""
        leaf = jax.tree.leaves(nnx.state(self))[0]
        return min(leaf.sharding.device_set, key=lambda d: d.id)

    def to(self, device=None) -> "Sam":
        """Moves the parameters, in place, and returns the model (as torch's `module.to`).

        device: a jax.Device; a platform name ("cpu", "gpu", "cuda", "tpu", with an optional
        ":index"), meaning that platform's first device unless indexed; a `Mesh` (parameters
        replicated over it); or any `jax.sharding.Sharding`."""
        nnx.update(self, jax.device_put(nnx.state(self), as_sharding(device)))
        return self

    def eval(self, **attributes) -> "Sam":
        """Inference mode (SAM has no dropout or batch norm: nothing changes); returns the model."""
        super().eval(**attributes)
        return self

    def train(self, mode: bool = True, **attributes) -> "Sam":
        super().train(**attributes) if mode else super().eval(**attributes)
        return self

    def __call__(self, batched_input: list[dict[str, Any]], multimask_output: bool,
                 hq_token_only: bool = False) -> list[dict[str, jax.Array]]:
        """The official end-to-end forward over a list of images with prompts (eager, for parity and
        convenience; the predictor's jitted functions are the fast path). Each dict holds `image`
        (3, H, W) already resized to the input size, `original_size` (H, W), and optionally
        `point_coords` (B, N, 2), `point_labels` (B, N), `boxes` (B, 4), `mask_inputs` (B, 1, 4h, 4w).
        hq_token_only: with an HQ decoder, the HQ mask alone (sam-hq's argument; else ignored)."""
        images = jnp.stack([preprocess(self.config, x["image"]) for x in batched_input])
        hq = self.config.decoder == "hq"
        image_embeddings, early = self.image_encoder.with_early_features(images) if hq else (self.image_encoder(images), None)
        outputs = []
        for i, (record, emb) in enumerate(zip(batched_input, image_embeddings)):
            points = (record["point_coords"], record["point_labels"]) if "point_coords" in record else None
            sparse, dense = self.prompt_encoder(points, record.get("boxes"), record.get("mask_inputs"))
            pe = self.prompt_encoder.get_dense_pe()
            if hq:
                low_res, iou = self.mask_decoder(emb[None], pe, sparse, dense, multimask_output, hq_token_only, early[i:i + 1])
            else:
                low_res, iou = self.mask_decoder(emb[None], pe, sparse, dense, multimask_output)
            masks = postprocess_masks(self.config, low_res, tuple(record["image"].shape[-2:]), tuple(record["original_size"]))
            outputs.append({"masks": masks > self.mask_threshold, "iou_predictions": iou, "low_res_logits": low_res})
        return outputs


def with_numerics(model: Sam, *, dtype=None, precision: str | None = None, attention: str | None = None) -> Sam:
    """A view of `model` computing with other `Numerics` (arguments left None keep the model's):
    a new Sam holding the same parameter arrays, not copies.

    dtype: "float32" or "bfloat16", the compute dtype of every matmul and convolution (their
    inputs are cast per use; parameters stay float32, so gradients and optimizer state do too).
    Layer norms, attention logits and softmax, the residual streams and the outputs stay float32.
    precision: "exact" or "fast"; attention: "auto", "xla", "pallas" or "interpret" (see
    `sam_jax.numerics.Numerics`)."""
    changes = {k: v for k, v in dict(dtype=dtype, precision=precision, attention=attention).items() if v is not None}
    numerics = model.numerics._replace(**changes).check()
    graphdef, state = nnx.split(model)
    new = nnx.merge(graphdef, state)
    for _, module in nnx.iter_modules(new):
        if hasattr(module, "numerics"):
            module.numerics = numerics
        if isinstance(module, (nnx.Linear, nnx.Conv, ConvTranspose2x2)):
            module.dtype = jnp.dtype(numerics.dtype)
        elif isinstance(module, nnx.LayerNorm):
            module.dtype = jnp.float32  # statistics and output in float32 whatever its input
    return new


def preprocess(config: SamConfig, x: jax.Array, input_sizes: jax.Array | None = None) -> jax.Array:
    """(..., 3, H, W) RGB pixel values 0..255 of resized images (H, W <= image_size) -> the
    encoder's (..., 3, image_size, image_size) input, as `config.preprocess` says:

    official      (x - pixel_mean) / pixel_std, then zero padding (the official `Sam.preprocess`)
    lite_medsam   min-max to [0, 1] over all the resized image's pixels, then zero padding
                  (LiteMedSAM's inference: `(x - min) / clip(max - min, 1e-8)`)
    medsam        the same min-max (MedSAM's images are resized to the full square: no padding)

    input_sizes (B, 2): when x (B, 3, S, S) is already padded, each image's (h, w); statistics
    ignore the padding, which is zero in the result."""
    x = x.astype(jnp.float32)
    h, w = x.shape[-2:]
    if input_sizes is None:
        valid = jnp.ones((h, w), bool)
    else:
        rows = jnp.arange(h)[None, :, None] < input_sizes[:, 0, None, None]
        cols = jnp.arange(w)[None, None, :] < input_sizes[:, 1, None, None]
        valid = (rows & cols)[:, None]  # (B, 1, H, W)
    if config.preprocess == "official":
        mean = jnp.asarray(config.pixel_mean, jnp.float32)[:, None, None]
        std = jnp.asarray(config.pixel_std, jnp.float32)[:, None, None]
        x = (x - mean) / std
    else:
        axes = (-3, -2, -1)
        lo = jnp.min(jnp.where(valid, x, jnp.inf), axis=axes, keepdims=True)
        hi = jnp.max(jnp.where(valid, x, -jnp.inf), axis=axes, keepdims=True)
        x = (x - lo) / jnp.maximum(hi - lo, 1e-8)
    x = jnp.where(valid, x, 0.0)
    pad = [(0, 0)] * (x.ndim - 2) + [(0, config.image_size - h), (0, config.image_size - w)]
    return jnp.pad(x, pad)


def image_encoder(config: SamConfig, rngs: nnx.Rngs) -> ImageEncoderViT | TinyViT:
    """The image encoder `config.encoder` names, built from the config's fields."""
    c = config
    if c.encoder == "tiny_vit":
        return TinyViT(img_size=c.image_size, in_chans=c.in_chans, embed_dims=c.tiny_vit_embed_dims, depths=c.tiny_vit_depths,
                       num_heads=c.tiny_vit_num_heads, window_sizes=c.tiny_vit_window_sizes, mlp_ratio=c.mlp_ratio,
                       mbconv_expand_ratio=c.tiny_vit_mbconv_expand_ratio, local_conv_size=c.tiny_vit_local_conv_size,
                       out_chans=c.prompt_embed_dim, stem_downsample=c.patch_size == 16, rngs=rngs)
    return ImageEncoderViT(
        img_size=c.image_size, patch_size=c.patch_size, in_chans=c.in_chans, embed_dim=c.encoder_embed_dim,
        depth=c.encoder_depth, num_heads=c.encoder_num_heads, mlp_ratio=c.mlp_ratio, out_chans=c.prompt_embed_dim,
        qkv_bias=c.qkv_bias, use_abs_pos=c.use_abs_pos, use_rel_pos=c.use_rel_pos, window_size=c.window_size,
        global_attn_indexes=c.encoder_global_attn_indexes, rngs=rngs,
    )


def postprocess_masks(
    config: SamConfig,
    masks: jax.Array,
    input_size: tuple[int, int],
    original_size: tuple[int, int],
) -> jax.Array:
    """(..., 4h, 4w) low-resolution mask logits -> (..., H, W) logits at the original image size.

    Upsamples to the square model input, crops the padding to `input_size` (the resized image),
    and resamples to `original_size`, each with torch's bilinear interpolation (no antialias),
    as the official `postprocess_masks` (LiteMedSAM's inference is the same: its low-res masks are
    at the input size). MedSAM's inference resamples the low-res logits to the original size in
    one step (its images fill the square: there is no padding to crop)."""
    if config.preprocess == "medsam":
        return interpolate_bilinear(masks, tuple(original_size))
    masks = interpolate_bilinear(masks, (config.image_size, config.image_size))
    masks = masks[..., : input_size[0], : input_size[1]]
    return interpolate_bilinear(masks, tuple(original_size))
