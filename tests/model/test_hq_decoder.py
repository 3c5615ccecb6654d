"""Parity of sam_jax's MaskDecoderHQ (and the ViT encoder's early feature) with sam-hq's own
PyTorch modules, on a small configuration: 160 px images, 16 px patches (a 10x10 grid) with 4x4
windows (padded to 12x12), 5 encoder heads, global attention in blocks 1 and 3.

Weights: sam-hq's modules' random init with every tensor perturbed (`reference.official.perturb`),
loaded into ours by the converter's key mapping (`reference.family_keys`). The decoder is fed the
reference's own image embeddings, early feature and prompt embeddings, so each comparison sees
one module's error only.
"""

from __future__ import annotations

from functools import partial

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from tests.reference.family_keys import load_official
from tests.reference.compare import assert_close
from tests.reference.official import perturb
from sam_jax.modeling.image_encoder import ImageEncoderViT
from sam_jax.modeling.mask_decoder_hq import MaskDecoderHQ
from sam_jax.modeling.transformer import TwoWayTransformer

hq = pytest.importorskip("segment_anything_hq.modeling", reason="segment-anything-hq is not installed")

S, PATCH, WINDOW, GLOBAL = 160, 16, 4, (1, 3)
ENC = dict(img_size=S, patch_size=PATCH, embed_dim=60, depth=4, num_heads=5, mlp_ratio=4.0, out_chans=32,
           qkv_bias=True, use_rel_pos=True, window_size=WINDOW, global_attn_indexes=GLOBAL)
DEC = dict(transformer_dim=32, num_multimask_outputs=3, iou_head_depth=3, iou_head_hidden_dim=32, vit_dim=60)
TRANSFORMER = dict(depth=2, embedding_dim=32, num_heads=4, mlp_dim=64)


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    grid = S // PATCH
    ref = torch.nn.ModuleDict(dict(
        image_encoder=hq.ImageEncoderViT(norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), **ENC),
        prompt_encoder=hq.PromptEncoder(embed_dim=32, image_embedding_size=(grid, grid), input_image_size=(S, S),
                                        mask_in_chans=8),
        mask_decoder=hq.MaskDecoderHQ(transformer=hq.TwoWayTransformer(**TRANSFORMER), **DEC),
    ))
    perturb(ref.eval())
    center_iou_bias(ref)

    encoder = load_official(lambda: ImageEncoderViT(**ENC, rngs=nnx.Rngs(0)), ref.image_encoder.state_dict(), "image_encoder")
    decoder = load_official(
        lambda: MaskDecoderHQ(transformer=TwoWayTransformer(**TRANSFORMER, rngs=nnx.Rngs(0)), **DEC, rngs=nnx.Rngs(0)),
        ref.mask_decoder.state_dict(), "mask_decoder")
    return ref, encoder, decoder


def embed_image(ref):
    """The reference's embeddings (1, 32, 10, 10), early features [(1, 10, 10, 60)] and dense PE."""
    x = torch.randn(1, 3, S, S, generator=torch.Generator().manual_seed(1))
    emb, interm = ref.image_encoder(x)
    return x, emb, interm, ref.prompt_encoder.get_dense_pe()


def ref_hq_features(d, emb, interm):
    """The per-image HQ features as sam-hq's MaskDecoderHQ.forward makes them: (1, C/8, 4h, 4w)."""
    return d.embedding_encoder(emb) + d.compress_vit_feat(interm[0].permute(0, 3, 1, 2))


def center_iou_bias(ref):
    """Shifts the IoU head's output bias so that each output's mean prediction over the test
    prompts is zero: with the perturbed bias, one output wins the multimask choice for every
    prompt, and a wrong choice could not be seen."""
    _, emb, interm, pe = embed_image(ref)
    d = ref.mask_decoder
    _, iou = d.predict_masks(emb, pe, *prompts(ref, "points+boxes+masks"), ref_hq_features(d, emb, interm))
    d.iou_prediction_head.layers[-1].bias.sub_(iou.mean(0))


@pytest.fixture(scope="module")
def image(models):
    return embed_image(models[0])


def prompts(ref, kinds: str, B: int = 3):
    """sam-hq's sparse and dense prompt embeddings for B prompts of the given kinds."""
    g = torch.Generator().manual_seed(2)
    pts = (torch.rand(B, 2, 2, generator=g) * S, torch.tensor([[1, 0], [0, 1], [1, 1]])[:B])
    x0 = torch.rand(B, 2, generator=g) * S / 2
    boxes = torch.cat([x0, x0 + 1 + torch.rand(B, 2, generator=g) * S / 2], 1)
    masks = torch.randn(B, 1, 4 * S // PATCH, 4 * S // PATCH, generator=g) * 5
    use = set(kinds.split("+"))
    return ref.prompt_encoder(pts if "points" in use else None, boxes if "boxes" in use else None,
                              masks if "masks" in use else None)


def test_early_features(models, image):
    """The encoder's embeddings, and the output of its first global block as sam-hq's interm_embeddings[0]."""
    _, encoder, _ = models
    x, emb, interm, _ = image
    ours_emb, early = nnx.jit(lambda m, x: m.with_early_features(x))(encoder, x.numpy())
    assert_close(ours_emb, emb, 1e-5, "embeddings")
    assert_close(early, interm[0], 1e-5, "early feature")


@pytest.mark.parametrize("kinds", ["points", "boxes", "points+boxes+masks"])
def test_all_outputs(models, image, kinds):
    """predict_masks: SAM's M + 1 masks and the HQ mask, SAM's IoUs; the per-image HQ features."""
    ref, _, decoder = models
    _, emb, interm, pe = image
    sparse, dense = prompts(ref, kinds)
    d = ref.mask_decoder
    ref_hq = ref_hq_features(d, emb, interm)
    ref_masks, ref_iou = d.predict_masks(emb, pe, sparse, dense, ref_hq)

    hq_features = decoder.hq_features(emb.numpy(), interm[0].numpy())
    assert_close(hq_features, ref_hq.permute(0, 2, 3, 1), 1e-5, "hq features")
    masks, iou = nnx.jit(lambda m, *a: m.predict_masks(*a))(decoder, emb.numpy(), pe.numpy(), sparse.numpy(),
                                                            dense.numpy(), hq_features)
    assert masks.shape == (3, 5, 40, 40) and iou.shape == (3, 4)
    assert_close(masks, ref_masks, 1e-5, f"{kinds} masks")
    assert_close(iou, ref_iou, 1e-5, f"{kinds} iou")


@pytest.mark.parametrize("multimask", [False, True])
@pytest.mark.parametrize("hq_token_only", [False, True])
def test_forward(models, image, multimask, hq_token_only):
    """sam-hq's forward (its output rule) on points, a box and a mask input per prompt."""
    ref, _, decoder = models
    _, emb, interm, pe = image
    sparse, dense = prompts(ref, "points+boxes+masks")
    ref_masks, ref_iou = ref.mask_decoder(emb, pe, sparse, dense, multimask, hq_token_only, interm)
    if multimask:  # the prompts do not all choose the same output
        d = ref.mask_decoder
        ref_iou_all = d.predict_masks(emb, pe, sparse, dense, ref_hq_features(d, emb, interm))[1]
        assert len(set(ref_iou_all[:, 1:].argmax(1).tolist())) > 1
    masks, iou = decoder(emb.numpy(), pe.numpy(), sparse.numpy(), dense.numpy(), multimask, hq_token_only,
                         [interm[0].numpy()])
    assert masks.shape == (3, 1, 40, 40) and iou.shape == (3, 1)
    assert_close(masks, ref_masks, 1e-5, "masks")
    assert_close(iou, ref_iou, 1e-5, "iou")


def test_padded_prompts_with_cached_features(models, image):
    """decode with the image's HQ features made once, on prompts padded with absent tokens
    (token_mask False): the reference's result on the unpadded prompts."""
    ref, _, decoder = models
    _, emb, interm, pe = image
    sparse, dense = prompts(ref, "points+boxes")
    ref_masks, ref_iou = ref.mask_decoder(emb, pe, sparse, dense, True, False, interm)
    B, N, C = sparse.shape
    padded = np.concatenate([sparse.numpy(), np.full((B, 2, C), 7.0, np.float32)], axis=1)
    token_mask = np.arange(N + 2)[None].repeat(B, 0) < N
    hq_features = decoder.hq_features(emb.numpy(), interm[0].numpy())
    masks, iou = decoder.decode(emb.numpy(), pe.numpy(), padded, dense.numpy(), hq_features, True, False,
                                jnp.asarray(token_mask))
    assert_close(masks, ref_masks, 1e-5, "masks")
    assert_close(iou, ref_iou, 1e-5, "iou")
