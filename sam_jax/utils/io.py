"""Atomic outputs (host side): every file or folder sam-jax writes is assembled under a hidden
temporary name beside its final place and renamed into place when complete, so a name that
exists is a finished output, whatever killed the process before.

Temporary names say who owns them: `.<name>.partial-<host>-<pid>-<random>`. Several processes
(and hosts) may share an output folder; `remove_stale_partials` deletes only leftovers of this
host whose process is gone, never another live process's work, never anything else.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path

_HOST = re.sub(r"[^A-Za-z0-9_]", "_", socket.gethostname())[:40] or "host"
_PARTIAL = re.compile(r"^\.(?P<name>.+)\.partial-(?P<host>[A-Za-z0-9_]+)-(?P<pid>\d+)-[0-9a-f]{8}$")


def partial_path(final: str | os.PathLike) -> Path:
    """A fresh temporary name beside `final`, owned by this host and process."""
    final = Path(final)
    return final.with_name(f".{final.name}.partial-{_HOST}-{os.getpid()}-{secrets.token_hex(4)}")


@contextlib.contextmanager
def atomic_file(final: str | os.PathLike) -> Iterator[Path]:
    """Yields a temporary path to write; on success it replaces `final` (one rename), on any
    error it is removed and `final` is untouched."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = partial_path(final)
    try:
        yield tmp
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_dir(final: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yields a new empty folder to fill; on success it takes the name `final`, replacing an
    existing `final` only when `overwrite` (the caller decides that the old one may go). On any
    error the temporary folder is removed and `final` is untouched."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = partial_path(final)
    tmp.mkdir()  # the process umask applies: outputs get the user's normal permissions
    try:
        yield tmp
        if final.exists() or final.is_symlink():
            if not overwrite:
                raise FileExistsError(f"{final} already exists (use --overwrite to replace it)")
            old = partial_path(final)
            final.rename(old)
            tmp.rename(final)
            _remove(old)
        else:
            tmp.rename(final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def remove_stale_partials(folder: str | os.PathLike) -> list[Path]:
    """Deletes temporary outputs in `folder` left by dead processes of this host; returns them."""
    removed = []
    folder = Path(folder)
    if not folder.is_dir():
        return removed
    for entry in folder.iterdir():
        m = _PARTIAL.match(entry.name)
        if m and m["host"] == _HOST and not _alive(int(m["pid"])):
            _remove(entry)
            removed.append(entry)
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
