"""`sam-jax eval` and its runner: one line for bad input, the results folder (what it records,
byte-identical on 1 and 2 devices, on 2 processes and on reruns), reruns of the same work found
and not recomputed, other work and foreign folders refused, --limit."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import pytest

from sam_jax.cli import main as cli
from sam_jax.io.outputs import file_digest
from sam_jax.runners import ModelSpec, evaluate_to_folder

from tests.reference.multiprocess import run as run_processes

FLAGS = ["--prompt", "clicks", "--clicks", "2", "--select", "oracle", "--cache-dir", ""]


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def _one_line(capsys, argv, *phrases) -> str:
    capsys.readouterr()
    assert cli(argv) == 2
    err = "".join(line for line in capsys.readouterr().err.splitlines(True) if not line.endswith(" ...\n"))  # started steps
    assert err.count("\n") == 1 and "Traceback" not in err, err
    for phrase in phrases:
        assert phrase in err, err
    return err


@pytest.fixture(scope="module")
def one_device(cases, eval_set, tmp_path_factory) -> Path:
    """The results of the test's protocol on one device, through the library runner."""
    out = tmp_path_factory.mktemp("one") / "results"
    evaluate_to_folder(ModelSpec(str(cases("test_tiny").model_dir)), eval_set, out, prompt="clicks", clicks=2, select="oracle",
                       devices=jax.devices()[:1], quiet=True)
    return out


def test_bad_input_is_one_line(tiny, eval_set, tmp_path, capsys):
    base = ["eval", "--checkpoint", str(tiny.model_dir), "--cache-dir", ""]
    _one_line(capsys, base + ["--data", str(tmp_path / "missing.json")], "missing.json", "not found")
    listed = tmp_path / "list.json"
    listed.write_text("[1, 2]")
    _one_line(capsys, base + ["--data", str(listed)], "list.json", "not a COCO instances file")
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    _one_line(capsys, base + ["--data", str(broken)], "broken.json", "JSON")
    data = json.loads(eval_set.read_text())
    for a in data["annotations"]:
        a["iscrowd"] = 1
    crowd = eval_set.with_name("all_crowd.json")
    crowd.write_text(json.dumps(data))
    _one_line(capsys, base + ["--data", str(crowd)], "no image with a usable annotation", "crowd")
    _one_line(capsys, base + ["--data", str(eval_set), "--prompt", "box", "--clicks", "2"], "--clicks applies to --prompt clicks")
    empty = tmp_path / "empty"
    empty.mkdir()
    _one_line(capsys, base + ["--data", str(empty)], "no image with a usable annotation")


def test_results_folder_records_the_work(tiny, eval_set, one_device):
    results = json.loads((one_device / "results.json").read_text())
    assert results["producer"] == "sam-jax eval" and results["protocol"]["prompt"] == "clicks"
    assert results["protocol"]["clicks"] == 2 and results["protocol"]["select"] == "oracle"
    assert results["model"]["sha256"] == ModelSpec(str(tiny.model_dir)).digest()
    assert results["data"] == {"kind": "coco", "name": "instances.json", "sha256": file_digest(eval_set)}
    assert results["count"] == 6 and results["images"] == 2 and results["skipped"] == {"crowd": 2, "invalid": 1, "small": 0, "images": 0}
    assert sum(v["count"] for v in results["miou_by_area"].values()) == 6 and len(results["miou_per_click"]) == 2
    assert results["per_object_sha256"] == file_digest(one_device / "per_object.csv")
    text = (one_device / "results.json").read_text()
    assert str(os.getpid()) not in text and os.uname().nodename not in text
    rows = list(csv.DictReader((one_device / "per_object.csv").open()))
    assert [r["annotation_id"] for r in rows] == ["103", "106", "109", "112", "115", "77"]
    assert rows[-1]["area"] == "8537.5" and rows[-1]["image_id"] == "8"
    assert list(rows[0])[:2] == ["annotation_id", "iou"] and {"iou_1", "iou_2", "clicks", "area_range"} <= set(rows[0])
    assert float(rows[0]["iou"]) == float(rows[0]["iou_2"])


def test_two_devices_write_the_same_bytes_and_reruns_are_found(tiny, eval_set, one_device, tmp_path, capsys):
    out = tmp_path / "two"
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    r = subprocess.run([sys.executable, "-m", "sam_jax.cli", "eval", "--checkpoint", str(tiny.model_dir), "--data",
                        str(eval_set), "--output", str(out), *FLAGS], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "mIoU" in r.stdout and "by click: 1:" in r.stdout
    assert _files(out) == _files(one_device)

    # The same work again: found, not recomputed (no model loaded), nothing touched.
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    capsys.readouterr()
    assert cli(["eval", "--checkpoint", str(tiny.model_dir), "--data", str(eval_set), "--output", str(out), *FLAGS]) == 0
    assert "found these results" in capsys.readouterr().out
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before
    # Recomputed with overwrite: the same bytes.
    evaluate_to_folder(ModelSpec(str(tiny.model_dir)), eval_set, out, prompt="clicks", clicks=2, select="oracle",
                       overwrite=True, devices=jax.devices()[:1], quiet=True)
    assert _files(out) == _files(one_device)
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} != before


def test_other_work_and_foreign_folders_are_refused(tiny, eval_set, one_device, tmp_path, capsys):
    out = tmp_path / "res"
    out.mkdir()
    for name, content in _files(one_device).items():
        (out / name).write_bytes(content)
    base = ["eval", "--checkpoint", str(tiny.model_dir), "--data", str(eval_set), "--output", str(out), "--cache-dir", ""]
    kept = _files(out)
    _one_line(capsys, base + ["--prompt", "box"], "other work", "protocol.prompt", "--overwrite")
    _one_line(capsys, base + FLAGS[:-2] + ["--limit", "1"], "other work", "protocol.limit")
    (out / "per_object.csv").write_text("annotation_id,iou\n1,1.0\n")
    _one_line(capsys, base + FLAGS[:-2], "not the table sam-jax wrote")
    (out / "per_object.csv").write_bytes(kept["per_object.csv"])
    (out / "notes.txt").write_text("mine")
    _one_line(capsys, base + FLAGS[:-2] + ["--overwrite"], "not sam-jax eval results")
    assert _files(out) == {**kept, "notes.txt": b"mine"}
    _one_line(capsys, base + ["--output", str(eval_set.parent), "--overwrite"], "contains the input")


def test_limit_takes_the_first_images(tiny, eval_set, tmp_path):
    result = evaluate_to_folder(ModelSpec(str(tiny.model_dir)), eval_set, tmp_path / "one", prompt="clicks", clicks=2,
                                select="oracle", limit=1, devices=jax.devices()[:1], quiet=True)
    assert [o.annotation_id for o in result.objects] == [103, 106]
    assert result.results["images"] == 1 and result.results["protocol"]["limit"] == 1


def test_two_processes_write_what_one_writes(tiny, eval_set, one_device, tmp_path):
    out = tmp_path / "procs"
    argv = ["-m", "sam_jax.cli", "eval", "--checkpoint", str(tiny.model_dir), "--data", str(eval_set), "--output", str(out),
            *FLAGS, "--quiet"]
    runs = run_processes(argv, 2, devices_per_process=1, env={"PYTHONPATH": os.environ.get("PYTHONPATH", "")})
    for code, stdout, stderr in runs:
        assert code == 0, stderr[-2000:]
    assert "mIoU" in runs[0][1] and "sam-jax eval" not in runs[1][1]  # process 0 reports
    assert _files(out) == _files(one_device)


def test_an_sa1b_folder_evaluates_as_the_same_coco_file(tiny, eval_set, one_device, tmp_path):
    """The COCO set's images and masks as SA-1B pairs (the polygon rasterised): the same objects, the same IoUs."""
    import shutil

    from sam_jax.io.coco import read_annotations
    from sam_jax.io.rle import coco_encode_rle, mask_to_rle

    coco = read_annotations(eval_set)
    folder = tmp_path / "sa1b"
    folder.mkdir()
    for i, e in enumerate(coco.images):
        shutil.copy(e.file, folder / e.file.name)
        rle = lambda m: coco_encode_rle(mask_to_rle(m[None])[0])
        listed = [{"id": a.id, "segmentation": rle(m), "bbox": list(a.bbox), "area": int(m.sum())}
                  for a, m in zip(e.annotations, coco.masks(i))]
        listed.append({"id": 5, "segmentation": {"size": [1, 1], "counts": "1"}})  # the wrong size: skipped
        info = {"image_id": e.id, "width": e.width, "height": e.height, "file_name": e.file.name}
        (folder / f"{e.file.stem}.json").write_text(json.dumps({"image": info, "annotations": listed}))
    result = evaluate_to_folder(ModelSpec(str(tiny.model_dir)), folder, tmp_path / "out", prompt="clicks", clicks=2,
                                select="oracle", devices=jax.devices()[:1], quiet=True)
    assert result.results["data"]["kind"] == "sa1b" and result.results["skipped"] == {"crowd": 0, "invalid": 2, "small": 0, "images": 0}
    rows = lambda p: [(r["annotation_id"], r["image_id"], r["iou"], r["clicks"]) for r in csv.DictReader(p.open())]
    assert rows(tmp_path / "out" / "per_object.csv") == rows(one_device / "per_object.csv")
    with pytest.raises(ValueError, match="--image-dir applies to a COCO JSON"):
        read_annotations(folder, image_dir=folder)
