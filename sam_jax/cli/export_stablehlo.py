"""`sam-jax export-stablehlo`: the image encoder as a serialized `jax.export` artifact folder."""

from __future__ import annotations

import argparse

from ..options import PLATFORMS
from . import common


def add_arguments(p: argparse.ArgumentParser) -> None:
    common.add_checkpoint_arguments(p)
    p.add_argument("--output", required=True, help="output folder: encoder.jaxexport, weights.npz, signature.json")
    p.add_argument("--batch-size", type=batch_size, default=None, help="a fixed batch size (default: symbolic, any batch)")
    p.add_argument("--platforms", type=platform_list, default=None,
                   help=f"comma-separated platforms it may run on, of {','.join(PLATFORMS)} (default: this machine's)")
    common.add_overwrite_argument(p, "an existing artifact folder written by sam-jax")
    common.add_quiet_argument(p)


def batch_size(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return int(text)


def platform_list(text: str) -> list[str]:
    platforms = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [s for s in platforms if s not in PLATFORMS]
    if unknown or not platforms:
        raise argparse.ArgumentTypeError(f"unknown platform(s) {', '.join(unknown) or repr(text)}; choose from {', '.join(PLATFORMS)}")
    return platforms


def run(args: argparse.Namespace) -> int:
    platforms = args.platforms
    model = common.model_spec(args, numerics=False).load(quiet=args.quiet)
    path = common.deferred(".export.stablehlo").export_encoder_stablehlo(model, args.output, batch_size=args.batch_size, platforms=platforms, overwrite=args.overwrite)
    S = model.config.image_size
    platforms = platforms or [common.deferred("jax").default_backend()]
    print(f"wrote {path}: image encoder for (B, 3, {S}, {S}) inputs on {', '.join(platforms)}")
    return 0
