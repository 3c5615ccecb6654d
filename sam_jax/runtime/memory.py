"""Host memory housekeeping, and a scoped count of XLA compilations through JAX's public
monitoring events.

XLA's compiler and Orbax's restore free hundreds of MiB of short-lived buffers that glibc keeps
resident for the life of the process (measured: 600 MiB after loading vit_b and compiling its
encoder). `release_host_memory` hands them back; sam-jax calls it where it knows it allocated
(after a load, between AMG images, in the CLI after a compiling step), never from a global hook:
the program importing sam-jax keeps its own allocator behaviour.

`CompileCounter` listens only while its `with` block runs:

    with CompileCounter() as compiles:
        predictor.predict(...)
    compiles.count("jit(decode_prompts)"), compiles.seconds
"""

from __future__ import annotations

import ctypes
import gc
import sys
import threading

import jax

COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"  # one per XLA compilation (or cache load)


def release_host_memory() -> None:
    """Returns freed heap memory to the operating system (glibc's malloc_trim; a no-op elsewhere)."""
    gc.collect()
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):  # musl or another libc: nothing to do
            pass


class CompileCounter:
    """XLA compilations (and persistent-cache loads) of this process while the `with` block runs,
    by function name (`jit(name)`), and the seconds they took. Compilations of other threads
    during the block count too: JAX reports them process-wide."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[str, int] = {}
        self.seconds = 0.0

    def __enter__(self) -> "CompileCounter":
        jax.monitoring.register_event_duration_secs_listener(self._on_event)
        return self

    def __exit__(self, *exc) -> None:
        jax.monitoring.unregister_event_duration_listener(self._on_event)

    def count(self, fun_name: str | None = None) -> int:
        """Compilations so far in the block (of functions named `fun_name`, or all)."""
        with self._lock:
            return sum(self._counts.values()) if fun_name is None else self._counts.get(fun_name, 0)

    def _on_event(self, event: str, duration: float, **kwargs) -> None:
        if event != COMPILE_EVENT:
            return
        with self._lock:
            name = str(kwargs.get("fun_name", ""))
            self._counts[name] = self._counts.get(name, 0) + 1
            self.seconds += duration
