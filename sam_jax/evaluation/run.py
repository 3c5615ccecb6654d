"""Evaluating a model on annotated images by one of the protocols of `protocols.py`: every
prediction goes through `SamPredictor` (set_image, then one `predict_batch` per round for up to
`batch_size` objects of an image), so any model the predictor runs is evaluated the same way.

    result = evaluate(sam_jax.load("vit_b"), "instances_val2017.json", prompt="clicks", clicks=3)
    result.miou(), result.miou(click=1), result.summary["miou_by_area"]
    for o in result.objects: o.annotation_id, o.iou, o.ious, o.clicks
    clicks, box = evaluate_protocols(model, data, [("clicks", "score", 3), ("box", "score")])  # one embedding per image

`limit` takes the first N images of the data set (its order: the COCO file's `images` list, or the
SA-1B folder's sorted names) that hold at least one evaluated annotation, with all their objects.
Every given device works at once, one image each (`parallel.run_on_devices`); each image runs
whole on one device, so the results are those of one device. `share=(i, n)` evaluates every n-th
of those images from the i-th (a process's share; `summarize` joins the shares' objects).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import NamedTuple

import jax
import numpy as np

from ..functional import bucket
from ..io.coco import AnnotationSet, read_annotations
from ..modeling import Sam
from ..parallel import replicate, run_on_devices
from ..predictor import SamPredictor
from ..runtime.progress import Progress
from .protocols import AREA_RANGES, Click, Protocol, area_range, box_prompt, choose, first_click, mask_iou, next_click


class ObjectResult(NamedTuple):
    """One evaluated annotation: its IoU after each round (one round for box and point), the
    chosen output's predicted IoU and index per round, and the clicks given (none for box). An
    object left without an error pixel to click keeps its last result in the later rounds."""

    image: int  # position of its image in the data set
    position: int  # position among its image's evaluated annotations
    annotation_id: int | str
    image_id: int | str
    area: float
    ious: tuple[float, ...]
    predicted_ious: tuple[float, ...]
    outputs: tuple[int, ...]
    clicks: tuple[Click, ...]

    @property
    def iou(self) -> float:
        return self.ious[-1]

    @property
    def area_range(self) -> str:
        return area_range(self.area)


class Evaluation(NamedTuple):
    protocol: Protocol
    objects: list[ObjectResult]  # in data-set order: by image, then by annotation
    summary: dict  # see `summarize`

    def miou(self, click: int | None = None) -> float:
        """mIoU after `click` rounds (1..protocol.clicks; default the last)."""
        r = self.protocol.clicks if click is None else click
        if not 1 <= r <= self.protocol.clicks:
            raise ValueError(f"click must be in 1..{self.protocol.clicks}, got {click}")
        return float(np.mean([o.ious[r - 1] for o in self.objects]))


def evaluate(
    model: Sam,
    data: AnnotationSet | str | os.PathLike,
    *,
    prompt: str = "point",
    select: str = "score",
    clicks: int | None = None,
    limit: int | None = None,
    image_dir: str | os.PathLike | None = None,
    devices: Sequence[jax.Device] | None = None,
    share: tuple[int, int] | None = None,
    batch_size: int = 32,
    quiet: bool = True,
) -> Evaluation:
    """Evaluates `model` on `data` (an AnnotationSet, or a COCO JSON / SA-1B folder to read, with
    `image_dir` for a COCO file's images) by the protocol (prompt, select, clicks; see
    `protocols.Protocol.make`). limit: the first N images (see the module docstring); devices:
    where images are evaluated, one each (default: the model's device); share: (i, n), this
    share of the images; batch_size: objects of an image predicted together."""
    protocol = Protocol.make(prompt, select, clicks)
    return evaluate_protocols(model, data, [protocol], limit=limit, image_dir=image_dir, devices=devices, share=share,
                              batch_size=batch_size, quiet=quiet)[0]


def evaluate_protocols(
    model: Sam,
    data: AnnotationSet | str | os.PathLike,
    protocols: Sequence[Protocol],
    *,
    limit: int | None = None,
    image_dir: str | os.PathLike | None = None,
    devices: Sequence[jax.Device] | None = None,
    share: tuple[int, int] | None = None,
    batch_size: int = 32,
    quiet: bool = True,
) -> list[Evaluation]:
    """`evaluate` by several protocols (`Protocol.make`) at once: each image is embedded once."""
    protocols = [Protocol.make(*p) for p in protocols]
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if not isinstance(data, AnnotationSet):
        data = read_annotations(data, image_dir)
    indexes = selected_images(data, limit, share)
    devices = list(devices) if devices is not None else [model.device]
    predictors = [SamPredictor(m, mesh=None) for m in replicate(model, devices)]
    progress = Progress(len(indexes), "sam-jax eval", quiet)

    def work(k: int, i: int) -> list[list[ObjectResult]]:
        return evaluate_image(predictors[k], data, i, protocols, batch_size)

    found: list[list[ObjectResult]] = [[] for _ in protocols]
    for i, per_protocol in run_on_devices(work, indexes, devices):
        for objects, new in zip(found, per_protocol):
            objects += new
        n, miou = len(per_protocol[0]), np.mean([o.iou for o in per_protocol[0]])
        progress.step(f"{data.images[i].file.name}: {n} object{'' if n == 1 else 's'}, mIoU {miou:.3f}")
    progress.close()
    out = []
    for protocol, objects in zip(protocols, found):
        objects.sort(key=lambda o: (o.image, o.position))
        out.append(Evaluation(protocol, objects, summarize(objects, protocol)))
    return out


def selected_images(data: AnnotationSet, limit: int | None = None, share: tuple[int, int] | None = None) -> list[int]:
    """Positions of the images evaluated: the first `limit` (all: None), then every n-th from i for share (i, n)."""
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit must be a positive number of images, got {limit!r}")
    indexes = list(range(len(data) if limit is None else min(limit, len(data))))
    if share is not None:
        index, count = share
        indexes = indexes[index::count]
    return indexes


def evaluate_image(predictor: SamPredictor, data: AnnotationSet, i: int, protocols: Sequence[Protocol],
                   batch_size: int) -> list[list[ObjectResult]]:
    """Every annotation of image i by each protocol, `batch_size` objects per predictor call."""
    entry = data.images[i]
    predictor.set_image(data.image(i))
    out: list[list[ObjectResult]] = [[] for _ in protocols]
    for start in range(0, len(entry.annotations), batch_size):
        which = range(start, min(start + batch_size, len(entry.annotations)))
        annotations = [entry.annotations[k] for k in which]
        boxes = np.stack([box_prompt(a.bbox) for a in annotations])
        gt = data.masks(i, which)
        for found, protocol in zip(out, protocols):
            ious, predicted, outputs, clicks = run_objects(predictor, gt, boxes, protocol)
            for j, (k, a) in enumerate(zip(which, annotations)):
                found.append(ObjectResult(i, k, a.id, entry.id, a.area, tuple(float(v) for v in ious[j]),
                                          tuple(float(v) for v in predicted[j]), tuple(int(v) for v in outputs[j]),
                                          tuple(clicks[j])))
    return out


def run_objects(predictor: SamPredictor, gt: np.ndarray, boxes: np.ndarray, protocol: Protocol):
    """The protocol on objects of the predictor's current image: gt (m, H, W) bool, boxes (m, 4)
    XYXY. Returns IoU (m, R), predicted IoU (m, R) and output index (m, R) of the chosen output
    per round, and each object's clicks."""
    m, R = len(gt), protocol.clicks
    ious, predicted = np.zeros((m, R)), np.zeros((m, R))
    outputs = np.zeros((m, R), np.int64)
    clicks: list[list[Click]] = [[] for _ in range(m)]
    if protocol.prompt == "box":
        masks, iou, _ = predict(predictor, protocol.multimask, boxes=boxes)
        true = mask_iou(masks, gt[:, None])
        k = choose(protocol.select, iou, true)
        rows = np.arange(m)
        return true[rows, k][:, None], iou[rows, k][:, None], k[:, None], clicks
    pred = np.zeros_like(gt)
    clicked = np.zeros_like(gt)
    logits = None  # the chosen output's low-res logits per object: the next round's mask prompt
    active = np.arange(m)
    for r in range(R):
        given = []
        for j in active:
            click = first_click(gt[j]) if r == 0 else next_click(gt[j], pred[j], clicked[j])
            if click is not None:
                clicks[j].append(click)
                clicked[j, click.y, click.x] = True
                given.append(j)
        active = np.array(given, np.int64)
        if not len(active):
            break
        coords = np.array([[(c.x, c.y) for c in clicks[j]] for j in active], np.float32)
        labels = np.array([[c.label for c in clicks[j]] for j in active], np.int32)
        masks, iou, low = predict(predictor, protocol.multimask, coords=coords, labels=labels,
                                  mask_input=None if logits is None else logits[active])
        true = mask_iou(masks, gt[active][:, None])
        k = choose(protocol.select, iou, true)
        rows = np.arange(len(active))
        ious[active, r], predicted[active, r], outputs[active, r] = true[rows, k], iou[rows, k], k
        pred[active] = masks[rows, k]
        if logits is None:
            logits = np.zeros((m, 1, *low.shape[-2:]), np.float32)
        logits[active, 0] = low[rows, k]
    for j in range(m):  # an object that got no more clicks keeps its last result
        done = len(clicks[j])
        ious[j, done:], predicted[j, done:], outputs[j, done:] = ious[j, done - 1], predicted[j, done - 1], outputs[j, done - 1]
    return ious, predicted, outputs, clicks


def predict(predictor: SamPredictor, multimask: bool, *, boxes=None, coords=None, labels=None, mask_input=None):
    """One `predict_batch` call for n prompts, padded to a power of two with copies of the first
    (the decoder pads to that size anyway; the mask upsampling then compiles per size bucket
    rather than per object count). Returns masks (n, C, H, W), IoU predictions (n, C), low-res logits (n, C, h, w)."""
    n = len(boxes if boxes is not None else coords)
    extra = bucket(n) - n
    pad = lambda a: a if a is None or not extra else np.concatenate([a, np.repeat(a[:1], extra, axis=0)])
    masks, iou, low = predictor.predict_batch(pad(coords), pad(labels), pad(boxes), pad(mask_input), multimask_output=multimask)
    return masks[:n], iou[:n], low[:n]


def summarize(objects: Sequence[ObjectResult], protocol: Protocol) -> dict:
    """count, images, miou (after the last round), miou_by_area ({small, medium, large}: count and
    mIoU, None for none) and, for the clicks prompt, miou_per_click."""
    # Per round, a contiguous column: each mean sums in one order, so equal columns give equal means.
    ious = np.array([o.ious for o in objects], np.float64).reshape(len(objects), protocol.clicks).T.copy()
    final = ious[-1]
    ranges = np.array([o.area_range for o in objects])
    by_area = {}
    for name, _, _ in AREA_RANGES:
        chosen = final[ranges == name]
        by_area[name] = {"count": int(len(chosen)), "miou": float(chosen.mean()) if len(chosen) else None}
    out = {"count": len(objects), "images": len({o.image for o in objects}),
           "miou": float(final.mean()) if len(objects) else None, "miou_by_area": by_area}
    if protocol.prompt == "clicks":
        out["miou_per_click"] = [float(column.mean()) for column in ious] if len(objects) else []
    return out


def disk_baseline(data: AnnotationSet | str | os.PathLike, limit: int | None = None, radii=range(1, 33)) -> tuple[float, int]:
    """(mIoU, radius) of the best disk of a fixed radius at each object's point prompt (the pixel
    farthest from its boundary): what the click alone tells, a floor for any model to beat."""
    data = data if isinstance(data, AnnotationSet) else read_annotations(data)
    scores = {r: [] for r in radii}
    for i in selected_images(data, limit):
        e = data.images[i]
        yy, xx = np.mgrid[: e.height, : e.width]
        for gt in data.masks(i):
            x, y, _ = first_click(gt)
            d2 = (xx - x) ** 2 + (yy - y) ** 2
            for r in radii:
                scores[r].append(float(mask_iou(d2 <= r * r, gt)))
    best = max(radii, key=lambda r: np.mean(scores[r]))
    return float(np.mean(scores[best])), best
