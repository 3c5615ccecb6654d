"""What a new user meets in the first hour: the version, readable converted folders, status lines
that say what a long step does (and whether it compiled), `--quiet`, the amg command's help, counts,
hints and reruns, and the quantizer's unexplained warning gone."""

from __future__ import annotations

import io
import os
import re
import stat

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

import sam_jax
from sam_jax.cli import amg as amg_cli
from sam_jax.cli import build_parser
from sam_jax.runners import amg as amg_runner
from sam_jax.runners import model as model_spec
from sam_jax.cli import main as cli
from sam_jax.runtime.progress import Progress, status


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_version(capsys):
    with pytest.raises(SystemExit) as e:
        cli(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"sam-jax {sam_jax.__version__}"


def test_converted_folder_follows_umask(tiny, tmp_path):
    old = os.umask(0o022)
    try:
        assert cli(["convert", "--checkpoint", str(tiny.pth), "--output", str(tmp_path / "out"),
                    "--config", str(tiny.pth.with_suffix(".json")), "--quiet"]) == 0
    finally:
        os.umask(old)
    for path in [tmp_path / "out", *(tmp_path / "out").rglob("*")]:
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode == (0o755 if path.is_dir() else 0o644), (path, oct(mode))


def test_status_says_what_runs_and_when_it_compiled():
    out = Terminal()
    f = jax.jit(lambda x: x * 3 + 1)
    with status("embedding photo.jpg", stream=out):
        f(jnp.ones(7)).block_until_ready()  # a new program: compiled here
    line = out.getvalue()
    assert line.startswith("sam-jax: embedding photo.jpg ...") and "s of it compiling, a one-time cost" in line
    out = Terminal()
    with status("embedding photo.jpg", stream=out):
        f(jnp.ones(7)).block_until_ready()  # compiled before: no compile note
    assert out.getvalue().startswith("sam-jax: embedding photo.jpg ...") and "compiling" not in out.getvalue()
    quiet = Terminal()
    with status("loading", quiet=True, stream=quiet):
        pass
    assert quiet.getvalue() == ""
    logs = io.StringIO()  # not a terminal: a plain line when the step starts, one when it ends
    with status("loading", stream=logs):
        f(jnp.ones(9)).block_until_ready()
    start, end = logs.getvalue().splitlines()
    assert start == "sam-jax: loading ..." and re.fullmatch(r"sam-jax: loading: [\d.]+ s \([\d.]+ s of it compiling, a one-time cost\)", end)
    assert "\r" not in logs.getvalue()


def test_progress_uses_the_terminal_width_and_says_when_an_item_starts(monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    out = Terminal()
    p = Progress(2, stream=out)
    long = "x" * 150  # once cut at 60 characters
    with p.running("a.png: generating"):
        pass
    p.step(f"a.png: {long}")
    p.close()
    assert long in out.getvalue() and "a.png: generating ..." in out.getvalue()
    monkeypatch.setenv("COLUMNS", "80")
    out = Terminal()
    Progress(2, stream=out).step(long)
    assert max(len(line) for line in out.getvalue().split("\r")) < 80  # a wrapped bar could not be redrawn
    logs = io.StringIO()
    p = Progress(2, stream=logs)
    p.step("a.png: done before, skipped")
    with p.running("b.png: generating"):
        pass
    p.step("b.png: 3 masks in 1.0 s")
    assert logs.getvalue().splitlines() == ["[1/2] a.png: done before, skipped", "[2/2] b.png: generating ...",
                                            "[2/2] b.png: 3 masks in 1.0 s"]


def test_byte_progress_bar():
    out = Terminal()
    p = Progress(3_000_000, unit="B", stream=out)
    p.advance(1_000_000, "a.pth")
    p.advance(2_000_000, "a.pth")  # the last update is always drawn
    p.close()
    assert "3.0 MB/3.0 MB" in out.getvalue() and "MB/s a.pth" in out.getvalue()
    logs = io.StringIO()
    Progress(10, unit="B", stream=logs).advance(5)
    assert logs.getvalue() == ""  # byte counts are for terminals only


def test_amg_help_shows_every_tuning_flag_with_its_default():
    parser = build_parser()
    sub = parser._subparsers._group_actions[0].choices["amg"]  # argparse has no public accessor
    text = " ".join(sub.format_help().split())
    for flag in amg_cli.AMG_FLAGS:
        assert flag in text
    for expected in ("(default: 32)", "(default: 0.88)", "(default: 0.95)", "(default: 512/1500)", "(default: 0)"):
        assert expected in text
    args = parser.parse_args(["amg", "--checkpoint", "x", "--input", "i", "--output", "o"])
    assert args.pred_iou_thresh == 0.88 and args.crop_overlap_ratio == 512 / 1500 and args.points_per_batch == 64


@pytest.fixture
def images(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    for name in ("a", "b", "c"):
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(src / f"{name}.png")
    return src


def test_amg_rerun_with_everything_done_loads_no_model(tiny, images, tmp_path, monkeypatch, capsys):
    """The model is named by the content digest recorded in its checkpoint folder: a rerun whose
    outputs are all this very work reads neither the weights nor builds the model."""
    out = tmp_path / "out"
    flags = ["--checkpoint", str(tiny.model_dir), "--input", str(images), "--output", str(out), "--points-per-side", "2",
             "--cache-dir", ""]
    monkeypatch.setattr(amg_cli.common, "local_devices", lambda args: jax.local_devices()[:1])  # one compile, not three
    assert cli(["amg", *flags]) == 0
    capsys.readouterr()
    monkeypatch.setattr(model_spec.ModelSpec, "load", lambda *a, **k: pytest.fail("loaded a model"))
    monkeypatch.setattr(model_spec, "read", lambda *a, **k: pytest.fail("read the weights"))
    assert cli(["amg", *flags]) == 0
    assert capsys.readouterr().err.count("done before, skipped") == 3


def test_amg_counts_and_the_empty_hint(tiny, images, tmp_path, monkeypatch, capsys):
    class Generator:  # 0, 1 and 2 masks: only the command's reporting is under test
        def __init__(self, model, **kwargs):
            self.kwargs, self.calls = kwargs, 0

        def generate(self, image):
            self.calls += 1
            return [{"area": 1}] * (self.calls - 1)

    monkeypatch.setattr(amg_runner, "SamAutomaticMaskGenerator", Generator)
    monkeypatch.setattr(model_spec.ModelSpec, "load", lambda *a, **k: None)
    monkeypatch.setattr(amg_runner, "replicate", lambda model, devices: [model] * len(devices))
    monkeypatch.setattr(amg_cli.common, "local_devices", lambda args: jax.local_devices()[:1])  # calls in input order
    argv = ["amg", "--checkpoint", str(tiny.model_dir), "--input", str(images), "--output", str(tmp_path / "o"), "--convert-to-rle",
            "--cache-dir", ""]
    assert cli(argv) == 0
    err = capsys.readouterr().err
    assert "a.png: 0 masks in" in err and "b.png: 1 mask in" in err and "c.png: 2 masks in" in err
    hint = [line for line in err.splitlines() if "no masks for 1 image(s)" in line]
    assert len(hint) == 1 and "--pred-iou-thresh (0.88)" in hint[0] and "trained weights" in hint[0]
    # --quiet: no progress lines, no hint.
    assert cli([*argv, "--overwrite", "--quiet"]) == 0
    assert capsys.readouterr().err == ""


def test_quantizer_preprocessing_hint_is_not_shown(tiny, tmp_path, caplog, capsys):
    from sam_jax.export.onnx import export_onnx, quantize_onnx

    path = export_onnx(tiny.model, tmp_path / "d.onnx")
    with caplog.at_level("WARNING"):
        quantize_onnx(path, tmp_path / "dq.onnx")
    assert (tmp_path / "dq.onnx").stat().st_size > 0
    assert not [r for r in caplog.records if "pre-processing" in r.getMessage()]
    assert "pre-processing" not in capsys.readouterr().err
