"""Data sets that real and hostile data look like, for the data tests of training and evaluation:
a COCO file with every kind of broken annotation and image beside good ones (`write_hostile_coco`),
and a folder of images with instance label images (`write_label_folder`)."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import cv2  # the test extra: writes 16-bit colour PNG, which Pillow cannot
import numpy as np
from PIL import Image

from sam_jax.io.rle import coco_encode_rle, mask_to_rle
from sam_jax.train.synthetic_shapes import make_example, write_coco


def rle(mask: np.ndarray) -> dict:
    return coco_encode_rle(mask_to_rle(mask[None])[0])


def square(h: int, w: int, y: int, x: int, side: int) -> np.ndarray:
    m = np.zeros((h, w), bool)
    m[y:y + side, x:x + side] = True
    return m


# Annotations of image 0 that must be skipped: id -> (segmentation, the words of the reason).
BAD_SEGMENTATIONS = {
    501: ([[10.0, 10.0, float("nan"), 20.0, 30.0, 30.0]], "holds nan"),
    502: ([[10.0, 10.0, float("inf"), 20.0, 30.0, 30.0]], "holds inf"),
    503: ([[10.0, 10.0, 1e9, 20.0, 30.0, 30.0]], "beyond 4 times the image's size"),
    504: ([[10.0, 10.0, 3e7, 20.0, 30.0, 30.0]], "beyond 4 times the image's size"),
    505: ([["10", "10", "20", "20", "30", "30"]], "not a number"),
    506: ({"size": [64, 64], "counts": [100, 20]}, "sum to 120, less than height x width"),
    507: ({"size": [64, 64], "counts": "52"}, "sum to 7, less than height x width"),
    508: ({"size": [64, 64], "counts": rle(square(64, 64, 5, 5, 9))["counts"] + "1"}, "sum to more than"),
    509: ({"size": [64, 64], "counts": "not an RLE!"}, "outside '0'..'o'"),
    510: ({"size": [64, 64], "counts": "1P"}, "end inside a run"),
    511: ({"size": [64, 64], "counts": [4000, -10, 106]}, "negative run"),
    512: ({"size": [32, 64], "counts": rle(square(32, 64, 2, 2, 9))["counts"]}, "differs from the image's"),
    513: ([[5, 5, 5, 5, 5, 5]], "empty mask"),
    514: ("polygon", "neither an RLE nor a list of polygons"),
}


def _jpeg_turned(pixels: np.ndarray) -> bytes:
    """A JPEG of `pixels` (stored as they are) whose EXIF orientation (6) turns them a quarter clockwise."""
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "JPEG", exif=exif.tobytes(), quality=95)
    return buf.getvalue()


def write_hostile_coco(folder: Path) -> Path:
    """Six shape images with good RLE annotations (ids 1...), and beside them: BAD_SEGMENTATIONS on
    image 0, a crowd region and a 9-pixel object on image 0, an annotation that is no object, one
    of no image; images: garbage bytes (id 100), a truncated PNG (101), an entry without height
    and width (102, kept), an EXIF-turned JPEG whose entry gives the turned size (103, kept) and one
    whose entry gives the stored size (104, skipped), 16-bit colour (105, skipped), each with one
    good annotation. Returns the JSON's path."""
    path = write_coco(folder, 6, seed=5)
    data = json.loads(path.read_text())
    anns = data["annotations"]
    for ident, (seg, _) in BAD_SEGMENTATIONS.items():
        anns.append({"id": ident, "image_id": 0, "iscrowd": 0, "segmentation": seg, "category_id": 1})
    anns.append({"id": 600, "image_id": 0, "iscrowd": 1, "segmentation": rle(square(64, 64, 40, 40, 20)), "category_id": 1})
    anns.append({"id": 601, "image_id": 0, "iscrowd": 0, "segmentation": rle(square(64, 64, 1, 1, 3)), "category_id": 1})
    anns.append(5)
    anns.append({"id": 602, "image_id": 999, "iscrowd": 0, "segmentation": rle(square(64, 64, 1, 1, 30))})

    image, _ = make_example(seed=9, index=0)
    (folder / "garbage.png").write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    png = io.BytesIO()
    Image.fromarray(image).save(png, "PNG")
    (folder / "truncated.png").write_bytes(png.getvalue()[: len(png.getvalue()) // 2])
    shutil.copy(folder / "000001.png", folder / "no_size.png")
    stored = image[:48]  # 48 x 64 stored, 64 x 48 as shown
    (folder / "turned.jpg").write_bytes(_jpeg_turned(stored))
    (folder / "turned_raw_size.jpg").write_bytes(_jpeg_turned(stored))
    cv2.imwrite(str(folder / "rgb16.png"), np.random.default_rng(1).integers(0, 4096, (64, 64, 3), dtype=np.uint16))
    extra = [(100, "garbage.png", 64, 64), (101, "truncated.png", 64, 64), (102, "no_size.png", None, None),
             (103, "turned.jpg", 64, 48), (104, "turned_raw_size.jpg", 48, 64), (105, "rgb16.png", 64, 64)]
    for ident, name, h, w in extra:
        entry = {"id": ident, "file_name": name}
        if h is not None:
            entry.update(height=h, width=w)
        data["images"].append(entry)
        hh, ww = (h, w) if h is not None else (64, 64)
        anns.append({"id": 700 + ident, "image_id": ident, "iscrowd": 0, "segmentation": rle(square(hh, ww, 10, 10, 20)),
                     "category_id": 1})
    path.write_text(json.dumps(data))  # NaN and Infinity as Python's json writes (and reads) them
    return path


def write_label_folder(folder: Path) -> tuple[Path, Path, dict]:
    """`images/` and `labels/`: a.png (40x50 RGB) with 16-bit PNG labels (ids 3, 7, 300 and a
    4-pixel id 9), b.tif (12-bit greyscale, 30x20) with int32 TIFF labels (ids 1, 2; id 2 in two
    pieces), c.png without a label image, d.png with an RGB label image, e.png with a label image of
    another size. Returns the folders and {stem: label array} of the labelled ones."""
    images, labels = folder / "images", folder / "labels"
    images.mkdir(parents=True)
    labels.mkdir()
    r = np.random.default_rng(3)
    a = np.zeros((40, 50), np.uint16)
    a[2:12, 3:20], a[15:35, 5:15], a[20:38, 30:48], a[0:2, 48:50] = 3, 7, 300, 9
    Image.fromarray(r.integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(images / "a.png")
    Image.fromarray(a).save(labels / "a.png")
    b = np.zeros((30, 20), np.int32)
    b[1:10, 1:10], b[12:15, 2:18], b[20:28, 4:9] = 1, 2, 2
    Image.fromarray(r.integers(0, 4096, (30, 20)).astype(np.uint16)).save(images / "b.tif")
    Image.fromarray(b, "I").save(labels / "b.tif")
    for stem in "cde":
        Image.fromarray(r.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(images / f"{stem}.png")
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(labels / "d.png")
    Image.fromarray(np.ones((16, 17), np.uint8)).save(labels / "e.png")
    return images, labels, {"a": a.astype(np.int64), "b": b.astype(np.int64)}
