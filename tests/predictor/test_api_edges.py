"""API edges: clear errors for generator settings that cannot work and coordinates float32
cannot hold, and the official predictor's behaviour for point labels 2 and 3."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.reference.compare import assert_close, assert_masks_match
from sam_jax.automatic_mask_generator import SamAutomaticMaskGenerator
from sam_jax.predictor import SamPredictor


def _image(h=90, w=130, seed=0):
    r = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([np.sin(xx / 7.0), np.cos(yy / 5.0), np.sin((xx + yy) / 11.0)], -1) * 100 + 128
    return np.clip(base + r.normal(0, 20, (h, w, 3)), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("box", [None, np.array([10.0, 15, 100, 70])], ids=["points", "points+box"])
def test_point_labels_2_and_3_as_the_official_predictor(tiny, box):
    """The official predictor accepts labels 2 and 3 (its _embed_points adds no label embedding
    for them: they are not box corners there, unlike in its ONNX model)."""
    from segment_anything import SamPredictor as OfficialPredictor

    image = _image()
    ours, ref = SamPredictor(tiny.model), OfficialPredictor(tiny.official)
    ours.set_image(image)
    ref.set_image(image)
    coords = np.array([[30.0, 40], [90, 20], [60, 70], [110, 80]])
    labels = np.array([1, 2, 3, 0])
    for multimask in (True, False):
        m, iou, low = ours.predict(coords, labels, box, multimask_output=multimask, return_logits=True)
        with torch.no_grad():
            rm, riou, rlow = ref.predict(coords, labels, box, multimask_output=multimask, return_logits=True)
        assert_close(low, rlow, what="low-res logits")
        assert_close(iou, riou, what="iou predictions")
        assert_masks_match(m > 0, rm, what="masks")
    # Not the same as leaving them out, nor as a foreground point: they do count.
    alone = ours.predict(coords[[0, 3]], labels[[0, 3]], box, return_logits=True)[2]
    assert np.abs(alone - ours.predict(coords, labels, box, return_logits=True)[2]).max() > 1e-3


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"point_coords": np.array([[1e39, 5.0]]), "point_labels": np.array([1])}, r"point_coords contains 1e\+39, beyond float32"),
    ({"point_coords": np.array([[np.nan, 5.0]]), "point_labels": np.array([1])}, "point_coords contains NaN"),
    ({"box": np.array([0.0, 0, 1e39, 1e39])}, r"box contains 1e\+39"),
    # Finite in float32 as given, infinite once scaled from the 13-pixel image to the model input.
    ({"point_coords": np.array([[3e38, 5.0]]), "point_labels": np.array([1])}, r"scaled to the model input"),
    ({"point_coords": np.array([[5.0, 5.0]]), "point_labels": np.array([4])}, "point_labels must be"),
    # Finite, but saturating: NaN scores and empty masks, silently, before it was refused.
    ({"box": np.array([1.0, 1, 8, 8]), "mask_input": np.full((1, 64, 64), 3e38, np.float32)},
     r"mask_input holds logits up to 3e\+38 in magnitude, beyond the 10000"),
    ({"box": np.array([1.0, 1, 8, 8]), "mask_input": np.full((1, 64, 64), -2e4, np.float32)}, "beyond the 10000"),
])
def test_coordinates_float32_cannot_hold_are_refused(tiny, kwargs, match):
    p = SamPredictor(tiny.model)
    p.set_image(_image(9, 13))
    with pytest.raises(ValueError, match=match):
        p.predict(**kwargs)


def test_generator_settings_that_cannot_work(tiny):
    with pytest.raises(ValueError, match="points_per_side must be an integer >= 1, got 0"):
        SamAutomaticMaskGenerator(tiny.model, points_per_side=0)  # was a ZeroDivisionError
    with pytest.raises(ValueError, match="crop_n_points_downscale_factor must be an integer >= 1"):
        SamAutomaticMaskGenerator(tiny.model, crop_n_layers=1, crop_n_points_downscale_factor=0)
    with pytest.raises(ValueError, match=r"crop layer 2 would have no points: points_per_side 4 / crop_n_points_downscale_factor 3\*\*2"):
        SamAutomaticMaskGenerator(tiny.model, points_per_side=4, crop_n_layers=2, crop_n_points_downscale_factor=3)
    with pytest.raises(ValueError, match="point_grids contain NaN"):
        SamAutomaticMaskGenerator(tiny.model, points_per_side=None, point_grids=[np.array([[0.5, np.nan]])])
    # Crops emptied by depth: was "image is empty: shape (0, 5, 3)" from somewhere inside.
    gen = SamAutomaticMaskGenerator(tiny.model, points_per_side=2, crop_n_layers=4)
    with pytest.raises(ValueError, match=r"crop_n_layers=4 is too deep for a 60x40 image .* use crop_n_layers <= [0-3]$"):
        gen.generate(np.zeros((40, 60, 3), np.uint8))
    # An absurd depth is refused as fast: for its work (`amg_limits`), and with allow_large for the
    # image (4^30 crops are never listed).
    with pytest.raises(ValueError, match="crop_n_layers=30 means 1,537,228,672,809,129,301 crops"):
        SamAutomaticMaskGenerator(tiny.model, points_per_side=2, crop_n_layers=30)
    with pytest.raises(ValueError, match="too deep"):
        SamAutomaticMaskGenerator(tiny.model, points_per_side=2, crop_n_layers=30, allow_large=True).generate(np.zeros((40, 60, 3), np.uint8))
