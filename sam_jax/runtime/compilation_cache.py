"""The persistent XLA compilation cache, which a process turns on explicitly.

    >>> import sam_jax
    >>> sam_jax.enable_compilation_cache()      # $SAM_JAX_XLA_CACHE, else $SAM_JAX_CACHE/xla

A new process then loads the programs an earlier one compiled (for AMG on a folder of photos: a
handful of programs, seconds each). Importing sam_jax changes no JAX setting: the commands turn
the cache on (`--cache-dir`), notebooks and library users call `enable_compilation_cache`, which
changes JAX's process-wide `jax_compilation_cache_dir` (and lowers
`jax_persistent_cache_min_compile_time_secs` to 0.5 s), as any program that wants the cache does.
"""

from __future__ import annotations

import os
from pathlib import Path

import jax

from .paths import default_cache_path

MIN_COMPILE_SECONDS = 0.5  # quicker compilations are not worth a file


def set_compilation_cache(path: str | os.PathLike | None) -> None:
    """Keeps compiled programs in `path` (created when needed), or stops caching when None."""
    if path is None:
        jax.config.update("jax_compilation_cache_dir", None)
        return
    Path(path).mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_SECONDS)


def enable_compilation_cache(path: str | os.PathLike | None = None) -> Path | None:
    """Turns on JAX's persistent compilation cache in `path` (None: `default_cache_path()`),
    creating the folder; returns it, or None when $SAM_JAX_XLA_CACHE turns it off (0 or off).
    OSError (one line) when the folder cannot be created."""
    folder = Path(path).expanduser() if path is not None else default_cache_path()
    if folder is None:
        return None
    try:
        set_compilation_cache(folder)
    except OSError as e:
        raise OSError(f"cannot use {folder} as the XLA compilation cache: {e.strerror or e}") from None
    return folder
