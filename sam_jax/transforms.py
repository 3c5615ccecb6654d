"""Geometry of the official `utils/transforms.py`: resize the longest side to the model input, and
map coordinates from the original image into that resized frame.

Host side (NumPy): images are resized with Pillow's bilinear filter, which is what the official
code does (it calls torchvision's resize on a PIL image), and coordinates are scaled in float64
like the official NumPy code. Device side (JAX arrays): the official `*_torch` methods, as
`*_jax` (the `*_torch` names are kept as aliases that take and return JAX arrays): coordinates
in float32 as torch does them, and torch's antialiased bilinear `F.interpolate` for batches of
images, as separable resampling matrices.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from .resample import antialiased_linear_weights


def get_preprocess_shape(oldh: int, oldw: int, long_side_length: int) -> tuple[int, int]:
    """(h, w) of an image of size (oldh, oldw) after resizing its longest side to `long_side_length`."""
    scale = long_side_length * 1.0 / max(oldh, oldw)
    newh, neww = oldh * scale, oldw * scale
    return int(newh + 0.5), int(neww + 0.5)


class ResizeLongestSide:
    """Resizes images to longest side `target_length`, and scales coordinates and boxes to match."""

    get_preprocess_shape = staticmethod(get_preprocess_shape)

    def __init__(self, target_length: int) -> None:
        self.target_length = target_length

    def output_size(self, oldh: int, oldw: int) -> tuple[int, int]:
        """(h, w) of an (oldh, oldw) image once resized."""
        return get_preprocess_shape(oldh, oldw, self.target_length)

    # ------------------------------------------------------------------ host (NumPy)
    def apply_image(self, image: np.ndarray) -> np.ndarray:
        """(H, W, 3) uint8 -> (h, w, 3) uint8 with max(h, w) == target_length."""
        h, w = self.output_size(image.shape[0], image.shape[1])
        return np.asarray(Image.fromarray(image).resize((w, h), Image.Resampling.BILINEAR))

    def apply_coords(self, coords: np.ndarray, original_size: tuple[int, int]) -> np.ndarray:
        """(..., 2) xy pixels in the original image -> float64 xy pixels in the resized image."""
        old_h, old_w = original_size
        new_h, new_w = self.output_size(old_h, old_w)
        coords = np.array(coords, dtype=float)
        coords[..., 0] = coords[..., 0] * (new_w / old_w)
        coords[..., 1] = coords[..., 1] * (new_h / old_h)
        return coords

    def apply_boxes(self, boxes: np.ndarray, original_size: tuple[int, int]) -> np.ndarray:
        """(..., 4) xyxy boxes in the original image -> (B, 4) float64 boxes in the resized image."""
        boxes = self.apply_coords(np.asarray(boxes).reshape(-1, 2, 2), original_size)
        return boxes.reshape(-1, 4)

    # ------------------------------------------------------------------ device (JAX)
    def apply_image_jax(self, image: jax.Array) -> jax.Array:
        """(B, C, H, W) images -> (B, C, h, w) float32 with max(h, w) == target_length: the
        official `apply_image_torch` (torch's bilinear, antialiased, align_corners=False)."""
        h, w = self.output_size(image.shape[2], image.shape[3])
        rows = jnp.asarray(antialiased_linear_weights(image.shape[2], h))
        cols = jnp.asarray(antialiased_linear_weights(image.shape[3], w))
        hi = jax.lax.Precision.HIGHEST  # float32 products on every backend
        x = jnp.einsum("bchw,vw->bchv", jnp.asarray(image, jnp.float32), cols, precision=hi)
        return jnp.einsum("bchv,uh->bcuv", x, rows, precision=hi)

    def apply_coords_jax(self, coords, original_size: tuple[int, int]) -> jax.Array:
        """(..., 2) xy pixels in the original image -> float32 xy in the resized image (as torch)."""
        old_h, old_w = original_size
        new_h, new_w = self.output_size(old_h, old_w)
        coords = jnp.asarray(coords, jnp.float32)
        return coords * jnp.asarray([new_w / old_w, new_h / old_h], jnp.float32)

    def apply_boxes_jax(self, boxes, original_size: tuple[int, int]) -> jax.Array:
        """(B, 4) xyxy boxes in the original image -> (B, 4) float32 boxes in the resized image."""
        return self.apply_coords_jax(jnp.reshape(jnp.asarray(boxes), (-1, 2, 2)), original_size).reshape(-1, 4)

    # The official names: they take any array (a CPU torch tensor too) and return JAX arrays.
    apply_image_torch = apply_image_jax
    apply_coords_torch = apply_coords_jax
    apply_boxes_torch = apply_boxes_jax


class ResizeSquare(ResizeLongestSide):
    """MedSAM's geometry: every image resized to the full target_length square (its aspect ratio
    not kept), coordinates scaled per axis to match. The same methods as ResizeLongestSide."""

    def output_size(self, oldh: int, oldw: int) -> tuple[int, int]:
        return self.target_length, self.target_length


def transform_for(config) -> ResizeLongestSide:
    """The resize of a model's preprocessing profile (`SamConfig.preprocess`): MedSAM's square, or
    the official longest side (LiteMedSAM's too)."""
    return (ResizeSquare if config.preprocess == "medsam" else ResizeLongestSide)(config.image_size)
