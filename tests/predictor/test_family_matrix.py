"""Every model family through the pipeline's other paths, each against the plain path of the same
model (floats within 1e-5 relative, the conventions' "identical"):

    batched prompts     predict_batch with several points and boxes = each prompt alone (predict)
    many devices        embed_images over the 8 simulated devices = one device (embeddings, and
                        HQ-SAM's per-image HQ features; prompts over devices: test_parallel.py)
    jax.export          embedding + decoding exported, serialized and deserialized = the predictor

on tiny configurations of each family (random weights in every variable, `random_model`; one
two-way block in the decoder): MobileSAM's TinyViT (its four stages, the last merge keeping the
grid), LiteMedSAM's (1x1 stem; min-max over each image's own pixels, padded in a sharded batch),
HQ-SAM (on a ViT; sam-hq's vit_tiny, HQ on a TinyViT, is held to sam-hq in the export and model
tests), and MedSAM's preprocessing (square resize, min-max) on a SlimSAM-like pruned ViT (MLP 138
wide, not 4 x 48), in one row to keep the compilations few (each costs seconds on CPU).
"""

from __future__ import annotations

import jax
import numpy as np
import pytest
from flax import nnx

from tests.reference.compare import assert_close
from tests.reference.models import random_model
from sam_jax import SamConfig, SamPredictor
from sam_jax.functional import Prompts, decode_prompts, image_features
from sam_jax.predictor import pad_prompts

# One two-way block (not the official two): a decoder that compiles fast; nothing here depends on the depth.
DECODER = dict(prompt_embed_dim=32, mask_in_chans=8, decoder_depth=1, decoder_num_heads=4, decoder_mlp_dim=64,
               iou_head_hidden_dim=32)
# MobileSAM's four stages (the last merge keeps the grid, into width 320); LiteMedSAM's three
# (stride 1 x 2 x 2 = 4 behind its 1x1 stem).
MOBILE = dict(encoder="tiny_vit", tiny_vit_embed_dims=(16, 32, 48, 320), tiny_vit_depths=(1, 1, 1, 1),
              tiny_vit_num_heads=(2, 2, 4, 10), tiny_vit_window_sizes=(7, 7, 5, 4), **DECODER)
LITE_TINY_VIT = dict(encoder="tiny_vit", tiny_vit_embed_dims=(16, 32, 48), tiny_vit_depths=(1, 1, 1),
                     tiny_vit_num_heads=(2, 2, 4), tiny_vit_window_sizes=(7, 7, 5), **DECODER)
# A two-block ViT at 128 px (windows of 3 padded to 9, one global block); with an MLP 138 wide
# (not 4 x 48), SlimSAM-like, it carries MedSAM's preprocessing: one row for both.
PRUNED_VIT = dict(image_size=128, encoder_embed_dim=48, encoder_depth=2, encoder_num_heads=4, encoder_global_attn_indexes=(1,),
                  window_size=3, mlp_ratio=138 / 48, **DECODER)
FAMILIES = {
    "mobile_sam": SamConfig(image_size=128, **MOBILE),
    "lite_medsam": SamConfig(image_size=64, patch_size=4, preprocess="lite_medsam", **LITE_TINY_VIT),
    "sam_hq": SamConfig(decoder="hq", **dict(PRUNED_VIT, mlp_ratio=4.0)),
    "medsam_slimsam": SamConfig(preprocess="medsam", **PRUNED_VIT),
}


def _images(n, seed):
    r = np.random.default_rng(seed)
    return [r.integers(0, 255, (int(r.integers(40, 120)), int(r.integers(40, 120)), 3), dtype=np.uint8) for _ in range(n)]


def _prompts(image, B=3, seed=0):
    r = np.random.default_rng(seed)
    h, w = image.shape[:2]
    points = r.uniform(0, min(h, w), (B, 2, 2))
    labels = np.array([[1, 0], [1, 1], [0, 1]])[:B]
    x0 = r.uniform(0, w / 2, (B, 1)), r.uniform(0, h / 2, (B, 1))
    boxes = np.concatenate([x0[0], x0[1], x0[0] + r.uniform(5, w / 2, (B, 1)), x0[1] + r.uniform(5, h / 2, (B, 1))], 1)
    return points, labels, boxes


@pytest.fixture(scope="module")
def family(request):
    """(name, model, single-device predictor with 3 images embedded and the first one set, the embeddings)."""
    name = request.param
    model = random_model(FAMILIES[name], seed=len(name))
    single = SamPredictor(model, mesh=None)
    embedded = single.embed_images(_images(3, seed=1))
    single.set_image_embedding(embedded, 0)
    return name, model, single, embedded


def _predict_kwargs(model):
    return dict(multimask_output=True, return_logits=True, hq_token_only=model.config.decoder == "hq")


@pytest.mark.parametrize("family", FAMILIES, indirect=True)
def test_batched_prompts_equal_each_alone(family):
    name, model, single, embedded = family
    image = _images(3, seed=1)[0]
    points, labels, boxes = _prompts(image)
    batch = single.predict_batch(points, labels, boxes, **_predict_kwargs(model))
    for i in range(3):
        alone = single.predict(points[i], labels[i], boxes[i], **_predict_kwargs(model))
        for b, a, what in zip(batch, alone, ("masks", "iou", "low_res")):
            assert_close(b[i], a, tol=1e-5, what=f"{name} prompt {i} {what}")
    M = 1 if model.config.decoder == "hq" else 3
    assert batch[2].shape == (3, M, *model.prompt_encoder.mask_input_size)


@pytest.mark.parametrize("family", FAMILIES, indirect=True)
def test_sharded_embedding_equals_one_device(family):
    """3 images of different sizes over the 8 devices (padded to 8)."""
    name, model, single, embedded = family
    sharded = SamPredictor(model)
    assert sharded.mesh is not None and sharded.mesh.size == 8
    spread = sharded.embed_images(_images(3, seed=1))
    assert len(spread.features.sharding.device_set) > 1
    assert_close(spread.features, embedded.features, tol=1e-5, what=f"{name} sharded embeddings")
    if model.config.decoder == "hq":
        assert_close(spread.hq_features, embedded.hq_features, tol=1e-5, what=f"{name} sharded HQ features")
    assert spread.input_sizes == embedded.input_sizes


@pytest.mark.parametrize("family", FAMILIES, indirect=True)
def test_export_round_trip(family):
    """image -> low-res logits and IoU in one jax.export program (weights as inputs), serialized
    and deserialized, equals the predictor on the same image and prompts."""
    name, model, single, embedded = family
    image = _images(3, seed=1)[0]
    points, labels, boxes = _prompts(image, seed=3)
    cfg, hq = model.config, model.config.decoder == "hq"
    graphdef, params = nnx.split(model)
    leaves, treedef = jax.tree.flatten(params)

    def embed_and_decode(leaves, images, input_sizes, coords, point_labels, box, has_box):
        p = jax.tree.unflatten(treedef, leaves)
        features = image_features(graphdef, p, images, input_sizes)
        return decode_prompts(graphdef, p, features.embeddings, Prompts(coords, point_labels, box, has_box), True,
                              features.hq_features, hq_token_only=hq)

    resized = single.transform.apply_image(image)
    batch = np.zeros((1, cfg.image_size, cfg.image_size, 3), np.uint8)
    batch[0, : resized.shape[0], : resized.shape[1]] = resized
    prompts = pad_prompts(single.transform.apply_coords(points, image.shape[:2]), labels,
                          single.transform.apply_boxes(boxes, image.shape[:2]), None, 3, 0)[:4]
    args = (leaves, batch, np.array([resized.shape[:2]], np.int32), *prompts)
    with jax.default_matmul_precision("highest"):
        exported = jax.export.export(jax.jit(embed_and_decode))(*jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), args))
    restored = jax.export.deserialize(exported.serialize())
    low_res, iou = restored.call(*args)
    ref = single.predict_batch(points, labels, boxes, **_predict_kwargs(model))
    assert_close(low_res[:3], ref[2], tol=1e-5, what=f"{name} exported low-res logits")
    assert_close(iou[:3], ref[1], tol=1e-5, what=f"{name} exported IoU")
    assert iou.shape == (4, 1 if hq else 3)  # bucket(3) prompts
