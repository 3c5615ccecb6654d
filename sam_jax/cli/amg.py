"""`sam-jax amg`: automatic masks for an image or a folder (`sam_jax.runners.amg.generate_folder`,
whose docstring says what is written, stamped, skipped and refused)."""

from __future__ import annotations

import argparse
import sys

from ..options import GENERATOR
from . import common

AMG_FLAGS = {  # flag -> help; each sets the SamAutomaticMaskGenerator argument of the same name (its type and default)
    "--points-per-side": "points sampled along each side of the image: the prompt grid has this squared points "
                         "(more points find smaller objects, and take longer)",
    "--points-per-batch": "grid points decoded together: memory against speed, same masks",
    "--pred-iou-thresh": "keep masks whose predicted quality (IoU, 0-1) is at least this",
    "--stability-score-thresh": "keep masks whose stability score (IoU of the mask thresholded at -offset and "
                                "+offset) is at least this",
    "--stability-score-offset": "logit offset of the stability score",
    "--box-nms-thresh": "of two masks whose boxes overlap more than this IoU, drop the lower-scored one",
    "--crop-n-layers": "also segment crops of the image: layer i has (2^i)^2 crops (small objects; slower)",
    "--crop-nms-thresh": "of two masks from different crops whose boxes overlap more than this IoU, keep one",
    "--crop-overlap-ratio": "overlap of neighbouring crops, as a fraction of the crop size",
    "--crop-n-points-downscale-factor": "divide the points per side of crop layer i by this^i",
    "--min-mask-region-area": "remove holes and islands smaller than this many pixels from each mask (0: off)",
}


def _argument(flag: str) -> str:
    return flag[2:].replace("-", "_")


def add_arguments(p: argparse.ArgumentParser) -> None:
    common.add_checkpoint_arguments(p)
    p.add_argument("--input", required=True, help="an image, or a folder of images")
    p.add_argument("--output", required=True, help="output folder")
    p.add_argument("--convert-to-rle", action="store_true", help="one COCO-RLE JSON per image instead of PNG masks")
    p.add_argument("--format", choices=("official", "sa1b"), default="official", help="sa1b: SA-1B annotation JSON per image")
    common.add_overwrite_argument(p, "sam-jax's own outputs: recompute them, those made with other settings included")
    common.add_runtime_arguments(p)
    common.add_distributed_arguments(p)
    common.add_quiet_argument(p)
    common.add_numerics_arguments(p)
    tuning = p.add_argument_group("mask generation (the official SamAutomaticMaskGenerator arguments)")
    for flag, help in AMG_FLAGS.items():
        default = getattr(GENERATOR, _argument(flag))
        shown = "512/1500" if flag == "--crop-overlap-ratio" else default
        tuning.add_argument(flag, type=type(default), default=default, metavar="N" if isinstance(default, int) else "X",
                            help=f"{help} (default: {shown})")
    tuning.add_argument("--allow-large", action="store_true",
                        help="run settings whose work passes the generator's bounds (too many prompts per crop, "
                             "more memory than the device has, over a day by a rough estimate), refused otherwise")
    tuning.add_argument("--hq-token-only", action="store_true",
                        help="HQ-SAM models: each point's mask is the HQ mask alone (default: the SAM mask plus the HQ mask, as sam-hq)")


def run(args: argparse.Namespace) -> int:
    fmt = "sa1b" if args.format == "sa1b" else "coco_rle_json" if args.convert_to_rle else "png_masks"
    # Joined first (no model, no device touched): this process's share of the inputs depends on its index.
    _, count = common.join_processes(args)
    common.setup_runtime(args)
    result = common.deferred(".runners.amg").generate_folder(
        common.model_spec(args), args.input, args.output, fmt=fmt,
        settings={**{_argument(f): getattr(args, _argument(f)) for f in AMG_FLAGS}, "hq_token_only": args.hq_token_only,
                  "allow_large": args.allow_large},
        overwrite=args.overwrite, devices=common.local_devices(args), quiet=args.quiet,
    )
    if result.empty and not args.quiet:
        print(f"sam-jax amg: no masks for {len(result.empty)} image(s): every candidate failed --pred-iou-thresh "
              f"({args.pred_iou_thresh:g}) or --stability-score-thresh ({args.stability_score_thresh:g}); lower them, "
              "or check that the checkpoint holds trained weights", file=sys.stderr)
    if result.missing:
        names = ", ".join(p.name for p in result.missing[:5]) + (f" and {len(result.missing) - 5} more" if len(result.missing) > 5 else "")
        print(f"sam-jax amg: {len(result.missing)} of {result.inputs} inputs have no output in {args.output} after all "
              f"{count} processes finished: {names}", file=sys.stderr)
        return 1
    return 1 if result.failed else 0
