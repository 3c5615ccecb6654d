"""COCO segmentations (host side): checked completely before pycocotools sees them, then decoded.

pycocotools trusts its input. An RLE whose counts sum to less than height x width decodes into
uninitialised memory (another random mask on every read), a polygon coordinate that is NaN,
infinite or about 1e9 crashes it (SIGSEGV) or takes gigabytes first. So every segmentation is
checked here, in NumPy, and only one that passes reaches pycocotools:

- an RLE: `size` is the image's [height, width]; `counts` is a list of non-negative integers or
  pycocotools' compressed string (characters '0' to 'o', every run complete), decoded here to its
  runs; either way the runs are non-negative and sum to exactly height x width;
- polygons: a list of polygons, each a list of at least 6 numbers (x, y pairs), every one finite
  and within four times the image's size (|x| <= 4 width, |y| <= 4 height);
- the mask has at least one pixel.
"""

from __future__ import annotations

import numbers
from typing import Any, NamedTuple

import numpy as np
from pycocotools import mask as mask_utils

POLYGON_REACH = 4  # polygon coordinates within this many times the image's size
MAX_RUN_CHUNKS = 7  # 35 bits: more than any image's pixel count


class Checked(NamedTuple):
    problem: str | None  # why the segmentation cannot be used; None when it can
    pixels: int = 0  # the mask's pixel count
    rle: dict | None = None  # its compressed RLE (pycocotools' form), for the tight box


def inspect_segmentation(seg: Any, height: int, width: int) -> Checked:
    """`seg` (COCO polygons or an RLE) checked completely against a (height, width) image."""
    if isinstance(seg, dict):
        problem = _rle_problem(seg, height, width)
        if problem:
            return Checked(problem)
        rle = _rle(seg, height, width)
    elif isinstance(seg, list) and seg:
        problem = _polygons_problem(seg, height, width)
        if problem:
            return Checked(problem)
        rle = _rle(seg, height, width)
    else:
        return Checked("segmentation is neither an RLE nor a list of polygons")
    pixels = int(mask_utils.area(rle))
    return Checked(None, pixels, rle) if pixels > 0 else Checked("empty mask")


def check_segmentation(seg: Any, height: int, width: int) -> str | None:
    """Why `seg` (COCO polygons or an RLE) cannot be an (height, width) mask with pixels, or None."""
    return inspect_segmentation(seg, height, width).problem


def decode_segmentation(seg: Any, height: int, width: int) -> np.ndarray:
    """(height, width) uint8 mask of a segmentation that passed `inspect_segmentation`."""
    return mask_utils.decode(_rle(seg, height, width))


def tight_box(rle: dict) -> list[float]:
    """XYWH box of a checked segmentation's RLE (`Checked.rle`)."""
    return [float(v) for v in mask_utils.toBbox(rle)]


def rle_counts(counts: str | bytes) -> np.ndarray:
    """The runs (int64) of pycocotools' compressed RLE string, decoded as its `rleFrString` does:
    each run in 5-bit chunks (character - 48; bit 0x20: another chunk follows; the last chunk's
    bit 0x10: negative), every run after the third stored as its difference to the run two
    before. ValueError for a string that is not one."""
    if isinstance(counts, str):
        try:
            counts = counts.encode("ascii")
        except UnicodeEncodeError:
            raise ValueError("RLE counts hold characters that are not ASCII") from None
    c = np.frombuffer(counts, np.uint8).astype(np.int64) - 48
    if c.size == 0:
        return np.zeros(0, np.int64)
    if ((c < 0) | (c > 63)).any():
        raise ValueError("RLE counts hold characters outside '0'..'o' (not a compressed RLE)")
    more = (c & 0x20) != 0
    if more[-1]:
        raise ValueError("RLE counts end inside a run (truncated)")
    ends = np.flatnonzero(~more)
    starts = np.concatenate([[0], ends[:-1] + 1])
    chunk = np.arange(c.size) - np.repeat(starts, ends - starts + 1)  # position in its run
    if chunk.max() >= MAX_RUN_CHUNKS:
        raise ValueError(f"an RLE run longer than {5 * MAX_RUN_CHUNKS} bits")
    x = np.add.reduceat((c & 0x1F) << (5 * chunk), starts)
    negative = (c[ends] & 0x10) != 0
    x[negative] |= -1 << (5 * (chunk[ends][negative] + 1))
    runs = x.copy()
    runs[1::2] = np.cumsum(x[1::2])  # run m is x[m] + run m - 2 from m = 3 on
    runs[2::2] = np.cumsum(x[2::2])
    return runs


def _rle_problem(seg: dict, height: int, width: int) -> str | None:
    if "size" not in seg or "counts" not in seg:
        return "an RLE needs 'size' and 'counts'"
    size = seg["size"]
    if not (isinstance(size, (list, tuple)) and len(size) == 2 and all(_is_int(v) for v in size)):
        return f"RLE size must be [height, width], got {_short(size)}"
    if list(size) != [height, width]:
        return f"mask size {list(size)} differs from the image's {[height, width]}"
    counts = seg["counts"]
    if isinstance(counts, (str, bytes)):
        try:
            runs = rle_counts(counts)
        except ValueError as e:
            return str(e)
    elif isinstance(counts, list) and all(_is_int(v) for v in counts):
        runs = np.asarray([max(min(v, 2**62), -1) for v in counts] or [], np.int64)  # beyond int64: wrong anyway
    else:
        return "RLE counts must be a compressed string or a list of integers"
    if (runs < 0).any():
        return "RLE counts hold a negative run"
    total = int(runs.sum()) if (runs <= height * width).all() else None
    if total != height * width:
        what = "more than" if total is None or total > height * width else f"{total}, less than"
        return f"RLE runs sum to {what} height x width = {height * width}"
    return None


def _polygons_problem(seg: list, height: int, width: int) -> str | None:
    for k, p in enumerate(seg):
        if not (isinstance(p, list) and len(p) >= 6 and len(p) % 2 == 0):
            return f"polygon {k} is not a list of at least 3 x, y pairs"
        if not all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in p):
            bad = next(v for v in p if not (isinstance(v, numbers.Real) and not isinstance(v, bool)))
            return f"polygon {k} holds {_short(bad)}, not a number"
        try:
            xy = np.asarray(p, np.float64).reshape(-1, 2)
        except OverflowError:
            return f"polygon {k} holds a number beyond floating point's range"
        if not np.isfinite(xy).all():
            return f"polygon {k} holds {xy[~np.isfinite(xy)][0]}"
        reach = POLYGON_REACH * np.array([width, height], np.float64)
        if (np.abs(xy) > reach).any():
            return (f"polygon {k} reaches {np.abs(xy).max():g}, beyond {POLYGON_REACH} times the image's size "
                    f"({width}x{height})")
    return None


def _rle(seg, height: int, width: int) -> dict:
    """The compressed RLE of a checked segmentation (polygons merged, uncompressed counts compressed)."""
    if isinstance(seg, list):
        return mask_utils.merge(mask_utils.frPyObjects(seg, height, width))
    if isinstance(seg["counts"], list):
        return mask_utils.frPyObjects(seg, height, width)
    counts = seg["counts"]
    return {"size": list(seg["size"]), "counts": counts.encode() if isinstance(counts, str) else counts}


def _is_int(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _short(v) -> str:
    text = repr(v)
    return text if len(text) <= 40 else text[:37] + "..."
