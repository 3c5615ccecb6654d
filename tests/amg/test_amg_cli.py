"""`sam-jax amg` over a folder: official output layout, bad files named, atomic outputs, reruns."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from sam_jax.cli import main as cli
from sam_jax.utils import amg

FLAGS = ["--points-per-side", "4", "--pred-iou-thresh", "0", "--stability-score-thresh", "0", "--cache-dir", ""]


@pytest.fixture
def folder(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    r = np.random.default_rng(0)
    Image.fromarray(r.integers(0, 255, (60, 80, 3), dtype=np.uint8)).save(src / "a.png")
    Image.fromarray(r.integers(0, 255, (90, 50, 3), dtype=np.uint8)).save(src / "b.jpg")
    (src / "notes.txt").write_text("not an image")
    return src


def _run(tiny, folder, out, *extra):
    # One device: these tests are about the outputs; test_amg_scale runs them on many (each device compiles).
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
    return subprocess.run(
        [sys.executable, "-m", "sam_jax.cli", "amg", "--checkpoint", str(tiny.model_dir), "--input", str(folder),
         "--output", str(out), *FLAGS, *extra],
        capture_output=True, text=True, env=env,
    )


def test_folder_binary_masks(tiny, folder, tmp_path):
    from sam_jax.automatic_mask_generator import SamAutomaticMaskGenerator

    out = tmp_path / "out"
    r = _run(tiny, folder, out)
    assert r.returncode == 1, r.stderr  # the text file failed, the images did not
    assert "Traceback" not in r.stderr
    bad = [l for l in r.stderr.splitlines() if "notes.txt" in l]
    assert len(bad) == 1 and "could not decode the image" in bad[0]
    assert sorted(p.name for p in out.iterdir()) == [".sam-jax", "a", "b"]  # the outputs and their stamps
    gen = SamAutomaticMaskGenerator(tiny.model, points_per_side=4, pred_iou_thresh=0, stability_score_thresh=0)
    records = gen.generate(np.asarray(Image.open(folder / "a.png").convert("RGB")))
    rows = (out / "a" / "metadata.csv").read_text().splitlines()
    assert rows[0].startswith("id,area,bbox_x0,bbox_y0,bbox_w,bbox_h,point_input_x,point_input_y,predicted_iou")
    assert len(rows) == len(records) + 1 and len(records) > 0
    for i, rec in enumerate(records):
        png = np.asarray(Image.open(out / "a" / f"{i}.png"))
        np.testing.assert_array_equal(png > 0, rec["segmentation"])
        assert set(np.unique(png)) <= {0, 255}
        assert rows[i + 1].split(",")[:2] == [str(i), str(rec["area"])]


def test_rerun_skips_and_overwrite_recomputes(tiny, folder, tmp_path):
    out = tmp_path / "out"
    _run(tiny, folder, out)
    stamp = (out / "a" / "metadata.csv").stat().st_mtime_ns
    r = _run(tiny, folder, out)
    assert "done before, skipped" in r.stderr
    assert (out / "a" / "metadata.csv").stat().st_mtime_ns == stamp
    _run(tiny, folder, out, "--overwrite")
    assert (out / "a" / "metadata.csv").stat().st_mtime_ns != stamp
    assert sorted(p.name for p in out.iterdir()) == [".sam-jax", "a", "b"]  # no temporary leftovers
    assert sorted(p.name for p in (out / ".sam-jax").iterdir()) == ["a.json", "b.json"]


def test_rle_json_and_sa1b(tiny, folder, tmp_path):
    from sam_jax.io.sa1b import read_sa1b

    out = tmp_path / "rle"
    _run(tiny, folder, out, "--convert-to-rle")
    records = json.loads((out / "a.json").read_text())
    assert records and all(isinstance(r["segmentation"]["counts"], str) for r in records)
    mask = amg.coco_decode_rle(records[0]["segmentation"])
    assert mask.shape == (60, 80) and mask.sum() == records[0]["area"]

    out = tmp_path / "sa1b"
    _run(tiny, folder, out, "--format", "sa1b")
    data = read_sa1b(out / "b.json")
    assert data["image"]["width"] == 50 and data["image"]["height"] == 90
    assert len(data["annotations"]) > 0


def test_interrupted_write_leaves_no_output(tiny, folder, tmp_path, monkeypatch, capsys):
    from sam_jax.runners import amg as amg_runner

    def broken(records, path):
        (path / "0.png").write_bytes(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(amg_runner, "write_masks_to_folder", broken)
    out = tmp_path / "out"
    capsys.readouterr()
    assert cli(["amg", "--checkpoint", str(tiny.model_dir), "--input", str(folder / "a.png"), "--output", str(out), *FLAGS]) == 130
    err = capsys.readouterr().err  # the steps' status lines, then Ctrl-C's one line, no traceback
    assert err.endswith("\nsam-jax amg: interrupted\n") and "Traceback" not in err, err
    assert list(out.iterdir()) == []


def test_missing_input_is_one_line(tiny, tmp_path, capsys):
    assert cli(["amg", "--checkpoint", str(tiny.model_dir), "--input", str(tmp_path / "nope"), "--output", str(tmp_path / "o"), *FLAGS]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "input not found" in err


def test_library_runner_is_the_command(tiny, folder, tmp_path):
    """`generate_folder` from Python writes what the command writes (typed arguments, no argparse):
    the command then finds every output done, and a bad input is reported, not raised."""
    import jax

    from sam_jax.runners import ModelSpec, generate_folder

    out = tmp_path / "out"
    settings = {"points_per_side": 4, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0}
    result = generate_folder(ModelSpec(str(tiny.model_dir)), folder, out, fmt="sa1b", settings=settings,
                             devices=jax.local_devices()[:1], quiet=True)
    assert sorted(p.name for p in result.written) == ["a.json", "b.json"] and result.done_before == []
    assert [(p.name, "could not decode" in why) for p, why in result.failed] == [("notes.txt", True)]
    assert result.record["format"] == "sa1b" and result.record["settings"]["points_per_side"] == 4
    r = _run(tiny, folder, out, "--format", "sa1b")
    assert r.returncode == 1 and r.stderr.count("done before, skipped") == 2, r.stderr
    with pytest.raises(ValueError, match="unknown generator settings: points_per_sid"):
        generate_folder(ModelSpec(str(tiny.model_dir)), folder, out, settings={"points_per_sid": 4})


def test_hq_token_only_on_a_sam_model_is_one_line(tiny, folder, tmp_path, capsys):
    out = tmp_path / "o"
    code = cli(["amg", "--checkpoint", str(tiny.model_dir), "--input", str(folder / "a.png"), "--output", str(out),
                "--hq-token-only", *FLAGS])
    err = [line for line in capsys.readouterr().err.splitlines() if not line.startswith("sam-jax: ")]  # status lines
    assert code == 2 and len(err) == 1 and "hq_token_only applies to an HQ-SAM model" in err[0], err
    assert not out.exists() or list(out.iterdir()) == []
