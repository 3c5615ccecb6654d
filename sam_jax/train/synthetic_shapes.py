"""Procedurally generated segmentation data: shapes of several kinds and colours on a textured
background, with their exact masks. Seeded and deterministic (example i of seed s is always the
same), so that notebooks, examples, tests and benchmarks can train and evaluate without a data set.

    image, masks = make_example(seed=0, index=3)        # (64, 64, 3) uint8, (n, 64, 64) bool
    write_coco(folder, num_images=1000, seed=0)         # PNGs + instances.json for `sam-jax train`
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from ..io.outputs import atomic_dir
from ..io.rle import coco_encode_rle, mask_to_rle

KINDS = ("ellipse", "rectangle", "triangle", "ring", "star")


def _shape_mask(kind: str, size: int, r: np.random.Generator) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size].astype(np.float32) + 0.5
    cy, cx = r.uniform(0.2, 0.8, 2) * size
    radius = r.uniform(0.1, 0.28) * size
    angle = r.uniform(0, np.pi)
    # Coordinates in the shape's own rotated frame.
    u = (xx - cx) * np.cos(angle) + (yy - cy) * np.sin(angle)
    v = -(xx - cx) * np.sin(angle) + (yy - cy) * np.cos(angle)
    aspect = r.uniform(0.5, 1.0)
    if kind == "ellipse":
        return (u / radius) ** 2 + (v / (radius * aspect)) ** 2 <= 1
    if kind == "rectangle":
        return (np.abs(u) <= radius) & (np.abs(v) <= radius * aspect)
    if kind == "ring":
        d = np.sqrt(u**2 + v**2)
        return (d <= radius) & (d >= radius * r.uniform(0.45, 0.65))
    theta = np.arctan2(v, u)
    d = np.sqrt(u**2 + v**2)
    if kind == "triangle":
        # A regular polygon's boundary in polar form.
        n = 3
        return d * np.cos((theta % (2 * np.pi / n)) - np.pi / n) <= radius * np.cos(np.pi / n)
    spikes = 5  # star: the radius oscillates with the angle
    return d <= radius * (0.6 + 0.4 * np.cos(spikes * theta))


def _background(size: int, r: np.random.Generator) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size].astype(np.float32)
    base = r.uniform(40, 215, 3)
    freq = r.uniform(0.1, 0.6)
    angle = r.uniform(0, np.pi)
    stripes = np.sin(freq * (xx * np.cos(angle) + yy * np.sin(angle)))[..., None] * r.uniform(5, 25, 3)
    noise = r.normal(0, r.uniform(4, 14), (size, size, 3))
    gradient = ((xx + yy) / (2 * size))[..., None] * r.uniform(-40, 40, 3)
    return base + stripes + noise + gradient


def make_example(seed: int = 0, index: int = 0, size: int = 64, max_objects: int = 4, min_area: int = 12) -> tuple[np.ndarray, np.ndarray]:
    """Image (size, size, 3) uint8 and masks (n, size, size) bool, 1 <= n <= max_objects.

    Later shapes occlude earlier ones; each mask is the visible part, and shapes left with fewer
    than `min_area` visible pixels are dropped (so masks are disjoint and non-empty)."""
    r = np.random.default_rng([seed, index])
    image = _background(size, r)
    owner = np.full((size, size), -1)
    count = int(r.integers(1, max_objects + 1))
    for i in range(count):
        m = _shape_mask(KINDS[int(r.integers(len(KINDS)))], size, r)
        colour = r.uniform(0, 255, 3)
        shade = 1 + 0.15 * r.normal(0, 1, (size, size, 1))  # a little texture on the object too
        image = np.where(m[..., None], colour * shade, image)
        owner[m] = i
    masks = np.stack([owner == i for i in range(count)])
    masks = masks[masks.sum(axis=(1, 2)) >= min_area]
    if len(masks) == 0:  # everything occluded (rare): the image's largest region is the object
        return make_example(seed, index + 10**9, size, max_objects, min_area)
    return np.clip(image, 0, 255).astype(np.uint8), masks


def write_coco(folder: str | Path, num_images: int, seed: int = 0, size: int = 64, max_objects: int = 4, start: int = 0) -> Path:
    """Writes examples start..start+num_images-1 as PNGs and a COCO instances JSON (RLE masks) into
    `folder` (created atomically; must not exist). Returns the JSON's path."""
    folder = Path(folder)
    if folder.exists():
        raise FileExistsError(f"{folder} already exists")
    with atomic_dir(folder) as tmp:
        images, annotations = [], []
        for i in range(start, start + num_images):
            image, masks = make_example(seed, i, size, max_objects)
            name = f"{i:06d}.png"
            Image.fromarray(image).save(tmp / name)
            images.append({"id": i, "file_name": name, "height": size, "width": size})
            for m in masks:
                ys, xs = np.nonzero(m)
                annotations.append({
                    "id": len(annotations) + 1, "image_id": i, "category_id": 1, "iscrowd": 0,
                    "segmentation": coco_encode_rle(mask_to_rle(m[None])[0]), "area": int(m.sum()),
                    "bbox": [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)],
                })
        data = {"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "shape"}]}
        (tmp / "instances.json").write_text(json.dumps(data))
    return folder / "instances.json"
