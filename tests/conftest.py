"""pytest fixtures: the parity cases of `helpers.py`, built once per session."""

from __future__ import annotations

import os

# Several simulated CPU devices for sharding tests; must be set before jax is imported.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
# No persistent XLA cache in the user's home from tests (subprocesses inherit this); the
# cache's own tests turn it on in a temporary folder.
os.environ.setdefault("SAM_JAX_XLA_CACHE", "0")

import jax  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from helpers import ParityCase, make_case  # noqa: E402

torch.set_grad_enabled(False)
# The tests' own jnp references (softmax(q @ k.T) @ v, ...) in float32 on any backend, as the
# model's "exact" default is; a test of the precision setting overrides it in the model.
jax.config.update("jax_default_matmul_precision", "highest")


@pytest.fixture(scope="session")
def cases(tmp_path_factory):
    """name -> ParityCase, built once per session."""
    built: dict[str, ParityCase] = {}

    def get(name: str) -> ParityCase:
        if name not in built:
            built[name] = make_case(name, tmp_path_factory.mktemp(name))
        return built[name]

    return get


@pytest.fixture(params=["test_tiny", "test_divisible"])
def case(request, cases) -> ParityCase:
    return cases(request.param)


@pytest.fixture
def tiny(cases) -> ParityCase:
    return cases("test_tiny")
