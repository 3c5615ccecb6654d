"""The `sam-jax` command line. Expected failures print one line and exit non-zero; no traceback."""

from __future__ import annotations

import argparse
import sys

from .config import MODEL_TYPES


def _convert(args: argparse.Namespace) -> int:
    from .convert.convert import convert_checkpoint

    cfg = convert_checkpoint(args.checkpoint, args.output, args.model_type, args.config, args.overwrite)
    print(
        f"wrote {args.output}: image_size {cfg.image_size}, embed dim {cfg.encoder_embed_dim}, "
        f"depth {cfg.encoder_depth}, heads {cfg.encoder_num_heads}, global blocks {list(cfg.encoder_global_attn_indexes)}"
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sam-jax", description="Segment Anything in JAX.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("convert", help="convert an official .pth (or HF .safetensors) checkpoint to Orbax")
    p.add_argument("--checkpoint", required=True, help="official .pth file or HF model.safetensors")
    p.add_argument("--output", required=True, help="output directory (written atomically)")
    p.add_argument("--model-type", choices=MODEL_TYPES, help="cross-check the inferred config against this type")
    p.add_argument("--config", help="JSON SamConfig to check against and take non-inferable fields from")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    p.set_defaults(func=_convert)

    from . import amg_cli

    p = sub.add_parser("amg", help="automatic mask generation for an image or a folder")
    amg_cli.add_arguments(p)
    p.set_defaults(func=amg_cli.run)

    from . import onnx_cli

    p = sub.add_parser("export-onnx", help="export the prompt encoder + mask decoder to ONNX (the official export)")
    onnx_cli.add_export_arguments(p)
    p.set_defaults(func=onnx_cli.export)
    p = sub.add_parser("embed", help="write an image's embedding (.npy) for the ONNX decoder")
    onnx_cli.add_embed_arguments(p)
    p.set_defaults(func=onnx_cli.embed)

    from . import demo

    p = sub.add_parser("demo", help="interactive web demo: embeddings on the server, the ONNX decoder in the browser")
    demo.add_arguments(p)
    p.set_defaults(func=demo.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, FileExistsError, OSError) as e:
        print(f"sam-jax {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
