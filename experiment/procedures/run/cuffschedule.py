"""Cuff commands at their planned times, from a thread that does not wait for the frame loop.

The trial loop hands over a phase's cuff command once its time can no longer move (no
unreached target before it) and it is near (`HORIZON_S`); the scheduler writes it at its
planned time through the cuff supervisor, which checks it as every other command (ceiling,
time limits, a queued emergency vent refuses it). A phase with `cuff_at: flip` is not handed
over: its command stays on the flip that shows the phase.

`prepare(fn)` runs a step at once on the same thread, ahead of the commands (the ramp rate
a SET needs, sent while the cuff is idle, so the SET itself is not delayed by RATE's round
trip). What a command raises (a refused stimulus, a device fault) is kept and raised in the frame
loop at its next `check()`; after an error nothing more is sent. `cancel()` (a participant
stop, the end of the loop) waits for a command being written to finish, so a vent that
follows it is always the last word. `on_start` runs first on the thread (a real-time run
gives the thread a real-time priority there: `Realtime.promote_thread`). On a `VirtualClock`
(headless runs) commands run from clock timers instead of a thread, so a headless run stays
single-threaded and reproducible.
"""

from __future__ import annotations

import heapq
import threading
from types import TracebackType
from typing import Callable

from experiment.clock import Clock, VirtualClock

HORIZON_S = 0.25    # hand a command over this long before its time (its time is fixed by then)
SPIN_S = 0.002      # the thread sleeps until this close to a command's time, then waits in short steps

Command = Callable[[float], None]   # called with its planned time


class CuffScheduler:
    """Context manager; `schedule(i, planned_t, command)` from the frame loop (see the module docstring)."""

    def __init__(self, clock: Clock, *, on_start: Callable[[], None] | None = None) -> None:
        self._clock = clock
        self._on_start = on_start                 # run first on the scheduler's thread (its priority)
        self._queue: list[tuple[float, int, Command]] = []
        self._prepares: list[Callable[[], None]] = []
        self._cond = threading.Condition()
        self._writing = threading.Lock()          # held while a command is written
        self._closed = False
        self.error: BaseException | None = None
        self.handed: set[int] = set()             # plan indices handed over (run or cancelled)
        self.written: set[int] = set()            # plan indices whose command ran
        self._virtual = isinstance(clock, VirtualClock)
        self._timers: list[int] = []
        self._thread: threading.Thread | None = None

    def __enter__(self) -> "CuffScheduler":
        if not self._virtual:
            self._thread = threading.Thread(target=self._run, name="cuff-scheduler", daemon=True)
            self._thread.start()
        return self

    def schedule(self, i: int, planned_t: float, command: Command) -> None:
        """Write `command` at `planned_t` (at once if that has passed)."""
        self.handed.add(i)
        if isinstance(self._clock, VirtualClock):
            self._timers.append(self._clock.call_at(planned_t, lambda: self._execute(planned_t, i, command)))
            return
        with self._cond:
            heapq.heappush(self._queue, (planned_t, i, command))
            self._cond.notify()

    def prepare(self, step: Callable[[], None]) -> None:
        """Run `step` on the scheduler's thread now (on a virtual clock: at the current time)."""
        if isinstance(self._clock, VirtualClock):
            self._timers.append(self._clock.call_at(self._clock.now(), lambda: self._guarded(step)))
            return
        with self._cond:
            self._prepares.append(step)
            self._cond.notify()

    def check(self) -> None:
        """Raise what a command raised (in the frame loop's thread)."""
        if self.error is not None:
            raise self.error

    def cancel(self) -> None:
        """Drop every command not yet written; returns once none is being written."""
        with self._cond:
            self._queue.clear()
            self._prepares.clear()
        if isinstance(self._clock, VirtualClock):
            for handle in self._timers:
                self._clock.cancel(handle)
            self._timers.clear()
        with self._writing:
            pass

    def _run(self) -> None:
        if self._on_start is not None:
            self._on_start()
        while True:
            with self._cond:
                if self._closed:
                    return
                job = self._next_job()
            if job is not None:
                job()

    def _next_job(self) -> Callable[[], None] | None:
        """A prepare step, else the first command once its time has come, else None after a
        wait (the caller holds the condition's lock)."""
        if self._prepares:
            step = self._prepares.pop(0)
            return lambda: self._guarded(step)
        if not self._queue:
            self._cond.wait(0.1)
            return None
        planned_t = self._queue[0][0]
        wait_s = planned_t - self._clock.now()
        if wait_s > 0:
            self._cond.wait(max(wait_s - SPIN_S, 0.0) if wait_s > SPIN_S else 0.0002)
            return None
        _, i, command = heapq.heappop(self._queue)
        return lambda: self._execute(planned_t, i, command)

    def _execute(self, planned_t: float, i: int, command: Command) -> None:
        def write() -> None:
            self.written.add(i)
            command(planned_t)
        self._guarded(write)

    def _guarded(self, fn: Callable[[], None]) -> None:
        """Run `fn` unless an error or close came first; keep what it raises for `check()`."""
        with self._writing:
            if self.error is not None or self._closed:
                return
            try:
                fn()
            except BaseException as exc:  # noqa: BLE001 - handed to the frame loop, which raises it
                self.error = exc

    def close(self) -> None:
        """Cancel what is left and join the thread."""
        self.cancel()
        with self._cond:
            self._closed = True
            self._cond.notify()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(2.0)
            if self._thread.is_alive():
                raise RuntimeError("the cuff scheduler's thread did not stop within 2 s")

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
