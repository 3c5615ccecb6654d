"""SA-1B annotation files (host side): one JSON per image, as released with the SA-1B dataset.

    {"image": {"image_id", "width", "height", "file_name"},
     "annotations": [{"id", "segmentation": COCO RLE, "bbox": XYWH, "area", "predicted_iou",
                      "stability_score", "crop_box": XYWH, "point_coords": [[x, y]]}, ...]}
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .images import read_image
from .outputs import atomic_file
from .rle import coco_decode_rle, coco_encode_rle, mask_to_rle
from .segmentations import check_segmentation

_RECORD_KEYS = ("bbox", "area", "predicted_iou", "stability_score", "crop_box", "point_coords")


def to_sa1b(records: Sequence[dict[str, Any]], image_size: tuple[int, int], file_name: str, image_id: int = 0) -> dict:
    """`SamAutomaticMaskGenerator.generate` records (any output mode) -> an SA-1B dict.

    image_size: (H, W) of the image the records were generated for.
    """
    h, w = image_size
    annotations = []
    for i, r in enumerate(records):
        annotations.append({"id": i, "segmentation": _as_coco_rle(r["segmentation"], (h, w)), **{k: r[k] for k in _RECORD_KEYS}})
    return {"image": {"image_id": image_id, "width": w, "height": h, "file_name": file_name}, "annotations": annotations}


def write_sa1b(path: str | Path, records, image_size: tuple[int, int], file_name: str, image_id: int = 0) -> None:
    """Write records as an SA-1B JSON, atomically: a temporary file in the same folder, then a rename."""
    data = to_sa1b(records, image_size, file_name, image_id)
    with atomic_file(path) as tmp:
        with open(tmp, "w") as f:
            json.dump(data, f)


def read_sa1b(path: str | Path) -> dict:
    """Read and check one SA-1B JSON (every segmentation fully, `segmentations.check_segmentation`;
    empty masks allowed);
    raises a one-line ValueError naming the file, and the annotation, if it is not one."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except RecursionError:
        raise ValueError(f"{path}: not a readable JSON file (nested too deeply)") from None
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: not a readable JSON file ({e})") from None
    info = data.get("image") if isinstance(data, dict) else None
    if not isinstance(info, dict) or not isinstance(data.get("annotations"), list):
        raise ValueError(f"{path}: not an SA-1B annotation file (expected an 'image' object and an 'annotations' list)")
    h, w = info.get("height"), info.get("width")
    if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in (h, w)):
        raise ValueError(f"{path}: the image's height and width must be positive integers")
    for k, a in enumerate(data["annotations"]):
        problem = check_segmentation(a.get("segmentation"), h, w) if isinstance(a, dict) else "not an object"
        if problem and problem != "empty mask":  # a generator may keep an empty mask
            raise ValueError(f"{path}: annotation {a.get('id', k) if isinstance(a, dict) else k}: {problem}")
    return data


def iter_sa1b(paths: str | Path | Sequence[str | Path], load_images: bool = True) -> Iterator[tuple[np.ndarray | None, np.ndarray, dict]]:
    """Yield `(image, masks, data)` for SA-1B JSONs: a folder of them, one file, or a list.

    image: (H, W, 3) uint8 RGB from `file_name` next to the JSON (None if `load_images=False`);
    masks: (N, H, W) bool, one per annotation in file order; data: the parsed JSON.
    """
    for path in _json_paths(paths):
        data = read_sa1b(path)
        h, w = data["image"]["height"], data["image"]["width"]
        masks = np.zeros((len(data["annotations"]), h, w), dtype=bool)
        for i, a in enumerate(data["annotations"]):
            masks[i] = coco_decode_rle(a["segmentation"])
        image = None
        if load_images:
            image = read_image(path.parent / data["image"]["file_name"])
        yield image, masks, data


def _json_paths(paths) -> list[Path]:
    if isinstance(paths, (str, Path)):
        p = Path(paths)
        return sorted(p.glob("*.json")) if p.is_dir() else [p]
    return [Path(p) for p in paths]


def _as_coco_rle(segmentation, size: tuple[int, int]) -> dict:
    if isinstance(segmentation, np.ndarray):
        return coco_encode_rle(mask_to_rle(segmentation[None])[0])
    if isinstance(segmentation["counts"], list):
        return coco_encode_rle(segmentation)
    return {"size": list(segmentation["size"]), "counts": segmentation["counts"]}
