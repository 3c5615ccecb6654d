"""HTTP downloads of large files (host side): resumed after an interruption, verified, atomic.

    download(url, dest, {"sha256": "ec2df627..."})   # -> dest, verified

The bytes go to `.<name>.download` beside `dest`. A run that is interrupted (network, Ctrl-C,
a killed process) leaves that file, and the next run asks the server only for the rest (an HTTP
Range request); a server that ignores the range sends everything again. Once complete, the file's
digests are checked: on a match it is renamed to `dest`, so a file under the final name is always
complete and verified; on a mismatch it is deleted. A lock file (`.<name>.lock`, POSIX, left in
place: deleting it would let a third process lock a new file while a second still waits on the old)
keeps two processes from writing the same partial file: the second waits, then finds `dest` done.

Expected failures (offline, refused, HTTP errors, interrupted, wrong digest) raise DownloadError
with a one-line message.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from sam_jax.runtime.progress import Progress, say

try:  # POSIX only; elsewhere concurrent downloads of one file are not guarded
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

CHUNK_BYTES = 1 << 20
TIMEOUT_SECONDS = 30
USER_AGENT = "sam-jax"


class DownloadError(OSError):
    """A download that failed for an expected reason; the message is one line."""


def download(
    url: str, dest: str | os.PathLike, digests: dict[str, str], *, quiet: bool = False,
    timeout: float = TIMEOUT_SECONDS, hint: str = "",
) -> Path:
    """Downloads `url` to `dest` unless it is there already; returns `dest`.

    digests: {hashlib algorithm: expected hex digest or a published prefix of it (at least 6 hex
    digits)}, all checked. hint: added to the offline message (where else to get the file)."""
    dest = Path(dest)
    if dest.is_file():  # only ever renamed into place after verification
        return dest
    if not digests or any(len(v) < 6 for v in digests.values()):
        raise ValueError(f"download of {url}: give at least one digest of 6 or more hex digits")
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(f".{dest.name}.download")
    with exclusive(dest.with_name(f".{dest.name}.lock"), f"downloading {dest.name}", quiet):
        if dest.is_file():  # another process finished it while this one waited
            return dest
        _fetch(url, part, quiet, timeout, hint)
        _verify(part, digests, dest.name)
        os.replace(part, dest)
    return dest


def _fetch(url: str, part: Path, quiet: bool, timeout: float, hint: str) -> None:
    """Completes `part` from `url`, continuing after the bytes it already holds."""
    offset = part.stat().st_size if part.is_file() else 0
    headers = {"User-Agent": USER_AGENT}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        response = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and offset:  # nothing left to send: the partial file is complete
            return
        raise DownloadError(f"cannot download {url}: HTTP {e.code} {e.reason}") from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise DownloadError(f"cannot download {url}: {reason} (offline?{' ' + hint if hint else ''})") from None
    with response:
        if offset and response.status != 206:
            offset = 0  # the server ignored the range: it sends the whole file again
        total = _total_size(response, offset)
        name = url.rsplit("/", 1)[-1]
        size = f" ({total / 1e6:.1f} MB)" if total else ""
        say(f"{'resuming' if offset else 'downloading'} {name}{size} from {url}"
            + (f" at {offset / 1e6:.1f} MB" if offset else ""), quiet)
        progress = Progress(total or 0, prefix="sam-jax download", quiet=quiet, unit="B")
        progress.advance(offset)
        done = offset
        try:
            with open(part, "ab" if offset else "wb") as f:
                while chunk := response.read(CHUNK_BYTES):
                    f.write(chunk)
                    done += len(chunk)
                    progress.advance(len(chunk), name)
        except (OSError, ValueError) as e:  # reset connections, timeouts, http.client.IncompleteRead
            raise DownloadError(f"download of {url} interrupted at {done / 1e6:.1f} MB ({e}); run again to resume") from None
        finally:
            progress.close()
    if total is not None and done != total:  # the connection closed early without an error
        raise DownloadError(f"download of {url} interrupted at {done / 1e6:.1f} of {total / 1e6:.1f} MB; run again to resume")


def _total_size(response, offset: int) -> int | None:
    """The whole file's size: from Content-Range for a partial response, else Content-Length."""
    if offset:
        m = re.match(r"bytes \d+-\d+/(\d+)", response.headers.get("Content-Range", ""))
        return int(m[1]) if m else None
    length = response.headers.get("Content-Length")
    return int(length) if length and length.isdigit() else None


def _verify(path: Path, digests: dict[str, str], name: str) -> None:
    """Checks every digest of the file; deletes it and raises DownloadError on a mismatch."""
    hashes = {algorithm: hashlib.new(algorithm) for algorithm in digests}
    with open(path, "rb") as f:
        while block := f.read(CHUNK_BYTES):
            for h in hashes.values():
                h.update(block)
    for algorithm, expected in digests.items():
        actual = hashes[algorithm].hexdigest()
        if not actual.startswith(expected.lower()):
            path.unlink(missing_ok=True)
            shown = expected if len(expected) < 16 else expected[:16] + "..."
            raise DownloadError(
                f"{name}: {algorithm.upper()} {actual[:16]}... differs from the published {shown}; "
                "the downloaded file was deleted (corrupted or changed on the server: try again)"
            )


@contextlib.contextmanager
def exclusive(lock: Path, what: str, quiet: bool = False) -> Iterator[None]:
    """Holds an exclusive lock on the file `lock` (created if needed, left in place) while the block
    runs; says so when it has to wait for another process `what` (e.g. "downloading x.pth")."""
    if fcntl is None:
        yield
        return
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            say(f"waiting for another process {what}", quiet)
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
