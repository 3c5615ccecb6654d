"""The SAM model: encoders and decoder together, with the official pre- and postprocessing as
pure functions (the official `modeling/sam.py`)."""

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
from .prompt_encoder import PromptEncoder
from .transformer import TwoWayTransformer


class Sam(nnx.Module):
    image_format: str = "RGB"

    def __init__(self, config: SamConfig, *, rngs: nnx.Rngs):
        c = config
        self.config = c
        # How the model computes; its submodules hold the same settings (see `with_numerics`).
        self.numerics = Numerics()
        self.image_encoder = ImageEncoderViT(
            img_size=c.image_size,
            patch_size=c.patch_size,
            in_chans=c.in_chans,
            embed_dim=c.encoder_embed_dim,
            depth=c.encoder_depth,
            num_heads=c.encoder_num_heads,
            mlp_ratio=c.mlp_ratio,
            out_chans=c.prompt_embed_dim,
            qkv_bias=c.qkv_bias,
            use_abs_pos=c.use_abs_pos,
            use_rel_pos=c.use_rel_pos,
            window_size=c.window_size,
            global_attn_indexes=c.encoder_global_attn_indexes,
            rngs=rngs,
        )
        grid = (c.image_embedding_size, c.image_embedding_size)
        self.prompt_encoder = PromptEncoder(
            c.prompt_embed_dim, grid, (c.image_size, c.image_size), c.mask_in_chans, rngs=rngs
        )
        transformer = TwoWayTransformer(
            c.decoder_depth, c.prompt_embed_dim, c.decoder_num_heads, c.decoder_mlp_dim,
            c.attention_downsample_rate, rngs=rngs,
        )
        self.mask_decoder = MaskDecoder(
            transformer_dim=c.prompt_embed_dim,
            transformer=transformer,
            num_multimask_outputs=c.num_multimask_outputs,
            iou_head_depth=c.iou_head_depth,
            iou_head_hidden_dim=c.iou_head_hidden_dim,
            rngs=rngs,
        )

    @property
    def mask_threshold(self) -> float:
        return self.config.mask_threshold

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

    def __call__(self, batched_input: list[dict[str, Any]], multimask_output: bool) -> list[dict[str, jax.Array]]:
        """The official end-to-end forward over a list of images with prompts (eager, for parity and
        convenience; the predictor's jitted functions are the fast path). Each dict holds `image`
        (3, H, W) already resized to the input size, `original_size` (H, W), and optionally
        `point_coords` (B, N, 2), `point_labels` (B, N), `boxes` (B, 4), `mask_inputs` (B, 1, 4h, 4w)."""
        images = jnp.stack([preprocess(self.config, x["image"]) for x in batched_input])
        image_embeddings = self.image_encoder(images)
        outputs = []
        for record, emb in zip(batched_input, image_embeddings):
            points = (record["point_coords"], record["point_labels"]) if "point_coords" in record else None
            sparse, dense = self.prompt_encoder(points, record.get("boxes"), record.get("mask_inputs"))
            low_res, iou = self.mask_decoder(emb[None], self.prompt_encoder.get_dense_pe(), sparse, dense, multimask_output)
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


def preprocess(config: SamConfig, x: jax.Array) -> jax.Array:
    """(..., 3, H, W) RGB pixel values (H, W <= image_size) -> normalised and zero-padded to
    (..., 3, image_size, image_size), as the official `Sam.preprocess`."""
    mean = jnp.asarray(config.pixel_mean, jnp.float32)[:, None, None]
    std = jnp.asarray(config.pixel_std, jnp.float32)[:, None, None]
    x = (x.astype(jnp.float32) - mean) / std
    h, w = x.shape[-2:]
    pad = [(0, 0)] * (x.ndim - 2) + [(0, config.image_size - h), (0, config.image_size - w)]
    return jnp.pad(x, pad)


def postprocess_masks(
    config: SamConfig,
    masks: jax.Array,
    input_size: tuple[int, int],
    original_size: tuple[int, int],
) -> jax.Array:
    """(..., 4h, 4w) low-resolution mask logits -> (..., H, W) logits at the original image size.

    Upsamples to the square model input, crops the padding to `input_size` (the resized image),
    and resamples to `original_size`, each with torch's bilinear interpolation (no antialias)."""
    masks = interpolate_bilinear(masks, (config.image_size, config.image_size))
    masks = masks[..., : input_size[0], : input_size[1]]
    return interpolate_bilinear(masks, tuple(original_size))
