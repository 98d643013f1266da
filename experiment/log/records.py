"""The typed records of the logs: one TypedDict per record kind, per kind of log.

Every record a cuedpain log holds is declared here, with its fields and their types, and
the comment after each field is its one-line documentation: docs/event-log.md's record
tables are generated from this module (`python -m experiment.log.generate`), and the
writers pass these types to `LogFile.write`, so mypy checks each record's fields where it
is made. `seq` (added by `LogFile`) is in every record and is not repeated here.

Logs of one kind share a registry (`REGISTRY`: log kind -> record kind -> TypedDict):
a run's `log.jsonl`, a calibration's (and a pressure check's) log, a rig-check log, and
the `pressure.jsonl` of runs and calibrations. `log_kind(header)` says which a header
belongs to. A kind may mean different fields in different logs (`rating`, `end`).

The header (first line: `kind: header`, `format`, then the session's facts) is described in
prose in docs/event-log.md; of its fields, the run's `pressure` is typed here (`PressureInfo`).

Times: `t` and every `t_*` field are seconds on the log's clock.
"""

from __future__ import annotations

from typing import Literal, Mapping, Union

# typing_extensions: `NotRequired` is Python 3.11+, and pydantic (used by the conformance
# test to validate logs) needs typing_extensions' TypedDict before Python 3.12
from typing_extensions import NotRequired, TypedDict

# ---------------------------------------------------------------- every log


class LevelPressure(TypedDict):
    """One pressure level of a run, resolved (the header's `pressure.levels`)."""

    pressure_kpa: float
    pressure_mmhg: float
    as_written: str              # as the protocol says it
    source: str                  # protocol, calibration, override
    fraction: NotRequired[float]  # a fraction of the calibrated pressure
    rating: NotRequired[float]   # the fit's pressure for this rating


class PressureInfo(TypedDict):
    """A run's pressure and where it came from (the header's `pressure`; docs/calibration.md)."""

    pressure_kpa: float | None   # the one level's pressure (null with several levels)
    pressure_mmhg: float | None
    source: str                  # protocol, calibration, override
    levels: dict[str, LevelPressure]
    as_written: NotRequired[str]                 # protocol: the stimulation as written
    override_kpa: NotRequired[float]             # override: the operator's pressure
    reason: NotRequired[str]                     # override: the operator's reason
    calibration_file: NotRequired[str]           # calibration: the file taken
    calibrated_kpa: NotRequired[float]           # its pressure
    fraction: NotRequired[float | None]          # the one level's fraction of it
    named: NotRequired[bool]                     # named with --calibration
    calibration_created: NotRequired[str | None]
    calibration_session: NotRequired[str | None]
    calibration_dry_run: NotRequired[bool | None]
    calibration_method: NotRequired[str | None]
    calibration_target_rating: NotRequired[float | None]
    calibration_ceiling_kpa: NotRequired[float | None]
    calibration_cuff: NotRequired[Mapping[str, object] | None]  # the cuff it was made with
    description: NotRequired[str]                # the calibration in one line


class WarningRecord(TypedDict):
    """Anything the operator was warned about."""

    kind: Literal["warning"]
    t: float                     # when
    code: str                    # a reason code (console_lost, refresh_mismatch, stimulation_off, reanchor_clamped, scanner_silent, cuff_release_not_verified, cuff_state_unknown, cuff_thread_not_stopped, cuff_close_failed, cuff_listener_failed, participant_fields_not_kept, lsl_failed, observer_close_failed, ...)
    message: str                 # what the operator was told


class SafetyRecord(TypedDict):
    """An interlock fired (the cuff supervisor, the trial loop or the calibration adds it)."""

    kind: Literal["safety"]
    t: float                     # when it fired
    reason: str                  # a reason code of experiment/cuff/safety.py (over_ceiling, not_panel_pressure (a gated inflator sent a target other than its panel setting), stimulus_time_limit, run_time_limit, device_estop, connection_lost, latched_at_start, ...), participant_stop_key/_button, or the reason given to emergency_vent
    action: str                  # vent, estop, stop; refuse (nothing was sent); `stimulation off, run continues`
    message: NotRequired[str]    # what happened, in words (absent for a participant stop the run goes on after)
    i: NotRequired[int | None]   # plan index (stimulus index in a calibration) of a refused target


class CuffCmdRecord(TypedDict):
    """One command to the cuff (heartbeats are counted, not logged; a failed one is)."""

    kind: Literal["cuff_cmd"]
    t_write: float | None        # just before the bytes went to the OS (null: nothing was written)
    t_ack: float | None          # when the reply arrived (null: no reply)
    command: str                 # the command (SET, DEFLATE, VENT, ARM, STATUS, PING, ...)
    reply: str | None            # the reply as received (null: none)
    ok: bool                     # the command was acknowledged
    i: int | None                # plan index (stimulus index in a calibration) the command belongs to, or null
    purpose: str                 # why it was sent (stimulus, deflate, vent, arm, heartbeat, ...)
    error: NotRequired[str]      # what went wrong (only when `ok` is false)
    planned_t: NotRequired[float]  # a run's stimulus or deflation: when the plan wanted it written (t0 + onset, as re-anchored)


class CuffEventRecord(TypedDict):
    """An unsolicited device event."""

    kind: Literal["cuff_event"]
    t: float                     # host arrival time
    name: str                    # TARGET_REACHED, DEFLATED, ESTOP, FAULT, ...
    fields: Mapping[str, object]  # the event's fields as the device sent them


class KeyRecord(TypedDict):
    """A participant or operator key."""

    kind: Literal["key"]
    t: float                     # key press time (the keyboard's timestamp)
    key: str                     # the key's name
    role: str                    # response, confirm, stop, escape, operator


class OperatorRecord(TypedDict):
    """A stop the operator asked for."""

    kind: Literal["operator"]
    t: float                     # when the signal or key arrived
    action: str                  # escape, sigint, sigterm, sighup (sigbreak, console close on Windows)


class InstructionsRecord(TypedDict):
    """An instruction page reached the screen (before `waiting` in a run)."""

    kind: Literal["instructions"]
    t: float                     # flip time
    page: int                    # 1-based
    n_pages: int                 # pages in all
    text: str                    # the page as shown


class InstructionsTurnedRecord(TypedDict):
    """An instruction page was turned."""

    kind: Literal["instructions_turned"]
    t: float                     # when
    page: int                    # 1-based
    by: str                      # participant (confirm key), operator (space), or dry run (turned by itself)


class EndFields(TypedDict):
    """What a procedure says about how it ended; the Station adds `kind`, `t` and `end_wall`."""

    status: Literal["completed", "aborted"]
    reason: str
    message: str
    exit_code: int
    last_i: NotRequired[int | None]
    result: NotRequired[str | None]


class EndUpdate(TypedDict, total=False):
    """What a procedure adds to its `end` fields once the devices are closed (a result file, or a failure)."""

    status: Literal["completed", "aborted"]
    reason: str
    message: str
    exit_code: int
    last_i: int | None
    result: str | None


class EndRecord(TypedDict):
    """The last record of a run or calibration that ended in order."""

    kind: Literal["end"]
    t: float                     # when
    status: Literal["completed", "aborted"]  # completed or aborted
    reason: str                  # a reason code: completed, escape, sigint, device_fault, log_write_failed, internal_error, ...
    message: str                 # the operator's message (may be empty)
    exit_code: int               # the process' exit code (0, 3, 4)
    end_wall: str                # ISO 8601 local time with offset
    last_i: NotRequired[int | None]   # a run: plan index of the last phase that reached the screen
    result: NotRequired[str | None]   # a calibration or pressure check: the result file's name, or null


# ---------------------------------------------------------------- a run's log.jsonl


class PlanRecord(TypedDict):
    """One timeline event, written before the start (one per event)."""

    kind: Literal["plan"]
    i: int                       # plan index (0-based)
    trial: int                   # 1-based trial number (0 for lead_in and tail)
    trial_type: str | None       # the trial type's name (null for lead_in and tail)
    phase: str                   # the phase's name
    onset_s: float               # planned onset from t0
    duration_s: float            # planned duration
    cue: str | None              # the cue drawn, after cue mapping (null: a blank screen)
    cuff: str                    # none, inflate, hold, deflate (the command at the phase's start)
    target_kpa: float | None     # inflate/hold: the target; else 0
    rate_kpa_s: float | None     # the inflation's rate
    timed_from: str              # onset or target_reached
    ramp_s: float                # inflate phases: predicted ramp time target / rate; else 0
    bids_trial_type: str | None  # trial_type in events.tsv (null: not an event there)
    phase_kind: str              # cue or rating
    level: str | None            # the pressure level of an inflating phase, else null
    scale: str | None            # the rating scale of a rating phase, else null
    cuff_at: NotRequired[str]    # planned (the cuff command at its planned time, from the scheduler thread) or flip (on the phase's flip); absent in older logs


class DisplayInfo(TypedDict):
    """The display as measured (a `display` record without its kind)."""

    refresh_hz: float            # the refresh rate frames are timed at
    measured_refresh_hz: NotRequired[float]  # a real window: the rate measured at open
    frame_s: float               # one frame
    resolution: list[int] | None  # [w, h] (null: simulated)
    fullscreen: bool             # full screen window
    vsync: bool                  # flips wait for vertical sync
    simulated: bool              # a simulated display (headless)


class DisplayRecord(DisplayInfo):
    """The display as measured."""

    kind: Literal["display"]


class WaitingRecord(TypedDict):
    """Waiting for the scanner started."""

    kind: Literal["waiting"]
    t: float                     # when
    what: str                    # what is awaited, as the console said it


class PulseRecord(TypedDict):
    """A scanner pulse (every one)."""

    kind: Literal["pulse"]
    t: float                     # arrival time
    index: int                   # the source's count (0-based)
    source: str                  # keyboard, serial, sim, syncgenerator
    volume: int | None           # 0-based stored-volume index, null for a discarded pulse


class T0Record(TypedDict):
    """Time zero fixed."""

    kind: Literal["t0"]
    t: float                     # t0: the pulse of the first stored volume
    pulse_index: int | None      # that pulse's index


class OnsetRecord(TypedDict):
    """A phase's visual change reached the screen."""

    kind: Literal["onset"]
    t: float                     # flip time
    i: int                       # plan index
    trial: int                   # trial number
    phase: str                   # phase name
    cue: str | None              # the cue shown
    planned_t: float             # t0 + planned onset (possibly re-anchored)
    onset_s: float               # t - t0
    planned_onset_s: float       # the plan's onset_s


class ReanchorRecord(TypedDict):
    """A phase timed from target reached moved the later phases of its trial."""

    kind: Literal["reanchor"]
    t: float                     # when the target was reached
    i: int                       # plan index of the inflating phase
    shift_s: float               # how much later (negative: earlier) than predicted


class RatingRecord(TypedDict):
    """One rating phase shown: written when the rating is confirmed, times out, or the phase ends."""

    kind: Literal["rating"]
    t_onset: float | None        # flip time of the scale's first frame
    t_response: float | None     # the confirming key press (null: timed out)
    i: int                       # plan index of the phase that showed the scale
    trial: int                   # trial number
    phase: str                   # phase name
    scale: str | None            # the scale shown (absent in logs written before scales were named)
    rating: float | None         # the rating (null: timed out)
    response_time_s: float | None  # t_response - t_onset
    timed_out: bool              # no confirmation before the scale's timeout or the phase's end
    moved: bool                  # the participant moved the marker
    t: float                     # when it was logged


class ButtonRecord(TypedDict):
    """A press on a serial button box (docs/buttons.md); the `key` record that follows says what it did."""

    kind: Literal["button"]
    t: float                     # when its last byte was read (the reader thread's stamp)
    button: str                  # its name: the key name it presses
    raw: str                     # its bytes, hex
    device_ms: int | None        # a Cedrus pad's own reaction timer (null for a fORP or a byte map)


class UnmatchedBytesRecord(TypedDict):
    """Bytes on a button box's line that were neither a trigger nor a button (since the last frame): ignored."""

    kind: Literal["unmatched_bytes"]
    t: float                     # arrival of the first of them
    n: int                       # how many
    head: str                    # the first 32 of them, hex


class LslCounts(TypedDict):
    """Samples pushed to the Lab Streaming Layer outlets."""

    markers: int
    pressure: int


class LslRecord(TypedDict):
    """The Lab Streaming Layer outlets opened or closed (`run --lsl`; docs/lsl.md)."""

    kind: Literal["lsl"]
    t: float                     # when
    event: str                   # open, close
    offset_s: float              # LSL time - run time (pylsl.local_clock() minus the run's clock): a sample at run time t was stamped t + the open record's offset_s
    offset_uncertainty_s: float  # half the tightest bracket of run-clock reads around the LSL reading
    streams: NotRequired[list[str]]         # open: the streams' names
    source_id: NotRequired[str]             # open: their source id (without _markers / _pressure)
    pressure_hz: NotRequired[float]         # open: the pressure stream's nominal rate
    liblsl: NotRequired[int]                # open: liblsl's version
    pushed: NotRequired[LslCounts]          # close: samples pushed
    offset_change_s: NotRequired[float]     # close: this offset minus the open record's


class FrameSummary(TypedDict):
    """Frame statistics so far (a `frames` record without its kind)."""

    t: float                     # when
    n: int                       # frames so far
    dropped: int                 # dropped frames so far
    max_interval_s: float        # the longest frame interval
    p99_interval_s: float        # the 99th percentile of frame intervals


class FramesRecord(FrameSummary):
    """Frame statistics, once per trial and at the end."""

    kind: Literal["frames"]


class GcRecord(TypedDict):
    """Garbage collection in a real-time run (experiment/station/realtime.py)."""

    kind: Literal["gc"]
    t: float                     # when
    action: str                  # freeze (after set-up: everything so far frozen, automatic collection off) or collect (in a quiet phase)
    collected: int               # objects collected
    duration_s: float            # how long it took
    frozen: NotRequired[int]     # freeze: objects frozen
    slack_s: NotRequired[float]  # collect: time left to the next event


class PriorityRecord(TypedDict):
    """What the operating system granted when a real-time run raised its priority."""

    kind: Literal["priority"]
    t: float                     # when
    asked: str                   # e.g. nice -10
    obtained: bool               # granted
    nice_before: NotRequired[int | None]  # the niceness before
    nice: NotRequired[int | None]         # the niceness now (when obtained, or unchanged)
    message: NotRequired[str]    # why not (when not obtained)
    switch_interval_s: NotRequired[float]  # Python's thread switch interval during the run
    threads: NotRequired[int]    # threads given the niceness (every thread of the process; Linux)
    thread: NotRequired[str]     # one thread's own policy (asked: SCHED_FIFO 1): which thread


class FrameDropRecord(TypedDict):
    """A dropped frame."""

    kind: Literal["frame_drop"]
    t: float                     # the late flip
    interval_s: float            # the interval that ended there


# ---------------------------------------------------------------- a calibration's log (and a pressure check's)


class StimulusRecord(TypedDict):
    """A stimulus started (SET written)."""

    kind: Literal["stimulus"]
    t: float                     # SET written
    index: int                   # stimulus index (1-based)
    method: str                  # ramp, staircase, confirmation, scanner_check
    target_kpa: float            # the target (a ramp's: the ceiling)
    rate_kpa_s: float            # inflation rate
    hold_s: NotRequired[float]   # a plateau's hold


class StimulusEndRecord(TypedDict):
    """A stimulus ended (vented and released)."""

    kind: Literal["stimulus_end"]
    t: float                     # the release was seen
    index: int                   # stimulus index
    ended: str                   # target_press, ceiling, plateau done
    t_vent: float                # VENT written


class PressRecord(TypedDict):
    """A ramp's press (written after the ramp, when the trace covers it)."""

    kind: Literal["press"]
    t: float                     # the key press
    index: int                   # stimulus index
    what: str                    # detection, target
    pressure_kpa: float | None   # the pressure at the press (null: the trace did not cover it)


class CalibrationRatingRecord(TypedDict):
    """A plateau's rating."""

    kind: Literal["rating"]
    t: float                     # when it was logged
    t_onset: float | None        # flip time of the scale's first frame
    t_response: float | None     # the confirming key press (null: timed out)
    index: int                   # stimulus index
    target_kpa: float            # the plateau's target
    pressure_kpa: float          # the plateau's measured pressure
    rating: float | None         # the rating (null: timed out)
    response_time_s: float | None  # t_response - t_onset
    timed_out: bool              # no confirmation before the scale's timeout
    moved: bool                  # the participant moved the marker


class SimRecord(TypedDict):
    """The simulated participant did something a real one does with the hardware."""

    kind: Literal["sim"]
    t: float                     # when
    action: str                  # what it did, in words


class ParticipantFieldsRecord(TypedDict):
    """The `--field` values kept in participants.tsv."""

    kind: Literal["participant_fields"]
    t: float                     # when they were written
    fields: Mapping[str, str]    # NAME: VALUE


class DoneRecord(TypedDict):
    """The procedure's steps are over."""

    kind: Literal["done"]
    t: float                     # when
    reason: str                  # why it stopped (a code)
    message: str                 # in words


class FitFields(TypedDict):
    """A calibration's monotone fit (in the `fit` record and the result file)."""

    method: str                  # the fit's method
    pressure_kpa: float          # the pressure for the target rating
    target_rating: float         # the rating aimed at
    knots_kpa: list[float]       # pressures of the fitted points
    fitted_ratings: list[float]  # fitted ratings at the knots
    weights: list[int]           # ratings per knot
    bracket_kpa: list[float]     # the knots around the answer
    kendall_tau: float | None    # rank correlation of pressure and rating (reported only)
    max_reversal: float          # largest rating drop at a higher pressure
    max_reversal_allowed: float  # the limit on it
    n: int                       # ratings used


class FitRecord(TypedDict):
    """The fit (or why there is none)."""

    kind: Literal["fit"]
    t: float                     # when
    ok: bool                     # a fit was made
    error: NotRequired[str]      # why not (only when `ok` is false)
    method: NotRequired[str]     # the fit's fields (only when `ok` is true): as in the result's `fit`
    pressure_kpa: NotRequired[float]           # the pressure for the target rating
    target_rating: NotRequired[float]          # the rating aimed at
    knots_kpa: NotRequired[list[float]]        # pressures of the fitted points
    fitted_ratings: NotRequired[list[float]]   # fitted ratings at the knots
    weights: NotRequired[list[int]]            # ratings per knot
    bracket_kpa: NotRequired[list[float]]      # the knots around the answer
    kendall_tau: NotRequired[float | None]     # rank correlation (reported only)
    max_reversal: NotRequired[float]           # largest rating drop at a higher pressure
    max_reversal_allowed: NotRequired[float]   # the limit on it
    n: NotRequired[int]                        # ratings used


class DecisionRecord(TypedDict):
    """A pressure check's decision (confirm-pressure, scanner-check)."""

    kind: Literal["decision"]
    t: float                     # when
    ok: bool                     # a pressure was kept
    pressure_kpa: NotRequired[float]  # the kept pressure
    decision: NotRequired[str]   # confirmed, adjusted
    rule: NotRequired[str]       # how it was chosen, in words
    error: NotRequired[str]      # why nothing was kept (only when `ok` is false)


# ---------------------------------------------------------------- a rig-check log


class CuffCheckRecord(TypedDict):
    """What `rig-check` found about the cuff."""

    kind: Literal["cuff_check"]
    device: Mapping[str, object]   # the cuff's identity as it identified itself
    status: Mapping[str, object]   # its state, pressure, armed maximum, error code
    ping: Mapping[str, object]     # round-trip figures (ms)
    latency_advice: str | None     # how to lower the serial latency, when it is high
    test_pulse: Mapping[str, object] | None  # the test pulse's findings (null: none given)
    latched: str | None            # the fault it is latched in, with its meaning (null: not latched)
    ok: bool                       # the cuff is fit


class ClearFaultRecord(TypedDict):
    """`--clear-fault` cleared a latched cuff."""

    kind: Literal["clear_fault"]
    t: float                     # CLEAR acknowledged
    state: str                   # the state it was latched in
    error_code: int              # the device's error code
    meaning: str                 # what that fault means
    reply: str                   # the reply to CLEAR
    state_after: str             # the state after


class ScannerCheckRecord(TypedDict):
    """What `rig-check` found about the trigger line."""

    kind: Literal["scanner_check"]
    spec: str                    # the trigger source's spec
    n_pulses: int                # pulses heard
    listen_s: float              # how long it listened
    expected_tr_s: float | None  # the TR expected (null: none given)
    tr_median_s: float | None    # the TR estimate (median interval)
    tr_mean_s: float | None      # mean interval
    tr_sd_s: float | None        # SD of the intervals
    n_missed: int                # intervals that look like missed pulses
    per_slice: bool              # the line seems to pulse per slice, not per volume
    problems: list[str]          # what is wrong, in words
    ok: bool                     # no problems


class RigCheckEndRecord(TypedDict):
    """The last record of a rig-check log."""

    kind: Literal["end"]
    ok: bool                     # every checked part is fit


# ---------------------------------------------------------------- pressure.jsonl


class PressureRecord(TypedDict):
    """One cuff pressure sample."""

    kind: Literal["p"]
    t: float                     # host arrival time
    dev_ms: int                  # the device's own millisecond counter
    p: float                     # pressure (kPa)
    tgt: float                   # the device's target (kPa)
    st: str                      # the device's state


# ---------------------------------------------------------------- unions and the registry

#: what the cuff supervisor records (it also goes to the calibration's and rig-check's logs)
SupervisorRecord = Union[CuffCmdRecord, CuffEventRecord, SafetyRecord, WarningRecord]

#: what runs and calibrations both write
_SharedRecord = Union[SupervisorRecord, KeyRecord, OperatorRecord, InstructionsRecord, InstructionsTurnedRecord,
                      EndRecord]
_RunOnlyRecord = Union[PlanRecord, DisplayRecord, WaitingRecord, PulseRecord, T0Record, OnsetRecord, ReanchorRecord,
                       RatingRecord, FramesRecord, FrameDropRecord, GcRecord, PriorityRecord, ButtonRecord,
                       UnmatchedBytesRecord, LslRecord]
_CalibrationOnlyRecord = Union[StimulusRecord, StimulusEndRecord, PressRecord, CalibrationRatingRecord, SimRecord,
                               ParticipantFieldsRecord, DoneRecord, FitRecord, DecisionRecord]

RunRecord = Union[_SharedRecord, _RunOnlyRecord]
CalibrationRecord = Union[_SharedRecord, _CalibrationOnlyRecord]

RigCheckRecord = Union[CuffCheckRecord, ClearFaultRecord, ScannerCheckRecord, RigCheckEndRecord]

#: a record of a session's `log.jsonl` (what the Station records: a run's or a calibration's)
SessionRecord = Union[_SharedRecord, _RunOnlyRecord, _CalibrationOnlyRecord]

#: any record `LogFile.write` takes (the header is written by `LogFile` itself)
LogRecord = Union[SessionRecord, RigCheckRecord, PressureRecord]

#: the log kinds, in the order docs/event-log.md lists them
LOG_KINDS: tuple[tuple[str, str], ...] = (
    ("run", "Records in a run's `log.jsonl`"),
    ("calibration", "Records in a calibration's log (and a pressure check's: `confirm-pressure`, `scanner-check`)"),
    ("rig-check", "Records in a rig-check log"),
    ("pressure", "Records in `pressure.jsonl` (runs and calibrations)"),
)

#: log kind -> record kind -> its TypedDict
REGISTRY: dict[str, dict[str, type]] = {
    "run": {"plan": PlanRecord, "display": DisplayRecord, "instructions": InstructionsRecord,
            "instructions_turned": InstructionsTurnedRecord, "waiting": WaitingRecord, "pulse": PulseRecord,
            "t0": T0Record, "onset": OnsetRecord, "cuff_cmd": CuffCmdRecord, "cuff_event": CuffEventRecord,
            "reanchor": ReanchorRecord, "rating": RatingRecord, "key": KeyRecord, "frames": FramesRecord,
            "frame_drop": FrameDropRecord, "gc": GcRecord, "priority": PriorityRecord, "warning": WarningRecord,
            "safety": SafetyRecord, "operator": OperatorRecord, "end": EndRecord, "button": ButtonRecord,
            "unmatched_bytes": UnmatchedBytesRecord, "lsl": LslRecord},
    "calibration": {"cuff_cmd": CuffCmdRecord, "cuff_event": CuffEventRecord, "safety": SafetyRecord,
                    "warning": WarningRecord, "key": KeyRecord, "instructions": InstructionsRecord,
                    "instructions_turned": InstructionsTurnedRecord, "stimulus": StimulusRecord,
                    "stimulus_end": StimulusEndRecord, "press": PressRecord, "rating": CalibrationRatingRecord,
                    "sim": SimRecord, "operator": OperatorRecord, "participant_fields": ParticipantFieldsRecord,
                    "done": DoneRecord, "fit": FitRecord, "decision": DecisionRecord, "end": EndRecord},
    "rig-check": {"cuff_check": CuffCheckRecord, "clear_fault": ClearFaultRecord,
                  "scanner_check": ScannerCheckRecord, "end": RigCheckEndRecord},
    "pressure": {"p": PressureRecord},
}

_CALIBRATION_PURPOSES = frozenset({"calibration", "confirmation", "scanner_check"})


def log_kind(header: Mapping[str, object]) -> str:
    """Which registry a log's records belong to, from its header."""
    if header.get("stream") == "pressure":
        return "pressure"
    purpose = header.get("purpose")
    if purpose == "rig-check":
        return "rig-check"
    return "calibration" if purpose in _CALIBRATION_PURPOSES else "run"

