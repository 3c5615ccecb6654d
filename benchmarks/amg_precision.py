"""Automatic masks with the decoder in bfloat16 against float32 (`SamAutomaticMaskGenerator(...,
decoder_dtype="bfloat16")`), on the shipped shapes model (the one small model whose masks are
objects) over generated shape images, or on any model and photos.

    python -m benchmarks.amg_precision                        # shapes_tiny, 16 generated images
    python -m benchmarks.amg_precision --checkpoint sam_vit_b --images ../shared/images/*.jpg

Two settings: every mask of a 16 x 16 grid (no IoU, stability or NMS filter: each float32 mask
paired with the bfloat16 mask of the same point that overlaps it most), and the official
filters (IoU 0.88, stability 0.95, NMS 0.7; for the shapes model, whose scores are low, 0.5 and
0.8): how many masks each keeps and how many of float32's have a bfloat16 twin (IoU >= 0.9).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def compare(model, images, **kw) -> dict:
    from sam_jax.automatic_mask_generator import SamAutomaticMaskGenerator

    f32, bf16 = (SamAutomaticMaskGenerator(model, decoder_dtype=d, **kw) for d in ("float32", "bfloat16"))
    ious, pixels, counts, twins = [], [], [0, 0], 0
    for image in images:
        a, b = f32.generate(image), bf16.generate(image)
        counts[0] += len(a)
        counts[1] += len(b)
        for r in a:
            same_point = [s for s in b if s["point_coords"] == r["point_coords"]] or b
            best = max((_iou(r["segmentation"], s["segmentation"]), -i) for i, s in enumerate(same_point)) if same_point else (0.0, 0)
            ious.append(best[0])
            twins += best[0] >= 0.9
            if same_point:
                pixels.append(np.mean(r["segmentation"] != same_point[-best[1]]["segmentation"]))
    ious = np.array(ious or [np.nan])
    return dict(masks_f32=counts[0], masks_bf16=counts[1], mean_iou=float(ious.mean()), min_iou=float(ious.min()),
                p5_iou=float(np.percentile(ious, 5)), twins=twins, pixels_differ=float(np.mean(pixels or [np.nan])))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", help="a model (default: the shipped shapes_tiny)")
    ap.add_argument("--images", nargs="*", help="photos (default: 16 generated shape images at 256 px)")
    ap.add_argument("--points-per-side", type=int, default=16)
    args = ap.parse_args(argv)

    import sam_jax
    from sam_jax import assets
    from sam_jax.io.images import read_image
    from sam_jax.train.synthetic_shapes import make_example

    model = sam_jax.load(args.checkpoint or assets.SHAPES_TINY)
    if args.images:
        images = [read_image(Path(p)) for p in args.images]
    else:
        images = [np.kron(make_example(seed=10**6, index=i, size=64)[0], np.ones((4, 4, 1), np.uint8)) for i in range(16)]
    shapes = args.checkpoint is None
    settings = {
        "every mask": dict(pred_iou_thresh=0.0, stability_score_thresh=0.0, box_nms_thresh=1.0),
        "filtered": dict(pred_iou_thresh=0.5 if shapes else 0.88, stability_score_thresh=0.8 if shapes else 0.95),
    }
    print("| setting | masks f32 | masks bf16 | IoU with the bf16 twin: mean | 5th pct | min | f32 masks with a twin (IoU >= 0.9) | pixels differing |")
    print("|---|---|---|---|---|---|---|---|")
    for name, kw in settings.items():
        r = compare(model, images, points_per_side=args.points_per_side, **kw)
        print(f"| {name} | {r['masks_f32']} | {r['masks_bf16']} | {r['mean_iou']:.4f} | {r['p5_iou']:.4f} | {r['min_iou']:.4f} "
              f"| {r['twins']} of {r['masks_f32']} | {100 * r['pixels_differ']:.3f}% |")


if __name__ == "__main__":
    main()
