"""`rig-check --scanner SPEC`: listen to the trigger line, count pulses, estimate the TR.

`assess_pulses` is pure (times in, findings out); `run_scanner_check` opens the
source, listens for `listen_s` on the injected clock, closes it, and prints what it
found so the operator can fix the trigger line before the participant is in.
"""

from __future__ import annotations

from typing import Callable, TypedDict

import numpy as np

from experiment.clock import Clock
from experiment.scanner.base import TriggerSource

GAP_FACTOR = 1.5
SLICE_FACTOR = 0.5


class PulseCheck(TypedDict):
    """What a trigger-line check found; a dict so the rig-check log records it as it is."""

    n_pulses: int
    listen_s: float
    expected_tr_s: float | None
    tr_median_s: float | None     # the TR estimate
    tr_mean_s: float | None
    tr_sd_s: float | None
    n_missed: int
    per_slice: bool
    problems: list[str]
    ok: bool                      # no problems


def assess_pulses(times: list[float], *, listen_s: float, expected_tr_s: float | None = None) -> PulseCheck:
    """Findings from pulse times: count, TR estimate (median interval), gaps, per-slice mode.

    Without `expected_tr_s` the median interval is the TR estimate; with it, a median
    far below it means the box sends one pulse per slice.
    """
    n = len(times)
    result = PulseCheck(n_pulses=n, listen_s=listen_s, expected_tr_s=expected_tr_s, tr_median_s=None,
                        tr_mean_s=None, tr_sd_s=None, n_missed=0, per_slice=False, problems=[], ok=True)
    problems = result["problems"]
    if n == 0:
        problems.append(f"no pulse in {listen_s:g} s: check that the scanner is running, the trigger cable, "
                        f"the box mode and the trigger key/byte/baud")
        return _judged(result)
    if n == 1:
        problems.append("only one pulse: cannot estimate the TR; listen longer than two TRs")
        return _judged(result)
    intervals = np.diff(np.asarray(times, dtype=np.float64))
    median = float(np.median(intervals))
    result["tr_median_s"], result["tr_mean_s"] = median, float(intervals.mean())
    result["tr_sd_s"] = float(intervals.std(ddof=1)) if n > 2 else None
    reference = expected_tr_s or median
    if expected_tr_s is not None and median < SLICE_FACTOR * expected_tr_s:
        result["per_slice"] = True
        problems.append(f"pulses every {median * 1000:.1f} ms for a TR of {expected_tr_s:g} s: the box sends one "
                        f"pulse per slice; set it to one pulse per volume")
        return _judged(result)
    gaps = intervals[intervals > GAP_FACTOR * reference]
    missed = int(sum(round(g / reference) - 1 for g in gaps))
    result["n_missed"] = missed
    if missed:
        problems.append(f"{missed} pulse(s) missing ({len(gaps)} gap(s) longer than {GAP_FACTOR} TR)")
    if expected_tr_s is not None and abs(median - expected_tr_s) > 0.05 * expected_tr_s:
        problems.append(f"measured TR {median:.4f} s differs from the expected {expected_tr_s:g} s")
    return _judged(result)


def _judged(result: PulseCheck) -> PulseCheck:
    result["ok"] = not result["problems"]
    return result


def run_scanner_check(source: TriggerSource, *, clock: Clock, listen_s: float,
                      out: Callable[[str], None] = print, expected_tr_s: float | None = None,
                      poll_s: float = 0.005) -> PulseCheck:
    """Open `source`, count pulses for `listen_s`, close it, print and return the findings."""
    out(f"listening to {source.name} for {listen_s:g} s ...")
    times: list[float] = []
    source.open()
    try:
        end = clock.now() + listen_s
        while clock.now() < end:
            times.extend(p.t for p in source.poll())
            clock.sleep(poll_s)
        times.extend(p.t for p in source.poll())
    finally:
        source.close()
    result = assess_pulses(times, listen_s=listen_s, expected_tr_s=expected_tr_s)
    if result["tr_median_s"] is not None:
        sd = result["tr_sd_s"]
        out(f"{result['n_pulses']} pulses; TR (median interval) {result['tr_median_s']:.4f} s"
            + (f", SD {sd * 1000:.2f} ms" if sd is not None else ""))
    else:
        out(f"{result['n_pulses']} pulse(s)")
    for problem in result["problems"]:
        out(f"PROBLEM: {problem}")
    if result["ok"]:
        out("trigger line OK")
    return result
