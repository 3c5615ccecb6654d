"""Outputs (host side): every file or folder sam-jax writes is assembled under a hidden
temporary name beside its final place and renamed into place when complete, so a name that
exists is a finished output, whatever killed the process before.

Temporary names say who owns them: `.<name>.partial-<host>-<pid>-<random>`. Several processes
(and hosts) may share an output folder; `remove_stale_partials` deletes only leftovers of this
host whose process is gone, never another live process's work, never anything else.

`check_output` is what every writer asks before it writes: an output never is or contains one
of the inputs, an existing one is replaced only with `overwrite`, and only when sam-jax
recognises it as its own (each writer says how), never a file where a folder is expected or the
reverse, never anything else.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import secrets
import shutil
import socket
from collections.abc import Callable, Iterable, Iterator
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
    existing folder `final` only when `overwrite` (the caller has decided, with `check_output`,
    that the old one may go). On any error the temporary folder is removed and `final` is
    untouched."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = partial_path(final)
    tmp.mkdir()  # the process umask applies: outputs get the user's normal permissions
    try:
        yield tmp
        if final.exists() or final.is_symlink():
            if not overwrite:
                raise FileExistsError(f"{final} already exists (use --overwrite to replace it)")
            if final.is_symlink() or not final.is_dir():
                raise FileExistsError(f"{final} exists and is not a folder: refusing to replace it")
            old = partial_path(final)
            final.rename(old)
            tmp.rename(final)
            _remove(old)
        else:
            tmp.rename(final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def check_output(
    output: str | os.PathLike,
    *,
    kind: str,
    overwrite: bool,
    is_own: Callable[[Path], bool],
    what: str,
    inputs: Iterable[str | os.PathLike] = (),
) -> None:
    """Refuses, before anything is read or written, an output that could cost data sam-jax did
    not write. kind: "file" or "dir", what the writer will put at `output`; is_own(path) tells an
    existing output of this writer (`what`, for the message) from anything else. Raises
    ValueError for an output that is, or (a folder) contains, one of `inputs`, FileExistsError for
    an existing output that may not be replaced; messages are one line."""
    output = Path(output)
    check_not_input(output, inputs, kind=kind)
    if not (output.exists() or output.is_symlink()):
        return
    if kind == "dir" and not output.is_dir():
        raise FileExistsError(f"output {output} exists and is not a folder: refusing to replace it with {what}")
    if kind == "file" and output.is_dir():
        raise FileExistsError(f"output {output} is a folder: refusing to replace it with {what}")
    if not overwrite:
        raise FileExistsError(f"output {output} already exists (use --overwrite to replace it)")
    if not is_own(output):
        raise FileExistsError(
            f"output {output} is not {what} written by sam-jax: --overwrite replaces only sam-jax's own outputs; "
            "move it away or choose another output"
        )


def check_not_input(output: str | os.PathLike, inputs: Iterable[str | os.PathLike] = (), *, kind: str = "dir",
                    holders: Iterable[str | os.PathLike] = ()) -> None:
    """ValueError (one line) for an output that is one of `inputs` or (kind "dir") contains one,
    or that lies inside one of `holders` (inputs that are folders whose content is the input
    itself, such as a checkpoint folder)."""
    output = Path(output)
    target = output.resolve()
    for source in inputs:
        source = Path(source).resolve()
        if source == target or (kind == "dir" and target in source.parents):
            relation = "is" if source == target else "contains"
            raise ValueError(f"output {output} {relation} the input {source}: choose another output")
    for holder in holders:
        holder = Path(holder).resolve()
        if holder in target.parents:
            raise ValueError(f"output {output} is inside the input {holder}: choose another output")


def file_digest(path: str | os.PathLike) -> str:
    """SHA-256 (hex) of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def tree_digest(path: str | os.PathLike) -> str:
    """SHA-256 (hex) of a file, or of a folder's files (their relative names and bytes, in
    sorted order); the same content gives the same digest wherever it lies."""
    path = Path(path)
    if not path.is_dir():
        return file_digest(path)
    h = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if not p.is_dir()):
        h.update(file.relative_to(path).as_posix().encode() + b"\0" + file_digest(file).encode() + b"\0")
    return h.hexdigest()


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
