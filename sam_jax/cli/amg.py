"""`sam-jax amg`: automatic masks for an image or a folder, in the official script's layout.

Per image, either a folder `<name>/` of `N.png` masks plus `metadata.csv` (the default), one
COCO-RLE JSON `<name>.json` (`--convert-to-rle`), or an SA-1B annotation JSON (`--format sa1b`).
Each output is assembled under a temporary name and renamed into place, so a complete-looking
output is a complete one; a rerun skips images whose output exists unless `--overwrite`.
"""

from __future__ import annotations

import argparse
import inspect
import json
import time
from pathlib import Path

import numpy as np
from PIL import Image

from ..automatic_mask_generator import SamAutomaticMaskGenerator
from ..utils.images import read_image
from ..utils.io import atomic_dir, atomic_file
from ..utils.memory import compile_seconds
from ..utils.progress import Progress
from ..utils.sa1b import write_sa1b
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
GENERATOR_DEFAULTS = {
    name: p.default for name, p in inspect.signature(SamAutomaticMaskGenerator.__init__).parameters.items()
}
METADATA_HEADER = (
    "id,area,bbox_x0,bbox_y0,bbox_w,bbox_h,point_input_x,point_input_y,predicted_iou,"
    "stability_score,crop_box_x0,crop_box_y0,crop_box_w,crop_box_h"
)


def _argument(flag: str) -> str:
    return flag[2:].replace("-", "_")


def add_arguments(p: argparse.ArgumentParser) -> None:
    common.add_checkpoint_arguments(p)
    p.add_argument("--input", required=True, help="an image, or a folder of images")
    p.add_argument("--output", required=True, help="output folder")
    p.add_argument("--convert-to-rle", action="store_true", help="one COCO-RLE JSON per image instead of PNG masks")
    p.add_argument("--format", choices=("official", "sa1b"), default="official", help="sa1b: SA-1B annotation JSON per image")
    common.add_overwrite_argument(p, "recompute images whose output already exists")
    common.add_runtime_arguments(p)
    common.add_quiet_argument(p)
    tuning = p.add_argument_group("mask generation (the official SamAutomaticMaskGenerator arguments)")
    for flag, help in AMG_FLAGS.items():
        default = GENERATOR_DEFAULTS[_argument(flag)]
        shown = "512/1500" if flag == "--crop-overlap-ratio" else default
        tuning.add_argument(flag, type=type(default), default=default, metavar="N" if isinstance(default, int) else "X",
                            help=f"{help} (default: {shown})")


def run(args: argparse.Namespace) -> int:
    src = Path(args.input)
    if not src.exists():
        raise FileNotFoundError(f"input not found: {src}")
    targets = sorted(p for p in src.iterdir() if p.is_file() and not p.name.startswith(".")) if src.is_dir() else [src]
    out_dir = Path(args.output)
    mode = "coco_rle" if (args.convert_to_rle or args.format == "sa1b") else "binary_mask"

    # Which images need work, before loading anything: a rerun with every output done loads no model.
    failures, seen, pending = 0, {}, []
    progress = Progress(len(targets), prefix="sam-jax amg", quiet=args.quiet)
    for target in targets:
        name = target.stem
        if name in seen:
            failures += 1
            progress.message(f"skipping {target}: its output name {name!r} is already used by {seen[name].name}")
            continue
        seen[name] = target
        final = out_dir / (name if mode == "binary_mask" else f"{name}.json")
        if final.exists() and not args.overwrite:
            progress.step(f"{target.name}: done before, skipped")
        else:
            pending.append((target, final))

    empty = []
    if pending:
        common.setup_runtime(args)
        out_dir.mkdir(parents=True, exist_ok=True)
        kwargs = {_argument(f): getattr(args, _argument(f)) for f in AMG_FLAGS}
        generator = SamAutomaticMaskGenerator(common.load_model(args), output_mode=mode, **kwargs)
    for target, final in pending:
        try:
            image = read_image(target)
        except ValueError as e:
            failures += 1
            progress.message(f"skipping {target}: {e}")
            continue
        t0, compiling = time.perf_counter(), compile_seconds()
        records = generator.generate(image)
        write_output(final, records, image.shape[:2], target.name, args.format, mode, args.overwrite)
        note = f", {compile_seconds() - compiling:.1f} s of it compiling (once)" if compile_seconds() > compiling else ""
        n = len(records)
        progress.step(f"{target.name}: {n} mask{'' if n == 1 else 's'} in {time.perf_counter() - t0:.1f} s{note}")
        if n == 0:
            empty.append(target.name)
    progress.close()
    if empty and not args.quiet:
        progress.message(
            f"no masks for {len(empty)} image(s): every candidate failed --pred-iou-thresh ({args.pred_iou_thresh:g}) or "
            f"--stability-score-thresh ({args.stability_score_thresh:g}); lower them, or check that the checkpoint "
            "holds trained weights", counts=False,
        )
    if failures:
        progress.message(f"{failures} of {len(targets)} inputs failed", counts=False)
    return 1 if failures else 0


def write_output(final: Path, records, size, file_name: str, fmt: str, mode: str, overwrite: bool) -> None:
    """One image's output, atomically: an SA-1B JSON, a COCO-RLE JSON, or the official folder."""
    if fmt == "sa1b":
        write_sa1b(final, records, size, file_name)
    elif mode == "binary_mask":
        with atomic_dir(final, overwrite=overwrite) as tmp:
            write_masks_to_folder(records, tmp)
    else:
        with atomic_file(final) as tmp:
            with open(tmp, "w") as f:
                json.dump(records, f)


def write_masks_to_folder(records, path: Path) -> None:
    """`N.png` (0/255) per mask and `metadata.csv`, as the official scripts/amg.py writes them."""
    rows = [METADATA_HEADER]
    for i, r in enumerate(records):
        Image.fromarray(r["segmentation"].astype(np.uint8) * 255).save(path / f"{i}.png")
        values = [i, r["area"], *r["bbox"], *r["point_coords"][0], r["predicted_iou"], r["stability_score"], *r["crop_box"]]
        rows.append(",".join(str(v) for v in values))
    (path / "metadata.csv").write_text("\n".join(rows))
