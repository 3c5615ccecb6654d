"""HTTP downloads of large files (host side): resumed after an interruption, verified, atomic.

    download(url, dest, {"sha256": "ec2df627..."})   # -> dest, verified

The bytes go to `.<name>.download` beside `dest`. A run that is interrupted (network, Ctrl-C,
a killed process) leaves that file, and the next run asks the server only for the rest (an HTTP
Range request); a server that ignores the range sends everything again. Once complete, the file's
digests are checked: on a match it is renamed to `dest`, so a file under the final name is always
complete and verified; on a mismatch it is deleted. A lock file (`.<name>.lock`, POSIX, left in
place: deleting it would let a third process lock a new file while a second still waits on the old)
keeps two processes from writing the same partial file: the second waits, then finds `dest` done.

Nothing a server says is trusted: the bytes are capped at the file's known size (a mirror that
streams without end is cut off, not allowed to fill the disk), a partial answer must start where
the partial file ends, and a transfer slower than MIN_BYTES_PER_SECOND over any STALL_SECONDS
stops (a trickle that keeps each read within the socket timeout would otherwise never end); each
is a one-line DownloadError that leaves what can be resumed.

Expected failures (offline, refused, HTTP errors, redirect loops, interrupted, too slow, too
large, wrong digest) raise DownloadError with a one-line message.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import time
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
TIMEOUT_SECONDS = 30  # each connection and read
STALL_SECONDS = 60.0  # the window over which the rate must reach MIN_BYTES_PER_SECOND
MIN_BYTES_PER_SECOND = 10_000
MAX_UNKNOWN_BYTES = 8 << 30  # the cap of a file whose size is not known (every named file's is)
USER_AGENT = "sam-jax"


class DownloadError(OSError):
    """A download that failed for an expected reason; the message is one line."""


def download(
    url: str, dest: str | os.PathLike, digests: dict[str, str], *, size: int | None = None, quiet: bool = False,
    timeout: float = TIMEOUT_SECONDS, hint: str = "",
) -> Path:
    """Downloads `url` to `dest` unless it is there already; returns `dest`.

    digests: {hashlib algorithm: expected hex digest or a published prefix of it (at least 6 hex
    digits)}, all checked. size: the file's size in bytes where known: a server announcing
    another size is refused before anything is written, and no more bytes are ever accepted
    (unknown: at most MAX_UNKNOWN_BYTES). hint: added to the offline message (where else to get
    the file)."""
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
        _fetch(url, part, size, quiet, timeout, hint)
        _verify(part, digests, dest.name)
        os.replace(part, dest)
    return dest


def _fetch(url: str, part: Path, size: int | None, quiet: bool, timeout: float, hint: str) -> None:
    """Completes `part` from `url`, continuing after the bytes it already holds."""
    cap = size if size is not None else MAX_UNKNOWN_BYTES
    offset = part.stat().st_size if part.is_file() else 0
    if offset > cap:  # not a prefix of the file: sam-jax's own partial file, started again
        part.unlink()
        offset = 0
    if size is not None and offset == size:  # complete; the digests decide
        return
    headers = {"User-Agent": USER_AGENT}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        response = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and offset:  # nothing left to send: the partial file is complete
            return
        what = "a redirect loop" if 300 <= e.code < 400 else f"HTTP {e.code} {_one_line(e.reason)}"
        raise DownloadError(f"cannot download {url}: {what}") from None
    except (urllib.error.URLError, OSError) as e:
        reason = _one_line(getattr(e, "reason", e))
        raise DownloadError(f"cannot download {url}: {reason} (offline?{' ' + hint if hint else ''})") from None
    with response:
        offset = _start(response, offset, part, url)
        total = _total_size(response, offset)
        if total is not None and (total > cap or size is not None and total != size):
            expected = f"the file has {size}" if size is not None else f"at most {cap} are accepted"
            raise DownloadError(f"cannot download {url}: the server announces {total} bytes, {expected}; "
                                "not downloaded (a wrong file or a wrong mirror)")
        name = url.rsplit("/", 1)[-1]
        shown = total or size
        say(f"{'resuming' if offset else 'downloading'} {name}{f' ({shown / 1e6:.1f} MB)' if shown else ''} from {url}"
            + (f" at {offset / 1e6:.1f} MB" if offset else ""), quiet)
        progress = Progress(shown or 0, prefix="sam-jax download", quiet=quiet, unit="B")
        progress.advance(offset)
        done = offset
        window = [(time.monotonic(), done)]  # (time, bytes) samples of the last STALL_SECONDS
        try:
            with open(part, "ab" if offset else "wb") as f:
                # read1: whatever has arrived, so that a trickle is measured as it comes
                while chunk := response.read1(min(CHUNK_BYTES, cap - done + 1)):
                    if done + len(chunk) > cap:
                        raise _TooLarge
                    f.write(chunk)
                    done += len(chunk)
                    progress.advance(len(chunk), name)
                    _check_rate(window, done, url)
        except _TooLarge:
            part.unlink(missing_ok=True)
            raise DownloadError(f"download of {url} stopped: the server sent more than the file's {cap} bytes "
                                "(a wrong file or a wrong mirror); the partial file was deleted") from None
        except (OSError, ValueError) as e:  # reset connections, timeouts, http.client.IncompleteRead
            raise DownloadError(f"download of {url} interrupted at {done / 1e6:.1f} MB ({_one_line(e)}); "
                                "run again to resume") from None
        finally:
            progress.close()
    if total is not None and done != total:  # the connection closed early without an error
        raise DownloadError(f"download of {url} interrupted at {done / 1e6:.1f} of {total / 1e6:.1f} MB; run again to resume")


class _TooLarge(Exception):
    pass


def _start(response, offset: int, part: Path, url: str) -> int:
    """Where the response's bytes begin in the file: `offset` for a partial answer that starts
    there, 0 for a whole answer (a server that ignores ranges, or a partial one from byte 0). A
    partial answer that starts anywhere else would be written at the wrong place: refused, and
    the partial file (sam-jax's own) deleted, so that the next run starts afresh."""
    if not offset or response.status != 206:
        return 0
    m = re.match(r"bytes (\d+)-\d+/(\d+|\*)", response.headers.get("Content-Range", ""))
    if m is not None and int(m[1]) in (0, offset):
        return int(m[1])
    part.unlink(missing_ok=True)
    raise DownloadError(f"cannot resume {url}: asked for the bytes from {offset}, the server answered "
                        f"{response.headers.get('Content-Range', 'without a Content-Range')!r:.60}; the partial "
                        "file was deleted, run again")


def _check_rate(window: list[tuple[float, int]], done: int, url: str) -> None:
    """DownloadError when fewer than MIN_BYTES_PER_SECOND arrived over the last STALL_SECONDS."""
    now = time.monotonic()
    window.append((now, done))
    while len(window) > 2 and now - window[1][0] >= STALL_SECONDS:
        window.pop(0)
    then, before = window[0]
    if now - then >= STALL_SECONDS and (done - before) / (now - then) < MIN_BYTES_PER_SECOND:
        raise DownloadError(f"download of {url} too slow ({(done - before) / (now - then) / 1e3:.1f} kB/s over "
                            f"{now - then:.0f} s) at {done / 1e6:.1f} MB; run again to resume")


def _one_line(reason) -> str:
    """An error's text on one line (urllib's redirect and socket messages span several)."""
    return " ".join(str(reason).split()) or type(reason).__name__


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
