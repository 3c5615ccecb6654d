"""The error of the bfloat16 path against float32, per output, on the sample photos.

    python -m benchmarks.precision                       # vit_b, ../shared/images/*.jpg
    python -m benchmarks.precision --models vit_b,vit_h --no-write

Both sides are sam-jax on the benchmark weights (official random init made "confident", see
`cases.make_confident`, converted); the float32 side equals the official model to ~1e-6. Per
image: the embedding's max error relative to its largest value; for a 4x4 grid of single-point
prompts (multimask, 48 masks) and 8 boxes (single mask): low-res logits (same measure), IoU
predictions (max absolute difference), and the full-resolution masks compared with the float32
masks (IoU; the fraction of pixels that differ). Appends a table to benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def rel_err(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / np.abs(b).max())


def mask_ious(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.reshape(-1, *a.shape[-2:]), b.reshape(-1, *b.shape[-2:])
    inter = np.logical_and(a, b).sum((1, 2))
    union = np.logical_or(a, b).sum((1, 2))
    return np.where(union > 0, inter / np.maximum(union, 1), 1.0)


def compare(model, image: np.ndarray) -> dict:
    """bfloat16 against float32 for one image (see the module docstring)."""
    import sam_jax

    f32, bf16 = sam_jax.SamPredictor(model, dtype="float32"), sam_jax.SamPredictor(model, dtype="bfloat16")
    for p in (f32, bf16):
        p.set_image(image)
    h, w = image.shape[:2]
    grid = (np.arange(4) + 0.5) / 4
    points = np.stack(np.meshgrid(grid * w, grid * h), -1).reshape(-1, 1, 2)
    r = np.random.default_rng(0)
    xy = r.uniform(0, 0.6, (8, 2)) * [w, h]
    boxes = np.concatenate([xy, xy + r.uniform(0.1, 0.4, (8, 2)) * [w, h]], 1)
    out = {"embedding": rel_err(bf16.features, f32.features)}
    ious, differ, lows, scores = [], [], [], []
    for kwargs in (dict(point_coords=points, point_labels=np.ones((16, 1))), dict(boxes=boxes, multimask_output=False)):
        (m32, s32, l32), (m16, s16, l16) = (p.predict_batch(**kwargs) for p in (f32, bf16))
        ious.append(mask_ious(m16, m32))
        differ.append(float((m16 != m32).mean()))
        lows.append(rel_err(l16, l32))
        scores.append(float(np.abs(s16 - s32).max()))
    ious = np.concatenate(ious)
    out.update(low_res_logits=max(lows), iou_predictions=max(scores), mask_iou_mean=float(ious.mean()),
               mask_iou_min=float(ious.min()), pixels_differ=max(differ), masks=len(ious))
    return out


def table(rows: list[dict]) -> str:
    lines = [
        "| model | image | embedding rel. err | low-res logits rel. err | IoU prediction abs. err | mask IoU mean (min) | pixels differing | masks |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['model']} | {r['image']} | {r['embedding']:.1e} | {r['low_res_logits']:.1e} | "
                     f"{r['iou_predictions']:.1e} | {r['mask_iou_mean']:.4f} ({r['mask_iou_min']:.4f}) | "
                     f"{100 * r['pixels_differ']:.2f}% | {r['masks']} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="vit_b")
    ap.add_argument("--images", default=str(ROOT.parent / "shared" / "images"))
    ap.add_argument("--results", default=str(ROOT / "benchmarks" / "RESULTS.md"))
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)

    from sam_jax.io.images import read_image

    from . import cases as C

    paths = sorted(Path(args.images).glob("*.jpg"))
    rows = []
    for model_type in args.models.split(","):
        setup = C.Setup(model_type, paths[0])
        for path in paths:
            rows.append({"model": model_type, "image": path.name, **compare(setup.ours, read_image(path))})
            print(rows[-1], flush=True)
    md = table(rows)
    print(md)
    if not args.no_write:
        env = C.environment()
        header = (f"\n## {env['date']}: bfloat16 against float32 (`python -m benchmarks.precision`; jax {env['jax']} "
                  f"on {env['jax_device']})\n\n")
        with open(args.results, "a") as f:
            f.write(header + md + "\n")


if __name__ == "__main__":
    main()
