"""Many devices and many hosts: meshes, shardings, and the padding that lets a batch of any size
be split over them; a worker per device for independent items (images to segment); each
process's share of the inputs. Built on JAX's own runtime (`Mesh`, `NamedSharding`,
`jax.distributed`): the compiler places the collectives; nothing here moves data by hand."""

from .distributed import initialize, process_share, wait_for_all
from .mesh import (
    DATA, FSDP, MIN_SHARDED_SIZE, batch_sharding, data_parallel_mesh, fsdp_shardings, fsdp_spec, make_mesh, pad_batch, place,
    replicated,
)
from .workers import replicate, run_on_devices

__all__ = [
    "DATA", "FSDP", "MIN_SHARDED_SIZE", "batch_sharding", "data_parallel_mesh", "fsdp_shardings", "fsdp_spec", "initialize",
    "make_mesh", "pad_batch", "place", "process_share", "replicate", "replicated", "run_on_devices", "wait_for_all",
]
