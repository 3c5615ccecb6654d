"""Run-length encoding of binary masks (host side, vectorised NumPy).

Uncompressed RLE is the official layout: `{"size": [h, w], "counts": [n0, n1, ...]}` with runs
counted in column-major (Fortran) order, starting with a run of zeros (possibly of length 0).
COCO RLE is the same runs in pycocotools' compressed string form.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from .segmentations import rle_counts


def mask_to_rle(masks: np.ndarray) -> list[dict[str, Any]]:
    """(B, H, W) bool masks -> B uncompressed RLEs, equal to the official `mask_to_rle_pytorch`."""
    masks = np.asarray(masks, dtype=bool)
    if masks.ndim != 3:
        raise ValueError(f"masks must be (B, H, W), got shape {masks.shape}")
    b, h, w = masks.shape
    if b == 0:
        return []
    flat = masks.transpose(0, 2, 1).reshape(b, h * w)
    rows, cols = np.nonzero(flat[:, 1:] != flat[:, :-1])
    splits = np.searchsorted(rows, np.arange(1, b))
    out = []
    for i, change in enumerate(np.split(cols + 1, splits)):
        bounds = np.concatenate([[0], change, [h * w]])
        counts = np.diff(bounds).tolist()
        out.append({"size": [h, w], "counts": counts if not (h * w and flat[i, 0]) else [0, *counts]})
    return out


def rle_to_mask(rle: dict[str, Any]) -> np.ndarray:
    """Uncompressed RLE -> (H, W) bool mask."""
    h, w = rle["size"]
    counts = np.asarray(rle["counts"], dtype=np.int64)
    if counts.sum() != h * w:
        raise ValueError(f"RLE counts sum to {counts.sum()}, expected h*w = {h * w}")
    values = np.arange(len(counts)) % 2 == 1
    return np.repeat(values, counts).reshape(w, h).T


def area_from_rle(rle: dict[str, Any]) -> int:
    """Foreground pixel count of an uncompressed RLE."""
    return int(sum(rle["counts"][1::2]))


def coco_encode_rle(uncompressed_rle: dict[str, Any]) -> dict[str, Any]:
    """Uncompressed RLE -> COCO RLE with a str `counts` (JSON-serialisable), as the official code."""
    h, w = uncompressed_rle["size"]
    rle = mask_utils.frPyObjects(uncompressed_rle, h, w)
    rle["counts"] = rle["counts"].decode("utf-8")
    return rle


def coco_decode_rle(rle: dict[str, Any]) -> np.ndarray:
    """COCO RLE (str or bytes `counts`) -> (H, W) bool mask; ValueError for counts that do not sum
    to H * W (pycocotools would fill the rest with uninitialised memory)."""
    counts = rle["counts"]
    if isinstance(counts, list):
        return rle_to_mask(rle)
    h, w = rle["size"]
    total = int(rle_counts(counts).sum())
    if total != h * w:
        raise ValueError(f"RLE counts sum to {total}, expected h*w = {h * w}")
    encoded = {"size": list(rle["size"]), "counts": counts.encode("utf-8") if isinstance(counts, str) else counts}
    return mask_utils.decode(encoded).astype(bool)

