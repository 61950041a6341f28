"""Progress that reads well both on a terminal and in a log file.

`tqdm(...)` is a drop-in for `tqdm.auto.tqdm`: on a terminal it is tqdm itself; when its stream
is not a TTY (a log file, a pipe, a captured test) tqdm's carriage-return redraws would pile
up into one line of tens of kilobytes, so it prints plain complete lines instead, at most one
every SSL_AVER_PROGRESS_INTERVAL seconds (default 30) and one when the bar closes:

    features speech: 120/656 clips (18%), 43.2 clip/s, elapsed 0:02, eta 0:12
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any, TextIO

from tqdm.auto import tqdm as _tqdm

from ssl_aver.errors import UserError

INTERVAL_ENV = "SSL_AVER_PROGRESS_INTERVAL"
DEFAULT_INTERVAL_S = 30.0


def tqdm(
    iterable: Iterable[Any] | None = None,
    desc: str | None = None,
    total: float | None = None,
    leave: bool = True,
    file: TextIO | None = None,
    unit: str = "it",
    disable: bool = False,
    initial: float = 0,
    **kwargs: Any,
) -> _tqdm | LineProgress:
    """A tqdm bar on a TTY, else a LineProgress on the same stream (`kwargs`: tqdm's display options).

    A LineProgress ignores `kwargs` (bar width, colour, position have no meaning in a log line)
    and prints its last line even with leave=False: a log keeps what was done.
    """
    stream = file if file is not None else sys.stderr
    if disable or _is_tty(stream):
        return _tqdm(iterable, desc=desc, total=total, leave=leave, file=file, unit=unit, disable=disable, initial=initial, **kwargs)
    return LineProgress(iterable, desc=desc, total=total, stream=stream, unit=unit, initial=initial, interval=interval_s())


def interval_s() -> float:
    """Seconds between two progress lines in a log: env SSL_AVER_PROGRESS_INTERVAL, default 30."""
    raw = os.environ.get(INTERVAL_ENV, "").strip()
    if not raw:
        return DEFAULT_INTERVAL_S
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value >= 0:  # also NaN; inf is allowed: only the final line
        raise UserError(f"{INTERVAL_ENV} must be a number of seconds >= 0 (inf: final lines only), got {raw!r}")
    return value


class LineProgress:
    """tqdm's interface (iterate, update, total, refresh, close, with-block) printing whole lines."""

    def __init__(
        self,
        iterable: Iterable[Any] | None = None,
        desc: str | None = None,
        total: float | None = None,
        stream: TextIO | None = None,
        unit: str = "it",
        initial: float = 0,
        interval: float = DEFAULT_INTERVAL_S,
    ) -> None:
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)  # type: ignore[arg-type]
        self.iterable = iterable
        self.desc = desc
        self.total = total
        self.unit = unit
        self.n = initial
        self.stream = stream if stream is not None else sys.stderr
        self.interval = interval
        self._initial = initial
        self._start = self._last = time.monotonic()
        self._closed = False
        self._shown: float | None = None  # the count of the last line printed

    def __iter__(self) -> Iterator[Any]:
        if self.iterable is None:
            raise TypeError("this progress has no iterable; call update() instead")
        try:
            for item in self.iterable:
                yield item
                self.update(1)
        finally:
            self.close()

    def __enter__(self) -> "LineProgress":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def update(self, n: float = 1) -> None:
        """Count `n` more; print a line when the interval has passed since the last one."""
        self.n += n
        now = time.monotonic()
        if now - self._last >= self.interval and not self._closed:
            self._last = now
            self._write(now)

    def refresh(self) -> None:
        """Nothing to redraw: lines are printed by update() on the interval and by close()."""

    def close(self) -> None:
        """Print the final line, unless the last line printed already says it."""
        if not self._closed:
            self._closed = True
            if self._shown != self.n:
                self._write(time.monotonic())

    def line(self, now: float | None = None) -> str:
        """The progress line: 'desc: 120/656 clips (18%), 43.2 clip/s, elapsed 0:02, eta 0:12'."""
        elapsed = (time.monotonic() if now is None else now) - self._start
        done = self.n - self._initial
        rate = done / elapsed if elapsed > 0 else 0.0
        count = f"{_number(self.n)}/{_number(self.total)}" if self.total is not None else _number(self.n)
        parts = [f"{count} {_plural(self.unit)}" + (f" ({100 * self.n / self.total:.0f}%)" if self.total else "")]
        if rate >= 1:
            parts.append(f"{rate:.{0 if rate >= 100 else 1}f} {self.unit}/s")
        elif rate > 0:
            parts.append(f"{1 / rate:.1f} s/{self.unit}")
        parts.append(f"elapsed {_clock(elapsed)}")
        if self.total and rate > 0 and 0 < self.n < self.total and not self._closed:
            parts.append(f"eta {_clock((self.total - self.n) / rate)}")
        return (f"{self.desc}: " if self.desc else "") + ", ".join(parts)

    def _write(self, now: float) -> None:
        self._shown = self.n
        self.stream.write(self.line(now) + "\n")
        self.stream.flush()


def _is_tty(stream: Any) -> bool:
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:  # a closed stream
        return False


def _number(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:.1f}"


def _plural(unit: str) -> str:
    if unit == "it":
        return unit
    return unit + ("es" if unit.endswith(("s", "sh", "ch", "x", "z")) else "s")


def _clock(seconds: float) -> str:
    """0:02, 12:34 or 1:02:03."""
    s = int(seconds)
    h, rest = divmod(s, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"
