"""Data augmentation for fine-tuning (host side, NumPy), off by default: an image and its masks
(n, H, W) are transformed together, in the image's own pixels, before the model's resize. The
prompts need nothing: the rollout draws them from the transformed masks.

In this order, each from the example's own generator (Grain seeds it by the example's position
in the stream, so the same seed gives the same batches and a resumed run the same ones again):

    crop_size      an image larger than crop_size on a side: a random crop_size window (a tile at
                   the image's own resolution, instead of the whole image shrunk to the input size)
    scale_jitter   zoom in by s, log-uniform in [1, scale_jitter]: a random window of 1/s of each side
    rot90          a rotation by k * 90 degrees, k uniform in 0..3
    hflip, vflip   a horizontal, vertical flip, each with probability 1/2
    color_jitter   brightness, contrast and saturation each scaled by a factor uniform in
                   [1 - c, 1 + c] (the image only)

A window is drawn again (up to `WINDOW_TRIES` times) until it holds a pixel of some mask; a mask
that a window leaves empty is dropped. SAM 2's training transforms (horizontal flip, random affine,
colour jitter, grayscale) are compared in docs/fine-tuning.md.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

WINDOW_TRIES = 10
KINDS = ("hflip", "vflip", "rot90")  # the switches, as `--augment` names them


class AugmentSettings(NamedTuple):
    hflip: bool = False
    vflip: bool = False
    rot90: bool = False
    scale_jitter: float = 1.0  # largest zoom-in factor; 1: none
    crop_size: int = 0  # window side in image pixels for larger images; 0: none
    color_jitter: float = 0.0  # largest relative change of brightness, contrast, saturation; 0: none

    @property
    def active(self) -> bool:
        return self != AugmentSettings()

    def problems(self) -> list[str]:
        out = []
        if not (isinstance(self.scale_jitter, (int, float)) and 1 <= self.scale_jitter < math.inf):
            out.append(f"scale_jitter is the largest zoom factor, a number >= 1, got {self.scale_jitter!r}")
        if not (type(self.crop_size) is int and self.crop_size >= 0):
            out.append(f"crop_size must be an integer >= 0 (pixels; 0: no crops), got {self.crop_size!r}")
        if not (isinstance(self.color_jitter, (int, float)) and 0 <= self.color_jitter < 1):
            out.append(f"color_jitter must be in [0, 1), got {self.color_jitter!r}")
        return out


def augment(image: np.ndarray, masks: np.ndarray, rng: np.random.Generator, settings: AugmentSettings):
    """(H, W, 3) uint8 image and (n, H, W) bool masks -> the transformed (image, masks) (n may shrink)."""
    H, W = image.shape[:2]
    if settings.crop_size and max(H, W) > settings.crop_size:
        image, masks = _window(image, masks, min(H, settings.crop_size), min(W, settings.crop_size), rng)
    if settings.scale_jitter > 1:
        s = math.exp(rng.uniform(0.0, math.log(settings.scale_jitter)))
        h, w = image.shape[:2]
        image, masks = _window(image, masks, max(1, round(h / s)), max(1, round(w / s)), rng)
    if settings.rot90:
        k = int(rng.integers(4))
        image, masks = np.rot90(image, k, axes=(0, 1)), np.rot90(masks, k, axes=(1, 2))
    if settings.hflip and rng.random() < 0.5:
        image, masks = image[:, ::-1], masks[:, :, ::-1]
    if settings.vflip and rng.random() < 0.5:
        image, masks = image[::-1], masks[:, ::-1]
    if settings.color_jitter:
        image = color_jitter(image, settings.color_jitter, rng)
    return np.ascontiguousarray(image), np.ascontiguousarray(masks)


def _window(image: np.ndarray, masks: np.ndarray, h: int, w: int, rng: np.random.Generator):
    """A random h x w window of the image and its masks, drawn again until it holds a mask pixel;
    the masks it leaves empty are dropped."""
    H, W = image.shape[:2]
    for _ in range(WINDOW_TRIES):
        y, x = int(rng.integers(H - h + 1)), int(rng.integers(W - w + 1))
        cut = masks[:, y : y + h, x : x + w]
        if cut.any():
            break
    keep = cut.any(axis=(1, 2))
    return image[y : y + h, x : x + w], cut[keep]


def color_jitter(image: np.ndarray, amount: float, rng: np.random.Generator) -> np.ndarray:
    """Brightness, contrast and saturation, each times a factor uniform in [1 - amount, 1 + amount]
    (torchvision's definitions: contrast about the mean grey level, saturation against the grey image)."""
    b, c, s = rng.uniform(1 - amount, 1 + amount, size=3)
    grey = lambda y: y @ np.array([0.299, 0.587, 0.114], np.float32)
    x = np.clip(image.astype(np.float32) * b, 0, 255)
    x = np.clip((x - grey(x).mean()) * c + grey(x).mean(), 0, 255)
    x = np.clip((x - grey(x)[..., None]) * s + grey(x)[..., None], 0, 255)
    return np.rint(x).astype(np.uint8)
