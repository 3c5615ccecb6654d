"""An evaluation into a results folder: what `sam-jax eval` runs, as a library function with typed
arguments.

    result = evaluate_to_folder(ModelSpec("vit_b"), "instances_val2017.json", "results/", prompt="box")
    result.results["miou"], result.results["miou_by_area"]

The folder holds `results.json` (the record of the work: protocol, limit, the model's content
digest, dtype and precision, the annotation file's digest; then the summary, the skipped
annotations and the digest of the table) and `per_object.csv` (one row per evaluated annotation,
`annotation_id,iou,...`; `TABLE_COLUMNS` says what follows). Neither holds a time, a host or a
process id: the same work writes the same bytes. The folder is assembled under a temporary name
and renamed into place.

A rerun of the same work finds its results and returns them without loading the model; results
of other work (another protocol, limit, model or data) are refused, naming the differences,
unless `overwrite`. Only a folder that sam-jax eval wrote (its two files, the table as recorded)
or an empty one is ever replaced; anything else is refused, with or without `overwrite`.

Every given device works at once, one image each; in a multi-process run (`parallel.initialize`
called first) each process evaluates its share of the images (`parallel.process_share`), the
rows are gathered, and process 0 writes the folder.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import jax

from ..evaluation import AREA_RANGES, Click, ObjectResult, Protocol, evaluate, summarize
from ..io.coco import AnnotationSet, read_annotations
from ..io.outputs import atomic_dir, check_output, file_digest, remove_stale_partials
from ..io.stamps import differences, record_text
from ..parallel import wait_for_all
from ..parallel.gather import all_gather_bytes
from .model import ModelSpec

PRODUCER, FORMAT = "sam-jax eval", 1
RESULTS, TABLE = "results.json", "per_object.csv"
TABLE_COLUMNS = {  # per prompt, after annotation_id and iou
    "box": ("image_id", "area", "area_range", "predicted_iou", "output"),
    "point": ("image_id", "area", "area_range", "predicted_iou", "output", "point_x", "point_y"),
    "clicks": ("image_id", "area", "area_range", "predicted_iou", "output", "point_x", "point_y", "clicks_given", "clicks"),
}


class EvalFolderResult(NamedTuple):
    results: dict  # what results.json holds (also without an output folder)
    objects: list[ObjectResult]  # every evaluated annotation (empty when done before)
    output: Path | None
    done_before: bool  # the folder already held these results: nothing was computed


def work_record(protocol: Protocol, limit: int | None, model: ModelSpec, model_sha256: str, data: AnnotationSet) -> dict:
    """What identifies an evaluation: two runs with the same record give the same results."""
    return {
        "producer": PRODUCER, "format": FORMAT,
        "protocol": {**protocol.to_dict(), "limit": limit, "limit_unit": "images",
                     "area_ranges": {name: [lo, None if hi == float("inf") else hi] for name, lo, hi in AREA_RANGES}},
        "model": {"sha256": model_sha256, "dtype": model.dtype, "precision": model.precision},
        "data": {"kind": data.kind, "name": Path(data.name).name, "sha256": data.sha256,
                 **({"min_area": data.options.min_area} if data.options.min_area else {})},
    }


def evaluate_to_folder(
    model: ModelSpec,
    data: str | os.PathLike | AnnotationSet,
    output: str | os.PathLike | None = None,
    *,
    prompt: str = "point",
    select: str = "score",
    clicks: int | None = None,
    limit: int | None = None,
    image_dir: str | os.PathLike | None = None,
    overwrite: bool = False,
    devices: Sequence[jax.Device] | None = None,
    batch_size: int = 32,
    quiet: bool = False,
) -> EvalFolderResult:
    """Evaluates `model` on `data` by the protocol (see `sam_jax.evaluation.evaluate`) and, with
    `output`, writes the results folder (see the module docstring). devices: where images are
    evaluated (default: every local device of JAX's default platform)."""
    protocol = Protocol.make(prompt, select, clicks)
    annotations = data if isinstance(data, AnnotationSet) else read_annotations(data, image_dir)
    record = work_record(protocol, limit, model, model.digest(quiet), annotations)
    out = None if output is None else Path(output)
    if out is not None:
        state, old = inspect_results(out, record)
        if state == "done" and not overwrite:
            return EvalFolderResult(old, [], out, True)
        if state == "other work" and not overwrite:
            raise FileExistsError(f"{out} holds the results of other work ({'; '.join(differences(_record_of(old), record))}): "
                                  "use --overwrite to replace them, or another --output")
        if state == "changed" and not overwrite:
            raise FileExistsError(f"{out / TABLE} is not the table sam-jax wrote there; --overwrite recomputes the results")
        images = image_dir if image_dir is not None else annotations.image_dir
        inputs = [annotations.name] + ([images] if images is not None else [])
        check_output(out, kind="dir", overwrite=overwrite or state == "absent", is_own=lambda p: state != "foreign",
                     what="sam-jax eval results", inputs=inputs)
    index, count = jax.process_index(), jax.process_count()
    devices = list(devices) if devices is not None else jax.local_devices()
    payload = {}
    try:
        evaluation = evaluate(model.load(quiet=quiet), annotations, prompt=protocol.prompt, select=protocol.select,
                              clicks=protocol.clicks, limit=limit, devices=devices, share=(index, count) if count > 1 else None,
                              batch_size=batch_size, quiet=quiet)
        payload["objects"] = [list(o._replace(clicks=[list(c) for c in o.clicks])) for o in evaluation.objects]
    except (ValueError, OSError, MemoryError) as e:  # every process learns of it at the gather, and stops
        if count == 1:
            raise
        payload["error"] = f"process {index}: {e}"
    shares = [json.loads(b) for b in all_gather_bytes(json.dumps(payload).encode())]
    errors = [s["error"] for s in shares if "error" in s]
    if errors:
        raise ValueError(errors[0])
    objects = sorted((_object(row) for s in shares for row in s["objects"]), key=lambda o: (o.image, o.position))
    table = table_text(objects, protocol)
    results = {**record, **summarize(objects, protocol),
               "skipped": annotations.skip_counts(),
               "per_object_sha256": _text_digest(table)}
    if out is not None and index == 0:
        remove_stale_partials(out.parent)
        with atomic_dir(out, overwrite=True) as tmp:  # checked above: absent, empty, or ours
            (tmp / TABLE).write_text(table)
            (tmp / RESULTS).write_text(record_text(results))
    wait_for_all("sam-jax eval: results written")
    return EvalFolderResult(results, objects, out, False)


def inspect_results(out: Path, record: dict) -> tuple[str, dict | None]:
    """What `out` holds: absent (or an empty folder), done (these very results), other work,
    changed (ours, but the table is not the one recorded), or foreign (anything else)."""
    if not (out.exists() or out.is_symlink()):
        return "absent", None
    if out.is_symlink() or not out.is_dir():
        return "foreign", None
    names = {p.name for p in out.iterdir()}
    if not names:
        return "absent", None
    try:
        old = json.loads((out / RESULTS).read_text())
    except (OSError, ValueError, RecursionError):
        return "foreign", None
    if not names <= {RESULTS, TABLE} or not isinstance(old, dict) or old.get("producer") != PRODUCER:
        return "foreign", None
    if TABLE not in names or file_digest(out / TABLE) != old.get("per_object_sha256"):
        return "changed", old
    return ("done" if _record_of(old) == record else "other work"), old


def table_text(objects: Sequence[ObjectResult], protocol: Protocol) -> str:
    """per_object.csv: annotation_id, iou (after the last round), then TABLE_COLUMNS[prompt] and,
    for clicks, iou_1..iou_N; floats as Python writes them (shortest exact form)."""
    columns = ["annotation_id", "iou", *TABLE_COLUMNS[protocol.prompt]]
    if protocol.prompt == "clicks":
        columns += [f"iou_{r + 1}" for r in range(protocol.clicks)]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    for o in objects:
        row = [o.annotation_id, repr(o.iou), o.image_id, _number(o.area), o.area_range, repr(o.predicted_ious[-1]), o.outputs[-1]]
        if protocol.prompt != "box":
            row += [o.clicks[0].x, o.clicks[0].y]
        if protocol.prompt == "clicks":
            row += [len(o.clicks), ";".join(f"{c.x} {c.y} {c.label}" for c in o.clicks), *(repr(v) for v in o.ious)]
        writer.writerow(row)
    return buf.getvalue()


def _number(v) -> str:
    return str(v) if isinstance(v, int) else repr(float(v))


def _object(row: list) -> ObjectResult:
    o = ObjectResult(*row)
    return o._replace(ious=tuple(o.ious), predicted_ious=tuple(o.predicted_ious), outputs=tuple(o.outputs),
                      clicks=tuple(Click(*c) for c in o.clicks))


def _record_of(results: dict) -> dict:
    return {k: results.get(k) for k in ("producer", "format", "protocol", "model", "data")}


def _text_digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()
