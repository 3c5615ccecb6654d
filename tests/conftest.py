"""pytest fixtures: the parity cases of `reference/official.py`, built once per session (torch is
imported only when a test asks for one)."""

from __future__ import annotations

import gc
import os

# Several simulated CPU devices for sharding tests; must be set before jax is imported.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
# No persistent XLA cache in the user's home from tests (subprocesses inherit this); the
# cache's own tests turn it on in a temporary folder.
os.environ.setdefault("SAM_JAX_XLA_CACHE", "0")

import jax  # noqa: E402
import pytest  # noqa: E402

# The tests' own jnp references (softmax(q @ k.T) @ v, ...) in float32 on any backend, as the
# model's "exact" default is; a test of the precision setting overrides it in the model.
jax.config.update("jax_default_matmul_precision", "highest")


@pytest.fixture(autouse=True, scope="module")
def _free_compiled_programs():
    """Drops JAX's compiled programs after each test module. Each CPU executable holds about four
    memory mappings, and a whole run compiles tens of thousands of programs: past the kernel's
    65,530 mappings per process (vm.max_map_count) LLVM's JIT cannot map code and XLA's compiler
    segfaults (it did, late in full runs, never in a file run alone)."""
    yield
    jax.clear_caches()
    gc.collect()


@pytest.fixture(scope="session")
def cases(tmp_path_factory):
    """name -> ParityCase (`reference.official.make_case`), built once per session."""
    from tests.reference.official import make_case

    built: dict = {}

    def get(name: str):
        if name not in built:
            built[name] = make_case(name, tmp_path_factory.mktemp(name))
        return built[name]

    return get


@pytest.fixture(params=["test_tiny", "test_divisible"])
def case(request, cases):
    return cases(request.param)


@pytest.fixture
def tiny(cases):
    return cases("test_tiny")
