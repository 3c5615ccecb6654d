"""The evaluation protocols (host side, pure NumPy): which prompt an object gets, where the next
click goes, which of the model's outputs counts, and how results are grouped. docs/evaluation.md
states them in words; the parity tests hold the official SamPredictor to the same definitions.

Prompts (`Protocol.prompt`):
    box     the annotation's `bbox` (x, y, w, h) as the box (x, y, x + w, y + h), as EfficientViT-SAM.
    point   one positive click at the object's centre: `farthest_point` of its mask.
    clicks  N rounds as RITM's and SAM 2's "center" clicker: round 1 is the point prompt; each later
            round adds `next_click` on the previous round's mask and feeds back the previous
            round's low-res logits (of the output chosen) as the mask prompt.

Selections (`Protocol.select`), applied in every round:
    score   multimask output, the output with the highest predicted IoU (the one a user gets).
    oracle  multimask output, the output with the highest IoU against the ground truth.
    single  multimask output off: the model's single output.
Ties go to the lower output index (NumPy's argmax).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
from scipy import ndimage

from ..options import PROMPTS, SELECTIONS

# COCO's object sizes by the annotation's `area`: [0, 32^2), [32^2, 96^2), [96^2, inf).
AREA_RANGES = (("small", 0.0, 32.0**2), ("medium", 32.0**2, 96.0**2), ("large", 96.0**2, math.inf))


class Protocol(NamedTuple):
    """prompt: box, point or clicks; select: score, oracle or single; clicks: rounds of the
    clicks prompt (1 for box and point)."""

    prompt: str = "point"
    select: str = "score"
    clicks: int = 1

    @classmethod
    def make(cls, prompt: str = "point", select: str = "score", clicks: int | None = None) -> "Protocol":
        """A checked protocol; clicks defaults to 3 for the clicks prompt and must be absent (or 1) otherwise."""
        if prompt not in PROMPTS:
            raise ValueError(f"prompt must be one of {', '.join(PROMPTS)}, got {prompt!r}")
        if select not in SELECTIONS:
            raise ValueError(f"select must be one of {', '.join(SELECTIONS)}, got {select!r}")
        if prompt != "clicks":
            if clicks not in (None, 1):
                raise ValueError(f"clicks applies to the clicks prompt, not to {prompt!r}")
            return cls(prompt, select, 1)
        clicks = 3 if clicks is None else clicks
        if isinstance(clicks, bool) or not isinstance(clicks, int) or clicks < 1:
            raise ValueError(f"clicks must be a positive integer, got {clicks!r}")
        return cls(prompt, select, clicks)

    @property
    def multimask(self) -> bool:
        return self.select != "single"

    def to_dict(self) -> dict:
        return {"prompt": self.prompt, "select": self.select, "clicks": self.clicks}


class Click(NamedTuple):
    x: int  # column, pixels of the original image
    y: int  # row
    label: int  # 1: positive (in a missed region), 0: negative (in a false one)


def box_prompt(bbox) -> np.ndarray:
    """A COCO `bbox` (x, y, w, h) -> the box prompt (x0, y0, x1, y1) = (x, y, x + w, y + h), float32."""
    x, y, w, h = (float(v) for v in bbox)
    return np.array([x, y, x + w, y + h], np.float32)


def farthest_point(region: np.ndarray, exclude: np.ndarray | None = None) -> tuple[int, int, float]:
    """(x, y, distance) of the pixel of `region` (H, W bool) farthest from the region's boundary:
    the Euclidean distance to the nearest pixel outside the region, the pixels beyond the image's
    edges counting as outside. Ties: the first in row-major order (smallest y, then smallest x).
    Pixels in `exclude` are never chosen. distance 0: no pixel to choose (x = y = 0)."""
    ys, xs = np.nonzero(region)
    if len(ys) == 0:
        return 0, 0, 0.0
    # Distances inside the region depend only on the region: compute them in its bounding box,
    # framed by one pixel of outside (the same values, in the same row-major order).
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    dist = ndimage.distance_transform_edt(np.pad(region[y0:y1, x0:x1], 1))[1:-1, 1:-1]
    if exclude is not None:
        dist[exclude[y0:y1, x0:x1]] = 0.0
    k = int(np.argmax(dist))
    dy, dx = divmod(k, dist.shape[1])
    d = float(dist.flat[k])
    return (int(x0 + dx), int(y0 + dy), d) if d > 0 else (0, 0, 0.0)


def first_click(gt: np.ndarray) -> Click:
    """The point prompt: a positive click at `farthest_point` of the object's mask."""
    x, y, _ = farthest_point(gt)
    return Click(x, y, 1)


def next_click(gt: np.ndarray, pred: np.ndarray, clicked: np.ndarray | None = None) -> Click | None:
    """The next click on a prediction (RITM's rule): of the missed region (gt & ~pred) and the
    false region (pred & ~gt), the one whose `farthest_point` lies deeper inside it, clicked there:
    positive in the missed region when strictly deeper, else negative in the false one. Pixels
    already clicked (`clicked`, H x W bool) are not clicked again. None when no error pixel is
    left to click: the object needs no more clicks."""
    xn, yn, dn = farthest_point(gt & ~pred, clicked)
    xp, yp, dp = farthest_point(pred & ~gt, clicked)
    if dn == 0 and dp == 0:
        return None
    return Click(xn, yn, 1) if dn > dp else Click(xp, yp, 0)


def mask_iou(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """IoU over the last two axes of bool masks (broadcast); 1 where both are empty."""
    inter = np.logical_and(pred, gt).sum(axis=(-2, -1), dtype=np.int64)
    union = np.logical_or(pred, gt).sum(axis=(-2, -1), dtype=np.int64)
    return np.where(union > 0, inter / np.maximum(union, 1), 1.0)


def choose(select: str, predicted_iou: np.ndarray, true_iou: np.ndarray) -> np.ndarray:
    """Per prompt, the output that counts: (B,) indexes from (B, C) predicted and true IoUs."""
    if select == "score":
        return np.argmax(predicted_iou, axis=1)
    if select == "oracle":
        return np.argmax(true_iou, axis=1)
    return np.zeros(len(predicted_iou), np.int64)


def area_range(area: float) -> str:
    """small, medium or large: the COCO range of an annotation's `area` (see AREA_RANGES)."""
    for name, lo, hi in AREA_RANGES:
        if lo <= area < hi:
            return name
    return AREA_RANGES[0][0]  # a negative area (a malformed file) counts as small
