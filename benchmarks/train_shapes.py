"""Learning benchmark: a tiny SAM of the official structure (configs/shapes_tiny.json: 64x64
inputs, patch 4, four ViT blocks, two of them global) trained from scratch with the real
`sam-jax train` path on generated shapes, then evaluated on held-out images.

    python -m benchmarks.train_shapes --seeds 0,1,2 --steps 900     # the calibration (RESULTS.md)
    python -m benchmarks.train_shapes --seeds 0 --save-asset        # also refresh sam_jax/assets/shapes_tiny

Reports per seed: mIoU from one centre click and from three clicks, the box mIoU, the correlation
of predicted and true IoU, the best fixed-radius disk at the click (the baseline), training
throughput, and the wall time.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
ASSET = ROOT / "sam_jax" / "assets" / "shapes_tiny"
TRAIN_ARGS = ["--batch-size", "8", "--objects-per-image", "4", "--lr", "2e-3", "--schedule", "cosine", "--warmup-steps", "50",
              "--weight-decay", "0.05", "--clip-norm", "1.0", "--correction-points", "2", "--mask-only-steps", "1",
              "--log-every", "50", "--checkpoint-every", "0"]


def run_seed(seed: int, steps: int, work: Path, train_json: Path, val_json: Path) -> dict:
    from flax import nnx

    from sam_jax import build_sam_from_config, load
    from sam_jax.convert import folder as checkpoint_folder
    from sam_jax.evaluation import disk_baseline, evaluate

    init = work / f"init{seed}"
    model = build_sam_from_config("shapes_tiny", seed=seed)
    checkpoint_folder.save(init, model.config, {p: np.asarray(v.get_value()) for p, v in nnx.to_flat_state(nnx.state(model))})
    out = work / f"run{seed}"
    cmd = [sys.executable, "-m", "sam_jax.cli", "train", "--checkpoint", str(init), "--train-data", str(train_json),
           "--output", str(out), "--steps", str(steps), "--seed", str(seed), *TRAIN_ARGS]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True)
    wall = time.perf_counter() - t0
    rates = [json.loads(l)["examples_per_s"] for l in (out / "metrics.jsonl").read_text().splitlines() if "examples_per_s" in l]
    # sam-jax eval's protocols: the centre click and 3 clicks (score selection), the box.
    untrained = evaluate(model, val_json, prompt="point", limit=100)
    result = load(out)
    trained = evaluate(result, val_json, prompt="clicks", clicks=3, limit=100)
    box = evaluate(result, val_json, prompt="box", limit=100)
    disk, radius = disk_baseline(val_json, limit=100)
    first = [o.ious[0] for o in trained.objects], [o.predicted_ious[0] for o in trained.objects]
    return {
        "seed": seed, "steps": steps, "miou_untrained": untrained.miou(), "miou_1click": trained.miou(1), "miou_3clicks": trained.miou(3),
        "miou_box": box.miou(), "iou_corr": float(np.corrcoef(*first)[0, 1]),
        "disk_miou": disk, "disk_radius": radius, "examples_per_s": float(np.median(rates[1:] or rates)), "wall_s": wall, "output": out,
    }


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--steps", type=int, default=900)
    ap.add_argument("--train-images", type=int, default=2000)
    ap.add_argument("--save-asset", action="store_true", help="copy the first seed's model to sam_jax/assets/shapes_tiny")
    ap.add_argument("--work", help="keep the runs here (default: a temporary folder)")
    args = ap.parse_args(argv)

    from sam_jax.train.synthetic_shapes import write_coco

    work = Path(args.work or tempfile.mkdtemp(prefix="sam-jax-shapes-"))
    train_json = work / "train" / "instances.json"
    if not train_json.exists():
        write_coco(work / "train", args.train_images, seed=0)
    val_json = work / "val" / "instances.json"
    if not val_json.exists():
        write_coco(work / "val", 100, seed=10**6)  # held-out: another seed of the generator
    rows = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        row = run_seed(seed, args.steps, work, train_json, val_json)
        print(json.dumps({k: v for k, v in row.items() if k != "output"}), flush=True)
        rows.append(row)
    if args.save_asset:
        shutil.rmtree(ASSET, ignore_errors=True)
        ASSET.mkdir(parents=True)
        for name in ("config.json", "params"):
            src = rows[0]["output"] / name
            shutil.copytree(src, ASSET / name) if src.is_dir() else shutil.copy(src, ASSET / name)
        print(f"wrote {ASSET}")
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
