"""torch's `F.interpolate`, exactly, in every form sam-jax needs: the one module for resizing.

Weights are computed on the host in float32 by torch's own formulas
(`aten/src/ATen/native/UpSample.h`, align_corners=False), so a resampled value is the float torch
would give (up to the order of float32 additions where a product is used). Not
`jax.image.resize`: it antialiases when shrinking and its cubic kernel has a = -0.5, where
torch's has a = -0.75.

Host (NumPy), for weights that change resolution (`sam_jax.load(..., image_size=N)`):
    linear_taps, cubic_taps, linear_matrix, bicubic_matrix, resample, resize_linear, resize_bicubic
    antialiased_linear_weights      torch's antialiased bilinear (`apply_image_torch`)
Device (jax.numpy, inside jit):
    interpolate_linear / interpolate_bilinear   gather-and-lerp: relative-position tables, masks
    upsample_logits                  the same maths with slices: its gradient is cheap to compile (training)
    band_weights / band_resample     a chain of resizes (the official postprocess) as one banded
                                     matmul per axis (automatic masks: any crop on a coarse canvas)

    W = bicubic_matrix(64, 32)              # (32, 64): out = W @ x along one axis
    y = resample(x, bicubic_matrix(64, 32), axis=1)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
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


def antialiased_linear_weights(in_size: int, out_size: int) -> np.ndarray:
    """(out_size, in_size) float32 matrix of torch's `F.interpolate(mode="bilinear",
    align_corners=False, antialias=True)` along one axis: a triangle filter widened by the
    scale when shrinking, each row normalised to sum 1 (the Pillow algorithm torch follows)."""
    scale = in_size / out_size
    support = scale if scale >= 1.0 else 1.0
    invscale = 1.0 / scale if scale >= 1.0 else 1.0
    out = np.zeros((out_size, in_size), np.float64)
    for i in range(out_size):
        center = scale * (i + 0.5)
        xmin = max(int(center - support + 0.5), 0)
        xmax = min(int(center + support + 0.5), in_size)
        j = np.arange(xmin, xmax)
        w = np.maximum(0.0, 1.0 - np.abs((j - center + 0.5) * invscale))
        total = w.sum()
        out[i, xmin:xmax] = w / total if total != 0.0 else w
    return out.astype(np.float32)


# ------------------------------------------------------------------------------------ device
def interpolate_linear(x: jax.Array, size: int, axis: int) -> jax.Array:
    """F.interpolate(mode='linear'/'bilinear', align_corners=False) along one axis; size is static."""
    if x.shape[axis] == size:
        return x
    i0, i1, w0, w1 = linear_taps(x.shape[axis], size)
    shape = [1] * x.ndim
    shape[axis] = size
    w0, w1 = jnp.asarray(w0.reshape(shape), x.dtype), jnp.asarray(w1.reshape(shape), x.dtype)
    return jnp.take(x, i0, axis=axis) * w0 + jnp.take(x, i1, axis=axis) * w1


def interpolate_bilinear(x: jax.Array, size: tuple[int, int]) -> jax.Array:
    """F.interpolate(x, size, mode='bilinear', align_corners=False) on (..., H, W) arrays.

    Separable gather-and-lerp rather than a resize kernel: no antialiasing when shrinking (the
    torch default), and O(1) work per output pixel instead of a dense resampling matmul."""
    x = interpolate_linear(x, size[1], axis=-1)
    return interpolate_linear(x, size[0], axis=-2)


def upsample_logits(x: jax.Array, size: int) -> jax.Array:
    """(..., n, n) -> (..., size, size): `interpolate_bilinear`, written with slices when size is
    a multiple of n (the model's first postprocessing stage). The gather form's gradient is a
    scatter whose constant indices XLA spends minutes folding; this one's is slices."""
    return _upsample_axis(_upsample_axis(x, size, x.ndim - 1), size, x.ndim - 2)


def _upsample_axis(x: jax.Array, out: int, axis: int) -> jax.Array:
    n = x.shape[axis]
    if out == n:
        return x
    i0, i1, w0, w1 = linear_taps(n, out)
    f = out // n
    # Output f*i + r reads padded positions (i + a_r, i + a_r + 1), where padded j is x[clip(j - 1)].
    offsets = [int(i0[f + r]) for r in range(f)] if out % n == 0 and n > 1 else []
    i = np.arange(n)
    exact = bool(offsets) and all(
        np.array_equal(np.clip(i + a - 1, 0, n - 1), i0[r::f]) and np.array_equal(np.clip(i + a, 0, n - 1), i1[r::f])
        for r, a in enumerate(offsets)
    )
    if not exact:
        return interpolate_linear(x, out, axis)
    first = jax.lax.slice_in_dim(x, 0, 1, axis=axis)
    last = jax.lax.slice_in_dim(x, n - 1, n, axis=axis)
    xp = jnp.concatenate([first, x, last], axis=axis)
    shape = [1] * x.ndim
    shape[axis] = n
    phases = []
    for r, a in enumerate(offsets):
        lo = jax.lax.slice_in_dim(xp, a, a + n, axis=axis)
        hi = jax.lax.slice_in_dim(xp, a + 1, a + 1 + n, axis=axis)
        phases.append(lo * jnp.asarray(w0[r::f].reshape(shape), x.dtype) + hi * jnp.asarray(w1[r::f].reshape(shape), x.dtype))
    y = jnp.stack(phases, axis=axis + 1)
    return y.reshape(x.shape[:axis] + (out,) + x.shape[axis + 1 :])


BAND_TILE = 64  # outputs per tile of the banded resampling matmul


def band_len(low_len: int, min_out: int) -> int:
    """Static window length of the banded resampling: how many low-res rows one tile of
    BAND_TILE outputs can read, for any output size of at least `min_out`."""
    return min(low_len, int(np.ceil((BAND_TILE - 1) * low_len / min_out)) + 4)


def band_weights(low_len: int, image_size: int, input_len: int, out_len: int, padded_out: int,
                 min_out: int) -> tuple[np.ndarray, np.ndarray]:
    """The official `postprocess_masks` along one axis as a banded matrix: low-res logits
    (low_len) -> upsample to image_size -> keep the first input_len (the unpadded resized image)
    -> resample to out_len, each step torch's linear resampling (align_corners=False).

    Returns starts (T,) int32 and weights (T, BAND_TILE, L) float32, T = padded_out / BAND_TILE,
    L = band_len(low_len, min_out) (the same for every out_len >= min_out on this canvas, so one
    compilation serves them): output o = t * BAND_TILE + k is sum_l weights[t, k, l] *
    low[starts[t] + l]. Rows past out_len are zero. The composite weights are products of
    torch's float32 taps taken in float64, so results differ from resampling twice only in
    float32 rounding."""
    a0, a1, aw0, aw1 = linear_taps(low_len, image_size)
    b0, b1, bw0, bw1 = linear_taps(input_len, out_len)
    dense = np.zeros((padded_out, low_len))
    rows = np.arange(out_len)
    for bi, bw in ((b0, bw0), (b1, bw1)):
        for ai, aw in ((a0, aw0), (a1, aw1)):
            np.add.at(dense, (rows, ai[bi]), bw.astype(np.float64) * aw[bi].astype(np.float64))
    L, T = band_len(low_len, min_out), padded_out // BAND_TILE
    tiles = dense.reshape(T, BAND_TILE, low_len)
    used = tiles.any(axis=1)
    first = np.where(used.any(1), used.argmax(1), 0)
    last = np.where(used.any(1), low_len - 1 - used[:, ::-1].argmax(1), 0)
    starts = np.minimum(first, low_len - L)
    assert (last - starts < L).all(), "band window too short"  # band_len bounds the span
    window = starts[:, None] + np.arange(L)
    weights = np.take_along_axis(tiles, np.broadcast_to(window[:, None, :], (T, BAND_TILE, L)), axis=2)
    return starts.astype(np.int32), weights.astype(np.float32)


def band_resample(x: jax.Array, band: tuple[jax.Array, jax.Array], axis: int) -> jax.Array:
    """`x` resampled along axis -1 or -2 by `band_weights` (starts, weights): (..., low) ->
    (..., padded_out), in float32 products on every backend. Starts given as a NumPy array are
    compiled in (the predictor's fixed sizes); as a JAX array, they are an input (AMG's crops)."""
    starts, weights = band
    L = weights.shape[-1]
    hi = jax.lax.Precision.HIGHEST  # full float32 on TPU too
    if isinstance(starts, np.ndarray):  # windows known when tracing: static slices (a gather is 3x slower on a CPU)
        win = jnp.stack([jax.lax.slice_in_dim(x, int(s), int(s) + L, axis=x.ndim + axis) for s in starts], axis=axis - 1)
    else:
        win = jnp.take(x, starts[:, None] + jnp.arange(L), axis=axis)
    if axis == -1:  # (..., R, low) -> (..., R, padded_out); win (..., R, T, L)
        out = jnp.einsum("...rtl,tkl->...rtk", win, weights, precision=hi)
        return out.reshape(x.shape[:-1] + (-1,))
    # win (..., T, L, C)
    out = jnp.einsum("...tlc,tkl->...tkc", win, weights, precision=hi)
    return out.reshape(x.shape[:-2] + (-1, x.shape[-1]))
