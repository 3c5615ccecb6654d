"""torch's `F.interpolate` as host-side (NumPy) resampling matrices: linear and bicubic, with
`align_corners=False` and no antialiasing, the weights computed in float32 by torch's own formulas
(`aten/src/ATen/native/UpSample.h`), so a resized weight is the same float torch would give.

Used where weights change resolution (`sam_jax.load(..., image_size=N)`) and by the model's exact
linear resampling of masks and relative-position tables. Not `jax.image.resize`: that one
antialiases when shrinking and its cubic kernel has a = -0.5, where torch's has a = -0.75.

    W = bicubic_matrix(64, 32)              # (32, 64): out = W @ x along one axis
    y = resample(x, bicubic_matrix(64, 32), axis=1)
"""

from __future__ import annotations

import numpy as np

CUBIC_A = np.float32(-0.75)  # torch's (and OpenCV's) cubic convolution coefficient


def _source_coords(in_size: int, out_size: int) -> np.ndarray:
    """(out_size,) float32 source coordinate of each output sample, align_corners=False: the
    centres of the output pixels mapped into the input, torch's `area_pixel_compute_source_index`
    before its linear-only clamp at 0."""
    scale = np.float32(in_size) / np.float32(out_size)
    # scale * (i + 0.5) - 0.5 rounded once, as the fused multiply-add torch's compiled kernel uses
    # (the float64 product of two float32 values is exact).
    return (np.float64(scale) * (np.arange(out_size) + 0.5) - 0.5).astype(np.float32)


def linear_taps(in_size: int, out_size: int) -> tuple[np.ndarray, ...]:
    """Source indexes and weights of torch's linear resampling (align_corners=False, no antialias):
    output i = x[i0[i]] * w0[i] + x[i1[i]] * w1[i]. Float32 like torch's CPU kernel."""
    src = np.maximum(_source_coords(in_size, out_size), np.float32(0.0))
    i0 = np.minimum(src.astype(np.int64), in_size - 1)
    i1 = np.minimum(i0 + 1, in_size - 1)
    w1 = (src - i0.astype(np.float32)).astype(np.float32)
    return i0, i1, np.float32(1.0) - w1, w1


def cubic_taps(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Source indexes (out_size, 4) and weights (out_size, 4) of torch's bicubic resampling
    (align_corners=False, no antialias, a = -0.75): output i = sum_j x[idx[i, j]] * w[i, j].
    Indexes beyond the edges are clamped to it (the border sample repeats), as torch does."""
    src = _source_coords(in_size, out_size)
    base = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
    t = np.clip(src - base.astype(np.float32), np.float32(0.0), np.float32(1.0)).astype(np.float32)
    a, one = CUBIC_A, np.float32(1.0)

    def fma(x, y, z):  # x * y + z rounded once to float32, as torch's compiled polynomials
        return (np.float64(x) * np.float64(y) + np.float64(z)).astype(np.float32)

    def near(x):  # |x| <= 1: ((a + 2) x - (a + 3)) x^2 + 1
        return fma(fma(a + np.float32(2.0), x, -(a + np.float32(3.0))) * x, x, one)

    def far(x):  # 1 < |x| < 2: ((a x - 5a) x + 8a) x - 4a
        return fma(fma(fma(a, x, np.float32(-5.0) * a), x, np.float32(8.0) * a), x, np.float32(-4.0) * a)

    weights = np.stack([far(t + one), near(t), near(one - t), far((one - t) + one)], axis=1).astype(np.float32)
    idx = np.clip(base[:, None] + np.arange(-1, 3)[None, :], 0, in_size - 1)
    return idx, weights


def linear_matrix(in_size: int, out_size: int) -> np.ndarray:
    """(out_size, in_size) float32 matrix of `F.interpolate(mode='linear', align_corners=False)`."""
    i0, i1, w0, w1 = linear_taps(in_size, out_size)
    m = np.zeros((out_size, in_size), np.float32)
    rows = np.arange(out_size)
    np.add.at(m, (rows, i0), w0)
    np.add.at(m, (rows, i1), w1)  # i0 == i1 at the edges: the weights add up to 1 there
    return m


def bicubic_matrix(in_size: int, out_size: int) -> np.ndarray:
    """(out_size, in_size) float32 matrix of one axis of `F.interpolate(mode='bicubic',
    align_corners=False)`; the 2-D resize is this matrix applied along both axes."""
    idx, w = cubic_taps(in_size, out_size)
    m = np.zeros((out_size, in_size), np.float32)
    np.add.at(m, (np.repeat(np.arange(out_size), 4), idx.ravel()), w.ravel())  # clamped taps accumulate
    return m


def resample(x: np.ndarray, matrix: np.ndarray, axis: int) -> np.ndarray:
    """`x` resampled along `axis` by an (out, in) matrix, accumulated in float64 and returned in
    x's dtype."""
    y = np.tensordot(matrix.astype(np.float64), np.asarray(x, np.float64), axes=([1], [axis]))
    return np.moveaxis(y, 0, axis).astype(np.asarray(x).dtype)


def resize_linear(x: np.ndarray, size: int, axis: int) -> np.ndarray:
    """`F.interpolate(mode='linear', align_corners=False)` of `x` along `axis` to `size`."""
    return x if x.shape[axis] == size else resample(x, linear_matrix(x.shape[axis], size), axis)


def resize_bicubic(x: np.ndarray, size: tuple[int, int], axes: tuple[int, int]) -> np.ndarray:
    """`F.interpolate(mode='bicubic', align_corners=False)` of `x` over two axes (rows, columns)
    to `size` (h, w): separable, each output the same 4 x 4 weighted sum as torch's."""
    for n, axis in zip(size, axes):
        if x.shape[axis] != n:
            x = resample(x, bicubic_matrix(x.shape[axis], n), axis)
    return x
