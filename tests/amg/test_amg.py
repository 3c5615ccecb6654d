"""SamAutomaticMaskGenerator against the official generator on the same converted weights."""

from __future__ import annotations

import numpy as np
import pytest

from sam_jax.automatic_mask_generator import SamAutomaticMaskGenerator
from sam_jax.utils import amg


def _scene(h=150, w=211, seed=0):
    """Flat shapes on a gradient, plus mild noise: regions a mask generator can find."""
    r = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([xx * 255 / w, yy * 255 / h, np.full((h, w), 90.0)], -1)
    img[(yy - 50) ** 2 + (xx - 60) ** 2 < 30**2] = (230, 40, 40)
    img[90:140, 120:200] = (30, 200, 60)
    img[20:60, 140:190] = (250, 250, 250)
    return np.clip(img + r.normal(0, 4, img.shape), 0, 255).astype(np.uint8)


def _iou(a, b):
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else np.logical_and(a, b).sum() / union


def _decode(seg):
    return amg.rle_to_mask(seg) if isinstance(seg, dict) and isinstance(seg["counts"], list) else (
        amg.coco_decode_rle(seg) if isinstance(seg, dict) else seg
    )


def _types(record):
    return {k: (type(v), [type(x) for x in v] if isinstance(v, list) else None) for k, v in record.items() if k != "segmentation"}


def _compare(ours, ref):
    assert len(ours) == len(ref) > 0, (len(ours), len(ref))
    for i, (o, r) in enumerate(zip(ours, ref)):
        assert _types(o) == _types(r)  # plain Python numbers, so records serialise to JSON as the official ones
        assert _iou(_decode(o["segmentation"]), _decode(r["segmentation"])) >= 0.99, i
        assert o["crop_box"] == r["crop_box"]
        np.testing.assert_allclose(o["point_coords"], r["point_coords"], atol=1e-9)
        np.testing.assert_allclose(o["predicted_iou"], r["predicted_iou"], atol=1e-4)
        np.testing.assert_allclose(o["stability_score"], r["stability_score"], atol=2e-3)
        assert np.abs(np.subtract(o["bbox"], r["bbox"])).max() <= 1
        assert abs(o["area"] - r["area"]) <= 0.01 * max(r["area"], 100)


BASE = dict(points_per_side=8, pred_iou_thresh=0.0, stability_score_thresh=0.0)
SETTINGS = {
    "all masks": dict(BASE, box_nms_thresh=1.0),
    "nms": dict(BASE, box_nms_thresh=0.7),
    # Random weights give logits within +-0.2, so the offset is scaled down for the thresholds to bite.
    "thresholds": dict(points_per_side=8, pred_iou_thresh=0.05, stability_score_thresh=0.55, stability_score_offset=0.01, box_nms_thresh=1.0),
    "crops": dict(BASE, box_nms_thresh=0.7, crop_n_layers=1, crop_n_points_downscale_factor=2),
    "crops no nms": dict(BASE, box_nms_thresh=1.0, crop_n_layers=1, crop_nms_thresh=1.0, points_per_batch=16),
    "small regions": dict(BASE, box_nms_thresh=0.7, min_mask_region_area=200),
    "uncompressed_rle": dict(BASE, output_mode="uncompressed_rle"),
    "coco_rle": dict(BASE, output_mode="coco_rle", points_per_batch=10),
}


@pytest.mark.parametrize("name", list(SETTINGS))
def test_generate_matches_official(tiny, name):
    from segment_anything import SamAutomaticMaskGenerator as Official

    image = _scene()
    kw = SETTINGS[name]
    ours = SamAutomaticMaskGenerator(tiny.model, **kw).generate(image)
    ref = Official(tiny.official, **kw).generate(image)
    _compare(ours, ref)
    if kw.get("output_mode") == "uncompressed_rle":
        assert ours[0]["segmentation"]["size"] == list(image.shape[:2])
    if kw.get("output_mode") == "coco_rle":
        assert isinstance(ours[0]["segmentation"]["counts"], str)


def test_explicit_point_grids(tiny):
    from segment_anything import SamAutomaticMaskGenerator as Official

    grids = [np.random.default_rng(3).uniform(0, 1, (37, 2))]
    kw = dict(points_per_side=None, point_grids=grids, pred_iou_thresh=0.0, stability_score_thresh=0.0)
    _compare(SamAutomaticMaskGenerator(tiny.model, **kw).generate(_scene()), Official(tiny.official, **kw).generate(_scene()))


def test_bad_arguments(tiny):
    with pytest.raises(ValueError, match="exactly one"):
        SamAutomaticMaskGenerator(tiny.model, points_per_side=None)
    with pytest.raises(ValueError, match="output_mode"):
        SamAutomaticMaskGenerator(tiny.model, output_mode="png")
    with pytest.raises(ValueError, match="uint8"):
        SamAutomaticMaskGenerator(tiny.model, points_per_side=4).generate(np.zeros((10, 10, 3), bool))


def test_few_compilations_across_photo_sizes(tiny):
    """Five photo sizes (two orientations, two canvases): the crop pipeline compiles once per
    canvas, and everything else (gathers, rendering, NMS) per count bucket, not per photo."""
    from sam_jax.runtime.memory import CompileCounter

    gen = SamAutomaticMaskGenerator(tiny.model, **BASE)
    gen.generate(_scene(150, 211))
    with CompileCounter() as compiles:
        for h, w in [(140, 200), (211, 150), (97, 131), (250, 240), (300, 200)]:
            records = gen.generate(_scene(h, w, seed=h))
            assert records and records[0]["segmentation"].shape == (h, w)
    assert compiles.count("jit(process_crop)") == 1  # (300, 200) is on the next canvas
    assert compiles.count() <= 6, compiles.count()


def test_accelerator_plan_gives_the_same_records(tiny, monkeypatch):
    """Large statistics chunks and all five crops in one group (a GPU/TPU plan) on CPU: the same
    records, bit for bit, as the CPU plan."""
    from sam_jax.functional import automatic_mask_generator as dev

    kw = dict(SETTINGS["crops"], points_per_batch=16)
    image = _scene()
    cpu = SamAutomaticMaskGenerator(tiny.model, **kw).generate(image)
    monkeypatch.setitem(dev.PLANS, "cpu", dev.BackendPlan(stats_bytes=48 * 256 * 256 * 12, crop_group=5))
    assert dev.stats_chunk(dev.backend_plan("cpu"), 48, (256, 256)) == 48
    accelerated = SamAutomaticMaskGenerator(tiny.model, **kw).generate(image)
    assert len(cpu) == len(accelerated) > 0
    for a, b in zip(cpu, accelerated):
        np.testing.assert_array_equal(a.pop("segmentation"), b.pop("segmentation"))
        assert a == b


@pytest.mark.parametrize("shape", [(1, 30, 40), (3, 17, 9)])
def test_device_utils_match_official(shape):
    import torch
    from segment_anything.utils import amg as official

    r = np.random.default_rng(0)
    logits = r.normal(size=shape).astype(np.float32) * 3
    masks = logits > 0
    masks[0] = False  # an empty mask
    ref = official.batched_mask_to_box(torch.from_numpy(masks)).numpy()
    np.testing.assert_array_equal(amg.batched_mask_to_box(masks), ref)
    np.testing.assert_array_equal(amg.mask_boxes(masks), ref)  # the host version
    np.testing.assert_allclose(
        amg.calculate_stability_score(logits, 0.0, 1.0),
        official.calculate_stability_score(torch.from_numpy(logits), 0.0, 1.0).numpy(), rtol=1e-6,
    )


def test_nms_matches_torchvision():
    import torch
    import torchvision

    r = np.random.default_rng(1)
    xy = r.uniform(0, 100, (300, 2))
    boxes = np.concatenate([xy, xy + r.uniform(1, 60, (300, 2))], 1).astype(np.float32)
    boxes[10] = boxes[11]  # an exact duplicate
    scores = r.choice([0.1, 0.5, 0.9], 300).astype(np.float32)  # many ties
    valid = np.ones(300, bool)
    valid[::7] = False
    for thresh in (0.3, 0.7, 1.0):
        order, keep = amg.nms(boxes, scores, valid, thresh)
        ours = np.asarray(order)[np.asarray(keep)]
        idx = np.nonzero(valid)[0]
        ref = idx[torchvision.ops.nms(torch.from_numpy(boxes[idx]), torch.from_numpy(scores[idx]), thresh).numpy()]
        np.testing.assert_array_equal(ours, ref)


def test_grids_and_crops_match_official():
    from segment_anything.utils import amg as official

    for args in [(32, 0, 1), (16, 2, 2), (7, 1, 1)]:
        for a, b in zip(amg.build_all_layer_point_grids(*args), official.build_all_layer_point_grids(*args)):
            np.testing.assert_array_equal(a, b)
    for size, layers, ratio in [((1200, 1800), 2, 512 / 1500), ((534, 800), 1, 0.2), ((97, 131), 3, 0.5)]:
        assert amg.generate_crop_boxes(size, layers, ratio) == official.generate_crop_boxes(size, layers, ratio)


@pytest.mark.parametrize("n_valid", [0, 1, 40, 500])
def test_nms_on_a_large_buffer_matches_torchvision(n_valid):
    """A crop's buffer (3,072 slots) with few valid entries: the loop stops at the last survivor
    and keeps exactly torchvision's set, in its order."""
    import torch
    import torchvision

    r = np.random.default_rng(n_valid)
    n = 3072
    xy = r.uniform(0, 200, (n, 2))
    boxes = np.round(np.concatenate([xy, xy + r.uniform(1, 120, (n, 2))], 1)).astype(np.float32)
    scores = r.uniform(0, 1, n).astype(np.float32)
    valid = np.zeros(n, bool)
    valid[r.choice(n, n_valid, replace=False)] = True
    order, keep = amg.nms(boxes, scores, valid, 0.7)
    idx = np.nonzero(valid)[0]
    ref = idx[torchvision.ops.nms(torch.from_numpy(boxes[idx]), torch.from_numpy(scores[idx]), 0.7).numpy()]
    np.testing.assert_array_equal(np.asarray(order)[np.asarray(keep)], ref)
