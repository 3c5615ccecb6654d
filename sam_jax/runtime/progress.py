"""The one progress and status display of every long step (loading, compiling, embedding,
generating, downloading, training). Our own, on stderr, rather than a dependency: a bar on a
terminal, one line per finished item otherwise (logs, CI, notebooks), nothing at all when quiet."""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Iterator
from typing import TextIO

from .memory import CompileCounter

BAR_WIDTH = 30
REDRAW_SECONDS = 0.1  # byte counts arrive per chunk: redraw a terminal bar at most this often


class Progress:
    """Counts items (or bytes, `unit="B"`) towards `total`: a bar on a terminal, one line per
    item otherwise; byte counts are drawn on a terminal only."""

    def __init__(self, total: int, prefix: str = "sam-jax", quiet: bool = False, stream: TextIO | None = None,
                 unit: str = ""):
        self.total, self.done, self.prefix, self.quiet, self.unit = total, 0, prefix, quiet, unit
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self._bar = False
        self._start = self._drawn = time.perf_counter()

    def step(self, text: str) -> None:
        """One item done; `text` says what became of it."""
        self.done += 1
        if self.quiet:
            return
        if self.tty:
            self._draw(text)
        else:
            self.stream.write(f"[{self.done}/{self.total}] {text}\n")
        self.stream.flush()

    def advance(self, n: int, text: str = "") -> None:
        """`n` more units done (bytes of a download): redraws the bar on a terminal, now and then."""
        self.done += n
        now = time.perf_counter()
        if self.quiet or not self.tty or (now - self._drawn < REDRAW_SECONDS and self.done < self.total):
            return
        self._drawn = now
        rate = self.done / max(now - self._start, 1e-9)
        self._draw(f"{_amount(rate, self.unit)}/s {text}" if self.unit else text)
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

    def _draw(self, text: str) -> None:
        filled = int(BAR_WIDTH * min(self.done / max(self.total, 1), 1.0))
        count = f"{_amount(self.done, self.unit)}/{_amount(self.total, self.unit)}" if self.unit else f"{self.done}/{self.total}"
        self.stream.write(f"\r[{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {count} {text[:60]:<60}")
        self._bar = True


def checking(prefix: str, quiet: bool = False, stream: TextIO | None = None) -> Callable[[int, int], None]:
    """A `(done, total)` callback for checks of many small items (the images of a data set at
    start-up): a bar on a terminal, nothing per item otherwise (a data set's checks end in its
    one-line summary)."""
    bar: list[Progress] = []

    def report(done: int, total: int) -> None:
        if not bar:
            bar.append(Progress(total, prefix, quiet, stream))
        bar[0].advance(done - bar[0].done, "images checked")
        if done == total:
            bar[0].close()

    return report


def _amount(n: float, unit: str) -> str:
    return f"{n / 1e6:.1f} MB" if unit == "B" else f"{n:g}{unit}"


def say(text: str, quiet: bool = False, stream: TextIO | None = None) -> None:
    """One line about a long step that happens once (a download starts, a cache is filled): shown
    on terminals and in logs alike, unless quiet."""
    if not quiet:
        stream = stream or sys.stderr
        stream.write(f"sam-jax: {text}\n")
        stream.flush()


@contextlib.contextmanager
def status(text: str, quiet: bool = False, stream: TextIO | None = None) -> Iterator[None]:
    """`text ...` while a step runs, then its duration, and how much of it XLA spent compiling if it
    compiled (a `memory.CompileCounter` over the step): a one-time cost, as later calls reuse the
    programs (and later runs too, with the compilation cache). On a terminal only: a step is not an item."""
    stream = stream or sys.stderr
    show = not quiet and stream.isatty()
    if show:
        stream.write(f"sam-jax: {text} ...")
        stream.flush()
    t0 = time.perf_counter()
    try:
        with CompileCounter() as compiles:
            yield
    finally:
        if show:
            line = f" {time.perf_counter() - t0:.1f} s"
            if compiles.count():
                line += f" ({compiles.seconds:.1f} s of it compiling, a one-time cost)"
            stream.write(line + "\n")
            stream.flush()
