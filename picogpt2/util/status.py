"""What picogpt2 tells its user while it works, on stderr.

Status never goes to stdout (that is the text a command produces), and
nothing is written when stderr is closed. Progress redraws one line on a
terminal; in a log (stderr not a terminal) it writes a single summary line
when done, so logs hold no carriage returns or repeated lines.

Quiet is the one switch for all of it: a command's ``--quiet`` sets it for
the process (``set_quiet``), a library call's ``show_progress=False`` for
the call (``quiet``); the code that reports progress never asks.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

REFRESH_S = 0.2  # the shortest time between two redraws of a progress line
CLEAR_LINE = "\r\033[K"
# A context variable, so that a quiet call in one thread silences no other.
_quiet: ContextVar[bool] = ContextVar("picogpt2_quiet", default=False)


def set_quiet(quiet: bool) -> None:
    """Status on (False) or off (True) from here on: a command's --quiet."""
    _quiet.set(quiet)


@contextmanager
def quiet(silent: bool = True) -> Iterator[None]:
    """No status inside the block when ``silent`` (a library call's
    ``show_progress=False``)."""
    token = _quiet.set(silent or _quiet.get())
    try:
        yield
    finally:
        _quiet.reset(token)


def status(message: str, end: str = "\n") -> None:
    """A status line on stderr, unless quiet (see ``error``)."""
    if not _quiet.get():
        error(message, end)


def error(message: str, end: str = "\n") -> None:
    """A line on stderr, even when quiet; nothing if stderr is closed."""
    stream = sys.stderr
    if stream is None:  # the process was started with stderr closed
        return
    try:
        stream.write(message + end)
        stream.flush()
    except (OSError, ValueError):
        pass


def on_terminal() -> bool:
    stream = sys.stderr
    try:
        return stream is not None and stream.isatty()
    except (OSError, ValueError):
        return False


class Progress:
    """Progress of one long task: ``update(n)`` as work is done, ``finish()``
    at the end. ``scale`` and ``unit`` say how to show amounts (1e6 and "MB"
    for bytes). On a terminal, one line redrawn: done/total, percent, rate
    and time left; elsewhere one line at the end."""

    def __init__(
        self, label: str, total: int | None, done: int = 0, *, unit: str = "MB", scale: float = 1e6
    ) -> None:
        self.label, self.total, self.unit, self.scale = label, total, unit, scale
        self.done = self.start_done = done
        self.tty = on_terminal()
        self.start = self.last = time.monotonic()

    def update(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if self.tty and now - self.last >= REFRESH_S:
            self.last = now
            status(CLEAR_LINE + self.line(now), end="")

    def finish(self) -> None:
        line = self.line(time.monotonic(), final=True)
        status(CLEAR_LINE + line if self.tty else line)

    def line(self, now: float, final: bool = False) -> str:
        seconds = max(now - self.start, 1e-9)
        rate = (self.done - self.start_done) / seconds / self.scale
        amount = f"{self.done / self.scale:,.1f}" if self.scale > 1 else f"{self.done:,}"
        text = f"{self.label}  {amount}"
        if self.total and not final:
            left = (self.total - self.done) / self.scale / rate if rate > 0 else 0
            total = f"{self.total / self.scale:,.1f}" if self.scale > 1 else f"{self.total:,}"
            text += f"/{total} {self.unit}  {100 * self.done / self.total:5.1f}%"
            text += f"  {rate:,.1f} {self.unit}/s  {int(left) // 60}:{int(left) % 60:02d} left"
        else:
            text += f" {self.unit} in {seconds:.1f} s ({rate:,.1f} {self.unit}/s)"
        return text
