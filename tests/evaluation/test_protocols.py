"""The protocols' rules against brute-force statements of their definitions: the farthest point
(the image's edges bound a region, ties in row-major order, clicked pixels excluded), the next
click (the deeper error wins, a tie goes negative, nothing left: no click), the selections, the
area ranges, the box; and the annotation reader's record of what it read and skipped."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest

from sam_jax.evaluation import AREA_RANGES, Click, Protocol, area_range, box_prompt, farthest_point, next_click
from sam_jax.evaluation.protocols import choose
from sam_jax.io.coco import read_annotations


def brute_depth(region: np.ndarray) -> np.ndarray:
    """Per pixel of the region, the Euclidean distance to the nearest pixel that is not in it,
    the pixels just beyond the image counting as not in it; 0 outside the region."""
    h, w = region.shape
    outside = [(y, x) for y in range(-1, h + 1) for x in range(-1, w + 1) if not (0 <= y < h and 0 <= x < w) or not region[y, x]]
    out = np.zeros((h, w))
    for y, x in zip(*np.nonzero(region)):
        out[y, x] = min(np.hypot(y - oy, x - ox) for oy, ox in outside)
    return out


def brute_farthest(region, exclude=None):
    depth = brute_depth(region)
    if exclude is not None:
        depth[exclude] = 0
    best = depth.max()
    if best == 0:
        return 0, 0, 0.0
    for y, x in itertools.product(range(region.shape[0]), range(region.shape[1])):  # row-major
        if depth[y, x] == best:
            return x, y, best


@pytest.mark.parametrize("seed", range(12))
def test_farthest_point_is_the_deepest_pixel_first_in_row_major_order(seed):
    r = np.random.default_rng(seed)
    h, w = r.integers(3, 14, 2)
    region = r.random((h, w)) < r.uniform(0.3, 0.95)
    exclude = r.random((h, w)) < 0.1 if seed % 2 else None
    x, y, d = farthest_point(region, exclude)
    bx, by, bd = brute_farthest(region, exclude)
    assert (x, y) == (bx, by) and d == pytest.approx(bd)


def test_the_image_edges_bound_a_region_and_ties_go_to_the_top_left():
    full = np.ones((5, 7), bool)
    assert farthest_point(full) == (2, 2, 3.0)  # 3 from the top and bottom edges: the first of x = 2, 3, 4
    bar = np.zeros((6, 6), bool)
    bar[1:5, 1:5] = True  # depth 2 on the four centre pixels: the top-left one wins
    assert farthest_point(bar)[:2] == (2, 2)
    assert farthest_point(np.zeros((4, 4), bool)) == (0, 0, 0.0)
    assert farthest_point(bar, exclude=bar) == (0, 0, 0.0)


def test_next_click_takes_the_deeper_error_and_a_tie_goes_negative():
    gt = np.zeros((20, 20), bool)
    gt[2:12, 2:12] = True
    pred = np.zeros_like(gt)
    assert next_click(gt, pred) == Click(6, 6, 1)  # nothing predicted: the centre of the object
    pred[2:12, 2:12] = True
    assert next_click(gt, pred) is None  # perfect
    pred[14:20, 14:20] = True  # a false region at the image's corner: depth 3 at x, y in 16..17
    assert next_click(gt, pred) == Click(16, 16, 0)
    pred[2:12, 2:7] = False  # a missed region of depth 3 too: tie -> negative
    assert next_click(gt, pred).label == 0
    pred[2:12, 2:9] = False  # missed region now 7 wide: depth 4 (x = 5, y = 5..8) > 3 -> positive
    assert next_click(gt, pred) == Click(5, 5, 1)
    clicked = np.zeros_like(gt)
    clicked[5, 5] = True  # that pixel was clicked already: the next of depth 4
    assert next_click(gt, pred, clicked) == Click(5, 6, 1)
    only = (gt & ~pred) | (pred & ~gt)
    assert next_click(gt, pred, only) is None  # every error pixel clicked: no click left


def test_selection_area_ranges_and_box():
    predicted = np.array([[0.2, 0.9, 0.9], [0.5, 0.1, 0.4]])
    true = np.array([[0.7, 0.1, 0.3], [0.2, 0.2, 0.8]])
    assert choose("score", predicted, true).tolist() == [1, 0]  # ties: the lower index
    assert choose("oracle", predicted, true).tolist() == [0, 2]
    assert choose("single", predicted[:, :1], true[:, :1]).tolist() == [0, 0]
    areas = (0, 1023.9, 1024, 9215.5, 9216, 1e9)
    assert [area_range(a) for a in areas] == ["small", "small", "medium", "medium", "large", "large"]
    assert [name for name, _, _ in AREA_RANGES] == ["small", "medium", "large"]
    np.testing.assert_array_equal(box_prompt([10, 20.5, 30, 40]), [10, 20.5, 40, 60.5])


def test_protocol_checks():
    assert Protocol.make("clicks") == Protocol("clicks", "score", 3)
    assert Protocol.make("box", "oracle") == Protocol("box", "oracle", 1)
    for bad in (dict(prompt="boxes"), dict(select="best"), dict(prompt="point", clicks=3), dict(prompt="clicks", clicks=0)):
        with pytest.raises(ValueError):
            Protocol.make(**bad)


def test_reader_keeps_ids_areas_boxes_and_counts_what_it_skips(eval_set):
    data = read_annotations(eval_set)
    assert [e.id for e in data.images] == [7, 8]  # image 9 has only a crowd region
    assert data.crowd == 2 and len(data.skipped) == 1 and "annotation 902" in data.skipped[0]
    polygon = data.images[1].annotations[-1]
    assert polygon.id == 77 and polygon.area == 8537.5 and polygon.bbox == (30.0, 40.0, 120.5, 150.0)
    masks = data.masks(1)
    assert masks.shape == (4, 320, 240) and masks.dtype == bool and masks.all(axis=0).sum() == 0
    np.testing.assert_array_equal(data.masks(1, [3]), masks[3:])
    # Without area and bbox in the file: the mask's pixel count and tight box.
    raw = json.loads(eval_set.read_text())
    for a in raw["annotations"]:
        a.pop("area"), a.pop("bbox")
    bare = eval_set.with_name("bare.json")
    bare.write_text(json.dumps(raw))
    first = read_annotations(bare).images[0].annotations[0]
    m = data.masks(0)[0]
    ys, xs = np.nonzero(m)
    assert first.area == m.sum() and first.bbox == (xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1)
