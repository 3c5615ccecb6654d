"""`load(..., image_size=N)` for the SAM family, against the family's own PyTorch model at N:

    MobileSAM (small TinyViT, its file says 1024)   at 320: nothing resampled (the attention biases are
                                                    per window), mobile_sam's predictor on the model
                                                    built at 320 (its 64x64 view lifted: `forward_any_size`)
    HQ-SAM (HQ_SMALL, 160)                          at 224: the ViT's tables resampled as the official
                                                    model's (`official_at_size`), sam-hq's predictor

and the sizes a TinyViT refuses (not a multiple of its stride: 16 for MobileSAM, 4 for LiteMedSAM).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.reference.compare import assert_close, assert_masks_match
from tests.reference.families import HQ_SMALL, at_size, build_hq_official, build_tiny_official
from tests.reference.official import make_case, official_at_size
from sam_jax import SamPredictor, get_config, load
from sam_jax.convert.image_size import with_image_size


def _image(h, w, seed=0):
    r = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([np.sin(xx / 7.0), np.cos(yy / 5.0), np.sin((xx + yy) / 11.0)], -1) * 100 + 128
    return np.clip(base + r.normal(0, 20, (h, w, 3)), 0, 255).astype(np.uint8)


def _compare(ours, ref, what):
    assert_close(ours[2], ref[2], tol=1e-4, what=f"{what}: low-res logits")
    assert_close(ours[1], ref[1], tol=1e-4, what=f"{what}: IoU predictions")
    assert_masks_match(ours[0] > 0, ref[0], what=f"{what}: masks")


def test_mobile_sam_at_320(tmp_path):
    pytest.importorskip("mobile_sam", reason="mobilesam-mirror is not installed")
    from mobile_sam import SamPredictor as Official

    official = build_tiny_official("mobile_sam", 256)
    torch.save(official.state_dict(), tmp_path / "mobile_sam.pt")
    ref_model = at_size(official, lambda n: build_tiny_official("mobile_sam", n), 320)
    model = load(tmp_path / "mobile_sam.pt", image_size=320)
    assert (model.config.image_size, model.config.image_embedding_size) == (320, 20)
    image = _image(150, 211)
    ours, ref = SamPredictor(model, mesh=None), Official(ref_model)
    ours.set_image(image)
    ref.set_image(image)
    assert ours.get_image_embedding().shape == (1, 256, 20, 20)  # the grid the prompt encoder is built for
    assert_close(ours.get_image_embedding(), ref.get_image_embedding().numpy(), tol=1e-4, what="embedding at 320")
    points = dict(point_coords=np.array([[40.0, 30.0], [150.0, 100.0]]), point_labels=np.array([1, 0]))
    for kw in (points, dict(points, box=np.array([10.0, 15.0, 170.0, 120.0]))):
        _compare(ours.predict(**kw, return_logits=True), ref.predict(**kw, return_logits=True), f"vit_t small {sorted(kw)}")


def test_hq_sam_at_224(tmp_path):
    pytest.importorskip("segment_anything_hq", reason="segment-anything-hq is not installed")
    from segment_anything_hq import SamPredictor as Official

    case = make_case("hq_small", tmp_path, HQ_SMALL, build_hq_official(HQ_SMALL))
    ref_model, cfg = official_at_size(case.official, HQ_SMALL, 224, build=build_hq_official)
    model = load(case.model_dir, image_size=224)
    assert model.config == cfg
    image = _image(120, 90, seed=1)
    ours, ref = SamPredictor(model, mesh=None), Official(ref_model)
    ours.set_image(image)
    ref.set_image(image)
    assert_close(ours.get_image_embedding(), ref.get_image_embedding().numpy(), tol=1e-4, what="HQ embedding at 224")
    kw = dict(point_coords=np.array([[30.0, 40.0], [70.0, 20.0]]), point_labels=np.array([1, 0]), box=np.array([5, 10, 80, 100]))
    for multimask, hq_only in ((True, False), (False, True)):
        args = dict(kw, multimask_output=multimask, hq_token_only=hq_only, return_logits=True)
        _compare(ours.predict(**args), ref.predict(**args), f"HQ at 224 multimask={multimask} hq_only={hq_only}")


def test_tiny_vit_sizes_refused():
    """A TinyViT's input must be a multiple of its stride: then each stride-2 convolution halves the
    grid exactly and the last grid is the prompt encoder's (image_size / stride)."""
    for name, stride in (("vit_t", 16), ("lite_medsam", 4)):
        cfg = get_config(name)
        with pytest.raises(ValueError, match=f"multiple of the TinyViT's stride {stride}, got {3 * stride + stride // 2}"):
            with_image_size(cfg, {}, 3 * stride + stride // 2)
        params = {"image_encoder": np.ones(1)}
        resized, same = with_image_size(cfg, params, 40 * stride)
        assert resized.image_embedding_size == 40 and same is params  # nothing to resample
