"""The timing test's figures and verdict, from what was measured (pure: no clock, no I/O).

Inputs: every flip time, the planned time and flip time of each cue change, the flip times at
which the light patch turned white, and the arrival times of the sensor's bytes. Outputs: the
refresh rate against the rig's, the frame-interval distribution and dropped frames, the cue
onset errors, the flip-to-light lag of each flash (the first sensor byte within `LAG_WINDOW_S`
after the flip; none: missed), and a verdict against the rig file's `timing_limits`.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any, Sequence

from experiment.protocol.rig import TimingLimits

LAG_WINDOW_S = 0.5    # a sensor byte this long after a flash still belongs to it
EARLY_S = 0.005       # and one this much before it too: without vertical sync (Xvfb) the pixels can be
                      # out before `flip()` returns its timestamp; such a lag is kept, negative


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile by linear interpolation (None when empty)."""
    if not values:
        return None
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def distribution_ms(values_s: Sequence[float]) -> dict[str, float | int | None]:
    """n, median, p95, p99, min, max and SD in milliseconds."""
    ms = [v * 1000 for v in values_s]
    return {"n": len(ms), "median_ms": percentile(ms, 50), "p95_ms": percentile(ms, 95),
            "p99_ms": percentile(ms, 99), "min_ms": min(ms) if ms else None, "max_ms": max(ms) if ms else None,
            "sd_ms": statistics.stdev(ms) if len(ms) > 1 else None}


def match_lags(flashes: Sequence[float], light: Sequence[float], window_s: float = LAG_WINDOW_S,
               early_s: float = EARLY_S) -> list[float | None]:
    """For each flash (flip time), the lag to the first sensor byte from `early_s` before it to
    `window_s` after it, not at or after the next flash's own early margin; None when the sensor
    said nothing (missed)."""
    times = sorted(light)
    lags: list[float | None] = []
    k = 0
    for n, t_flash in enumerate(flashes):
        end = min(t_flash + window_s, flashes[n + 1] - early_s if n + 1 < len(flashes) else float("inf"))
        while k < len(times) and times[k] < t_flash - early_s:
            k += 1
        if k < len(times) and times[k] < end:
            lags.append(times[k] - t_flash)
            k += 1
        else:
            lags.append(None)
    return lags


@dataclass(frozen=True)
class Measured:
    """What the procedure measured (times on one clock, in seconds)."""

    flips: Sequence[float]
    onsets: Sequence[tuple[float, float]]        # (planned, flip) of each cue change
    flashes: Sequence[float]                     # flip times at which the patch turned white
    light: Sequence[float]                       # sensor byte arrival times
    sensor_simulated: bool
    rig_refresh_hz: float | None
    frame_s: float                               # the frame interval the drops are counted against
    vsync: bool


def figures(m: Measured) -> dict[str, Any]:
    """Every figure of the test (plain JSON types)."""
    intervals = [b - a for a, b in zip(m.flips, m.flips[1:])]
    median = percentile(intervals, 50)
    measured_hz = 1.0 / median if median else None
    dropped = sum(1 for dt in intervals if dt > 1.5 * m.frame_s)
    errors = [flip - planned for planned, flip in m.onsets]
    lags = match_lags(m.flashes, m.light)
    found = [lag for lag in lags if lag is not None]
    mismatch = (None if measured_hz is None or m.rig_refresh_hz is None
                else 100.0 * (measured_hz - m.rig_refresh_hz) / m.rig_refresh_hz)
    return {
        "refresh": {"rig_hz": m.rig_refresh_hz, "measured_hz": measured_hz, "difference_pct": mismatch,
                    "vsync": m.vsync},
        "frames": {"n_intervals": len(intervals), "dropped": dropped,
                   "dropped_pct": 100.0 * dropped / len(intervals) if intervals else None,
                   "interval": distribution_ms(intervals)},
        "onsets": {"n": len(errors), "error": distribution_ms(errors),
                   "largest_abs_ms": max((abs(e) * 1000 for e in errors), default=None)},
        "light": {"flashes": len(m.flashes), "seen": len(found), "missed": len(lags) - len(found),
                  "extra_bytes": len(m.light) - len(found), "sensor_simulated": m.sensor_simulated,
                  "lag": distribution_ms(found), "lags_ms": [None if x is None else x * 1000 for x in lags]},
    }


def verdict(fig: dict[str, Any], limits: TimingLimits, *, with_sensor: bool) -> list[dict[str, Any]]:
    """One row per check: what, the measured value, the limit, ok (None: could not be judged)."""
    rows: list[dict[str, Any]] = []

    def check(what: str, value: float | None, limit: float, *, absolute: bool = False) -> None:
        ok = None if value is None else (abs(value) if absolute else value) <= limit
        rows.append({"check": what, "value": value, "limit": limit, "ok": ok})

    check("refresh rate vs rig (%)", fig["refresh"]["difference_pct"], limits.refresh_tolerance_pct, absolute=True)
    check("dropped frames (%)", fig["frames"]["dropped_pct"], limits.max_dropped_pct)
    check("largest cue onset error (ms)", fig["onsets"]["largest_abs_ms"], limits.max_onset_error_ms)
    if with_sensor:
        check("flip to light, median (ms)", fig["light"]["lag"]["median_ms"], limits.max_light_lag_ms)
        check("flip to light, SD (ms)", fig["light"]["lag"]["sd_ms"], limits.max_lag_sd_ms)
        check("missed flashes", float(fig["light"]["missed"]), float(limits.max_missed_flashes))
    return rows


def fit(rows: Sequence[dict[str, Any]]) -> bool:
    """Every check that could be judged passed (one that could not, e.g. no rig refresh rate, is not a failure)."""
    return all(r["ok"] is not False for r in rows)
