"""Automatic-mask-generation utilities (the official `utils/amg.py`).

Host side (NumPy, static geometry): point grids, crop boxes, uncropping.
Device side (jax.numpy, used inside jit): stability score, mask boxes, crop-edge test, and
greedy non-maximum suppression with static shapes (validity masks instead of filtering).
RLE encoding lives in `rle.py`, connected components in `regions.py`.
"""

from __future__ import annotations

import math
from itertools import product

import jax
import jax.numpy as jnp
import numpy as np

from .rle import area_from_rle, coco_decode_rle, coco_encode_rle, mask_to_rle, rle_to_mask  # noqa: F401


# ------------------------------------------------------------------------------------ host side
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


# ---------------------------------------------------------------------------------- device side
def calculate_stability_score(masks: jax.Array, mask_threshold: float, threshold_offset: float) -> jax.Array:
    """IoU of the masks thresholded at mask_threshold +/- offset. masks: (..., H, W) logits -> (...)."""
    intersections = jnp.sum(masks > (mask_threshold + threshold_offset), axis=(-2, -1), dtype=jnp.int32)
    unions = jnp.sum(masks > (mask_threshold - threshold_offset), axis=(-2, -1), dtype=jnp.int32)
    return intersections / unions


def batched_mask_to_box(masks: jax.Array) -> jax.Array:
    """(..., H, W) bool -> (..., 4) int32 inclusive xyxy boxes; [0, 0, 0, 0] for an empty mask."""
    h, w = masks.shape[-2:]
    in_height = jnp.any(masks, axis=-1)
    in_width = jnp.any(masks, axis=-2)
    rows, cols = jnp.arange(h), jnp.arange(w)
    bottom = jnp.max(jnp.where(in_height, rows, 0), axis=-1)
    top = jnp.min(jnp.where(in_height, rows, h), axis=-1)
    right = jnp.max(jnp.where(in_width, cols, 0), axis=-1)
    left = jnp.min(jnp.where(in_width, cols, w), axis=-1)
    empty = (right < left) | (bottom < top)
    out = jnp.stack([left, top, right, bottom], axis=-1)
    return jnp.where(empty[..., None], 0, out).astype(jnp.int32)


def is_box_near_crop_edge(boxes: jax.Array, crop_box: jax.Array, orig_box: jax.Array, atol: float = 20.0) -> jax.Array:
    """(N, 4) crop-frame boxes -> (N,) True where a box touches the crop's edge but not the image's."""
    crop_box = jnp.asarray(crop_box, jnp.float32)
    boxes = boxes.astype(jnp.float32) + jnp.stack([crop_box[0], crop_box[1], crop_box[0], crop_box[1]])
    near_crop_edge = jnp.abs(boxes - crop_box[None]) <= atol
    near_image_edge = jnp.abs(boxes - jnp.asarray(orig_box, jnp.float32)[None]) <= atol
    return jnp.any(near_crop_edge & ~near_image_edge, axis=1)


def box_area(boxes: jax.Array) -> jax.Array:
    return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


def nms(boxes: jax.Array, scores: jax.Array, valid: jax.Array, iou_threshold: float) -> tuple[jax.Array, jax.Array]:
    """Greedy NMS with torchvision's arithmetic and tie order, on fixed-size buffers.

    boxes (N, 4) xyxy, scores (N,), valid (N,) bool (invalid entries neither survive nor suppress).
    Returns `order` (N,) indexes sorted by descending score (stable, invalid last) and `keep` (N,)
    bool over that order: the survivors, best first, are order[keep]."""
    order = jnp.argsort(jnp.where(valid, -scores, jnp.inf), stable=True)
    b = jnp.asarray(boxes, jnp.float32)[order]
    area = box_area(b)

    def overlaps(i):  # (N,) IoU of box i with every box > threshold, torchvision's arithmetic
        lt = jnp.maximum(b[i, :2], b[:, :2])
        rb = jnp.minimum(b[i, 2:], b[:, 2:])
        wh = jnp.maximum(rb - lt, 0.0)
        inter = wh[:, 0] * wh[:, 1]
        return inter / (area[i] + area - inter) > iou_threshold

    n = b.shape[0]
    later = jnp.arange(n)

    def next_kept(keep, i):  # the first kept slot after i, or n when none is left
        return jnp.min(jnp.where(keep & (later > i), later, n))

    def body(state):
        i, keep = state
        keep = keep & ~(overlaps(i) & (later > i))
        return next_kept(keep, i), keep

    # One step per survivor, not per slot: suppressed and invalid slots (invalid ones sort last)
    # are skipped, so 3,072 slots with a few dozen survivors take a few dozen steps.
    keep = valid[order]
    _, keep = jax.lax.while_loop(lambda s: s[0] < n, body, (next_kept(keep, -1), keep))
    return order, keep
