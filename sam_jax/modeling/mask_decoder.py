"""Mask decoder (the official `modeling/mask_decoder.py`)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from ..numerics import Numerics, traced_with_numerics
from .common import GELU, LayerNorm2d, Sequential
from .transformer import TwoWayTransformer


class MaskDecoder(nnx.Module):
    def __init__(
        self,
        *,
        transformer_dim: int,
        transformer: TwoWayTransformer,
        num_multimask_outputs: int = 3,
        iou_head_depth: int = 3,
        iou_head_hidden_dim: int = 256,
        rngs: nnx.Rngs,
    ):
        self.transformer_dim = transformer_dim
        self.numerics = Numerics()
        self.transformer = transformer
        self.num_multimask_outputs = num_multimask_outputs
        self.iou_token = nnx.Embed(1, transformer_dim, rngs=rngs)
        self.num_mask_tokens = num_multimask_outputs + 1
        self.mask_tokens = nnx.Embed(self.num_mask_tokens, transformer_dim, rngs=rngs)
        self.output_upscaling = Sequential(
            [
                ConvTranspose2x2(transformer_dim, transformer_dim // 4, rngs=rngs),
                LayerNorm2d(transformer_dim // 4, rngs=rngs),
                GELU(),
                ConvTranspose2x2(transformer_dim // 4, transformer_dim // 8, rngs=rngs),
                GELU(),
            ]
        )
        self.output_hypernetworks_mlps = nnx.List(
            [MLP(transformer_dim, transformer_dim, transformer_dim // 8, 3, rngs=rngs) for _ in range(self.num_mask_tokens)]
        )
        self.iou_prediction_head = MLP(transformer_dim, iou_head_hidden_dim, self.num_mask_tokens, iou_head_depth, rngs=rngs)

    @traced_with_numerics
    def __call__(
        self,
        image_embeddings: jax.Array,
        image_pe: jax.Array,
        sparse_prompt_embeddings: jax.Array,
        dense_prompt_embeddings: jax.Array,
        multimask_output: bool,
        token_mask: jax.Array | None = None,
    ) -> tuple[jax.Array, jax.Array]:
        """Predicts masks for B prompts on one image (or on B images).

        image_embeddings: (1 or B, C, h, w); image_pe: (1, C, h, w); sparse: (B, N, C);
        dense: (B, C, h, w); token_mask: (B, N) True for real prompt tokens (None: all real).
        Returns mask logits (B, M, 4h, 4w) and IoU predictions (B, M), M = 3 (multimask) or 1.
        """
        masks, iou_pred = self.predict_masks(
            image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings, token_mask
        )
        sl = slice(1, None) if multimask_output else slice(0, 1)
        return masks[:, sl], iou_pred[:, sl]

    @traced_with_numerics
    def predict_masks(self, image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings, token_mask=None):
        B = sparse_prompt_embeddings.shape[0]
        output_tokens = jnp.concatenate([self.iou_token.embedding[...], self.mask_tokens.embedding[...]], axis=0)
        output_tokens = jnp.broadcast_to(output_tokens[None], (B,) + output_tokens.shape)
        tokens = jnp.concatenate([output_tokens, sparse_prompt_embeddings.astype(output_tokens.dtype)], axis=1)
        if token_mask is not None:
            token_mask = jnp.concatenate([jnp.ones((B, output_tokens.shape[1]), bool), token_mask], axis=1)

        src = image_embeddings + dense_prompt_embeddings  # broadcasts one image over B prompts
        b, c, h, w = src.shape
        hs, src = self.transformer(src, image_pe, tokens, token_mask)
        iou_token_out = hs[:, 0, :]
        mask_tokens_out = hs[:, 1 : 1 + self.num_mask_tokens, :]

        upscaled = self.upscale_blocks(src.reshape(src.shape[0], h, w, c))
        hyper_in = jnp.stack([mlp(mask_tokens_out[:, i, :]) for i, mlp in enumerate(self.output_hypernetworks_mlps)], axis=1)
        # Pixel (4y + 2a + c, 4x + 2b + d) of the upscaled map is upscaled[:, y, x, a, b, c, d]; the
        # hypernetwork product runs in that layout, and only the (B, M, 4h, 4w) masks are interleaved.
        masks = jnp.einsum("nmk,nyxabcdk->nmyacxbd", hyper_in, upscaled, preferred_element_type=jnp.float32)
        masks = masks.reshape(masks.shape[0], masks.shape[1], 4 * h, 4 * w)
        return masks, self.iou_prediction_head(iou_token_out).astype(jnp.float32)

    def upscale_blocks(self, x: jax.Array) -> jax.Array:
        """output_upscaling on (B, h, w, C) without interleaving pixels: (B, h, w, 2, 2, 2, 2, C/8).

        Layer norm and GELU act per pixel and each 2x2 transposed convolution writes its own
        output block, so the official layers apply unchanged in this layout, and the large
        depth-to-space transposes of the feature maps are never made."""
        conv1, norm, act1, conv2, act2 = self.output_upscaling
        return act2(conv2.blocks(act1(norm(conv1.blocks(x)))))


class ConvTranspose2x2(nnx.Module):
    """nn.ConvTranspose2d(in, out, kernel_size=2, stride=2) on NHWC maps.

    With kernel == stride the output pixels never overlap, so the layer is one einsum and a
    reshape: each input pixel writes its own 2x2 output block. kernel: (2, 2, in, out)."""

    def __init__(self, in_features: int, out_features: int, *, rngs: nnx.Rngs):
        self.dtype = None  # compute dtype, as nnx.Conv's (None: the inputs')
        init = nnx.initializers.lecun_normal()
        self.kernel = nnx.Param(init(rngs.params(), (2, 2, in_features, out_features)))
        self.bias = nnx.Param(jnp.zeros((out_features,)))

    def __call__(self, x: jax.Array) -> jax.Array:
        """(B, H, W, in) -> (B, 2H, 2W, out)."""
        B, H, W, _ = x.shape
        return self.blocks(x).transpose(0, 1, 3, 2, 4, 5).reshape(B, 2 * H, 2 * W, -1)

    def blocks(self, x: jax.Array) -> jax.Array:
        """(..., in) -> (..., 2, 2, out): the 2x2 output block of every input pixel."""
        x, kernel, bias = (a if self.dtype is None else a.astype(self.dtype) for a in (x, self.kernel[...], self.bias[...]))
        return jnp.einsum("...i,abio->...abo", x, kernel) + bias


class MLP(nnx.Module):
    """Feed-forward net with ReLU between layers (the official mask_decoder.MLP)."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int,
                 sigmoid_output: bool = False, *, rngs: nnx.Rngs):
        h = [hidden_dim] * (num_layers - 1)
        self.layers = nnx.List(
            [nnx.Linear(n, k, rngs=rngs) for n, k in zip([input_dim] + h, h + [output_dim])]
        )
        self.sigmoid_output = sigmoid_output

    def __call__(self, x: jax.Array) -> jax.Array:
        for i, layer in enumerate(self.layers):
            x = jax.nn.relu(layer(x)) if i < len(self.layers) - 1 else layer(x)
        return jax.nn.sigmoid(x) if self.sigmoid_output else x
