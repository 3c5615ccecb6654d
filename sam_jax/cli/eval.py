"""`sam-jax eval`: a checkpoint's mIoU on COCO instances, an SA-1B folder or a folder of images
with instance label images by the SAM papers' protocols (`sam_jax.runners.evaluate.evaluate_to_folder`;
the protocols and the data: docs/evaluation.md).

    sam-jax eval --checkpoint runs/ft --data coco/annotations/instances_val2017.json --image-dir coco/val2017 \\
        --prompt clicks --clicks 5 --select score --output results/ft-clicks
    sam-jax eval --checkpoint runs/ft --data cells/images --labels cells/labels --prompt box

The results are printed; with --output also written (results.json, per_object.csv).
"""

from __future__ import annotations

import argparse

from ..options import PROMPTS, SELECTIONS
from . import common
from .common import positive_int


def add_arguments(p: argparse.ArgumentParser) -> None:
    common.add_checkpoint_arguments(p, help="the model to evaluate: " + common.CHECKPOINT_HELP)
    p.add_argument("--data", required=True, metavar="ANNOTATIONS",
                   help="a COCO instances JSON (RLE or polygons; crowd annotations are skipped), a folder of SA-1B "
                        "image/JSON pairs, or with --labels a folder of images")
    p.add_argument("--image-dir", help="folder of the COCO file_names (default: the JSON's folder)")
    p.add_argument("--labels", metavar="DIR",
                   help="folder of instance label images, one per image of --data with the same name stem (.png or "
                        ".tif; each pixel its object's id, 0 the background)")
    p.add_argument("--prompt", choices=PROMPTS, default="point",
                   help="box: the annotation's bbox; point: one click at the object's centre (the pixel farthest from "
                        "its boundary); clicks: --clicks rounds, each next click at the centre of the deeper error region, "
                        "positive in a miss, negative in a false alarm (default: point)")
    p.add_argument("--clicks", type=positive_int, default=None, metavar="N",
                   help="rounds of --prompt clicks, mIoU reported after each (default 3)")
    p.add_argument("--select", choices=SELECTIONS, default="score",
                   help="score: of the three outputs the one with the highest predicted IoU; oracle: the best against "
                        "the ground truth; single: multimask output off (default: score)")
    p.add_argument("--limit", type=positive_int, default=None, metavar="N",
                   help="evaluate the first N images (in the file's order) with all their objects (default: all)")
    p.add_argument("--output", metavar="DIR", help="write results.json and per_object.csv into this folder")
    p.add_argument("--batch-size", type=positive_int, default=32, metavar="N",
                   help="objects of an image predicted together: memory against speed (default 32)")
    common.add_overwrite_argument(p, "results in --output made by other work (only sam-jax eval's own results)")
    common.add_runtime_arguments(p)
    common.add_distributed_arguments(p)
    common.add_quiet_argument(p)
    common.add_numerics_arguments(p)
    common.add_data_arguments(p)


def run(args: argparse.Namespace) -> int:
    if args.clicks is not None and args.prompt != "clicks":
        raise ValueError(f"--clicks applies to --prompt clicks, not to --prompt {args.prompt}")
    # Joined first (no model, no device touched): this process's share of the images depends on its index.
    common.join_processes(args)
    common.setup_runtime(args)
    jax = common.deferred("jax")
    primary = jax.process_index() == 0
    checking = common.deferred(".runtime.progress").checking("sam-jax eval: checking", args.quiet or not primary)
    data = common.deferred(".io.coco").read_annotations(args.data, args.image_dir, labels=args.labels,
                                                        options=common.data_options(args), progress=checking)
    if primary and (data.skipped_text() or not args.quiet):
        print(f"sam-jax eval: {data.summary()}", flush=True)
    result = common.deferred(".runners.evaluate").evaluate_to_folder(
        common.model_spec(args), data, args.output, prompt=args.prompt, select=args.select, clicks=args.clicks,
        limit=args.limit, image_dir=args.image_dir, overwrite=args.overwrite, devices=common.local_devices(args),
        batch_size=args.batch_size, quiet=args.quiet,
    )
    if jax.process_index() == 0:
        print("\n".join(report(result)), flush=True)
    return 0


def report(result) -> list[str]:
    """The lines `sam-jax eval` prints of an `EvalFolderResult`: the protocol and mIoU, by area, by click, what was skipped, where written."""
    r = result.results
    p = r["protocol"]
    prompt = f"{p['clicks']} clicks" if p["prompt"] == "clicks" else p["prompt"]
    fmt = lambda v: "-" if v is None else f"{v:.4f}"
    lines = [f"{prompt}, {p['select']} selection: mIoU {fmt(r['miou'])} over {r['count']} objects in {r['images']} images "
             f"of {r['data']['name']}",
             "by area: " + ", ".join(f"{k} {fmt(v['miou'])} ({v['count']})" for k, v in r["miou_by_area"].items())]
    if "miou_per_click" in r:
        lines.append("by click: " + ", ".join(f"{k + 1}: {v:.4f}" for k, v in enumerate(r["miou_per_click"])))
    skipped = r["skipped"]
    if any(skipped.values()):
        lines.append(f"skipped {skipped['crowd']} crowd, {skipped['invalid']} unusable and {skipped.get('small', 0)} small "
                     f"annotation(s), and {skipped.get('images', 0)} image(s)")
    if result.output is not None:
        lines.append(f"found these results in {result.output} (the same work: not recomputed; --overwrite recomputes)"
                     if result.done_before else f"wrote {result.output}")
    return [f"sam-jax eval: {line}" for line in lines]
