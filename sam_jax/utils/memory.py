"""Host memory housekeeping, and a count of XLA compilations through JAX's public monitoring events.

XLA's compiler and Orbax's restore free hundreds of MiB of short-lived buffers that glibc keeps
resident for the life of the process (measured: 600 MiB after loading vit_b and compiling its
encoder). `release_host_memory` hands them back; a listener on JAX's compile event calls it after
every compilation long enough to have made such buffers, so no caller has to wrap its calls.
"""

from __future__ import annotations

import ctypes
import gc
import sys
import threading

import jax

COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"  # one per XLA compilation (or cache load)
TRIM_AFTER_SECONDS = 0.2  # shorter compilations leave too little to be worth a trim

_lock = threading.Lock()
_compiles: dict[str, int] = {}
_compile_seconds = [0.0]


def release_host_memory() -> None:
    """Returns freed heap memory to the operating system (glibc's malloc_trim; a no-op elsewhere)."""
    gc.collect()
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):  # musl or another libc: nothing to do
            pass


def compile_count(fun_name: str | None = None) -> int:
    """XLA compilations in this process so far (of functions named `fun_name`, or all)."""
    with _lock:
        return sum(_compiles.values()) if fun_name is None else _compiles.get(fun_name, 0)


def compile_seconds() -> float:
    """Seconds spent in XLA compilations (or persistent-cache loads) in this process so far."""
    with _lock:
        return _compile_seconds[0]


def _on_event(event: str, duration: float, **kwargs) -> None:
    if event != COMPILE_EVENT:
        return
    with _lock:
        name = str(kwargs.get("fun_name", ""))
        _compiles[name] = _compiles.get(name, 0) + 1
        _compile_seconds[0] += duration
    if duration >= TRIM_AFTER_SECONDS:
        release_host_memory()


jax.monitoring.register_event_duration_secs_listener(_on_event)
