"""What the writers may touch: no output is or contains an input; an existing output is replaced
only with --overwrite and only when sam-jax recognises it as its own; refusals are one line and
touch nothing; records say what made an output; leftovers of killed runs are cleaned up."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sam_jax.cli import main as cli
from sam_jax.io.outputs import partial_path

AMG = ["--points-per-side", "4", "--pred-iou-thresh", "0", "--stability-score-thresh", "0", "--cache-dir", ""]


def _snapshot(folder: Path) -> dict[str, bytes | None]:
    """Every path under `folder` (hidden ones too) -> its bytes (None for a folder)."""
    return {p.relative_to(folder).as_posix(): (None if p.is_dir() else p.read_bytes()) for p in sorted(folder.rglob("*"))}


def _refused(capsys, argv: list[str], *phrases: str) -> str:
    capsys.readouterr()
    assert cli(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    for phrase in phrases:
        assert phrase in err, err
    return err


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _stale_partial(final: Path) -> Path:
    """A temporary output of this host left by a process that is gone."""
    name = partial_path(final).name.split("-")
    name[-2] = str(_dead_pid())
    path = final.with_name("-".join(name))
    path.mkdir()
    (path / "half-written").write_text("x")
    return path


# ------------------------------------------------------------------------------------ convert
@pytest.fixture
def workdir(tiny, tmp_path) -> Path:
    """A user's folder: the checkpoint, its config, and unrelated files."""
    d = tmp_path / "work"
    d.mkdir()
    shutil.copy(tiny.pth, d / "model.pth")
    shutil.copy(tiny.pth.with_suffix(".json"), d / "model.json")
    (d / "notes.txt").write_text("my notes")
    (d / "photos").mkdir()
    (d / "photos" / "cat.txt").write_text("meow")
    return d


def _convert(d: Path, output: str, *extra: str) -> list[str]:
    return ["convert", "--checkpoint", str(d / "model.pth"), "--config", str(d / "model.json"), "--output", output, *extra]


@pytest.mark.parametrize(("output", "phrase"), [
    (".", "contains the input"),  # the reported attack: everything in the folder was deleted
    ("model.pth", "is the input"),  # the input was renamed away and the run failed half-way
    ("model.json", "is the input"),
    ("notes.txt", "is not a folder"),
    ("photos", "is not a checkpoint folder (and nothing else) written by sam-jax"),
])
def test_convert_never_replaces_what_it_did_not_write(workdir, capsys, monkeypatch, output, phrase):
    monkeypatch.chdir(workdir)
    before = _snapshot(workdir)
    _refused(capsys, _convert(workdir, output, "--overwrite"), phrase)
    assert _snapshot(workdir) == before  # nothing touched, nothing left behind


def test_convert_replaces_only_its_own_checkpoint(workdir, capsys):
    out = workdir / "converted"
    assert cli(_convert(workdir, str(out))) == 0
    record = (out / "record.json").read_bytes()
    assert json.loads(record)["producer"] == "sam-jax convert"
    _refused(capsys, _convert(workdir, str(out)), "already exists", "--overwrite")
    stale = _stale_partial(out)
    assert cli(_convert(workdir, str(out), "--overwrite")) == 0
    assert (out / "record.json").read_bytes() == record  # the same work, the same record
    assert not stale.exists()  # a killed run's leftover, removed by the next run
    assert sorted(p.name for p in workdir.iterdir()) == ["converted", "model.json", "model.pth", "notes.txt", "photos"]
    # A checkpoint with something else in it is not only sam-jax's.
    (out / "my-results.csv").write_text("1,2,3")
    before = _snapshot(workdir)
    _refused(capsys, _convert(workdir, str(out), "--overwrite"), "not a checkpoint folder (and nothing else)")
    assert _snapshot(workdir) == before


def test_outputs_have_normal_permissions(workdir):
    out = workdir / "converted"
    assert cli(_convert(workdir, str(out))) == 0
    umask = os.umask(0)
    os.umask(umask)
    for p in [out, *out.rglob("*")]:
        expected = (0o777 if p.is_dir() else 0o666) & ~umask
        assert p.stat().st_mode & 0o777 == expected, (p, oct(p.stat().st_mode))


# ------------------------------------------------------------------------- export-onnx, embed
def test_export_onnx_refuses_existing_and_foreign(tiny, tmp_path, capsys):
    import onnx
    from onnx import helper

    out = tmp_path / "decoder.onnx"
    ck = str(tiny.model_dir)
    assert cli(["export-onnx", "--checkpoint", ck, "--output", str(out)]) == 0
    _refused(capsys, ["export-onnx", "--checkpoint", ck, "--output", str(out)], "already exists")
    assert cli(["export-onnx", "--checkpoint", ck, "--output", str(out), "--overwrite"]) == 0
    # Another producer's model (the official export's, say) is not replaced, even with --overwrite.
    graph = helper.make_graph([], "g", [], [])
    foreign = tmp_path / "official.onnx"
    onnx.save(helper.make_model(graph, producer_name="pytorch"), foreign)
    before = foreign.read_bytes()
    _refused(capsys, ["export-onnx", "--checkpoint", ck, "--output", str(foreign), "--overwrite"], "not an ONNX model written by sam-jax")
    _refused(capsys, ["export-onnx", "--checkpoint", str(tiny.pth), "--output", str(tiny.pth), "--overwrite"], "is the input")
    _refused(capsys, ["export-onnx", "--checkpoint", ck, "--output", str(out), "--quantize-out", str(out), "--overwrite"],
             "is the input")
    assert foreign.read_bytes() == before


def test_embed_refuses_existing_and_foreign(tiny, tmp_path, capsys):
    image = tmp_path / "photo.png"
    Image.fromarray(np.full((20, 30, 3), 90, np.uint8)).save(image)
    out = tmp_path / "embedding.npy"
    base = ["embed", "--checkpoint", str(tiny.model_dir), "--image", str(image), "--cache-dir", ""]
    assert cli([*base, "--output", str(out)]) == 0
    _refused(capsys, [*base, "--output", str(out)], "already exists")
    assert cli([*base, "--output", str(out), "--overwrite"]) == 0
    other = tmp_path / "table.npy"
    np.save(other, np.arange(6.0))
    _refused(capsys, [*base, "--output", str(other), "--overwrite"], "not an image embedding .npy")
    before = image.read_bytes()
    _refused(capsys, [*base, "--output", str(image), "--overwrite"], "is the input")
    assert image.read_bytes() == before and np.load(other).tolist() == list(range(6))


# ------------------------------------------------------------------------------------- amg
@pytest.fixture
def photos(tmp_path) -> Path:
    src = tmp_path / "photos"
    src.mkdir()
    r = np.random.default_rng(0)
    Image.fromarray(r.integers(0, 255, (40, 60, 3), dtype=np.uint8)).save(src / "a.png")
    Image.fromarray(r.integers(0, 255, (50, 30, 3), dtype=np.uint8)).save(src / "b.png")
    return src


def _amg(tiny, photos: Path, out: Path, *extra: str) -> list[str]:
    return ["amg", "--checkpoint", str(tiny.model_dir), "--input", str(photos), "--output", str(out), *AMG, *extra]


def test_amg_records_what_made_each_output(tiny, photos, tmp_path, capsys):
    out = tmp_path / "out"
    assert cli(_amg(tiny, photos, out)) == 0
    stamp = json.loads((out / ".sam-jax" / "a.json").read_text())
    assert stamp["record"]["format"] == "png_masks" and stamp["record"]["settings"]["points_per_side"] == 4
    assert len(stamp["record"]["model_sha256"]) == 64 and "points_per_batch" not in stamp["record"]["settings"]
    # The same work elsewhere writes byte-identical stamps (no time, host or process in them).
    again = tmp_path / "again"
    assert cli(_amg(tiny, photos, again)) == 0
    assert _snapshot(again / ".sam-jax") == _snapshot(out / ".sam-jax")
    capsys.readouterr()
    # Rerun: done. Other settings: refused, naming the difference, nothing touched.
    assert cli(_amg(tiny, photos, out)) == 0
    assert capsys.readouterr().err.count("done before, skipped") == 2
    before = _snapshot(out)
    _refused(capsys, [*_amg(tiny, photos, out), "--points-per-side", "3"], "2 output(s)", "points_per_side: 4 -> 3", "--overwrite")
    assert _snapshot(out) == before
    assert cli([*_amg(tiny, photos, out), "--points-per-side", "3", "--overwrite"]) == 0
    assert json.loads((out / ".sam-jax" / "a.json").read_text())["record"]["settings"]["points_per_side"] == 3
    # Another format under the same name (both JSON): refused too.
    rle = tmp_path / "rle"
    assert cli([*_amg(tiny, photos, rle), "--convert-to-rle"]) == 0
    _refused(capsys, [*_amg(tiny, photos, rle), "--format", "sa1b"], "format: 'coco_rle_json' -> 'sa1b'")
    # A changed input image is other work as well.
    Image.fromarray(np.zeros((40, 60, 3), np.uint8)).save(photos / "a.png")
    _refused(capsys, [*_amg(tiny, photos, out), "--points-per-side", "3"], "1 output(s)", "the input image changed")


def test_amg_never_replaces_what_it_did_not_write(tiny, photos, tmp_path, capsys):
    out = tmp_path / "out"
    (out / "a").mkdir(parents=True)
    (out / "a" / "thesis.tex").write_text("years of work")  # unrelated, named like a's output
    for flags in ([], ["--overwrite"]):
        assert cli([*_amg(tiny, photos, out), *flags]) == 1  # a fails, b is processed
        err = capsys.readouterr().err
        assert "skipping" in err and "a.png" in err and "was not written by sam-jax amg" in err, err
        assert (out / "a" / "thesis.tex").read_text() == "years of work" and sorted(os.listdir(out / "a")) == ["thesis.tex"]
    assert (out / "b" / "metadata.csv").is_file()
    # An output changed after sam-jax wrote it is not done either; --overwrite recomputes it.
    (out / "b" / "metadata.csv").write_text("edited")
    assert cli(_amg(tiny, photos, out)) == 1
    assert "is not what sam-jax wrote there" in capsys.readouterr().err
    assert cli([*_amg(tiny, photos, out), "--overwrite"]) == 1  # a still fails
    assert (out / "b" / "metadata.csv").read_text().startswith("id,area")


def test_amg_cleans_up_killed_runs(tiny, photos, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    stale = _stale_partial(out / "a")
    live = partial_path(out / "b")  # this (live) process's: another run's work in progress
    live.mkdir()
    assert cli(_amg(tiny, photos, out)) == 0
    assert not stale.exists() and live.exists()
    umask = os.umask(0)
    os.umask(umask)
    for p in [out / "a", out / "a" / "metadata.csv", out / ".sam-jax" / "a.json"]:
        assert p.stat().st_mode & 0o777 == (0o777 if p.is_dir() else 0o666) & ~umask, p
