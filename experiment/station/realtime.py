"""A real-time session's process settings: no garbage collection pauses at random, a higher priority.

Python's cyclic garbage collector runs whenever enough objects were allocated, in whatever
the frame loop is doing at that moment (a full collection of a PsychoPy process takes tens
of milliseconds). `Realtime` collects and freezes everything allocated during set-up
(`gc.freeze`: the collector never scans it again), turns automatic collection off, and
collects only when `idle()` is told that the next event is far enough away (a fixation or
rest phase with more than `min_slack_s` to go), at most every `min_interval_s`; each
collection is logged (`gc` record) with its duration. It also asks the operating system
for a higher priority, what was obtained logged in a `priority` record, failure included:
without the privilege the run goes on at its normal priority. On Linux a niceness belongs
to a thread, not the process (`os.nice` changes only the calling thread), and the serial
readers, the cuff's heartbeat and guard and the log writer start before the run does: left
at their old niceness, any of them preempted while it holds the interpreter lock stalls the
frame loop behind every higher-priority task on the machine (a priority inversion). So the
niceness is set on every thread of the process (`/proc/self/task`; threads started later
inherit it from the thread that starts them) and the record says how many.
It also shortens Python's thread switch interval (`sys.setswitchinterval`, default 5 ms)
to `SWITCH_INTERVAL_S`: the cuff scheduler's and the serial readers' threads wake at their
times but must take the interpreter lock from the frame loop, which otherwise keeps it for
up to 5 ms while it runs Python code; the interval obtained is in the `priority` record.
On exit all three are put back (the process may be a test runner or the station). A real-time
scheduling policy (`os.sched_setscheduler` with SCHED_FIFO/RR) is not asked for the process:
the frame loop waits for flips partly by spinning, and at a real-time priority that spin
could starve the X server, the serial readers and the cuff's heartbeat on a two-core stimulus
computer. Only the cuff scheduler's thread, which sleeps until a command is due, asks for one
(`promote_thread`).

Only real-time modes use it; a headless run on a virtual clock has no frames to protect.
"""

from __future__ import annotations

import gc
import os
import sys
import threading
import time
from types import TracebackType
from typing import Callable, Union

from experiment.log.records import GcRecord, PriorityRecord

Record = Union[GcRecord, PriorityRecord]

NICE_INCREMENT = -10          # asked for; an unprivileged process gets a PermissionError and stays
MIN_SLACK_S = 0.5             # collect only when the next event is at least this far away
MIN_INTERVAL_S = 5.0          # and not more often than this
SWITCH_INTERVAL_S = 0.0005    # a waiting thread gets the interpreter lock within about this long


class Realtime:
    """Context manager (see the module docstring); `log` receives the `gc` and `priority` records."""

    def __init__(self, *, now: Callable[[], float], log: Callable[[Record], None],
                 min_slack_s: float = MIN_SLACK_S, min_interval_s: float = MIN_INTERVAL_S,
                 nice_increment: int = NICE_INCREMENT) -> None:
        self._now = now
        self._log = log
        self.min_slack_s = min_slack_s
        self.min_interval_s = min_interval_s
        self._nice_increment = nice_increment
        self._was_enabled = True
        self._switch_before = sys.getswitchinterval()
        self._nice_before: int | None = None
        self._nice_now: int | None = None
        self._other_threads: dict[int, int] = {}   # kernel thread id -> its niceness before the run (raised ones)
        self._threads_before: set[int] = set()     # every thread there was when the run began
        self._last_collect = -float("inf")
        self.collections = 0
        self._active = False

    def __enter__(self) -> "Realtime":
        self._was_enabled = gc.isenabled()
        t_start = time.perf_counter()
        collected = gc.collect()
        gc.freeze()
        gc.disable()
        self._active = True
        self._log({"kind": "gc", "t": self._now(), "action": "freeze", "collected": collected,
                   "duration_s": time.perf_counter() - t_start, "frozen": gc.get_freeze_count()})
        self._last_collect = self._now()
        self._switch_before = sys.getswitchinterval()
        sys.setswitchinterval(SWITCH_INTERVAL_S)
        record = self._raise_priority()
        record["switch_interval_s"] = sys.getswitchinterval()
        self._log(record)
        return self

    def _raise_priority(self) -> PriorityRecord:
        t, asked = self._now(), f"nice {self._nice_increment:+d}"
        if not hasattr(os, "nice"):
            return {"kind": "priority", "t": t, "asked": asked, "obtained": False,
                    "message": "os.nice is not available on this system"}
        try:
            self._nice_before = os.nice(0)
            self._nice_now = os.nice(self._nice_increment)
        except OSError as exc:
            return {"kind": "priority", "t": t, "asked": asked, "obtained": False, "nice": self._nice_before,
                    "message": f"priority not raised ({exc.strerror or exc}); the run goes on at nice "
                               f"{self._nice_before}"}
        record: PriorityRecord = {"kind": "priority", "t": t, "asked": asked, "obtained": True,
                                  "nice_before": self._nice_before, "nice": self._nice_now}
        tids = _thread_ids()
        if tids:   # Linux: a niceness per thread (elsewhere os.nice set the whole process's)
            self._threads_before = set(tids)
            self._other_threads = _raise_threads(tids, self._nice_now, skip=threading.get_native_id())
            record["threads"] = 1 + len(self._other_threads)
        return record

    def promote_thread(self, name: str) -> None:
        """On the calling thread: the lowest real-time priority (SCHED_FIFO 1) for that thread
        alone, logged as a `priority` record naming it. For a thread that sleeps until an
        instant and then must run at once (the cuff scheduler, whose write is due at a planned
        time): under the normal policy it waits its turn behind the frame loop, the X server and
        the devices' processes, milliseconds on two busy cores. It runs for well under a
        millisecond per command and sleeps otherwise, so it cannot starve the others (and Linux
        keeps 5 % of every second for normal threads in any case). Without the privilege
        (CAP_SYS_NICE, or an `rtprio` limit for the user) it stays as it was, and the record
        says why."""
        if not self._active or not hasattr(os, "sched_setscheduler"):
            return
        t, asked = self._now(), "SCHED_FIFO 1"
        try:
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1))   # 0: the calling thread (Linux)
        except OSError as exc:
            self._log({"kind": "priority", "t": t, "asked": asked, "obtained": False, "thread": name,
                       "message": f"{name} thread not raised ({exc.strerror or exc}); it runs at the "
                                  "process's priority"})
            return
        self._log({"kind": "priority", "t": t, "asked": asked, "obtained": True, "thread": name})

    def idle(self, slack_s: float, *, quiet: bool = True) -> None:
        """The loop has `slack_s` until its next event; `quiet`: nothing on screen moves (no
        rating scale). Collect now if that is enough room and the last collection is old enough."""
        if not self._active or not quiet or slack_s < self.min_slack_s:
            return
        now = self._now()
        if now - self._last_collect < self.min_interval_s:
            return
        t_start = time.perf_counter()
        collected = gc.collect()
        duration_s = time.perf_counter() - t_start
        self._last_collect = self._now()
        self.collections += 1
        self._log({"kind": "gc", "t": now, "action": "collect", "collected": collected, "duration_s": duration_s,
                   "slack_s": slack_s})

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._active = False
        sys.setswitchinterval(self._switch_before)
        gc.unfreeze()
        if self._was_enabled:
            gc.enable()
        if self._nice_before is not None and self._nice_now is not None and self._nice_now != self._nice_before:
            try:
                os.nice(self._nice_before - self._nice_now)
            except OSError:
                pass   # lowering the priority again needs no privilege; raising it back might
            # the threads raised back to where they were; one started during the run inherited
            # the run's niceness and goes to the process's old one
            for tid in _thread_ids():
                if tid in self._other_threads:
                    _set_nice(tid, self._other_threads[tid])
                elif tid not in self._threads_before and _nice_of(tid) == self._nice_now:
                    _set_nice(tid, self._nice_before)


def _thread_ids() -> list[int]:
    """The process's threads by kernel id; empty where the system does not list them (not Linux)."""
    try:
        return [int(name) for name in os.listdir("/proc/self/task")]
    except OSError:
        return []


def _nice_of(tid: int) -> int | None:
    try:
        return os.getpriority(os.PRIO_PROCESS, tid)
    except OSError:
        return None


def _set_nice(tid: int, nice: int) -> bool:
    """Set thread `tid`'s niceness; False if it ended or may not be changed."""
    try:
        os.setpriority(os.PRIO_PROCESS, tid, nice)
    except OSError:
        return False
    return True


def _raise_threads(tids: list[int], nice: int, *, skip: int) -> dict[int, int]:
    """Raise the threads `tids` but `skip` to the niceness `nice` (a thread already at that
    priority or above is left alone); the old niceness of each one changed."""
    old: dict[int, int] = {}
    for tid in tids:
        was = _nice_of(tid)
        if tid != skip and was is not None and was > nice and _set_nice(tid, nice):
            old[tid] = was
    return old
