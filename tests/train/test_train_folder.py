"""A training run's output folder: --overwrite removes only what a training run wrote (recognised
by its records), never a user's file, never an input; every refusal is one line naming what is
there and offering --resume or --overwrite only where they apply; `train --help` documents every
flag with its default. No training runs here: the folders are laid out as a run leaves them."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sam_jax import assets
from sam_jax.cli import build_parser, main
from sam_jax.cli.train import config_from_args
from sam_jax.train.config import TrainConfig
from sam_jax.train.run_folder import MODEL_FORMAT, RECORD_FORMAT, RunFolder, check_run_output
from sam_jax.train.synthetic_shapes import write_coco

RECORD = {"format": RECORD_FORMAT, "settings": {"steps": 4}}
ROOT = Path(__file__).resolve().parents[2]
# One CPU device (not the tests' 8 simulated ones), this checkout importable.
ENV = {**{k: v for k, v in os.environ.items() if not k.startswith(("JAX_", "XLA_"))}, "JAX_PLATFORMS": "cpu",
       "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}


def _run_folder(out: Path, finished: bool = True) -> Path:
    """What an interrupted (or, `finished`, a completed) run leaves: its record, metrics, two
    saved states, an interrupted save's temporary folder, best/ and the last model."""
    out.mkdir(parents=True)
    (out / "train_record.json").write_text(json.dumps(RECORD))
    (out / "train_data.json").write_text("{}")
    (out / "metrics.jsonl").write_text('{"step": 1}\n')
    for step in ("2", "4", "6.orbax-checkpoint-tmp-1700000000"):
        (out / "state" / step).mkdir(parents=True)
        (out / "state" / step / "_CHECKPOINT_METADATA").write_text("{}")
    if finished:
        for model in (out, out / "best"):
            (model / "params").mkdir(parents=True)
            (model / "params" / "manifest.ocdbt").write_text("x")
            (model / "record.json").write_text(json.dumps({"format": MODEL_FORMAT, "step": 4}))
            (model / "config.json").write_text("{}")
    return out


def _one_line(capsys, argv, *phrases, code=2) -> str:
    capsys.readouterr()
    assert main([str(a) for a in argv]) == code
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    for phrase in phrases:
        assert phrase in err, err
    return err


def _train(out, data, *more):
    return ["train", "--checkpoint", assets.SHAPES_TINY, "--train-data", data, "--output", out, "--cache-dir", "", *more]


def test_overwrite_removes_only_the_runs_own_entries(tmp_path):
    out = _run_folder(tmp_path / "run")
    (out / "notes.txt").write_text("mine")  # not a run's entry: stays, whatever the flags
    with pytest.raises(FileExistsError, match=r"already holds a training run \(saved state at step 4, finished\): "
                                              r"--resume continues it, --overwrite replaces the run's files$"):
        check_run_output(out)
    assert check_run_output(out, resume=True).run == RECORD
    RunFolder(out, 2).prepare({**RECORD, "settings": {"steps": 8}}, resume=False, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == ["events.out.tfevents.sam-jax", "metrics.jsonl", "notes.txt",
                                                     "train_record.json"]
    assert (out / "notes.txt").read_text() == "mine" and (out / "metrics.jsonl").read_text() == ""
    assert json.loads((out / "train_record.json").read_text())["settings"] == {"steps": 8}


@pytest.mark.parametrize("plant, named", [
    (lambda out: (out / "state" / "mydata.txt").write_text("mine"), "state/mydata.txt"),
    (lambda out: [(out / n).unlink() for n in ("record.json",)], "params/, config.json"),  # a model without a run's record
    (lambda out: (out / "best" / "notes.txt").write_text("mine"), "best/"),
])
def test_a_run_holding_foreign_files_is_never_replaced(tmp_path, plant, named):
    out = _run_folder(tmp_path / "run")
    plant(out)
    before = sorted(str(p.relative_to(out)) for p in out.rglob("*"))
    with pytest.raises(FileExistsError) as info:
        check_run_output(out)
    assert "--resume continues it" in str(info.value) and "--overwrite" not in str(info.value) and named in str(info.value)
    with pytest.raises(FileExistsError, match=f"cannot replace the training run in .*: no training run wrote "
                                              f"{re.escape(named)} there; move that away"):
        RunFolder(out, 2).prepare(RECORD, resume=False, overwrite=True)
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == before  # nothing deleted


def test_a_folder_without_a_runs_record_is_never_replaced(tmp_path):
    # A converted checkpoint (config.json, params/, record.json of `sam-jax convert`), a stray state/.
    out = tmp_path / "converted"
    (out / "params").mkdir(parents=True)
    (out / "config.json").write_text("{}")
    (out / "record.json").write_text(json.dumps({"content_sha256": "0"}))
    (out / "state").mkdir()
    for resume, overwrite in ((False, False), (False, True), (True, False)):
        with pytest.raises(FileExistsError, match=r"holds state/, params/, config.json, record.json, which no sam-jax "
                                                  r"training run wrote .*choose another --output$") as info:
            RunFolder(out, 2).prepare(RECORD, resume=resume, overwrite=overwrite)
        assert "--overwrite" not in str(info.value) and ("nothing to resume" in str(info.value)) == resume
    # A train_record.json that is not a training run's record makes nothing there the run's either.
    run = _run_folder(tmp_path / "run")
    (run / "train_record.json").write_text(json.dumps({"format": "someone-else/1"}))
    with pytest.raises(FileExistsError, match="train_record.json, train_data.json, state/, metrics.jsonl"):
        RunFolder(run, 2).prepare(RECORD, resume=False, overwrite=True)
    assert (run / "state" / "2").is_dir() and (run / "params").is_dir()


def test_inputs_are_never_the_output_nor_inside_it(tmp_path, capsys):
    data = tmp_path / "data" / "instances.json"
    data.parent.mkdir()
    data.write_text("{}")
    (tmp_path / "images").mkdir()
    checkpoint = tmp_path / "ck"
    (checkpoint / "params").mkdir(parents=True)
    (checkpoint / "config.json").write_text("{}")
    for argv, phrase in [
        (["train", "--checkpoint", checkpoint, "--train-data", data, "--output", checkpoint], f"output {checkpoint} is the input"),
        (["train", "--checkpoint", checkpoint, "--train-data", data, "--output", checkpoint / "run", "--overwrite"],
         "is inside the input"),
        (["train", "--checkpoint", checkpoint, "--train-data", data, "--output", tmp_path], "contains the input"),
        (["train", "--checkpoint", "vit_b", "--train-data", data, "--output", data.parent], "contains the input"),
        (["train", "--checkpoint", "vit_b", "--train-data", data, "--image-dir", tmp_path / "images",
          "--output", tmp_path / "images", "--overwrite"], "is the input"),
        (["train", "--checkpoint", "vit_b", "--train-data", data, "--output", data], "is the input"),
    ]:
        _one_line(capsys, [*argv, "--cache-dir", ""], phrase, "choose another output")
    assert sorted(p.name for p in checkpoint.iterdir()) == ["config.json", "params"]  # nothing written or deleted
    # Refused before the data or the model are read: the data file here is not even valid.
    out = _run_folder(tmp_path / "run", finished=False)
    _one_line(capsys, _train(out, data), "already holds a training run (saved state at step 4, not finished)",
              "--resume continues it, --overwrite replaces")
    # The library refuses too (a model's checkpoint named as an input by the caller).
    with pytest.raises(ValueError, match="is the input"):
        check_run_output(checkpoint, checkpoints=[checkpoint])


def test_train_help_documents_every_flag_and_its_default(capsys):
    with pytest.raises(SystemExit) as info:
        main(["train", "--help"])
    text = capsys.readouterr().out
    assert info.value.code == 0
    # Each option's entry: "  --flag METAVAR  help", the help perhaps on the next lines (indented).
    entries, flags = {}, []
    for line in text.splitlines():
        option = re.match(r"^  (-\S.*?)(?:  +(\S.*))?$", line)
        if option:
            flags = re.findall(r"--[a-z][a-z0-9-]*", option[1])
            entries.update({flag: option[2] or "" for flag in flags})
        elif line.startswith("   ") and flags:
            entries.update({flag: f"{entries[flag]} {line.strip()}".strip() for flag in flags})
        else:
            flags = []
    defaults = vars(build_parser().parse_args(["train", "--train-data", "d", "--output", "o"]))
    assert set(defaults) - {"command", "func"} == {flag[2:].replace("-", "_") for flag in entries} - {"help"}  # each one parsed
    for flag, help in entries.items():
        if flag in ("--help", "--train-data", "--output"):  # the last two are required (given above)
            continue
        assert len(help) > 15, f"{flag} has no help: {help!r}"
        default = defaults[flag[2:].replace("-", "_")]
        if default is None or default is False or default in ((), [], "") or flag == "--cache-dir":
            continue  # a switch, a default that is the absence of a value, or one from the environment (said in words)
        shown = ",".join(default) if isinstance(default, tuple) else f"{default:g}" if isinstance(default, float) else str(default)
        assert re.search(rf"default:? {re.escape(shown)}\b", help), f"{flag}: its default {shown!r} is not shown in {help!r}"
    for flag in ("--steps", "--weight-decay", "--seed", "--log-every", "--val-images", "--box-noise", "--iou-loss"):
        assert "default" in entries[flag], flag
    assert "model name (shapes_tiny" in entries["--checkpoint"]
    # What the flags show and use are TrainConfig's defaults, written once.
    args = build_parser().parse_args(["train", "--train-data", "d", "--output", "o"])
    assert config_from_args(args) == TrainConfig()


def test_ctrl_c_ends_in_one_line_and_the_folder_resumes(tmp_path):
    """A real `sam-jax train` interrupted by SIGINT after its third logged step: one line, exit
    code 130, and `--resume` completes the run from the last saved state. (That a resumed run
    equals an uninterrupted one bit for bit is test_train_cli's.)"""
    data = write_coco(tmp_path / "shapes", 4, seed=5)
    argv = [sys.executable, "-m", "sam_jax.cli", *map(str, _train(tmp_path / "run", data)[:-2]), "--cache-dir", tmp_path / "xla",
            "--steps", "40", "--checkpoint-every", "2", "--log-every", "1", "--batch-size", "1", "--objects-per-image", "1",
            "--freeze", "image_encoder", "--correction-points", "0", "--mask-only-steps", "0", "--quiet"]
    argv = [str(a) for a in argv]
    metrics = tmp_path / "run" / "metrics.jsonl"
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=ENV)
    deadline = time.monotonic() + 300
    while not (metrics.is_file() and metrics.read_text().count("\n") >= 3):
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    assert re.fullmatch(r"sam-jax train: interrupted at step (\d+); the last saved state is step (\d+): continue with "
                        r"--resume\n", err), err
    stopped, saved = map(int, re.match(r".* step (\d+);.* step (\d+):", err).groups())
    assert 3 <= stopped < 40 and saved <= stopped and saved % 2 == 0
    # The same command with --resume (the record's settings must match) finishes the run.
    done = subprocess.run([*argv, "--resume"], capture_output=True, text=True, cwd=ROOT, env=ENV, timeout=300)
    assert done.returncode == 0 and "Traceback" not in done.stderr and "Error" not in done.stderr, done.stderr
    steps = [json.loads(line)["step"] for line in metrics.read_text().splitlines()]
    assert steps == list(range(1, 41))  # the interrupted run's lines after its saved state were dropped, none twice
    assert json.loads((tmp_path / "run" / "record.json").read_text())["step"] == 40
