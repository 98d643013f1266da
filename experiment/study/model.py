"""The study as read from a dataset root: typed, frozen values (no I/O here).

`experiment.study.reader.read_study` builds a `Study`; the aggregation, the page and the
tables only read it. Times are seconds, pressures kPa, onset errors milliseconds; a value
that could not be known is None (`n/a` in files).
"""

from __future__ import annotations

from dataclasses import dataclass

from experiment.outputs.annotations import DiscardState
from experiment.outputs.participants import GROUP_FIELD, MISSING, Declaration
from experiment.study.plans import PlanReading

#: a participant without a group (not in participants.tsv, or the field is n/a or not declared)
NO_GROUP = "no group"


@dataclass(frozen=True)
class Problem:
    """Something the study could not read or had to ignore: where, and what."""

    path: str          # relative to the dataset root when inside it
    what: str


@dataclass(frozen=True)
class Flag:
    """One QC finding on a run: a short code and a sentence."""

    code: str          # onset_error, dropped_frames, missed_pulses, extra_pulses, short_of_volumes, tr_mismatch,
    #                    tr_sidecar, pressure_deviation, pressure_not_held, inflation_limit, safety, warnings,
    #                    log_cut, bids_outputs
    text: str


@dataclass(frozen=True)
class Stimulus:
    """One inflation of a run: commanded against measured pressure, and how long the cuff was inflated."""

    trial: int
    trial_type: str
    target_kpa: float | None
    measured_kpa: float | None     # mean measured pressure while the device held its target (events.tsv)
    deviation_kpa: float | None    # largest |measured - target| over the stimulus' cuff phases
    peak_kpa: float | None
    inflated_s: float | None       # inflate command written -> deflate or vent written (as the interlock counts)


@dataclass(frozen=True)
class Rating:
    """One rating given in a run."""

    trial: int
    trial_type: str                # the trial's type (pain, catch_...)
    phase: str                     # the rating phase that showed the scale
    rating: float


@dataclass(frozen=True)
class Limits:
    """The protocol's limits for the run, from the run's copy of its protocol (None: unknown)."""

    stimulus_s: float | None       # safety.max_inflation_per_stimulus_s
    run_s: float | None            # safety.max_cumulative_inflation_per_run_s
    margin_kpa: float | None       # safety.compliance_margin_kpa


@dataclass(frozen=True)
class Timing:
    """A run's timing and scanner figures (from experiment.outputs.derive and the pulse monitor)."""

    n_onsets: int
    onset_error_median_ms: float | None
    onset_error_p95_ms: float | None
    onset_error_max_ms: float | None   # largest |error|
    frame_ms: float | None
    dropped_frames: int | None
    volumes_expected: int | None
    volumes_received: int
    missed_pulses: int
    extra_pulses: int
    tr_s: float | None                 # the protocol's TR (log header)
    tr_measured_s: float | None        # mean regular pulse interval
    tr_sidecar_s: float | None         # RepetitionTime of task-<label>_bold.json
    safety: tuple[str, ...]            # reason codes of safety records
    warnings: tuple[str, ...]          # codes of warning records


@dataclass(frozen=True)
class RunRecord:
    """One run of the dataset with its status, QC figures and flags."""

    participant: str
    session: str | None
    task: str
    run: int | None
    stem: str
    run_dir: str                       # relative to the root
    status: str                        # completed | aborted | incomplete | unreadable
    status_text: str                   # the run's own summary (why, where it stopped)
    reason: str | None                 # the end record's reason (aborted), or what could not be read
    discard: DiscardState
    dry_run: bool | None = None
    start_wall: str | None = None
    protocol: str | None = None
    pressure_levels: tuple[tuple[str, float], ...] = ()   # (level, kPa) of every pressure level the run gave
    pressure_source: str | None = None  # protocol | calibration | override
    pressure_note: str | None = None    # override reason, or calibration file
    timing: Timing | None = None
    limits: Limits = Limits(None, None, None)
    stimuli: tuple[Stimulus, ...] = ()
    ratings: tuple[Rating, ...] = ()
    flags: tuple[Flag, ...] = ()

    @property
    def counted(self) -> bool:
        """Whether the run enters the group summaries (read, and not discarded)."""
        return self.status != "unreadable" and not self.discard.discarded

    @property
    def pressure_text(self) -> str:
        """The run's pressure(s) in kPa: '36.0', or 'low 25.0, high 41.5' for a design with levels."""
        if len(self.pressure_levels) == 1:
            return f"{self.pressure_levels[0][1]:.1f}"
        return ", ".join(f"{name} {kpa:.1f}" for name, kpa in self.pressure_levels)


@dataclass(frozen=True)
class CalibrationRecord:
    """One calibration of a participant (a result file, or an attempt that ended without one)."""

    participant: str
    session: str | None
    number: int
    file: str                          # relative to the root
    status: str                        # result | no result
    detail: str | None                 # why there is no result
    pressure_kpa: float | None = None
    method: str | None = None
    target_rating: float | None = None
    ceiling_kpa: float | None = None
    dry_run: bool | None = None
    created: str | None = None


@dataclass(frozen=True)
class AttemptRecord:
    """A run that ended before its first stored volume (kept under attempts/, no run number)."""

    participant: str
    session: str | None
    path: str
    reason: str | None


@dataclass(frozen=True)
class ParticipantRecord:
    """A participant: listed in participants.tsv, or found with data only."""

    participant_id: str                # sub-<label>
    fields: tuple[tuple[str, str], ...]
    listed: bool

    @property
    def label(self) -> str:
        return self.participant_id[4:]

    @property
    def group(self) -> str:
        value = dict(self.fields).get(GROUP_FIELD, MISSING)
        return NO_GROUP if value == MISSING else value


@dataclass(frozen=True)
class Study:
    """Everything read from one dataset root."""

    root: str
    read_at: str                       # ISO 8601 wall time
    holds_dry_runs: bool | None
    declaration: Declaration | None
    participants: tuple[ParticipantRecord, ...]
    runs: tuple[RunRecord, ...]
    attempts: tuple[AttemptRecord, ...]
    calibrations: tuple[CalibrationRecord, ...]
    plans: PlanReading
    problems: tuple[Problem, ...]

    def group_of(self, participant: str) -> str:
        pid = participant if participant.startswith("sub-") else f"sub-{participant}"
        return next((p.group for p in self.participants if p.participant_id == pid), NO_GROUP)

    @property
    def groups(self) -> tuple[str, ...]:
        """Groups in the declared order of the levels, then others, `no group` last."""
        declared: tuple[str, ...] = ()
        if self.declaration is not None and (f := self.declaration.field(GROUP_FIELD)) is not None:
            declared = f.level_values
        present = {p.group for p in self.participants}
        ordered = [g for g in declared if g in present]
        ordered += sorted(present - set(ordered) - {NO_GROUP})
        return tuple(ordered + ([NO_GROUP] if NO_GROUP in present else []))
