"""`sam-jax amg` on many devices and many processes: the outputs are the one-device outputs, byte
for byte (masks, metadata, stamps); a killed run, rerun, completes the set without redoing what
was finished, without duplicates or leftovers; process 0's final check names what has no output.

Every run is a real `sam-jax amg` in subprocesses: 8 simulated CPU devices in one process, or
several processes joined by jax.distributed (gloo, coordinator on 127.0.0.1)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.reference import multiprocess
from sam_jax.cli import main as cli

FLAGS = ["--points-per-side", "4", "--pred-iou-thresh", "0", "--stability-score-thresh", "0", "--cache-dir", ""]
N_IMAGES = 9  # and one file that is not an image: 10 inputs, which 8 devices or 2 processes do not divide

# Process 1 dies (SIGKILL) while its second output is half-written: the output is complete under
# its temporary name, its stamp not yet written, nothing renamed.
DIE_MID_RUN = """
import os, signal, sys
from sam_jax.cli import main
from sam_jax.io import stamps as records
real, calls = records.write_stamp, []
def write_stamp(*args):
    if os.environ["JAX_PROCESS_ID"] == "1" and calls:
        os.kill(os.getpid(), signal.SIGKILL)
    calls.append(args)
    real(*args)
records.write_stamp = write_stamp
sys.exit(main(sys.argv[1:]))
"""


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    src = tmp_path_factory.mktemp("scale") / "in"
    src.mkdir()
    r = np.random.default_rng(3)
    for i in range(N_IMAGES):
        h, w = (48, 64) if i % 2 else (70, 40)
        Image.fromarray(r.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(src / f"img{i}.png")
    (src / "notes.txt").write_text("not an image")  # sorted last: index 9, process 1's share
    return src


@pytest.fixture(scope="module")
def reference(cases, folder, tmp_path_factory):
    """format flags -> the outputs of a one-process, one-device run: {relative path: bytes}."""
    made = {}

    def get(*fmt):
        if fmt not in made:
            out = tmp_path_factory.mktemp("reference") / "out"
            r = _amg(cases("test_tiny"), folder, out, *fmt, devices=1)
            assert r.returncode == 1 and "notes.txt" in r.stderr, r.stderr[-3000:]  # the text file fails, alone
            made[fmt] = _contents(out)
            assert len([p for p in made[fmt] if not p.startswith(".")]) == N_IMAGES
        return made[fmt]

    return get


def _argv(case, folder, out, *extra):
    return ["amg", "--checkpoint", str(case.model_dir), "--input", str(folder), "--output", str(out), *FLAGS, *extra]


def _amg(case, folder, out, *extra, devices):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_", "XLA_"))}
    env.update(JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    return subprocess.run([sys.executable, "-m", "sam_jax.cli", *_argv(case, folder, out, *extra)],
                          capture_output=True, text=True, env=env, timeout=600)


def _contents(out: Path) -> dict[str, bytes]:
    """Every file under `out`, hidden ones included, by relative path."""
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def _partials(out: Path) -> list[str]:
    return [p.name for p in out.rglob("*") if ".partial-" in p.name]


def test_eight_devices_write_the_one_device_outputs(tiny, folder, reference, tmp_path):
    out = tmp_path / "out"
    r = _amg(tiny, folder, out, "--convert-to-rle", devices=8)
    assert r.returncode == 1, r.stderr[-3000:]
    assert "Traceback" not in r.stderr
    assert _contents(out) == reference("--convert-to-rle")  # masks, records and stamps, byte for byte
    used = set(re.findall(r"masks? in [\d.]+ s on (cpu:\d+)", r.stderr))
    assert used == {f"cpu:{i}" for i in range(8)}, r.stderr  # every device took images


def test_two_processes_write_the_one_process_outputs(tiny, folder, reference, tmp_path):
    out = tmp_path / "out"
    results = multiprocess.run(["-m", "sam_jax.cli", *_argv(tiny, folder, out, "--format", "sa1b")], n=2,
                               devices_per_process=1)
    (code0, _, err0), (code1, _, err1) = results
    assert "Traceback" not in err0 + err1, (err0 + err1)[-3000:]
    # Each took its share (process 1 has the text file); process 0's final check names it.
    done = lambda err: re.findall(r"(img\d)\.png: \d+ masks? in", err)
    assert sorted(done(err0)) == [f"img{i}" for i in range(0, N_IMAGES, 2)]
    assert sorted(done(err1)) == [f"img{i}" for i in range(1, N_IMAGES, 2)]
    assert code1 == 1 and "skipping" in err1 and "notes.txt" in err1
    missing = [line for line in err0.splitlines() if "have no output" in line]
    assert code0 == 1 and missing == [
        f"sam-jax amg: 1 of {N_IMAGES + 1} inputs have no output in {out} after all 2 processes finished: notes.txt"
    ]
    assert _contents(out) == reference("--format", "sa1b")


def test_killed_run_reruns_to_the_complete_set(tiny, folder, reference, tmp_path):
    out = tmp_path / "out"
    argv = _argv(tiny, folder, out, "--convert-to-rle")
    procs = multiprocess.launch(["-c", DIE_MID_RUN, *argv], n=2, devices_per_process=1)
    share0 = [out / f"img{i}.json" for i in range(0, N_IMAGES, 2)]
    try:
        assert procs[1].wait(timeout=300) == -signal.SIGKILL
        # Process 0 finishes its share, then waits for process 1 in vain (until jax.distributed's
        # heartbeat gives up): stopped here, so that the rerun gives it nothing to do.
        deadline = time.monotonic() + 300
        while not all(p.exists() for p in share0) and procs[0].poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        procs[0].kill()
        for p in procs:
            p.communicate()
    assert len(_partials(out)) == 1  # process 1's half-written output, hidden
    finished = {p.name: p.stat().st_mtime_ns for p in out.glob("*.json")}
    assert sorted(finished) == sorted([p.name for p in share0] + ["img1.json"])

    results = multiprocess.run(["-m", "sam_jax.cli", *argv], n=2, devices_per_process=1)
    err = results[0][2] + results[1][2]
    assert "Traceback" not in err, err[-3000:]
    assert err.count("done before, skipped") == len(finished)
    assert {name: (out / name).stat().st_mtime_ns for name in finished} == finished  # not redone
    assert _partials(out) == []  # the dead process's leftovers are gone
    assert _contents(out) == reference("--convert-to-rle")  # nothing missing, nothing twice
    # Only process 1 had images left and loaded the model: loading meets no other process.
    assert results[0][0] == 1 and "1 of 10 inputs have no output" in results[0][2]


def test_incomplete_distributed_flags_are_one_line(tiny, folder, tmp_path, capsys, monkeypatch):
    for k in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
        monkeypatch.delenv(k, raising=False)
    assert cli(_argv(tiny, folder, tmp_path / "o", "--num-processes", "2")) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "needs the coordinator address" in err
    assert not (tmp_path / "o").exists()  # refused before anything was written
