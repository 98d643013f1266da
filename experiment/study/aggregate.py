"""The study's tables (pure): runs with status and QC flags, calibrations and ratings by group,
inflation times against the protocol's limits, runs missing from visit plans, problems.

Each table is written as TSV (`experiment.study.writer`) and shown on the page with the same
columns. Group summaries leave out discarded and unreadable runs; aborted and incomplete
runs count (their ratings and stimuli were given). Calibrations by group take each
participant's newest calibration with a result. Rating summaries average within a
participant first, so a participant with more runs does not weigh more.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Sequence, Union

from experiment.study.model import RunRecord, Study
from experiment.study.plans import Done, missing_steps

Cell = Union[str, int, float, bool, None]


@dataclass(frozen=True)
class Column:
    name: str
    description: str
    decimals: int = 3          # for floats


@dataclass(frozen=True)
class StudyTable:
    """One table of the study: its file name, a title, columns and rows (None = n/a)."""

    name: str                  # file stem of its TSV
    title: str
    columns: tuple[Column, ...]
    rows: tuple[tuple[Cell, ...], ...]
    note: str = ""

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)

    def column(self, name: str) -> tuple[Cell, ...]:
        k = self.names.index(name)
        return tuple(r[k] for r in self.rows)


def _t(name: str, title: str, columns: Sequence[tuple[str, str] | tuple[str, str, int]],
       rows: Sequence[Sequence[Cell]], note: str = "") -> StudyTable:
    cols = tuple(Column(c[0], c[1], c[2] if len(c) > 2 else 3) for c in columns)
    return StudyTable(name=name, title=title, columns=cols, rows=tuple(tuple(r) for r in rows), note=note)


def _mean(xs: Sequence[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def _sd(xs: Sequence[float]) -> float | None:
    return statistics.stdev(xs) if len(xs) > 1 else None


def status_word(run: RunRecord) -> str:
    """completed, aborted, incomplete, unreadable; discarded runs say so first."""
    return f"discarded ({run.status})" if run.discard.discarded else run.status


# ---------------------------------------------------------------- runs

RUN_COLUMNS: tuple[tuple[str, str] | tuple[str, str, int], ...] = (
    ("participant", "participant label"), ("group", "participant's group (participants.tsv)"),
    ("session", "session label"), ("task", "BIDS task"), ("run", "run number"),
    ("status", "completed, aborted, incomplete (no end record), unreadable; 'discarded (...)' when discarded"),
    ("status_detail", "the run's own status summary: why it ended and where it stopped"),
    ("discarded", "marked discarded (cuedpain discard)"), ("discard_reason", "why, as recorded"),
    ("started", "start time (log header, local time)"),
    ("pressure_kpa", "pressure the run gave (kPa; 'level kPa, ...' for a design with several levels)"),
    ("pressure_source", "protocol, calibration or override"),
    ("pressure_note", "override reason, or the calibration file used"),
    ("onset_error_median_ms", "median onset error of the trials' cues (ms)", 2),
    ("onset_error_max_ms", "largest |onset error| (ms)", 2),
    ("frame_ms", "frame interval (ms)", 2), ("dropped_frames", "dropped frames"),
    ("volumes_received", "pulses of stored volumes received"), ("volumes_expected", "volumes expected up to the stop"),
    ("missed_pulses", "pulses missing (gaps over 1.5 TR)"), ("extra_pulses", "extra pulses (closer than 0.5 TR)"),
    ("tr_s", "protocol TR (s)", 4), ("tr_measured_s", "mean measured pulse interval (s)", 5),
    ("stimuli", "stimuli given"),
    ("max_deviation_kpa", "largest |measured - target| pressure while holding (kPa)", 3),
    ("longest_stimulus_s", "longest inflation, command to release (s)", 2),
    ("stimulus_limit_s", "protocol's limit per stimulus (s)", 1),
    ("inflated_total_s", "inflation time of the run (s)", 2),
    ("run_limit_s", "protocol's limit per run (s)", 1),
    ("safety_events", "safety records in the log"),
    ("flags", "QC flags: code: finding; ..."), ("run_dir", "the run's directory (relative to the dataset root)"),
)


def runs_table(study: Study) -> StudyTable:
    rows = []
    for r in study.runs:
        t = r.timing
        times = [s.inflated_s for s in r.stimuli if s.inflated_s is not None]
        devs = [s.deviation_kpa for s in r.stimuli if s.deviation_kpa is not None]
        rows.append((
            r.participant, study.group_of(r.participant), r.session, r.task, r.run, status_word(r), r.status_text,
            r.discard.discarded, r.discard.reason, r.start_wall, r.pressure_text or None, r.pressure_source, r.pressure_note,
            t.onset_error_median_ms if t else None, t.onset_error_max_ms if t else None, t.frame_ms if t else None,
            t.dropped_frames if t else None, t.volumes_received if t else None, t.volumes_expected if t else None,
            t.missed_pulses if t else None, t.extra_pulses if t else None, t.tr_s if t else None,
            t.tr_measured_s if t else None, len(r.stimuli), max(devs) if devs else None,
            max(times) if times else None, r.limits.stimulus_s, sum(times) if times else None, r.limits.run_s,
            len(t.safety) if t else None, "; ".join(f"{f.code}: {f.text}" for f in r.flags) or None, r.run_dir))
    return _t("runs", "Runs: status and QC flags", RUN_COLUMNS, rows)


def overview_table(study: Study) -> StudyTable:
    """One row per participant and session: calibration, runs by status, attempts."""
    keys: set[tuple[str, str | None]] = {(r.participant, r.session) for r in study.runs}
    keys |= {(c.participant, c.session) for c in study.calibrations}
    keys |= {(a.participant, a.session) for a in study.attempts}
    keys |= {(p.label, None) for p in study.participants if not any(k[0] == p.label for k in keys)}
    rows = []
    for participant, session in sorted(keys, key=lambda k: (k[0], k[1] or "")):
        runs = [r for r in study.runs if r.participant == participant and r.session == session]
        cals = [c for c in study.calibrations if c.participant == participant and c.session == session
                and c.status == "result"]
        rows.append((
            participant, study.group_of(participant), session,
            cals[-1].pressure_kpa if cals else None,
            " | ".join(f"{r.task} {r.run}: {status_word(r)}" + (f" ({r.reason})" if r.status == "aborted" else "")
                       for r in runs) or None,
            sum(r.status == "completed" and not r.discard.discarded for r in runs),
            sum(r.status == "aborted" and not r.discard.discarded for r in runs),
            sum(r.status == "incomplete" and not r.discard.discarded for r in runs),
            sum(r.discard.discarded for r in runs),
            sum(a.participant == participant and a.session == session for a in study.attempts),
            sum(len(r.flags) for r in runs if not r.discard.discarded)))
    return _t("overview", "Participants, sessions and runs", (
        ("participant", "participant label"), ("group", "group"), ("session", "session label"),
        ("calibrated_kpa", "newest calibrated pressure of the session (kPa)", 1),
        ("runs", "every run: task, number, status"), ("completed", "completed runs (not discarded)"),
        ("aborted", "aborted runs (not discarded)"), ("incomplete", "runs whose log has no end record"),
        ("discarded", "discarded runs"), ("attempts", "runs stopped before the first volume (no run number)"),
        ("qc_flags", "QC flags on the runs that count")), rows)


# ---------------------------------------------------------------- calibrations

def calibrations_table(study: Study) -> StudyTable:
    rows = [(c.participant, study.group_of(c.participant), c.session, c.number, c.status, c.detail, c.pressure_kpa,
             c.method, c.target_rating, c.ceiling_kpa, c.dry_run, c.created, c.file) for c in study.calibrations]
    return _t("calibrations", "Calibrations", (
        ("participant", "participant label"), ("group", "group"), ("session", "session of the calibration"),
        ("calibration", "number n of sub-<id>_calibration-<n>"), ("status", "result, no result, unreadable"),
        ("detail", "why there is no result"), ("pressure_kpa", "calibrated pressure (kPa)", 2),
        ("method", "staircase or ramp"), ("target_rating", "rating the pressure was calibrated to", 0),
        ("ceiling_kpa", "ceiling of the calibration (kPa)", 1), ("dry_run", "made in a dry run"),
        ("created", "when"), ("file", "result file, or the log of an attempt without one")), rows)


def newest_calibrations(study: Study) -> dict[str, float]:
    """participant -> pressure of the newest calibration with a result."""
    out: dict[str, float] = {}
    for c in sorted(study.calibrations, key=lambda c: c.number):
        if c.status == "result" and c.pressure_kpa is not None:
            out[c.participant] = c.pressure_kpa
    return out


def _summary(values: Sequence[float]) -> tuple[Cell, ...]:
    xs = sorted(values)
    return (_mean(xs), _sd(xs), statistics.median(xs) if xs else None, xs[0] if xs else None,
            xs[-1] if xs else None)


def calibration_groups_table(study: Study) -> StudyTable:
    newest = newest_calibrations(study)
    rows = []
    for g in study.groups:
        xs = [v for p, v in newest.items() if study.group_of(p) == g]
        if xs:
            rows.append((g, len(xs), *_summary(xs)))
    return _t("calibrations_by_group", "Calibrated pressure by group", (
        ("group", "group"), ("participants", "participants with a calibration result"),
        ("mean_kpa", "mean of each participant's newest calibrated pressure (kPa)", 2),
        ("sd_kpa", "standard deviation across participants (kPa)", 2), ("median_kpa", "median (kPa)", 2),
        ("min_kpa", "lowest (kPa)", 2), ("max_kpa", "highest (kPa)", 2)), rows,
        note="Each participant's newest calibration with a result.")


def run_pressure_table(study: Study) -> StudyTable:
    rows = [(r.participant, study.group_of(r.participant), r.session, r.task, r.run, level, kpa, r.pressure_source,
             r.pressure_note) for r in study.runs for level, kpa in r.pressure_levels]
    return _t("run_pressures", "Pressure given in each run", (
        ("participant", "participant label"), ("group", "group"), ("session", "session"), ("task", "task"),
        ("run", "run"), ("level", "the protocol's pressure level ('target' when it has one pressure)"),
        ("pressure_kpa", "pressure (kPa)", 2), ("source", "protocol, calibration or override"),
        ("note", "override reason, or the calibration file")), rows,
        note="One row per pressure level of each run.")


# ---------------------------------------------------------------- ratings

def _rating_keys(study: Study) -> list[tuple[str, str]]:
    keys: list[tuple[str, str]] = []
    for r in study.runs:
        for x in r.ratings:
            if (x.trial_type, x.phase) not in keys:
                keys.append((x.trial_type, x.phase))
    return keys


def participant_ratings(study: Study) -> dict[tuple[str, str, str], list[float]]:
    """(participant, trial_type, phase) -> every rating in the runs that count."""
    out: dict[tuple[str, str, str], list[float]] = {}
    for r in study.runs:
        if r.counted:
            for x in r.ratings:
                out.setdefault((r.participant, x.trial_type, x.phase), []).append(x.rating)
    return out


def ratings_participants_table(study: Study) -> StudyTable:
    per = participant_ratings(study)
    rows = [(p, study.group_of(p), tt, ph, len(xs), _mean(xs), _sd(xs))
            for (p, tt, ph), xs in sorted(per.items())]
    return _t("ratings_by_participant", "Ratings by participant and trial type", (
        ("participant", "participant label"), ("group", "group"), ("trial_type", "the trial's type"),
        ("phase", "rating phase"), ("ratings", "answered ratings"), ("mean_rating", "mean rating", 2),
        ("sd_rating", "standard deviation", 2)), rows,
        note="Runs that count only (not discarded); timed-out ratings are left out.")


def ratings_groups_table(study: Study) -> StudyTable:
    per = participant_ratings(study)
    rows = []
    for tt, ph in _rating_keys(study):
        for g in study.groups:
            means = [m for (p, t, f), xs in per.items() if t == tt and f == ph and study.group_of(p) == g
                     and (m := _mean(xs)) is not None]
            n = sum(len(xs) for (p, t, f), xs in per.items() if t == tt and f == ph and study.group_of(p) == g)
            if means:
                rows.append((tt, ph, g, len(means), n, *_summary(means)))
    return _t("ratings_by_group", "Ratings by trial type and group", (
        ("trial_type", "the trial's type"), ("phase", "rating phase"), ("group", "group"),
        ("participants", "participants with ratings"), ("ratings", "answered ratings"),
        ("mean_rating", "mean of the participants' mean ratings", 2),
        ("sd_rating", "standard deviation across participants", 2), ("median_rating", "median", 2),
        ("min_rating", "lowest participant mean", 2), ("max_rating", "highest participant mean", 2)), rows,
        note="Each participant's ratings are averaged first; discarded runs are left out.")


# ---------------------------------------------------------------- inflation

def inflation_table(study: Study) -> StudyTable:
    rows = []
    for r in study.runs:
        for s in r.stimuli:
            limit = r.limits.stimulus_s
            pct = 100 * s.inflated_s / limit if (s.inflated_s is not None and limit) else None
            rows.append((r.participant, study.group_of(r.participant), r.session, r.task, r.run, s.trial,
                         s.trial_type, s.target_kpa, s.measured_kpa, s.deviation_kpa, s.peak_kpa, s.inflated_s,
                         limit, pct, r.discard.discarded))
    return _t("stimuli", "Stimuli: commanded and measured pressure, inflation time against the limit", (
        ("participant", "participant label"), ("group", "group"), ("session", "session"), ("task", "task"),
        ("run", "run"), ("trial", "trial"), ("trial_type", "trial type"),
        ("target_kpa", "commanded pressure (kPa)", 2),
        ("measured_kpa", "mean measured pressure while holding (kPa)", 3),
        ("deviation_kpa", "largest |measured - target| over the stimulus' cuff phases (kPa)", 3),
        ("peak_kpa", "highest measured pressure (kPa)", 2),
        ("inflated_s", "inflate command to deflate or vent (s), as the interlock counts", 3),
        ("limit_s", "protocol's limit per stimulus (s)", 1), ("percent_of_limit", "inflated_s / limit_s (%)", 1),
        ("run_discarded", "the run is discarded")), rows)


# ---------------------------------------------------------------- plans, problems

def missing_table(study: Study) -> StudyTable:
    done = []
    for p in study.participants:
        runs = tuple((r.session, r.task) for r in study.runs
                     if r.participant == p.label and r.status == "completed" and not r.discard.discarded)
        cals = tuple(c.session for c in study.calibrations if c.participant == p.label and c.status == "result")
        done.append(Done(p.label, runs, cals))
    missing = missing_steps(study.plans.plans, [p.label for p in study.participants], done)
    rows = [(m.participant, study.group_of(m.participant), m.plan, m.session, m.kind, m.task, m.expected, m.found)
            for m in missing]
    return _t("missing_from_plans", "Runs missing from the visit plans", (
        ("participant", "participant label"), ("group", "group"), ("plan", "visit plan"), ("session", "session"),
        ("step", "run or calibration"), ("task", "task of a planned run"), ("planned", "planned count"),
        ("done", "completed and not discarded")), rows, note=study.plans.note)


def problems_table(study: Study) -> StudyTable:
    return _t("problems", "What could not be read", (("path", "file or directory, relative to the dataset root"),
                                                      ("problem", "what is wrong, and what was done")),
              [(p.path, p.what) for p in study.problems])


@dataclass(frozen=True)
class StudyTables:
    overview: StudyTable
    runs: StudyTable
    calibrations: StudyTable
    calibration_groups: StudyTable
    run_pressures: StudyTable
    ratings_participants: StudyTable
    ratings_groups: StudyTable
    stimuli: StudyTable
    missing: StudyTable
    problems: StudyTable

    def all(self) -> tuple[StudyTable, ...]:
        return (self.overview, self.runs, self.calibrations, self.calibration_groups, self.run_pressures,
                self.ratings_participants, self.ratings_groups, self.stimuli, self.missing, self.problems)


def study_tables(study: Study) -> StudyTables:
    return StudyTables(overview=overview_table(study), runs=runs_table(study), calibrations=calibrations_table(study),
                       calibration_groups=calibration_groups_table(study), run_pressures=run_pressure_table(study),
                       ratings_participants=ratings_participants_table(study),
                       ratings_groups=ratings_groups_table(study), stimuli=inflation_table(study),
                       missing=missing_table(study), problems=problems_table(study))


def finite(x: Cell) -> float | None:
    """A finite number from a cell, else None (for plotting)."""
    if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x):
        return None
    return float(x)
