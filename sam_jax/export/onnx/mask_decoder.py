"""ONNX emitters of `modeling/mask_decoder.py`: the output tokens, the two-way transformer, the
upscaling of the image features, the hypernetwork MLPs and the IoU head, on one prompt (batch 1)."""

from __future__ import annotations

from ...modeling.mask_decoder import MLP, ConvTranspose2x2, MaskDecoder
from .builder import GraphBuilder, gelu, layer_norm, linear, relu
from .transformer import two_way_transformer


def predict_masks(g: GraphBuilder, dec: MaskDecoder, image_embeddings: str, image_pe: str,
                  sparse_prompt_embeddings: str, dense_prompt_embeddings: str) -> tuple[str, str]:
    """MaskDecoder.predict_masks, all mask tokens: image_embeddings, image_pe and dense (1, C, h, w),
    sparse (1, N, C) -> mask logits (1, T, 4h, 4w) and IoU predictions (1, T), T = num_mask_tokens."""
    output_tokens = g.op("Concat", g.param(dec.iou_token.embedding), g.param(dec.mask_tokens.embedding), axis=0)
    hs, upscaled = transformer_and_upscaling(g, dec, output_tokens, image_embeddings, image_pe, sparse_prompt_embeddings,
                                             dense_prompt_embeddings)
    mask_tokens_out = g.slice(hs, [1], [1 + dec.num_mask_tokens], [1])  # (1, T, C)
    masks = hypernetwork_masks(g, dec.output_hypernetworks_mlps, mask_tokens_out, upscaled)
    return masks, mlp(g, dec.iou_prediction_head, g.op("Gather", hs, g.ints(0), axis=1))


def transformer_and_upscaling(g: GraphBuilder, dec: MaskDecoder, output_tokens: str, image_embeddings: str,
                              image_pe: str, sparse_prompt_embeddings: str, dense_prompt_embeddings: str) -> tuple[str, str]:
    """The output tokens (K, C) and the prompt tokens (1, N, C) through the two-way transformer with
    the image (1, C, h, w): the tokens out (1, K + N, C), and the image features upscaled (1, C/8, 4h, 4w)."""
    tokens = g.op("Concat", g.unsqueeze(output_tokens, [0]), sparse_prompt_embeddings, axis=1)  # (1, K + N, C)
    image_sum = g.op("Add", image_embeddings, dense_prompt_embeddings)
    hs, src = two_way_transformer(g, dec.transformer, image_sum, image_pe, tokens)  # src: (1, h*w, C)
    # The image features back to (1, C, h, w), src's shape, before the upscaling.
    return hs, output_upscaling(g, dec, g.op("Reshape", g.op("Transpose", src, perm=[0, 2, 1]), g.op("Shape", image_sum)))


def hypernetwork_masks(g: GraphBuilder, mlps, tokens_out: str, upscaled: str) -> str:
    """Mask logits (1, T, 4h, 4w): each of the T tokens (1, T, C) through its MLP (1, C/8), as
    weights of a sum over the channels of the upscaled features (1, C/8, 4h, 4w)."""
    hyper_in = g.op("Concat", *(
        g.unsqueeze(mlp(g, m, g.op("Gather", tokens_out, g.ints(i), axis=1)), [1]) for i, m in enumerate(mlps)
    ), axis=1)  # (1, T, C/8)
    masks = g.op("MatMul", hyper_in, g.op("Reshape", upscaled, g.ints([0, 0, -1])))
    return g.op("Reshape", masks, g.op("Concat", g.ints([0, 0]), g.slice(g.op("Shape", upscaled), [2], [4], [0]), axis=0))


def output_upscaling(g: GraphBuilder, dec: MaskDecoder, x: str) -> str:
    """(1, C, h, w) -> (1, C/8, 4h, 4w)."""
    conv1, norm, _, conv2, _ = dec.output_upscaling
    return gelu(g, conv_transpose_2x2(g, conv2, gelu(g, layer_norm(g, norm, conv_transpose_2x2(g, conv1, x), axis=1))))


def conv_transpose_2x2(g: GraphBuilder, conv: ConvTranspose2x2, x: str) -> str:
    """nn.ConvTranspose2d(kernel_size=2, stride=2) on NCHW: kernel (2, 2, in, out) -> ONNX (in, out, 2, 2)."""
    return g.op("ConvTranspose", x, g.param(conv.kernel, perm=(2, 3, 0, 1)), g.param(conv.bias), strides=[2, 2])


def mlp(g: GraphBuilder, m: MLP, x: str) -> str:
    """mask_decoder.MLP: linear layers with ReLU between them (and a final sigmoid if asked)."""
    for i, layer in enumerate(m.layers):
        x = linear(g, layer, x)
        x = relu(g, x) if i < len(m.layers) - 1 else x
    return g.op("Sigmoid", x) if m.sigmoid_output else x
