"""The one clock of a run, real or virtual.

Every timestamp in a run (flips, pulses, cuff writes and acknowledgements, pressure
samples, key presses) is read from one `Clock`. In a real run it is PsychoPy's clock
(`psychopy.clock.getTime`, which is `psychtoolbox.GetSecs` when psychtoolbox is
installed), the same time base as PsychoPy's keyboard event timestamps. Tools that
never open a window (rig-check, simulate-cuff) use `time.perf_counter`.

A `VirtualClock` drives headless runs: time only moves when somebody sleeps, and
simulated devices schedule what they would do in real time (pulses, telemetry,
watchdog expiry) with `call_at`, so a 7-minute protocol runs in seconds with the same
code path and the same log.
"""

from __future__ import annotations

import heapq
import itertools
import time
from typing import Callable, Protocol


class Clock(Protocol):
    """What every part of a run reads time from."""

    name: str
    virtual: bool

    def now(self) -> float:
        """Seconds on this clock's time base."""

    def sleep_until(self, t: float) -> None:
        """Return at (not before) time `t`; returns at once if `t` has passed."""

    def sleep(self, duration_s: float) -> None:
        """Sleep for `duration_s`; for device I/O pacing only, never for schedules."""


class RealClock:
    """Wall-time clock around a monotonic `now` function.

    `sleep_until` sleeps coarsely, then spins for the last `spin_s` so deadlines are
    met to well under a millisecond without burning a core the whole time.
    """

    virtual = False

    def __init__(self, now: Callable[[], float] = time.perf_counter, *, name: str = "time.perf_counter",
                 spin_s: float = 0.002) -> None:
        self._now = now
        self.name = name
        self._spin_s = spin_s

    def now(self) -> float:
        return self._now()

    def sleep_until(self, t: float) -> None:
        while True:
            remaining = t - self._now()
            if remaining <= 0:
                return
            if remaining > self._spin_s:
                time.sleep(remaining - self._spin_s)
            else:
                # spin the last stretch, but yield the GIL on each turn: a pure-Python
                # spin would delay the serial reader threads' timestamps by milliseconds
                time.sleep(0)

    def sleep(self, duration_s: float) -> None:
        """A plain sleep: pacing a poll needs no spin (a spin in every 5 ms poll burns 40 % of a core)."""
        if duration_s > 0:
            time.sleep(duration_s)


def psychopy_clock() -> RealClock:
    """The clock of PsychoPy's flips and keyboard timestamps (imports PsychoPy)."""
    from psychopy import clock as ppclock  # local import: PsychoPy is heavy

    return RealClock(ppclock.getTime, name="psychopy.clock.getTime")


class VirtualClock:
    """Simulated time for headless runs; timers fire in order as time advances.

    Not thread-safe by design: a headless run is single-threaded, so its results are
    reproducible to the last digit.
    """

    virtual = True
    name = "virtual"

    def __init__(self, start: float = 0.0) -> None:
        self._t = float(start)
        self._timers: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()
        self._cancelled: set[int] = set()

    def now(self) -> float:
        return self._t

    def call_at(self, t: float, fn: Callable[[], None]) -> int:
        """Run `fn` when the clock reaches `t` (at once on the next advance if past)."""
        handle = next(self._seq)
        heapq.heappush(self._timers, (max(float(t), self._t), handle, fn))
        return handle

    def call_later(self, delay_s: float, fn: Callable[[], None]) -> int:
        return self.call_at(self._t + delay_s, fn)

    def cancel(self, handle: int) -> None:
        self._cancelled.add(handle)

    def sleep_until(self, t: float) -> None:
        t = float(t)
        while self._timers and self._timers[0][0] <= t:
            when, handle, fn = heapq.heappop(self._timers)
            if handle in self._cancelled:
                self._cancelled.discard(handle)
                continue
            self._t = max(self._t, when)
            fn()
        self._t = max(self._t, t)

    def sleep(self, duration_s: float) -> None:
        self.sleep_until(self._t + max(0.0, duration_s))

    def run_pending(self) -> None:
        """Fire the timers due at the current time."""
        self.sleep_until(self._t)
