"""What automatic mask generation's settings ask of the machine, estimated from the settings
alone before anything is allocated, and the bounds past which `SamAutomaticMaskGenerator`
refuses in one line, saying what the work would need, unless `allow_large=True`
(`sam-jax amg --allow-large`).

The work (none of it depends on the image's size: every crop is resized to the model's input):

- crop layer i has (2^i)^2 crops, each one pass of the image encoder and
  (points_per_side / crop_n_points_downscale_factor^i)^2 point prompts;
- per crop, the device holds every candidate mask's low-res logits until NMS has chosen the
  survivors (prompts x masks x 4h x 4w float32: 0.8 GB for the default 32 x 32 points and 3
  masks), for up to two groups of crops at once (`BackendPlan.crop_group`), and one point batch's
  decoder activations (points_per_batch x 4h x 4w x (masks + 2 x C/8) float32);
- the host builds the point grids (16 bytes a point, about 3.5 times that while they are built).

Bounds: at most MAX_PROMPTS_PER_CROP prompts in a crop; the memory above within the device's
(its `bytes_limit`; for the CPU, the host's physical memory); at most MAX_CROPS crops (each
crop's surviving masks stay on the device until all are rendered); at most MAX_HOURS of
estimated time.
The time is a rough estimate, good to a factor of a few: FLOPs (the image encoder's scaled from
vit_b's measured 972 GFLOP by its parameter count, PROMPT_GFLOP a prompt scaled by the decoder's
tokens and squared width) at a nominal rate
(CPU_GFLOPS per CPU core, from AMG on a 2-core CPU; ACCELERATOR_GFLOPS for a GPU or TPU). It says
whether a job takes minutes or months, not when it ends.
"""

from __future__ import annotations

import os
from typing import NamedTuple

import jax
import numpy as np
from flax import nnx

from .functional.automatic_mask_generator import backend_plan

MAX_PROMPTS_PER_CROP = 256 * 256  # points_per_side 256; the official default is 32 (1,024)
MAX_CROPS = sum(4**i for i in range(6))  # 1,365: crop_n_layers 5 (every crop's survivors stay on the device until rendered)
MAX_HOURS = 24.0
VIT_B_ENCODER_GFLOP_PER_PARAM_TOKEN = 972e9 / (89.7e6 * 4096) / 1e9  # 972 GFLOP = this x parameters x tokens
PROMPT_GFLOP = 3.1  # one prompt through SAM's decoder (width 256) at 64 x 64 tokens (vit_b's 64 boxes: 198.8 GFLOP)
CPU_GFLOPS = 30.0  # per core: AMG with the official defaults took 64 s for ~4,150 GFLOP on 2 cores
ACCELERATOR_GFLOPS = 10_000.0  # a GPU's or TPU's sustained float32 rate, taken low (an H100 embeds at ~27,000)
GRID_BYTES_PER_POINT = 16 * 3.5  # float64 x and y, and the build's intermediates


class AmgWork(NamedTuple):
    """The work of one image (`estimate`)."""

    prompts_per_crop: tuple[int, ...]  # per crop layer
    crops: int
    prompts: int  # over every crop
    device_bytes: int  # candidates' logits held at once, and one point batch's activations
    host_bytes: int  # the point grids while they are built
    seconds: float  # rough (module docstring)


def estimate(model, points_per_side: int | None, crop_n_layers: int, downscale: int, points_per_batch: int,
             grid_sizes: list[int] | None = None) -> AmgWork:
    """The work the generator's settings ask for with `model` on its device; `grid_sizes`: the
    points of each layer's grid when the caller gives the grids (then points_per_side is None)."""
    if grid_sizes is None:
        grid_sizes = [int(points_per_side / downscale**i) ** 2 for i in range(crop_n_layers + 1)]
    crops_per_layer = [4**i for i in range(crop_n_layers + 1)]
    crops = sum(crops_per_layer)
    prompts = sum(n * c for n, c in zip(grid_sizes, crops_per_layer))
    low_h, low_w = model.prompt_encoder.mask_input_size
    masks = 1 if model.config.decoder == "hq" else max(1, model.mask_decoder.num_multimask_outputs)
    channels = model.config.prompt_embed_dim // 8
    platform = model.device.platform
    group = backend_plan(platform).crop_group
    candidates = max(grid_sizes) * masks * low_h * low_w * 4
    batch = min(points_per_batch, max(grid_sizes)) * low_h * low_w * 4 * (masks + 2 * channels)
    host = int(sum(grid_sizes) * GRID_BYTES_PER_POINT)
    tokens = int(np.prod(model.prompt_encoder.image_embedding_size))
    params = sum(int(np.size(x)) for x in jax.tree.leaves(nnx.state(model.image_encoder)))
    prompt_gflop = PROMPT_GFLOP * tokens / 4096 * (model.config.prompt_embed_dim / 256) ** 2  # its matmuls: tokens x C^2
    gflop = crops * VIT_B_ENCODER_GFLOP_PER_PARAM_TOKEN * params * tokens + prompts * prompt_gflop
    rate = CPU_GFLOPS * (os.cpu_count() or 1) if platform == "cpu" else ACCELERATOR_GFLOPS
    return AmgWork(tuple(grid_sizes), crops, prompts, candidates * min(2 * group, crops) + batch, host, gflop / rate)


def check(work: AmgWork, device_memory: int | None, host_memory: int | None, *, what: str, allow_large: bool = False) -> None:
    """ValueError (one line) when `work` passes a bound (module docstring), unless `allow_large`.
    device_memory, host_memory: bytes available (None: unknown, not checked); on the CPU the
    device is the host. `what`: the settings, as the message names them."""
    if allow_large:
        return
    per_crop = max(work.prompts_per_crop)
    needs = (f"{_bytes(work.device_bytes)} of device memory for the candidate masks' logits and "
             f"{_bytes(work.host_bytes)} of host memory for the point grids")
    problem = None
    if per_crop > MAX_PROMPTS_PER_CROP:
        problem = (f"{per_crop:,} prompts per crop (at most {MAX_PROMPTS_PER_CROP:,}; the default 32 points per side "
                   f"give 1,024): about {needs}")
    elif device_memory is not None and work.device_bytes > device_memory:
        problem = f"about {needs}, more than the device's {_bytes(device_memory)}"
    elif host_memory is not None and work.host_bytes > host_memory:
        problem = f"about {needs}, more than the host's {_bytes(host_memory)}"
    elif work.crops > MAX_CROPS or work.seconds > MAX_HOURS * 3600:
        problem = (f"{work.crops:,} crops (image-encoder passes) and {work.prompts:,} prompts: roughly "
                   f"{_duration(work.seconds)} on this machine (a rough estimate; at most {MAX_CROPS:,} crops and "
                   f"{MAX_HOURS:g} hours run)")
    if problem:
        raise ValueError(f"{what} means {problem}; pass allow_large=True (sam-jax amg --allow-large) to run it anyway")


def available_memory(device: jax.Device) -> tuple[int | None, int | None]:
    """(device bytes, host bytes) available to the generator: the device's `bytes_limit` and the
    host's physical memory (for the CPU device both are the host's); None where unknown."""
    try:
        host = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        host = None
    if device.platform == "cpu":
        return host, host
    try:
        stats = device.memory_stats() or {}
    except Exception:  # noqa: BLE001 - a backend without memory statistics: not checked
        stats = {}
    return stats.get("bytes_limit"), host


def _bytes(n: float) -> str:
    for unit in ("bytes", "KB", "MB", "GB", "TB", "PB"):
        if n < 1000 or unit == "PB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.3g} {unit}"
        n /= 1000


def _duration(seconds: float) -> str:
    if seconds < 3600:
        return f"{seconds / 60:.0f} minutes"
    return f"{seconds / 3600:,.0f} hours" if seconds < 24 * 3600 * 365 else f"{seconds / 3600 / 24 / 365:,.0f} years"
