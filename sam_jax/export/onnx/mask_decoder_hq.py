"""ONNX emitters of `modeling/mask_decoder_hq.py`: HQ-SAM's decoder on one prompt (batch 1), SAM's
decoder (`mask_decoder`) plus the HQ token, whose mask is drawn on the upscaled image features
refined by `embedding_maskfeature` and fused with the per-image HQ features."""

from __future__ import annotations

from ...modeling.common import Sequential
from ...modeling.mask_decoder_hq import MaskDecoderHQ
from .builder import GraphBuilder, conv, gelu, layer_norm
from .mask_decoder import conv_transpose_2x2, hypernetwork_masks, mlp, transformer_and_upscaling


def hq_features(g: GraphBuilder, dec: MaskDecoderHQ, image_embeddings: str, early: str) -> str:
    """embedding_encoder(image_embeddings) + compress_vit_feat(early): (1, C, h, w) and the early
    feature (1, vit_dim, h, w) -> (1, C/8, 4h, 4w)."""
    return g.op("Add", _upscale_2x2_twice(g, dec.embedding_encoder, image_embeddings),
                _upscale_2x2_twice(g, dec.compress_vit_feat, early))


def _upscale_2x2_twice(g: GraphBuilder, seq: Sequential, x: str) -> str:
    """ConvTranspose2d (2x2, stride 2), LayerNorm2d, GELU, ConvTranspose2d on NCHW: (1, a, h, w) -> (1, b, 4h, 4w)."""
    conv1, norm, _, conv2 = seq
    return conv_transpose_2x2(g, conv2, gelu(g, layer_norm(g, norm, conv_transpose_2x2(g, conv1, x), axis=1)))


def predict_masks(g: GraphBuilder, dec: MaskDecoderHQ, image_embeddings: str, image_pe: str,
                  sparse_prompt_embeddings: str, dense_prompt_embeddings: str, hq: str) -> tuple[str, str]:
    """MaskDecoderHQ.predict_masks: mask logits (1, T + 1, 4h, 4w), SAM's T = num_mask_tokens masks
    then the HQ mask, and SAM's IoU predictions (1, T); hq: `hq_features`' (1, C/8, 4h, 4w)."""
    output_tokens = g.op("Concat", g.param(dec.iou_token.embedding), g.param(dec.mask_tokens.embedding),
                         g.param(dec.hf_token.embedding), axis=0)
    hs, upscaled = transformer_and_upscaling(g, dec, output_tokens, image_embeddings, image_pe, sparse_prompt_embeddings,
                                             dense_prompt_embeddings)
    T = dec.num_mask_tokens
    masks_sam = hypernetwork_masks(g, dec.output_hypernetworks_mlps, g.slice(hs, [1], [1 + T], [1]), upscaled)
    maskfeature = dec.embedding_maskfeature  # conv, LayerNorm2d, GELU, conv on the upscaled features
    refined = gelu(g, layer_norm(g, maskfeature[1], conv(g, maskfeature[0], upscaled), axis=1))
    upscaled_hq = g.op("Add", conv(g, maskfeature[3], refined), hq)
    masks_hq = hypernetwork_masks(g, [dec.hf_mlp], g.slice(hs, [1 + T], [2 + T], [1]), upscaled_hq)
    iou_pred = mlp(g, dec.iou_prediction_head, g.op("Gather", hs, g.ints(0), axis=1))
    return g.op("Concat", masks_sam, masks_hq, axis=1), iou_pred

