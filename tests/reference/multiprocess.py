"""Launching a real multi-process JAX run on this machine: N local processes, each with its own
simulated CPU devices, joined by `jax.distributed` with a coordinator on 127.0.0.1."""

from __future__ import annotations

import os
import socket
import subprocess
import sys


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(argv: list[str], n: int, devices_per_process: int = 2, env: dict | None = None, port: int | None = None):
    """Starts `n` processes of `python argv...` as one multi-process run; returns the Popen list."""
    port = port or free_port()
    procs = []
    for i in range(n):
        e = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_", "XLA_"))}
        e.update(env or {})
        e.update(JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES=str(n), JAX_PROCESS_ID=str(i),
                 JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count={devices_per_process}")
        procs.append(subprocess.Popen([sys.executable, *argv], env=e, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    return procs


def run(argv: list[str], n: int, timeout: float = 300, **kwargs) -> list[tuple[int, str, str]]:
    """`launch` and wait: (returncode, stdout, stderr) per process; all are killed on a timeout."""
    procs = launch(argv, n, **kwargs)
    out = []
    try:
        for p in procs:
            stdout, stderr = p.communicate(timeout=timeout)
            out.append((p.returncode, stdout, stderr))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    return out
