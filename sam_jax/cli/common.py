"""What the `sam-jax` commands share: their common flags, declared once here, and the steps every
command takes with them (pick the device, enable the compilation cache, load the model)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import jax

from ..build_sam import load
from ..config import MODEL_TYPES
from ..utils.devices import as_device

DEVICES = ("cpu", "gpu", "cuda", "tpu")


def default_cache_dir() -> str:
    return os.environ.get("SAM_JAX_CACHE_DIR", str(Path.home() / ".cache" / "sam-jax" / "xla"))


def add_checkpoint_arguments(p: argparse.ArgumentParser, help: str | None = None) -> None:
    """--checkpoint and --model-type: which model to load."""
    p.add_argument(
        "--checkpoint", required=True,
        help=help or "a folder written by `sam-jax convert`, an official .pth, or a Hugging Face model.safetensors (or its folder)",
    )
    p.add_argument("--model-type", choices=MODEL_TYPES, help="check the checkpoint against this model type (default: read or inferred from it)")


def add_runtime_arguments(p: argparse.ArgumentParser) -> None:
    """--device and --cache-dir: where the model runs and where compiled programs are kept."""
    p.add_argument("--device", choices=DEVICES, default=None,
                   help="platform to run on (default: JAX's default, the accelerator when there is one)")
    p.add_argument("--cache-dir", default=default_cache_dir(),
                   help="persistent XLA compilation cache, so that a second run skips compiling "
                        "(default: $SAM_JAX_CACHE_DIR or ~/.cache/sam-jax/xla; '' disables it)")


def add_dtype_argument(p: argparse.ArgumentParser, group=None) -> None:
    """--dtype: the compute dtype (parameters stay float32)."""
    (group or p).add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                              help="compute dtype (default float32; bfloat16: the image encoder's matmuls)")


def add_quiet_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quiet", action="store_true", help="no progress display (warnings and errors still print)")


def add_overwrite_argument(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--overwrite", action="store_true", help=f"replace {what}")


def setup_runtime(args: argparse.Namespace) -> None:
    """Applies --device and --cache-dir; call before any computation."""
    if getattr(args, "device", None):
        jax.config.update("jax_default_device", select_device(args.device))
    cache_dir = getattr(args, "cache_dir", "")
    if cache_dir:
        Path(cache_dir).mkdir(parents=True, exist_ok=True)
        jax.config.update("jax_compilation_cache_dir", cache_dir)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


def select_device(platform: str):
    """The first local device of --device's platform; ValueError naming what exists otherwise."""
    try:
        return as_device(platform)
    except ValueError as e:
        raise ValueError(f"--device {platform}: {e}") from None


def load_model(args: argparse.Namespace):
    """The model named by --checkpoint/--model-type, on --device when given."""
    model = load(args.checkpoint, model_type=args.model_type)
    if getattr(args, "device", None):
        model.to(select_device(args.device))
    return model
