"""benchmarks/accelerator.py, the prepared device run, in its CPU smoke mode: every stage runs and
writes its rows, the kernel (interpret mode) and our embedding match the references, the
decision rows follow from the kernel rows, and the time guard stops measuring while keeping what
was written."""

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
    # cudnn: GPU only
    assert set(by_stage) == {"env", "kernel", "decision", "embed", "amg", "click", "profile", "done"}
    assert not [r for r in rows if "error" in r]

    kernel = by_stage["kernel"]
    assert {(r["grid"], r["impl"], r["dtype"]) for r in kernel} == {
        (g, i, d) for g in ("window", "global") for i in ("xla", "pallas") for d in ("float32", "bfloat16")}
    assert all(r["ms"] > 0 for r in kernel)
    pallas = {(r["grid"], r["dtype"]): r for r in kernel if r["impl"] == "pallas"}
    xla = {(r["grid"], r["dtype"]): r for r in kernel if r["impl"] == "xla"}
    assert all(r["exact"] for r in pallas.values())
    assert max(r["rel_err"] for r in kernel if r["dtype"] == "float32") <= 1e-5
    assert all(pallas[g, "bfloat16"]["rel_err"] <= xla[g, "bfloat16"]["rel_err"] for g in ("window", "global"))
    for d in by_stage["decision"]:  # one per (kind, dtype), from the kernel rows of that case
        case = (d["kind"], d["dtype"])
        assert d["speedup"] == xla[case]["ms"] / pallas[case]["ms"] and d["rel_err"] == pallas[case]["rel_err"]
        assert d["choice"] == "xla"  # a CPU never takes the kernel (it ran in interpret mode)
    assert sorted((d["kind"], d["dtype"]) for d in by_stage["decision"]) == sorted(pallas)

    embed = {r["impl"]: r for r in by_stage["embed"]}
    assert set(embed) == {"official", "official (autocast)", "sam-jax (xla attention)"}
    assert embed["official"]["rel_err"] == 0.0  # the reference itself
    assert embed["sam-jax (xla attention)"]["dtype"] == "bfloat16" and embed["sam-jax (xla attention)"]["rel_err"] <= 3e-2
    assert all(r["images_per_s"] > 0 for r in embed.values())
    assert {r["impl"] for r in by_stage["click"]} == {"official", "sam-jax"}
    assert all(r["ms"] > r["predict_ms"] > 0 for r in by_stage["click"])
    amg = {r["impl"]: r for r in by_stage["amg"]}
    assert set(amg) == {"official", "sam-jax"} and all(r["s"] > 0 for r in amg.values())
    assert amg["sam-jax"]["masks"] == amg["official"]["masks"] and amg["sam-jax"]["min_mask_iou"] >= 0.99
    [profile] = by_stage["profile"]
    assert profile["ms_per_call"] > 0 and profile["top"] and all(op["ms_per_call"] > 0 for op in profile["top"])


def test_time_guard_stops_before_measuring(tmp_path):
    rows = _run(tmp_path, "--time-limit", "0")
    assert [r["stage"] for r in rows] == ["env", "done"]
