"""Device side of automatic mask generation: one jitted call per crop decodes every point batch,
upsamples, filters by predicted IoU, stability and crop edges, and runs NMS, on fixed-size
buffers with validity masks. Only small arrays (scores, boxes, the keep mask) and, at the end,
the kept masks cross to the host.

Image-size independence: upsampling to the crop's size uses resampling taps passed in as arrays
and padded to a size bucket (a multiple of 128), so one compilation serves every image whose crop
sizes fall in the same buckets.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from .functional import decode_prompts
from .modeling.common import _linear_taps
from .modeling.prompt_encoder import IGNORE_LABEL
from .utils.amg import batched_mask_to_box, calculate_stability_score, is_box_near_crop_edge, nms

SIZE_BUCKET = 128
MASK_CHUNK = 4  # masks upsampled together when only their statistics are needed


def _chunked(fn, x: jax.Array, chunk: int):
    """fn over x in chunks of `chunk` rows (x.shape[0] is padded up to a multiple)."""
    n = x.shape[0]
    pad = -n % chunk
    xs = jnp.pad(x, [(0, pad)] + [(0, 0)] * (x.ndim - 1)).reshape((-1, chunk) + x.shape[1:])
    out = jax.lax.map(fn, xs)
    return jax.tree.map(lambda a: a.reshape((-1,) + a.shape[2:])[:n], out)


def size_bucket(n: int) -> int:
    return -(-n // SIZE_BUCKET) * SIZE_BUCKET


def resize_taps(in_size: int, out_size: int, padded: int) -> np.ndarray:
    """(4, padded) float32 rows i0, i1, w0, w1 of torch's linear resampling from in_size to
    out_size, zero-padded past out_size (padding outputs read index 0 with weight 0)."""
    taps = np.zeros((4, padded), np.float32)
    taps[:, :out_size] = np.stack(_linear_taps(in_size, out_size))
    return taps


def _resize_twice(x: jax.Array, size: int, taps: jax.Array, axis: int) -> jax.Array:
    """Linear resampling along `axis` to the static `size`, then by the runtime `taps` (4, out),
    evaluated at the output positions only: the same products and sums as resampling twice,
    without materialising the intermediate at `size`."""
    i0, i1, w0, w1 = (jnp.asarray(t) for t in _linear_taps(x.shape[axis], size))
    j0, j1 = taps[0].astype(jnp.int32), taps[1].astype(jnp.int32)
    shape = [1] * x.ndim
    shape[axis] = taps.shape[1]

    def first(j):  # the first resampling's value at intermediate positions j
        return jnp.take(x, i0[j], axis=axis) * w0[j].reshape(shape) + jnp.take(x, i1[j], axis=axis) * w1[j].reshape(shape)

    return first(j0) * taps[2].reshape(shape) + first(j1) * taps[3].reshape(shape)


def upscale_to_crop(low_res: jax.Array, image_size: int, taps_h: jax.Array, taps_w: jax.Array) -> jax.Array:
    """(K, 4h, 4w) logits -> (K, Hb, Wb) logits at the crop size (valid part top-left): the
    official postprocess_masks (upsample to image_size, crop the padding, resize to the crop),
    with the last step driven by runtime taps. Width first, then height, as torch's kernel; no
    (image_size, image_size) intermediate is materialised."""
    x = _resize_twice(low_res, image_size, taps_w, axis=-1)
    return _resize_twice(x, image_size, taps_h, axis=-2)


def _mask_stats(logits: jax.Array, mask_threshold, offset) -> tuple[jax.Array, jax.Array]:
    """(K, H, W) logits -> stability score (K,) and inclusive xyxy boxes (K, 4) of logits > threshold."""
    return calculate_stability_score(logits, mask_threshold, offset), batched_mask_to_box(logits > mask_threshold)


@partial(jax.jit, static_argnums=0)
def process_crop(
    graphdef: nnx.GraphDef,
    params: nnx.State,
    features: jax.Array,
    points: jax.Array,
    point_valid: jax.Array,
    taps_h: jax.Array,
    taps_w: jax.Array,
    crop_hw: jax.Array,
    crop_box: jax.Array,
    orig_box: jax.Array,
    settings: jax.Array,
) -> dict[str, jax.Array]:
    """All point batches of one crop, filtered and de-duplicated.

    features (1, C, h, w); points (nb, P, 2) xy in the crop's resized-input frame, point_valid
    (nb, P); taps_h (4, Hb) / taps_w (4, Wb) from `resize_taps`; crop_hw (2,) the crop's size;
    crop_box, orig_box (4,) xyxy in image pixels; settings (6,): pred_iou_thresh,
    stability_score_thresh, stability_score_offset, box_nms_thresh, mask_threshold, unused.
    Returns per candidate (N = nb * P * M): low_res (N, 4h, 4w), iou_preds, stability_score,
    boxes (N, 4) crop pixels, point_index (N,), and the NMS `order` and `keep` (see utils.amg.nms).
    """
    model = nnx.merge(graphdef, params)
    image_size = model.config.image_size
    pred_iou_thresh, stab_thresh, stab_offset, nms_thresh, mask_threshold = (settings[i] for i in range(5))
    Hb, Wb = taps_h.shape[1], taps_w.shape[1]
    inside = (jnp.arange(Hb)[:, None] < crop_hw[0]) & (jnp.arange(Wb)[None, :] < crop_hw[1])

    def one_batch(args):
        pts, valid = args
        P = pts.shape[0]
        labels = jnp.where(valid, 1, IGNORE_LABEL)[:, None]
        low, iou = decode_prompts(
            graphdef, params, features, pts[:, None, :], labels, jnp.zeros((P, 4)), jnp.zeros(P, bool),
            None, None, True,
        )
        M = iou.shape[1]
        low, iou = low.reshape((P * M,) + low.shape[2:]), iou.reshape(P * M)

        def stats(chunk):  # a few masks at a time: the full-size logits stay in cache
            logits = jnp.where(inside, upscale_to_crop(chunk, image_size, taps_h, taps_w), -jnp.inf)
            return _mask_stats(logits, mask_threshold, stab_offset)

        stability, boxes = _chunked(stats, low, MASK_CHUNK)
        keep = jnp.repeat(valid, M) & ((pred_iou_thresh <= 0) | (iou > pred_iou_thresh))
        keep &= (stab_thresh <= 0) | (stability >= stab_thresh)
        keep &= ~is_box_near_crop_edge(boxes, crop_box, orig_box)
        return low, iou, stability, boxes, keep

    low, iou, stability, boxes, keep = jax.lax.map(one_batch, (points, point_valid))
    flat = lambda a: a.reshape((-1,) + a.shape[2:])
    low, iou, stability, boxes, keep = map(flat, (low, iou, stability, boxes, keep))
    M = iou.shape[0] // (points.shape[0] * points.shape[1])
    order, nms_keep = nms(boxes, iou, keep, nms_thresh)
    return dict(low_res=low, iou_preds=iou, stability_score=stability, boxes=boxes,
                point_index=jnp.arange(iou.shape[0]) // M, order=order, keep=nms_keep)


@partial(jax.jit, static_argnums=(1,))
def render_masks(low_res: jax.Array, image_size: int, taps_h: jax.Array, taps_w: jax.Array,
                 crop_hw: jax.Array, mask_threshold: jax.Array) -> jax.Array:
    """(K, 4h, 4w) kept logits -> (K, Hb, Wb) bool masks at the crop size (False in the padding)."""
    Hb, Wb = taps_h.shape[1], taps_w.shape[1]
    inside = (jnp.arange(Hb)[:, None] < crop_hw[0]) & (jnp.arange(Wb)[None, :] < crop_hw[1])
    return inside & (upscale_to_crop(low_res, image_size, taps_h, taps_w) > mask_threshold)


@jax.jit
def nms_jit(boxes, scores, valid, iou_threshold):
    return nms(boxes, scores, valid, iou_threshold)
