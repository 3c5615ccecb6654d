"""Annotated images from files (host side): a COCO instances file, a folder of SA-1B pairs or a
folder of images with their instance label images (`labels.py`), read into one form
(`annotations.AnnotationSet`) that keeps what an evaluation reports of each annotation (its id,
area, box) and what training samples by (its pixel count), every segmentation and image checked
once at start-up, the masks decoded on demand. Evaluation and training read their data here.

    data = read_annotations("annotations/instances_val2017.json", image_dir="val2017")
    data.images[0].annotations[0].bbox       # XYWH, as in the file
    image, masks = data.image(0), data.masks(0)
    print(data.summary())                   # what was read and what was skipped, in one line

COCO: images in the order of the file's `images` list, each with its annotations in file order;
`file_name` relative to `image_dir` (default: the JSON's folder). SA-1B: one `<name>.json` per
image beside it, in sorted name order.

Checked at start-up, in parallel (`DataOptions.threads`); skipped and counted (`skipped`, `crowd`,
`small`, `bad_images`, the first of each kind named by `summary()`):
- an annotation that is not an object, names no image, or whose segmentation fails
  `segmentations.inspect_segmentation` (RLE runs, polygon coordinates, the size, no pixel);
- `iscrowd` annotations (COCO's crowd regions: several objects in one mask), unless `crowd`;
- masks of fewer than `min_area` pixels;
- an image whose header Pillow cannot read (or whose PNG checksums fail), or whose size (EXIF
  orientation applied, as everywhere) differs from the one its entry states; an entry without
  `height` and `width` takes the file's.
An image left without annotations is left out. Fatal, one line naming the file and the entry: a
file that is not what it should be (not JSON, nested too deep, an image entry that is not an
object or has no `id` or no string `file_name`, an SA-1B `annotations` that is no list), a missing
image, an image path that leads out of the data folder (`..`, an absolute path, a symbolic link
out) unless `allow_outside`, or nothing usable at all.

Each annotation's `area` and `bbox` are the file's own (COCO's polygon area, not a pixel count);
when the file has none (or not finite numbers), the mask's pixel count and its tight box. The
set's `sha256` is the digest of the annotation file (SA-1B: of its JSON files' names and digests),
not of the images; each image's own `sha256` covers its name, size and the content of the
annotations used, which is what a training run's record digests.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

from .annotations import (  # noqa: F401 (AnnotatedImage, Annotation, AnnotationSet, DataOptions: named here too)
    AnnotatedImage, Annotation, AnnotationSet, DataOptions, Outcome, annotation, assemble, brief, check_all,
    declared_size, is_id, json_text, label, read_json, resolve,
)
from .images import read_header
from .labels import read_label_folder
from .outputs import file_digest
from .segmentations import check_segmentation, decode_segmentation, inspect_segmentation  # noqa: F401 (named here too)

Progress = Callable[[int, int], None]  # (images checked, of how many)


def read_annotations(path: str | Path, image_dir: str | Path | None = None, *, labels: str | Path | None = None,
                     options: DataOptions = DataOptions(), progress: Progress | None = None) -> AnnotationSet:
    """A COCO instances JSON (file names relative to `image_dir`, default its folder), an SA-1B
    folder, or with `labels` a folder of images (`path`) and the folder of their label images.
    progress: called with (images checked, of how many) during the start-up checks."""
    path, options = Path(path), options.checked()
    if not path.exists():
        raise FileNotFoundError(f"annotations not found: {path}")
    if labels is not None:
        if image_dir is not None:
            raise ValueError("--image-dir applies to a COCO JSON, not to a folder of images with label images")
        return read_label_folder(path, labels, options, progress)
    if path.is_dir():
        if image_dir is not None:
            raise ValueError("--image-dir applies to a COCO JSON, not to an SA-1B folder")
        return read_sa1b_folder(path, options, progress)
    return read_coco(path, image_dir, options, progress)


def read_coco(path: str | Path, image_dir: str | Path | None = None, options: DataOptions = DataOptions(),
              progress: Progress | None = None) -> AnnotationSet:
    path = Path(path)
    data = read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("images"), list) or not isinstance(data.get("annotations"), list):
        raise ValueError(f"{path}: not a COCO instances file (expected 'images' and 'annotations' lists)")
    root = Path(image_dir) if image_dir is not None else path.parent
    images: dict = {}  # id -> (position, file_name, declared size or None)
    for k, im in enumerate(data["images"]):
        where = f"{path}: images[{k}]"
        if not isinstance(im, dict):
            raise ValueError(f"{where} is not an object")
        ident = im.get("id")
        if not is_id(ident):
            raise ValueError(f"{where} has no id (an integer or a string), got {brief(ident)}")
        if ident in images:
            raise ValueError(f"{where} repeats the id {ident!r} of images[{images[ident][0]}]")
        name = im.get("file_name")
        if not (isinstance(name, str) and name):
            raise ValueError(f"{where} (id {ident!r}): file_name must be a non-empty string, got {brief(name)}")
        images[ident] = (k, name, declared_size(im, where))
    by_image: dict = {}
    skipped, crowd = [], 0
    for k, a in enumerate(data["annotations"]):
        if not isinstance(a, dict):
            skipped.append(f"{path}: annotations[{k}]: not an object")
        elif a.get("iscrowd") and not options.crowd:
            crowd += 1
        elif not (is_id(a.get("image_id")) and a["image_id"] in images):
            skipped.append(f"{path}: annotation {label(a, k)}: no such image_id {brief(a.get('image_id'))}")
        else:
            by_image.setdefault(a["image_id"], []).append((k, a))
    hint = "" if image_dir else " (file names are relative to the JSON's folder; see --image-dir)"

    def check(image_id) -> Outcome:
        _, name, declared = images[image_id]
        return check_image(path, image_id, name, root, declared, by_image[image_id], options, hint)

    outcomes = check_all(check, [i for i in images if i in by_image], options.threads, progress)
    return assemble(str(path), "coco", outcomes, skipped, crowd, file_digest(path),
                    None if image_dir is None else Path(image_dir), options)


def read_sa1b_folder(folder: str | Path, options: DataOptions = DataOptions(), progress: Progress | None = None) -> AnnotationSet:
    folder = Path(folder)

    def check(path: Path) -> Outcome:
        raw = _read_bytes(path)
        data = read_json(path, raw)
        info = data.get("image") if isinstance(data, dict) else None
        listed = data.get("annotations") if isinstance(data, dict) else None
        if not isinstance(info, dict) or not isinstance(listed, list):
            raise ValueError(f"{path}: not an SA-1B annotation file (expected an 'image' object with file_name, "
                             f"height and width, and an 'annotations' list; 'annotations' is {brief(listed)})")
        name = info.get("file_name")
        if not (isinstance(name, str) and name):
            raise ValueError(f"{path}: image: file_name must be a non-empty string, got {brief(name)}")
        image_id = info.get("image_id", path.stem)
        found, skipped, crowd = [], [], 0
        for k, a in enumerate(listed):
            if not isinstance(a, dict):
                skipped.append(f"{path}: annotation {k}: not an object")
            elif a.get("iscrowd") and not options.crowd:
                crowd += 1
            else:
                found.append((k, a))
        json_sha256 = hashlib.sha256(raw).hexdigest()
        out = check_image(path, image_id if is_id(image_id) else path.stem, name, folder,
                          declared_size(info, f"{path}: image"), found, options, "", json=(path, json_sha256))
        return out._replace(skipped=skipped + out.skipped, crowd=crowd, part=f"{path.name}\0{json_sha256}\0")

    outcomes = check_all(check, sorted(folder.glob("*.json")), options.threads, progress)
    digest = hashlib.sha256("".join(o.part for o in outcomes).encode()).hexdigest()
    return assemble(str(folder), "sa1b", outcomes, [], 0, digest, None, options)


def check_image(source: Path, image_id, name: str, root: Path, declared: tuple[int, int] | None,
                found: list[tuple[int, dict]], options: DataOptions, hint: str,
                json: tuple[Path, str] | None = None) -> Outcome:
    """One image of a COCO file or SA-1B folder: the annotations `found` ((position, annotation)
    pairs) checked against its size (`declared` by its entry, else the file's), then its header.
    json: an SA-1B image's annotation file and its digest (its segmentations are read again when
    decoded, not kept)."""
    file = resolve(root, name, options.allow_outside, source, hint) if declared is None else None
    if file is not None:
        try:
            declared = read_header(file)[:2]
        except ValueError as e:
            return Outcome(None, [], bad_image=str(e))  # names the file
    h, w = declared
    annotations, skipped, small = [], [], 0
    content = hashlib.sha256(f"{name}\0{h}\0{w}\0{json[1] if json else ''}\0".encode())
    for k, a in found:
        seg = a.get("segmentation")
        checked = inspect_segmentation(seg, h, w)
        if checked.problem:
            skipped.append(f"{source}: annotation {label(a, k)}: {checked.problem}")
        elif checked.pixels < options.min_area:
            small += 1
        else:
            annotations.append(annotation(a, k, None if json else seg, checked))
            content.update(f"{k}\0".encode() if json else json_text(seg).encode() + b"\0")
    if not annotations:
        return Outcome(None, skipped, small)
    if file is None:
        file = resolve(root, name, options.allow_outside, source, hint)
        try:
            header = read_header(file)
        except ValueError as e:
            return Outcome(None, skipped, small, str(e))
        if header[:2] != (h, w):
            turned = (" (its size before its EXIF orientation; sam-jax applies the orientation everywhere, so the entry "
                      "must give the turned size)" if header.turned and header[:2] == (w, h) else "")
            return Outcome(None, skipped, small, f"{file}: image is {header.height}x{header.width}, its entry says "
                                                 f"{h}x{w}{turned}")
    entry = AnnotatedImage(image_id, file, h, w, tuple(annotations), json[0] if json else None, None, content.hexdigest())
    return Outcome(entry, skipped, small)


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise ValueError(f"{path}: not a readable JSON file ({e.__class__.__name__}: {e})") from None
