"""Training data: COCO instance annotations and SA-1B folders as random-access data sets, the
per-example preparation (the model's own resize, padding, object sampling), and the Grain pipeline
(one global stream whatever the process count, each process loading its rows of every batch,
resumable at any step).

Bad input is reported by file: a missing image, an unreadable JSON or an image whose size differs
from its annotations stops with a one-line ValueError; a single annotation that does not decode
or has the wrong size is skipped and counted (`dataset.skipped`), fatal only when nothing is left.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import NamedTuple

import grain
import numpy as np

from ..io.coco import check_segmentation, decode_segmentation as decode  # noqa: F401 (both named here before io.coco)
from ..io.images import read_image
from ..transforms import ResizeLongestSide

MAX_AREA_FRACTION = 0.9  # masks covering more of the image are dropped (the paper does)


class Entry(NamedTuple):
    image: Path
    height: int
    width: int
    annotations: tuple  # the valid segmentations (COCO), or indexes into the JSON's annotations (SA-1B)
    json: Path | None = None  # SA-1B: the annotation file, re-read when the entry is loaded


class MaskDataset:
    """Random-access masks of images (Grain's data-source protocol): entry i -> (image, masks (n, H, W) bool)."""

    def __init__(self, entries: list[Entry], name: str, skipped: list[str], image_dir: Path | None = None):
        """name: the COCO JSON or SA-1B folder read; image_dir: where a COCO file's images are (None:
        beside it); together they let `sam_jax.io.coco.read_annotations` read the same data for evaluation."""
        if not entries:
            reason = f" ({len(skipped)} annotations skipped, first: {skipped[0]})" if skipped else ""
            raise ValueError(f"{name}: no image with a usable annotation{reason}")
        self.entries, self.name, self.skipped, self.image_dir = entries, name, skipped, image_dir

    def __len__(self) -> int:
        return len(self.entries)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, {len(self)} images)"

    def image(self, i: int) -> np.ndarray:
        e = self.entries[i]
        if not e.image.is_file():
            raise ValueError(f"{self.name}: image not found: {e.image}")
        image = read_image(e.image)
        if image.shape[:2] != (e.height, e.width):
            raise ValueError(f"{e.image}: image is {image.shape[0]}x{image.shape[1]}, its annotations say {e.height}x{e.width}")
        return image

    def masks(self, i: int) -> np.ndarray:
        e = self.entries[i]
        segs = e.annotations if e.json is None else _sa1b_segmentations(e.json, e.annotations)
        return np.stack([decode(s, e.height, e.width) for s in segs]).astype(bool)

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        return self.image(i), self.masks(i)


def coco_dataset(path: str | Path, image_dir: str | Path | None = None) -> MaskDataset:
    """A COCO instances JSON; `file_name`s relative to `image_dir` (default: the JSON's folder)."""
    path = Path(path)
    data = _read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("images"), list) or not isinstance(data.get("annotations"), list):
        raise ValueError(f"{path}: not a COCO instances file (expected 'images' and 'annotations' lists)")
    root = Path(image_dir) if image_dir is not None else path.parent
    images = {im["id"]: im for im in data["images"]}
    by_image: dict = {}
    skipped = []
    for a in data["annotations"]:
        im = images.get(a.get("image_id"))
        problem = "no such image_id" if im is None else check_segmentation(a.get("segmentation"), im["height"], im["width"])
        if problem:
            skipped.append(f"{path}: annotation {a.get('id')}: {problem}")
            continue
        by_image.setdefault(a["image_id"], []).append(a["segmentation"])
    entries = []
    for image_id, segs in by_image.items():
        im = images[image_id]
        file = root / im["file_name"]
        if not file.is_file():
            raise ValueError(f"{path}: image not found: {file}" + ("" if image_dir else " (file names are relative to the JSON's folder; see --image-dir)"))
        entries.append(Entry(file, im["height"], im["width"], tuple(segs)))
    return MaskDataset(entries, str(path), skipped, None if image_dir is None else Path(image_dir))


def sa1b_dataset(folder: str | Path) -> MaskDataset:
    """A folder of SA-1B pairs: `<name>.json` annotations beside their image."""
    folder = Path(folder)
    files = sorted(folder.glob("*.json"))
    entries, skipped = [], []
    for path in files:
        data = _read_json(path)
        try:
            info = data["image"]
            h, w, file = int(info["height"]), int(info["width"]), folder / info["file_name"]
            annotations = data["annotations"]
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"{path}: not an SA-1B annotation file (expected 'image' with height, width, file_name, and 'annotations')") from None
        if not file.is_file():
            raise ValueError(f"{path}: image not found: {file}")
        good = []
        for k, a in enumerate(annotations):
            problem = check_segmentation(a.get("segmentation") if isinstance(a, dict) else None, h, w)
            if problem:
                skipped.append(f"{path}: annotation {k}: {problem}")
            else:
                good.append(k)
        if good:
            entries.append(Entry(file, h, w, tuple(good), path))
    return MaskDataset(entries, str(folder), skipped)


def open_dataset(path: str | Path, image_dir: str | Path | None = None) -> MaskDataset:
    """`path` a COCO JSON file or an SA-1B folder."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"training data not found: {path}")
    if path.is_dir():
        if image_dir is not None:
            raise ValueError("--image-dir applies to a COCO JSON, not to an SA-1B folder")
        return sa1b_dataset(path)
    return coco_dataset(path, image_dir)


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not a readable JSON file ({e.__class__.__name__}: {e})") from None


def _sa1b_segmentations(path: Path, indexes: tuple) -> list:
    annotations = _read_json(path)["annotations"]
    return [annotations[k]["segmentation"] for k in indexes]


# ---------------------------------------------------------------------------- preparation
def prepare(image: np.ndarray | None, masks: np.ndarray, image_size: int | ResizeLongestSide, objects: int,
            rng: np.random.Generator, original_size: tuple[int, int] | None = None) -> dict:
    """One example in the model-input frame: the image resized with the model's transform and
    zero-padded to (S, S, 3) (omitted when `image` is None, e.g. with cached embeddings), masks
    (objects, S, S) bool resized the same way, valid (objects,) and input_size (2,). Masks over
    90% of the image are dropped; with more than `objects` left, a random subset is kept.
    image_size: S for the official resize (longest side), or the model's transform
    (`transforms.transform_for(config)`: MedSAM's square)."""
    transform = ResizeLongestSide(image_size) if isinstance(image_size, int) else image_size
    image_size = transform.target_length
    H, W = masks.shape[1:] if original_size is None else original_size
    area = masks.sum(axis=(1, 2))
    masks = masks[area <= MAX_AREA_FRACTION * H * W]
    if len(masks) > objects:
        masks = masks[np.sort(rng.choice(len(masks), objects, replace=False))]
    h, w = transform.output_size(H, W)
    out_masks = np.zeros((objects, image_size, image_size), bool)
    for k, m in enumerate(masks):
        out_masks[k, :h, :w] = transform.apply_image(m.astype(np.uint8) * 255) >= 128
    out = {"masks": out_masks, "valid": out_masks.any(axis=(1, 2)), "input_size": np.array([h, w], np.int32)}
    if image is not None:
        padded = np.zeros((image_size, image_size, 3), np.uint8)
        padded[:h, :w] = transform.apply_image(image)
        out["image"] = padded
    return out


class Prepare(grain.transforms.RandomMap):
    """Grain transform: a dataset index -> a prepared example (see `prepare`). With `embeddings`
    ((N, C, h, w), indexed like the source) the image is not read: its cached embedding is used.
    `augment`: (image, masks, rng) -> (image, masks) before the preparation (`augment.augment`)."""

    def __init__(self, source: MaskDataset, image_size: int | ResizeLongestSide, objects: int,
                 embeddings: np.ndarray | None = None, augment=None):
        self.source, self.image_size, self.objects, self.embeddings = source, image_size, objects, embeddings
        self.augment = augment

    def random_map(self, index, rng: np.random.Generator) -> dict:
        index = int(index)
        e = self.source.entries[index]
        image = None if self.embeddings is not None else self.source.image(index)
        masks, size = self.source.masks(index), (e.height, e.width)
        if self.augment is not None and image is not None:
            image, masks = self.augment(image, masks, rng)
            size = image.shape[:2]
        out = prepare(image, masks, self.image_size, self.objects, rng, size)
        if self.embeddings is not None:
            out["embedding"] = np.asarray(self.embeddings[index])
        return out


class Rows(grain.transforms.Map):
    """Grain transform: a local position -> an example of the global stream. Position i is row
    `rows[i % len(rows)]` of global batch `i // len(rows)`; a row past `batch_size` is padding, a
    blank example with no valid object (it changes no loss, gradient or metric)."""

    def __init__(self, stream: grain.MapDataset, batch_size: int, rows: tuple[int, ...], blank: dict, start: int = 0):
        self.stream, self.batch_size, self.rows, self.blank, self.start = stream, batch_size, rows, blank, start

    def map(self, i) -> dict:
        step, r = divmod(int(i), len(self.rows))
        step += self.start
        row = self.rows[r]
        return self.stream[step * self.batch_size + row] if row < self.batch_size else self.blank


def blank_example(image_size: int, objects: int, embedding_shape: tuple[int, ...] | None = None) -> dict:
    """A padding example: zero image (or embedding), full input size, no valid object."""
    S = image_size
    out = {"masks": np.zeros((objects, S, S), bool), "valid": np.zeros((objects,), bool), "input_size": np.array([S, S], np.int32)}
    if embedding_shape is None:
        out["image"] = np.zeros((S, S, 3), np.uint8)
    else:
        out["embedding"] = np.zeros(embedding_shape, np.float32)
    return out


def training_dataset(source: MaskDataset, image_size: int | ResizeLongestSide, objects: int, batch_size: int, seed: int,
                     embeddings: np.ndarray | None = None, rows: tuple[int, ...] | None = None, start: int = 0,
                     num_threads: int = 2, augment=None) -> grain.IterDataset:
    """Endless batches of `batch_size` (the global batch, over all processes) from one stream of
    examples: every image once per epoch, reshuffled each epoch, each example's random choices
    seeded by its position. The stream depends only on `seed`, so a run gives the same batches on
    any number of devices and processes. This process reads only the `rows` of each batch that its
    devices hold (default all of them; rows >= `batch_size` are blank padding, so that a batch
    splits evenly over the devices). `start`: the first batch, so that a run resumed at step k
    continues exactly, on any number of processes. image_size: as `prepare` takes it; augment: as `Prepare` takes it."""
    stream = grain.MapDataset.range(len(source)).seed(seed).shuffle().repeat(None)
    stream = stream.random_map(Prepare(source, image_size, objects, embeddings, augment))
    rows = tuple(range(batch_size)) if rows is None else tuple(rows)
    S = image_size if isinstance(image_size, int) else image_size.target_length
    blank = blank_example(S, objects, None if embeddings is None else embeddings.shape[1:])
    ds = grain.MapDataset.range(len(stream)).map(Rows(stream, batch_size, rows, blank, start))
    ds = ds.batch(len(rows), drop_remainder=True)
    return ds.to_iter_dataset(grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=2 * len(rows)))
