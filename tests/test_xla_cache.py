"""The persistent XLA compilation cache that importing sam_jax turns on: where it goes, the
opt-out, and a folder the user chose is left alone (each case a fresh interpreter)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

PRINT_DIR = "import sam_jax, jax; print(jax.config.jax_compilation_cache_dir)"


def _cache_dir_after_import(tmp_path, **env) -> str:
    full = {k: v for k, v in os.environ.items() if k not in ("SAM_JAX_XLA_CACHE", "JAX_COMPILATION_CACHE_DIR")}
    full.update(SAM_JAX_CACHE=str(tmp_path / "root"), **env)
    r = subprocess.run([sys.executable, "-c", PRINT_DIR], env=full, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stdout.strip()


@pytest.mark.parametrize("env, expected", [
    ({}, "{root}/xla"),  # on by default, in sam-jax's cache
    ({"SAM_JAX_XLA_CACHE": "{tmp}/mine"}, "{tmp}/mine"),
    ({"SAM_JAX_XLA_CACHE": "0"}, "None"),
    ({"JAX_COMPILATION_CACHE_DIR": "{tmp}/jax"}, "{tmp}/jax"),  # the user's own choice wins
])
def test_import_enables_cache_unless_opted_out(tmp_path, env, expected):
    fill = lambda s: s.format(tmp=tmp_path, root=tmp_path / "root")
    assert _cache_dir_after_import(tmp_path, **{k: fill(v) for k, v in env.items()}) == fill(expected)
    assert (tmp_path / "root" / "xla").exists() == (expected == "{root}/xla")
