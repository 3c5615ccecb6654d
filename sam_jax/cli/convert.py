"""`sam-jax convert`: an official `.pth` (or Hugging Face) checkpoint to a sam-jax checkpoint folder;
or, given a model name (`--checkpoint vit_b`, or only `--model-type vit_b`), the official weights,
downloaded and converted into the cache (and copied to --output when given)."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from ..build_sam import convert_checkpoint, fetch
from ..checkpoint import read_config
from ..config import get_config
from ..utils.io import atomic_dir
from . import common


def add_arguments(p: argparse.ArgumentParser) -> None:
    common.add_checkpoint_arguments(p)
    p.add_argument("--output", help="output folder (written atomically); optional for a model name, "
                                    "whose converted copy is kept in the cache ($SAM_JAX_CACHE/checkpoints)")
    p.add_argument("--config", help="JSON SamConfig to check against and take non-inferable fields from")
    common.add_overwrite_argument(p, "an existing output folder")
    common.add_quiet_argument(p)


def run(args: argparse.Namespace) -> int:
    name = args.checkpoint or args.model_type
    if name is None:
        raise ValueError("give --checkpoint (a file, or a model name such as vit_b) or --model-type")
    cached = None
    if Path(name).exists():
        if args.output is None:
            raise ValueError("--output is required to convert a file")
        cfg = convert_checkpoint(name, args.output, args.model_type, args.config, args.overwrite)
        output = args.output
    else:
        if args.config:
            raise ValueError(f"--config applies to a checkpoint file; {name} is a model name with a known config")
        if args.output is not None and Path(args.output).exists() and not args.overwrite:
            raise FileExistsError(f"{args.output} already exists (use --overwrite to replace it)")
        cached = fetch(name, quiet=args.quiet)
        cfg = read_config(cached)
        if args.checkpoint and args.model_type and cfg != get_config(args.model_type):
            raise ValueError(f"{name} is not a {args.model_type} model")
        output = cached
        if args.output is not None:
            output = args.output
            with atomic_dir(output, overwrite=args.overwrite) as tmp:
                shutil.copytree(cached, tmp, dirs_exist_ok=True)
    print(
        f"{'wrote' if output != cached else 'cached'} {output}: image_size {cfg.image_size}, embed dim {cfg.encoder_embed_dim}, "
        f"depth {cfg.encoder_depth}, heads {cfg.encoder_num_heads}, global blocks {list(cfg.encoder_global_attn_indexes)}"
    )
    return 0
