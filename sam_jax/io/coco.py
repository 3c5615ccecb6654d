"""Annotated images (host side): a COCO instances file or a folder of SA-1B pairs, read into one
form that keeps what an evaluation reports of each annotation (its id, area, box and crowd flag),
with the masks decoded on demand.

    data = read_annotations("annotations/instances_val2017.json", image_dir="val2017")
    data.images[0].annotations[0].bbox       # XYWH, as in the file
    image, masks = data.image(0), data.masks(0)

COCO: images in the order of the file's `images` list, each with its annotations in file order;
`file_name` relative to `image_dir` (default: the JSON's folder). SA-1B: one `<name>.json` per
image beside it, in sorted name order. An annotation whose segmentation does not decode, has the
wrong size or is empty, or whose `image_id` names no image, is skipped and listed in `skipped`;
`iscrowd` annotations (COCO's crowd regions: several objects in one mask) are skipped and counted
in `crowd`. An image left without annotations is left out. A file that is not what it should be,
a missing image, or nothing usable at all: a one-line ValueError naming the file.

Each annotation's `area` and `bbox` are the file's own (COCO's polygon area, not a pixel count);
when the file has none, the mask's pixel count and its tight box. `sha256` is the digest of the
annotation file (SA-1B: of its JSON files' names and digests), not of the images.
"""

from __future__ import annotations

import hashlib
import json
import numbers
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from pycocotools import mask as mask_utils

from .images import read_image
from .outputs import file_digest


class Annotation(NamedTuple):
    id: int  # the file's `id` (else the annotation's position in the file)
    area: float  # the file's `area`, else the mask's pixel count
    bbox: tuple[float, float, float, float]  # XYWH: the file's `bbox`, else the mask's tight box
    index: int  # position in the file's `annotations` list
    segmentation: Any = None  # COCO polygons or RLE; None for SA-1B (read again with its image)


class AnnotatedImage(NamedTuple):
    id: int | str  # COCO: the image's `id`; SA-1B: its `image_id` (else the JSON's name)
    file: Path
    height: int
    width: int
    annotations: tuple[Annotation, ...]
    json: Path | None = None  # SA-1B: the annotation file


class AnnotationSet:
    """Images with their annotations (see the module docstring); `masks(i)` decodes image i's."""

    def __init__(self, name: str, kind: str, images: list[AnnotatedImage], skipped: list[str], crowd: int, sha256: str):
        self.name, self.kind, self.images, self.skipped, self.crowd, self.sha256 = name, kind, images, skipped, crowd, sha256

    def __len__(self) -> int:
        return len(self.images)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, {len(self)} images, {self.objects()} annotations)"

    def objects(self, images: int | None = None) -> int:
        """How many annotations the first `images` images (default all) hold."""
        return sum(len(e.annotations) for e in self.images[:images])

    def image(self, i: int) -> np.ndarray:
        """(H, W, 3) uint8 RGB of image i; ValueError when its size differs from its annotations'."""
        e = self.images[i]
        if not e.file.is_file():
            raise ValueError(f"{self.name}: image not found: {e.file}")
        image = read_image(e.file)
        if image.shape[:2] != (e.height, e.width):
            raise ValueError(f"{e.file}: image is {image.shape[0]}x{image.shape[1]}, its annotations say {e.height}x{e.width}")
        return image

    def masks(self, i: int, which: Sequence[int] | None = None) -> np.ndarray:
        """(n, H, W) bool masks of image i's annotations (or of those at the positions `which`), in order."""
        e = self.images[i]
        annotations = e.annotations if which is None else [e.annotations[k] for k in which]
        if e.json is None:
            segs = [a.segmentation for a in annotations]
        else:
            listed = _read_json(e.json)["annotations"]
            segs = [listed[a.index]["segmentation"] for a in annotations]
        out = np.zeros((len(segs), e.height, e.width), bool)
        for k, seg in enumerate(segs):
            out[k] = decode_segmentation(seg, e.height, e.width)
        return out


def read_annotations(path: str | Path, image_dir: str | Path | None = None) -> AnnotationSet:
    """A COCO instances JSON (file names relative to `image_dir`, default its folder) or an SA-1B folder."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"annotations not found: {path}")
    if path.is_dir():
        if image_dir is not None:
            raise ValueError("--image-dir applies to a COCO JSON, not to an SA-1B folder")
        return read_sa1b_folder(path)
    return read_coco(path, image_dir)


def read_coco(path: str | Path, image_dir: str | Path | None = None) -> AnnotationSet:
    path = Path(path)
    data = _read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("images"), list) or not isinstance(data.get("annotations"), list):
        raise ValueError(f"{path}: not a COCO instances file (expected 'images' and 'annotations' lists)")
    root = Path(image_dir) if image_dir is not None else path.parent
    images: dict = {}
    for k, im in enumerate(data["images"]):
        try:
            images[im["id"]] = (im, int(im["height"]), int(im["width"]), str(im["file_name"]))
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"{path}: image {k} lacks an id, height, width or file_name") from None
    by_image: dict = {}
    skipped, crowd = [], 0
    for k, a in enumerate(data["annotations"]):
        if not isinstance(a, dict):
            skipped.append(f"{path}: annotation {k}: not an object")
            continue
        if a.get("iscrowd"):
            crowd += 1
            continue
        im = images.get(a.get("image_id"))
        problem = "no such image_id" if im is None else check_segmentation(a.get("segmentation"), im[1], im[2])
        if problem:
            skipped.append(f"{path}: annotation {a.get('id', k)}: {problem}")
            continue
        by_image.setdefault(a["image_id"], []).append(_annotation(a, k, a["segmentation"], im[1], im[2]))
    entries = []
    for image_id, (im, h, w, name) in images.items():
        if image_id not in by_image:
            continue
        file = root / name
        if not file.is_file():
            hint = "" if image_dir else " (file names are relative to the JSON's folder; see --image-dir)"
            raise ValueError(f"{path}: image not found: {file}{hint}")
        entries.append(AnnotatedImage(image_id, file, h, w, tuple(by_image[image_id])))
    return _checked(AnnotationSet(str(path), "coco", entries, skipped, crowd, file_digest(path)))


def read_sa1b_folder(folder: str | Path) -> AnnotationSet:
    folder = Path(folder)
    files = sorted(folder.glob("*.json"))
    entries, skipped, crowd = [], [], 0
    digest = hashlib.sha256()
    for path in files:
        digest.update(f"{path.name}\0{file_digest(path)}\0".encode())
        data = _read_json(path)
        try:
            info = data["image"]
            h, w, file = int(info["height"]), int(info["width"]), folder / info["file_name"]
            listed = list(data["annotations"])
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"{path}: not an SA-1B annotation file (expected 'image' with height, width, "
                             "file_name, and 'annotations')") from None
        if not file.is_file():
            raise ValueError(f"{path}: image not found: {file}")
        good = []
        for k, a in enumerate(listed):
            if isinstance(a, dict) and a.get("iscrowd"):
                crowd += 1
                continue
            problem = check_segmentation(a.get("segmentation") if isinstance(a, dict) else None, h, w)
            if problem:
                skipped.append(f"{path}: annotation {k}: {problem}")
            else:
                good.append(_annotation(a, k, a["segmentation"], h, w)._replace(segmentation=None))
        if good:
            entries.append(AnnotatedImage(info.get("image_id", path.stem), file, h, w, tuple(good), path))
    return _checked(AnnotationSet(str(folder), "sa1b", entries, skipped, crowd, digest.hexdigest()))


def _checked(data: AnnotationSet) -> AnnotationSet:
    if not data.images:
        reasons = []
        if data.skipped:
            reasons.append(f"{len(data.skipped)} annotations skipped, first: {data.skipped[0]}")
        if data.crowd:
            reasons.append(f"{data.crowd} crowd annotations skipped")
        raise ValueError(f"{data.name}: no image with a usable annotation" + (f" ({'; '.join(reasons)})" if reasons else ""))
    return data


def _annotation(a: dict, index: int, seg, height: int, width: int) -> Annotation:
    """The record of a checked annotation: its own id, area and box, or the mask's."""
    area, bbox = a.get("area"), a.get("bbox")
    good_area = isinstance(area, numbers.Real) and not isinstance(area, bool)
    good_box = isinstance(bbox, list) and len(bbox) == 4 and all(isinstance(v, numbers.Real) for v in bbox)
    if not (good_area and good_box):
        rle = _rle(seg, height, width)
        area = area if good_area else int(mask_utils.area(rle))
        bbox = bbox if good_box else [float(v) for v in mask_utils.toBbox(rle)]
    ident = a.get("id", index)
    return Annotation(ident if isinstance(ident, (int, str)) else index, area, tuple(bbox), index, seg)


def check_segmentation(seg, height: int, width: int) -> str | None:
    """Why `seg` (a COCO polygon list or RLE) cannot be an (height, width) mask with pixels, or None."""
    if isinstance(seg, dict):
        if "size" not in seg or "counts" not in seg:
            return "an RLE needs 'size' and 'counts'"
        if list(seg["size"]) != [height, width]:
            return f"mask size {list(seg['size'])} differs from the image's {[height, width]}"
    elif not (isinstance(seg, list) and seg and all(_is_polygon(p) for p in seg)):
        return "segmentation is neither an RLE nor a list of polygons"
    try:
        area = mask_utils.area(_rle(seg, height, width))
    except Exception as e:  # pycocotools raises several kinds on corrupt counts
        return f"{'RLE' if isinstance(seg, dict) else 'polygon'} does not decode ({e})"
    return None if area > 0 else "empty mask"


def decode_segmentation(seg, height: int, width: int) -> np.ndarray:
    """(height, width) uint8 mask of a checked COCO segmentation."""
    return mask_utils.decode(_rle(seg, height, width))


def _is_polygon(p) -> bool:
    return isinstance(p, list) and len(p) >= 6 and len(p) % 2 == 0 and all(isinstance(v, numbers.Real) for v in p)


def _rle(seg, height: int, width: int) -> dict:
    """The compressed RLE of a COCO segmentation (polygons merged, uncompressed counts compressed)."""
    if isinstance(seg, list):
        return mask_utils.merge(mask_utils.frPyObjects(seg, height, width))
    if isinstance(seg["counts"], list):
        return mask_utils.frPyObjects(seg, height, width)
    counts = seg["counts"]
    return {"size": list(seg["size"]), "counts": counts.encode() if isinstance(counts, str) else counts}


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not a readable JSON file ({e.__class__.__name__}: {e})") from None
