"""`sam-jax train-export`: the model of any training state a `sam-jax train` run saved, as a
checkpoint folder (LoRA merged into plain weights) that `sam_jax.load` opens.

    sam-jax train-export --run runs/ft --checkpoint sam_vit_b --step 300 --output runs/ft-300

--checkpoint is the model the run started from (a run saves only what it trains; the base's
content digest must be the one the run recorded). The run folder already holds the last model
(its own config.json and params/) and, with validation data, the best one (best/).
"""

from __future__ import annotations

import argparse

from . import common


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run", required=True, help="the --output folder of `sam-jax train`")
    common.add_checkpoint_arguments(p, help="the model the run started from (its --checkpoint): " + common.CHECKPOINT_HELP)
    p.add_argument("--step", type=int, default=None, help="the saved optimizer step (default: the last saved); "
                                                          "--list shows which are saved")
    p.add_argument("--list", action="store_true", help="print the saved steps and exit")
    p.add_argument("--output", help="the checkpoint folder to write")
    common.add_overwrite_argument(p, "an existing checkpoint folder at --output")
    common.add_quiet_argument(p)


def run(args: argparse.Namespace) -> int:
    export = common.deferred(".train.export")
    if args.list:
        print(" ".join(map(str, export.saved_steps(args.run))))
        return 0
    if not args.output:
        raise ValueError("--output is required (the checkpoint folder to write), unless --list")
    model = common.model_spec(args, numerics=False).load(None, quiet=args.quiet)
    out = export.export_step(args.run, model, args.output, args.step, overwrite=args.overwrite)
    if not args.quiet:
        print(f"sam-jax train-export: wrote {out} (load it with sam_jax.load)")
    return 0
