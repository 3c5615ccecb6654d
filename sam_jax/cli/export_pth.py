"""`sam-jax export-pth`: a model (a converted folder, a training run's model, any checkpoint or
name) written back in its family's PyTorch layout, as `.pth` or `.safetensors`, for the official
predictor and the tools built on it (`sam_jax.convert.export_checkpoint`)."""

from __future__ import annotations

import argparse

from ..config import FAMILY_TYPES, MODEL_TYPES
from ..options import FORMATS, LAYOUTS
from . import common


def add_arguments(p: argparse.ArgumentParser) -> None:
    common.add_checkpoint_arguments(p, help=common.CHECKPOINT_HELP + "; a training run's --output folder holds its model too")
    p.add_argument("--output", required=True,
                   help="the file to write (written atomically); a folder with --layout transformers")
    # Checked by the library rather than by argparse choices, so that a wrong value is a one-line error.
    p.add_argument("--format", metavar="{" + ",".join(FORMATS) + "}", default=None,
                   help="pth: torch.save's zip format (torch.load(..., weights_only=True) reads it); safetensors "
                        "(default: from --output's suffix, .safetensors or else pth; safetensors for a transformers folder)")
    p.add_argument("--layout", metavar="{" + ",".join(LAYOUTS) + "}", default="official",
                   help="official: the family's own keys, one file (segment_anything, mobile_sam, segment_anything_hq, "
                        "LiteMedSAM); transformers: a transformers SamModel folder, config.json and weights (ViT + SAM "
                        "decoder only: SAM, MedSAM, SlimSAM) (default: official)")
    common.add_overwrite_argument(p, "an existing output written by sam-jax export-pth (nothing else)")
    common.add_quiet_argument(p)


def run(args: argparse.Namespace) -> int:
    source = args.checkpoint or args.model_type
    if source is None:
        raise ValueError("give --checkpoint (a folder, a file, or a model name such as vit_b) or --model-type")
    done = common.deferred(".convert").export_checkpoint(source, args.output, format=args.format, layout=args.layout, model_type=args.model_type,
                             image_size=args.image_size, overwrite=args.overwrite, quiet=args.quiet)
    print(f"wrote {done.path}: {done.tensors} tensors, {done.reference}'s keys, {done.format}")
    if done.unrecorded:
        fields = ", ".join(f"{k} {v!r}" for k, v in done.unrecorded.items())
        named = done.model_type in MODEL_TYPES + FAMILY_TYPES
        how = f"--model-type {done.model_type}" if named else "--config and the model's config.json"
        print(f"note: the export does not record {fields}: read it back with {how}")
    return 0
