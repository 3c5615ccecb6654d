"""`sam-jax amg`: automatic masks for an image or a folder, in the official script's layout.

Per image, either a folder `<name>/` of `N.png` masks plus `metadata.csv` (the default), one
COCO-RLE JSON `<name>.json` (`--convert-to-rle`), or an SA-1B annotation JSON (`--format sa1b`).
Each output is assembled under a temporary name and renamed into place, so a complete-looking
output is a complete one; a rerun skips images whose output exists unless `--overwrite`.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

AMG_FLAGS = {  # flag -> (type, SamAutomaticMaskGenerator argument)
    "--points-per-side": int, "--points-per-batch": int, "--pred-iou-thresh": float,
    "--stability-score-thresh": float, "--stability-score-offset": float, "--box-nms-thresh": float,
    "--crop-n-layers": int, "--crop-nms-thresh": float, "--crop-overlap-ratio": float,
    "--crop-n-points-downscale-factor": int, "--min-mask-region-area": int,
}
METADATA_HEADER = (
    "id,area,bbox_x0,bbox_y0,bbox_w,bbox_h,point_input_x,point_input_y,predicted_iou,"
    "stability_score,crop_box_x0,crop_box_y0,crop_box_w,crop_box_h"
)


def add_arguments(p) -> None:
    p.add_argument("--checkpoint", required=True, help="directory from `sam-jax convert` (or an official .pth)")
    p.add_argument("--model-type", default=None, help="config to check a .pth against (default: inferred)")
    p.add_argument("--input", required=True, help="an image, or a folder of images")
    p.add_argument("--output", required=True, help="output folder")
    p.add_argument("--convert-to-rle", action="store_true", help="one COCO-RLE JSON per image instead of PNG masks")
    p.add_argument("--format", choices=("official", "sa1b"), default="official", help="sa1b: SA-1B annotation JSON per image")
    p.add_argument("--overwrite", action="store_true", help="recompute images whose output already exists")
    p.add_argument("--cache-dir", default=os.environ.get("SAM_JAX_CACHE_DIR", str(Path.home() / ".cache" / "sam-jax" / "xla")),
                   help="persistent XLA compilation cache ('' disables it)")
    for flag, kind in AMG_FLAGS.items():
        p.add_argument(flag, type=kind, default=None)


def read_image(path: Path) -> np.ndarray:
    """(H, W, 3) uint8 RGB, EXIF orientation applied (as cv2.imread does). Raises ValueError."""
    try:
        with Image.open(path) as im:
            return np.asarray(ImageOps.exif_transpose(im).convert("RGB"))
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise ValueError(f"cannot read as an image ({e.__class__.__name__})") from None


def run(args) -> int:
    from .automatic_mask_generator import SamAutomaticMaskGenerator

    _enable_cache(args.cache_dir)
    src = Path(args.input)
    if not src.exists():
        raise FileNotFoundError(f"input not found: {src}")
    targets = sorted(p for p in src.iterdir() if p.is_file() and not p.name.startswith(".")) if src.is_dir() else [src]
    out_dir = Path(args.output)
    out_dir.mkdir(parents=True, exist_ok=True)
    kwargs = {f[2:].replace("-", "_"): getattr(args, f[2:].replace("-", "_")) for f in AMG_FLAGS}
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    mode = "coco_rle" if (args.convert_to_rle or args.format == "sa1b") else "binary_mask"
    generator = SamAutomaticMaskGenerator(_load_model(args), output_mode=mode, **kwargs)

    failures, seen = 0, {}
    progress = _Progress(len(targets))
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
        _write_atomically(final, records, image.shape[:2], target.name, args.format, mode)
        progress.step(f"{target.name}: {len(records)} masks in {time.perf_counter() - t0:.1f} s")
    progress.close()
    if failures:
        print(f"sam-jax amg: {failures} of {len(targets)} inputs failed", file=sys.stderr)
    return 1 if failures else 0


def _load_model(args):
    import sam_jax

    ckpt = Path(args.checkpoint)
    if ckpt.is_dir():
        return sam_jax.load(ckpt)
    from .convert.checkpoint import read_state_dict
    from .convert.convert import convert_state_dict
    from .build_sam import model_from_params

    return model_from_params(*convert_state_dict(read_state_dict(ckpt), args.model_type))


def _enable_cache(cache_dir: str) -> None:
    if not cache_dir:
        return
    import jax

    Path(cache_dir).mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", cache_dir)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


def _write_atomically(final: Path, records, size, file_name: str, fmt: str, mode: str) -> None:
    if fmt == "sa1b":
        from .utils.sa1b import write_sa1b

        write_sa1b(final, records, size, file_name)
        return
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.partial-", dir=final.parent))
    try:
        if mode == "binary_mask":
            write_masks_to_folder(records, tmp)
            _replace_dir(tmp, final)
        else:
            with open(tmp / "out.json", "w") as f:
                json.dump(records, f)
            os.replace(tmp / "out.json", final)
            tmp.rmdir()
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_masks_to_folder(records, path: Path) -> None:
    """`N.png` (0/255) per mask and `metadata.csv`, as the official scripts/amg.py writes them."""
    rows = [METADATA_HEADER]
    for i, r in enumerate(records):
        Image.fromarray(r["segmentation"].astype(np.uint8) * 255).save(path / f"{i}.png")
        values = [i, r["area"], *r["bbox"], *r["point_coords"][0], r["predicted_iou"], r["stability_score"], *r["crop_box"]]
        rows.append(",".join(str(v) for v in values))
    (path / "metadata.csv").write_text("\n".join(rows))


def _replace_dir(new: Path, final: Path) -> None:
    if final.exists():
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        final.rename(old)
        new.rename(final)
        shutil.rmtree(old)
    else:
        new.rename(final)


class _Progress:
    """A one-line progress bar on a terminal; one line per image otherwise (logs, CI)."""

    def __init__(self, total: int):
        self.total, self.done, self.tty = total, 0, sys.stderr.isatty()

    def step(self, text: str) -> None:
        self.done += 1
        if self.tty:
            filled = int(30 * self.done / max(self.total, 1))
            sys.stderr.write(f"\r[{'#' * filled}{'.' * (30 - filled)}] {self.done}/{self.total} {text[:60]:<60}")
        else:
            sys.stderr.write(f"[{self.done}/{self.total}] {text}\n")
        sys.stderr.flush()

    def message(self, text: str) -> None:
        self.done += 1
        sys.stderr.write(("\n" if self.tty else "") + f"sam-jax amg: {text}\n")

    def close(self) -> None:
        if self.tty:
            sys.stderr.write("\n")
