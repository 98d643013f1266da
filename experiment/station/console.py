"""The operator's console: a live status line, warnings as they happen, a summary.

On a terminal the status line is redrawn in place about twice a second; when output
is a file or pipe (CI, logs) a status line is printed every few seconds instead.
Warnings and safety events always get a line of their own.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Callable, TextIO


@dataclass
class Status:
    trial: int = 0
    n_trials: int = 0
    phase: str = "-"
    next_event_in_s: float | None = None
    target_kpa: float | None = None
    pressure_kpa: float | None = None
    pulses: int = 0               # pulses of stored volumes (from t0 on)
    pulses_expected: int = 0      # stored volumes the scan declares
    pulses_discarded: int = 0     # pulses before t0 (volumes discarded), not counted against the volumes

    def line(self, dry_run: bool) -> str:
        nxt = "-" if self.next_event_in_s is None else f"{self.next_event_in_s:5.1f}s"
        tgt = "-" if self.target_kpa is None else f"{self.target_kpa:.1f}"
        p = "-" if self.pressure_kpa is None else f"{self.pressure_kpa:5.1f}"
        mark = "[DRY RUN] " if dry_run else ""
        if self.trial > 0:
            where = f"trial {self.trial}/{self.n_trials}"
        else:   # the lead-in before the first trial, or the closing fixation after the last
            where = "before trial 1" if self.phase == "lead_in" else f"after trial {self.n_trials}"
        discarded = f" (+{self.pulses_discarded} discarded)" if self.pulses_discarded else ""
        return (f"{mark}{where}  {self.phase:<20} next in {nxt}  "
                f"cuff {p} kPa (target {tgt})  pulses {self.pulses}/{self.pulses_expected}{discarded}")


class ClosedSafeStream:
    """A text stream that survives its reader going away (`cuedpain run | tee` ending,
    `cuedpain validate P | head -1`, a closed terminal).

    The first failed write or flush marks it broken, points its file descriptor at the
    null device (so the interpreter's own flush at exit cannot fail either) and tells the
    listeners once; later output is dropped. A run never stops because nobody reads its
    console: everything the console says is also in the run's log.
    """

    def __init__(self, inner: TextIO) -> None:
        self.inner = inner
        self.broken: BaseException | None = None
        self._listeners: list[Callable[[BaseException], None]] = []

    def on_break(self, fn: Callable[[BaseException], None]) -> None:
        """Call `fn(error)` once when the stream breaks (at once if it already has)."""
        if self.broken is not None:
            fn(self.broken)
        else:
            self._listeners.append(fn)

    def write(self, text: str) -> int:
        if self.broken is None:
            try:
                return self.inner.write(text)
            except (OSError, ValueError) as exc:
                self._break(exc)
        return len(text)

    def flush(self) -> None:
        if self.broken is None:
            try:
                self.inner.flush()
            except (OSError, ValueError) as exc:
                self._break(exc)

    def isatty(self) -> bool:
        try:
            return self.broken is None and self.inner.isatty()
        except (OSError, ValueError):
            return False

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)

    def _break(self, exc: BaseException) -> None:
        self.broken = exc
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            try:
                os.dup2(devnull, self.inner.fileno())
            finally:
                os.close(devnull)
        except (OSError, ValueError, AttributeError):
            pass   # not a file descriptor (a test's StringIO): dropping the output is enough
        for fn in self._listeners:
            fn(exc)
        self._listeners.clear()


class OperatorConsole:
    """The operator's terminal. Output that cannot be written (a closed terminal or pipe)
    is dropped, and `on_lost(error)` is told once, so the run can log it and go on."""

    def __init__(self, *, stream: TextIO | None = None, dry_run: bool = False,
                 interval_s: float | None = None,
                 on_lost: Callable[[BaseException], None] | None = None) -> None:
        self.out = stream or sys.stdout
        self.dry_run = dry_run
        self.tty = bool(getattr(self.out, "isatty", lambda: False)())
        self.interval_s = interval_s if interval_s is not None else (0.5 if self.tty else 5.0)
        self._last_t: float | None = None
        self._in_place = False
        self._on_lost = on_lost
        self.lost: BaseException | None = None

    def _write(self, text: str) -> None:
        """Write and flush; a failure (or a stream already broken) marks the console lost."""
        if self.lost is not None:
            return
        try:
            self.out.write(text)
            self.out.flush()
        except (OSError, ValueError) as exc:
            self._lose(exc)
            return
        broken = getattr(self.out, "broken", None)
        if isinstance(broken, BaseException):
            self._lose(broken)

    def _lose(self, exc: BaseException) -> None:
        self.lost = exc
        if self._on_lost is not None:
            self._on_lost(exc)

    def _newline_if_needed(self) -> None:
        if self._in_place:
            self._write("\n")
            self._in_place = False

    def say(self, text: str) -> None:
        self._newline_if_needed()
        prefix = "[DRY RUN] " if self.dry_run else ""
        self._write(f"{prefix}{text}\n")

    def warn(self, text: str) -> None:
        self.say(f"WARNING: {text}")

    def update(self, status: Status, now: float) -> None:
        if self._last_t is not None and now - self._last_t < self.interval_s:
            return
        self._last_t = now
        if self.tty:
            self._write("\r\x1b[2K" + status.line(self.dry_run))
            self._in_place = True
        else:
            self._write(status.line(self.dry_run) + "\n")

    def finish(self) -> None:
        self._newline_if_needed()
