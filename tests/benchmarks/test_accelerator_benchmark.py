"""benchmarks/accelerator.py, the script for the GPU table, in its CPU smoke mode: every stage runs
and writes its rows, the kernel (interpret mode) and our embedding match the references, and the
time guard stops measuring while keeping what was written."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _run(tmp_path: Path, *flags: str) -> list[dict]:
    out = tmp_path / "rows.jsonl"
    r = subprocess.run([sys.executable, "-m", "benchmarks.accelerator", "--smoke", "--output", str(out),
                        "--image", str(tmp_path / "missing.jpg"), *flags],
                       cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    return [json.loads(line) for line in out.read_text().splitlines()]


def test_smoke_run_writes_every_stage(tmp_path):
    rows = _run(tmp_path)
    by_stage = {}
    for row in rows:
        by_stage.setdefault(row["stage"], []).append(row)
    assert set(by_stage) == {"env", "kernel", "embed", "click", "amg", "done"}
    assert not [r for r in rows if "error" in r]
    kernel = by_stage["kernel"]
    assert {(r["impl"], r["dtype"]) for r in kernel} == {(i, d) for i in ("xla", "pallas") for d in ("float32", "bfloat16")}
    assert all(r["exact"] and r["ms"] > 0 for r in kernel)
    assert max(r["rel_err"] for r in kernel if r["dtype"] == "float32") <= 1e-5
    embed = {(r["impl"], r["dtype"]): r for r in by_stage["embed"]}
    assert embed[("sam-jax (xla attention, exact)", "float32")]["rel_err"] <= 1e-4  # against the official float32
    assert embed[("sam-jax (xla attention, exact)", "bfloat16")]["rel_err"] <= 3e-2
    assert {r["impl"] for r in by_stage["click"]} == {"official", "sam-jax"}
    assert all(r["ms"] > r["predict_ms"] > 0 for r in by_stage["click"])
    amg = {r["impl"]: r for r in by_stage["amg"]}
    assert set(amg) == {"official", "sam-jax"} and all(r["s"] > 0 for r in amg.values())
    assert amg["sam-jax"]["masks"] == amg["official"]["masks"] and amg["sam-jax"]["min_mask_iou"] >= 0.99


def test_time_guard_stops_before_measuring(tmp_path):
    rows = _run(tmp_path, "--time-limit", "0")
    assert [r["stage"] for r in rows] == ["env", "done"]
