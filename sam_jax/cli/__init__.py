"""The `sam-jax` command line: one module per command, the shared flags in `common`. Expected
failures print one line and exit non-zero; no traceback."""

from __future__ import annotations

import argparse
import importlib
import sys

from .. import __version__
from ..runtime.progress import status
from . import amg, convert, demo, embed, eval, export_onnx, export_pth, export_stablehlo, train, train_export

COMMANDS = {  # name -> (module with add_arguments and run, help)
    "convert": (convert, "convert an official .pth (or HF .safetensors) checkpoint to a sam-jax checkpoint"),
    "export-pth": (export_pth, "write a model back in its family's PyTorch layout (.pth or .safetensors) for the official predictor"),
    "amg": (amg, "automatic mask generation for an image or a folder"),
    "export-onnx": (export_onnx, "export the prompt encoder + mask decoder to ONNX (the official export)"),
    "export-stablehlo": (export_stablehlo, "export the image encoder as a jax.export (StableHLO) artifact that runs without sam-jax"),
    "embed": (embed, "write an image's embedding (.npy) for the ONNX decoder"),
    "train": (train, "fine-tune a checkpoint on COCO or SA-1B masks (prompt simulation, AdamW)"),
    "train-export": (train_export, "write the model of a saved training step as a checkpoint folder (LoRA merged)"),
    "eval": (eval, "mIoU of a checkpoint on COCO or SA-1B masks by the SAM papers' protocols (box, point, clicks)"),
    "demo": (demo, "interactive web demo: embeddings on the server, the ONNX decoder in the browser"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sam-jax", description="Segment Anything in JAX.")
    parser.add_argument("--version", action="version", version=f"sam-jax {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (module, help) in COMMANDS.items():
        p = sub.add_parser(name, help=help, description=help)
        module.add_arguments(p)
        p.set_defaults(func=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        # The flags parsed without JAX; its import (and the model code's) takes seconds on a busy machine.
        if "jax" not in sys.modules:  # (a program that has imported JAX calls main: the rest is quick)
            with status(f"{args.command}: importing JAX and the model code", getattr(args, "quiet", False)):
                importlib.import_module(".runners", __package__.rpartition(".")[0])
        return args.func(args)
    except (ValueError, FileNotFoundError, FileExistsError, OSError, ImportError) as e:  # ImportError: a missing extra
        print(f"sam-jax {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C: outputs are renamed into place only when complete (a command may say more)
        print(f"sam-jax {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
