"""Masks and prompt geometry on the host (NumPy), the official `utils/amg.py` host functions:
the automatic generator's point grids and crop boxes, uncropping, boxes of full-size masks, and
small-region removal for `min_mask_region_area` without OpenCV.

The official code calls `cv2.connectedComponentsWithStats(mask, 8)`; `scipy.ndimage.label` with a
3x3 structure gives the same 8-connected components. OpenCV's 8-connected labelling scans 2x2
blocks, so its labels follow the raster order of each component's first *block*; we relabel to
that order so that "keep the largest" breaks ties the same way. SciPy is already a dependency of jax.
"""

from __future__ import annotations

import math
from itertools import product

import numpy as np
from scipy import ndimage


# ------------------------------------------------------------------- point grids and crops



def build_point_grid(n_per_side: int) -> np.ndarray:
    """(n*n, 2) xy points evenly spaced in [0, 1] x [0, 1], cell centres."""
    offset = 1 / (2 * n_per_side)
    points_one_side = np.linspace(offset, 1 - offset, n_per_side)
    points_x = np.tile(points_one_side[None, :], (n_per_side, 1))
    points_y = np.tile(points_one_side[:, None], (1, n_per_side))
    return np.stack([points_x, points_y], axis=-1).reshape(-1, 2)


def build_all_layer_point_grids(n_per_side: int, n_layers: int, scale_per_layer: int) -> list[np.ndarray]:
    """Point grids for crop layers 0..n_layers; layer i has n_per_side / scale_per_layer**i per side."""
    return [build_point_grid(int(n_per_side / (scale_per_layer**i))) for i in range(n_layers + 1)]


def generate_crop_boxes(im_size: tuple[int, int], n_layers: int, overlap_ratio: float) -> tuple[list[list[int]], list[int]]:
    """xyxy crop boxes of every layer (layer i has (2**i)**2 crops) and the layer of each."""
    crop_boxes, layer_idxs = [], []
    im_h, im_w = im_size
    short_side = min(im_h, im_w)
    crop_boxes.append([0, 0, im_w, im_h])
    layer_idxs.append(0)

    def crop_len(orig_len, n_crops, overlap):
        return int(math.ceil((overlap * (n_crops - 1) + orig_len) / n_crops))

    for i_layer in range(n_layers):
        n_crops_per_side = 2 ** (i_layer + 1)
        overlap = int(overlap_ratio * short_side * (2 / n_crops_per_side))
        crop_w = crop_len(im_w, n_crops_per_side, overlap)
        crop_h = crop_len(im_h, n_crops_per_side, overlap)
        crop_box_x0 = [int((crop_w - overlap) * i) for i in range(n_crops_per_side)]
        crop_box_y0 = [int((crop_h - overlap) * i) for i in range(n_crops_per_side)]
        for x0, y0 in product(crop_box_x0, crop_box_y0):
            crop_boxes.append([x0, y0, min(x0 + crop_w, im_w), min(y0 + crop_h, im_h)])
            layer_idxs.append(i_layer + 1)
    return crop_boxes, layer_idxs


def uncrop_boxes_xyxy(boxes, crop_box):
    """(..., 4) boxes in crop pixels -> image pixels."""
    x0, y0, _, _ = crop_box
    return boxes + np.array([x0, y0, x0, y0], dtype=np.asarray(boxes).dtype)


def uncrop_points(points, crop_box):
    """(..., 2) points in crop pixels -> image pixels."""
    x0, y0, _, _ = crop_box
    return points + np.array([x0, y0], dtype=np.asarray(points).dtype)


def mask_boxes(masks: np.ndarray) -> np.ndarray:
    """(N, H, W) bool -> (N, 4) int64 inclusive xyxy boxes, [0, 0, 0, 0] for an empty mask:
    `batched_mask_to_box` on the host, for full-size masks that are already there."""
    masks = np.asarray(masks, bool)
    n, h, w = masks.shape
    boxes = np.zeros((n, 4), np.int64)
    rows, cols = masks.any(axis=2), masks.any(axis=1)
    full = rows.any(axis=1)
    boxes[full, 0] = cols[full].argmax(axis=1)
    boxes[full, 1] = rows[full].argmax(axis=1)
    boxes[full, 2] = w - 1 - cols[full, ::-1].argmax(axis=1)
    boxes[full, 3] = h - 1 - rows[full, ::-1].argmax(axis=1)
    return boxes


def box_xyxy_to_xywh(box: list[float]) -> list[float]:
    """[x0, y0, x1, y1] -> [x0, y0, w, h]."""
    x0, y0, x1, y1 = box
    return [x0, y0, x1 - x0, y1 - y0]


# ------------------------------------------------------------------- small regions
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
