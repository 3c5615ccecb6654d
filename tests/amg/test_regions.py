"""Small-region removal against the official function (which calls OpenCV) on random masks."""

import numpy as np
import pytest

from sam_jax.masks import connected_components, remove_small_regions

cv2 = pytest.importorskip("cv2", reason="opencv-python-headless (test extra) is the reference for the official semantics")
from segment_anything.utils.amg import remove_small_regions as official_remove_small_regions  # noqa: E402


def _random_masks(seed: int, count: int):
    rng = np.random.default_rng(seed)
    for _ in range(count):
        h, w = rng.integers(1, 40, size=2)
        density = rng.uniform(0.05, 0.95)
        mask = rng.random((h, w)) < density
        if rng.random() < 0.5:  # blobs, so regions of many sizes appear
            mask = np.kron(mask[: (h + 3) // 4, : (w + 3) // 4], np.ones((4, 4), bool))[:h, :w]
        yield mask


def test_components_match_opencv_labels():
    for mask in _random_masks(0, 300):
        n, cv_labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), 8)
        labels, sizes = connected_components(mask)
        np.testing.assert_array_equal(labels, cv_labels)
        np.testing.assert_array_equal(sizes, stats[:, -1])


@pytest.mark.parametrize("mode", ["holes", "islands"])
@pytest.mark.parametrize("thresh", [1, 3, 10, 50, 10_000])
def test_remove_small_regions_matches_official(mode, thresh):
    for mask in _random_masks(thresh, 150):
        ours, changed = remove_small_regions(mask, thresh, mode)
        ref, ref_changed = official_remove_small_regions(mask, thresh, mode)
        assert changed == ref_changed
        np.testing.assert_array_equal(ours, ref)


def test_all_islands_small_keeps_largest_first_on_ties():
    mask = np.zeros((5, 9), bool)
    mask[0, 0:2] = mask[4, 6:8] = True  # two islands of 2 px: the first in raster order is kept
    mask[2, 4] = True
    out, changed = remove_small_regions(mask, 100, "islands")
    assert changed and out.sum() == 2 and out[0, 0] and out[0, 1]


def test_diagonal_pixels_are_one_region():
    mask = np.eye(6, dtype=bool)
    _, sizes = connected_components(mask)
    assert sizes.tolist() == [30, 6]
    with pytest.raises(ValueError, match="mode"):
        remove_small_regions(mask, 3, "blobs")
