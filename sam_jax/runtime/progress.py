"""The one progress and status display of every long step (loading, compiling, embedding,
generating, downloading, training). Our own, on stderr, rather than a dependency; never silent
for long, and nothing at all when quiet but the lines that must be seen (`Progress.message`).

On a terminal: a bar, or a status line, redrawn in place as the width of the terminal allows,
with the seconds a running step has taken so far. Otherwise (logs, CI, notebooks, a pipe): plain
lines and no carriage returns: one when a long step starts, one when it ends (with its time), one
per finished item, and, while a step runs on with nothing written, a line with its time so far
every `HEARTBEAT_SECONDS` (every `SLOW_HEARTBEAT_SECONDS` once it has run a minute, so that the
log of a slow step stays short).
"""

from __future__ import annotations

import contextlib
import importlib
import io
import os
import shutil
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import TextIO

BAR_WIDTH = 30
REDRAW_SECONDS = 0.1  # byte counts arrive per chunk: redraw a terminal bar at most this often
TICK_SECONDS = 1.0  # how often a running step's time is redrawn on a terminal (and a heartbeat considered)
HEARTBEAT_SECONDS = 5.0  # logs: the longest silence while a step runs
SLOW_HEARTBEAT_SECONDS = 30.0  # ... after the step's first minute

_lock = threading.Lock()  # lines come from worker threads and tickers too
_open: dict[int, int] = {}  # id(stream) -> length of the bar or status line drawn there without its newline
_last_line = [time.monotonic()]  # when this module last wrote a line (for the heartbeats)


def _width(stream: TextIO) -> int:
    """The columns of the terminal behind `stream` (else $COLUMNS, the process's terminal, or 80)."""
    try:
        columns = os.get_terminal_size(stream.fileno()).columns
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        columns = 0
    return columns or shutil.get_terminal_size().columns  # 0: a terminal that never said its size


def _write_line(stream: TextIO, text: str) -> None:
    """A whole line, after the newline that ends a bar drawn before it."""
    with _lock:
        if _open.pop(id(stream), None) is not None:
            stream.write("\n")
        stream.write(text + "\n")
        stream.flush()
        _last_line[0] = time.monotonic()


def _draw(stream: TextIO, text: str, end: bool = False) -> None:
    """Terminal only: `text` in place of the line drawn before, cut to the terminal's width (a
    line that wrapped could not be redrawn); `end` finishes the line, uncut."""
    with _lock:
        if not end:
            text = text[: max(_width(stream) - 1, 20)]
        previous = _open.pop(id(stream), None)
        line = text if previous is None else "\r" + text.ljust(previous)
        stream.write(line + ("\n" if end else ""))
        stream.flush()
        if end:
            _last_line[0] = time.monotonic()
        else:
            _open[id(stream)] = len(text)


def _heartbeat_due(elapsed: float, since: float = 0.0) -> bool:
    """Logs: whether a running step (running for `elapsed` seconds, since `since` on the monotonic
    clock) has been silent long enough for a line with its time so far."""
    quiet_for = time.monotonic() - max(_last_line[0], since)
    return quiet_for >= (HEARTBEAT_SECONDS if elapsed < 60 else SLOW_HEARTBEAT_SECONDS)


@contextlib.contextmanager
def _ticking(tick: Callable[[float], None]) -> Iterator[None]:
    """Calls `tick(seconds since the block began)` about every TICK_SECONDS on a daemon thread
    while the block runs."""
    t0, stop = time.perf_counter(), threading.Event()

    def loop() -> None:
        while not stop.wait(TICK_SECONDS):
            tick(time.perf_counter() - t0)

    thread = threading.Thread(target=loop, name="sam-jax progress", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


class Progress:
    """Counts items (or bytes, `unit="B"`) towards `total`, from `start`: a bar on a terminal,
    lines otherwise (one per item, see `running` and `step`; byte counts every few seconds)."""

    def __init__(self, total: int, prefix: str = "sam-jax", quiet: bool = False, stream: TextIO | None = None,
                 unit: str = "", start: int = 0):
        self.total, self.done, self.prefix, self.quiet, self.unit = total, start, prefix, quiet, unit
        self.begun = start  # items started (`running`)
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self._start = self._drawn = time.perf_counter()
        self._began = time.monotonic()

    @contextlib.contextmanager
    def running(self, text: str, log: bool = True) -> Iterator[None]:
        """An item runs during the block: on a terminal the bar says `text` and the seconds so
        far; otherwise a line `[i/n] text ...` when it starts (unless not `log`: an item too
        short and too frequent for a line of its own, such as a training step) and one with its
        time so far when it has been silent for a while. Worker threads may run items at once."""
        with _lock:
            self.begun = index = max(self.begun, self.done) + 1  # items counted done unbegun (skipped) included
        if self.quiet:
            yield
            return
        if self.tty:
            self._draw(f"{text} ...")
        elif log:
            _write_line(self.stream, f"[{index}/{self.total}] {text} ...")

        def tick(elapsed: float) -> None:
            if self.tty:
                self._draw(f"{text} ... {elapsed:.0f} s")
            elif _heartbeat_due(elapsed):
                _write_line(self.stream, f"[{index}/{self.total}] {text} ... {elapsed:.0f} s so far")

        with _ticking(tick):
            yield

    def step(self, text: str, log: bool = True) -> None:
        """One item done; `text` says what became of it (a line of its own in logs, if `log`)."""
        with _lock:
            self.done += 1
        if self.quiet:
            return
        if self.tty:
            self._draw(text)
        elif log:
            _write_line(self.stream, f"[{self.done}/{self.total}] {text}")

    def advance(self, n: int, text: str = "") -> None:
        """`n` more units done (bytes of a download, images checked): redraws the bar on a
        terminal, now and then; in logs a line when the count has been silent for a while."""
        self.done += n
        now = time.perf_counter()
        if self.quiet:
            return
        count = self._count()
        if not self.tty:
            if self.done < self.total and _heartbeat_due(now - self._start, self._began):
                _write_line(self.stream, f"{self.prefix}: {count} {text}".rstrip())
            return
        if now - self._drawn < REDRAW_SECONDS and self.done < self.total:
            return
        self._drawn = now
        rate = self.done / max(now - self._start, 1e-9)
        self._draw(f"{_amount(rate, self.unit)}/s {text}" if self.unit else text)

    def message(self, text: str, counts: bool = True) -> None:
        """A line that must be seen even when quiet (a skipped input, a warning)."""
        with _lock:
            self.done += counts
        _write_line(self.stream, f"{self.prefix}: {text}")

    def close(self) -> None:
        """Ends the bar's line (on a terminal)."""
        with _lock:
            if _open.pop(id(self.stream), None) is not None:
                self.stream.write("\n")
                self.stream.flush()

    def _count(self) -> str:
        if self.unit:
            return f"{_amount(self.done, self.unit)}/{_amount(self.total, self.unit)}"
        return f"{self.done}/{self.total}"

    def _draw(self, text: str) -> None:
        filled = int(BAR_WIDTH * min(self.done / max(self.total, 1), 1.0))
        _draw(self.stream, f"[{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {self._count()} {text}")


def checking(prefix: str, quiet: bool = False, stream: TextIO | None = None) -> Callable[[int, int], None]:
    """A `(done, total)` callback for checks of many small items (the images of a data set at
    start-up): a line when they start, then a bar on a terminal; otherwise the count when it has
    been silent for a while (a data set's checks end in its one-line summary)."""
    bar: list[Progress] = []

    def report(done: int, total: int) -> None:
        if not bar:
            bar.append(Progress(total, prefix, quiet, stream))
            if not quiet and not bar[0].tty:
                _write_line(bar[0].stream, f"{prefix} {total} images ...")
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
        _write_line(stream or sys.stderr, f"sam-jax: {text}")


@contextlib.contextmanager
def status(text: str, quiet: bool = False, stream: TextIO | None = None) -> Iterator[None]:
    """`text ...` while a step runs (on a terminal with the seconds so far, redrawn; in logs a
    line when it starts and one when it has been silent for a while), then its duration, and how
    much of it XLA spent compiling if it compiled (a `memory.CompileCounter` over the step): a
    one-time cost, as later calls reuse the programs (and later runs too, with the compilation
    cache)."""
    stream = stream or sys.stderr
    if quiet:
        yield
        return
    tty = stream.isatty()
    if tty:
        _draw(stream, f"sam-jax: {text} ...")
    else:
        _write_line(stream, f"sam-jax: {text} ...")

    def tick(elapsed: float) -> None:
        if tty:
            _draw(stream, f"sam-jax: {text} ... {elapsed:.0f} s")
        elif _heartbeat_due(elapsed):
            _write_line(stream, f"sam-jax: {text} ... {elapsed:.0f} s so far")

    t0, compiles = time.perf_counter(), None
    try:
        with _ticking(tick):
            # Imported here, not with this module: a command shows its first line before JAX is imported.
            with importlib.import_module(".memory", __package__).CompileCounter() as compiles:
                yield
    finally:
        seconds = f"{time.perf_counter() - t0:.1f} s"
        if compiles is not None and compiles.count():
            seconds += f" ({compiles.seconds:.1f} s of it compiling, a one-time cost)"
        if tty:
            _draw(stream, f"sam-jax: {text} ... {seconds}", end=True)
        else:
            _write_line(stream, f"sam-jax: {text}: {seconds}")
