"""Several processes on this machine joined by jax.distributed (CPU collectives over gloo): the
wiring that `sam-jax amg` and `sam-jax train` use to run on many hosts."""

from __future__ import annotations

import pytest

from tests.reference import multiprocess
from sam_jax.parallel import initialize, process_share

GLOBAL_SUM = """
import jax, jax.numpy as jnp, numpy as np
from sam_jax.parallel import initialize, make_mesh, batch_sharding
assert initialize()  # from JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID
mesh = make_mesh()
local = np.full((jax.local_device_count(), 3), jax.process_index() + 1, np.float32)
x = jax.make_array_from_process_local_data(batch_sharding(mesh, 2), local)
total = jax.jit(lambda a: a.sum(), out_shardings=jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))(x)
print(jax.process_index(), jax.process_count(), jax.device_count(), jax.local_device_count(), float(total))
"""


def test_two_processes_sum_across_hosts():
    results = multiprocess.run(["-c", GLOBAL_SUM], n=2, devices_per_process=2)
    lines = []
    for code, out, err in results:
        assert code == 0, err[-3000:]
        lines.append(out.strip().splitlines()[-1].split())  # gloo prints its own lines first
    # 2 processes x 2 devices x 3 values, filled with 1 and 2: 6 + 12.
    assert sorted(lines) == [["0", "2", "4", "2", "18.0"], ["1", "2", "4", "2", "18.0"]]


def test_initialize_arguments(monkeypatch):
    for k in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
        monkeypatch.delenv(k, raising=False)
    assert initialize() is False  # nothing asked: one process, nothing touched
    with pytest.raises(ValueError, match="needs the coordinator address"):
        initialize(coordinator_address="127.0.0.1:1234")
    monkeypatch.setenv("JAX_NUM_PROCESSES", "two")
    with pytest.raises(ValueError, match="not an integer"):
        initialize()
    with pytest.raises(ValueError, match="outside 0..1"):
        initialize("127.0.0.1:1", 2, 5)


def test_process_share_is_a_partition():
    items = list(range(11))
    shares = [process_share(items, i, 3) for i in range(3)]
    assert sorted(sum(shares, [])) == items
    assert shares[0] == [0, 3, 6, 9]
