"""Training on a (data, fsdp) mesh (`sam_jax.parallel`): where the step's state and batch live
(`state_shardings`, `batch_shardings`, which the step constrains its outputs to), the padded
global batch, which rows of it each process loads, and how they are assembled.

The batch is split over every device (its leading axis over `data` and `fsdp` together). The
parameters, the optimizer state and the frozen parameters are replicated, or with an fsdp axis
larger than one split over it along their largest divisible dimension (`parallel.fsdp_spec`); the
AdamW moments have their parameters' shapes, so they are split the same way. The compiler turns
these shardings into the collectives (gradient all-reduce or reduce-scatter, parameter all-gather).

A global batch of any size is padded to a multiple of the device count with blank rows that hold
no valid object; the loss divides by the global count of valid objects, and every random draw of
an object depends only on its position, so the padded step equals the unpadded one.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh

from ..parallel import batch_sharding, fsdp_shardings, replicated
from ..parallel import pad_batch as parallel_pad_batch
from .rollout import Batch


def state_shardings(state, mesh: Mesh):
    """Where a `step.TrainState` lives on `mesh`: parameters and optimizer state by
    `parallel.fsdp_shardings` (replicated with fsdp 1; the AdamW moments have their parameters'
    shapes, so they are split alike), step and key replicated. Returns a TrainState of shardings."""
    return type(state)(replicated(mesh), fsdp_shardings(state.params, mesh), fsdp_shardings(state.opt_state, mesh),
                       replicated(mesh))


def batch_shardings(batch: Batch, mesh: Mesh) -> Batch:
    """Every field's leading (image) axis split over all devices of `mesh`."""
    return Batch(*(None if x is None else batch_sharding(mesh, x.ndim) for x in batch))


def padded_size(batch_size: int, mesh: Mesh | None) -> int:
    """The global batch rounded up to a multiple of the mesh's device count."""
    n = 1 if mesh is None else mesh.size
    return -(-batch_size // n) * n


def process_rows(mesh: Mesh, size: int) -> tuple[int, ...]:
    """The rows of a (size, ...) batch sharded over `mesh` that this process's devices hold, in
    order. They must be one contiguous block (`jax.make_array_from_process_local_data` assembles
    the global batch from each process's block); a mesh whose devices interleave processes along
    the batch is refused."""
    index_map = batch_sharding(mesh, 1).addressable_devices_indices_map((size,))
    rows = sorted({r for (s,) in index_map.values() for r in range(*s.indices(size))})
    if rows != list(range(rows[0], rows[0] + len(rows))):
        raise ValueError("this mesh gives a process rows of the batch that are not contiguous; build it from jax.devices() in order")
    return tuple(rows)


def global_batch(local: dict, mesh: Mesh, size: int) -> Batch:
    """A `Batch` of global arrays from this process's rows (`process_rows`) of each field."""
    def one(name: str):
        if name not in local:
            return None
        x = np.asarray(local[name])
        return jax.make_array_from_process_local_data(batch_sharding(mesh, x.ndim), x, (size,) + x.shape[1:])

    return Batch(one("image"), one("embedding"), one("input_size"), one("masks"), one("valid"))


def pad_batch(batch: Batch, multiple: int) -> Batch:
    """`batch` (host or single-device arrays) with blank rows appended up to a multiple of
    `multiple`: zero images or embeddings, full input size, no valid object."""
    if batch.valid.shape[0] % multiple == 0:
        return batch
    grow = lambda x, fill=0: None if x is None else parallel_pad_batch(x, multiple, fill)
    return Batch(grow(batch.images), grow(batch.embeddings), grow(batch.input_sizes, batch.masks.shape[-1]),
                 grow(batch.masks), grow(batch.valid))
