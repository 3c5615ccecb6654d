"""Training data that survives real and hostile data sets (issues 21 and 22): every segmentation
and image checked at start-up, what cannot be used skipped and counted in one line, malformed
files and paths out of the data folder refused in one line, crowd regions and small objects
skipped, only the sampled masks decoded, 16-bit images normalised, label-image folders, and a
resume that sees edited annotations and continues on changed data only when asked.

The hostile segmentations (NaN, infinite or huge polygon coordinates, RLE runs that sum short or
long) once crashed pycocotools or read uninitialised memory: they run in a subprocess."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sam_jax import SamPredictor, assets, load
from sam_jax.cli import main
from sam_jax.io import annotations as annotations_module
from sam_jax.io.coco import DataOptions, read_annotations
from sam_jax.io.images import read_header, read_image
from sam_jax.io.rle import mask_to_rle
from sam_jax.io.segmentations import rle_counts
from sam_jax.train.config import TrainConfig
from sam_jax.train.data import Prepare, open_dataset, prepare, training_dataset
from sam_jax.train.synthetic_shapes import write_coco
from sam_jax.train.trainer import Trainer

from tests.reference.hostile_data import BAD_SEGMENTATIONS, rle, square, write_hostile_coco, write_label_folder

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    return write_coco(tmp_path_factory.mktemp("data") / "shapes", 4, seed=5)


@pytest.fixture(scope="module")
def model():
    return load(assets.SHAPES_TINY)  # loads in seconds; building a model first compiles its initialisers


def _one_line(capsys, argv: list, *phrases: str) -> str:
    capsys.readouterr()
    assert main([str(a) for a in argv]) == 2
    err = "".join(line for line in capsys.readouterr().err.splitlines(True) if not line.endswith(" ...\n"))  # started steps
    assert err.count("\n") == 1 and "Traceback" not in err, err
    for phrase in phrases:
        assert phrase in err, err
    return err


def _train(data: Path, *more) -> list:
    return ["train", "--checkpoint", "nowhere", "--train-data", data, "--output", data.parent / "out", "--cache-dir", "", *more]


def _eval(data: Path, *more) -> list:
    return ["eval", "--checkpoint", "nowhere", "--data", data, "--cache-dir", "", *more]


# ----------------------------------------------------------------------------- hostile segmentations
HOSTILE = r"""
import contextlib, io, json, sys
from pathlib import Path
from sam_jax.cli import main
from sam_jax.io.coco import DataOptions
from sam_jax.train.data import open_dataset

path = Path(sys.argv[1])
d = open_dataset(path, options=DataOptions(min_area=20))
report = {"skipped": d.skipped, "bad_images": d.bad_images, "small": d.small, "crowd": d.crowd,
          "images": [[e.id, e.height, e.width, len(e.annotations)] for e in d.images], "stable": True}
for i in range(len(d)):  # every kept mask decodes to the same pixels on every read
    image, masks = d[i]
    report["stable"] &= bool((d.masks(i) == masks).all()) and image.shape[:2] == masks.shape[1:]
for argv in (["train", "--checkpoint", "nowhere", "--train-data", str(path), "--min-object-area", "20", "--output",
              str(path.parent / "out"), "--cache-dir", ""],
             ["eval", "--checkpoint", "nowhere", "--data", str(path), "--cache-dir", ""]):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    report[argv[0]] = [code, out.getvalue(), err.getvalue()]
print(json.dumps(report))
"""


def test_hostile_annotations_and_images_are_skipped_and_named(tmp_path):
    path = write_hostile_coco(tmp_path / "coco")
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    r = subprocess.run([sys.executable, "-c", HOSTILE, str(path)], capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, (r.returncode, r.stderr[-3000:])  # -11 was pycocotools' SIGSEGV
    report = json.loads(r.stdout.strip().splitlines()[-1])
    skipped = report["skipped"]
    for ident, (_, reason) in BAD_SEGMENTATIONS.items():
        [line] = [s for s in skipped if f"annotation {ident}:" in s]
        assert reason in line and str(path) in line, line
    position = json.loads(path.read_text())["annotations"].index(5)
    assert f"annotations[{position}]: not an object" in skipped[0]
    assert any("annotation 602: no such image_id 999" in s for s in skipped)
    assert len(skipped) == len(BAD_SEGMENTATIONS) + 2 and report["crowd"] == 1 and report["small"] == 1
    bad = report["bad_images"]
    assert len(bad) == 4
    assert "garbage.png" in bad[0] and "not an image format" in bad[0]
    assert "truncated.png" in bad[1] and "truncated" in bad[1].split("truncated.png")[-1]
    assert "turned_raw_size.jpg: image is 64x48, its entry says 48x64" in bad[2] and "EXIF orientation" in bad[2]
    assert "rgb16.png" in bad[3] and "16-bit colour" in bad[3]
    kept = {i: (h, w, n) for i, h, w, n in report["images"]}
    assert set(kept) == {0, 1, 2, 3, 4, 5, 102, 103}
    assert kept[102] == (64, 64, 1) and kept[103] == (64, 48, 1)  # the size read from the file; EXIF turned
    assert report["stable"]
    # The commands: one summary line on stdout, then the checkpoint's one-line error.
    for command, phrases in (("train", ("1 crowd annotation", "1 smaller than 20 pixels", "16 unusable annotations (first: ",
                                        "4 images (first: ")),
                             ("eval", ("1 crowd annotation", "16 unusable annotations (first: ", "4 images (first: "))):
        code, out, err = report[command]
        err = "".join(line for line in err.splitlines(True) if not line.endswith(" ...\n"))  # the checks' start line
        assert code == 2 and err.count("\n") == 1 and "nowhere" in err, (command, err)
        assert out.count("\n") == 1 and out.startswith(f"sam-jax {command}: {path}: 8 images"), out
        for phrase in phrases:
            assert phrase in out, out


def test_rle_runs_decode_as_pycocotools_encodes():
    from pycocotools import mask as mask_utils

    r = np.random.default_rng(0)
    for t in range(60):
        h, w = r.integers(1, 80, 2)
        m = r.random((h, w)) < r.random() if t % 2 else square(h, w, r.integers(h), r.integers(w), r.integers(1, 90))
        counts = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))["counts"]
        assert rle_counts(counts).tolist() == mask_to_rle(m[None])[0]["counts"]


# ----------------------------------------------------------------------------- malformed files
def test_malformed_files_are_one_line_naming_the_file_and_entry(tmp_path, capsys):
    image = {"id": 1, "file_name": "a.png", "height": 64, "width": 64}
    good = {"id": 1, "image_id": 1, "segmentation": rle(square(64, 64, 5, 5, 20))}
    cases = {
        "deep.json": ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
        "no_id.json": ({"images": [{"file_name": "a.png"}], "annotations": []}, "images[0] has no id"),
        "name.json": ({"images": [{"id": 1, "file_name": 123}], "annotations": []}, "file_name must be a non-empty string, got 123"),
        "entry.json": ({"images": [5], "annotations": []}, "images[0] is not an object"),
        "twice.json": ({"images": [image, image], "annotations": []}, "images[1] repeats the id 1"),
        "height.json": ({"images": [{**image, "height": "64"}], "annotations": []}, "height and width must be positive integers"),
        "lists.json": ({"images": [image], "annotations": 5}, "not a COCO instances file"),
        "digits.json": ('{"images": [], "annotations": [], "n": ' + "1" * 5000 + "}", "not a readable JSON file"),
        "objects.json": ({"images": [image], "annotations": [5, "x"]}, "no image with a usable annotation (skipped 2 unusable "
                                                                      "annotations (first: "),
    }
    for name, (content, phrase) in cases.items():
        f = tmp_path / name
        f.write_text(content if isinstance(content, str) else json.dumps(content))
        for argv in (_train(f), _eval(f)):
            _one_line(capsys, argv, name, phrase)
    sa1b = tmp_path / "sa1b"
    sa1b.mkdir()
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(sa1b / "a.png")
    (sa1b / "a.json").write_text(json.dumps({"image": image, "annotations": 5}))
    for argv in (_train(sa1b), _eval(sa1b)):
        _one_line(capsys, argv, "a.json", "not an SA-1B annotation file", "'annotations' is 5")
    (sa1b / "a.json").write_text(json.dumps({"image": {**image, "file_name": 7}, "annotations": [good]}))
    _one_line(capsys, _train(sa1b), "a.json", "file_name must be a non-empty string, got 7")
    _one_line(capsys, ["train", "--train-data", sa1b, "--output", tmp_path / "o", "--allow-data-changes"],
              "--allow-data-changes applies to --resume")


def test_images_outside_the_data_folder_only_when_allowed(tmp_path, shapes, capsys):
    data = json.loads(shapes.read_text())
    data["images"] = data["images"][:2]
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] in (0, 1)]
    data["images"][1]["file_name"] = "a.png"
    outside = tmp_path / "elsewhere.png"
    outside.write_bytes((shapes.parent / "000000.png").read_bytes())
    folder = tmp_path / "set"
    folder.mkdir()
    (folder / "a.png").write_bytes(outside.read_bytes())
    (folder / "link.png").symlink_to(outside)
    for k, name in enumerate(["../elsewhere.png", str(outside), "link.png"]):
        data["images"][0]["file_name"] = name
        f = folder / f"out{k}.json"
        f.write_text(json.dumps(data))
        _one_line(capsys, _train(f, "--image-dir", folder), "leads outside the data folder", "--allow-outside-data-dir")
        _one_line(capsys, _eval(f, "--image-dir", folder), "leads outside the data folder")
        read = open_dataset(f, folder, options=DataOptions(allow_outside=True))
        assert read.images[0].file.resolve() == outside.resolve()
    # Paths and symbolic links that stay inside are no way out.
    (folder / "sub").mkdir()
    (folder / "sub" / "in.png").symlink_to(folder / "a.png")
    data["images"] = [{**data["images"][0], "file_name": "sub/in.png"}, {**data["images"][1], "file_name": "sub/../a.png"}]
    f = folder / "in.json"
    f.write_text(json.dumps(data))
    assert [e.file.name for e in open_dataset(f).images] == ["in.png", "a.png"]
    images, labels, _ = write_label_folder(tmp_path / "cells")
    (images / "z.png").symlink_to(outside)
    with pytest.raises(ValueError, match="leads outside the data folder"):
        open_dataset(images, labels=labels)


def test_an_sa1b_file_changed_after_the_check_is_checked_again(tmp_path):
    folder = tmp_path / "sa1b"
    folder.mkdir()
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(folder / "a.png")
    info = {"image_id": 1, "file_name": "a.png", "height": 64, "width": 64}
    listed = [{"id": 1, "segmentation": rle(square(64, 64, 5, 5, 20))}, {"id": 2, "segmentation": rle(square(64, 64, 30, 30, 9))}]
    (folder / "a.json").write_text(json.dumps({"image": info, "annotations": listed}))
    data = open_dataset(folder)
    assert data.masks(0).sum(axis=(1, 2)).tolist() == [400, 81]
    listed[1]["segmentation"]["counts"] = "52"  # runs that sum short: uninitialised memory if decoded
    (folder / "a.json").write_text(json.dumps({"image": info, "annotations": listed}))
    assert data.masks(0, [0]).sum() == 400
    with pytest.raises(ValueError, match="a.json: annotation 1 changed since it was checked: RLE runs sum to 7"):
        data.masks(0)


# ----------------------------------------------------------------------------- what training reads
def test_crowd_skipped_by_default_kept_when_asked(tmp_path, shapes):
    data = json.loads(shapes.read_text())
    data["annotations"][0]["iscrowd"] = 1
    f = shapes.parent / "crowd.json"
    f.write_text(json.dumps(data))
    default, kept = open_dataset(f), open_dataset(f, options=DataOptions(crowd=True))
    assert default.crowd == 1 and default.objects() == kept.objects() - 1 and kept.crowd == 0
    assert "skipped 1 crowd annotation" in default.summary()


def test_only_the_sampled_masks_are_decoded(tmp_path, monkeypatch):
    """100 masks on an image, 4 sampled: 4 decoded (every mask was, 2.2 s and 338 MB per example at
    1500x2250); the example is the one `prepare` makes from all the masks with the same generator."""
    h, w = 75, 110
    r = np.random.default_rng(0)
    folder = tmp_path / "many"
    folder.mkdir()
    Image.fromarray(r.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(folder / "a.png")
    masks = [square(h, w, r.integers(h - 5), r.integers(w - 5), r.integers(3, 30)) for _ in range(97)]
    masks += [np.ones((h, w), bool)] * 3  # over 90% of the image: never sampled
    annotations = [{"id": k, "image_id": 0, "segmentation": rle(m)} for k, m in enumerate(masks)]
    f = folder / "instances.json"
    f.write_text(json.dumps({"images": [{"id": 0, "file_name": "a.png", "height": h, "width": w}], "annotations": annotations}))
    data = open_dataset(f)
    decoded = []
    real = annotations_module.decode_segmentation
    monkeypatch.setattr(annotations_module, "decode_segmentation", lambda *a: decoded.append(1) or real(*a))
    example = Prepare(data, 64, 4).random_map(0, np.random.default_rng(7))
    assert len(decoded) == 4
    reference = prepare(data.image(0), data.masks(0), 64, 4, np.random.default_rng(7))
    assert len(decoded) == 4 + 100
    assert example.keys() == reference.keys() and example["valid"].all()
    for k in example:
        np.testing.assert_array_equal(example[k], reference[k])


def test_sixteen_bit_images_are_normalised_for_training_and_prediction(tmp_path, model):
    raw = np.random.default_rng(2).integers(0, 4096, (48, 64)).astype(np.uint16)  # 12-bit microscopy
    lo, hi = np.percentile(raw.astype(np.float64), [0.5, 99.5], method="inverted_cdf")
    expected = np.repeat(np.rint(np.clip((raw - lo) / (hi - lo), 0, 1) * 255).astype(np.uint8)[..., None], 3, axis=2)
    folder = tmp_path / "micro"
    folder.mkdir()
    Image.fromarray(raw).save(folder / "a.png")
    Image.fromarray(raw).save(folder / "b.tif")
    images = [{"id": i, "file_name": n, "height": 48, "width": 64} for i, n in enumerate(["a.png", "b.tif"])]
    annotations = [{"id": i, "image_id": i, "segmentation": rle(square(48, 64, 4, 4, 20))} for i in range(2)]
    f = folder / "instances.json"
    f.write_text(json.dumps({"images": images, "annotations": annotations}))
    data = open_dataset(f)
    for i in range(2):
        np.testing.assert_array_equal(data.image(i), expected)
    assert expected.max() == 255 and (raw >> 8).max() == 15  # what the high byte kept
    predictor = SamPredictor(model)
    predictor.set_image(np.repeat(raw[..., None], 3, axis=2))  # a uint16 array
    ours = np.asarray(predictor.get_image_embedding())
    predictor.set_image(expected)
    np.testing.assert_array_equal(ours, np.asarray(predictor.get_image_embedding()))


def test_exif_orientation_applies_to_sizes_and_pixels(tmp_path):
    path = write_hostile_coco(tmp_path / "coco").parent / "turned.jpg"
    assert read_header(path) == (64, 48, True) and read_image(path).shape == (64, 48, 3)
    stored = np.asarray(Image.open(path))
    assert stored.shape == (48, 64, 3)
    np.testing.assert_array_equal(read_image(path), np.rot90(stored, -1))  # orientation 6: a quarter clockwise


def test_label_folders(tmp_path, capsys):
    images, labels, ids = write_label_folder(tmp_path / "cells")
    data = open_dataset(images, labels=labels, options=DataOptions(min_area=5))
    assert data.kind == "labels" and [e.id for e in data.images] == ["a", "b"] and data.small == 1
    assert [[a.id for a in e.annotations] for e in data.images] == [[3, 7, 300], [1, 2]]
    for i, e in enumerate(data.images):
        truth = ids[e.id]
        for a, m in zip(e.annotations, data.masks(i)):
            np.testing.assert_array_equal(m, truth == a.id)
            ys, xs = np.nonzero(m)
            assert a.pixels == a.area == m.sum()
            assert a.bbox == (xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1)
    np.testing.assert_array_equal(data.masks(1, [1]), data.masks(1)[1:])
    assert data.image(1).max() == 255  # the 12-bit image, normalised
    bad = data.bad_images
    assert "c.png: no label image" in bad[0] and "mode RGB" in bad[1] and "label image is 16x17, its image 16x16" in bad[2]
    example = Prepare(data, 64, 2).random_map(1, np.random.default_rng(0))
    assert example["valid"].all() and example["masks"].shape == (2, 64, 64)
    # The command: the same summary line, then the checkpoint's error.
    capsys.readouterr()
    assert main([str(a) for a in _train(images, "--train-labels", labels, "--min-object-area", "5")]) == 2
    out = capsys.readouterr().out
    assert out.startswith(f"sam-jax train: {labels}: 2 images, 5 objects; skipped 1 smaller than 5 pixels, 3 images (first: ")
    _one_line(capsys, _train(images, "--train-labels", labels, "--image-dir", images), "--image-dir applies to a COCO JSON")
    _one_line(capsys, _train(images, "--val-labels", labels), "--val-labels needs --val-data")


def test_an_image_whose_pixels_fail_after_its_header_passed_is_named(tmp_path, shapes):
    folder = tmp_path / "jpeg"
    folder.mkdir()
    data = json.loads(shapes.read_text())
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, "JPEG")
    (folder / "cut.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])  # the header is whole
    for e in data["images"]:
        e["file_name"] = "cut.jpg"
    f = folder / "cut.json"
    f.write_text(json.dumps(data))
    source = open_dataset(f)
    with pytest.raises(ValueError, match="cut.jpg.*truncated.*--resume --allow-data-changes") as info:
        next(iter(training_dataset(source, 64, 2, 2, seed=0)))
    assert "\n" not in str(info.value)


# ----------------------------------------------------------------------------- resuming on changed data
CONFIG = TrainConfig(steps=2, batch_size=2, objects_per_image=2, checkpoint_every=0)


def test_resume_sees_edited_annotations_and_continues_on_changed_data_when_asked(tmp_path, shapes, model, capsys):
    out = tmp_path / "run"
    Trainer(model, open_dataset(shapes), CONFIG, out, quiet=True)
    record = json.loads((out / "train_record.json").read_text())
    assert record["train_data"]["images"] == 4 and {"min_area": 0, "crowd": False}.items() <= record["train_data"].items()
    data = json.loads(shapes.read_text())
    first = next(a for a in data["annotations"] if a["image_id"] == 1)
    first["segmentation"] = rle(square(64, 64, 3, 3, 11))  # other pixels: the same names, sizes and counts
    edited = shapes.parent / "edited.json"
    edited.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"different train_data \(the training data: 1 image changed \(annotations or size\) "
                                         r"\(first: 000001.png\)\).*--allow-data-changes"):
        Trainer(model, open_dataset(edited), CONFIG, out, resume=True, quiet=True)
    data["images"] = [e for e in data["images"] if e["id"] != 2]
    removed = shapes.parent / "removed.json"
    removed.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"1 image removed \(first: 000002.png\); 1 image changed"):
        Trainer(model, open_dataset(removed), CONFIG, out, resume=True, quiet=True)
    with pytest.raises(ValueError, match="different settings"):
        Trainer(model, open_dataset(removed), CONFIG.replace(seed=4), out, resume=True, allow_data_changes=True, quiet=True)
    (out / "embeddings.npy").write_bytes(b"indexed like the old data")
    capsys.readouterr()
    Trainer(model, open_dataset(removed), CONFIG, out, resume=True, allow_data_changes=True, quiet=True)
    assert "resuming" in capsys.readouterr().err and not (out / "embeddings.npy").exists()
    assert json.loads((out / "train_record.json").read_text())["train_data"]["images"] == 3
    assert len(json.loads((out / "train_data.json").read_text())["images"]) == 3
    Trainer(model, open_dataset(removed), CONFIG, out, resume=True, quiet=True)  # the record now names the new data
