"""sam-jax as a library inside someone else's program: importing it changes nothing of the host
program's (JAX settings, monitoring listeners, files, heavy modules), each case in a fresh
interpreter; the persistent compilation cache is the explicit `enable_compilation_cache`."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

PROBE = """
import json, os, sys
import jax
from jax._src import monitoring
before = dict(jax.config.values)
listeners = (len(monitoring.get_event_duration_listeners()), len(monitoring.get_event_listeners()))
import sam_jax, sam_jax.predictor, sam_jax.automatic_mask_generator, sam_jax.utils.amg, sam_jax.utils.transforms
changed = sorted(k for k, v in jax.config.values.items() if before.get(k) != v)
after = (len(monitoring.get_event_duration_listeners()), len(monitoring.get_event_listeners()))
heavy = [m for m in ("torch", "torchvision", "cv2", "matplotlib", "onnx", "onnxruntime", "tensorflow") if m in sys.modules]
print(json.dumps({"changed": changed, "listeners": [listeners, after], "heavy": heavy}))
"""


def _python(code: str, tmp_path, **env) -> str:
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    full = {k: v for k, v in os.environ.items()
            if k not in ("SAM_JAX_XLA_CACHE", "SAM_JAX_CACHE", "XDG_CACHE_HOME", "JAX_COMPILATION_CACHE_DIR")}
    full.update(HOME=str(home), **env)
    r = subprocess.run([sys.executable, "-c", code], env=full, cwd=home, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stdout.strip().splitlines()[-1]


def test_import_has_no_side_effects(tmp_path):
    found = json.loads(_python(PROBE, tmp_path))
    assert found["changed"] == [], f"importing sam_jax changed jax.config: {found['changed']}"
    assert found["listeners"][0] == found["listeners"][1], "importing sam_jax registered a jax.monitoring listener"
    assert found["heavy"] == [], f"importing sam_jax imported {found['heavy']}"
    assert list((tmp_path / "home").iterdir()) == [], "importing sam_jax created files in HOME (or the working folder)"


CACHE = "import sam_jax, jax; print(sam_jax.enable_compilation_cache({arg}), jax.config.jax_compilation_cache_dir)"


@pytest.mark.parametrize("arg, env, expected", [
    ("", {"SAM_JAX_CACHE": "{tmp}/root"}, "{tmp}/root/xla"),  # in sam-jax's cache folder by default
    ("", {"SAM_JAX_CACHE": "{tmp}/root", "SAM_JAX_XLA_CACHE": "{tmp}/mine"}, "{tmp}/mine"),
    ("", {"SAM_JAX_XLA_CACHE": "0"}, None),  # the environment can turn it off
    ("'{tmp}/given'", {"SAM_JAX_XLA_CACHE": "{tmp}/mine"}, "{tmp}/given"),  # an explicit folder wins
])
def test_enable_compilation_cache(tmp_path, arg, env, expected):
    fill = lambda s: s.format(tmp=tmp_path)
    out = _python(CACHE.format(arg=fill(arg)), tmp_path, **{k: fill(v) for k, v in env.items()})
    returned, configured = out.split(" ")
    if expected is None:
        assert (returned, configured) == ("None", "None")
    else:
        assert returned == configured == fill(expected)
        assert os.path.isdir(fill(expected))


def test_commands_turn_the_cache_on(tmp_path, monkeypatch):
    """The CLI keeps its persistent cache: --cache-dir defaults to $SAM_JAX_XLA_CACHE, else the cache root's xla/."""
    from sam_jax.cli import build_parser

    parse = lambda: build_parser().parse_args(["amg", "--checkpoint", "x", "--input", "i", "--output", "o"]).cache_dir
    monkeypatch.delenv("SAM_JAX_XLA_CACHE", raising=False)
    monkeypatch.setenv("SAM_JAX_CACHE", str(tmp_path / "root"))
    assert parse() == str(tmp_path / "root" / "xla")
    monkeypatch.setenv("SAM_JAX_XLA_CACHE", str(tmp_path / "mine"))
    assert parse() == str(tmp_path / "mine")
    monkeypatch.setenv("SAM_JAX_XLA_CACHE", "0")
    assert parse() == ""
