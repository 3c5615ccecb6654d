"""What the `sam-jax` commands share: their common flags, declared once here, and the steps every
command takes with them (join a multi-process run, pick the device, turn on the compilation
cache, describe the model to load). Each helper takes the flags its `add_*` declared.

The flags are declared from light modules only (their choices and defaults come from
`sam_jax.options` and the settings classes): JAX and the model code are imported by the helpers
that run a command, after the flags are parsed, so that `--help` and a mistyped flag answer at once."""

from __future__ import annotations

import argparse
import importlib

from ..config import FAMILY_TYPES, MODEL_TYPES
from ..io.annotations import DEFAULT_THREADS, DataOptions
from ..options import DTYPES, JOIN_TIMEOUT_SECONDS, PRECISIONS
from ..runtime.paths import XLA_CACHE_ENV as CACHE_ENV
from ..runtime.paths import default_cache_path

DEVICES = ("cpu", "gpu", "cuda", "tpu")
CHECKPOINT_HELP = (
    "a model name (shapes_tiny, the small model shipped in the package; vit_b, vit_l, vit_h; the families' vit_t, "
    "sam_hq_vit_b, medsam_vit_b, lite_medsam, slimsam_50, ...; an official file name such as sam_vit_b_01ec64.pth; "
    "or a Hugging Face id such as facebook/sam-vit-base: downloaded and converted on first use, then cached under "
    "$SAM_JAX_CACHE; an unknown name's error lists them all), "
    "a folder written by `sam-jax convert`, an official .pth, or a Hugging Face model.safetensors (or its folder); "
    "default: the official weights of --model-type"
)


def add_checkpoint_arguments(p: argparse.ArgumentParser, help: str = CHECKPOINT_HELP) -> None:
    """--checkpoint, --model-type and --image-size: which model to load, at which input size."""
    p.add_argument("--checkpoint", help=help)
    p.add_argument("--model-type", choices=MODEL_TYPES + FAMILY_TYPES,
                   help="check the checkpoint against this model type (default: read or inferred from it); "
                        "without --checkpoint, load its official weights")
    p.add_argument("--image-size", type=image_size, default=None, metavar="N",
                   help="model input size N (a multiple of 16; default: the checkpoint's): the position "
                        "embeddings are resampled, every other shape follows")


def image_size(text: str) -> int:
    """--image-size: a positive multiple of 16 (the patch size of every SAM)."""
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n <= 0 or n % 16:
        raise argparse.ArgumentTypeError(f"must be a positive multiple of 16, got {text!r}")
    return n


def add_runtime_arguments(p: argparse.ArgumentParser) -> None:
    """--device and --cache-dir: where the model runs and where compiled programs are kept."""
    p.add_argument("--device", choices=DEVICES, default=None,
                   help="platform to run on; all its local devices are used where work splits (amg's images, "
                        "batches) (default: JAX's default, the accelerator when there is one)")
    default = default_cache_path()
    p.add_argument("--cache-dir", default="" if default is None else str(default),
                   help=f"persistent XLA compilation cache, so that a second run skips compiling (default: "
                        f"${CACHE_ENV}, else $SAM_JAX_CACHE/xla, i.e. ~/.cache/sam-jax/xla; '' disables it)")


def add_distributed_arguments(p: argparse.ArgumentParser) -> None:
    """--coordinator-address, --num-processes, --process-id: join a multi-process run
    (`sam_jax.parallel.initialize`; the environment's JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES
    and JAX_PROCESS_ID are read when the flags are absent)."""
    g = p.add_argument_group("many hosts (jax.distributed; run the same command in every process)")
    g.add_argument("--coordinator-address", default=None, metavar="HOST:PORT",
                   help="process 0's address, the same in every process (default: $JAX_COORDINATOR_ADDRESS)")
    g.add_argument("--num-processes", type=int, default=None, metavar="N",
                   help="how many processes take part (default: $JAX_NUM_PROCESSES)")
    g.add_argument("--process-id", type=int, default=None, metavar="I",
                   help="this process's index, 0..N-1 (default: $JAX_PROCESS_ID)")
    g.add_argument("--join-timeout", type=float, default=JOIN_TIMEOUT_SECONDS, metavar="SECONDS",
                   help="how long the processes wait for each other at the coordinator before stopping with the "
                        f"missing ones named (default: {JOIN_TIMEOUT_SECONDS:.0f})")
    g.add_argument("--auto-distributed", action="store_true",
                   help="join the multi-process run that JAX detects from the environment (Cloud TPU pod slices, "
                        "Slurm, Open MPI) instead of the three flags above")


def add_data_arguments(p: argparse.ArgumentParser):
    """--min-object-area, --allow-outside-data-dir and --loader-threads: how annotated data are
    read (`sam_jax.io.coco.DataOptions`); returns the group, for a command's own data flags."""
    g = p.add_argument_group("data (every image and annotation is checked at start-up; what cannot be used is "
                             "skipped and counted in one line)")
    g.add_argument("--min-object-area", type=non_negative_int, default=0, metavar="PIXELS",
                   help="skip objects whose mask has fewer pixels (counted; default 0: keep every non-empty mask)")
    g.add_argument("--allow-outside-data-dir", action="store_true",
                   help="read images whose path leads out of the data folder (.., an absolute path, a symbolic link "
                        "out; refused by default)")
    g.add_argument("--loader-threads", type=positive_int, default=DEFAULT_THREADS, metavar="N",
                   help=f"threads that check the data at start-up and load it (default {DEFAULT_THREADS}: the CPU "
                        "count, at most 8)")
    return g


def data_options(args: argparse.Namespace, crowd: bool = False) -> DataOptions:
    """The DataOptions that add_data_arguments' flags describe."""
    return DataOptions(args.min_object_area, crowd, args.allow_outside_data_dir, args.loader_threads)


def positive_int(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return n


def non_negative_int(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = -1
    if n < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {text!r}")
    return n


def add_quiet_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quiet", action="store_true",
                   help="no progress or status lines (errors and skipped inputs are still reported)")


def add_numerics_arguments(p: argparse.ArgumentParser) -> None:
    """--dtype and --matmul-precision: how the loaded model computes (see `sam_jax.numerics`)."""
    p.add_argument("--dtype", choices=DTYPES, default="float32",
                   help="compute dtype of matmuls and convolutions (default %(default)s; bfloat16: norms, softmax and "
                        "outputs stay float32)")
    p.add_argument("--matmul-precision", choices=tuple(PRECISIONS), default="exact",
                   help="exact: float32-equivalent matmuls on every backend; fast: the backend's default "
                        "(bfloat16 passes on TPU, TF32 on GPU; the same as exact on CPU) (default %(default)s)")


def add_overwrite_argument(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--overwrite", action="store_true", help=f"replace {what}")


def deferred(name: str):
    """The module `name` (relative to sam_jax when it starts with a dot), imported when a command
    runs: the commands' `run` and the helpers below reach JAX and the model code through it, so
    that declaring and parsing the flags imports neither."""
    return importlib.import_module(name, __package__.rpartition(".")[0])


def model_spec(args: argparse.Namespace, numerics: bool = True):
    """The `sam_jax.runners.model.ModelSpec` that add_checkpoint_arguments' flags (and, with
    `numerics`, add_numerics_arguments') describe."""
    extra = dict(dtype=args.dtype, precision=args.matmul_precision) if numerics else {}
    return deferred(".runners.model").ModelSpec(args.checkpoint, args.model_type, args.image_size, **extra)


def setup_runtime(args: argparse.Namespace) -> None:
    """Applies add_runtime_arguments' --device and --cache-dir; call before any computation (and
    after `join_processes`, for a command that takes the distributed flags)."""
    if args.device:
        deferred("jax").config.update("jax_default_device", select_device(args.device))
    deferred(".runtime.compilation_cache").set_compilation_cache(args.cache_dir or None)


def join_processes(args: argparse.Namespace) -> tuple[int, int]:
    """Joins the multi-process run that add_distributed_arguments' flags (or the environment) ask
    for; returns (this process's index, the process count): (0, 1), touching nothing, when there
    is none. Call it before anything else touches JAX."""
    if not deferred(".parallel").initialize(args.coordinator_address, args.num_processes, args.process_id,
                                            auto=args.auto_distributed, timeout=args.join_timeout,
                                            quiet=getattr(args, "quiet", False)):
        return 0, 1
    jax = deferred("jax")
    return jax.process_index(), jax.process_count()


def select_device(platform: str):
    """The first local device of --device's platform; ValueError naming what exists otherwise."""
    try:
        return deferred(".parallel.devices").as_device(platform)
    except ValueError as e:
        raise ValueError(f"--device {platform}: {e}") from None


def local_devices(args: argparse.Namespace) -> list:
    """Every local device of --device's platform (default: JAX's default platform), the devices
    that a command spreads its work over."""
    if not args.device:
        return deferred("jax").local_devices()
    try:
        return deferred(".parallel.devices").platform_devices(args.device)
    except ValueError as e:
        raise ValueError(f"--device {args.device}: {e}") from None


def load_model(args: argparse.Namespace):
    """The model of `model_spec(args)` on --device, quiet as --quiet says (a command with the
    checkpoint, numerics, runtime and quiet flags; the others call `model_spec(...).load`)."""
    device = select_device(args.device) if args.device else None
    return model_spec(args).load(device, quiet=args.quiet)
