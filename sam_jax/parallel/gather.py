"""Every process's bytes to every process: the small results of a multi-process job (an
evaluation's per-object rows), joined without a shared file system. Built on JAX's own
collectives (`multihost_utils.process_allgather`), so it works wherever the run's devices talk."""

from __future__ import annotations

import jax
import numpy as np
from jax.experimental import multihost_utils


def all_gather_bytes(payload: bytes) -> list[bytes]:
    """[process 0's payload, process 1's, ...] in every process; [payload] when alone. Every
    process of the run must call it (a collective)."""
    if jax.process_count() == 1:
        return [payload]
    sizes = np.asarray(multihost_utils.process_allgather(np.array([len(payload)], np.int32))).reshape(-1)
    words = -(-int(sizes.max()) // 4)  # int32 words: the collectives move 32-bit types everywhere
    buf = np.zeros(4 * max(words, 1), np.uint8)
    buf[: len(payload)] = np.frombuffer(payload, np.uint8)
    every = np.asarray(multihost_utils.process_allgather(buf.view(np.int32))).reshape(len(sizes), -1)
    return [every[p].view(np.uint8)[: sizes[p]].tobytes() for p in range(len(sizes))]
