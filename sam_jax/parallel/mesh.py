"""Device meshes and the shardings of sam-jax's arrays.

A mesh has two axes: `data` (the batch is split over it) and `fsdp` (parameters and optimizer
state may be split over it; 1 by default, which replicates them). A batch is split over both
axes together, so every device holds a different slice of it.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA, FSDP = "data", "fsdp"


def make_mesh(devices=None, fsdp: int = 1) -> Mesh:
    """A (data, fsdp) mesh over `devices` (default: every device of every process)."""
    devices = list(jax.devices() if devices is None else devices)
    if fsdp < 1 or len(devices) % fsdp:
        raise ValueError(f"fsdp={fsdp} must divide the device count {len(devices)}")
    return Mesh(np.asarray(devices, dtype=object).reshape(len(devices) // fsdp, fsdp), (DATA, FSDP))


def data_parallel_mesh(device: jax.Device) -> Mesh | None:
    """A data-parallel mesh over all local devices of `device`'s platform, or None when that
    platform has only one (then there is nothing to split)."""
    devices = jax.local_devices(backend=device.platform)
    return make_mesh(devices) if len(devices) > 1 else None


def batch_sharding(mesh: Mesh, ndim: int) -> NamedSharding:
    """The leading (batch) axis of an ndim array split over every device of the mesh."""
    return NamedSharding(mesh, PartitionSpec((DATA, FSDP), *([None] * (ndim - 1))))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def pad_batch(x: np.ndarray, multiple: int) -> np.ndarray:
    """`x` with its leading axis zero-padded up to a multiple of `multiple` (drop the padding
    from the results: rows are independent)."""
    pad = -len(x) % multiple
    return np.concatenate([x, np.zeros((pad,) + x.shape[1:], x.dtype)]) if pad else x
