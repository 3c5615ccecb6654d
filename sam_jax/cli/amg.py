"""`sam-jax amg`: automatic masks for an image or a folder, in the official script's layout.

Per image, either a folder `<name>/` of `N.png` masks plus `metadata.csv` (the default), one
COCO-RLE JSON `<name>.json` (`--convert-to-rle`), or an SA-1B annotation JSON (`--format sa1b`).
Each output is assembled under a temporary name and renamed into place, so a complete-looking
output is a complete one; leftovers of killed runs are removed by the next run.

Each output is stamped (`utils.records`) with what made it: the format, the generation settings
(every generator argument but points_per_batch, which changes no mask), the model's content
digest and the input image's digest. A rerun skips the images whose output is this very work,
without loading the model when all are done. Outputs made by other work (settings, format,
model or image) are refused, naming the differences, unless `--overwrite`, which recomputes them;
an output that is not sam-jax's (no stamp: a folder or file of someone else's that has an
output's name) is never replaced, and its image fails like an unreadable one.

Every local device of the platform works at once, one image each (`parallel.run_on_devices`):
the outputs are those of a one-device run, byte for byte. In a multi-process run (the
distributed flags, or their environment variables) each process takes its share of the sorted
inputs (`parallel.process_share`), so a rerun of the same command gives every process the same
images and redoes only the unfinished ones; when all are done, process 0 checks that every input
has its output and names the ones that do not.
"""

from __future__ import annotations

import argparse
import inspect
import json
import sys
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image

from ..automatic_mask_generator import SamAutomaticMaskGenerator
from ..parallel import process_share, replicate, run_on_devices, wait_for_all
from ..utils import records
from ..utils.images import read_image
from ..utils.io import atomic_dir, atomic_file, file_digest, remove_stale_partials
from ..utils.memory import compile_seconds
from ..utils.progress import Progress
from ..utils.sa1b import to_sa1b
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
    common.add_overwrite_argument(p, "sam-jax's own outputs: recompute them, those made with other settings included")
    common.add_runtime_arguments(p)
    common.add_distributed_arguments(p)
    common.add_quiet_argument(p)
    common.add_numerics_arguments(p)
    tuning = p.add_argument_group("mask generation (the official SamAutomaticMaskGenerator arguments)")
    for flag, help in AMG_FLAGS.items():
        default = GENERATOR_DEFAULTS[_argument(flag)]
        shown = "512/1500" if flag == "--crop-overlap-ratio" else default
        tuning.add_argument(flag, type=type(default), default=default, metavar="N" if isinstance(default, int) else "X",
                            help=f"{help} (default: {shown})")


def generation_settings(kwargs: dict) -> dict:
    """Every argument of SamAutomaticMaskGenerator that changes its output, defaults filled in."""
    skip = ("self", "model", "points_per_batch", "point_grids")
    return {k: kwargs.get(k, default) for k, default in GENERATOR_DEFAULTS.items() if k not in skip}


def run(args: argparse.Namespace) -> int:
    src, out_dir = Path(args.input), Path(args.output)
    if not src.exists():
        raise FileNotFoundError(f"input not found: {src}")
    if out_dir.exists() and not out_dir.is_dir():
        raise FileExistsError(f"output {out_dir} exists and is not a folder")
    targets = sorted(p for p in src.iterdir() if p.is_file() and not p.name.startswith(".")) if src.is_dir() else [src]
    # Joined first (no model, no device touched): this process's share of the inputs depends on its index.
    index, count = common.join_processes(args)
    if count == 1:
        return 1 if _run_share(args, targets, 0, 1)[0] else 0
    try:
        failures, fmt, record = _run_share(args, targets, index, count)
    except (ValueError, OSError, ImportError):  # reported by the caller, once the others are done too
        wait_for_all("sam-jax amg: every process done")
        raise
    wait_for_all("sam-jax amg: every process done")
    if index == 0:
        missing = missing_outputs(targets, Path(args.output), fmt, record)
        if missing:
            names = ", ".join(p.name for p in missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
            print(f"sam-jax amg: {len(missing)} of {len(targets)} inputs have no output in {args.output} after all "
                  f"{count} processes finished: {names}", file=sys.stderr)
            return 1
    return 1 if failures else 0


def _run_share(args: argparse.Namespace, targets: list[Path], index: int, count: int) -> tuple[int, str, dict]:
    """Process `index` of `count`'s share of the inputs; returns (inputs that failed, the output
    format, the output record)."""
    out_dir = Path(args.output)
    kwargs = {_argument(f): getattr(args, _argument(f)) for f in AMG_FLAGS}
    mode = "coco_rle" if (args.convert_to_rle or args.format == "sa1b") else "binary_mask"
    fmt = "sa1b" if args.format == "sa1b" else "coco_rle_json" if mode == "coco_rle" else "png_masks"
    record = {"producer": "sam-jax amg", "format": fmt, "settings": generation_settings({**kwargs, "output_mode": mode}),
              "model_sha256": common.checkpoint_digest(args)}
    out_dir.mkdir(parents=True, exist_ok=True)
    for folder in (out_dir, out_dir / records.STAMP_DIR):
        remove_stale_partials(folder)
    plan = _plan(process_share(targets, index, count), targets, out_dir, fmt, record)
    return _generate(args, plan, mode, kwargs, fmt, record), fmt, record


def _generate(args: argparse.Namespace, plan: list[Planned], mode: str, kwargs: dict, fmt: str,
              record: dict) -> int:
    """This process's share: refuses other work, skips what is done, generates the rest on every
    local device; returns the number of inputs that failed."""
    progress = Progress(len(plan), prefix="sam-jax amg", quiet=args.quiet)
    failures = 0
    other = [p.stamp for p in plan if p.state == records.OTHER_WORK]
    if other and not args.overwrite:
        diff = records.differences(other[0]["record"], record) or ["the input image changed"]
        raise FileExistsError(
            f"{len(other)} output(s) in {Path(args.output)} were made by other work ({'; '.join(diff)}): "
            "use --overwrite to recompute them, or another --output"
        )
    pending = []
    for item in plan:
        problem = None
        if item.clash is not None:
            problem = f"its output name {item.final.name!r} is already used by {item.clash.name}"
        elif item.state == records.FOREIGN:
            problem = f"{item.final} exists and was not written by sam-jax amg; move it away or choose another --output"
        elif item.state == records.CHANGED and not args.overwrite:
            problem = f"{item.final} is not what sam-jax wrote there (changed since, or an interrupted run); --overwrite recomputes it"
        if problem:
            failures += 1
            progress.message(f"skipping {item.target}: {problem}")
        elif item.state == records.DONE and not args.overwrite:
            progress.step(f"{item.target.name}: done before, skipped")
        else:
            pending.append(item)

    empty = []
    if pending:  # the model is loaded only for work to do
        common.setup_runtime(args)
        devices = common.local_devices(args)
        models = replicate(common.load_model(args), devices)
        generators = [SamAutomaticMaskGenerator(m, output_mode=mode, **kwargs) for m in models]

        def work(k: int, item: Planned):
            """One image on device k: its output written, or the reason it failed."""
            try:
                image = read_image(item.target)
                t0, compiling = time.perf_counter(), compile_seconds()
                masks = generators[k].generate(image)
            except (ValueError, MemoryError) as e:  # one bad image never takes the rest down
                return e if isinstance(e, ValueError) else "out of memory"
            write_output(item.final, masks, image.shape[:2], item.target.name, fmt,
                         lambda tmp: records.write_stamp(item.final, record, item.digest, tmp))
            return Generated(len(masks), time.perf_counter() - t0, compile_seconds() > compiling, devices[k])

        for item, result in run_on_devices(work, pending, devices):
            if not isinstance(result, Generated):
                failures += 1
                progress.message(f"skipping {item.target}: {result}")
                continue
            n, device = result.masks, result.device
            note = ", compiling included (once per device)" if result.compiled else ""
            where = f" on {device.platform}:{device.id}" if len(devices) > 1 else ""
            progress.step(f"{item.target.name}: {n} mask{'' if n == 1 else 's'} in {result.seconds:.1f} s{where}{note}")
            if n == 0:
                empty.append(item.target.name)
    progress.close()
    if empty and not args.quiet:
        progress.message(
            f"no masks for {len(empty)} image(s): every candidate failed --pred-iou-thresh ({args.pred_iou_thresh:g}) or "
            f"--stability-score-thresh ({args.stability_score_thresh:g}); lower them, or check that the checkpoint "
            "holds trained weights", counts=False,
        )
    if failures:
        progress.message(f"{failures} of {len(plan)} inputs failed", counts=False)
    return failures


class Generated(NamedTuple):
    masks: int  # how many
    seconds: float
    compiled: bool  # whether compilations ran meanwhile (this device's first image, or another's)
    device: object  # the jax.Device that made them


class Planned(NamedTuple):
    target: Path  # the input image
    final: Path  # its output
    digest: str | None  # the input's SHA-256
    state: str | None  # records.inspect's verdict on the output
    stamp: dict | None  # the output's stamp, when it was made by other work
    clash: Path | None  # an earlier input with the same output name


def output_path(out_dir: Path, target: Path, fmt: str) -> Path:
    return out_dir / (target.stem if fmt == "png_masks" else f"{target.stem}.json")


def _plan(share: list[Path], targets: list[Path], out_dir: Path, fmt: str, record: dict) -> list[Planned]:
    """What becomes of each input of this process's share; a name clash is judged over all inputs."""
    first = {}
    for target in targets:
        first.setdefault(output_path(out_dir, target, fmt).name, target)
    plan = []
    for target in share:
        final = output_path(out_dir, target, fmt)
        if first[final.name] != target:
            plan.append(Planned(target, final, None, None, None, first[final.name]))
            continue
        digest = file_digest(target)
        state, stamp = records.inspect(final, record, digest)
        plan.append(Planned(target, final, digest, state, stamp, None))
    return plan


def missing_outputs(targets: list[Path], out_dir: Path, fmt: str, record: dict) -> list[Path]:
    """The inputs without an output stamped as this work (the final check of a multi-process run:
    it reads each stamp, not the outputs' bytes, which their own process has checked)."""
    missing = []
    for target in targets:
        final = output_path(out_dir, target, fmt)
        stamp = records.read_stamp(final)
        if not final.exists() or stamp is None or stamp.get("record") != record:
            missing.append(target)
    return missing


def write_output(final: Path, masks, size, file_name: str, fmt: str, before_rename) -> None:
    """One image's output, atomically: the official folder, a COCO-RLE JSON or an SA-1B JSON.
    `before_rename(tmp)` runs on the finished output just before it takes its name."""
    if fmt == "png_masks":
        with atomic_dir(final, overwrite=True) as tmp:  # the caller has checked what it replaces
            write_masks_to_folder(masks, tmp)
            before_rename(tmp)
        return
    data = to_sa1b(masks, size, file_name) if fmt == "sa1b" else masks
    with atomic_file(final) as tmp:
        with open(tmp, "w") as f:
            json.dump(data, f)
        before_rename(tmp)


def write_masks_to_folder(masks, path: Path) -> None:
    """`N.png` (0/255) per mask and `metadata.csv`, as the official scripts/amg.py writes them."""
    rows = [METADATA_HEADER]
    for i, r in enumerate(masks):
        Image.fromarray(r["segmentation"].astype(np.uint8) * 255).save(path / f"{i}.png")
        values = [i, r["area"], *r["bbox"], *r["point_coords"][0], r["predicted_iou"], r["stability_score"], *r["crop_box"]]
        rows.append(",".join(str(v) for v in values))
    (path / "metadata.csv").write_text("\n".join(rows))
