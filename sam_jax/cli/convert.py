"""`sam-jax convert`: an official `.pth` (or Hugging Face) checkpoint to a sam-jax checkpoint folder;
or, given a model name (`--checkpoint vit_b`, or only `--model-type vit_b`), the official weights,
downloaded and converted into the cache (and written to --output when given). `--image-size N`
writes the model resampled to input size N."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..config import get_config
from . import common


def add_arguments(p: argparse.ArgumentParser) -> None:
    common.add_checkpoint_arguments(p)
    p.add_argument("--output", help="output folder (written atomically); optional for a model name, "
                                    "whose converted copy is kept in the cache ($SAM_JAX_CACHE/checkpoints)")
    p.add_argument("--config", help="JSON SamConfig to check against and take non-inferable fields from")
    common.add_overwrite_argument(p, "an existing output folder (a sam-jax checkpoint holding nothing else)")
    common.add_quiet_argument(p)


def run(args: argparse.Namespace) -> int:
    convert = common.deferred(".convert")
    name = args.checkpoint or args.model_type
    if name is None:
        raise ValueError("give --checkpoint (a file, or a model name such as vit_b) or --model-type")
    if Path(name).exists():
        if args.output is None:
            raise ValueError("--output is required to convert a file")
        cfg = convert.convert_checkpoint(name, args.output, args.model_type, args.config, args.overwrite, args.image_size)
        verb, output = "wrote", args.output
    else:
        if args.config:
            raise ValueError(f"--config applies to a checkpoint file; {name} is a model name with a known config")
        cached = convert.fetch(name, quiet=args.quiet)
        cfg = convert.folder.read_config(cached)
        if args.checkpoint and args.model_type and cfg != get_config(args.model_type):
            raise ValueError(f"{name} is not a {args.model_type} model")
        if args.output is None:
            if args.image_size is not None:
                raise ValueError("--image-size needs --output (the cache keeps the official input size)")
            verb, output = "cached", cached
        else:
            cfg, params, _ = convert.read(cached, image_size=args.image_size)
            # The cached folder's record says where the weights came from; a copy says the same
            # (so a plain copy is byte-identical to the cache), plus the new input size if any.
            record = convert.folder.read_record(cached)
            if args.image_size is not None:
                record["image_size"] = args.image_size
            convert.folder.save(args.output, cfg, params, overwrite=args.overwrite, record=record)
            verb, output = "wrote", args.output
    print(
        f"{verb} {output}: image_size {cfg.image_size}, embed dim {cfg.encoder_embed_dim}, "
        f"depth {cfg.encoder_depth}, heads {cfg.encoder_num_heads}, global blocks {list(cfg.encoder_global_attn_indexes)}"
    )
    return 0
