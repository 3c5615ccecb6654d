"""Training data: COCO instance annotations, SA-1B folders and folders of instance label images
as random-access data sets (`sam_jax.io.coco`, the reader evaluation uses too), the per-example
preparation (the model's own resize, padding, object sampling), and the Grain pipeline (one
global stream whatever the process count, each process loading its rows of every batch,
resumable at any step).

Every image and segmentation is checked once at start-up (`sam_jax.io.coco`): what cannot be used
is skipped and counted (`dataset.summary()` says it in one line), a file that is not what it should
be stops with a one-line ValueError. An example decodes only the masks it samples.
"""

from __future__ import annotations

from pathlib import Path

import grain
import numpy as np

from ..io.annotations import AnnotatedImage, AnnotationSet, DataOptions
from ..io.coco import read_annotations
from ..runtime.progress import checking
from ..transforms import ResizeLongestSide

MAX_AREA_FRACTION = 0.9  # masks covering more of the image are dropped (the paper does)

MaskDataset = AnnotationSet  # training reads what evaluation reads: data[i] -> (image, masks (n, H, W) bool)


def open_dataset(path: str | Path, image_dir: str | Path | None = None, *, labels: str | Path | None = None,
                 options: DataOptions = DataOptions(), quiet: bool = True) -> MaskDataset:
    """`path` a COCO JSON file, an SA-1B folder, or with `labels` a folder of images and `labels`
    the folder of their label images (`sam_jax.io.labels`); see `sam_jax.io.coco.read_annotations`.
    options: which objects are kept, whether paths may leave the data folder, the loader's
    threads. The start-up checks show a bar on a terminal unless `quiet`."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"training data not found: {path}")
    return read_annotations(path, image_dir, labels=labels, options=options, progress=checking("sam-jax: checking", quiet))


def coco_dataset(path: str | Path, image_dir: str | Path | None = None, options: DataOptions = DataOptions()) -> MaskDataset:
    """A COCO instances JSON; `file_name`s relative to `image_dir` (default: the JSON's folder)."""
    return open_dataset(Path(path), image_dir, options=options)


def sa1b_dataset(folder: str | Path, options: DataOptions = DataOptions()) -> MaskDataset:
    """A folder of SA-1B pairs: `<name>.json` annotations beside their image."""
    return open_dataset(Path(folder), options=options)


def labels_dataset(images: str | Path, labels: str | Path, options: DataOptions = DataOptions()) -> MaskDataset:
    """A folder of images and the folder of their instance label images (`sam_jax.io.labels`)."""
    return open_dataset(Path(images), labels=labels, options=options)


def sample_objects(entry: AnnotatedImage, objects: int, rng: np.random.Generator) -> list[int]:
    """Positions (in `entry.annotations`) of the objects an example trains on: those covering at
    most 90% of the image, and `objects` of them at random when there are more: the draw `prepare`
    makes from all the masks, made from the pixel counts so that only these masks are decoded."""
    limit = MAX_AREA_FRACTION * entry.height * entry.width
    keep = [k for k, a in enumerate(entry.annotations) if a.pixels <= limit]
    if len(keep) > objects:
        keep = [keep[i] for i in np.sort(rng.choice(len(keep), objects, replace=False))]
    return keep


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
        e = self.source.images[index]
        which = sample_objects(e, self.objects, rng)
        image = None if self.embeddings is not None else self.source.image(index)
        masks, size = self.source.masks(index, which), (e.height, e.width)
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
                     num_threads: int | None = None, augment=None) -> grain.IterDataset:
    """Endless batches of `batch_size` (the global batch, over all processes) from one stream of
    examples: every image once per epoch, reshuffled each epoch, each example's random choices
    seeded by its position. The stream depends only on `seed`, so a run gives the same batches on
    any number of devices and processes. This process reads only the `rows` of each batch that its
    devices hold (default all of them; rows >= `batch_size` are blank padding, so that a batch
    splits evenly over the devices). `start`: the first batch, so that a run resumed at step k
    continues exactly, on any number of processes. image_size: as `prepare` takes it. num_threads:
    the loader's threads (default: the data set's `options.threads`); the batches do not depend on it.
    augment: as `Prepare` takes it."""
    stream = grain.MapDataset.range(len(source)).seed(seed).shuffle().repeat(None)
    stream = stream.random_map(Prepare(source, image_size, objects, embeddings, augment))
    rows = tuple(range(batch_size)) if rows is None else tuple(rows)
    S = image_size if isinstance(image_size, int) else image_size.target_length
    blank = blank_example(S, objects, None if embeddings is None else embeddings.shape[1:])
    ds = grain.MapDataset.range(len(stream)).map(Rows(stream, batch_size, rows, blank, start))
    ds = ds.batch(len(rows), drop_remainder=True)
    threads = source.options.threads if num_threads is None else num_threads
    return ds.to_iter_dataset(grain.ReadOptions(num_threads=threads, prefetch_buffer_size=2 * len(rows)))
