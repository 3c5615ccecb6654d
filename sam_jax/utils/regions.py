"""Small-region removal for `min_mask_region_area` (host side), without OpenCV.

The official code calls `cv2.connectedComponentsWithStats(mask, 8)`; `scipy.ndimage.label` with a
3x3 structure gives the same 8-connected components. OpenCV's 8-connected labelling scans 2x2
blocks, so its labels follow the raster order of each component's first *block*; we relabel to
that order so that "keep the largest" breaks ties the same way. SciPy is already a dependency of jax.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


def connected_components(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """8-connected components of a (H, W) bool mask.

    Returns `(labels, sizes)`: (H, W) int32 labels, 0 for background and 1..n in raster order of
    each component's first pixel, and (n + 1,) pixel counts with the background count at index 0.
    """
    labels, n = ndimage.label(np.asarray(mask, dtype=bool), structure=_EIGHT_CONNECTED)
    labels = _relabel_in_block_order(labels, n)
    return labels, np.bincount(labels.ravel(), minlength=n + 1)


def _relabel_in_block_order(labels: np.ndarray, n: int) -> np.ndarray:
    """Renumber labels 1..n by the raster index of the first 2x2 block each component touches."""
    if n < 2:
        return labels.astype(np.int32)
    h, w = labels.shape
    rows, cols = np.nonzero(labels)
    block = (rows // 2) * ((w + 1) // 2) + cols // 2
    first = np.full(n + 1, np.iinfo(np.int64).max)
    np.minimum.at(first, labels[rows, cols], block)
    new = np.empty(n + 1, dtype=np.int32)
    new[0] = 0
    new[1 + np.argsort(first[1:], kind="stable")] = np.arange(1, n + 1, dtype=np.int32)
    return new[labels]


def remove_small_regions(mask: np.ndarray, area_thresh: float, mode: str) -> tuple[np.ndarray, bool]:
    """Fill holes (`mode="holes"`) or drop islands (`mode="islands"`) smaller than `area_thresh` pixels.

    Same semantics as the official `remove_small_regions`: components are 8-connected; in islands
    mode, if every island is small the largest one is kept. Returns `(mask, changed)`.
    """
    if mode not in ("holes", "islands"):
        raise ValueError(f"mode must be 'holes' or 'islands', got {mode!r}")
    mask = np.asarray(mask, dtype=bool)
    correct_holes = mode == "holes"
    labels, sizes = connected_components(mask ^ correct_holes)
    region_sizes = sizes[1:]
    small = region_sizes < area_thresh
    if not small.any():
        return mask, False
    if correct_holes:
        keep = np.concatenate([[True], small])  # background of the inverted mask is the mask itself
    else:
        keep = np.concatenate([[False], ~small])
        if not keep.any():
            keep[int(np.argmax(region_sizes)) + 1] = True
    return keep[labels], True
