"""HQ-SAM's mask decoder (`segment_anything_hq/modeling/mask_decoder_hq.py`): SAM's decoder plus a
high-quality output token whose mask is drawn on features that also see an early layer of the
image encoder.

Parameter names are the official ones (`hf_token`, `hf_mlp`, `compress_vit_feat`,
`embedding_encoder`, `embedding_maskfeature`, and SAM's decoder's). The HQ features depend on the
image alone: `hq_features` computes them once per image, and `decode` answers any number of
prompts with them; `__call__` is sam-hq's forward (both steps).
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from ..numerics import traced_with_numerics
from .common import GELU, LayerNorm2d, Sequential
from .mask_decoder import MLP, ConvTranspose2x2, MaskDecoder
from .transformer import TwoWayTransformer


class MaskDecoderHQ(MaskDecoder):
    """sam-hq's MaskDecoderHQ. vit_dim: the width of the encoder's early feature (the ViT's
    embed_dim; 160 for MobileSAM's TinyViT). `num_mask_tokens` counts SAM's mask tokens (M + 1)
    as in MaskDecoder; the HQ token comes after them (the official attribute counts it too)."""

    def __init__(
        self,
        *,
        transformer_dim: int,
        transformer: TwoWayTransformer,
        num_multimask_outputs: int = 3,
        iou_head_depth: int = 3,
        iou_head_hidden_dim: int = 256,
        vit_dim: int = 1024,
        rngs: nnx.Rngs,
    ):
        super().__init__(transformer_dim=transformer_dim, transformer=transformer,
                         num_multimask_outputs=num_multimask_outputs, iou_head_depth=iou_head_depth,
                         iou_head_hidden_dim=iou_head_hidden_dim, rngs=rngs)
        d = transformer_dim
        self.hf_token = nnx.Embed(1, d, rngs=rngs)
        self.hf_mlp = MLP(d, d, d // 8, 3, rngs=rngs)
        self.compress_vit_feat = Sequential([
            ConvTranspose2x2(vit_dim, d, rngs=rngs), LayerNorm2d(d, rngs=rngs), GELU(),
            ConvTranspose2x2(d, d // 8, rngs=rngs),
        ])
        self.embedding_encoder = Sequential([
            ConvTranspose2x2(d, d // 4, rngs=rngs), LayerNorm2d(d // 4, rngs=rngs), GELU(),
            ConvTranspose2x2(d // 4, d // 8, rngs=rngs),
        ])
        pad = ((1, 1), (1, 1))
        self.embedding_maskfeature = Sequential([
            nnx.Conv(d // 8, d // 4, (3, 3), padding=pad, rngs=rngs), LayerNorm2d(d // 4, rngs=rngs), GELU(),
            nnx.Conv(d // 4, d // 8, (3, 3), padding=pad, rngs=rngs),
        ])

    @traced_with_numerics
    def __call__(
        self,
        image_embeddings: jax.Array,
        image_pe: jax.Array,
        sparse_prompt_embeddings: jax.Array,
        dense_prompt_embeddings: jax.Array,
        multimask_output: bool,
        hq_token_only: bool,
        interm_embeddings: jax.Array | Sequence[jax.Array],
        token_mask: jax.Array | None = None,
    ) -> tuple[jax.Array, jax.Array]:
        """sam-hq's forward: B prompts on one image (or on B images).

        image_embeddings (1 or B, C, h, w); interm_embeddings: the encoder's early feature
        (1 or B, h, w, vit_dim), or sam-hq's list of them (the first is used); the rest as in
        `MaskDecoder`. Returns mask logits (B, 1, 4h, 4w) and IoU predictions (B, 1): see
        `select_hq_output`."""
        early = interm_embeddings[0] if isinstance(interm_embeddings, (list, tuple)) else interm_embeddings
        hq = self.hq_features(image_embeddings, early)
        return self.decode(image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings, hq,
                           multimask_output, hq_token_only, token_mask)

    @traced_with_numerics
    def hq_features(self, image_embeddings: jax.Array, early: jax.Array) -> jax.Array:
        """Per-image HQ features: embedding_encoder(image_embeddings) + compress_vit_feat(early).
        (B, C, h, w) and (B, h, w, vit_dim) -> (B, 4h, 4w, C/8), channels last."""
        x = self.embedding_encoder(jnp.transpose(image_embeddings, (0, 2, 3, 1)))
        return x + self.compress_vit_feat(early.astype(x.dtype))

    @traced_with_numerics
    def decode(self, image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings, hq_features,
               multimask_output: bool, hq_token_only: bool = False, token_mask=None) -> tuple[jax.Array, jax.Array]:
        """The forward with the image's `hq_features` ((1 or B, 4h, 4w, C/8)) already made:
        (B, 1, 4h, 4w) mask logits and (B, 1) IoU predictions."""
        masks, iou_pred = self.predict_masks(image_embeddings, image_pe, sparse_prompt_embeddings,
                                             dense_prompt_embeddings, hq_features, token_mask)
        return select_hq_output(masks, iou_pred, multimask_output, hq_token_only)

    @traced_with_numerics
    def predict_masks(self, image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings,
                      hq_features, token_mask=None) -> tuple[jax.Array, jax.Array]:
        """Every output, for training: mask logits (B, M + 2, 4h, 4w), SAM's M + 1 masks then
        the HQ mask, and SAM's IoU predictions (B, M + 1) (the HQ token has none)."""
        B = sparse_prompt_embeddings.shape[0]
        output_tokens = jnp.concatenate(
            [self.iou_token.embedding[...], self.mask_tokens.embedding[...], self.hf_token.embedding[...]], axis=0
        )
        output_tokens = jnp.broadcast_to(output_tokens[None], (B,) + output_tokens.shape)
        tokens = jnp.concatenate([output_tokens, sparse_prompt_embeddings.astype(output_tokens.dtype)], axis=1)
        if token_mask is not None:
            token_mask = jnp.concatenate([jnp.ones((B, output_tokens.shape[1]), bool), token_mask], axis=1)

        src = image_embeddings + dense_prompt_embeddings  # broadcasts one image over B prompts
        _, c, h, w = src.shape
        hs, src = self.transformer(src, image_pe, tokens, token_mask)
        iou_token_out = hs[:, 0, :]
        mask_tokens_out = hs[:, 1 : 2 + self.num_mask_tokens, :]  # SAM's tokens, then the HQ token

        # SAM's masks as in MaskDecoder, on the upscaled blocks; the HQ branch's 3x3 convolutions
        # need the interleaved (B, 4h, 4w, C/8) map.
        blocks = self.upscale_blocks(src.reshape(src.shape[0], h, w, c))
        hyper_in = jnp.stack([mlp(mask_tokens_out[:, i, :]) for i, mlp in enumerate(self.output_hypernetworks_mlps)], axis=1)
        masks_sam = jnp.einsum("nmk,nyxabcdk->nmyacxbd", hyper_in, blocks, preferred_element_type=jnp.float32)
        masks_sam = masks_sam.reshape(masks_sam.shape[0], masks_sam.shape[1], 4 * h, 4 * w)

        upscaled = blocks.transpose(0, 1, 3, 5, 2, 4, 6, 7).reshape(blocks.shape[0], 4 * h, 4 * w, -1)
        upscaled_hq = self.embedding_maskfeature(upscaled) + hq_features.astype(upscaled.dtype)
        hyper_hq = self.hf_mlp(mask_tokens_out[:, -1, :])
        masks_hq = jnp.einsum("nk,nyxk->nyx", hyper_hq, upscaled_hq, preferred_element_type=jnp.float32)
        masks = jnp.concatenate([masks_sam, masks_hq[:, None]], axis=1)
        return masks, self.iou_prediction_head(iou_token_out).astype(jnp.float32)


def select_hq_output(masks: jax.Array, iou_pred: jax.Array, multimask_output: bool,
                     hq_token_only: bool) -> tuple[jax.Array, jax.Array]:
    """sam-hq's output rule on `predict_masks`' (B, M + 2, H, W) masks and (B, M + 1) IoUs.

    SAM's mask: with multimask_output the one of outputs 1..M with the highest predicted IoU
    (the first on ties), else output 0; its IoU prediction is returned. The logits are the HQ
    mask alone when hq_token_only, else SAM's mask plus the HQ mask (summed logits, as sam-hq).
    Returns (B, 1, H, W) and (B, 1)."""
    masks_hq = masks[:, -1:]
    if multimask_output:
        best = jnp.argmax(iou_pred[:, 1:], axis=1)[:, None]
        iou = jnp.take_along_axis(iou_pred[:, 1:], best, axis=1)
        masks_sam = jnp.take_along_axis(masks[:, 1:-1], best[:, :, None, None], axis=1)
    else:
        iou = iou_pred[:, :1]
        masks_sam = masks[:, :1]
    return (masks_hq if hq_token_only else masks_sam + masks_hq), iou
