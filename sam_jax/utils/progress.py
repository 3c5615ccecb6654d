"""The one progress and status display of every long step (loading, compiling, embedding,
generating, training). Our own, on stderr, rather than a dependency: a bar on a terminal, one line
per finished item otherwise (logs, CI), nothing at all when quiet."""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterator
from typing import TextIO


class Progress:
    """Counts items towards `total`: a bar on a terminal, one line per item otherwise."""

    def __init__(self, total: int, prefix: str = "sam-jax", quiet: bool = False, stream: TextIO | None = None):
        self.total, self.done, self.prefix, self.quiet = total, 0, prefix, quiet
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self._bar = False

    def step(self, text: str) -> None:
        """One item done; `text` says what became of it."""
        self.done += 1
        if self.quiet:
            return
        if self.tty:
            filled = int(30 * self.done / max(self.total, 1))
            self.stream.write(f"\r[{'#' * filled}{'.' * (30 - filled)}] {self.done}/{self.total} {text[:60]:<60}")
            self._bar = True
        else:
            self.stream.write(f"[{self.done}/{self.total}] {text}\n")
        self.stream.flush()

    def message(self, text: str, counts: bool = True) -> None:
        """A line that must be seen even when quiet (a skipped input, a warning)."""
        self.done += counts
        self.stream.write(("\n" if self._bar else "") + f"{self.prefix}: {text}\n")
        self._bar = False
        self.stream.flush()

    def close(self) -> None:
        if self._bar:
            self.stream.write("\n")
            self._bar = False


@contextlib.contextmanager
def status(text: str, quiet: bool = False, stream: TextIO | None = None) -> Iterator[None]:
    """`text ...` while a step runs, then its duration; on a terminal only (a step is not an item)."""
    stream = stream or sys.stderr
    show = not quiet and stream.isatty()
    if show:
        stream.write(f"{text} ...")
        stream.flush()
    t0 = time.perf_counter()
    try:
        yield
    finally:
        if show:
            stream.write(f" {time.perf_counter() - t0:.1f} s\n")
            stream.flush()
