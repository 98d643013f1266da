"""The operator's console: a live status line, warnings as they happen, a summary.

On a terminal the status line is redrawn in place about twice a second; when output
is a file or pipe (CI, logs) a status line is printed every few seconds instead.
Warnings and safety events always get a line of their own.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import TextIO


@dataclass
class Status:
    trial: int = 0
    n_trials: int = 0
    phase: str = "-"
    next_event_in_s: float | None = None
    target_kpa: float | None = None
    pressure_kpa: float | None = None
    pulses: int = 0
    pulses_expected: int = 0

    def line(self, dry_run: bool) -> str:
        nxt = "-" if self.next_event_in_s is None else f"{self.next_event_in_s:5.1f}s"
        tgt = "-" if self.target_kpa is None else f"{self.target_kpa:.1f}"
        p = "-" if self.pressure_kpa is None else f"{self.pressure_kpa:5.1f}"
        mark = "[DRY RUN] " if dry_run else ""
        return (f"{mark}trial {self.trial}/{self.n_trials}  {self.phase:<20} next in {nxt}  "
                f"cuff {p} kPa (target {tgt})  pulses {self.pulses}/{self.pulses_expected}")


class OperatorConsole:
    def __init__(self, *, stream: TextIO | None = None, dry_run: bool = False,
                 interval_s: float | None = None) -> None:
        self.out = stream or sys.stdout
        self.dry_run = dry_run
        self.tty = bool(getattr(self.out, "isatty", lambda: False)())
        self.interval_s = interval_s if interval_s is not None else (0.5 if self.tty else 5.0)
        self._last_t: float | None = None
        self._in_place = False

    def _newline_if_needed(self) -> None:
        if self._in_place:
            self.out.write("\n")
            self._in_place = False

    def say(self, text: str) -> None:
        self._newline_if_needed()
        prefix = "[DRY RUN] " if self.dry_run else ""
        self.out.write(f"{prefix}{text}\n")
        self.out.flush()

    def warn(self, text: str) -> None:
        self.say(f"WARNING: {text}")

    def update(self, status: Status, now: float) -> None:
        if self._last_t is not None and now - self._last_t < self.interval_s:
            return
        self._last_t = now
        if self.tty:
            self.out.write("\r\x1b[2K" + status.line(self.dry_run))
            self._in_place = True
        else:
            self.out.write(status.line(self.dry_run) + "\n")
        self.out.flush()

    def finish(self) -> None:
        self._newline_if_needed()
