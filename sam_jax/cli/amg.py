"""`sam-jax amg`: automatic masks for an image or a folder, in the official script's layout.

Per image, either a folder `<name>/` of `N.png` masks plus `metadata.csv` (the default), one
COCO-RLE JSON `<name>.json` (`--convert-to-rle`), or an SA-1B annotation JSON (`--format sa1b`).
Each output is assembled under a temporary name and renamed into place, so a complete-looking
output is a complete one; a rerun skips images whose output exists unless `--overwrite`.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from PIL import Image

from ..automatic_mask_generator import SamAutomaticMaskGenerator
from ..utils.images import read_image
from ..utils.io import atomic_dir, atomic_file
from ..utils.progress import Progress
from ..utils.sa1b import write_sa1b
from . import common

AMG_FLAGS = {  # flag -> type; each sets the SamAutomaticMaskGenerator argument of the same name
    "--points-per-side": int, "--points-per-batch": int, "--pred-iou-thresh": float,
    "--stability-score-thresh": float, "--stability-score-offset": float, "--box-nms-thresh": float,
    "--crop-n-layers": int, "--crop-nms-thresh": float, "--crop-overlap-ratio": float,
    "--crop-n-points-downscale-factor": int, "--min-mask-region-area": int,
}
METADATA_HEADER = (
    "id,area,bbox_x0,bbox_y0,bbox_w,bbox_h,point_input_x,point_input_y,predicted_iou,"
    "stability_score,crop_box_x0,crop_box_y0,crop_box_w,crop_box_h"
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    common.add_checkpoint_arguments(p)
    p.add_argument("--input", required=True, help="an image, or a folder of images")
    p.add_argument("--output", required=True, help="output folder")
    p.add_argument("--convert-to-rle", action="store_true", help="one COCO-RLE JSON per image instead of PNG masks")
    p.add_argument("--format", choices=("official", "sa1b"), default="official", help="sa1b: SA-1B annotation JSON per image")
    common.add_overwrite_argument(p, "recompute images whose output already exists")
    common.add_runtime_arguments(p)
    common.add_numerics_arguments(p)
    for flag, kind in AMG_FLAGS.items():
        p.add_argument(flag, type=kind, default=None)


def run(args: argparse.Namespace) -> int:
    common.setup_runtime(args)
    src = Path(args.input)
    if not src.exists():
        raise FileNotFoundError(f"input not found: {src}")
    targets = sorted(p for p in src.iterdir() if p.is_file() and not p.name.startswith(".")) if src.is_dir() else [src]
    out_dir = Path(args.output)
    out_dir.mkdir(parents=True, exist_ok=True)
    kwargs = {f[2:].replace("-", "_"): getattr(args, f[2:].replace("-", "_")) for f in AMG_FLAGS}
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    mode = "coco_rle" if (args.convert_to_rle or args.format == "sa1b") else "binary_mask"
    generator = SamAutomaticMaskGenerator(common.load_model(args), output_mode=mode, **kwargs)

    failures, seen = 0, {}
    progress = Progress(len(targets), prefix="sam-jax amg")
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
            continue
        try:
            image = read_image(target)
        except ValueError as e:
            failures += 1
            progress.message(f"skipping {target}: {e}")
            continue
        t0 = time.perf_counter()
        records = generator.generate(image)
        write_output(final, records, image.shape[:2], target.name, args.format, mode, args.overwrite)
        progress.step(f"{target.name}: {len(records)} masks in {time.perf_counter() - t0:.1f} s")
    progress.close()
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
