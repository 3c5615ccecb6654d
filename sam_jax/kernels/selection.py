"""Where attention="auto" takes the fused kernel: only where it was measured, never assumed.

An entry of AUTO_KERNEL says that on that platform, for that kind of attention (SAM's 14x14
windows, or a global grid) and compute dtype, `python -m benchmarks.accelerator` ran the kernel
on a device and its "decision" row came out "kernel": faster than the XLA path for every model
measured (vit_b and vit_h), and exact (float32 at exact precision within 1e-5 of the XLA path
at Precision.HIGHEST; bfloat16 no further from it than the XLA bfloat16 path). The entry
carries that measurement: copy it from the decision row, with the file of rows committed under
benchmarks/. Elsewhere "auto" keeps the XLA path (the CPU always keeps its blocked loop).
float32 entries rest on the exact-precision rows and apply to that setting only: under the
"fast" setting (one TF32 or bfloat16 pass on both sides) nothing has been measured, so "auto"
keeps XLA there.

Empty today: these kernels have been checked on CPU (interpret-mode exactness, Mosaic lowering,
the Triton kernels compiled for sm_90a without spills and with every dot on wgmma), not run on a
GPU or TPU. The kernel measured on an H100 on 2026-11-27 (benchmarks/RESULTS.md) was an earlier
design, slower than XLA in every case.
"""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp

from .attention import exact_products

KINDS = ("window", "global")
WINDOW_MAX_TOKENS = 256  # a 14x14 window (196 tokens); anything larger is a global grid


class Measurement(NamedTuple):
    """The decision row an entry rests on (`benchmarks/accelerator.py`, stage "decision")."""

    device: str  # jax's device_kind, e.g. "NVIDIA H100 80GB HBM3"
    date: str
    rows: str  # the JSON Lines file under benchmarks/ that holds the kernel rows
    speedup: float  # the smallest XLA time / kernel time over the models measured
    rel_err: float  # the largest kernel error over the models measured


# (platform, kind, dtype) -> the measurement that put the kernel there.
AUTO_KERNEL: dict[tuple[str, str, str], Measurement] = {}


def attention_kind(k_size: tuple[int, int]) -> str:
    return "window" if k_size[0] * k_size[1] <= WINDOW_MAX_TOKENS else "global"


def auto_kernel_platforms(k_size: tuple[int, int], dtype) -> tuple[str, ...]:
    """The platforms on which attention="auto" takes the kernel for this attention, traced now."""
    key = (attention_kind(k_size), jnp.dtype(dtype).name)
    if key[1] == "float32" and not exact_products():
        return ()
    return tuple(p for (p, kind, d) in AUTO_KERNEL if (kind, d) == key)
