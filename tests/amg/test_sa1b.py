"""SA-1B writer and loader."""

import json

import numpy as np
import pytest
from PIL import Image

from sam_jax.io import rle, sa1b


def _records(masks):
    return [
        {"segmentation": m, "area": int(m.sum()), "bbox": [0, 0, 3, 3], "predicted_iou": 0.9, "point_coords": [[1.0, 2.0]],
         "stability_score": 0.95, "crop_box": [0, 0, m.shape[1], m.shape[0]]}
        for m in masks
    ]


def test_write_then_iterate_round_trips_masks_and_image(tmp_path):
    rng = np.random.default_rng(0)
    masks = rng.random((5, 13, 21)) < 0.4
    image = rng.integers(0, 256, (13, 21, 3), dtype=np.uint8)
    Image.fromarray(image).save(tmp_path / "im.png")
    records = _records(masks)
    records[1]["segmentation"] = rle.mask_to_rle(masks[1:2])[0]  # uncompressed_rle output mode
    records[2]["segmentation"] = rle.coco_encode_rle(rle.mask_to_rle(masks[2:3])[0])  # coco_rle output mode
    sa1b.write_sa1b(tmp_path / "im.json", records, (13, 21), "im.png", image_id=7)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []

    [(img, decoded, data)] = list(sa1b.iter_sa1b(tmp_path))
    np.testing.assert_array_equal(img, image)
    np.testing.assert_array_equal(decoded, masks)
    assert data["image"] == {"image_id": 7, "width": 21, "height": 13, "file_name": "im.png"}
    assert [a["id"] for a in data["annotations"]] == list(range(5))
    assert data["annotations"][0]["point_coords"] == [[1.0, 2.0]]


def test_failed_write_leaves_nothing(tmp_path):
    records = _records(np.ones((1, 4, 4), bool))
    records[0]["area"] = object()  # not JSON-serialisable: fails mid-write
    with pytest.raises(TypeError):
        sa1b.write_sa1b(tmp_path / "x.json", records, (4, 4), "x.png")
    assert list(tmp_path.iterdir()) == []


def test_not_sa1b_is_named(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps([1, 2]))
    with pytest.raises(ValueError, match="a.json: not an SA-1B"):
        sa1b.read_sa1b(tmp_path / "a.json")
    (tmp_path / "b.json").write_text("{")
    with pytest.raises(ValueError, match="b.json: not a readable JSON"):
        sa1b.read_sa1b(tmp_path / "b.json")
