"""RLE round trips against pycocotools and the official `utils/amg.py` functions."""

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils
from segment_anything.utils import amg as official

from sam_jax.io import rle
from sam_jax.utils import amg


def _masks(seed: int):
    rng = np.random.default_rng(seed)
    for i in range(60):
        h, w = rng.integers(1, 30, size=2)
        m = rng.random((4, h, w)) < rng.uniform(0.02, 0.98)
        m[0] = False  # empty
        m[1] = True  # full
        if i % 3 == 0:
            m[2] = np.kron(m[2][: (h + 2) // 3, : (w + 2) // 3], np.ones((3, 3), bool))[:h, :w]
        yield m


@pytest.mark.parametrize("seed", [0, 1])
def test_mask_to_rle_equals_official_and_round_trips(seed):
    for masks in _masks(seed):
        ours = rle.mask_to_rle(masks)
        assert ours == official.mask_to_rle_pytorch(torch.from_numpy(masks))
        for m, r in zip(masks, ours):
            np.testing.assert_array_equal(rle.rle_to_mask(r), m)
            assert rle.area_from_rle(r) == m.sum()


@pytest.mark.parametrize("seed", [2, 3])
def test_coco_rle_equals_pycocotools(seed):
    for masks in _masks(seed):
        for m, r in zip(masks, rle.mask_to_rle(masks)):
            coco = rle.coco_encode_rle(r)
            ref = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
            assert coco == {"size": [int(s) for s in ref["size"]], "counts": ref["counts"].decode()}
            assert coco == official.coco_encode_rle(r)
            np.testing.assert_array_equal(rle.coco_decode_rle(coco), m)
            assert mask_utils.area(ref) == rle.area_from_rle(r)


def test_no_masks():
    assert rle.mask_to_rle(np.zeros((0, 5, 7), bool)) == []


def test_bad_rle_is_refused():
    with pytest.raises(ValueError, match="sum"):
        rle.rle_to_mask({"size": [2, 2], "counts": [1, 2]})
    with pytest.raises(ValueError, match=r"\(B, H, W\)"):
        rle.mask_to_rle(np.zeros((3, 3), bool))


def test_box_xyxy_to_xywh():
    assert amg.box_xyxy_to_xywh([1, 2, 5, 9]) == official.box_xyxy_to_xywh(torch.tensor([1, 2, 5, 9])).tolist()
