"""Derive analysis tables from a run's event log (pure: no clock, no file I/O).

Input: the `LogContents` of `log.jsonl` and, when present, of `pressure.jsonl`
(docs/event-log.md). Output: one `RunData` with the events table (one row per modelled
phase that reached the screen, measured onsets), planned-vs-actual timing per phase,
the per-trial summary, the pulse table, the resampled pressure trace and the run's
status (completed, aborted, or incomplete when the log has no `end` record).

Conventions (docs/outputs.md): every onset is `t - t0` in seconds, t0 being the pulse
of the first stored volume; a missing value is `None` here and `n/a` in files.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from experiment.log.eventlog import LogContents

#: device states in which the cuff holds its target (pressure samples' `st`)
HOLD_STATES = frozenset({"HOLD"})
#: cuff actions (plan `cuff`) during which the cuff is meant to be inflated
INFLATED_CUFF = frozenset({"inflate", "hold"})
#: an interval longer than this many TRs means pulses were missed
MISSED_PULSE_RATIO = 1.5


@dataclass(frozen=True)
class Sample:
    """One pressure sample from `pressure.jsonl` (host arrival time)."""

    t: float
    pressure_kpa: float
    target_kpa: float | None
    state: str | None


@dataclass(frozen=True)
class PhaseTiming:
    """One timeline event: what was planned and what reached the screen."""

    i: int
    trial: int
    trial_type: str
    phase: str
    bids_trial_type: str | None
    cue: str | None
    cuff: str
    plan_onset_s: float            # the protocol's onset (before any re-anchoring)
    plan_duration_s: float
    target_kpa: float | None
    planned_onset_s: float | None  # what the runner aimed at (re-anchored), from t0
    onset_s: float | None          # measured flip time - t0; None if never shown
    onset_error_s: float | None
    completed: bool                # the next phase started, or the run completed
    kind: str = "cue"              # cue | rating (the plan's phase_kind; cue when the log has none)
    level: str | None = None       # inflate/hold phases: the pressure level (logs before levels: None)
    scale: str | None = None       # rating phases: the scale shown


@dataclass(frozen=True)
class EventRow:
    """One row of events.tsv."""

    onset_s: float
    duration_s: float | None
    trial_type: str
    trial: int
    phase: str
    cue: str | None
    cuff: str
    planned_onset_s: float | None
    planned_duration_s: float | None
    onset_error_s: float | None
    duration_source: str           # measured | planned | stopped | response
    target_pressure_kpa: float | None
    measured_pressure_kpa: float | None  # mean while the device reported HOLD
    peak_pressure_kpa: float | None
    rating: float | None
    response_time_s: float | None
    i: int | None                  # plan index (None for a rating without a modelled phase)
    pressure_level: str | None = None  # inflate/hold phases: the protocol's pressure level


@dataclass(frozen=True)
class RatingRow:
    """One rating record, matched to the phase that showed its scale."""

    trial: int
    i: int | None                  # plan index of that phase; None when no phase matches
    phase: str | None              # that phase's name
    onset_s: float | None          # the scale's first frame - t0
    response_onset_s: float | None  # the confirming key press - t0; None when timed out
    rating: float | None
    response_time_s: float | None  # from the scale's onset; None when timed out
    timed_out: bool


@dataclass(frozen=True)
class RatingColumns:
    """The trials.csv columns of one rating phase; `rating` also names its export modulator."""

    phase: str | None              # None: the run has no known rating phase (columns stay, all n/a)
    rating: str
    response_time: str
    timed_out: str


@dataclass(frozen=True)
class PulseRow:
    index: int
    volume: int | None
    t: float
    onset_s: float | None          # t - t0
    interval_s: float | None       # from the previous pulse
    missed_before: int             # pulses inferred missing before this one
    source: str | None


@dataclass(frozen=True)
class PressureTrace:
    """Cuff pressure on a constant-rate grid aligned to t0 (sample k at StartTime + k/rate)."""

    rate_hz: float
    start_time_s: float            # first grid time - t0 (negative before t0)
    setpoint_kpa: tuple[float | None, ...]   # previous-sample (zero-order) hold
    measured_kpa: tuple[float | None, ...]   # linear interpolation; None across gaps
    max_gap_s: float
    n_source_samples: int


@dataclass(frozen=True)
class RunStatus:
    """How the run ended and where it stopped."""

    status: str                    # completed | aborted | incomplete
    reason: str | None
    exit_code: int | None
    truncated: bool                # the log's last line was torn (killed mid-write)
    stopped_at_s: float | None     # end record (or last record) time - t0
    last_started: tuple[int, str] | None   # (trial, phase) of the last phase on screen
    last_completed_phase: tuple[int, str] | None
    last_completed_trial: int | None
    n_trials_planned: int
    problems: tuple[str, ...] = ()
    message: str | None = None     # the end record's message (e.g. completed without stimulation)

    def summary(self) -> str:
        """One sentence for files and the console."""
        if self.status == "completed":
            text = f"completed ({self.message})" if self.message else "completed"
        elif self.status == "aborted":
            why = self.reason or "no reason given"
            text = f"aborted ({why}: {self.message})" if self.message else f"aborted ({why})"
        else:
            text = "incomplete: the log ends without an end record (the program was killed or crashed)"
        if self.status != "completed":
            where = []
            if self.last_started:
                where.append(f"last phase started: trial {self.last_started[0]} '{self.last_started[1]}'")
            where.append(f"last completed trial: {self.last_completed_trial or 'none'} of {self.n_trials_planned}")
            if self.stopped_at_s is not None:
                where.append(f"stopped at {self.stopped_at_s:.3f} s after t0")
            text += "; " + "; ".join(where)
        return text


@dataclass(frozen=True)
class Table:
    """A plain table: column names and rows of values (None = missing)."""

    columns: tuple[str, ...]
    rows: tuple[tuple[Any, ...], ...]

    def column(self, name: str) -> list[Any]:
        k = self.columns.index(name)
        return [r[k] for r in self.rows]


@dataclass(frozen=True)
class RunData:
    """Everything the writers need, derived from one run's logs."""

    header: Mapping[str, Any]
    t0: float | None
    tr_s: float | None
    display: Mapping[str, Any] | None
    device: Mapping[str, Any] | None
    phases: tuple[PhaseTiming, ...]
    events: tuple[EventRow, ...]
    ratings: tuple[RatingRow, ...]
    trials: Table
    pulses: tuple[PulseRow, ...]
    pressure: PressureTrace | None
    samples: tuple[Sample, ...]
    status: RunStatus
    frames: tuple[Mapping[str, Any], ...] = ()
    frame_drops: tuple[Mapping[str, Any], ...] = ()
    warnings: tuple[Mapping[str, Any], ...] = ()
    safety: tuple[Mapping[str, Any], ...] = ()
    operator: tuple[Mapping[str, Any], ...] = ()
    end: Mapping[str, Any] | None = None
    notes: tuple[str, ...] = field(default=())
    rating_columns: tuple[RatingColumns, ...] = ()

    def ratings_in(self, columns: RatingColumns) -> dict[int, float]:
        """trial -> the rating given in the phase of `columns` (answered ratings only)."""
        return {n: r.rating for n, r in ratings_by_trial(self.ratings, self.rating_columns, columns).items()
                if r.rating is not None}


# ---------------------------------------------------------------- small helpers

def _num(value: Any) -> float | None:
    """A finite float, or None (the log stores NaN as null)."""
    if value is None or isinstance(value, bool):
        return None
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def record_time(rec: Mapping[str, Any]) -> float | None:
    """The latest clock time a record carries (for 'when did the log stop')."""
    times = [t for k in ("t", "t_write", "t_ack", "t_onset", "t_response") if (t := _num(rec.get(k))) is not None]
    return max(times) if times else None


def pressure_samples(pressure: LogContents | None) -> tuple[Sample, ...]:
    """The `p` records as samples, time-sorted; samples without a pressure are dropped."""
    if pressure is None:
        return ()
    out = []
    for r in pressure.of_kind("p"):
        t, p = _num(r.get("t")), _num(r.get("p"))
        if t is None or p is None:
            continue
        st = r.get("st")
        out.append(Sample(t=t, pressure_kpa=p, target_kpa=_num(r.get("tgt")),
                          state=str(st) if st is not None else None))
    out.sort(key=lambda s: s.t)
    return tuple(out)


def _window(samples_t: np.ndarray, start: float, end: float) -> slice:
    """Index range of samples with start <= t < end."""
    return slice(int(np.searchsorted(samples_t, start, "left")), int(np.searchsorted(samples_t, end, "left")))


@dataclass(frozen=True)
class _SampleArrays:
    t: np.ndarray
    p: np.ndarray
    hold: np.ndarray

    @classmethod
    def of(cls, samples: Sequence[Sample]) -> "_SampleArrays":
        return cls(t=np.array([s.t for s in samples], dtype=float),
                   p=np.array([s.pressure_kpa for s in samples], dtype=float),
                   hold=np.array([s.state in HOLD_STATES for s in samples], dtype=bool))

    def plateau_and_peak(self, start: float, end: float) -> tuple[float | None, float | None]:
        """Mean pressure while holding, and the maximum, over [start, end)."""
        w = _window(self.t, start, end)
        p = self.p[w]
        if p.size == 0:
            return None, None
        held = p[self.hold[w]]
        plateau = float(held.mean()) if held.size else None
        return plateau, float(p.max())


# ---------------------------------------------------------------- the pieces

def run_status(log: LogContents, phases: Sequence[PhaseTiming], *, t0: float | None,
               stop_t: float | None, n_trials: int, problems: Sequence[str] = ()) -> RunStatus:
    """Completed/aborted from the `end` record; `incomplete` when there is none."""
    end = next(iter(log.of_kind("end")), None)
    message = None
    reason: str | None
    if end is None:
        status, reason, exit_code = "incomplete", "the log ends without an end record", None
    else:
        status = str(end.get("status") or "aborted")
        reason, exit_code, message = end.get("reason"), end.get("exit_code"), end.get("message") or None
    shown = [p for p in phases if p.onset_s is not None]
    done = [p for p in shown if p.completed]
    last_started = (shown[-1].trial, shown[-1].phase) if shown else None
    last_completed_phase = (done[-1].trial, done[-1].phase) if done else None
    completed_trials = [trial for trial in sorted({p.trial for p in phases if p.trial > 0})
                        if all(p.completed for p in phases if p.trial == trial)]
    return RunStatus(
        status=status, reason=reason, exit_code=exit_code, truncated=log.truncated,
        stopped_at_s=(stop_t - t0) if (stop_t is not None and t0 is not None) else None,
        last_started=last_started, last_completed_phase=last_completed_phase,
        last_completed_trial=completed_trials[-1] if completed_trials else None,
        n_trials_planned=n_trials, problems=tuple(problems), message=message)


def phase_timings(plan: Sequence[Mapping[str, Any]], onsets: Mapping[int, Mapping[str, Any]], *,
                  t0: float | None, completed_run: bool) -> tuple[PhaseTiming, ...]:
    """Planned against measured onset for every timeline event."""
    out = []
    for rec in plan:
        i = int(rec["i"])
        o = onsets.get(i)
        onset_s = planned_s = error_s = None
        if o is not None and t0 is not None:
            t = _num(o.get("t"))
            planned_t = _num(o.get("planned_t"))
            onset_s = t - t0 if t is not None else _num(o.get("onset_s"))
            planned_s = planned_t - t0 if planned_t is not None else _num(o.get("planned_onset_s"))
            if planned_s is None:
                planned_s = _num(rec.get("onset_s"))
            if onset_s is not None and planned_s is not None:
                error_s = onset_s - planned_s
        completed = onset_s is not None and (i + 1 in onsets or completed_run)
        out.append(PhaseTiming(
            i=i, trial=int(rec.get("trial") or 0), trial_type=str(rec.get("trial_type") or ""),
            phase=str(rec.get("phase") or ""), bids_trial_type=rec.get("bids_trial_type"),
            cue=rec.get("cue"), cuff=str(rec.get("cuff") or "none"),
            plan_onset_s=float(rec.get("onset_s") or 0.0), plan_duration_s=float(rec.get("duration_s") or 0.0),
            target_kpa=_num(rec.get("target_kpa")), planned_onset_s=planned_s, onset_s=onset_s,
            onset_error_s=error_s, completed=completed, kind=str(rec.get("phase_kind") or "cue"),
            level=rec.get("level"), scale=rec.get("scale")))
    return tuple(out)


def _phase_duration(p: PhaseTiming, next_onset_s: float | None, *, stopped_at_s: float | None,
                    completed_run: bool) -> tuple[float, str]:
    """Measured duration (to the next phase's onset), else cut at the stop, else planned."""
    assert p.onset_s is not None
    if next_onset_s is not None:
        return max(0.0, next_onset_s - p.onset_s), "measured"
    if not completed_run and stopped_at_s is not None and stopped_at_s < p.onset_s + p.plan_duration_s:
        return max(0.0, stopped_at_s - p.onset_s), "stopped"
    return p.plan_duration_s, "planned"


def _legacy_rating_phase(phases: Sequence[PhaseTiming], trial: int, onset_s: float | None) -> PhaseTiming | None:
    """The phase of a rating record without `i` (logs written before ratings carried it).

    The phase of the same trial whose onset is the scale's onset (the runner stamps the
    scale with that phase's flip); failing that, the trial's phase named or modelled 'rating'.
    """
    mine = [p for p in phases if p.trial == trial and p.onset_s is not None]
    same = [p for p in mine if onset_s is not None and p.onset_s is not None and abs(p.onset_s - onset_s) < 1e-3]
    named = [p for p in mine if p.phase == "rating" or p.bids_trial_type == "rating" or p.kind == "rating"]
    candidates = same or named
    return candidates[-1] if candidates else None  # when phases share a flip, the rating phase is the last due


def rating_rows(log: LogContents, phases: Sequence[PhaseTiming], *,
                t0: float | None) -> tuple[tuple[RatingRow, ...], tuple[str, ...]]:
    """Every rating record matched to its phase by the plan index `i`, and notes on any left out.

    A record without a valid `i` (an old log) falls back to the old matching: the first
    rating of its trial, on the phase found by `_legacy_rating_phase`; later ones are dropped.
    """
    by_i = {p.i: p for p in phases}
    rows: list[RatingRow] = []
    taken: set[int] = set()
    legacy_trials: set[int] = set()
    duplicates = legacy_dropped = 0
    for r in log.of_kind("rating"):
        trial = int(r.get("trial") or 0)
        t_on, t_resp = _num(r.get("t_onset")), _num(r.get("t_response"))
        onset_s = t_on - t0 if (t_on is not None and t0 is not None) else None
        i = r.get("i")
        phase = by_i.get(i) if isinstance(i, int) and not isinstance(i, bool) else None
        if phase is None:
            if trial in legacy_trials:
                legacy_dropped += 1
                continue
            legacy_trials.add(trial)
            phase = _legacy_rating_phase(phases, trial, onset_s)
        if phase is not None:
            if phase.i in taken:
                duplicates += 1
                continue
            taken.add(phase.i)
            trial = phase.trial
        timed_out = bool(r.get("timed_out"))
        rows.append(RatingRow(
            trial=trial, i=phase.i if phase else None, phase=phase.phase if phase else None, onset_s=onset_s,
            response_onset_s=(t_resp - t0) if (t_resp is not None and t0 is not None and not timed_out) else None,
            rating=_num(r.get("rating")), response_time_s=None if timed_out else _num(r.get("response_time_s")),
            timed_out=timed_out))
    notes = []
    if legacy_dropped:
        notes.append(f"{legacy_dropped} rating record(s) without a plan index 'i' were left out: a log written "
                     "before ratings carried 'i' can only match the first rating of each trial")
    if duplicates:
        notes.append(f"{duplicates} rating record(s) for a phase that already had one were left out")
    return tuple(rows), tuple(notes)


def rating_phase_names(phases: Sequence[PhaseTiming], ratings: Sequence[RatingRow]) -> tuple[str, ...]:
    """Names of the trials' rating phases in timeline order: kind rating in the plan, or rated."""
    rated = {r.i for r in ratings if r.i is not None}
    names: list[str] = []
    for p in phases:
        if p.trial > 0 and (p.kind == "rating" or p.i in rated) and p.phase not in names:
            names.append(p.phase)
    return tuple(names)


def rating_columns(phase_names: Sequence[str]) -> tuple[RatingColumns, ...]:
    """trials.csv rating columns: `rating`, `response_time`, `rating_timed_out` when the run
    has one rating phase (or none); with several, the same prefixed by each phase's name."""
    if len(phase_names) <= 1:
        return (RatingColumns(phase=phase_names[0] if phase_names else None, rating="rating",
                              response_time="response_time", timed_out="rating_timed_out"),)
    def rating_column(name: str) -> str:   # "pain_rating" stays "pain_rating", not "pain_rating_rating"
        return name if name == "rating" or name.endswith("_rating") else f"{name}_rating"

    return tuple(RatingColumns(phase=n, rating=rating_column(n), response_time=f"{n}_response_time",
                               timed_out=f"{rating_column(n)}_timed_out") for n in phase_names)


def ratings_by_trial(ratings: Sequence[RatingRow], all_columns: Sequence[RatingColumns],
                     columns: RatingColumns) -> dict[int, RatingRow]:
    """trial -> the rating shown in the phase of `columns`; a rating matched to no phase
    belongs to the only set of columns when there is one."""
    only = len(all_columns) == 1
    return {r.trial: r for r in ratings if r.phase == columns.phase or (only and r.phase is None)}


def event_rows(phases: Sequence[PhaseTiming], ratings: Sequence[RatingRow], *,
               samples: Sequence[Sample], t0: float | None, stopped_at_s: float | None,
               completed_run: bool) -> tuple[EventRow, ...]:
    """events.tsv rows: modelled phases that reached the screen, each with the rating shown in
    it (matched by plan index), plus a row for each rating whose phase is not modelled."""
    if t0 is None:
        return ()
    by_i = {p.i: p for p in phases}
    arrays = _SampleArrays.of(samples)
    rating_at = {r.i: r for r in ratings if r.i is not None}
    rows: list[EventRow] = []
    on_rows: set[int] = set()   # plan indices of ratings given a modelled phase's row
    for p in phases:
        if p.bids_trial_type is None or p.onset_s is None:
            continue
        nxt = by_i.get(p.i + 1)
        duration, source = _phase_duration(p, nxt.onset_s if nxt else None,
                                           stopped_at_s=stopped_at_s, completed_run=completed_run)
        plateau = peak = None
        if p.cuff != "none":
            plateau, peak = arrays.plateau_and_peak(t0 + p.onset_s, t0 + p.onset_s + duration)
        rating = response = None
        r = rating_at.get(p.i)
        if r is not None:
            on_rows.add(p.i)
            rating = r.rating
            if r.response_onset_s is not None:
                response = r.response_onset_s - p.onset_s   # BIDS: relative to this row's onset
        rows.append(EventRow(
            onset_s=p.onset_s, duration_s=duration, trial_type=p.bids_trial_type, trial=p.trial,
            phase=p.phase, cue=p.cue, cuff=p.cuff, planned_onset_s=p.planned_onset_s,
            planned_duration_s=p.plan_duration_s, onset_error_s=p.onset_error_s, duration_source=source,
            target_pressure_kpa=p.target_kpa if p.cuff in INFLATED_CUFF else None,
            measured_pressure_kpa=plateau, peak_pressure_kpa=peak, rating=rating,
            response_time_s=response, i=p.i, pressure_level=p.level if p.cuff in INFLATED_CUFF else None))
    for r in ratings:  # a rating whose phase is not modelled still gets a row
        if (r.i is not None and r.i in on_rows) or r.onset_s is None:
            continue
        rows.append(EventRow(
            onset_s=r.onset_s, duration_s=r.response_time_s, trial_type="rating", trial=r.trial,
            phase=r.phase or "rating", cue=None, cuff="none", planned_onset_s=None, planned_duration_s=None,
            onset_error_s=None, duration_source="response", target_pressure_kpa=None,
            measured_pressure_kpa=None, peak_pressure_kpa=None, rating=r.rating,
            response_time_s=r.response_time_s, i=None))
    rows.sort(key=lambda e: (e.onset_s, e.i if e.i is not None else 1 << 30))
    return tuple(rows)


def pulse_rows(log: LogContents, *, t0: float | None, tr_s: float | None) -> tuple[PulseRow, ...]:
    """Every pulse with its interval and the pulses missing before it (interval > 1.5 TR)."""
    out: list[PulseRow] = []
    prev: float | None = None
    for r in log.of_kind("pulse"):
        t = _num(r.get("t"))
        if t is None:
            continue
        interval = t - prev if prev is not None else None
        missed = 0
        if interval is not None and tr_s and interval > MISSED_PULSE_RATIO * tr_s:
            missed = int(round(interval / tr_s)) - 1
        vol = r.get("volume")
        out.append(PulseRow(index=int(r.get("index") or 0), volume=int(vol) if vol is not None else None,
                            t=t, onset_s=(t - t0) if t0 is not None else None, interval_s=interval,
                            missed_before=missed, source=r.get("source")))
        prev = t
    return tuple(out)


def resample_pressure(samples: Sequence[Sample], *, t0: float, rate_hz: float = 20.0,
                      max_gap_s: float = 0.5) -> PressureTrace | None:
    """Resample to `rate_hz` on a grid aligned to t0, within the span of the samples.

    Measured pressure: linear interpolation between neighbouring samples; grid points
    inside a gap longer than `max_gap_s` get None (no invented data). Setpoint: the last
    sample's target at or before the grid point (the setpoint is a step function).
    """
    if len(samples) < 2:
        return None
    t = np.array([s.t for s in samples], dtype=float)
    p = np.array([s.pressure_kpa for s in samples], dtype=float)
    tgt = np.array([np.nan if s.target_kpa is None else s.target_kpa for s in samples], dtype=float)
    k0 = math.ceil((t[0] - t0) * rate_hz - 1e-9)
    k1 = math.floor((t[-1] - t0) * rate_hz + 1e-9)
    if k1 < k0:
        return None
    k = np.arange(k0, k1 + 1)
    grid = t0 + k / rate_hz
    measured = np.interp(grid, t, p)
    right = np.clip(np.searchsorted(t, grid, "right"), 1, len(t) - 1)
    prev_t, next_t = t[right - 1], t[right]
    on_sample = np.minimum(np.abs(grid - prev_t), np.abs(next_t - grid)) <= 1e-9
    valid = on_sample | ((next_t - prev_t) <= max_gap_s)
    setpoint = tgt[np.clip(np.searchsorted(t, grid + 1e-9, "right") - 1, 0, len(t) - 1)]

    def clean(a: np.ndarray, ok: np.ndarray) -> tuple[float | None, ...]:
        return tuple(float(x) if (o and math.isfinite(x)) else None for x, o in zip(a, ok))

    return PressureTrace(rate_hz=rate_hz, start_time_s=k0 / rate_hz,
                         setpoint_kpa=clean(setpoint, np.ones_like(valid)), measured_kpa=clean(measured, valid),
                         max_gap_s=max_gap_s, n_source_samples=len(samples))


def trial_table(phases: Sequence[PhaseTiming], ratings: Sequence[RatingRow], *, log: LogContents,
                samples: Sequence[Sample], t0: float | None, stop_t: float | None,
                rating_sets: Sequence[RatingColumns]) -> Table:
    """One row per trial: planned vs actual onset per phase, pressures, one rating per rating phase."""
    phase_names: list[str] = []
    for p in phases:
        if p.trial > 0 and p.phase not in phase_names:
            phase_names.append(p.phase)
    columns = ["trial", "trial_type", "status"]
    for name in phase_names:
        columns += [f"{name}_planned_onset", f"{name}_onset", f"{name}_onset_error"]
    columns += ["pressure_level", "target_pressure_kpa", "plateau_pressure_kpa", "peak_pressure_kpa",
                "target_reached_latency"]
    for c in rating_sets:
        columns += [c.rating, c.response_time, c.timed_out]
    arrays = _SampleArrays.of(samples)
    rated = [(c, ratings_by_trial(ratings, rating_sets, c)) for c in rating_sets]
    cmds = [c for c in log.of_kind("cuff_cmd") if c.get("i") is not None]
    reached = sorted(t for t in (_num(e.get("t")) for e in log.of_kind("cuff_event")
                                 if e.get("name") == "TARGET_REACHED") if t is not None)
    trial_numbers = sorted({p.trial for p in phases if p.trial > 0})
    starts = {n: min((t0 + p.onset_s for p in phases if p.trial == n and p.onset_s is not None and t0 is not None),
                     default=None) for n in trial_numbers}
    rows = []
    for pos, n in enumerate(trial_numbers):
        mine = [p for p in phases if p.trial == n]
        if all(p.completed for p in mine):
            status = "completed"
        elif any(p.onset_s is not None for p in mine):
            status = "stopped"
        else:
            status = "not started"
        row: dict[str, Any] = {"trial": n, "trial_type": mine[0].trial_type, "status": status}
        for p in mine:
            row[f"{p.phase}_planned_onset"] = p.planned_onset_s if p.planned_onset_s is not None else p.plan_onset_s
            row[f"{p.phase}_onset"] = p.onset_s
            row[f"{p.phase}_onset_error"] = p.onset_error_s
        targets = [p.target_kpa for p in mine if p.cuff in INFLATED_CUFF and p.target_kpa is not None]
        row["target_pressure_kpa"] = max(targets) if targets else None
        row["pressure_level"] = next((p.level for p in mine if p.cuff == "inflate"), None)
        start = starts[n]
        end = next((starts[m] for m in trial_numbers[pos + 1:] if starts[m] is not None), stop_t)
        if start is not None and end is not None and targets:
            row["plateau_pressure_kpa"], row["peak_pressure_kpa"] = arrays.plateau_and_peak(start, end)
            inflate_i = {p.i for p in mine if p.cuff == "inflate"}
            writes = sorted(t for t in (_num(c.get("t_write")) for c in cmds if c.get("i") in inflate_i)
                            if t is not None)
            if writes:
                hit = next((t for t in reached if writes[0] <= t < end), None)
                row["target_reached_latency"] = hit - writes[0] if hit is not None else None
        for c, of_trial in rated:
            r = of_trial.get(n)
            if r is not None:
                row.update({c.rating: r.rating, c.response_time: r.response_time_s, c.timed_out: r.timed_out})
        rows.append(tuple(row.get(c) for c in columns))
    return Table(columns=tuple(columns), rows=tuple(rows))


# ---------------------------------------------------------------- entry point

def derive_run(log: LogContents, pressure: LogContents | None = None, *, rate_hz: float = 20.0,
               max_gap_s: float = 0.5) -> RunData:
    """All derived tables of one run."""
    header = log.header
    plan = sorted((r for r in log.of_kind("plan")), key=lambda r: int(r["i"]))
    t0_rec = next(iter(log.of_kind("t0")), None)
    t0 = _num(t0_rec.get("t")) if t0_rec else None
    tr_s = _num(header.get("tr_s"))
    onsets: dict[int, Mapping[str, Any]] = {}
    for o in log.of_kind("onset"):
        onsets.setdefault(int(o["i"]), o)
    end = next(iter(log.of_kind("end")), None)
    completed_run = end is not None and end.get("status") == "completed"
    samples = pressure_samples(pressure)
    if end is not None and _num(end.get("t")) is not None:
        stop_t = _num(end.get("t"))
    else:
        times = [t for t in (record_time(r) for r in log.records) if t is not None]
        times += [s.t for s in samples[-1:]]
        stop_t = max(times) if times else None
    phases = phase_timings(plan, onsets, t0=t0, completed_run=completed_run)
    problems = list(log.problems) + (list(pressure.problems) if pressure is not None else [])
    n_trials = len({p.trial for p in phases if p.trial > 0})
    status = run_status(log, phases, t0=t0, stop_t=stop_t, n_trials=n_trials, problems=problems)
    ratings, rating_notes = rating_rows(log, phases, t0=t0)
    rating_sets = rating_columns(rating_phase_names(phases, ratings))
    events = event_rows(phases, ratings, samples=samples, t0=t0, stopped_at_s=status.stopped_at_s,
                        completed_run=completed_run)
    trace = resample_pressure(samples, t0=t0, rate_hz=rate_hz, max_gap_s=max_gap_s) if t0 is not None else None
    notes = _notes(phases, events, status, t0=t0) + list(rating_notes)
    return RunData(
        header=header, t0=t0, tr_s=tr_s, display=next(iter(log.of_kind("display")), None),
        device=next(iter(log.of_kind("device")), None), phases=phases, events=events, ratings=ratings,
        trials=trial_table(phases, ratings, log=log, samples=samples, t0=t0, stop_t=stop_t,
                           rating_sets=rating_sets),
        pulses=pulse_rows(log, t0=t0, tr_s=tr_s), pressure=trace, samples=samples, status=status,
        frames=tuple(log.of_kind("frames")), frame_drops=tuple(log.of_kind("frame_drop")),
        warnings=tuple(log.of_kind("warning")), safety=tuple(log.of_kind("safety")),
        operator=tuple(log.of_kind("operator")), end=end, notes=tuple(notes), rating_columns=rating_sets)


def _notes(phases: Iterable[PhaseTiming], events: Sequence[EventRow], status: RunStatus, *,
           t0: float | None) -> list[str]:
    """Plain-language notes on what the derivation had to decide."""
    notes = []
    if t0 is None:
        notes.append("no t0 record: the run stopped before the first stored volume; no onsets can be given")
    if status.status != "completed":
        notes.append(f"run {status.summary()}")
    if status.truncated:
        notes.append("the log's last line was cut off (killed while writing) and was dropped")
    not_shown = [p for p in phases if p.bids_trial_type and p.onset_s is None]
    if not_shown and t0 is not None:
        notes.append(f"{len(not_shown)} modelled phase(s) never reached the screen and have no row "
                     f"(first: trial {not_shown[0].trial} '{not_shown[0].phase}')")
    for source, meaning in (("planned", "the planned duration (no later phase was shown)"),
                            ("stopped", "cut at the time the run stopped")):
        n = sum(e.duration_source == source for e in events)
        if n:
            notes.append(f"{n} event duration(s) are {meaning}")
    return notes


# ---------------------------------------------------------------- quality summary

@dataclass(frozen=True)
class TimingQuality:
    """Numbers a person checks first: onset errors, pulses, frames."""

    n_onsets: int
    median_error_ms: float | None
    p95_abs_error_ms: float | None
    max_abs_error_ms: float | None
    volumes_expected: int | None   # planned volumes up to the end of the log
    volumes_received: int          # pulses at or after t0
    missed_pulses: int
    dropped_frames: int | None
    n_warnings: int
    n_safety: int

    def summary(self) -> str:
        def ms(x: float | None) -> str:
            return "n/a" if x is None else f"{x:.2f} ms"
        frames = "n/a" if self.dropped_frames is None else str(self.dropped_frames)
        expected = "?" if self.volumes_expected is None else str(self.volumes_expected)
        return (f"{self.n_onsets} onsets, error median {ms(self.median_error_ms)}, 95% within "
                f"{ms(self.p95_abs_error_ms)}, max {ms(self.max_abs_error_ms)}; pulses {self.volumes_received}/"
                f"{expected}, missed {self.missed_pulses}; dropped frames {frames}; warnings {self.n_warnings}, "
                f"safety events {self.n_safety}")


def timing_quality(data: RunData) -> TimingQuality:
    """Onset errors of the trials' phases (the lead-in and tail are left out: the lead-in's
    first flip can only come after t0 is known, so its 'error' says nothing about timing)."""
    errors = np.array([p.onset_error_s for p in data.phases if p.onset_error_s is not None and p.trial > 0],
                      dtype=float) * 1000
    after_t0 = [p for p in data.pulses if p.onset_s is not None and p.onset_s >= -1e-6]
    expected = data.header.get("n_volumes")
    if data.tr_s and data.status.stopped_at_s is not None:   # the log ends when the run ends
        stopped = int(math.floor(data.status.stopped_at_s / data.tr_s)) + 1
        expected = min(int(expected), stopped) if expected is not None else stopped
    dropped = [int(f["dropped"]) for f in data.frames if f.get("dropped") is not None]
    return TimingQuality(
        n_onsets=int(errors.size),
        median_error_ms=float(np.median(errors)) if errors.size else None,
        p95_abs_error_ms=float(np.percentile(np.abs(errors), 95)) if errors.size else None,
        max_abs_error_ms=float(np.max(np.abs(errors))) if errors.size else None,
        volumes_expected=int(expected) if expected is not None else None,
        volumes_received=len(after_t0),
        missed_pulses=sum(p.missed_before for p in after_t0),
        dropped_frames=max(dropped) if dropped else None,   # frame counts in the log are cumulative
        n_warnings=len(data.warnings), n_safety=len(data.safety))
