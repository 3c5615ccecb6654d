"""Host-side drawing of masks and prompts over an image (Pillow only), and saving it."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from PIL.PngImagePlugin import PngInfo

from .outputs import atomic_file, check_output

OVERLAY_OUTPUT = "an overlay PNG"

_COLOURS = np.array([[30, 144, 255], [255, 99, 71], [60, 179, 113], [238, 130, 238], [255, 215, 0], [0, 206, 209]])


def overlay_masks(image: np.ndarray, masks: np.ndarray, alpha: float = 0.5, points=None, labels=None, boxes=None) -> Image.Image:
    """image (H, W, 3) uint8, masks (K, H, W) bool -> RGB PIL image with each mask tinted, plus
    points (N, 2) (green foreground, red background) and xyxy boxes (M, 4) in pixels."""
    out = image.astype(np.float32)
    for i, m in enumerate(np.asarray(masks, bool)):
        out[m] = (1 - alpha) * out[m] + alpha * _COLOURS[i % len(_COLOURS)]
    pil = Image.fromarray(out.round().astype(np.uint8))
    draw = ImageDraw.Draw(pil)
    r = max(3, min(image.shape[:2]) // 100)
    for (x, y), lab in zip(np.asarray(points if points is not None else np.zeros((0, 2))), labels if labels is not None else []):
        draw.ellipse([x - r, y - r, x + r, y + r], fill=(0, 200, 0) if lab == 1 else (220, 0, 0), outline=(255, 255, 255))
    for box in np.asarray(boxes if boxes is not None else np.zeros((0, 4))).reshape(-1, 4):
        draw.rectangle(box.tolist(), outline=(0, 255, 0), width=max(1, r // 2))
    return pil


def is_own_overlay(path: Path) -> bool:
    """A PNG that `save_overlay` wrote (its Software text chunk says sam-jax)."""
    try:
        with Image.open(path) as im:
            return im.format == "PNG" and im.text.get("Software") == "sam-jax"
    except Exception:  # anything Pillow cannot open is not one
        return False


def save_overlay(image: Image.Image, path: str | os.PathLike, overwrite: bool = False,
                 inputs: Iterable[str | os.PathLike] = ()) -> Path:
    """Writes `image` as a PNG marked as sam-jax's, atomically; an existing file is replaced only
    with `overwrite` and only if it is such a PNG, never one of `inputs`."""
    path = Path(path)
    check_output(path, kind="file", overwrite=overwrite, is_own=is_own_overlay, what=OVERLAY_OUTPUT, inputs=inputs)
    info = PngInfo()
    info.add_text("Software", "sam-jax")
    with atomic_file(path) as tmp:
        image.save(tmp, format="PNG", pnginfo=info)
    return path
