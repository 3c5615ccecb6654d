"""Annotated images (host side), whatever file format they came from (`coco.py`: COCO files and
SA-1B folders; `labels.py`: folders of instance label images): the images with their checked
annotations, what was skipped, and the masks decoded on demand, only those asked for.

The readers check each image at start-up with `check_all` (in parallel, in order) and put the
outcomes together with `assemble`; `resolve` keeps image paths inside the data folder.
"""

from __future__ import annotations

import json
import math
import numbers
import os
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from .images import read_image, read_labels
from .segmentations import Checked, check_segmentation, decode_segmentation, tight_box

DEFAULT_THREADS = min(8, os.cpu_count() or 1)


class DataOptions(NamedTuple):
    """How a data set is read: which objects are kept, where files may be, how many threads."""
    min_area: int = 0  # masks of fewer pixels are skipped (counted as `small`)
    crowd: bool = False  # keep iscrowd annotations (evaluation never does)
    allow_outside: bool = False  # image paths may lead out of the data folder
    threads: int = DEFAULT_THREADS  # start-up checks, and the training loader's threads

    def checked(self) -> "DataOptions":
        if not (is_int(self.min_area) and self.min_area >= 0):
            raise ValueError(f"the minimum object area must be a whole number of pixels >= 0, got {self.min_area!r}")
        if not (is_int(self.threads) and self.threads >= 1):
            raise ValueError(f"the loader's thread count must be an integer >= 1, got {self.threads!r}")
        return self

    def record(self) -> dict:
        """The options that decide which objects are read (a run's record states them)."""
        return {"min_area": self.min_area, "crowd": self.crowd}


class Annotation(NamedTuple):
    id: int | str  # the file's `id` (else the annotation's position in the file; labels: the id)
    area: float  # the file's `area`, else the mask's pixel count
    bbox: tuple[float, float, float, float]  # XYWH: the file's `bbox`, else the mask's tight box
    index: int  # position in the file's `annotations` list (labels: among the image's ids)
    segmentation: Any = None  # COCO polygons or RLE; None for SA-1B (read again with its image) and labels
    pixels: int = 0  # the mask's pixel count


class AnnotatedImage(NamedTuple):
    id: int | str  # COCO: the image's `id`; SA-1B: its `image_id` (else the JSON's name); labels: the file's stem
    file: Path
    height: int
    width: int
    annotations: tuple[Annotation, ...]
    json: Path | None = None  # SA-1B: the annotation file
    labels: Path | None = None  # label folders: the label image
    sha256: str = ""  # of the name, size and used annotations' content


class AnnotationSet:
    """Images with their annotations; `masks(i)` decodes image i's. Also Grain's random-access
    data source: `data[i]` is `(image(i), masks(i))`."""

    def __init__(self, name: str, kind: str, images: list[AnnotatedImage], skipped: list[str], crowd: int, sha256: str,
                 *, small: int = 0, bad_images: Sequence[str] = (), image_dir: Path | None = None,
                 options: DataOptions = DataOptions()):
        self.name, self.kind, self.images, self.skipped, self.crowd, self.sha256 = name, kind, images, skipped, crowd, sha256
        self.small, self.bad_images, self.image_dir, self.options = small, list(bad_images), image_dir, options

    def __len__(self) -> int:
        return len(self.images)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, {len(self)} images, {self.objects()} annotations)"

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        return self.image(i), self.masks(i)

    def objects(self, images: int | None = None) -> int:
        """How many annotations the first `images` images (default all) hold."""
        return sum(len(e.annotations) for e in self.images[:images])

    def skip_counts(self) -> dict:
        """What was skipped, by kind: crowd, invalid and small annotations, and images."""
        return {"crowd": self.crowd, "invalid": len(self.skipped), "small": self.small, "images": len(self.bad_images)}

    def skipped_text(self) -> str:
        """What was skipped, the first of each kind named ('' for nothing)."""
        parts = []
        if self.crowd:
            parts.append(f"{self.crowd} crowd annotation{_s(self.crowd)}")
        if self.small:
            parts.append(f"{self.small} smaller than {self.options.min_area} pixels")
        if self.skipped:
            parts.append(f"{len(self.skipped)} unusable annotation{_s(len(self.skipped))} (first: {self.skipped[0]})")
        if self.bad_images:
            parts.append(f"{len(self.bad_images)} image{_s(len(self.bad_images))} (first: {self.bad_images[0]})")
        return ", ".join(parts)

    def summary(self) -> str:
        """One line: what was read, and what was skipped."""
        n, m, skipped = len(self), self.objects(), self.skipped_text()
        return f"{self.name}: {n} image{_s(n)}, {m} object{_s(m)}" + (f"; skipped {skipped}" if skipped else "")

    def image(self, i: int) -> np.ndarray:
        """(H, W, 3) uint8 RGB of image i; ValueError naming the file when it cannot be read as checked."""
        e = self.images[i]
        if not e.file.is_file():
            raise ValueError(f"{self.name}: image not found: {e.file}")
        try:
            image = read_image(e.file)
        except ValueError as err:
            raise ValueError(f"{err}; its header passed the start-up check but its pixels do not decode: "
                             "remove it from the data (a training run then continues with --resume --allow-data-changes)") from None
        if image.shape[:2] != (e.height, e.width):
            raise ValueError(f"{e.file}: image is {image.shape[0]}x{image.shape[1]}, its annotations say {e.height}x{e.width}")
        return image

    def masks(self, i: int, which: Sequence[int] | None = None) -> np.ndarray:
        """(n, H, W) bool masks of image i's annotations (or of those at the positions `which`), in
        order; only those are decoded."""
        e = self.images[i]
        annotations = e.annotations if which is None else [e.annotations[k] for k in which]
        out = np.zeros((len(annotations), e.height, e.width), bool)
        if e.labels is not None:
            ids = read_labels(e.labels)
            if ids.shape != (e.height, e.width):
                raise ValueError(f"{e.labels}: label image is {ids.shape[0]}x{ids.shape[1]}, its image {e.height}x{e.width}")
            for k, a in enumerate(annotations):
                out[k] = ids == a.id
            return out
        segs = [a.segmentation for a in annotations]
        if e.json is not None:  # read again, and checked again: the file may have changed since
            data = read_json(e.json)
            listed = data.get("annotations") if isinstance(data, dict) else None
            segs = [listed[a.index].get("segmentation") if isinstance(listed, list) and a.index < len(listed)
                    and isinstance(listed[a.index], dict) else None for a in annotations]
            for a, seg in zip(annotations, segs):
                problem = check_segmentation(seg, e.height, e.width)
                if problem:
                    raise ValueError(f"{e.json}: annotation {a.index} changed since it was checked: {problem}")
        for k, seg in enumerate(segs):
            out[k] = decode_segmentation(seg, e.height, e.width)
        return out


# ----------------------------------------------------------------------------- reading a set
class Outcome(NamedTuple):
    """One image's start-up check: its entry (None: left out), and what was skipped."""
    entry: AnnotatedImage | None
    skipped: list[str]
    small: int = 0
    bad_image: str | None = None
    crowd: int = 0
    part: str = ""  # its share of the set's digest


def check_all(check: Callable[[Any], Outcome], items: Sequence, threads: int,
              progress: Callable[[int, int], None] | None = None) -> list[Outcome]:
    """`check` of every item, `threads` at a time; the outcomes in order, and the first failure
    (in order) raised once the checks under way end."""
    outcomes = []
    pool = ThreadPoolExecutor(max_workers=threads)
    try:
        for outcome in pool.map(check, items):
            outcomes.append(outcome)
            if progress is not None:
                progress(len(outcomes), len(items))
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return outcomes


def assemble(name: str, kind: str, outcomes: Iterable[Outcome], skipped: list[str], crowd: int, sha256: str,
             image_dir: Path | None, options: DataOptions) -> AnnotationSet:
    """The set of the images kept; ValueError when none is."""
    entries, small, bad = [], 0, []
    for o in outcomes:
        skipped += o.skipped
        crowd += o.crowd
        small += o.small
        if o.bad_image:
            bad.append(o.bad_image)
        if o.entry is not None:
            entries.append(o.entry)
    data = AnnotationSet(name, kind, entries, skipped, crowd, sha256, small=small, bad_images=bad, image_dir=image_dir,
                         options=options)
    if not data.images:
        why = data.skipped_text()
        raise ValueError(f"{name}: no image with a usable annotation" + (f" (skipped {why})" if why else ""))
    return data


def resolve(root: Path, name: str, allow_outside: bool, source: Path, hint: str = "") -> Path:
    """The file `name` under `root`; ValueError when it is missing, or leads out of `root` (by
    `..`, an absolute path or a symbolic link) without `allow_outside`."""
    file = root / name
    if not allow_outside:
        base, real = root.resolve(), file.resolve()
        if base not in real.parents:
            raise ValueError(f"{source}: {name!r} leads outside the data folder {root} (to {real}); "
                             "--allow-outside-data-dir reads it")
    if not file.is_file():
        raise ValueError(f"{source}: image not found: {file}{hint}")
    return file


def annotation(a: dict, index: int, seg, checked: Checked) -> Annotation:
    """The record of a checked annotation: its own id, area and box, or the mask's."""
    area, bbox = a.get("area"), a.get("bbox")
    if not (is_number(area) and area >= 0):
        area = checked.pixels
    if not (isinstance(bbox, list) and len(bbox) == 4 and all(is_number(v) for v in bbox) and min(bbox[2:]) >= 0):
        bbox = tight_box(checked.rle)
    ident = a.get("id", index)
    return Annotation(ident if is_id(ident) else index, area, tuple(bbox), index, seg, checked.pixels)


def declared_size(entry: dict, where: str) -> tuple[int, int] | None:
    """An image entry's (height, width); None when it states neither (the file's size is read)."""
    h, w = entry.get("height"), entry.get("width")
    if h is None and w is None:
        return None
    if not all(is_int(v) and v > 0 for v in (h, w)):
        raise ValueError(f"{where}: height and width must be positive integers, got {brief(h)} and {brief(w)}")
    return int(h), int(w)


def read_json(path: Path, raw: bytes | None = None):
    """The JSON in `path` (or its bytes `raw`); a one-line ValueError naming it otherwise."""
    try:
        return json.loads(path.read_bytes() if raw is None else raw)
    except RecursionError:
        raise ValueError(f"{path}: not a readable JSON file (nested too deeply)") from None
    except (OSError, ValueError) as e:  # ValueError: bad JSON or UTF-8, or an integer of thousands of digits
        raise ValueError(f"{path}: not a readable JSON file ({e.__class__.__name__}: {e})") from None


def json_text(value) -> str:
    """Canonical JSON of a checked value (sorted keys, no spaces): what digests cover."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def label(a: dict, k: int) -> str:
    """How a message names annotation `a` at position k: by its id when it has one."""
    ident = a.get("id", k)
    return str(ident)[:40] if is_id(ident) else f"at {k}"


def is_int(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def is_id(v) -> bool:
    return is_int(v) or isinstance(v, str)


def is_number(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)


def brief(v) -> str:
    """A value of a file, briefly (never the whole of a huge or deeply nested one)."""
    if isinstance(v, str):
        return repr(v[:40] + ("..." if len(v) > 40 else ""))
    if isinstance(v, list):
        return f"a list of {len(v)}"
    if isinstance(v, dict):
        return "an object"
    if v is None:
        return "nothing"
    if isinstance(v, int) and v.bit_length() > 128:
        return "a huge integer"
    return repr(v)[:40]


def _s(n: int) -> str:
    return "" if n == 1 else "s"
