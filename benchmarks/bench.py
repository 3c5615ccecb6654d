"""Benchmarks: sam-jax against the official PyTorch SAM, in the same process, on the same machine
and the same (converted) weights, runs alternating between the two.

    curl -LO https://raw.githubusercontent.com/facebookresearch/segment-anything/main/notebooks/images/truck.jpg
    python -m benchmarks.bench --image truck.jpg                      # all cases, vit_b, writes benchmarks/RESULTS.md
    python -m benchmarks.bench --image truck.jpg --cases embed,boxes  # a subset
    python -m benchmarks.bench --image truck.jpg --models vit_b,vit_h # larger encoders (minutes each on a CPU)

Per case: median and spread (min-max) of --repeats runs after one warm-up of each, the ratio
ours/official, our first-call time (compilation) separately, the case's matmul and convolution
FLOPs (torch's FlopCounterMode convention, loop bodies once per iteration: `sam_jax.utils.jaxpr`),
and the achieved FLOP/s as a fraction of this machine's measured matmul rate, per second of wall
time and per second of our process's CPU time (which other processes on the cores do not
dilute). With --memory each
(implementation, case) also runs alone in a subprocess to report its peak resident memory.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CASES = ("embed", "embed_bf16", "point", "boxes", "amg", "amg_nonms", "convert")  # also: amg_all (no IoU/stability filter)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", default=",".join(CASES))
    ap.add_argument("--models", default="vit_b")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--image", required=True,
                    help="the photo of the prompt and AMG cases (RESULTS.md: the official notebooks/images/truck.jpg)")
    ap.add_argument("--memory", action="store_true", help="also measure peak RSS per case in subprocesses")
    ap.add_argument("--results", default=str(ROOT / "benchmarks" / "RESULTS.md"))
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--only", choices=("ours", "official"), help=argparse.SUPPRESS)  # memory subprocess
    ap.add_argument("--setup-dir", help=argparse.SUPPRESS)  # memory subprocess: the parent's files
    args = ap.parse_args(argv)

    from . import cases as C

    cases = [c for c in args.cases.split(",") if c]
    rows = []
    env = C.environment()
    print(json.dumps(env, indent=1))
    for model_type in args.models.split(","):
        setup = C.Setup(model_type, Path(args.image), args.only, args.setup_dir)
        for case in cases:
            if args.only:
                C.run_alone(setup, case, args.only)
                continue
            row = C.measure(setup, case, args.repeats)
            if args.memory:
                row.update(_memory(case, model_type, args, setup.tmp))
            rows.append(row)
            print(C.format_row(row), flush=True)
    if args.only:
        return
    table = C.table(rows, env)
    print(table)
    if not args.no_write:
        C.write_results(Path(args.results), table, env)


def _memory(case: str, model_type: str, args, setup_dir: Path) -> dict:
    out = {}
    for impl in ("official", "ours"):
        cmd = [sys.executable, "-m", "benchmarks.bench", "--cases", case, "--models", model_type,
               "--image", args.image, "--only", impl, "--setup-dir", str(setup_dir)]
        r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        line = [l for l in r.stdout.splitlines() if l.startswith("peak_rss_mib")]
        out[f"rss_{impl}"] = float(line[-1].split()[1]) if line else float("nan")
        out[f"rss_before_{impl}"] = float(line[-1].split()[3]) if line else float("nan")
    return out


if __name__ == "__main__":
    main()
