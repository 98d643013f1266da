"""Where a dropped frame's time went: the hypervisor, the guest's CPUs, or the run itself.

On a virtual machine the hypervisor can take a virtual CPU away for tens of milliseconds
(Linux counts it as *steal* time in /proc/stat); inside the guest a runnable thread can
wait for a CPU behind other tasks (its *run-queue wait*, field 2 of
/proc/PID/task/TID/schedstat). Neither is visible in the run's own log. `StallProbe` samples
both every `period_s` from the benchmark's process while a dry run goes on, stamped on the
run's clock (PsychoPy's, which all processes share): the steal of all CPUs together and the
run-queue wait of the run's frame-loop thread (its main thread).
`attribute_drops` then says, for each `frame_drop` record, how much of each fell inside
that frame, and, for comparison, how often windows of the same length anywhere in the run
hold as much steal: a drop that goes with steal far more often than a random window does
is the host's doing, not the program's.

Linux only (elsewhere the probe records nothing and the attribution says so). Steal is
counted in clock ticks (10 ms at the usual USER_HZ of 100), so a window is said to hold
steal when at least one tick fell between the samples around it; the samples widen each
window by up to one period on either side.
"""

from __future__ import annotations

import bisect
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from experiment.clock import Clock

PERIOD_S = 0.005
MS = 1000.0
STOLEN_S = 0.0095   # a window holds steal from one 10 ms tick on (a little less: float sums of ticks)


@dataclass(frozen=True)
class Sample:
    """One reading: clock time, steal of all CPUs (s), the frame-loop thread's run-queue wait (s)."""

    t: float
    steal_s: float
    runq_s: float


def steal_now_s() -> float | None:
    """All CPUs' steal time so far (s); None where /proc/stat does not say (not Linux)."""
    try:
        with open("/proc/stat", encoding="ascii") as f:
            fields = f.readline().split()
    except OSError:
        return None
    return int(fields[8]) / os.sysconf("SC_CLK_TCK") if len(fields) > 8 and fields[0] == "cpu" else None


def _read_runq_s(pid: int) -> float | None:
    try:
        return int(Path(f"/proc/{pid}/task/{pid}/schedstat").read_text().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return None


class StallProbe:
    """Context manager: samples steal and the run-queue wait of process `pid`'s main thread
    from a thread of this process until closed (see the module docstring); with `pid` None,
    steal alone (run-queue wait 0), until closed."""

    def __init__(self, pid: int | None, clock: Clock, *, period_s: float = PERIOD_S) -> None:
        self._pid = pid
        self._clock = clock
        self._period_s = period_s
        self.samples: list[Sample] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="stall-probe", daemon=True)

    def __enter__(self) -> "StallProbe":
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            steal, runq = steal_now_s(), 0.0 if self._pid is None else _read_runq_s(self._pid)
            if steal is None or runq is None:
                if not self.samples:
                    self._stop.wait(self._period_s)
                    continue
                return   # the run ended
            self.samples.append(Sample(self._clock.now(), steal, runq))
            self._stop.wait(self._period_s)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(2.0)


def drops_from_flips(flips: Sequence[float], frame_s: float) -> list[dict[str, Any]]:
    """`frame_drop` records (as a run logs them) for the intervals over 1.5 frames between
    consecutive flip times. Pure."""
    return [{"kind": "frame_drop", "t": b, "interval_s": b - a} for a, b in zip(flips, flips[1:])
            if b - a > 1.5 * frame_s]


def _delta(samples: Sequence[Sample], times: Sequence[float], start: float, end: float) -> tuple[float, float]:
    """Steal and run-queue wait between the last sample at or before `start` and the first at or
    after `end` (the window widened to the samples around it)."""
    a = max(bisect.bisect_right(times, start) - 1, 0)
    b = min(bisect.bisect_left(times, end), len(samples) - 1)
    return samples[b].steal_s - samples[a].steal_s, samples[b].runq_s - samples[a].runq_s


def attribute_drops(records: Sequence[dict[str, Any]], samples: Sequence[Sample], *, n_cpus: int,
                    runq_threshold_s: float = 0.005, baseline_windows: int = 2000) -> dict[str, Any]:
    """Per dropped frame, the steal and the frame loop's run-queue wait inside it; counts of
    drops with any steal (at least a tick), with a run-queue wait of `runq_threshold_s` or
    more, with neither, and outside the sampled span (not counted in the others); the share
    of all `n_cpus` CPUs' time stolen; and the share of `baseline_windows` windows spread
    evenly over the sampled span, each as long as the median drop, that hold any steal. Pure."""
    drops = [r for r in records if r.get("kind") == "frame_drop"]
    if len(samples) < 2:
        return {"sampled": False, "n_drops": len(drops),
                "why": "no samples (the probe needs Linux's /proc)"}
    times = [s.t for s in samples]
    rows, with_steal, with_runq, neither, outside = [], 0, 0, 0, 0
    for r in drops:
        end = float(r["t"])
        if not times[0] <= end - float(r["interval_s"]) <= end <= times[-1]:
            outside += 1   # not sampled (or not on the probe's clock): said, not guessed
            continue
        steal_s, runq_s = _delta(samples, times, end - float(r["interval_s"]), end)
        stolen, waited = steal_s >= STOLEN_S, runq_s >= runq_threshold_s
        with_steal += stolen
        with_runq += waited and not stolen
        neither += not stolen and not waited
        rows.append({"t": round(end, 3), "interval_ms": round(float(r["interval_s"]) * MS, 1),
                     "steal_ms": round(steal_s * MS, 1), "runq_ms": round(runq_s * MS, 1)})
    span_start, span_end = times[0], times[-1]
    lengths = sorted(float(r["interval_s"]) for r in drops) or [1 / 60]
    length = lengths[len(lengths) // 2]
    n = max(min(baseline_windows, int((span_end - span_start - length) / length)), 0)
    hits = 0
    for k in range(n):
        start = span_start + k * (span_end - span_start - length) / max(n - 1, 1)
        hits += _delta(samples, times, start, start + length)[0] >= STOLEN_S
    total_steal_s = samples[-1].steal_s - samples[0].steal_s
    return {"sampled": True, "n_drops": len(drops), "with_steal": with_steal, "with_runq_wait_only": with_runq,
            "with_neither": neither, "outside_samples": outside, "baseline_window_ms": round(length * MS, 1),
            "baseline_windows": n,
            "baseline_with_steal": round(hits / n, 3) if n else None,
            "steal_s": round(total_steal_s, 2), "span_s": round(span_end - span_start, 1),
            "steal_share": round(total_steal_s / (span_end - span_start) / n_cpus, 4),
            "drops": rows}


def longest_without_steal(flips: Sequence[float], samples: Sequence[Sample]) -> float | None:
    """The longest interval between consecutive flips inside the sampled span that held no
    steal (seconds); None without samples. Pure."""
    if len(samples) < 2:
        return None
    times = [s.t for s in samples]
    return max((b - a for a, b in zip(flips, flips[1:])
                if times[0] <= a and b <= times[-1] and _delta(samples, times, a, b)[0] < STOLEN_S), default=None)
