"""Automatic masks with the decoder in bfloat16 (`decoder_dtype`) or a bfloat16 model: float32
records, and masks close to float32's (benchmarks/amg_precision.py measures how close)."""

from __future__ import annotations

import numpy as np

import sam_jax
from sam_jax import assets
from sam_jax.automatic_mask_generator import SamAutomaticMaskGenerator
from sam_jax.modeling import with_numerics
from sam_jax.train.synthetic_shapes import make_example


def _iou(a, b):
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else np.logical_and(a, b).sum() / union


def test_bfloat16_decoder_masks_are_near_float32():
    model = sam_jax.load(assets.SHAPES_TINY)
    image = np.kron(make_example(seed=7, size=64)[0], np.ones((3, 3, 1), np.uint8))
    kw = dict(points_per_side=8, pred_iou_thresh=0.0, stability_score_thresh=0.0, box_nms_thresh=1.0)
    f32 = SamAutomaticMaskGenerator(model, **kw).generate(image)
    bf16 = SamAutomaticMaskGenerator(model, decoder_dtype="bfloat16", **kw).generate(image)
    whole_bf16 = SamAutomaticMaskGenerator(with_numerics(model, dtype="bfloat16"), **kw).generate(image)
    assert len(f32) == len(bf16) == len(whole_bf16) == 192
    for records in (bf16, whole_bf16):
        assert {k: type(v) for k, v in records[0].items()} == {k: type(v) for k, v in f32[0].items()}
        # Each float32 mask against the masks of its point in bfloat16: nearly all have a twin.
        ious = [max(_iou(r["segmentation"], s["segmentation"]) for s in records if s["point_coords"] == r["point_coords"])
                for r in f32]
        assert np.mean(np.array(ious) >= 0.9) >= 0.95 and np.mean(ious) >= 0.97, np.mean(ious)
    # The option took effect: bfloat16 IoU predictions (the encoder's float32 embedding is shared,
    # so the decoder alone makes them differ).
    assert sorted(r["predicted_iou"] for r in f32) != sorted(r["predicted_iou"] for r in bf16)
