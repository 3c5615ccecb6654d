"""The evaluation tests' data: a small COCO instances file of generated shapes with what real
files have: RLE and polygon segmentations, a crowd annotation, an unusable annotation, an image
with only a crowd region, ids that are not positions, and an image that is not square (so that
the predictor resizes it and its coordinates)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sam_jax.io.rle import coco_encode_rle, mask_to_rle
from sam_jax.train.synthetic_shapes import make_example

# (height, width) of each image: 256 (square, the test_tiny input), 320x240 (resized to 256x192).
SIZES = ((256, 256), (320, 240), (256, 256))


def _rle(mask: np.ndarray) -> dict:
    return coco_encode_rle(mask_to_rle(mask[None])[0])


def _bbox(mask: np.ndarray) -> list[int]:
    ys, xs = np.nonzero(mask)
    return [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)]


def write_eval_set(folder: Path) -> Path:
    """Writes the images and `instances.json` into `folder`; returns the JSON's path."""
    folder.mkdir(parents=True)
    images, annotations = [], []
    ident = 100
    for i, (h, w) in enumerate(SIZES):
        image, masks = make_example(seed=23, index=i, size=max(h, w), max_objects=4, min_area=400)
        image, masks = image[:h, :w], masks[:, :h, :w]
        masks = masks[masks.sum(axis=(1, 2)) >= 400]
        Image.fromarray(image).save(folder / f"{i}.png")
        images.append({"id": 7 + i, "file_name": f"{i}.png", "height": h, "width": w})
        if i == 2:  # only a crowd region: the image has nothing to evaluate
            annotations.append({"id": 900, "image_id": 7 + i, "iscrowd": 1, "segmentation": _rle(masks.any(0)),
                                "area": int(masks.any(0).sum()), "bbox": _bbox(masks.any(0)), "category_id": 1})
            continue
        for m in masks:
            ident += 3
            annotations.append({"id": ident, "image_id": 7 + i, "iscrowd": 0, "segmentation": _rle(m),
                                "area": int(m.sum()), "bbox": _bbox(m), "category_id": 1})
    # A polygon (a triangle over image 1), with COCO's float area and box of the polygon itself.
    poly = [30.0, 40.0, 150.5, 60.0, 80.0, 190.0]
    xs, ys = poly[0::2], poly[1::2]
    area = 0.5 * abs(sum(xs[k] * ys[k - 2] - xs[k - 2] * ys[k] for k in range(3)))  # shoelace, closed
    annotations.append({"id": 77, "image_id": 8, "iscrowd": 0, "segmentation": [poly], "area": area,
                        "bbox": [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)], "category_id": 1})
    # A crowd region on image 0, and an annotation whose mask has the wrong size.
    crowd = np.zeros((256, 256), bool)
    crowd[200:240, 10:120] = True
    annotations.append({"id": 901, "image_id": 7, "iscrowd": 1, "segmentation": _rle(crowd), "area": 4400,
                        "bbox": _bbox(crowd), "category_id": 1})
    annotations.append({"id": 902, "image_id": 7, "iscrowd": 0, "segmentation": _rle(crowd[:100]), "area": 1,
                        "bbox": [0, 0, 1, 1], "category_id": 1})
    data = {"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "shape"}]}
    path = folder / "instances.json"
    path.write_text(json.dumps(data))
    return path


@pytest.fixture(scope="session")
def eval_set(tmp_path_factory) -> Path:
    return write_eval_set(tmp_path_factory.mktemp("eval") / "shapes")
