"""The cache folder: one root for everything sam-jax keeps between runs.

    $SAM_JAX_CACHE (default $XDG_CACHE_HOME/sam-jax, i.e. ~/.cache/sam-jax)
        checkpoints/<name>/   converted checkpoints of model names (`sam_jax.convert.weights`)
        downloads/            raw weight files while they download (resumable) and convert
        xla/                  the persistent XLA compilation cache (`compilation_cache`)
        web/                  onnxruntime-web for `sam-jax demo` when installed without npm

Nothing is created here: each user creates its folder when it first writes.
"""

from __future__ import annotations

import os
from pathlib import Path

KINDS = ("checkpoints", "downloads", "xla", "web")
XLA_CACHE_ENV = "SAM_JAX_XLA_CACHE"  # the compilation cache's own folder, or 0 / off
OFF = ("0", "off", "false", "no")


def cache_root() -> Path:
    """$SAM_JAX_CACHE, else $XDG_CACHE_HOME/sam-jax, else ~/.cache/sam-jax."""
    if os.environ.get("SAM_JAX_CACHE"):
        return Path(os.environ["SAM_JAX_CACHE"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "sam-jax"


def cache_dir(kind: str) -> Path:
    """One of the cache's folders (see the module docstring); not created here."""
    if kind not in KINDS:
        raise ValueError(f"unknown cache folder {kind!r}; one of {', '.join(KINDS)}")
    return cache_root() / kind


def default_cache_path() -> Path | None:
    """The persistent XLA compilation cache's folder: $SAM_JAX_XLA_CACHE if set (None when it says
    0 or off), else $SAM_JAX_CACHE/xla."""
    choice = os.environ.get(XLA_CACHE_ENV, "").strip()
    if choice.lower() in OFF:
        return None
    return Path(choice).expanduser() if choice else cache_dir("xla")
