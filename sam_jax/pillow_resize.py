"""Pillow's BILINEAR resize of 8-bit images (what `ResizeLongestSide.apply_image` calls, as the
official code does) on device, bit for bit: `SamPredictor(model, resize="device")`.

Pillow (`libImaging/Resample.c`) resamples 8-bit images in fixed point: per output pixel a
triangle filter widened by the scale when shrinking (antialiasing), the weights normalised in
double precision and rounded to integers of PRECISION_BITS fraction bits, the sum of
pixel x weight taken in 32-bit integers from half a unit, shifted and clipped to 0..255; one
axis after the other, the first pass's 8-bit result the second's input. The weights are
computed here on the host with the same float64 operations in the same order
(`pillow_bilinear_taps`), the order of the passes as the installed Pillow chooses it
(`pillow_vertical_first`), and the device repeats the integer arithmetic, which is exact in
int32 (products below 2^30): the same bytes as Pillow, in one compiled call per photo size.

    canvas, (h, w) = resize_longest_side(image, 1024)   # (1024, 1024, 3) uint8 on device, image top-left
"""

from __future__ import annotations

import functools

import jax
import PIL
import jax.numpy as jnp
import numpy as np

from .transforms import get_preprocess_shape

PRECISION_BITS = 32 - 8 - 2  # Pillow's fraction bits for 8-bit images
PILLOW = tuple(int(v) for v in PIL.__version__.split(".")[:2])


def pillow_vertical_first(in_hw: tuple[int, int], out_hw: tuple[int, int], version: tuple[int, int] = PILLOW) -> bool:
    """Whether Pillow `version` resizes (H, W) -> (h, w) with the vertical pass first (the order
    changes the rounding of the 8-bit intermediate image by up to one grey level).
    Pillow 13.0 decides in C: vertical first when the height shrinks and 2 (w - W) > h - H (the
    rule that 13.0.0's output follows on every shape tried: tests/predictor/test_device_resize.py);
    12.2 and 12.3 in Python, for images over 100 times taller than wide whose height shrinks;
    earlier versions always resize horizontally first."""
    (H, W), (h, w) = in_hw, out_hw
    if version >= (13, 0):
        return h < H and 2 * (w - W) > h - H
    if version >= (12, 2):
        return H > 100 * W and h < H
    return False


@functools.lru_cache(maxsize=64)
def pillow_bilinear_taps(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pillow's BILINEAR weights along one axis (`precompute_coeffs` and `normalize_coeffs_8bpc`
    with box (0, in_size)): first (out_size,) int32, the first input index each output reads,
    and weights (out_size, taps) int32 in fixed point, zero past each output's last tap.
    Output i = clip((2^21 + sum_t x[first[i] + t] * weights[i, t]) >> 22, 0, 255)."""
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = 1.0 * filterscale  # the bilinear filter's support is 1
    taps = int(np.ceil(support)) * 2 + 1
    center = (np.arange(out_size) + 0.5) * scale  # Pillow: in0 + (xx + 0.5) * scale, in0 = 0
    first = np.maximum(np.trunc(center - support + 0.5), 0).astype(np.int64)  # C's (int) truncates
    last = np.minimum(np.trunc(center + support + 0.5), in_size).astype(np.int64)
    x = np.arange(taps)
    arg = ((x[None, :] + first[:, None]) - center[:, None] + 0.5) * (1.0 / filterscale)
    w = np.where(x[None, :] < (last - first)[:, None], np.maximum(0.0, 1.0 - np.abs(arg)), 0.0)
    total = np.cumsum(w, axis=1)[:, -1:]  # C sums in order; cumsum does too (np.sum pairs terms)
    w = np.where(total != 0.0, w / np.where(total != 0.0, total, 1.0), w)
    fixed = np.trunc(np.where(w < 0, -0.5, 0.5) + w * (1 << PRECISION_BITS))
    return first.astype(np.int32), fixed.astype(np.int32)


def _resample_axis(x: jax.Array, first: jax.Array, weights: jax.Array, axis: int) -> jax.Array:
    """One Pillow pass of uint8 `x` along `axis` (0 or 1 of (H, W, C)) -> uint8."""
    n = x.shape[axis]
    shape = [1, 1, 1]
    shape[axis] = -1
    acc = jnp.int32(1 << (PRECISION_BITS - 1))
    for t in range(weights.shape[1]):  # a tap at a time, in Pillow's order; integers make any order exact
        src = jnp.take(x, jnp.minimum(first + t, n - 1), axis=axis).astype(jnp.int32)  # clamped taps weigh 0
        acc = acc + src * weights[:, t].reshape(shape)
    return jnp.clip(acc >> PRECISION_BITS, 0, 255).astype(jnp.uint8)


def resize_to_canvas(image: jax.Array, rows: tuple[jax.Array, jax.Array], cols: tuple[jax.Array, jax.Array],
                     size: int, vertical_first: bool = False) -> jax.Array:
    """(H, W, 3) uint8 -> (size, size, 3) uint8: the image resized by Pillow's bilinear filter
    with `pillow_bilinear_taps` rows (h taps) and cols (w taps), in the order
    `pillow_vertical_first` gives (static), top-left, zero elsewhere."""
    x = image
    for axis in (0, 1) if vertical_first else (1, 0):
        x = _resample_axis(x, *(rows if axis == 0 else cols), axis=axis)
    return jnp.pad(x, ((0, size - x.shape[0]), (0, size - x.shape[1]), (0, 0)))


resize_to_canvas_jit = jax.jit(resize_to_canvas, static_argnames=("size", "vertical_first"))


def resize_longest_side(image: np.ndarray, target_length: int, device: jax.Device | None = None) -> tuple[jax.Array, tuple[int, int]]:
    """`ResizeLongestSide(target_length).apply_image(image)` on device, padded: an (H, W, 3) uint8
    image -> ((target_length, target_length, 3) uint8 device array with the resized image
    top-left, its (h, w)). Only the uint8 image crosses to the device."""
    H, W = image.shape[:2]
    h, w = get_preprocess_shape(H, W, target_length)
    x = jax.device_put(np.ascontiguousarray(image), device)
    canvas = resize_to_canvas_jit(x, pillow_bilinear_taps(H, h), pillow_bilinear_taps(W, w), target_length,
                                  pillow_vertical_first((H, W), (h, w)))
    return canvas, (h, w)
