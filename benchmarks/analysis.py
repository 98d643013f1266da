"""Pure analysis of benchmark measurements: summaries, drift, pairing. No clock, no I/O.

Every function takes plain numbers or log records (dicts as in docs/event-log.md) and
returns plain numbers, so it is tested on synthetic data (tests/test_benchmarks_smoke.py)
and the timed parts of the benchmark stay thin.

Conventions: inputs are seconds; summaries are milliseconds (`*_ms`). Percentiles are
numpy's default (linear interpolation between order statistics).
"""

from __future__ import annotations

import bisect
import math
from dataclasses import asdict, dataclass
from typing import Any, Iterable, Sequence

import numpy as np

MS = 1000.0


@dataclass(frozen=True)
class Summary:
    """Median, 99th percentile and extremes of one sample, in milliseconds."""

    n: int
    median_ms: float
    p99_ms: float
    max_ms: float
    min_ms: float

    def as_dict(self) -> dict[str, Any]:
        return _rounded(asdict(self))


def summarize(values_s: Iterable[float]) -> Summary:
    """Median, p99, max and min of a sample given in seconds (NaN when empty)."""
    v = np.asarray(list(values_s), dtype=np.float64) * MS
    if v.size == 0:
        return Summary(0, math.nan, math.nan, math.nan, math.nan)
    return Summary(int(v.size), float(np.median(v)), float(np.percentile(v, 99)), float(v.max()), float(v.min()))


@dataclass(frozen=True)
class ErrorSummary:
    """Signed onset errors: the median keeps its sign (bias); the tails are of |error|."""

    n: int
    median_ms: float
    p99_abs_ms: float
    largest_ms: float   # the error with the largest magnitude, with its sign

    def as_dict(self) -> dict[str, Any]:
        return _rounded(asdict(self))


def error_summary(errors_s: Sequence[float]) -> ErrorSummary:
    e = np.asarray(errors_s, dtype=np.float64) * MS
    if e.size == 0:
        return ErrorSummary(0, math.nan, math.nan, math.nan)
    return ErrorSummary(int(e.size), float(np.median(e)), float(np.percentile(np.abs(e), 99)),
                        float(e[np.argmax(np.abs(e))]))


@dataclass(frozen=True)
class Drift:
    """How an error grows over a run: least-squares slope (with its standard error)
    and the last error minus the first."""

    slope_ms_per_min: float
    slope_se_ms_per_min: float
    last_minus_first_ms: float
    span_min: float

    def as_dict(self) -> dict[str, Any]:
        return _rounded(asdict(self))


def drift(times_s: Sequence[float], errors_s: Sequence[float]) -> Drift:
    """Slope of error against time in ms per minute, its standard error, last - first.

    `times_s` are the events' times (e.g. planned onsets from t0), in the run's order.
    Needs at least 3 points for a standard error (NaN otherwise).
    """
    t = np.asarray(times_s, dtype=np.float64) / 60.0
    e = np.asarray(errors_s, dtype=np.float64) * MS
    if t.size != e.size:
        raise ValueError(f"drift: {t.size} times but {e.size} errors")
    if t.size < 2 or np.ptp(t) == 0:
        return Drift(math.nan, math.nan, math.nan, 0.0)
    dt = t - t.mean()
    sxx = float(np.sum(dt * dt))
    slope = float(np.sum(dt * (e - e.mean())) / sxx)
    if t.size > 2:
        resid = e - (e.mean() + slope * dt)
        se = math.sqrt(float(np.sum(resid * resid)) / (t.size - 2) / sxx)
    else:
        se = math.nan
    return Drift(slope, se, float(e[-1] - e[0]), float(t[-1] - t[0]))


def conservative_ratio(numerator: Drift, denominator: Drift) -> float:
    """|slope| of `numerator` over |slope| + 2 SE of `denominator`: a lower bound on the
    drift ratio that noise in a near-zero denominator cannot inflate."""
    return ratio(numerator.slope_ms_per_min,
                 abs(denominator.slope_ms_per_min) + 2 * denominator.slope_se_ms_per_min)


def ratio(numerator: float, denominator: float) -> float:
    """|numerator| / |denominator|; inf when the denominator is exactly 0, NaN if either is."""
    if math.isnan(numerator) or math.isnan(denominator):
        return math.nan
    if denominator == 0:
        return math.inf
    return abs(numerator) / abs(denominator)


# ------------------------------------------------------------------ from a run's event log

def onset_errors(records: Iterable[dict[str, Any]]) -> tuple[list[float], list[float], list[str]]:
    """Trial onsets of a log: planned onsets from t0, errors (flip - planned), phases; in plan order.

    Uses `onset` records with `trial > 0` (the lead-in and tail are not cues) and the
    runner's own plan `planned_t` (t0 + onset, moved by any re-anchoring).
    """
    onsets = sorted((r for r in records if r.get("kind") == "onset" and (r.get("trial") or 0) > 0),
                    key=lambda r: r["i"])
    return ([r["planned_onset_s"] for r in onsets], [r["t"] - r["planned_t"] for r in onsets],
            [r["phase"] for r in onsets])


@dataclass(frozen=True)
class CuffLatencies:
    """Per command the run tagged with a plan index: seconds."""

    planned_to_write: list[float]
    flip_to_write: list[float]
    write_to_ack: list[float]
    commands: list[str]


def cuff_latencies(records: Sequence[dict[str, Any]]) -> CuffLatencies:
    """Cuff commands sent for timeline events (`cuff_cmd` with an index `i`), against the
    flip and the plan of that event's `onset` record. Failed commands are left out."""
    onsets = {r["i"]: r for r in records if r.get("kind") == "onset"}
    p2w, f2w, w2a, names = [], [], [], []
    for r in records:
        if r.get("kind") != "cuff_cmd" or r.get("i") is None or not r.get("ok"):
            continue
        onset = onsets.get(r["i"])
        if onset is None or r.get("t_write") is None or r.get("t_ack") is None:
            continue
        # the command's own plan when the run logged it (cuff commands on the scheduler thread), else the phase's
        p2w.append(r["t_write"] - (r["planned_t"] if r.get("planned_t") is not None else onset["planned_t"]))
        f2w.append(r["t_write"] - onset["t"])
        w2a.append(r["t_ack"] - r["t_write"])
        names.append(str(r["command"]).split()[0])
    return CuffLatencies(p2w, f2w, w2a, names)


def drops_by_phase(records: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Dropped frames (`frame_drop` records) counted per phase on screen when they ended.

    A drop before the first onset is counted under "before t0". Returns
    {phase: {"n": count, "longest_ms": longest interval}}, phases in order of first drop.
    """
    onsets = sorted(((r["t"], r["phase"]) for r in records if r.get("kind") == "onset"), key=lambda x: x[0])
    times = [t for t, _ in onsets]
    out: dict[str, dict[str, Any]] = {}
    for r in records:
        if r.get("kind") != "frame_drop":
            continue
        k = bisect.bisect_right(times, r["t"]) - 1
        phase = onsets[k][1] if k >= 0 else "before t0"
        entry = out.setdefault(phase, {"n": 0, "longest_ms": 0.0})
        entry["n"] += 1
        entry["longest_ms"] = round(max(entry["longest_ms"], r["interval_s"] * MS), 3)
    return out


def first_of_kind(records: Iterable[dict[str, Any]], kind: str) -> dict[str, Any] | None:
    return next((r for r in records if r.get("kind") == kind), None)


# ------------------------------------------------------------------ other measurements

def pulse_latencies(sent_t: Sequence[float], received: Iterable[tuple[int, float]]) -> list[float]:
    """Reader stamp minus writer stamp for each received pulse `(index, t)`.

    Pulses are matched by index (the n-th byte written is the n-th pulse read); an index
    with no written time is an error, because then the pairing itself is wrong.
    """
    out = []
    for index, t in received:
        if not 0 <= index < len(sent_t):
            raise ValueError(f"pulse {index} was received but only {len(sent_t)} were written")
        out.append(t - sent_t[index])
    return out


def intervals(times_s: Sequence[float]) -> list[float]:
    """Differences between consecutive times (frame intervals from flip times)."""
    return [b - a for a, b in zip(times_s, times_s[1:])]


def count_over(values_s: Iterable[float], threshold_s: float) -> int:
    return sum(1 for v in values_s if v > threshold_s)


def marker_times(lines: Iterable[tuple[float, str]], markers: dict[str, str], *,
                 start_t: float) -> dict[str, float | None]:
    """Seconds from `start_t` to the first stamped output line containing each marker."""
    found: dict[str, float | None] = {name: None for name in markers}
    for t, text in lines:
        for name, marker in markers.items():
            if found[name] is None and marker in text:
                found[name] = t - start_t
    return found


def _rounded(d: dict[str, Any], digits: int = 3) -> dict[str, Any]:
    return {k: (round(v, digits) if isinstance(v, float) and math.isfinite(v) else v) for k, v in d.items()}


def gc_summary(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The run's garbage collections in quiet phases (`gc` records) and the priority it obtained."""
    collects = [float(r["duration_s"]) for r in records if r.get("kind") == "gc" and r.get("action") == "collect"]
    freeze = first_of_kind(records, "gc")
    return {"collections": len(collects), "duration": summarize(collects).as_dict() if collects else None,
            "freeze_s": None if freeze is None else freeze.get("duration_s"),
            "priority": first_of_kind(records, "priority")}


def worst_key(records: Sequence[dict[str, Any]]) -> tuple[float, float]:
    """How bad a dry run was, for picking the worst of several: its largest onset error, then its
    longest frame interval (seconds)."""
    _, errors, _ = onset_errors(records)
    frames = first_of_kind(reversed(list(records)), "frames") or {}
    return (max((abs(e) for e in errors), default=0.0), float(frames.get("max_interval_s") or 0.0))
