"""The evaluation protocols transcribed from their definitions (docs/evaluation.md) onto the
official `segment_anything.SamPredictor`: the reference of the evaluation parity tests. Nothing
here calls sam_jax's evaluation code; the annotation file is read with json and pycocotools.

Definitions (as RITM's clicker and SAM 2's "center" sampling, EfficientViT-SAM's boxes):
- box: the annotation's bbox (x, y, w, h) given as (x, y, x + w, y + h);
- a region's centre: the pixel whose Euclidean distance to the nearest pixel outside the region
  (the image's edges bounding it: the region is padded with one pixel of outside) is largest, the
  first such pixel in row-major order, never a pixel clicked before;
- point: one positive click at the centre of the object's mask;
- clicks: the point, then per round the centre of the missed region (positive) if it lies strictly
  deeper than the centre of the false region, else the centre of the false region (negative); the
  previous round's low-res logits of the chosen output as mask_input; an object with no error
  pixel left to click stops and keeps its last IoU;
- select: score = argmax of the predicted IoUs, oracle = argmax of the true IoUs (first on ties),
  single = multimask_output=False.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from pycocotools import mask as mask_utils
from scipy.ndimage import distance_transform_edt

torch.set_grad_enabled(False)


def coco_objects(path: Path) -> list[tuple[dict, list[dict]]]:
    """(image, its non-crowd annotations that decode to a non-empty mask of its size), images in file order."""
    data = json.loads(Path(path).read_text())
    out = []
    for im in data["images"]:
        anns = []
        for a in data["annotations"]:
            if a["image_id"] != im["id"] or a.get("iscrowd"):
                continue
            seg = a["segmentation"]
            if isinstance(seg, dict) and list(seg["size"]) != [im["height"], im["width"]]:
                continue
            if decode(seg, im["height"], im["width"]).any():
                anns.append(a)
        if anns:
            out.append((im, anns))
    return out


def decode(seg, h: int, w: int) -> np.ndarray:
    if isinstance(seg, list):
        rle = mask_utils.merge(mask_utils.frPyObjects(seg, h, w))
    elif isinstance(seg["counts"], list):
        rle = mask_utils.frPyObjects(seg, h, w)
    else:
        rle = {"size": seg["size"], "counts": seg["counts"].encode()}
    return mask_utils.decode(rle).astype(bool)


def centre(region: np.ndarray, clicked: np.ndarray) -> tuple[int, int, float]:
    """(x, y, depth) of the region's centre (see the module docstring), on the whole image."""
    depth = distance_transform_edt(np.pad(region, 1))[1:-1, 1:-1] * ~clicked
    best = depth.max()
    ys, xs = np.where(depth == best)
    return int(xs[0]), int(ys[0]), float(best)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


def reference(official, annotations: Path, prompt: str, select: str, clicks: int = 1) -> dict:
    """annotation id -> [IoU after each round] of the official predictor under the protocol."""
    from segment_anything import SamPredictor

    predictor = SamPredictor(official)
    multimask = select != "single"
    root = Path(annotations).parent
    out = {}
    for im, anns in coco_objects(annotations):
        image = np.asarray(Image.open(root / im["file_name"]).convert("RGB"))
        predictor.set_image(image)
        for a in anns:
            gt = decode(a["segmentation"], im["height"], im["width"])
            if prompt == "box":
                x, y, w, h = a["bbox"]
                masks, scores, _ = predictor.predict(box=np.array([x, y, x + w, y + h]), multimask_output=multimask)
                out[a["id"]] = [pick(masks, scores, gt, select)[0]]
                continue
            rounds = clicks if prompt == "clicks" else 1
            points, labels, ious = [], [], []
            clicked = np.zeros_like(gt)
            pred, logits = np.zeros_like(gt), None
            for r in range(rounds):
                fn_x, fn_y, fn_d = centre(gt & ~pred, clicked)
                fp_x, fp_y, fp_d = centre(~gt & pred, clicked)
                if fn_d == 0 and fp_d == 0:
                    ious.append(ious[-1])
                    continue
                positive = fn_d > fp_d
                points.append((fn_x, fn_y) if positive else (fp_x, fp_y))
                labels.append(int(positive))
                clicked[points[-1][1], points[-1][0]] = True
                masks, scores, low = predictor.predict(
                    point_coords=np.array(points, np.float32), point_labels=np.array(labels),
                    mask_input=None if logits is None else logits[None], multimask_output=multimask,
                )
                value, k = pick(masks, scores, gt, select)
                ious.append(value)
                pred, logits = masks[k], low[k]
            out[a["id"]] = ious
    return out


def pick(masks: np.ndarray, scores: np.ndarray, gt: np.ndarray, select: str) -> tuple[float, int]:
    """(IoU, index) of the output that counts."""
    true = [iou(m, gt) for m in masks]
    k = int(np.argmax(scores)) if select == "score" else int(np.argmax(true)) if select == "oracle" else 0
    return true[k], k
