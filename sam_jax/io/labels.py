"""Instance label images (host side), the microscopy format: a folder of images and a folder of
label images, one per image with the same name stem (`cell_01.tif` -> `cell_01.png` or
`cell_01.tif`), each pixel holding its object's id (0: background; 8, 16 or 32 bits, or a
palette's indexes). Every id is one object, its mask the pixels that hold it (connected or not).

    data = read_label_folder("train/images", "train/labels")

Images are the files of `images` with an image suffix (IMAGE_SUFFIXES), in sorted name order;
each object an `Annotation` with the id as `id` and `area` its pixel count, its tight box as `bbox`,
in increasing id order. Skipped and counted as `annotations.AnnotationSet` says (objects under
`min_area` pixels; images whose header or label image cannot be read, whose label image is not
one channel of whole non-negative numbers or not the image's size, or that have no label image);
fatal: two images, or two label images, with one stem, a path out of its folder (a symbolic link)
unless `allow_outside`. The set's `sha256` digests the label images (names and bytes).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
from scipy import ndimage

from .annotations import AnnotatedImage, Annotation, AnnotationSet, DataOptions, Outcome, assemble, check_all, resolve
from .images import read_header, read_labels

IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp", ".webp")
LABEL_SUFFIXES = (".png", ".tif", ".tiff")


def read_label_folder(images: str | Path, labels: str | Path, options: DataOptions = DataOptions(),
                      progress: Callable[[int, int], None] | None = None) -> AnnotationSet:
    images, labels = Path(images), Path(labels)
    for folder, what in ((images, "images"), (labels, "label images")):
        if not folder.is_dir():
            raise ValueError(f"{folder}: not a folder (of {what})")
    files = _by_stem(images, IMAGE_SUFFIXES, "images")
    label_files = _by_stem(labels, LABEL_SUFFIXES, "label images")

    def check(stem: str) -> Outcome:
        image = resolve(images, files[stem].name, options.allow_outside, images)
        if stem not in label_files:
            return Outcome(None, [], bad_image=f"{image}: no label image {stem}{{{','.join(LABEL_SUFFIXES)}}} in {labels}")
        label_file = resolve(labels, label_files[stem].name, options.allow_outside, labels)
        try:
            part = f"{label_file.name}\0{hashlib.sha256(label_file.read_bytes()).hexdigest()}\0"
        except OSError as e:
            return Outcome(None, [], bad_image=f"{label_file}: {e.__class__.__name__}: {e}")
        try:
            h, w = read_header(image)[:2]
            ids = read_labels(label_file)
        except ValueError as e:
            return Outcome(None, [], bad_image=f"{image}: {e}", part=part)
        if ids.shape != (h, w):
            return Outcome(None, [], bad_image=f"{label_file}: label image is {ids.shape[0]}x{ids.shape[1]}, its image "
                                               f"{h}x{w}", part=part)
        values, inverse, counts = np.unique(ids, return_inverse=True, return_counts=True)
        first = 0 if values[0] == 0 else 1  # value j is label j + first: 1..n, 0 the background
        boxes = ndimage.find_objects(inverse.reshape(h, w) + first)
        annotations, small = [], 0
        for j, (value, pixels) in enumerate(zip(values.tolist(), counts.tolist())):
            if value == 0:
                continue
            if pixels < options.min_area:
                small += 1
                continue
            ys, xs = boxes[j + first - 1]
            bbox = (float(xs.start), float(ys.start), float(xs.stop - xs.start), float(ys.stop - ys.start))
            annotations.append(Annotation(value, pixels, bbox, len(annotations), None, pixels))
        if not annotations:
            return Outcome(None, [], small, part=part)
        content = hashlib.sha256(f"{image.name}\0{h}\0{w}\0{part}{[a.id for a in annotations]}".encode()).hexdigest()
        return Outcome(AnnotatedImage(stem, image, h, w, tuple(annotations), None, label_file, content), [], small, part=part)

    outcomes = check_all(check, sorted(files), options.threads, progress)
    digest = hashlib.sha256("".join(o.part for o in outcomes).encode()).hexdigest()
    return assemble(str(labels), "labels", outcomes, [], 0, digest, images, options)


def _by_stem(folder: Path, suffixes: tuple[str, ...], what: str) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        if p.suffix.lower() in suffixes and (p.is_file() or p.is_symlink()):
            if p.stem in found:
                raise ValueError(f"{folder}: two {what} have the stem {p.stem!r} ({found[p.stem].name}, {p.name}): "
                                 "keep one per name")
            found[p.stem] = p
    if not found:
        raise ValueError(f"{folder}: no {what} ({', '.join(suffixes)})")
    return found
