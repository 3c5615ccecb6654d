"""`sam-jax eval` on the data formats and hostile data of the training tests: a folder of images
with instance label images evaluates as the same objects written as a COCO file, skipped images
and small objects are counted in results.json, and a minimum object area is part of the recorded
work."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import jax
import pytest

from sam_jax.cli import main as cli
from sam_jax.io.coco import DataOptions, read_annotations
from sam_jax.runners import ModelSpec, evaluate_to_folder

from tests.reference.hostile_data import rle, square, write_label_folder


@pytest.fixture(scope="module")
def cells(tmp_path_factory) -> tuple[Path, Path, Path]:
    """The label folder, and the same objects as a COCO file over the same images."""
    images, labels, ids = write_label_folder(tmp_path_factory.mktemp("cells") / "cells")
    coco = {"images": [], "annotations": []}
    for k, (stem, name) in enumerate((("a", "a.png"), ("b", "b.tif"))):
        truth = ids[stem]
        coco["images"].append({"id": stem, "file_name": name, "height": truth.shape[0], "width": truth.shape[1]})
        for value in sorted(set(truth.ravel().tolist()) - {0}):
            coco["annotations"].append({"id": value, "image_id": stem, "segmentation": rle(truth == value)})
    path = images / "instances.json"
    path.write_text(json.dumps(coco))
    return images, labels, path


def test_label_folder_evaluates_as_the_same_coco_objects(tiny, cells, tmp_path, capsys):
    images, labels, coco = cells
    run = lambda data, out: evaluate_to_folder(ModelSpec(str(tiny.model_dir)), data, out, prompt="box", select="oracle",
                                               devices=jax.devices()[:1], quiet=True)
    as_labels = run(read_annotations(images, labels=labels), tmp_path / "labels")
    as_coco = run(read_annotations(coco), tmp_path / "coco")
    rows = lambda p: [(r["annotation_id"], r["image_id"], r["area"], r["iou"], r["output"]) for r in csv.DictReader(p.open())]
    assert rows(tmp_path / "labels" / "per_object.csv") == rows(tmp_path / "coco" / "per_object.csv")
    assert len(rows(tmp_path / "coco" / "per_object.csv")) == 6
    results = as_labels.results
    assert results["data"]["kind"] == "labels" and results["skipped"] == {"crowd": 0, "invalid": 0, "small": 0, "images": 3}
    assert as_coco.results["skipped"] == {"crowd": 0, "invalid": 0, "small": 0, "images": 0}

    # The command: the data's summary line, the results; a minimum area is recorded with the work.
    out = tmp_path / "cli"
    argv = ["eval", "--checkpoint", str(tiny.model_dir), "--data", str(images), "--labels", str(labels), "--prompt", "box",
            "--min-object-area", "5", "--output", str(out), "--cache-dir", ""]
    capsys.readouterr()
    assert cli(argv) == 0
    printed = capsys.readouterr().out
    assert f"sam-jax eval: {labels}: 2 images, 5 objects; skipped 1 smaller than 5 pixels, 3 images (first: " in printed
    assert "skipped 0 crowd, 0 unusable and 1 small annotation(s), and 3 image(s)" in printed
    recorded = json.loads((out / "results.json").read_text())
    assert recorded["data"]["min_area"] == 5 and recorded["count"] == 5
    with pytest.raises(FileExistsError, match="data.min_area: 5 -> None"):  # without the minimum: other work
        evaluate_to_folder(ModelSpec(str(tiny.model_dir)), read_annotations(images, labels=labels), out, prompt="box",
                           quiet=True)


def test_skipped_images_are_counted_in_results(tiny, eval_set, tmp_path):
    data = json.loads(eval_set.read_text())
    data["images"].append({"id": 50, "file_name": "broken.png", "height": 256, "width": 256})
    data["annotations"].append({"id": 5000, "image_id": 50, "segmentation": rle(square(256, 256, 10, 10, 200))})
    (eval_set.parent / "broken.png").write_bytes(b"not a PNG")
    f = eval_set.with_name("with_broken.json")
    f.write_text(json.dumps(data))
    pixels = sorted(a.pixels for e in read_annotations(f).images for a in e.annotations)
    annotations = read_annotations(f, options=DataOptions(min_area=pixels[2] + 1))  # the three smallest skipped
    result = evaluate_to_folder(ModelSpec(str(tiny.model_dir)), annotations, None, prompt="box", devices=jax.devices()[:1],
                                quiet=True)
    assert result.results["skipped"] == {"crowd": 2, "invalid": 1, "small": 3, "images": 1}
    assert len(pixels) == 6 and result.results["count"] == 3
