"""The automatic mask generator's device side: one jitted call per crop decodes every point batch,
upsamples, filters by predicted IoU, stability and crop edges, runs NMS and compacts the
survivors to the front of fixed-size buffers with validity masks. Only small arrays (scores,
boxes, survivor indexes: one fetch per crop) and, at the end, the kept masks bit-packed cross to
the host.

Image-size independence: upsampling to the crop's size uses banded resampling weights passed in
as arrays and padded to a coarse canvas (`canvas`: a few sizes per octave), the true size passed
as an array, so one compilation serves every photo whose crops fall on the same canvas.
Full-resolution logits are never whole in memory: statistics, renderings and run-length
boundaries are made one band of rows at a time (`mask_tiles`). How much is done at once
(masks and row tiles per step, crops per call) is a per-backend `BackendPlan`: a few
cache-sized masks on CPU, larger slabs on accelerators.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ..modeling.prompt_encoder import IGNORE_LABEL
from ..resample import BAND_TILE, band_len, band_resample, band_weights
from .mask_tiles import band_boundaries, band_masks, band_stats, boxes_from_extents
from .predictor import Prompts, decode_prompts, dense_pe


class AmgSettings(NamedTuple):
    """The generator's thresholds, as float32 scalars (arrays, so new values never recompile)."""

    pred_iou_thresh: jax.Array
    stability_score_thresh: jax.Array
    stability_score_offset: jax.Array
    box_nms_thresh: jax.Array
    mask_threshold: jax.Array


MASK_CHUNK = 4  # masks upsampled together on CPU, one row tile at a time: they stay in cache
BAND_BYTES = 12  # device bytes a pixel of a band of rows takes while its statistics are made (CPU's memory analysis)


class BackendPlan(NamedTuple):
    """How much one backend does at once. stats_bytes: intermediates of the upsampling live at
    once, half for a chunk of masks' width-resampled logits (4h x Wc float32 each), half for one
    band of rows (about BAND_BYTES a pixel: the matmul's window and output, its transposed copy,
    the thresholded bits) (None: MASK_CHUNK masks, one tile a band); crop_group: crops embedded
    in one call and dispatched together, the previous group fetched while they run (so up to
    two groups' candidate logits, 0.8 GB per 1,024-point crop, are on the device at once)."""

    stats_bytes: int | None
    crop_group: int


PLANS = {"cpu": BackendPlan(None, 1)}
ACCELERATOR_PLAN = BackendPlan(1 << 30, 5)  # GPU and TPU: 1 GiB slabs (fewer, larger steps); a crop layer of 4 and the image in one group


def backend_plan(platform: str) -> BackendPlan:
    return PLANS.get(platform, ACCELERATOR_PLAN)


def stats_chunk(plan: BackendPlan, masks: int, canvas_hw: tuple[int, int], low_len: int = 256) -> int:
    """Masks upsampled together (static): half the plan's budget over a mask's width-resampled
    logits (low_len x canvas width, float32), balanced so `masks` splits evenly."""
    if plan.stats_bytes is None:
        return MASK_CHUNK
    limit = max(1, plan.stats_bytes // 2 // (4 * low_len * canvas_hw[1]))
    steps = -(-masks // limit)
    return -(-masks // steps)


def band_tiles(plan: BackendPlan, chunk: int, canvas_hw: tuple[int, int], low_len: int = 256) -> int:
    """Row tiles per band (static): the most, dividing the canvas's tiles, whose window (L rows
    of float32 logits) and band (BAND_BYTES a pixel) for `chunk` masks fit half the plan's
    budget (CPU: one)."""
    if plan.stats_bytes is None:
        return 1
    T = canvas_hw[0] // BAND_TILE
    L = band_len(low_len, _canvas_floor(canvas_hw[0]))
    fit = max(1, plan.stats_bytes // 2 // (chunk * canvas_hw[1] * (BAND_BYTES * BAND_TILE + 4 * L)))
    return max(d for d in range(1, T + 1) if T % d == 0 and d <= fit)


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


def crop_resamplers(low_len: int, image_size: int, input_size, crop_size) -> tuple[tuple[np.ndarray, np.ndarray], ...]:
    """(rows, cols) `resample.band_weights` of the official postprocessing for a crop of
    crop_size (h, w) resized to input_size (h, w), on the crop's canvas."""
    return tuple(
        band_weights(low_len, image_size, int(i), int(o), canvas(int(o)), _canvas_floor(canvas(int(o))))
        for i, o in zip(input_size, crop_size)
    )


def upscale_to_crop(low_res: jax.Array, rows: tuple[jax.Array, jax.Array], cols: tuple[jax.Array, jax.Array]) -> jax.Array:
    """(K, 4h, 4w) logits -> (K, Hb, Wb) logits at the crop size (valid part top-left): the
    official postprocess_masks (upsample to image_size, crop the padding, resize to the crop) as
    two banded matmuls from `crop_resamplers`; width first, then height, as torch's kernel."""
    return band_resample(band_resample(low_res, cols, axis=-1), rows, axis=-2)


# ------------------------------------------------------------------ the official utils.amg maths
def calculate_stability_score(masks: jax.Array, mask_threshold: float, threshold_offset: float) -> jax.Array:
    """IoU of the masks thresholded at mask_threshold +/- offset. masks: (..., H, W) logits -> (...)."""
    intersections = jnp.sum(masks > (mask_threshold + threshold_offset), axis=(-2, -1), dtype=jnp.int32)
    unions = jnp.sum(masks > (mask_threshold - threshold_offset), axis=(-2, -1), dtype=jnp.int32)
    return intersections / unions


def batched_mask_to_box(masks: jax.Array) -> jax.Array:
    """(..., H, W) bool -> (..., 4) int32 inclusive xyxy boxes; [0, 0, 0, 0] for an empty mask."""
    return boxes_from_extents(jnp.any(masks, axis=-1), jnp.any(masks, axis=-2))


def is_box_near_crop_edge(boxes: jax.Array, crop_box: jax.Array, orig_box: jax.Array, atol: float = 20.0) -> jax.Array:
    """(N, 4) crop-frame boxes -> (N,) True where a box touches the crop's edge but not the image's."""
    crop_box = jnp.asarray(crop_box, jnp.float32)
    boxes = boxes.astype(jnp.float32) + jnp.stack([crop_box[0], crop_box[1], crop_box[0], crop_box[1]])
    near_crop_edge = jnp.abs(boxes - crop_box[None]) <= atol
    near_image_edge = jnp.abs(boxes - jnp.asarray(orig_box, jnp.float32)[None]) <= atol
    return jnp.any(near_crop_edge & ~near_image_edge, axis=1)


def box_area(boxes: jax.Array) -> jax.Array:
    return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


def nms(boxes: jax.Array, scores: jax.Array, valid: jax.Array, iou_threshold: float) -> tuple[jax.Array, jax.Array]:
    """Greedy NMS with torchvision's arithmetic and tie order, on fixed-size buffers.

    boxes (N, 4) xyxy, scores (N,), valid (N,) bool (invalid entries neither survive nor suppress).
    Returns `order` (N,) indexes sorted by descending score (stable, invalid last) and `keep` (N,)
    bool over that order: the survivors, best first, are order[keep]."""
    order = jnp.argsort(jnp.where(valid, -scores, jnp.inf), stable=True)
    b = jnp.asarray(boxes, jnp.float32)[order]
    area = box_area(b)

    def overlaps(i):  # (N,) IoU of box i with every box > threshold, torchvision's arithmetic
        lt = jnp.maximum(b[i, :2], b[:, :2])
        rb = jnp.minimum(b[i, 2:], b[:, 2:])
        wh = jnp.maximum(rb - lt, 0.0)
        inter = wh[:, 0] * wh[:, 1]
        return inter / (area[i] + area - inter) > iou_threshold

    n = b.shape[0]
    later = jnp.arange(n)

    def next_kept(keep, i):  # the first kept slot after i, or n when none is left
        return jnp.min(jnp.where(keep & (later > i), later, n))

    def body(state):
        i, keep = state
        keep = keep & ~(overlaps(i) & (later > i))
        return next_kept(keep, i), keep

    # One step per survivor, not per slot: suppressed and invalid slots (invalid ones sort last)
    # are skipped, so 3,072 slots with a few dozen survivors take a few dozen steps.
    keep = valid[order]
    _, keep = jax.lax.while_loop(lambda s: s[0] < n, body, (next_kept(keep, -1), keep))
    return order, keep


# ------------------------------------------------------------------------------- one crop
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
    hq_features: jax.Array | None = None,
    chunk: int = MASK_CHUNK,
    tiles: int = 1,
    multimask_output: bool = True,
    hq_token_only: bool = False,
) -> tuple[dict[str, jax.Array], jax.Array]:
    """All point batches of one crop, filtered and de-duplicated, survivors first.

    features (B, C, h, w) of all crops, crop_index () which one; points (nb, P, 2) xy in the
    crop's resized-input frame, point_valid (nb, P); rows / cols from `crop_resamplers`
    (Hc, Wc their canvas sizes); crop_hw (2,) the crop's size; crop_box, orig_box (4,) xyxy in
    image pixels; hq_features (B, 4h, 4w, C/8) of all crops for an HQ-SAM decoder, else None;
    chunk and tiles (static) masks upsampled together for the statistics and row tiles per band
    (`stats_chunk`, `band_tiles`); multimask_output and hq_token_only (static) as sam-hq's
    generator and predictor take them (an HQ decoder gives one mask per point: M = 1).
    Returns (small, low_res): `small` holds count () survivors and, per slot (N = nb * P * M,
    the first `count` the survivors in NMS order), index (N,) into the candidates, iou_preds,
    stability_score, boxes (N, 4) crop pixels and point_index; low_res (N, 4h, 4w) the
    logits of every candidate (gather the survivors with `take_rows`).
    """
    features = jax.lax.dynamic_index_in_dim(features, crop_index, keepdims=True)
    image_pe = dense_pe(graphdef, params)  # once, not per batch of points
    if hq_features is not None:
        hq_features = jax.lax.dynamic_index_in_dim(hq_features, crop_index, keepdims=True)

    def one_batch(args):
        pts, valid = args
        P = pts.shape[0]
        labels = jnp.where(valid, 1, IGNORE_LABEL)[:, None]
        prompts = Prompts(pts[:, None, :], labels, jnp.zeros((P, 4)), jnp.zeros(P, bool))
        low, iou = decode_prompts(graphdef, params, features, prompts, multimask_output, hq_features, hq_token_only, image_pe)
        M = iou.shape[1]
        low, iou = low.reshape((P * M,) + low.shape[2:]), iou.reshape(P * M)

        def stats(masks):  # `chunk` masks at a time, a band of rows at a time: no full-size logits
            return band_stats(masks, rows, cols, crop_hw, settings.mask_threshold, settings.stability_score_offset, tiles)

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
                 cols: tuple[jax.Array, jax.Array], crop_hw: jax.Array, mask_threshold: jax.Array,
                 chunk: int = MASK_CHUNK, tiles: int = 1) -> tuple[jax.Array, jax.Array]:
    """low_res[index] (K, 4h, 4w) logits -> masks (K, Hc, Wc / 8) uint8 at the crop size on the
    canvas (False outside the crop), 8 pixels a byte along the width (np.unpackbits, axis=-1)
    for an 8 times smaller copy to the host, and their areas (K,) int32; chunk and tiles
    (static) as `process_crop`'s."""
    return _chunked(lambda low: band_masks(low, rows, cols, crop_hw, mask_threshold, tiles), low_res[index], chunk)


def render_boundaries(low_res: jax.Array, index: jax.Array, rows: tuple[jax.Array, jax.Array],
                      cols: tuple[jax.Array, jax.Array], crop_hw: jax.Array, crop_xy: jax.Array,
                      image_hw: jax.Array, mask_threshold: jax.Array, chunk: int = MASK_CHUNK,
                      tiles: int = 1) -> tuple[jax.Array, jax.Array]:
    """low_res[index] (K, 4h, 4w) logits -> the masks' run-length boundaries in the image
    (K, Wc, Hc / 8 + 8) uint8 and areas (K,) int32 (`mask_tiles.band_boundaries`): what the
    RLE outputs need, in place of the masks. crop_xy (2,) and image_hw (2,) int32."""
    return _chunked(lambda low: band_boundaries(low, rows, cols, crop_hw, crop_xy, image_hw, mask_threshold, tiles),
                    low_res[index], chunk)


process_crop_jit = jax.jit(process_crop, static_argnames=("graphdef", "chunk", "tiles", "multimask_output", "hq_token_only"))
take_rows_jit = jax.jit(take_rows)
render_masks_jit = jax.jit(render_masks, static_argnames=("chunk", "tiles"))
render_boundaries_jit = jax.jit(render_boundaries, static_argnames=("chunk", "tiles"))
nms_jit = jax.jit(nms)
