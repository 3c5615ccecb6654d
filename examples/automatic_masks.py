"""Generate masks for a whole image and save an overlay of all of them.

    python examples/automatic_masks.py --checkpoint vit_b --image photo.jpg --output masks.png

--checkpoint takes a model name (vit_b, vit_l, vit_h: downloaded and converted on first use), a
directory written by `sam-jax convert` or an official .pth. Generator options mirror the official
ones (see --help; `sam-jax amg --help` explains each).
"""

from __future__ import annotations

import argparse
import numpy as np

import sam_jax
from sam_jax.automatic_mask_generator import SamAutomaticMaskGenerator
from sam_jax.io.images import read_image
from sam_jax.io.outputs import check_output
from sam_jax.io.overlay import OVERLAY_OUTPUT, is_own_overlay, overlay_masks, save_overlay
from sam_jax.runtime.progress import status


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", default="vit_b", help="model name, converted directory or .pth (default: vit_b)")
    ap.add_argument("--model-type", help="check the checkpoint against this config (vit_b, vit_l, vit_h)")
    ap.add_argument("--image", required=True)
    ap.add_argument("--output", default="masks.png")
    ap.add_argument("--points-per-side", type=int, default=32)
    ap.add_argument("--pred-iou-thresh", type=float, default=0.88)
    ap.add_argument("--stability-score-thresh", type=float, default=0.95)
    ap.add_argument("--crop-n-layers", type=int, default=0)
    ap.add_argument("--min-mask-region-area", type=int, default=0)
    ap.add_argument("--quiet", action="store_true", help="no status lines")
    ap.add_argument("--overwrite", action="store_true", help="replace an overlay PNG this script wrote before")
    args = ap.parse_args(argv)
    # Before any work: never write over the image, the checkpoint or a file this script did not write.
    check_output(args.output, kind="file", overwrite=args.overwrite, is_own=is_own_overlay, what=OVERLAY_OUTPUT,
                 inputs=[args.image, args.checkpoint])

    with status(f"loading {args.checkpoint}", args.quiet):
        model = sam_jax.load(args.checkpoint, model_type=args.model_type)
    image = read_image(args.image)
    generator = SamAutomaticMaskGenerator(
        model, points_per_side=args.points_per_side, pred_iou_thresh=args.pred_iou_thresh,
        stability_score_thresh=args.stability_score_thresh, crop_n_layers=args.crop_n_layers,
        min_mask_region_area=args.min_mask_region_area,
    )
    with status(f"generating masks for {args.image}", args.quiet):
        records = generator.generate(image)
    # Largest first, so small masks stay visible on top.
    records.sort(key=lambda r: r["area"], reverse=True)
    masks = np.stack([r["segmentation"] for r in records]) if records else np.zeros((0,) + image.shape[:2], bool)
    save_overlay(overlay_masks(image, masks, alpha=0.35), args.output, args.overwrite, inputs=[args.image, args.checkpoint])
    print(f"{len(records)} mask{'' if len(records) == 1 else 's'} -> {args.output}")


if __name__ == "__main__":
    try:
        main()
    except (ValueError, OSError) as e:  # a bad input or output: one line, no traceback
        raise SystemExit(f"error: {e}") from None
