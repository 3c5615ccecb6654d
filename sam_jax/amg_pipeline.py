"""Device side of automatic mask generation: one jitted call per crop decodes every point batch,
upsamples, filters by predicted IoU, stability and crop edges, runs NMS and compacts the
survivors to the front of fixed-size buffers with validity masks. Only small arrays (scores,
boxes, survivor indexes: one fetch per crop) and, at the end, the kept masks bit-packed cross to
the host.

Image-size independence: upsampling to the crop's size uses banded resampling weights passed in
as arrays and padded to a coarse canvas (`canvas`: a few sizes per octave), the true size passed
as an array, so one compilation serves every photo whose crops fall on the same canvas.
How much is done per call (masks upsampled together for the statistics, crops per call) is a
per-backend `BackendPlan`: a few cache-sized masks on CPU, large slabs on accelerators.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from .functional import Prompts, decode_prompts
from .modeling.prompt_encoder import IGNORE_LABEL
from .utils.amg import batched_mask_to_box, calculate_stability_score, is_box_near_crop_edge, nms
from .utils.resample import linear_taps

class AmgSettings(NamedTuple):
    """The generator's thresholds, as float32 scalars (arrays, so new values never recompile)."""

    pred_iou_thresh: jax.Array
    stability_score_thresh: jax.Array
    stability_score_offset: jax.Array
    box_nms_thresh: jax.Array
    mask_threshold: jax.Array


MASK_CHUNK = 4  # masks upsampled together on CPU when only their statistics are needed: they stay in cache
BAND_TILE = 64  # outputs per tile of the banded resampling matmul


class BackendPlan(NamedTuple):
    """How much one backend does at once. stats_bytes: full-resolution float32 logits live at
    once while computing statistics (None: MASK_CHUNK masks); crop_group: crops embedded in one
    call and dispatched together, the previous group fetched while they run (so up to two
    groups' candidate logits, 0.8 GB per 1,024-point crop, are on the device at once)."""

    stats_bytes: int | None
    crop_group: int


PLANS = {"cpu": BackendPlan(None, 1)}
ACCELERATOR_PLAN = BackendPlan(2 << 30, 5)  # GPU and TPU: 2 GiB slabs; a crop layer of 4 and the image in one group


def backend_plan(platform: str) -> BackendPlan:
    return PLANS.get(platform, ACCELERATOR_PLAN)


def stats_chunk(plan: BackendPlan, masks: int, canvas_hw: tuple[int, int]) -> int:
    """Masks upsampled together (static): the plan's budget over about three float32 canvases
    per mask (logits and the two thresholded counts), balanced so `masks` splits evenly."""
    if plan.stats_bytes is None:
        return MASK_CHUNK
    limit = max(1, plan.stats_bytes // (12 * canvas_hw[0] * canvas_hw[1]))
    steps = -(-masks // limit)
    return -(-masks // steps)


def _chunked(fn, x: jax.Array, chunk: int):
    """fn over x in chunks of `chunk` rows (x.shape[0] is padded up to a multiple)."""
    n = x.shape[0]
    pad = -n % chunk
    xs = jnp.pad(x, [(0, pad)] + [(0, 0)] * (x.ndim - 1)).reshape((-1, chunk) + x.shape[1:])
    out = jax.lax.map(fn, xs)
    return jax.tree.map(lambda a: a.reshape((-1,) + a.shape[2:])[:n], out)


def _canvas_ladder(limit: int = 1 << 16) -> tuple[int, ...]:
    """256, then steps of 128 to 1280, 256 to 2560, 512 to 5120, ...: at most ~14% padding past
    1024 px (10% below), a handful of sizes for all the photos of a camera."""
    sizes, step = [256], 128
    while sizes[-1] < limit:
        sizes.append(sizes[-1] + step)
        if sizes[-1] >= 10 * step:
            step *= 2
    return tuple(sizes)


CANVASES = _canvas_ladder()


def canvas(n: int) -> int:
    """The canvas a crop side of n pixels is computed on (a multiple of BAND_TILE)."""
    return CANVASES[int(np.searchsorted(CANVASES, n))]


def _canvas_floor(padded_out: int) -> int:
    """The smallest side that uses this canvas."""
    i = CANVASES.index(padded_out)
    return 1 if i == 0 else CANVASES[i - 1] + 1


BAND_TILE = 64  # outputs per tile of the banded resampling matmul


def band_len(low_len: int, padded_out: int) -> int:
    """Static window length of the banded resampling: how many low-res rows one tile of
    BAND_TILE outputs can read, for any output size on the canvas padded_out."""
    min_out = _canvas_floor(padded_out)
    return min(low_len, int(np.ceil((BAND_TILE - 1) * low_len / min_out)) + 4)


def resample_weights(low_len: int, image_size: int, input_len: int, out_len: int, padded_out: int) -> tuple[np.ndarray, np.ndarray]:
    """The official postprocess_masks along one axis as a banded matrix: low-res logits
    (low_len) -> upsample to image_size -> keep the first input_len (the unpadded resized image)
    -> resample to out_len (the crop), each step torch's linear resampling (align_corners=False).

    Returns starts (T,) int32 and weights (T, BAND_TILE, L) float32, T = padded_out / BAND_TILE:
    output o = t * BAND_TILE + k is sum_l weights[t, k, l] * low[starts[t] + l]. Rows past
    out_len are zero. The composite weights are products of torch's float32 taps taken in
    float64, so results differ from resampling twice only in float32 rounding."""
    a0, a1, aw0, aw1 = linear_taps(low_len, image_size)
    b0, b1, bw0, bw1 = linear_taps(input_len, out_len)
    dense = np.zeros((padded_out, low_len))
    rows = np.arange(out_len)
    for bi, bw in ((b0, bw0), (b1, bw1)):
        for ai, aw in ((a0, aw0), (a1, aw1)):
            np.add.at(dense, (rows, ai[bi]), bw.astype(np.float64) * aw[bi].astype(np.float64))
    L, T = band_len(low_len, padded_out), padded_out // BAND_TILE
    tiles = dense.reshape(T, BAND_TILE, low_len)
    used = tiles.any(axis=1)
    first = np.where(used.any(1), used.argmax(1), 0)
    last = np.where(used.any(1), low_len - 1 - used[:, ::-1].argmax(1), 0)
    starts = np.minimum(first, low_len - L)
    assert (last - starts < L).all(), "band window too short"  # band_len bounds the span
    window = starts[:, None] + np.arange(L)
    weights = np.take_along_axis(tiles, np.broadcast_to(window[:, None, :], (T, BAND_TILE, L)), axis=2)
    return starts.astype(np.int32), weights.astype(np.float32)


def crop_resamplers(low_len: int, image_size: int, input_size, crop_size) -> tuple[tuple[np.ndarray, np.ndarray], ...]:
    """(rows, cols) resample_weights for a crop of crop_size (h, w) resized to input_size (h, w)."""
    return tuple(
        resample_weights(low_len, image_size, int(i), int(o), canvas(int(o))) for i, o in zip(input_size, crop_size)
    )


def _band_resample(x: jax.Array, band: tuple[jax.Array, jax.Array], axis: int) -> jax.Array:
    starts, weights = band
    idx = starts[:, None] + jnp.arange(weights.shape[-1])
    hi = jax.lax.Precision.HIGHEST  # full float32 on TPU too
    if axis == -1:  # (..., R, low) -> (..., R, padded_out)
        win = jnp.take(x, idx, axis=-1)  # (..., R, T, L)
        out = jnp.einsum("...rtl,tkl->...rtk", win, weights, precision=hi)
        return out.reshape(x.shape[:-1] + (-1,))
    win = jnp.take(x, idx, axis=-2)  # (..., T, L, C)
    out = jnp.einsum("...tlc,tkl->...tkc", win, weights, precision=hi)
    return out.reshape(x.shape[:-2] + (-1, x.shape[-1]))


def upscale_to_crop(low_res: jax.Array, rows: tuple[jax.Array, jax.Array], cols: tuple[jax.Array, jax.Array]) -> jax.Array:
    """(K, 4h, 4w) logits -> (K, Hb, Wb) logits at the crop size (valid part top-left): the
    official postprocess_masks (upsample to image_size, crop the padding, resize to the crop) as
    two banded matmuls from `crop_resamplers`; width first, then height, as torch's kernel."""
    return _band_resample(_band_resample(low_res, cols, axis=-1), rows, axis=-2)


def _inside(rows: tuple[jax.Array, jax.Array], cols: tuple[jax.Array, jax.Array], crop_hw: jax.Array) -> jax.Array:
    """(Hb, Wb) bool: True on the crop, False on the bucket padding."""
    Hb, Wb = rows[1].shape[0] * BAND_TILE, cols[1].shape[0] * BAND_TILE
    return (jnp.arange(Hb)[:, None] < crop_hw[0]) & (jnp.arange(Wb)[None, :] < crop_hw[1])


def _mask_stats(logits: jax.Array, mask_threshold, offset) -> tuple[jax.Array, jax.Array]:
    """(K, H, W) logits -> stability score (K,) and inclusive xyxy boxes (K, 4) of logits > threshold."""
    return calculate_stability_score(logits, mask_threshold, offset), batched_mask_to_box(logits > mask_threshold)


def process_crop(
    graphdef: nnx.GraphDef,
    params: nnx.State,
    features: jax.Array,
    crop_index: jax.Array,
    points: jax.Array,
    point_valid: jax.Array,
    rows: tuple[jax.Array, jax.Array],
    cols: tuple[jax.Array, jax.Array],
    crop_hw: jax.Array,
    crop_box: jax.Array,
    orig_box: jax.Array,
    settings: AmgSettings,
    chunk: int = MASK_CHUNK,
) -> tuple[dict[str, jax.Array], jax.Array]:
    """All point batches of one crop, filtered and de-duplicated, survivors first.

    features (B, C, h, w) of all crops, crop_index () which one; points (nb, P, 2) xy in the
    crop's resized-input frame, point_valid (nb, P); rows / cols from `crop_resamplers`
    (Hc, Wc their canvas sizes); crop_hw (2,) the crop's size; crop_box, orig_box (4,) xyxy in
    image pixels; chunk (static) masks upsampled together for the statistics (`stats_chunk`).
    Returns (small, low_res): `small` holds count () survivors and, per slot (N = nb * P * M,
    the first `count` the survivors in NMS order), index (N,) into the candidates, iou_preds,
    stability_score, boxes (N, 4) crop pixels and point_index; low_res (N, 4h, 4w) the
    logits of every candidate (gather the survivors with `take_rows`).
    """
    inside = _inside(rows, cols, crop_hw)
    features = jax.lax.dynamic_index_in_dim(features, crop_index, keepdims=True)

    def one_batch(args):
        pts, valid = args
        P = pts.shape[0]
        labels = jnp.where(valid, 1, IGNORE_LABEL)[:, None]
        prompts = Prompts(pts[:, None, :], labels, jnp.zeros((P, 4)), jnp.zeros(P, bool))
        low, iou = decode_prompts(graphdef, params, features, prompts, True)
        M = iou.shape[1]
        low, iou = low.reshape((P * M,) + low.shape[2:]), iou.reshape(P * M)

        def stats(masks):  # `chunk` masks at a time: the full-size logits never exist for all
            logits = jnp.where(inside, upscale_to_crop(masks, rows, cols), -jnp.inf)
            return _mask_stats(logits, settings.mask_threshold, settings.stability_score_offset)

        stability, boxes = _chunked(stats, low, chunk)
        keep = jnp.repeat(valid, M) & ((settings.pred_iou_thresh <= 0) | (iou > settings.pred_iou_thresh))
        keep &= (settings.stability_score_thresh <= 0) | (stability >= settings.stability_score_thresh)
        keep &= ~is_box_near_crop_edge(boxes, crop_box, orig_box)
        return low, iou, stability, boxes, keep

    low, iou, stability, boxes, keep = jax.lax.map(one_batch, (points, point_valid))
    flat = lambda a: a.reshape((-1,) + a.shape[2:])
    low, iou, stability, boxes, keep = map(flat, (low, iou, stability, boxes, keep))
    M = iou.shape[0] // (points.shape[0] * points.shape[1])
    order, nms_keep = nms(boxes, iou, keep, settings.box_nms_thresh)
    index = order[jnp.argsort(~nms_keep, stable=True)]  # survivors first, in NMS order
    small = dict(count=jnp.sum(nms_keep, dtype=jnp.int32), index=index, iou_preds=iou[index],
                 stability_score=stability[index], boxes=boxes[index], point_index=index // M)
    return small, low


def take_rows(x: jax.Array, index: jax.Array) -> jax.Array:
    """x[index]: (N, ...) -> (K, ...), K a count bucket (a gather compiled per bucket, not per count)."""
    return x[index]


def render_masks(low_res: jax.Array, index: jax.Array, rows: tuple[jax.Array, jax.Array],
                 cols: tuple[jax.Array, jax.Array], crop_hw: jax.Array, mask_threshold: jax.Array) -> jax.Array:
    """low_res[index] (K, 4h, 4w) logits -> (K, Hc, Wc / 8) uint8: masks at the crop size on
    the canvas (False outside the crop), 8 pixels a byte along the width (np.unpackbits, axis=-1)
    for an 8 times smaller copy to the host."""
    inside = _inside(rows, cols, crop_hw)
    masks = inside & (upscale_to_crop(low_res[index], rows, cols) > mask_threshold)
    return jnp.packbits(masks, axis=-1)


process_crop_jit = jax.jit(process_crop, static_argnames=("graphdef", "chunk"))
take_rows_jit = jax.jit(take_rows)
render_masks_jit = jax.jit(render_masks)
nms_jit = jax.jit(nms)
