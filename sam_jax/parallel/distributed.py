"""Joining a multi-process run (`jax.distributed`), and the helpers that split work between
processes. Every process runs the same program; each addresses its local devices, and a global
`Mesh` spans all of them.

The coordinator, process count and process index come from the arguments (the CLI's
`--coordinator-address`, `--num-processes`, `--process-id`), else from the environment
(`JAX_COORDINATOR_ADDRESS`, `JAX_NUM_PROCESSES`, `JAX_PROCESS_ID`), else from JAX's own cluster
detection (Cloud TPU, Slurm, Open MPI) when `auto=True`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import TypeVar

import jax
from jax.experimental import multihost_utils

from .rendezvous import JOIN_TIMEOUT_SECONDS, meet

T = TypeVar("T")


def initialize(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    auto: bool = False,
    timeout: float = JOIN_TIMEOUT_SECONDS,
    quiet: bool = True,
) -> bool:
    """Calls `jax.distributed.initialize` when a multi-process run is asked for; returns whether
    this process is part of one (True again, with nothing done, once joined). Call it before
    anything touches a device.

    With an address, count and index, the processes first meet at the address (`rendezvous`):
    a malformed or unresolvable address and a busy port are a ValueError, and a process or
    coordinator that is not there within `timeout` seconds a ConnectionError naming it, each in
    one line, where JAX's own join would crash, hang or abort."""
    if jax.distributed.is_initialized():
        return True
    address = coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS") or None
    count = num_processes if num_processes is not None else _env_int("JAX_NUM_PROCESSES")
    index = process_id if process_id is not None else _env_int("JAX_PROCESS_ID")
    given = [v is not None for v in (address, count, index)]
    if not any(given) and not auto:
        return False
    if not all(given) and not auto:
        raise ValueError("a multi-process run needs the coordinator address, the process count and this process's index")
    if count is not None and not 0 <= (index or 0) < count:
        raise ValueError(f"process index {index} is outside 0..{count - 1}")
    if all(given):
        meet(address, count, index, timeout, quiet)
    # Cross-process collectives on CPU need an implementation (GPUs and TPUs bring their own).
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(address, count, index, initialization_timeout=max(10, math.ceil(timeout)))
    return True


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    if value in (None, ""):
        return None
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"{name}={value!r} is not an integer") from None


def process_share(items: Sequence[T], index: int | None = None, count: int | None = None) -> list[T]:
    """This process's deterministic share of `items`: every `count`-th item from `index` (the
    same split whatever the processes' speeds, so a restarted process redoes only its own)."""
    index = jax.process_index() if index is None else index
    count = jax.process_count() if count is None else count
    return list(items[index::count])


def wait_for_all(name: str) -> None:
    """Returns once every process of the run has called it with the same `name` (at once when
    alone). ConnectionError, in one line, when another process has died (jax.distributed's
    heartbeat then ends this one too, when it gives up on the dead one)."""
    if jax.process_count() > 1:
        try:
            multihost_utils.sync_global_devices(name)
        except Exception as e:  # the runtime's error for a lost peer (gloo, NCCL, ICI) has no one class
            cause = (str(e).strip().splitlines() or ["?"])[0][:200]
            raise ConnectionError(f"not every process reached {name!r}: one has died or lost its connection "
                                  f"({cause}); rerun the same command to finish") from None
