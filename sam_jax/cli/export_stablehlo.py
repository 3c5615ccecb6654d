"""`sam-jax export-stablehlo`: the image encoder as a serialized `jax.export` artifact folder."""

from __future__ import annotations

import argparse

import jax

from ..export.stablehlo import PLATFORMS, export_encoder_stablehlo
from . import common


def add_arguments(p: argparse.ArgumentParser) -> None:
    common.add_checkpoint_arguments(p)
    p.add_argument("--output", required=True, help="output folder: encoder.jaxexport, weights.npz, signature.json")
    p.add_argument("--batch-size", type=int, default=None, help="a fixed batch size (default: symbolic, any batch)")
    p.add_argument("--platforms", default=None,
                   help=f"comma-separated platforms it may run on, of {','.join(PLATFORMS)} (default: this machine's)")
    common.add_overwrite_argument(p, "an existing output folder")


def run(args: argparse.Namespace) -> int:
    platforms = [s.strip() for s in args.platforms.split(",") if s.strip()] if args.platforms else None
    model = common.load_model(args)
    path = export_encoder_stablehlo(model, args.output, batch_size=args.batch_size, platforms=platforms, overwrite=args.overwrite)
    S = model.config.image_size
    print(f"wrote {path}: image encoder for (B, 3, {S}, {S}) inputs on {', '.join(platforms or [jax.default_backend()])}")
    return 0
