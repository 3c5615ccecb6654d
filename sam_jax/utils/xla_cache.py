"""The persistent XLA compilation cache, on for library users as for the CLI.

Importing sam_jax keeps compiled programs in $SAM_JAX_CACHE/xla (~/.cache/sam-jax/xla), so a
new process skips most compiling (for AMG on a folder of photos: a handful of programs). Opt
out with SAM_JAX_XLA_CACHE=0 (or an empty value); SAM_JAX_XLA_CACHE=/path picks another folder.
A folder the user already chose (JAX_COMPILATION_CACHE_DIR, or jax.config's
jax_compilation_cache_dir) is left alone, and the CLI's --cache-dir overrides all of these.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import jax

from ..weights import cache_dir

ENV = "SAM_JAX_XLA_CACHE"
MIN_COMPILE_SECONDS = 0.5  # quicker compilations are not worth a file


def set_compilation_cache(path: str | os.PathLike | None) -> None:
    """Keeps compiled programs in `path` (created when needed), or stops caching when None."""
    if path is None:
        jax.config.update("jax_compilation_cache_dir", None)
        return
    Path(path).mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_SECONDS)


def enable_default_cache() -> None:
    """What importing sam_jax does (see the module docstring); an unusable folder only warns."""
    if jax.config.jax_compilation_cache_dir:
        return
    choice = os.environ.get(ENV)
    if choice is not None and choice.strip().lower() in ("", "0", "off", "false", "no"):
        return
    try:
        set_compilation_cache(choice or cache_dir("xla"))
    except OSError as e:  # a read-only home must not break the import
        warnings.warn(f"sam-jax: no persistent XLA cache ({e}); set {ENV}=0 to silence this", stacklevel=2)
