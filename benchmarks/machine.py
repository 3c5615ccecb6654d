"""What the benchmarks share about the machine: its description, its measured matmul rate, timing,
logging, and the FLOP count of a function (loop bodies once per iteration)."""

from __future__ import annotations

import datetime
import os
import platform
import sys
import time


def environment() -> dict:
    import jax
    import torch

    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.processor())
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {
        "date": datetime.date.today().isoformat(),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(mem, 1),
        "jax_device": str(jax.devices()[0].device_kind),
        "jax": jax.__version__,
        "torch": torch.__version__,
        "torch_device": "cuda" if torch.cuda.is_available() else "cpu",
        "matmul_gflops_jax": round(matmul_rate() / 1e9, 1),
        # Per second of this process's CPU time (all threads): unlike the wall-clock rate, it does
        # not drop when other processes share the cores.
        "matmul_gflops_jax_cpu_time": round(matmul_rate(clock=time.process_time) / 1e9, 1),
        # Rows taken while other work shares the cores are not speed figures: the 1-minute load
        # average at the start (and, in the header, at the end) says whether they are.
        "load_average_start": round(os.getloadavg()[0], 2),
    }


def matmul_rate(n: int = 2048, repeats: int = 5, clock=time.perf_counter) -> float:
    """FLOP/s of a float32 n x n matmul in JAX on the default device: the practical peak (per
    second of `clock`)."""
    import jax
    import jax.numpy as jnp

    a = jnp.ones((n, n), jnp.float32)
    f = jax.jit(lambda x: x @ x)
    f(a).block_until_ready()
    best = min(_time(lambda: f(a).block_until_ready(), clock) for _ in range(repeats))
    return 2 * n**3 / best


def _time(fn, clock=time.perf_counter) -> float:
    t0 = clock()
    fn()
    return clock() - t0


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _flops(fn, *args, static_argnums=()) -> float:
    """Matmul and convolution FLOPs of fn(*args) as torch's FlopCounterMode counts them, loop
    bodies (`lax.map`, `fori_loop`) once per iteration. XLA's cost analysis counts a loop body
    once, which made the blocked CPU attention and the AMG row look 1.3x and 4x cheaper."""
    from tests.reference.jaxpr import matmul_flops

    return float(matmul_flops(fn, *args, static_argnums=static_argnums))
