"""Device meshes and the shardings of sam-jax's arrays.

A mesh has two axes: `data` (the batch is split over it) and `fsdp` (parameters and optimizer
state may be split over it; 1 by default, which replicates them). A batch is split over both
axes together, so every device holds a different slice of it. Under jit with these shardings the
compiler inserts the collectives: all-reduce of replicated gradients, all-gather of fsdp-split
parameters and reduce-scatter of their gradients.
"""

from __future__ import annotations

import math

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA, FSDP = "data", "fsdp"
MIN_SHARDED_SIZE = 1024  # elements; smaller arrays stay replicated under fsdp


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


def fsdp_spec(shape: tuple[int, ...], size: int, min_size: int = MIN_SHARDED_SIZE) -> PartitionSpec:
    """How an array of `shape` is split over an `fsdp` axis of `size` devices: along its largest
    dimension that `size` divides (the first of equals), or not at all when none does or the array
    is smaller than `min_size` elements (a bias or a norm scale saves nothing worth a collective)."""
    if size == 1 or math.prod(shape) < min_size:
        return PartitionSpec()
    dims = [d for d in range(len(shape)) if shape[d] % size == 0]
    if not dims:
        return PartitionSpec()
    d = max(dims, key=lambda d: (shape[d], -d))
    return PartitionSpec(*([None] * d), FSDP)


def fsdp_shardings(tree, mesh: Mesh, min_size: int = MIN_SHARDED_SIZE):
    """A tree of `NamedSharding`s for the arrays of `tree` (arrays or shape-dtype structs):
    each split over the mesh's `fsdp` axis by `fsdp_spec`, replicated over `data`. With fsdp 1
    everything is replicated."""
    size = mesh.shape[FSDP]
    return jax.tree.map(lambda x: NamedSharding(mesh, fsdp_spec(tuple(x.shape), size, min_size)), tree)


def place(tree, shardings):
    """`tree`'s arrays as global arrays with `shardings` (a matching tree). Every process passes
    the same values and each keeps only its devices' shards, so this works across hosts too
    (where `jax.device_put` of a host value onto another process's devices cannot)."""
    def one(x, sharding):
        host = np.asarray(x)
        return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

    return jax.tree.map(one, tree, shardings)


def pad_batch(x: np.ndarray, multiple: int, fill=0) -> np.ndarray:
    """`x` with its leading axis padded with `fill` up to a multiple of `multiple` (drop the
    padding from the results: rows are independent)."""
    x = np.asarray(x)
    pad = -len(x) % multiple
    return np.concatenate([x, np.full((pad,) + x.shape[1:], fill, x.dtype)]) if pad else x
