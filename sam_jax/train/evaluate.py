"""Interactive evaluation: clicks placed deterministically, as in interactive-segmentation
benchmarks. The first click is the centre of the object (the pixel farthest from its boundary);
each next click is the centre of the error region (positive in a miss, negative in a false
alarm), with the previous logits of the chosen output fed back. One click uses the multimask
output with the best predicted IoU; more clicks the single output.

    result = evaluate(model, source, num_images=100, clicks=3)
    result.iou[:, 0]          # IoU of every object after one click
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from scipy import ndimage

from ..functional import Prompts, decode_prompts_jit, embed_images_jit
from ..modeling.prompt_encoder import IGNORE_LABEL
from ..resample import upsample_logits
from .data import MaskDataset, prepare
from .losses import mask_iou


class Evaluation(NamedTuple):
    iou: np.ndarray  # (objects, clicks) IoU with the ground truth after each click
    predicted_iou: np.ndarray  # (objects, clicks) the model's own estimate
    first_click: np.ndarray  # (objects, 2) xy of the centre click
    box_iou: np.ndarray  # (objects,) IoU from the exact bounding box alone

    def miou(self, clicks: int = 1) -> float:
        return float(self.iou[:, clicks - 1].mean())


def centre_click(region: np.ndarray) -> tuple[int, int]:
    """(x, y) of the pixel of `region` (H, W bool) farthest from its boundary (image edges count)."""
    dist = ndimage.distance_transform_edt(np.pad(region, 1))[1:-1, 1:-1]
    y, x = np.unravel_index(np.argmax(dist), dist.shape)
    return int(x), int(y)


def _score(low: jax.Array, gt: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Low-res logits (P, n, n) against targets (P, S, S): IoU (P,) and the predicted masks (P, S, S)."""
    up = upsample_logits(low, gt.shape[-1])
    return mask_iou(up, gt), up > 0


_score_jit = jax.jit(_score)


def evaluate(model, source: MaskDataset, num_images: int | None = None, clicks: int = 1, max_objects: int = 16) -> Evaluation:
    """Every object (up to max_objects per image) of the first num_images images of `source`.

    An image's objects are decoded together in max_objects slots, the unused ones with empty
    prompts (ignored), so that one shape compiles rather than one per object count."""
    graphdef, params = nnx.split(model)
    S = model.config.image_size
    ious, preds, firsts, boxes = [], [], [], []
    rng = np.random.default_rng(0)
    for i in range(min(num_images or len(source), len(source))):
        image, masks = source[i]
        ex = prepare(image, masks, S, max_objects, rng)
        P = int(ex["valid"].sum())
        if P == 0:
            continue
        B = max_objects
        gt = np.zeros((B, S, S), bool)
        gt[:P] = ex["masks"][ex["valid"]]
        emb = embed_images_jit(graphdef, params, jnp.asarray(ex["image"][None]), jnp.asarray(ex["input_size"][None]))
        h, w = ex["input_size"]
        inside = np.zeros((S, S), bool)
        inside[:h, :w] = True
        coords = np.zeros((B, clicks, 2), np.float32)
        labels = np.full((B, clicks), IGNORE_LABEL, np.int32)
        first = np.array([centre_click(g) for g in gt[:P]])
        coords[:P, 0], labels[:P, 0] = first, 1
        mask_input, has_mask = None, None
        obj_iou, obj_pred = [], []
        for c in range(clicks):
            multi = c == 0
            prompts = Prompts(coords, labels, np.zeros((B, 4), np.float32), np.zeros(B, bool), mask_input, has_mask)
            low, iou_pred = decode_prompts_jit(graphdef, params, emb, prompts, multimask_output=multi)
            best = np.argmax(np.asarray(iou_pred), axis=1)
            low = np.asarray(low)[np.arange(B), best][:, None]
            iou, pred = (np.asarray(a) for a in _score_jit(low[:, 0], gt))
            obj_iou.append(iou[:P])
            obj_pred.append(np.asarray(iou_pred)[np.arange(P), best[:P]])
            mask_input, has_mask = low, np.ones(B, bool)
            if c + 1 < clicks:
                for k in range(P):
                    fn, fp = gt[k] & ~pred[k] & inside, ~gt[k] & pred[k] & inside
                    # Click the larger error kind's centre (nothing wrong: repeat a positive centre click).
                    region, label = (fn, 1) if fn.sum() >= fp.sum() else (fp, 0)
                    coords[k, c + 1] = centre_click(region if region.any() else gt[k])
                    labels[k, c + 1] = label
        ious.append(np.stack(obj_iou, 1))
        preds.append(np.stack(obj_pred, 1))
        firsts.append(first)
        boxes.append(_box_iou(graphdef, params, emb, gt, P)[:P])
    if not ious:
        raise ValueError(f"{source.name}: no object to evaluate")
    return Evaluation(np.concatenate(ious), np.concatenate(preds), np.concatenate(firsts), np.concatenate(boxes))


def _box_iou(graphdef, params, emb, gt: np.ndarray, P: int) -> np.ndarray:
    """IoU (B,) of the box prompt's mask for the first P of the B targets (the others: empty prompts)."""
    B = len(gt)
    box = np.zeros((B, 4), np.float32)
    for k, g in enumerate(gt[:P]):
        ys, xs = np.nonzero(g)
        box[k] = xs.min(), ys.min(), xs.max(), ys.max()
    prompts = Prompts(np.zeros((B, 1, 2), np.float32), np.full((B, 1), IGNORE_LABEL, np.int32), box, np.arange(B) < P)
    low, _ = decode_prompts_jit(graphdef, params, emb, prompts, multimask_output=False)
    return np.asarray(_score_jit(np.asarray(low)[:, 0], gt)[0])


def disk_baseline(source: MaskDataset, image_size: int, num_images: int | None = None, radii=range(1, 33)) -> tuple[float, int]:
    """(mIoU, radius) of the best fixed-radius disk at the centre click: what a click alone tells."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:image_size, :image_size]
    scores = {r: [] for r in radii}
    for i in range(min(num_images or len(source), len(source))):
        _, masks = source[i]
        ex = prepare(None, masks, image_size, 16, rng, masks.shape[1:])
        for g in ex["masks"][ex["valid"]]:
            x, y = centre_click(g)
            d2 = (xx - x) ** 2 + (yy - y) ** 2
            for r in radii:
                disk = d2 <= r * r
                scores[r].append((disk & g).sum() / max((disk | g).sum(), 1))
    best = max(radii, key=lambda r: np.mean(scores[r]))
    return float(np.mean(scores[best])), best
