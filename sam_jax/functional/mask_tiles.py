"""Automatic masks at full resolution, one band of rows at a time: their statistics, renderings
and run-length boundaries without their full-resolution logits ever in device memory.

The official postprocess (upsample, crop, resize) is one banded matmul per axis
(`resample.band_weights`). The width pass runs whole for a chunk of K masks, (K, 4h, 4w) ->
(K, 4h, Wc), a few MB a mask; the height pass runs one band of `tiles` x BAND_TILE output
rows at a time inside a `lax.scan`, and each band is consumed (thresholded, counted, packed)
before the next is made. A band's matmul is `band_resample`'s restricted to the band's tiles,
so its logits are the floats the whole-canvas resampling gives, and every count, extent and
bit below is the whole-canvas one (tests/amg/test_mask_tiles.py compares them).

    stability, boxes = band_stats(low, rows, cols, crop_hw, threshold, offset)        # in process_crop
    packed, area = band_masks(low, rows, cols, crop_hw, threshold)                     # row-major bits
    changes, area = band_boundaries(low, rows, cols, crop_hw, crop_xy, image_hw, threshold)  # RLE

Shapes: low (K, 4h, 4w) logits; rows / cols from `crop_resamplers` (Hc = T * BAND_TILE and
Wc their canvas sizes, Wc a multiple of 8); crop_hw (2,) int32 the crop's size on the canvas.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from ..resample import BAND_TILE, band_resample

HIGHEST = jax.lax.Precision.HIGHEST  # full float32 products on TPU too, as band_resample


def boxes_from_extents(in_height: jax.Array, in_width: jax.Array) -> jax.Array:
    """Rows (..., H) and columns (..., W) that hold a foreground pixel -> (..., 4) int32 inclusive
    xyxy boxes, [0, 0, 0, 0] for an empty mask (the official batched_mask_to_box's arithmetic)."""
    h, w = in_height.shape[-1], in_width.shape[-1]
    rows, cols = jnp.arange(h), jnp.arange(w)
    bottom = jnp.max(jnp.where(in_height, rows, 0), axis=-1)
    top = jnp.min(jnp.where(in_height, rows, h), axis=-1)
    right = jnp.max(jnp.where(in_width, cols, 0), axis=-1)
    left = jnp.min(jnp.where(in_width, cols, w), axis=-1)
    empty = (right < left) | (bottom < top)
    out = jnp.stack([left, top, right, bottom], axis=-1)
    return jnp.where(empty[..., None], 0, out).astype(jnp.int32)


def band_logits(xw: jax.Array, rows: tuple[jax.Array, jax.Array], band: jax.Array, tiles: int) -> jax.Array:
    """Height pass of band `band`: (K, 4h, Wc) width-resampled logits -> (K, tiles * BAND_TILE, Wc)
    logits of output rows band * tiles * BAND_TILE onwards (`band_resample` on those tiles)."""
    starts, weights = rows
    s = jax.lax.dynamic_slice_in_dim(starts, band * tiles, tiles)
    w = jax.lax.dynamic_slice_in_dim(weights, band * tiles, tiles)  # (tiles, BAND_TILE, L)
    win = jnp.take(xw, s[:, None] + jnp.arange(w.shape[-1]), axis=-2)  # (K, tiles, L, Wc)
    out = jnp.einsum("...tlc,tkl->...tkc", win, w, precision=HIGHEST)
    return out.reshape(xw.shape[:-2] + (-1, xw.shape[-1]))


def scan_bands(fn, init, low: jax.Array, rows, cols, crop_hw: jax.Array, tiles: int = 1):
    """`lax.scan` of fn(carry, logits, y, inside) -> (carry, out) over the bands of the crop's
    canvas: logits (K, R, Wc) float32 (R = tiles * BAND_TILE rows), y (R,) their row indexes,
    inside (R, Wc) bool the crop's pixels (False on the canvas padding). `tiles` must divide T."""
    T = rows[0].shape[0]
    if T % tiles:
        raise ValueError(f"tiles={tiles} does not divide the canvas's {T} row tiles")
    xw = band_resample(jnp.asarray(low, jnp.float32), cols, axis=-1)  # statistics in float32 for any model dtype
    R = tiles * BAND_TILE
    col_in = jnp.arange(xw.shape[-1]) < crop_hw[1]

    def step(carry, band):
        y = band * R + jnp.arange(R)
        inside = (y < crop_hw[0])[:, None] & col_in[None, :]
        return fn(carry, band_logits(xw, rows, band, tiles), y, inside)

    return jax.lax.scan(step, init, jnp.arange(T // tiles))


def _rows_first(stacked: jax.Array) -> jax.Array:
    """(bands, K, R, ...) per-band outputs -> (K, bands * R, ...)."""
    x = jnp.moveaxis(stacked, 0, 1)
    return x.reshape(x.shape[:1] + (-1,) + x.shape[3:])


def band_stats(low, rows, cols, crop_hw, mask_threshold, offset, tiles: int = 1) -> tuple[jax.Array, jax.Array]:
    """Stability score (K,) float32 (`calculate_stability_score`: the counts of logits above
    mask_threshold +/- offset) and inclusive xyxy boxes (K, 4) int32 (`batched_mask_to_box` of
    logits > mask_threshold) of K masks at the crop size, counted band by band."""

    def fn(carry, logits, y, inside):
        logits = jnp.where(inside, logits, -jnp.inf)
        hi = (logits > mask_threshold + offset).astype(jnp.int32)
        lo = (logits > mask_threshold - offset).astype(jnp.int32)
        fg = logits > mask_threshold
        # One variadic reduction along the rows: XLA then makes the per-pixel counts as it reduces
        # (separate sums each wrote an int32 copy of the band first).
        hi, lo, in_height = jax.lax.reduce((hi, lo, fg), (np.int32(0), np.int32(0), np.bool_(False)),
                                           lambda a, b: (a[0] + b[0], a[1] + b[1], a[2] | b[2]), (2,))
        return carry, (jnp.sum(hi, -1), jnp.sum(lo, -1), in_height, jnp.any(fg, -2))

    _, (inter, union, in_height, in_width) = scan_bands(fn, None, low, rows, cols, crop_hw, tiles)
    intersections, unions = jnp.sum(inter, 0), jnp.sum(union, 0)  # integers: any order is exact
    return intersections / unions, boxes_from_extents(_rows_first(in_height), jnp.any(in_width, 0))


def band_masks(low, rows, cols, crop_hw, mask_threshold, tiles: int = 1) -> tuple[jax.Array, jax.Array]:
    """(K, Hc, Wc / 8) uint8 masks (logits > mask_threshold on the crop, False on the padding),
    8 pixels a byte along the width (np.unpackbits, axis=-1), and their areas (K,) int32."""

    def fn(area, logits, y, inside):
        m = inside & (logits > mask_threshold)
        return area + jnp.sum(m, axis=(-2, -1), dtype=jnp.int32), jnp.packbits(m, axis=-1)

    area, packed = scan_bands(fn, jnp.zeros(low.shape[0], jnp.int32), low, rows, cols, crop_hw, tiles)
    return _rows_first(packed), area


def band_boundaries(low, rows, cols, crop_hw, crop_xy, image_hw, mask_threshold, tiles: int = 1) -> tuple[jax.Array, jax.Array]:
    """Run-length boundaries of K crop masks placed in an image of image_hw (H, W) at crop_xy
    (x0, y0), in the official column-major order: changes (K, Wc, Hc / 8 + 8) uint8 (the last 7
    bytes zero, so that a column is whole 64-bit words), bit y of column x (np.unpackbits along
    the last axis, y = 0..Hc) set where image pixel
    (y0 + y, x0 + x) in column-major order differs from the pixel before it (a first pixel that
    is set counts as a change at 0, the official leading run of length 0); and areas (K,) int32.
    Every change of the image mask is a bit, in order: the flat index of bit (x, y) is
    (x0 + x) * H + y0 + y, increasing along the bits. Bit y = ch of a column is the change after
    its last crop pixel (to the zero outside the crop, or for a crop of the image's full height
    the next column's first pixel, so only the last column keeps it); no bit marks the end."""
    ch, cw = crop_hw[0], crop_hw[1]
    x0, y0, H, W = crop_xy[0], crop_xy[1], image_hw[0], image_hw[1]
    K, Wc = low.shape[0], cols[0].shape[0] * BAND_TILE
    x = jnp.arange(Wc)
    full_height = (y0 == 0) & (ch == H)  # columns follow each other with no pixel outside the crop
    end_ok = (~full_height | (x == cw - 1)) & ~((x0 + x == W - 1) & (y0 + ch == H))  # (Wc,)

    def fn(carry, logits, y, inside):
        above, last, area = carry  # the row above this band (bit 0 of a byte), row ch - 1 once seen, area
        m = inside & (logits > mask_threshold)  # (K, R, Wc)
        # Each column's bits packed down the rows (the first row the top bit); the row above each
        # is the column shifted by one bit, so the changes are one XOR on 8 times fewer bytes.
        b = jnp.packbits(m, axis=1)  # (K, R / 8, Wc)
        above_bits = (b >> 1) | (jnp.concatenate([above[:, None], b[:, :-1] & 1], axis=1) << 7)
        d = b ^ above_bits
        d &= ~jnp.packbits((y == ch)[:, None] & ~end_ok[None, :], axis=0)  # row ch's bit: end_ok columns only
        r = ch - 1 - y[0]
        last |= jnp.take(m, jnp.clip(r, 0, m.shape[1] - 1), axis=1) & (0 <= r) & (r < m.shape[1])
        area += jnp.sum(jax.lax.population_count(b).astype(jnp.int32), axis=(-2, -1))
        return (b[:, -1] & 1, last, area), jnp.swapaxes(d, -1, -2)  # (K, Wc, R / 8)

    (above, last, area), packed = scan_bands(
        fn, (jnp.zeros((K, Wc), jnp.uint8), jnp.zeros((K, Wc), bool), jnp.zeros(K, jnp.int32)), low, rows, cols, crop_hw, tiles)
    packed = jnp.moveaxis(packed, 0, 2).reshape(K, Wc, -1)  # (bands, K, Wc, R/8) -> (K, Wc, Hc/8)
    # Bit 0 was taken against a zero pixel above the crop; in a full-height crop the pixel before
    # column x's first is column x - 1's last: flip where that one is set (column cw's change
    # is the last column's bit ch).
    before = full_height & (x < cw) & jnp.pad(last, ((0, 0), (1, 0)))[:, :Wc]
    first = packed[..., 0] ^ (before.astype(jnp.uint8) << 7)
    end = (above * end_ok).astype(jnp.uint8) << 7  # bit Hc: the change after row Hc - 1 when ch == Hc
    pad = jnp.zeros((K, Wc, 7), jnp.uint8)
    return jnp.concatenate([first[..., None], packed[..., 1:], end[..., None], pad], axis=-1), area
