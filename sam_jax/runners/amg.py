"""Automatic masks for an image or a folder of images, into an output folder: what `sam-jax amg`
runs, as a library function with typed arguments.

    result = generate_folder(ModelSpec("vit_b"), "photos/", "masks/", fmt="sa1b", settings={"points_per_side": 16})

Per image, either a folder `<name>/` of `N.png` masks plus `metadata.csv` (the official script's
layout, "png_masks"), one COCO-RLE JSON `<name>.json` ("coco_rle_json"), or an SA-1B annotation
JSON ("sa1b"). Each output is assembled under a temporary name and renamed into place, so a
complete-looking output is a complete one; leftovers of killed runs are removed by the next run.

Each output is stamped (`sam_jax.io.stamps`) with what made it: the format, the generation
settings (every generator argument but points_per_batch and allow_large, which change no mask), the model's
content digest and the input image's digest. A rerun skips the images whose output is this very
work, without loading the model when all are done. Outputs made by other work (settings, format,
model or image) are refused, naming the differences, unless `overwrite`, which recomputes them;
an output that is not sam-jax's (no stamp: a folder or file of someone else's that has an
output's name) is never replaced, and its image fails like an unreadable one.

Every given device works at once, one image each (`parallel.run_on_devices`): the outputs are
those of a one-device run, byte for byte. In a multi-process run (`parallel.initialize` called
first) each process takes its share of the sorted inputs (`parallel.process_share`), so a rerun
of the same job gives every process the same images and redoes only the unfinished ones; when
all are done, process 0 checks that every input has its output and names the ones that do not.
"""

from __future__ import annotations

import inspect
import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import jax
import numpy as np
from PIL import Image

from ..automatic_mask_generator import SamAutomaticMaskGenerator
from ..io import stamps
from ..io.images import read_image
from ..io.outputs import atomic_dir, atomic_file, file_digest, remove_stale_partials
from ..io.sa1b import to_sa1b
from ..parallel import process_share, replicate, run_on_devices, wait_for_all
from ..runtime.memory import CompileCounter, release_host_memory
from ..runtime.progress import Progress
from .model import ModelSpec

OUTPUT_FORMATS = ("png_masks", "coco_rle_json", "sa1b")
GENERATOR_DEFAULTS = {
    name: p.default for name, p in inspect.signature(SamAutomaticMaskGenerator.__init__).parameters.items()
    if name not in ("self", "model")
}
METADATA_HEADER = (
    "id,area,bbox_x0,bbox_y0,bbox_w,bbox_h,point_input_x,point_input_y,predicted_iou,"
    "stability_score,crop_box_x0,crop_box_y0,crop_box_w,crop_box_h"
)


class AmgFolderResult(NamedTuple):
    """What `generate_folder` did: inputs that failed (with why), outputs written, outputs found
    done before, images that got no mask, the record every output of this job is stamped with,
    and (process 0 of a multi-process run) the inputs of any process left without an output."""

    failed: list[tuple[Path, str]]
    written: list[Path]
    done_before: list[Path]
    empty: list[Path]
    record: dict
    inputs: int  # all the job's inputs (of every process)
    missing: list[Path] = []


def generation_settings(settings: dict) -> dict:
    """Every argument of SamAutomaticMaskGenerator that changes its output, defaults filled in."""
    skip = ("points_per_batch", "point_grids", "allow_large")
    return {k: settings.get(k, default) for k, default in GENERATOR_DEFAULTS.items() if k not in skip}


def input_images(source: str | os.PathLike) -> list[Path]:
    """The images of a job: the file itself, or a folder's visible files, sorted."""
    src = Path(source)
    if not src.exists():
        raise FileNotFoundError(f"input not found: {src}")
    return sorted(p for p in src.iterdir() if p.is_file() and not p.name.startswith(".")) if src.is_dir() else [src]


def generate_folder(
    model: ModelSpec,
    source: str | os.PathLike,
    output: str | os.PathLike,
    *,
    fmt: str = "png_masks",
    settings: dict | None = None,
    overwrite: bool = False,
    devices: Sequence[jax.Device] | None = None,
    quiet: bool = False,
) -> AmgFolderResult:
    """Masks of every image of `source` (an image or a folder) in `output` (see the module
    docstring). settings: SamAutomaticMaskGenerator arguments (its defaults for the others;
    output_mode follows `fmt`); devices: where images are generated, one at a time each
    (default: every local device of JAX's default platform). In a multi-process run this
    process does its share, then waits for the others; process 0 then lists in `missing` the
    inputs that have no output."""
    if fmt not in OUTPUT_FORMATS:
        raise ValueError(f"fmt must be one of {', '.join(OUTPUT_FORMATS)}, got {fmt!r}")
    settings = dict(settings or {})
    unknown = sorted(set(settings) - set(GENERATOR_DEFAULTS) - {"output_mode"})
    if unknown:
        raise ValueError(f"unknown generator settings: {', '.join(unknown)}")
    out_dir = Path(output)
    if out_dir.exists() and not out_dir.is_dir():
        raise FileExistsError(f"output {out_dir} exists and is not a folder")
    targets = input_images(source)
    settings["output_mode"] = "binary_mask" if fmt == "png_masks" else "coco_rle"
    index, count = jax.process_index(), jax.process_count()
    if count == 1:
        return _generate_share(model, targets, targets, out_dir, fmt, settings, overwrite, devices, quiet)
    try:
        result = _generate_share(model, process_share(targets, index, count), targets, out_dir, fmt, settings, overwrite,
                                 devices, quiet)
    except (ValueError, OSError, ImportError):  # reported by the caller, once the others are done too
        wait_for_all("sam-jax amg: every process done")
        raise
    wait_for_all("sam-jax amg: every process done")
    if index == 0:
        result = result._replace(missing=missing_outputs(targets, out_dir, fmt, result.record))
    return result


def _generate_share(model: ModelSpec, share: list[Path], targets: list[Path], out_dir: Path, fmt: str, settings: dict,
                    overwrite: bool, devices, quiet: bool) -> AmgFolderResult:
    """This process's share: refuses other work, skips what is done, generates the rest on every
    device."""
    record = {"producer": "sam-jax amg", "format": fmt, "settings": generation_settings(settings),
              "model_sha256": model.digest(quiet)}
    out_dir.mkdir(parents=True, exist_ok=True)
    for folder in (out_dir, out_dir / stamps.STAMP_DIR):
        remove_stale_partials(folder)
    plan = _plan(share, targets, out_dir, fmt, record)
    progress = Progress(len(plan), prefix="sam-jax amg", quiet=quiet)
    result = AmgFolderResult([], [], [], [], record, len(targets), [])
    other = [p.stamp for p in plan if p.state == stamps.OTHER_WORK]
    if other and not overwrite:
        diff = stamps.differences(other[0]["record"], record) or ["the input image changed"]
        raise FileExistsError(
            f"{len(other)} output(s) in {out_dir} were made by other work ({'; '.join(diff)}): "
            "use --overwrite to recompute them, or another --output"
        )
    pending = []
    for item in plan:
        problem = None
        if item.clash is not None:
            problem = f"its output name {item.final.name!r} is already used by {item.clash.name}"
        elif item.state == stamps.FOREIGN:
            problem = f"{item.final} exists and was not written by sam-jax amg; move it away or choose another --output"
        elif item.state == stamps.CHANGED and not overwrite:
            problem = f"{item.final} is not what sam-jax wrote there (changed since, or an interrupted run); --overwrite recomputes it"
        if problem:
            result.failed.append((item.target, problem))
            progress.message(f"skipping {item.target}: {problem}")
        elif item.state == stamps.DONE and not overwrite:
            result.done_before.append(item.final)
            progress.step(f"{item.target.name}: done before, skipped")
        else:
            pending.append(item)

    if pending:  # the model is loaded only for work to do
        devices = list(devices) if devices is not None else jax.local_devices()
        generators = [SamAutomaticMaskGenerator(m, **settings) for m in replicate(model.load(quiet=quiet), devices)]
        first = [True] * len(devices)  # each device compiles its programs on its first image

        def work(k: int, item: Planned):
            """One image on device k: its output written, or the reason it failed."""
            doing = f"{item.target.name}: generating" + (" (compiling first, once per device)" if first[k] else "")
            first[k] = False
            try:
                image = read_image(item.target)
                t0 = time.perf_counter()
                with CompileCounter() as compiles, progress.running(doing):
                    masks = generators[k].generate(image)
            except (ValueError, MemoryError) as e:  # one bad image never takes the rest down
                return e if isinstance(e, ValueError) else "out of memory"
            write_output(item.final, masks, image.shape[:2], item.target.name, fmt,
                         lambda tmp: stamps.write_stamp(item.final, record, item.digest, tmp))
            release_host_memory()  # this image's masks and decoded pixels
            return Generated(len(masks), time.perf_counter() - t0, compiles.count() > 0, devices[k])

        for item, outcome in run_on_devices(work, pending, devices):
            if not isinstance(outcome, Generated):
                result.failed.append((item.target, str(outcome)))
                progress.message(f"skipping {item.target}: {outcome}")
                continue
            n, device = outcome.masks, outcome.device
            note = ", compiling included (once per device)" if outcome.compiled else ""
            where = f" on {device.platform}:{device.id}" if len(devices) > 1 else ""
            progress.step(f"{item.target.name}: {n} mask{'' if n == 1 else 's'} in {outcome.seconds:.1f} s{where}{note}")
            result.written.append(item.final)
            if n == 0:
                result.empty.append(item.target)
    progress.close()
    if result.failed:
        progress.message(f"{len(result.failed)} of {len(plan)} inputs failed", counts=False)
    return result


class Generated(NamedTuple):
    masks: int  # how many
    seconds: float
    compiled: bool  # whether compilations ran meanwhile (this device's first image, or another's)
    device: object  # the jax.Device that made them


class Planned(NamedTuple):
    target: Path  # the input image
    final: Path  # its output
    digest: str | None  # the input's SHA-256
    state: str | None  # stamps.inspect's verdict on the output
    stamp: dict | None  # the output's stamp, when it was made by other work
    clash: Path | None  # an earlier input with the same output name


def output_path(out_dir: Path, target: Path, fmt: str) -> Path:
    """Where the output of `target` goes: `<stem>/` for PNG masks, `<stem>.json` otherwise."""
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
        state, stamp = stamps.inspect(final, record, digest)
        plan.append(Planned(target, final, digest, state, stamp, None))
    return plan


def missing_outputs(targets: list[Path], out_dir: Path, fmt: str, record: dict) -> list[Path]:
    """The inputs without an output stamped as this work (the final check of a multi-process run:
    it reads each stamp, not the outputs' bytes, which their own process has checked)."""
    missing = []
    for target in targets:
        final = output_path(out_dir, target, fmt)
        stamp = stamps.read_stamp(final)
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
