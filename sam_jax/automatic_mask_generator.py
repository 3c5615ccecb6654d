"""SamAutomaticMaskGenerator: the official class and records, with the heavy work on device.

Per crop, `functional.automatic_mask_generator.process_crop` (one jitted call) decodes all point
batches, upsamples, filters, runs NMS and compacts the survivors; this file is the host side:
crops, point grids (`sam_jax.masks`), the cross-crop NMS call, small-region cleanup, RLE and the
output records.

Round trips: crops are embedded and dispatched in groups (`BackendPlan.crop_group`), each
crop's scores and boxes come back in one fetch while later crops compute, and the kept masks of
every crop are rendered before the first is fetched, bit-packed. RLE outputs without
small-region removal never bring the masks over: the device renders their run boundaries in
column-major order (`render_boundaries`) and `rle_counts` turns the set bits into counts.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import numpy as np
from flax import nnx

from . import amg_limits
from .functional import automatic_mask_generator as device_side
from .functional import bind_model, bucket
from .io.rle import area_from_rle, coco_encode_rle, mask_to_rle
from .masks import (
    box_xyxy_to_xywh, build_all_layer_point_grids, generate_crop_boxes, mask_boxes, remove_small_regions, uncrop_boxes_xyxy,
    uncrop_points,
)
from .modeling import Sam, with_numerics
from .options import GENERATOR
from .predictor import SamPredictor
from .validate import check_image

OUTPUT_MODES = ("binary_mask", "uncompressed_rle", "coco_rle")


@dataclass
class _CropMasks:
    """Survivors of one crop, in NMS order. low_res stays on device until rendering."""

    crop_box: list[int]
    resamplers: tuple  # (rows, cols) from device_side.crop_resamplers, shared with render
    low_res: object  # (bucket(K), 4h, 4w) device logits of the survivors, None when K == 0
    iou_preds: np.ndarray
    stability_score: np.ndarray
    boxes: np.ndarray  # (K, 4) xyxy image pixels
    points: np.ndarray  # (K, 2) xy image pixels


class SamAutomaticMaskGenerator:
    def __init__(
        self,
        model: Sam,
        points_per_side: int | None = GENERATOR.points_per_side,
        points_per_batch: int = GENERATOR.points_per_batch,
        pred_iou_thresh: float = GENERATOR.pred_iou_thresh,
        stability_score_thresh: float = GENERATOR.stability_score_thresh,
        stability_score_offset: float = GENERATOR.stability_score_offset,
        box_nms_thresh: float = GENERATOR.box_nms_thresh,
        crop_n_layers: int = GENERATOR.crop_n_layers,
        crop_nms_thresh: float = GENERATOR.crop_nms_thresh,
        crop_overlap_ratio: float = GENERATOR.crop_overlap_ratio,
        crop_n_points_downscale_factor: int = GENERATOR.crop_n_points_downscale_factor,
        point_grids: list[np.ndarray] | None = None,
        min_mask_region_area: int = GENERATOR.min_mask_region_area,
        output_mode: str = GENERATOR.output_mode,
        *,
        decoder_dtype: str | None = None,
        hq_token_only: bool = False,
        allow_large: bool = False,
    ) -> None:
        """Same arguments, defaults (`sam_jax.options.GeneratorDefaults`) and meaning as the
        official generator. min_mask_region_area needs no OpenCV here. Records are returned in
        the official order.

        decoder_dtype: "float32" or "bfloat16" to decode the point prompts (most of the work)
        in that compute dtype while the image encoder keeps the model's (None: the model's
        throughout); logits, scores and every statistic stay float32 (docs/precision-and-speed.md
        says how far bfloat16 masks are from float32's).
        hq_token_only: for an HQ-SAM model, each point's mask is the HQ mask alone rather than
        sam-hq's default (the SAM mask plus the HQ mask), as sam-hq's predictor takes it.
        allow_large: run settings whose work passes `amg_limits`' bounds (prompts per crop, the
        device's memory, a day's estimated time), which are refused otherwise, in one line,
        before anything is allocated."""
        if (points_per_side is None) == (point_grids is None):
            raise ValueError("exactly one of points_per_side or point_grids must be provided")
        if output_mode not in OUTPUT_MODES:
            raise ValueError(f"output_mode must be one of {OUTPUT_MODES}, got {output_mode!r}")
        for name, value, low in [("points_per_batch", points_per_batch, 1), ("crop_n_layers", crop_n_layers, 0),
                                 ("crop_n_points_downscale_factor", crop_n_points_downscale_factor, 1),
                                 ("points_per_side", 1 if points_per_side is None else points_per_side, 1)]:
            if not isinstance(value, (int, np.integer)) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
        if point_grids is not None:
            point_grids = [np.asarray(g, dtype=np.float64) for g in point_grids]
            if any(g.ndim != 2 or g.shape[1] != 2 for g in point_grids):
                raise ValueError("each point grid must have shape (N, 2), xy in [0, 1]")
            if not all(np.isfinite(g).all() for g in point_grids):
                raise ValueError("point_grids contain NaN or infinite values")
            if len(point_grids) < crop_n_layers + 1:
                raise ValueError(f"point_grids needs one grid per crop layer ({crop_n_layers + 1}), got {len(point_grids)}")
        else:
            for layer in range(crop_n_layers + 1):
                if points_per_side < crop_n_points_downscale_factor**layer:
                    raise ValueError(
                        f"crop layer {layer} would have no points: points_per_side {points_per_side} / "
                        f"crop_n_points_downscale_factor {crop_n_points_downscale_factor}**{layer} < 1; "
                        "use fewer crop layers or a smaller downscale factor"
                    )
        work = amg_limits.estimate(model, points_per_side, crop_n_layers, crop_n_points_downscale_factor, points_per_batch,
                                   None if point_grids is None else [len(g) for g in point_grids[: crop_n_layers + 1]])
        what = (f"points_per_side={points_per_side}" if point_grids is None else "point_grids") + (
            f", crop_n_layers={crop_n_layers}" if crop_n_layers else "")
        amg_limits.check(work, *amg_limits.available_memory(model.device), what=what, allow_large=allow_large)
        self.point_grids = point_grids or build_all_layer_point_grids(
            points_per_side, crop_n_layers, crop_n_points_downscale_factor
        )
        self.predictor = SamPredictor(model)
        # The decoding view shares the parameter arrays; only how it computes may differ.
        decoder = model if decoder_dtype is None else with_numerics(model, dtype=decoder_dtype)
        graphdef, params = nnx.split(decoder)
        self._leaves, treedef = jax.tree.flatten(params)
        self._decode_crop = bind_model(device_side.process_crop, graphdef, treedef,
                                       ("chunk", "tiles", "multimask_output", "hq_token_only"))
        if hq_token_only and model.config.decoder != "hq":
            raise ValueError("hq_token_only applies to an HQ-SAM model (its decoder has the HQ token); this one has SAM's")
        self.hq_token_only = hq_token_only
        self.multimask_output = True
        self.points_per_batch = points_per_batch
        self.pred_iou_thresh = pred_iou_thresh
        self.stability_score_thresh = stability_score_thresh
        self.stability_score_offset = stability_score_offset
        self.box_nms_thresh = box_nms_thresh
        self.crop_n_layers = crop_n_layers
        self.crop_nms_thresh = crop_nms_thresh
        self.crop_overlap_ratio = crop_overlap_ratio
        self.crop_n_points_downscale_factor = crop_n_points_downscale_factor
        self.min_mask_region_area = min_mask_region_area
        self.output_mode = output_mode

    def generate(self, image: np.ndarray, multimask_output: bool = True) -> list[dict]:
        """Masks for the whole (H, W, 3) uint8 RGB image: a list of official records with keys
        segmentation, area, bbox (XYWH), predicted_iou, point_coords, stability_score, crop_box.
        multimask_output: as sam-hq's generator takes it (the official one always uses True):
        False decodes each point to the single-mask output."""
        image = check_image(image)
        self.multimask_output = bool(multimask_output)
        # RLE straight from the device's run boundaries, unless masks are edited on the host first.
        boundaries = self.output_mode != "binary_mask" and self.min_mask_region_area == 0
        data = self._generate_masks(image, boundaries)
        if self.min_mask_region_area > 0:
            data.pop("areas")  # of the masks before their small regions go
            data = self.postprocess_small_regions(data, self.min_mask_region_area, max(self.box_nms_thresh, self.crop_nms_thresh))
        if boundaries:
            h, w = image.shape[:2]
            rles = [{"size": [h, w], "counts": counts} for counts in data["rles"]]
        elif self.output_mode != "binary_mask":
            rles = mask_to_rle(data["masks"])
        if self.output_mode == "binary_mask":
            segmentations = list(data["masks"])
            areas = data["areas"] if "areas" in data else data["masks"].sum(axis=(1, 2))
        else:
            areas = data["areas"] if "areas" in data else [area_from_rle(r) for r in rles]
            segmentations = rles if self.output_mode == "uncompressed_rle" else [coco_encode_rle(r) for r in rles]
        return [
            {
                "segmentation": segmentations[i],
                "area": int(areas[i]),
                "bbox": box_xyxy_to_xywh(data["boxes"][i].tolist()),
                "predicted_iou": float(data["iou_preds"][i]),
                "point_coords": [data["points"][i].tolist()],
                "stability_score": float(data["stability_score"][i]),
                "crop_box": box_xyxy_to_xywh(data["crop_boxes"][i].tolist()),
            }
            for i in range(len(segmentations))
        ]

    # ------------------------------------------------------------------------------------------
    def _crop_boxes(self, orig_size: tuple[int, int]) -> tuple[list[list[int]], list[int]]:
        """The official crop boxes, or a ValueError naming the deepest crop_n_layers that this
        image allows when a layer would have empty crops."""
        deepest = 0
        while deepest < self.crop_n_layers and 2 ** (deepest + 1) <= min(orig_size):  # 4^n crops: bound n first
            boxes, _ = generate_crop_boxes(orig_size, deepest + 1, self.crop_overlap_ratio)
            if any(x1 <= x0 or y1 <= y0 for x0, y0, x1, y1 in boxes):
                break
            deepest += 1
        if deepest < self.crop_n_layers:
            raise ValueError(
                f"crop_n_layers={self.crop_n_layers} is too deep for a {orig_size[1]}x{orig_size[0]} image "
                f"(with crop_overlap_ratio {self.crop_overlap_ratio:.3g}): layer {deepest + 1} would have empty crops; "
                f"use crop_n_layers <= {deepest}"
            )
        return generate_crop_boxes(orig_size, self.crop_n_layers, self.crop_overlap_ratio)

    def _generate_masks(self, image: np.ndarray, boundaries: bool = False) -> dict[str, np.ndarray]:
        """The kept masks' data in the final order: "masks" (K, H, W) bool, or with boundaries
        "rles" (K RLE counts lists), and "areas" (K,), "boxes", "iou_preds", ... as the official."""
        orig_size = image.shape[:2]
        crop_boxes, layer_idxs = self._crop_boxes(orig_size)
        crops = self._process_crops(image, crop_boxes, layer_idxs)
        crop_of = np.concatenate([np.full(len(c.iou_preds), i) for i, c in enumerate(crops)]).astype(int)
        index = np.concatenate([np.arange(len(c.iou_preds)) for c in crops]).astype(int)
        boxes = np.concatenate([c.boxes for c in crops])
        # The official stores an empty crop's boxes as torch.tensor([]) (float32), and concatenation
        # promotes every crop_box to float: records then carry floats, which we reproduce.
        crop_dtype = np.float32 if any(len(c.iou_preds) == 0 for c in crops) else np.int64
        if len(crops) > 1 and len(boxes):
            areas = np.array([(c.crop_box[2] - c.crop_box[0]) * (c.crop_box[3] - c.crop_box[1]) for c in crops])
            scores = (1 / areas.astype(np.float32))[crop_of]
            keep = self._nms(boxes, scores, self.crop_nms_thresh)
            crop_of, index, boxes = crop_of[keep], index[keep], boxes[keep]
        rendered, areas = self._render(crops, crop_of, index, orig_size, boundaries)
        return {
            "rles" if boundaries else "masks": rendered,
            "areas": areas,
            "boxes": boxes,
            "iou_preds": np.array([crops[c].iou_preds[i] for c, i in zip(crop_of, index)], np.float32),
            "stability_score": np.array([crops[c].stability_score[i] for c, i in zip(crop_of, index)], np.float32),
            "points": np.array([crops[c].points[i] for c, i in zip(crop_of, index)]).reshape(-1, 2),
            "crop_boxes": np.array([crops[c].crop_box for c in crop_of], crop_dtype).reshape(-1, 4),
        }

    def _process_crops(self, image, crop_boxes, layer_idxs) -> list[_CropMasks]:
        """Every crop through `process_crop`: a group of crops is embedded in one call and
        dispatched before the previous group is fetched, so the device never waits for the host."""
        group = self._plan().crop_group
        orig_box = np.array([0, 0, image.shape[1], image.shape[0]], np.float32)
        done, pending = [], []
        for start in range(0, len(crop_boxes), group):
            boxes = crop_boxes[start:start + group]
            emb = self.predictor.embed_images([image[y0:y1, x0:x1, :] for x0, y0, x1, y1 in boxes])
            # A group may be embedded across the predictor's mesh; its crops decode where the model is.
            features = jax.device_put(emb.features, self.predictor.device)
            hq = None if emb.hq_features is None else jax.device_put(emb.hq_features, self.predictor.device)
            launched = [self._dispatch_crop(features, hq, i, emb.input_sizes[i], box, layer_idxs[start + i], orig_box)
                        for i, box in enumerate(boxes)]
            done += [self._fetch_crop(*p) for p in pending]
            pending = launched
        return done + [self._fetch_crop(*p) for p in pending]

    def _dispatch_crop(self, features, hq_features, i, input_size, crop_box, layer_idx, orig_box):
        """Starts `process_crop` for crop i of the embedded group (does not wait for it)."""
        x0, y0, x1, y1 = crop_box
        ch, cw = y1 - y0, x1 - x0
        points = self.point_grids[layer_idx] * np.array([[cw, ch]])
        transformed = self.predictor.transform.apply_coords(points, (ch, cw))
        n = len(points)
        P = min(self.points_per_batch, bucket(n))  # 16 points are not padded to a batch of 64
        nb = max(1, -(-n // P))
        pts = np.zeros((nb * P, 2), np.float32)
        pts[:n] = transformed
        valid = np.arange(nb * P) < n
        resamplers = self._resamplers(input_size, (ch, cw))
        small, low_res = self._decode_crop(
            self._leaves, features, np.int32(i),
            pts.reshape(nb, P, 2), valid.reshape(nb, P),
            *resamplers,
            np.array([ch, cw], np.int32), np.array(crop_box, np.float32), orig_box, self._settings(), hq_features,
            **self._steps(P * self._multimask_outputs(), resamplers),
            multimask_output=self.multimask_output, hq_token_only=self.hq_token_only,
        )
        return crop_box, points, resamplers, small, low_res

    @staticmethod
    def _fetch_crop(crop_box, points, resamplers, small, low_res) -> _CropMasks:
        """One copy of the crop's small results; its survivors' logits gathered on device."""
        small = jax.device_get(small)
        k = int(small["count"])
        sel = np.zeros(min(bucket(k), len(small["index"])), np.int32)
        sel[:k] = small["index"][:k]
        return _CropMasks(
            crop_box=list(crop_box),
            resamplers=resamplers,
            low_res=device_side.take_rows_jit(low_res, sel) if k else None,
            iou_preds=small["iou_preds"][:k],
            stability_score=small["stability_score"][:k],
            boxes=uncrop_boxes_xyxy(small["boxes"][:k].astype(np.int64), crop_box),
            points=uncrop_points(points[small["point_index"][:k]], crop_box),
        )

    def _plan(self) -> device_side.BackendPlan:
        return device_side.backend_plan(self.predictor.device.platform)

    def _steps(self, masks: int, resamplers) -> dict[str, int]:
        """chunk and tiles (static) for upsampling `masks` masks on the resamplers' canvas."""
        canvas_hw = tuple(r[0].shape[0] * device_side.BAND_TILE for r in resamplers)
        low_len = self.predictor.model.prompt_encoder.mask_input_size[0]
        chunk = device_side.stats_chunk(self._plan(), masks, canvas_hw, low_len)
        return dict(chunk=chunk, tiles=device_side.band_tiles(self._plan(), chunk, canvas_hw, low_len))

    def _multimask_outputs(self) -> int:
        """Masks per point: the decoder's multimask count, or 1 (single-mask output, or sam-hq's rule)."""
        model = self.predictor.model
        return model.mask_decoder.num_multimask_outputs if self.multimask_output and model.config.decoder != "hq" else 1

    def _resamplers(self, input_size, crop_size):
        model = self.predictor.model
        low = model.prompt_encoder.mask_input_size[0]
        if model.config.preprocess == "medsam":  # MedSAM resizes its low-res logits to the image in one step
            return device_side.crop_resamplers(low, low, (low, low), crop_size)
        return device_side.crop_resamplers(low, model.config.image_size, input_size, crop_size)

    def _settings(self) -> device_side.AmgSettings:
        return device_side.AmgSettings(*(np.float32(v) for v in (
            self.pred_iou_thresh, self.stability_score_thresh, self.stability_score_offset,
            self.box_nms_thresh, self.predictor.model.mask_threshold,
        )))

    def _render(self, crops, crop_of, index, orig_size, boundaries: bool) -> tuple:
        """The survivors in their final order: (K, H, W) bool masks, or with boundaries their
        RLE counts (K lists), and areas (K,). The only large transfer, bit-packed, every crop's
        rendering dispatched before the first is fetched."""
        H, W = orig_size
        threshold = np.float32(self.predictor.model.mask_threshold)
        rendered = []
        for c, crop in enumerate(crops):
            rows = np.nonzero(crop_of == c)[0]
            if not len(rows):
                continue
            x0, y0, x1, y1 = crop.crop_box
            sel = np.zeros(bucket(len(rows)), np.int32)
            sel[:len(rows)] = index[rows]
            args = (crop.low_res, sel, *crop.resamplers, np.array([y1 - y0, x1 - x0], np.int32))
            steps = self._steps(len(sel), crop.resamplers)
            if boundaries:
                out = device_side.render_boundaries_jit(*args, np.array([x0, y0], np.int32), np.array([H, W], np.int32),
                                                        threshold, **steps)
            else:
                out = device_side.render_masks_jit(*args, threshold, **steps)
            rendered.append((rows, crop.crop_box, out))
        areas = np.zeros(len(crop_of), np.int64)
        out = [None] * len(crop_of) if boundaries else np.zeros((len(crop_of), H, W), bool)
        for rows, (x0, y0, x1, y1), (packed, area) in rendered:
            packed, area = jax.device_get((packed, area))
            areas[rows] = area[: len(rows)]
            if boundaries:
                for r, counts in zip(rows, rle_counts(packed[: len(rows)], (x0, y0), (H, W))):
                    out[r] = counts
            else:
                out[rows, y0:y1, x0:x1] = np.unpackbits(packed[: len(rows), : y1 - y0], axis=-1, count=x1 - x0).view(bool)
        return out, areas

    @staticmethod
    def _nms(boxes: np.ndarray, scores: np.ndarray, thresh: float) -> np.ndarray:
        """Indexes of the NMS survivors, best first (device NMS on a power-of-two buffer)."""
        n = len(boxes)
        nb = bucket(n)
        b = np.zeros((nb, 4), np.float32)
        s = np.zeros(nb, np.float32)
        b[:n], s[:n] = boxes, scores
        order, keep = jax.device_get(device_side.nms_jit(b, s, np.arange(nb) < n, np.float32(thresh)))
        return order[keep]

    @classmethod
    def postprocess_small_regions(cls, data: dict, min_area: int, nms_thresh: float) -> dict:
        """Removes small holes, then small islands, in every mask, and re-runs box NMS preferring
        unchanged masks (the official semantics, without OpenCV)."""
        if len(data["masks"]) == 0:
            return data
        new_masks, scores = [], []
        for mask in data["masks"]:
            mask, changed_holes = remove_small_regions(mask, min_area, mode="holes")
            mask, changed_islands = remove_small_regions(mask, min_area, mode="islands")
            new_masks.append(mask)
            scores.append(float(not (changed_holes or changed_islands)))
        masks = np.stack(new_masks)
        boxes = mask_boxes(masks)
        keep = cls._nms(boxes, np.array(scores, np.float32), nms_thresh)
        out = {k: np.asarray(v)[keep] for k, v in data.items() if k != "masks"}
        changed = np.array(scores)[keep] == 0.0
        out["boxes"][changed] = boxes[keep][changed]
        # The official keeps the old RLE of a mask NMS dropped; kept changed masks take the new one.
        out["masks"] = np.where(changed[:, None, None], masks[keep], data["masks"][keep])
        return out


def rle_counts(changes: np.ndarray, crop_xy: tuple[int, int], image_hw: tuple[int, int]) -> list[list[int]]:
    """Run boundaries (K, Wc, B) uint8 from `render_boundaries` of masks placed at crop_xy
    (x0, y0) in an image of image_hw (H, W) -> K official uncompressed-RLE counts (Python ints).

    Set bit y of column x is a run starting at flat column-major index (x0 + x) * H + y0 + y;
    bits come in increasing index, so the runs are the differences of [0, starts..., H * W].
    The bits are few (a mask's outline), found a 64-bit word at a time: the host's work grows
    with the outlines, not the pixels."""
    H, W = image_hw
    x0, y0 = crop_xy
    K, Wc, B = changes.shape
    k, x, word = np.nonzero(np.ascontiguousarray(changes).view(np.uint64))
    bits = np.unpackbits(changes.reshape(K, Wc, B // 8, 8)[k, x, word], axis=1)  # (n, 64), in index order
    i, b = np.nonzero(bits)
    starts = (x0 + x[i].astype(np.int64)) * H + y0 + 64 * word[i].astype(np.int64) + b
    per_mask = np.split(starts, np.searchsorted(k[i], np.arange(1, K)))
    return [np.diff(np.concatenate([[0], s, [H * W]])).tolist() for s in per_mask]
