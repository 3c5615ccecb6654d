"""`sam-jax convert`: an official `.pth` (or Hugging Face) checkpoint to a sam-jax checkpoint folder."""

from __future__ import annotations

import argparse

from ..build_sam import convert_checkpoint
from . import common


def add_arguments(p: argparse.ArgumentParser) -> None:
    common.add_checkpoint_arguments(p, help="official .pth file, or a Hugging Face model.safetensors (or its folder)")
    p.add_argument("--output", required=True, help="output folder (written atomically)")
    p.add_argument("--config", help="JSON SamConfig to check against and take non-inferable fields from")
    common.add_overwrite_argument(p, "an existing output folder")


def run(args: argparse.Namespace) -> int:
    cfg = convert_checkpoint(args.checkpoint, args.output, args.model_type, args.config, args.overwrite, args.image_size)
    print(
        f"wrote {args.output}: image_size {cfg.image_size}, embed dim {cfg.encoder_embed_dim}, "
        f"depth {cfg.encoder_depth}, heads {cfg.encoder_num_heads}, global blocks {list(cfg.encoder_global_attn_indexes)}"
    )
    return 0
