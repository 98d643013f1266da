"""Protocol file (YAML) -> a validated, frozen `Protocol`.

Public API:
    load_protocol(path) -> Protocol                 read, validate, check image files (the shell)
    parse_protocol(text, *, file, base_dir) -> Protocol   pure: validate text
    PROTOCOL_SPEC                                   the format, field by field (experiment.protocol.schema)
    protocol_json_schema() -> str                   the JSON Schema committed as
                                                    protocols/cuedpain-protocol.schema.json
    Protocol and its parts: Metadata, Cue, CueMapping, Phase, TrialType, TrialList, Rating,
    Stimulation, Safety, Scan, Keys; durations FixedDuration, UniformDuration,
    ChoiceDuration, TruncExpDuration (each with `min_s`, `max_s`).

A protocol describes the science; site hardware lives in a rig file (experiment.protocol.rig).
Every problem is one InputError: `FILE:LINE:COL: field.path: what is wrong and what is
allowed`. Pressures are kPa inside (converted from the unit the file states); durations
are quantised to whole milliseconds. Timing limits that depend on the jitter (worst-case
run length, inflation time) are checked by `experiment.protocol.schedule`, which needs these
values first. See docs/protocol-format.md for the format with an annotated example.

Where the file's shape is the value's shape (Metadata, Phase, CueMapping, TrialList, Scan,
Keys) the value type is a `record` read directly; the other sections are read into
records "as written" (`...Doc`, e.g. a pressure with its unit) and then built into the
values the runner uses (kPa, resolved cues, the calibrated start of the rating scale).
"""

from __future__ import annotations

import hashlib
import math
import os
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath
from typing import Mapping, Union

from experiment import __version__
from experiment.errors import InputError
from experiment.protocol.schema import (AnyOf, Boolean, Choice, Integer, KeyName, ListOf, MapOf, Nullable, Number,
                                        Pair, Record, Refined, Tagged, Text, json_schema_document, record, spec,
                                        suggest)
from experiment.protocol.yamlload import FieldPath, Located, Where, decode_text, parse_yaml
from experiment.units import to_kpa

HARD_MAX_KPA = 100.0          # no supported cuff goes above 100 kPa (the CPAR's pressure scale, docs/cpar.md)
MAX_PHASE_S = 600.0
FIXATION = "fixation"         # the cue shown in the lead-in, the tail and wherever a phase says so
SCHEMA_ID = "https://github.com/cuedpain/cuedpain/protocols/cuedpain-protocol.schema.json"


def to_ms(seconds: float) -> int:
    """Seconds -> whole milliseconds (half up): every duration in cuedpain is quantised to this."""
    return int(math.floor(seconds * 1000.0 + 0.5))


# ---------------------------------------------------------------- field specs shared by several sections

def _name(description: str = "") -> Text:
    return Text(description, pattern=r"[a-z][a-z0-9_]{0,39}",
                pattern_doc="a name of lowercase letters, digits and '_', starting with a letter (at most 40)")


NAME = _name()


def _seconds(description: str, *, minimum: float = 0.0, exclusive: bool = True,
             maximum: float = MAX_PHASE_S) -> Number:
    return Number(description, unit="seconds", minimum=minimum, exclusive_minimum=exclusive, maximum=maximum)


def _kpa(description: str, *, maximum: float) -> Number:
    return Number(description, unit="kPa", minimum=0.0, exclusive_minimum=True, maximum=maximum)


@record
class Pressure:
    """A pressure as written in the file: a value and its unit."""

    value: float = spec(Number("the pressure in `unit`", minimum=0.0, exclusive_minimum=True))
    unit: str = spec(Choice(["kPa", "mmHg"], "pressure unit, always explicit"))

    @property
    def kpa(self) -> float:
        return to_kpa(self.value, self.unit)

    @property
    def as_written(self) -> str:
        return f"{self.value:g} {self.unit}"


PRESSURE = Record(Pressure, "a pressure with its unit, e.g. {value: 40, unit: kPa}")


@record
class LevelDoc:
    """A pressure level as written: a fixed pressure, or (calibrated protocols) a fraction of the
    participant's calibrated pressure or the pressure their calibration gives for a rating."""

    value: float | None = spec(Nullable(Number("a fixed pressure in `unit`", minimum=0.0, exclusive_minimum=True)),
                               default=None)
    unit: str | None = spec(Nullable(Choice(["kPa", "mmHg"], "the unit of `value`")), default=None)
    fraction: float | None = spec(Nullable(Number("this fraction of the participant's calibrated pressure",
                                                  minimum=0.0, exclusive_minimum=True, maximum=1.5)), default=None)
    rating: float | None = spec(Nullable(Number("the pressure the participant's calibration gives for this "
                                                "rating (on the calibration's 0-100 scale, below 100)", minimum=0.0,
                                                exclusive_minimum=True, maximum=100.0)),
                                default=None)


LEVEL = Record(LevelDoc, "one pressure level: {value, unit} (fixed), {fraction} or {rating} (from the "
                         "participant's calibration)")

# ---------------------------------------------------------------- durations

_STEP = Number("grid step of the drawn values (s)", unit="seconds", minimum=0.001, maximum=MAX_PHASE_S)


@dataclass(frozen=True)
class FixedDuration:
    value_s: float

    @property
    def min_s(self) -> float:
        return self.value_s

    @property
    def max_s(self) -> float:
        return self.value_s


@dataclass(frozen=True)
class UniformDuration:
    min_s: float
    max_s: float
    step_s: float


@dataclass(frozen=True)
class ChoiceDuration:
    values_s: tuple[float, ...]

    @property
    def min_s(self) -> float:
        return min(self.values_s)

    @property
    def max_s(self) -> float:
        return max(self.values_s)


@dataclass(frozen=True)
class TruncExpDuration:
    mean_s: float
    min_s: float
    max_s: float
    step_s: float


Duration = Union[FixedDuration, UniformDuration, ChoiceDuration, TruncExpDuration]


@record
class UniformDoc:
    min: float = spec(_seconds("smallest value (s)"))
    max: float = spec(_seconds("largest value (s)"))
    step: float = spec(_STEP, default=0.001)


@record
class ChoiceDoc:
    values: tuple[float, ...] = spec(ListOf(_seconds("one value (s)"), "the values", min_items=1, max_items=1000))


@record
class TruncExpDoc:
    mean: float = spec(_seconds("mean of the drawn values (s); min < mean < (min + max) / 2"))
    min: float = spec(_seconds("smallest value (s)"))
    max: float = spec(_seconds("largest value (s)"))
    step: float = spec(_STEP, default=0.001)


DistDoc = Union[UniformDoc, ChoiceDoc, TruncExpDoc]


def _fixed(seconds: float, path: FieldPath, where: Where) -> FixedDuration:
    if to_ms(seconds) < 1:
        raise where.error(path, f"must be at least 0.001 s (durations are whole milliseconds), got {seconds!r}")
    return FixedDuration(to_ms(seconds) / 1000)


def _build_duration(d: float | DistDoc, path: FieldPath, where: Where) -> Duration:
    """A duration as written -> whole milliseconds, refusing empty ranges and steps that do not fit."""
    if isinstance(d, float):
        return _fixed(d, path, where)
    if isinstance(d, ChoiceDoc):
        return ChoiceDuration(tuple(_fixed(v, path + ("values", i), where).value_s for i, v in enumerate(d.values)))
    lo, hi, step = to_ms(d.min), to_ms(d.max), to_ms(d.step)
    if lo < 1:
        raise where.error(path + ("min",), f"must be at least 0.001 s, got {d.min!r}")
    if lo > hi:
        raise where.error(path + ("max",), f"must be >= min ({lo / 1000:g} s), got {d.max!r}")
    if (hi - lo) % step:
        raise where.error(path + ("step",), f"max - min ({(hi - lo) / 1000:g} s) must be a whole number of "
                                            f"steps; step {step / 1000:g} s does not divide it")
    if isinstance(d, UniformDoc):
        return UniformDuration(lo / 1000, hi / 1000, step / 1000)
    mean = to_ms(d.mean)
    if not lo < mean < (lo + hi) / 2:
        raise where.error(path + ("mean",), f"must be more than min ({lo / 1000:g} s) and less than "
                                            f"(min + max) / 2 ({(lo + hi) / 2000:g} s) for a truncated "
                                            f"exponential, got {d.mean!r}")
    return TruncExpDuration(mean / 1000, lo / 1000, hi / 1000, step / 1000)


_DISTS: dict[str, Record[DistDoc]] = {
    "uniform": Record(UniformDoc, "uniform over min, min+step, ..., max (max - min must be a whole number of steps)"),
    "choice": Record(ChoiceDoc, "the values dealt out as a shuffled deck: each value once per pass through the list, "
                                "so over a multiple of the list length every value occurs equally often"),
    "truncexp": Record(TruncExpDoc, "exponential from min, truncated at max, scaled so the truncated mean is `mean`; "
                                    "values rounded to the step grid from min"),
}
DURATION = Refined(AnyOf(_seconds("fixed duration in seconds"), Tagged("dist", _DISTS),
                         description="a phase duration: seconds, or a distribution drawn once per trial"),
                   _build_duration)

# ---------------------------------------------------------------- cues as written

_COLOR = Text("fill colour: a CSS colour name or '#rrggbb'", pattern=r"#[0-9a-fA-F]{6}|[a-z]{3,30}",
              pattern_doc="a CSS colour name (e.g. 'orange') or '#rrggbb'")
_UNITS = Choice(["pix", "norm", "height", "deg", "cm"],
                "PsychoPy units of size and pos (deg and cm need the monitor in the rig file)")
_SIZE = AnyOf(Number("one number: width = height (shapes, images) or the letter height (text)",
                     minimum=0.0, exclusive_minimum=True, maximum=10000.0),
              Pair(Number(minimum=0.0, exclusive_minimum=True, maximum=10000.0)),
              description="size in `units`: one number or [width, height]")
_POS = Pair(Number(minimum=-10000.0, maximum=10000.0), "centre [x, y] in `units`")


@record
class ShapeCueDoc:
    shape: str = spec(Choice(["circle", "triangle", "square", "cross", "rect"], "the shape drawn"))
    color: str = spec(_COLOR, default="white")
    size: float | tuple[float, float] = spec(_SIZE)
    pos: tuple[float, float] = spec(_POS, default=[0, 0])
    units: str = spec(_UNITS)


@record
class TextCueDoc:
    text: str = spec(Text("the text shown", max_length=500))
    color: str = spec(_COLOR, default="white")
    size: float | tuple[float, float] = spec(_SIZE)
    pos: tuple[float, float] = spec(_POS, default=[0, 0])
    units: str = spec(_UNITS)


@record
class ImageCueDoc:
    image: str = spec(Text("image file, relative to the stimuli directory, '/' separators",
                           pattern=r"[A-Za-z0-9_.\-]+(/[A-Za-z0-9_.\-]+)*",
                           pattern_doc="a relative path of letters, digits, '_', '-', '.' and '/'"))
    size: float | tuple[float, float] = spec(_SIZE)
    pos: tuple[float, float] = spec(_POS, default=[0, 0])
    units: str = spec(_UNITS)


CueDoc = Union[ShapeCueDoc, TextCueDoc, ImageCueDoc]
_CUE_KINDS: dict[str, Record[CueDoc]] = {
    "shape": Record(ShapeCueDoc, "a drawn shape"),
    "text": Record(TextCueDoc, "a line of text"),
    "image": Record(ImageCueDoc, "an image file from the stimuli directory"),
}
CUE = Tagged("kind", _CUE_KINDS, "a visual cue")

# ---------------------------------------------------------------- the other sections

@record
class CueMapping:
    """Cue-mapping counterbalancing: role -> cue name, the same roles in each mapping."""

    select: str = spec(Choice(["participant_hash", "participant_number", "table"],
                              "how a participant gets a mapping: SHA-256 of the label, the label's trailing "
                              "number (P01 -> first mapping, P02 -> second, ...), or a table the lab keeps"),
                       default="participant_hash")
    mappings: tuple[dict[str, str], ...] = spec(ListOf(
        MapOf(NAME, _name("a cue name"), "role -> cue name", min_items=1, key_label="role"),
        "the mappings; every one maps the same roles", min_items=1, max_items=24))
    table: str | None = spec(Nullable(Text("select: table only: a TSV file (relative to this protocol) with columns "
                                           "participant_id and mapping (1 = the first mapping)", max_length=500,
                                           pattern=r"[A-Za-z0-9_.\-]+(/[A-Za-z0-9_.\-]+)*",
                                           pattern_doc="a relative path of letters, digits, '_', '-', '.' and '/'")),
                             default=None)
    assignments: dict[str, int] = field(default_factory=dict)   # participant -> mapping index (read from `table`)

    @property
    def roles(self) -> tuple[str, ...]:
        return tuple(self.mappings[0])


CUE_MAPPING = Record(CueMapping, "cue-mapping counterbalancing: phases name a role; each participant gets one "
                                 "mapping of roles to cues")


@record
class Phase:
    name: str = spec(_name("phase name, unique within the trial type"))
    kind: str = spec(Choice(["cue", "rating"], "cue: show `cue`; rating: the rating scale, then `cue`"),
                     default="cue")
    cue: str | None = spec(Nullable(_name("cue or role shown during the phase (null: blank screen)")))
    duration: Duration = spec(DURATION)
    cuff: str = spec(Choice(["none", "inflate", "hold", "deflate"],
                            "cuff command at phase start: inflate (deflated -> target), hold (stays inflated), "
                            "deflate (inflated -> vented), none (stays deflated)"), default="none")
    timed_from: str = spec(Choice(["onset", "target_reached"],
                                  "target_reached (inflate phases only): the duration counts from the moment the "
                                  "target pressure is reached; the predicted ramp is added to the plan"),
                           default="onset")
    cuff_at: str = spec(Choice(["planned", "flip"],
                               "when the phase's cuff command goes out: planned (at t0 + the phase's onset, from a "
                               "scheduler thread that does not wait for the screen) or flip (on the flip that "
                               "shows the phase, locked to its cue)"), default="planned")
    bids_trial_type: str | None = spec(Nullable(Text("trial_type of this phase in events.tsv (null: not an event)",
                                                     pattern=r"[A-Za-z][A-Za-z0-9_]{0,63}",
                                                     pattern_doc="letters, digits and '_', starting with a letter")),
                                       default=None)
    level: str | None = spec(Nullable(_name("inflate phases: the pressure level (stimulation.levels); null: the "
                                            "trial type's level")), default=None)
    scale: str | None = spec(Nullable(_name("rating phases: the scale shown (a key of `ratings`); null: the only "
                                            "scale")), default=None)


@record
class TrialTypeDoc:
    description: str = spec(Text("what this trial type is", min_length=0, max_length=2000), default="")
    catch: bool = spec(Boolean("a catch trial type (departs from the verified design; give it count 0 to "
                               "leave it off)"), default=False)
    phases: tuple[Phase, ...] = spec(ListOf(Record(Phase, "one phase of a trial"), "the phases in order",
                                            min_items=1, max_items=20))
    level: str | None = spec(Nullable(_name("the pressure level of this trial type's stimulus (a key of "
                                            "stimulation.levels); null: the only level")), default=None)


@record
class TrialList:
    counts: dict[str, int] = spec(MapOf(NAME, Integer("trials of this type per run", minimum=0, maximum=500),
                                        "trials per run of every trial type (0 allowed)", key_label="trial type"))
    max_run_length: int | None = spec(Nullable(Integer("most trials of one type in a row (null: no limit)",
                                                       minimum=1, maximum=500)), default=None)
    seed: int = spec(Integer("default randomisation seed (trial order, jitter); `--seed` overrides",
                             minimum=0, maximum=2**63 - 1), default=0)

    @property
    def n_trials(self) -> int:
        return sum(self.counts.values())


@record
class RatingDoc:
    question: str = spec(Text("question shown above the scale", max_length=300),
                         default="How painful was the pressure?")
    low_anchor: str = spec(Text("label at the low end", max_length=100), default="no pain")
    high_anchor: str = spec(Text("label at the high end", max_length=100), default="most intense pain imaginable")
    min: int = spec(Integer("lowest rating", minimum=0, maximum=1000), default=0)
    max: int = spec(Integer("highest rating", minimum=1, maximum=1000), default=100)
    start: int | None = spec(Nullable(Integer("where the marker starts (null: the middle)", minimum=0,
                                              maximum=1000)), default=None)
    step: int = spec(Integer("rating change per left/right key press", minimum=1, maximum=100), default=5)
    timeout_s: float = spec(_seconds("time to confirm; no confirmation = timed out (at most the rating phase's "
                                     "shortest duration)", maximum=60.0))


@record
class StimulationDoc:
    target: str | Pressure | None = spec(Nullable(AnyOf(
        Choice(["calibrated"], "taken from the participant's calibration at run time"),
        PRESSURE, description="one target pressure for every stimulus: explicit {value, unit}, or calibrated "
                              "(give this or `levels`)")), default=None)
    levels: dict[str, LevelDoc] | None = spec(Nullable(MapOf(NAME, LEVEL, "named pressure levels that trial types "
                                                                          "and inflate phases choose (give this or "
                                                                          "`target`)", min_items=1, max_items=20,
                                                             key_label="level")), default=None)
    calibrated_fraction: float | None = spec(Nullable(Number("target = fraction x calibrated pressure (only with "
                                                             "target: calibrated; null: 1)", minimum=0.0,
                                                             exclusive_minimum=True, maximum=1.0)), default=None)
    rate_kpa_s: float = spec(Number("inflation ramp rate", unit="kPa per second", minimum=0.0, exclusive_minimum=True,
                                    maximum=200.0))


@record
class SafetyDoc:
    max_pressure: Pressure = spec(Record(Pressure, f"pressure ceiling, required, no default (at most "
                                                   f"{HARD_MAX_KPA:g} kPa); the cuff is armed with it"))
    max_inflation_per_stimulus_s: float = spec(_seconds(
        "longest time one stimulus holds air: SET to DEFLATE, ramp included, plus the release after it (worst case "
        "over the jitter, with the rig's cuff_timing)"), default=30.0)
    max_cumulative_inflation_per_run_s: float = spec(_seconds(
        "longest total SET to DEFLATE of all stimuli in one run (worst case, with the rig's cuff_timing)",
        maximum=3600.0), default=360.0)
    min_deflated_between_s: float = spec(_seconds("shortest deflated time between two stimuli (worst case)",
                                                  exclusive=False), default=10.0)
    release_threshold_kpa: float = spec(_kpa("a deflation is complete below this pressure", maximum=20.0),
                                        default=2.0)
    release_deadline_s: float = spec(_seconds("a deflation must be complete within this time", maximum=30.0),
                                     default=2.0)
    compliance_margin_kpa: float = spec(_kpa("largest allowed deviation of measured from target pressure while "
                                             "inflated", maximum=20.0), default=2.0)
    on_participant_stop: str = spec(Choice(["end", "continue_without_stimulation"],
                                           "after the participant's stop key (the cuff is vented at once either "
                                           "way)"), default="end")


@record
class Scan:
    tr_s: float = spec(_seconds("repetition time", maximum=10.0))
    n_volumes: int = spec(Integer("volumes the scan will record (stored volumes)", minimum=1, maximum=100000))
    discard_pulses: int = spec(Integer("pulses the scanner sends for volumes you discard; the runner skips them "
                                       "before t0 (a rig file may override)", minimum=0, maximum=100))
    scanner_discarded: int = spec(Integer("volumes the scanner discards without sending pulses (recorded only)",
                                          minimum=0, maximum=100), default=0)
    lead_in_s: float = spec(_seconds("fixation from t0 to the first trial", exclusive=False))
    tail_s: float = spec(_seconds("fixation after the last trial", exclusive=False))
    first_trigger_timeout_s: float = spec(_seconds("give up waiting for the first pulse after this", maximum=3600.0),
                                          default=120.0)
    on_scanner_stop: str = spec(Choice(["end", "continue"], "when pulses stop arriving during the run"),
                                default="end")
    scanner_stop_trs: float = spec(Number("pulses are 'stopped' after this many TRs without one", minimum=1.0,
                                          maximum=100.0), default=3.0)

    @property
    def duration_s(self) -> float:
        return self.n_volumes * self.tr_s


KEYS_DEFAULT = {"trigger": "5", "stop": "4", "escape": "escape", "left": "1", "right": "2", "confirm": "3"}


@record
class Keys:
    trigger: str = spec(KeyName("scanner trigger key (keyboard trigger sources)"), default=KEYS_DEFAULT["trigger"])
    stop: str = spec(KeyName("participant stop key: vents the cuff at once"), default=KEYS_DEFAULT["stop"])
    escape: str = spec(KeyName("operator abort key"), default=KEYS_DEFAULT["escape"])
    left: str = spec(KeyName("rating: move left"), default=KEYS_DEFAULT["left"])
    right: str = spec(KeyName("rating: move right"), default=KEYS_DEFAULT["right"])
    confirm: str = spec(KeyName("rating: confirm"), default=KEYS_DEFAULT["confirm"])


KEYS = Record(Keys, "keys (a rig file may override them for its button box); all different")


@record
class Metadata:
    name: str = spec(Text("human-readable name", max_length=200))
    task: str = spec(Text("BIDS task label (task-<label> in file names)", pattern=r"[A-Za-z0-9]{1,64}",
                          pattern_doc="letters and digits only (a BIDS label), e.g. 'loggia2014'"))
    description: str = spec(Text("what the protocol does", min_length=0, max_length=5000), default="")
    references: tuple[str, ...] = spec(ListOf(Text(max_length=1000), "literature the protocol follows"), default=[])


#: checks a protocol can ask for (`checks:`), beyond the always-on rules
PARADIGM_CHECKS = {
    "onset_cue": "every trial type that inflates shows a cue (not fixation, not blank) in the phase before inflation",
    "relief_cue": "every trial type that inflates shows, in the phase before deflation, a cue different from "
                  "the onset cue and from fixation",
}


@record
class DesignDoc:
    contrasts: dict[str, dict[str, float]] = spec(MapOf(
        NAME, MapOf(Text("a bids_trial_type", pattern=r"[A-Za-z][A-Za-z0-9_]{0,63}",
                         pattern_doc="letters, digits and '_', starting with a letter"),
                    Number("the regressor's weight", minimum=-100.0, maximum=100.0),
                    "bids_trial_type -> weight", min_items=1, key_label="regressor"),
        "contrasts the design must estimate well, e.g. {high_vs_low: {anticipation_high: 1, anticipation_low: -1}}",
        key_label="contrast"), default={})


INSTRUCTIONS = ListOf(Text("one page of text", max_length=2000),
                      "instruction pages shown to the participant before waiting for the scanner, one at a time; "
                      "the participant's confirm key or the operator's space bar turns the page (default []: none)",
                      max_items=20)


@record
class ProtocolDoc:
    """A protocol file as written (before the cross-field checks)."""

    cuedpain_version: str = spec(Text("the cuedpain version this protocol was checked with, or 'dev'",
                                      max_length=40))
    metadata: Metadata = spec(Record(Metadata, "what the protocol is"))
    stimuli_dir: str = spec(Text("directory of image cues, relative to this file", max_length=500),
                            default="../stimuli")
    cues: dict[str, CueDoc] = spec(MapOf(NAME, CUE, "the visual cues; must include 'fixation'", min_items=1,
                                         key_label="cue"))
    cue_mapping: CueMapping | None = spec(Nullable(CUE_MAPPING), default=None)
    trial_types: dict[str, TrialTypeDoc] = spec(MapOf(NAME, Record(TrialTypeDoc, "a trial type: ordered phases"),
                                                      "the trial types", min_items=1, max_items=20,
                                                      key_label="trial type"))
    trials: TrialList = spec(Record(TrialList, "the trial list of one run"))
    rating: RatingDoc | None = spec(Nullable(Record(RatingDoc, "the rating scale shown in phases of kind rating "
                                                               "(one scale; for several, use `ratings`)")),
                                    default=None)
    ratings: dict[str, RatingDoc] | None = spec(Nullable(MapOf(NAME, Record(RatingDoc, "one rating scale"),
                                                               "named rating scales; a rating phase names its "
                                                               "scale (give this or `rating`)", min_items=1,
                                                               max_items=20, key_label="scale")), default=None)
    checks: tuple[str, ...] = spec(ListOf(Choice(list(PARADIGM_CHECKS), "a paradigm check this protocol asks for"),
                                          "paradigm checks beyond the always-on safety and timing rules"),
                                   default=[])
    design: DesignDoc | None = spec(Nullable(Record(DesignDoc, "what the design must estimate (plan reports its "
                                                               "efficiency)")), default=None)
    stimulation: StimulationDoc = spec(Record(StimulationDoc, "the pain stimulus"))
    safety: SafetyDoc = spec(Record(SafetyDoc, "safety ceilings and limits (checked before the run and enforced "
                                               "during it)"))
    scan: Scan = spec(Record(Scan, "the scan"))
    keys: Keys = spec(KEYS, default=KEYS_DEFAULT)
    instructions: tuple[str, ...] = spec(INSTRUCTIONS, default=[])


PROTOCOL_SPEC = Record(ProtocolDoc, "a cuedpain protocol")


def protocol_json_schema() -> str:
    """The protocol format's JSON Schema, as committed in protocols/cuedpain-protocol.schema.json."""
    return json_schema_document(PROTOCOL_SPEC, title="cuedpain protocol", schema_id=SCHEMA_ID)

# ---------------------------------------------------------------- the values built from the sections


@dataclass(frozen=True)
class Cue:
    """A visual cue; the runner draws it with PsychoPy in `units`."""

    name: str
    kind: str                       # shape | text | image
    size: tuple[float, float]       # (width, height); text: (h, h), the letter height
    pos: tuple[float, float]
    units: str                      # pix | norm | height | deg | cm
    color: str | None = None        # '#rrggbb' (shape, text)
    shape: str | None = None        # circle | triangle | square | cross | rect
    text: str | None = None
    image: str | None = None        # as written, relative to the stimuli directory
    image_path: Path | None = None  # resolved (stimuli_dir / image)


@dataclass(frozen=True)
class TrialType:
    name: str
    description: str
    catch: bool
    phases: tuple[Phase, ...]      # every inflate phase names its level, every rating phase its scale

    @property
    def inflates(self) -> bool:
        return any(p.cuff == "inflate" for p in self.phases)

    @property
    def levels(self) -> tuple[str, ...]:
        """The pressure levels this trial type's stimuli use, in order."""
        return tuple(dict.fromkeys(p.level for p in self.phases if p.cuff == "inflate" and p.level))


@dataclass(frozen=True)
class Rating:
    question: str
    low_anchor: str
    high_anchor: str
    min: int
    max: int
    start: int
    step: int
    timeout_s: float


@dataclass(frozen=True)
class Level:
    """A named pressure level: fixed (`kpa`), or from the participant's calibration at run time:
    `fraction` x the calibrated pressure, or the pressure the calibration's fit gives for `rating`."""

    name: str
    kpa: float | None = None
    fraction: float | None = None
    rating: float | None = None
    as_written: str = ""            # e.g. "300 mmHg", "0.8 x calibrated", "calibrated for rating 60"

    @property
    def calibrated(self) -> bool:
        return self.kpa is None


TARGET_LEVEL = "target"   # the one level of a protocol that gives `stimulation.target`


@dataclass(frozen=True)
class Stimulation:
    levels: dict[str, Level]        # in the file's order; a protocol with `target:` has one, named "target"
    rate_kpa_s: float

    @property
    def calibrated(self) -> bool:
        """Some level's pressure comes from the participant's calibration."""
        return any(lv.calibrated for lv in self.levels.values())

    @property
    def fixed_kpa(self) -> dict[str, float]:
        """The levels whose pressure the protocol fixes, in kPa."""
        return {n: lv.kpa for n, lv in self.levels.items() if lv.kpa is not None}

    @property
    def as_written(self) -> str:
        return ", ".join(lv.as_written if n == TARGET_LEVEL else f"{n}: {lv.as_written}"
                         for n, lv in self.levels.items())


@dataclass(frozen=True)
class Safety:
    max_pressure_kpa: float
    max_inflation_per_stimulus_s: float
    max_cumulative_inflation_per_run_s: float
    min_deflated_between_s: float
    release_threshold_kpa: float
    release_deadline_s: float
    compliance_margin_kpa: float
    on_participant_stop: str        # end | continue_without_stimulation


@dataclass(frozen=True)
class Protocol:
    version_pin: str
    metadata: Metadata
    stimuli_dir: Path
    cues: dict[str, Cue]
    cue_mapping: CueMapping | None
    trial_types: dict[str, TrialType]
    trials: TrialList
    scales: dict[str, Rating]       # named rating scales (`rating:` gives one named "rating")
    stimulation: Stimulation
    safety: Safety
    scan: Scan
    keys: Keys
    checks: tuple[str, ...] = ()
    contrasts: dict[str, dict[str, float]] = field(default_factory=dict)
    instructions: tuple[str, ...] = ()      # pages shown before waiting for the scanner
    path: Path | None = None
    sha256: str = ""
    where: Where = field(default_factory=lambda: Where("<protocol>"), compare=False, repr=False)

    @property
    def name(self) -> str:
        return self.metadata.name

    @property
    def task(self) -> str:
        return self.metadata.task

    @property
    def seed(self) -> int:
        """The protocol's default seed (trials.seed)."""
        return self.trials.seed

    @property
    def fixation_cue(self) -> Cue:
        return self.cues[FIXATION]

# ---------------------------------------------------------------- building and cross-field checks


def _check_version(pin: str, where: Where) -> None:
    if pin not in (__version__, "dev"):
        raise where.error(("cuedpain_version",),
                          f"this protocol is pinned to cuedpain {pin!r} but this is cuedpain {__version__}; "
                          f"check the protocol with this version and set it to {__version__!r} "
                          f"(or 'dev' while developing)")


def _color_hex(value: str, path: FieldPath, where: Where) -> str:
    if value.startswith("#"):
        return value.lower()
    from matplotlib.colors import CSS4_COLORS  # local: only needed for colour names

    if value not in CSS4_COLORS:
        raise where.error(path, f"unknown colour name {value!r}{suggest(value, sorted(CSS4_COLORS))}; "
                                f"use a CSS colour name or '#rrggbb'")
    return str(CSS4_COLORS[value]).lower()


def _build_cue(name: str, c: CueDoc, stimuli_dir: Path, path: FieldPath, where: Where) -> Cue:
    size = c.size
    if isinstance(size, float):
        size = (size, size)
    elif isinstance(c, TextCueDoc):
        raise where.error(path + ("size",), "a text cue's size is its letter height: one number, "
                                            f"got [{size[0]:g}, {size[1]:g}]")
    if isinstance(c, ImageCueDoc):
        parts = PurePosixPath(c.image).parts
        if ".." in parts:
            raise where.error(path + ("image",), f"must stay inside the stimuli directory (no '..'), "
                                                 f"got {c.image!r}")
        return Cue(name=name, kind="image", size=size, pos=c.pos, units=c.units, image=c.image,
                   image_path=stimuli_dir.joinpath(*parts))
    color = _color_hex(c.color, path + ("color",), where)
    if isinstance(c, TextCueDoc):
        return Cue(name=name, kind="text", size=size, pos=c.pos, units=c.units, color=color, text=c.text)
    return Cue(name=name, kind="shape", size=size, pos=c.pos, units=c.units, color=color, shape=c.shape)


def _check_cue_mapping(m: CueMapping, cues: Mapping[str, Cue], where: Where) -> None:
    path = ("cue_mapping", "mappings")
    roles = m.roles
    for i, mapping in enumerate(m.mappings):
        if set(mapping) != set(roles):
            raise where.error(path + (i,), f"must map the same roles as mappings[0] ({', '.join(roles)}), "
                                           f"got {', '.join(mapping)}")
        for role, cue in mapping.items():
            if role in cues:
                raise where.error(path + (i, role), f"role {role!r} is also a cue name; give roles their own "
                                                    f"names (e.g. 'pain_cue') so phases are unambiguous",
                                  at_key=True)
            if cue not in cues:
                raise where.error(path + (i, role), f"no cue named {cue!r}{suggest(cue, list(cues))}; "
                                                    f"cues: {', '.join(cues)}")
        if len(set(mapping.values())) != len(mapping):
            raise where.error(path + (i,), "maps two roles to the same cue; each role needs its own cue")


_CUFF_NEXT = {  # (state before, action) -> state after; missing pairs are refused
    ("deflated", "none"): "deflated", ("deflated", "inflate"): "inflated",
    ("inflated", "hold"): "inflated", ("inflated", "deflate"): "deflated",
}
_CUFF_HINT = {
    ("deflated", "hold"): "the cuff is deflated here; 'hold' keeps an inflated cuff inflated (use 'none' or 'inflate')",
    ("deflated", "deflate"): "the cuff is already deflated here (use 'none')",
    ("inflated", "none"): "the cuff is inflated here; say 'hold' to keep it inflated or 'deflate' to release it",
    ("inflated", "inflate"): "the cuff is already inflated here (use 'hold', or 'deflate' first)",
}


def _build_trial_type(name: str, t: TrialTypeDoc, names: set[str], scales: Mapping[str, Rating],
                      levels: Mapping[str, Level], where: Where) -> TrialType:
    base = ("trial_types", name)
    state = "deflated"
    seen: set[str] = set()
    phases = []
    if t.level is not None:
        _known(t.level, levels, "pressure level", "stimulation.levels", base + ("level",), where)
    for i, p in enumerate(t.phases):
        path = base + ("phases", i)
        if p.name in seen:
            raise where.error(path + ("name",), f"phase name {p.name!r} is used twice in this trial type")
        seen.add(p.name)
        if p.cue is not None and p.cue not in names:
            raise where.error(path + ("cue",), f"no cue or cue-mapping role named {p.cue!r}"
                                               f"{suggest(p.cue, sorted(names))}; known: {', '.join(sorted(names))}")
        after = _CUFF_NEXT.get((state, p.cuff))
        if after is None:
            raise where.error(path + ("cuff",), _CUFF_HINT[(state, p.cuff)])
        state = after
        if p.timed_from == "target_reached" and p.cuff != "inflate":
            raise where.error(path + ("timed_from",), "'target_reached' is only for the phase that inflates "
                                                      "the cuff (cuff: inflate); use 'onset'")
        phases.append(replace(p, level=_phase_level(p, t, levels, path, where),
                              scale=_phase_scale(p, scales, path, where)))
    if state == "inflated":
        raise where.error(base + ("phases",), "the trial ends with the cuff inflated; add a phase with "
                                              "cuff: deflate")
    return TrialType(name=name, description=t.description, catch=t.catch, phases=tuple(phases))


def _known(name: str, known: Mapping[str, object], what: str, section: str, path: FieldPath, where: Where) -> None:
    if name not in known:
        raise where.error(path, f"no {what} named {name!r}{suggest(name, list(known))}; {section}: "
                                f"{', '.join(known) or 'none'}")


def _phase_level(p: Phase, t: TrialTypeDoc, levels: Mapping[str, Level], path: FieldPath,
                 where: Where) -> str | None:
    """An inflate phase's level: its own, its trial type's, or the only one."""
    if p.cuff != "inflate":
        if p.level is not None:
            raise where.error(path + ("level",), "a pressure level is for the phase that inflates the cuff "
                                                 "(cuff: inflate); remove it here")
        return None
    if p.level is not None:
        _known(p.level, levels, "pressure level", "stimulation.levels", path + ("level",), where)
        return p.level
    if t.level is not None:
        return t.level
    if len(levels) == 1:
        return next(iter(levels))
    raise where.error(path + ("level",), f"which pressure level does this stimulus use? stimulation.levels has "
                                         f"{', '.join(levels)}: give the phase or its trial type `level:`")


def _phase_scale(p: Phase, scales: Mapping[str, Rating], path: FieldPath, where: Where) -> str | None:
    """A rating phase's scale: its own or the only one; it must last at least the scale's timeout."""
    if p.kind != "rating":
        if p.scale is not None:
            raise where.error(path + ("scale",), "a rating scale is for phases of kind rating; remove it here")
        return None
    if not scales:
        raise where.error(path + ("kind",), "a rating phase needs a rating scale: a top-level 'rating' (one "
                                            "scale) or 'ratings' (named scales) section")
    if p.scale is not None:
        _known(p.scale, scales, "rating scale", "ratings", path + ("scale",), where)
        name = p.scale
    elif len(scales) == 1:
        name = next(iter(scales))
    else:
        raise where.error(path + ("scale",), f"which rating scale does this phase show? ratings has "
                                             f"{', '.join(scales)}: give the phase `scale:`")
    timeout_s = scales[name].timeout_s
    if p.duration.min_s < timeout_s:
        where_timeout = "rating.timeout_s" if name == RATING_SCALE else f"ratings.{name}.timeout_s"
        raise where.error(path + ("duration",), f"a rating phase must last at least {where_timeout} "
                                                f"({timeout_s:g} s); its shortest duration is "
                                                f"{p.duration.min_s:g} s")
    return name


def _check_cued(tt: TrialType, mapping: CueMapping | None, checks: tuple[str, ...], where: Where) -> None:
    """The paradigm checks the protocol asks for (`checks:`): a trial type that inflates announces
    pain onset (`onset_cue`) and offset (`relief_cue`) with distinct cues."""
    if not tt.inflates or not checks:
        return
    idx = {p.cuff: i for i, p in reversed(list(enumerate(tt.phases)))}  # first phase of each action
    base = ("trial_types", tt.name, "phases")
    i_inf, i_def = idx["inflate"], idx["deflate"]
    onset, relief = "onset_cue" in checks, "relief_cue" in checks
    if i_inf == 0 and onset:
        raise where.error(base + (0, "cuff"), "the cuff inflates in the first phase, so nothing announces pain "
                                              "onset; put a pain-anticipation phase with a cue before it")
    for resolve in (mapping.mappings if mapping else ({},)):
        def shown(i: int) -> str | None:
            cue = tt.phases[i].cue
            return None if cue is None else resolve.get(cue, cue)

        pain = shown(i_inf - 1) if i_inf > 0 else None
        relief_cue = shown(i_def - 1)
        if onset and pain in (None, FIXATION):
            raise where.error(base + (i_inf - 1, "cue"), "the phase before inflation must show the pain-onset "
                                                         "cue (not fixation or a blank screen)")
        if relief and (relief_cue in (None, FIXATION) or relief_cue == pain):
            raise where.error(base + (i_def - 1, "cue"), "the phase before deflation must show the relief cue, "
                                                         "different from the pain-onset cue and from fixation")


def _build_trials(t: TrialList, types: Mapping[str, TrialType], where: Where) -> TrialList:
    counts = t.counts
    for name in counts:
        if name not in types:
            raise where.error(("trials", "counts", name), f"no trial type named {name!r}"
                                                          f"{suggest(name, list(types))}; trial types: "
                                                          f"{', '.join(types)}", at_key=True)
    for name in types:
        if name not in counts:
            raise where.error(("trials", "counts", name), f"missing: give a count for every trial type "
                                                          f"(0 leaves {name!r} out)")
    ordered = {name: counts[name] for name in types}
    total = sum(ordered.values())
    if total < 1:
        raise where.error(("trials", "counts"), "the run has no trials; give at least one trial type a count > 0")
    if total > 500:
        raise where.error(("trials", "counts"), f"{total} trials in one run; at most 500")
    limit = t.max_run_length
    if limit is not None:
        name, most = max(ordered.items(), key=lambda kv: kv[1])
        others = total - most
        if most > limit * (others + 1):
            raise where.error(("trials", "max_run_length"),
                              f"{most} {name!r} trials cannot be ordered with at most {limit} in a row among "
                              f"{others} other trials (at most {limit * (others + 1)} fit)")
    return replace(t, counts=ordered)


RATING_SCALE = "rating"   # the name of the one scale that a `rating:` section gives


def _build_rating(r: RatingDoc, path: FieldPath, where: Where) -> Rating:
    if r.min >= r.max:
        raise where.error(path + ("max",), f"must be more than {'.'.join(map(str, path))}.min ({r.min}), "
                                           f"got {r.max}")
    start = (r.min + r.max) // 2 if r.start is None else r.start
    if not r.min <= start <= r.max:
        raise where.error(path + ("start",), f"must be from {r.min} to {r.max}, got {start}")
    return Rating(question=r.question, low_anchor=r.low_anchor, high_anchor=r.high_anchor, min=r.min,
                  max=r.max, start=start, step=r.step, timeout_s=to_ms(r.timeout_s) / 1000)


def _build_scales(one: RatingDoc | None, many: dict[str, RatingDoc] | None, where: Where) -> dict[str, Rating]:
    if one is not None and many is not None:
        raise where.error(("ratings",), "give either 'rating' (one scale) or 'ratings' (named scales), not both")
    if one is not None:
        return {RATING_SCALE: _build_rating(one, ("rating",), where)}
    return {name: _build_rating(r, ("ratings", name), where) for name, r in (many or {}).items()}


def _build_level(name: str, lv: LevelDoc, max_kpa: float, path: FieldPath, where: Where) -> Level:
    """One level in exactly one form: {value, unit}, {fraction} or {rating}."""
    forms = [k for k, v in (("value", lv.value), ("fraction", lv.fraction), ("rating", lv.rating)) if v is not None]
    if len(forms) != 1:
        raise where.error(path, f"give exactly one of {{value, unit}} (a fixed pressure), {{fraction}} or "
                                f"{{rating}} (from the participant's calibration); got {', '.join(forms) or 'none'}")
    if lv.value is not None:
        if lv.unit is None:
            raise where.error(path + ("unit",), "required key 'unit' is missing (it must be one of 'kPa', 'mmHg')")
        fixed = Pressure(value=lv.value, unit=lv.unit)
        if fixed.kpa > max_kpa:
            raise where.error(path, f"{fixed.kpa:.1f} kPa is above safety.max_pressure ({max_kpa:.1f} kPa)")
        return Level(name, kpa=fixed.kpa, as_written=fixed.as_written)
    if lv.unit is not None:
        raise where.error(path + ("unit",), "a unit goes with a fixed `value`; remove it")
    if lv.fraction is not None:
        return Level(name, fraction=lv.fraction, as_written=f"{lv.fraction:g} x calibrated")
    assert lv.rating is not None
    if lv.rating >= 100:
        raise where.error(path + ("rating",), f"must be below 100 (the top of the calibration's scale), "
                                              f"got {lv.rating:g}")
    return Level(name, rating=lv.rating, as_written=f"calibrated for rating {lv.rating:g}")


def _build_levels(s: StimulationDoc, max_kpa: float, where: Where) -> dict[str, Level]:
    """The protocol's pressure levels; `target:` (old form) gives one named "target"."""
    if (s.target is None) == (s.levels is None):
        raise where.error(("stimulation", "target" if s.target is None else "levels"),
                          "give either 'target' (one pressure for every stimulus) or 'levels' (named "
                          "pressures that trial types choose)" + (", not both" if s.target is not None else ""))
    fraction = s.calibrated_fraction
    if s.levels is not None:
        if fraction is not None:
            raise where.error(("stimulation", "calibrated_fraction"), "only applies to target: calibrated; "
                                                                      "give a level {fraction: ...} instead")
        return {n: _build_level(n, lv, max_kpa, ("stimulation", "levels", n), where) for n, lv in s.levels.items()}
    if isinstance(s.target, str):  # calibrated
        f = 1.0 if fraction is None else fraction
        return {TARGET_LEVEL: Level(TARGET_LEVEL, fraction=f,
                                    as_written="calibrated" + (f" x {f:g}" if fraction is not None else ""))}
    assert s.target is not None
    if fraction is not None:
        raise where.error(("stimulation", "calibrated_fraction"), "only applies to target: calibrated; "
                                                                  "remove it or make the target calibrated")
    if s.target.kpa > max_kpa:
        raise where.error(("stimulation", "target"), f"{s.target.kpa:.1f} kPa is above safety.max_pressure "
                                                     f"({max_kpa:.1f} kPa)")
    return {TARGET_LEVEL: Level(TARGET_LEVEL, kpa=s.target.kpa, as_written=s.target.as_written)}


def _build_stimulation_safety(s: StimulationDoc, f: SafetyDoc, where: Where) -> tuple[Stimulation, Safety]:
    max_kpa = f.max_pressure.kpa
    if max_kpa > HARD_MAX_KPA:
        raise where.error(("safety", "max_pressure"), f"{max_kpa:.1f} kPa is above {HARD_MAX_KPA:g} kPa, the "
                                                      f"highest any supported cuff allows")
    levels = _build_levels(s, max_kpa, where)
    if f.release_threshold_kpa >= max_kpa:
        raise where.error(("safety", "release_threshold_kpa"), "must be below safety.max_pressure")
    stim = Stimulation(levels=levels, rate_kpa_s=s.rate_kpa_s)
    safety = Safety(max_pressure_kpa=max_kpa, max_inflation_per_stimulus_s=f.max_inflation_per_stimulus_s,
                    max_cumulative_inflation_per_run_s=f.max_cumulative_inflation_per_run_s,
                    min_deflated_between_s=f.min_deflated_between_s, release_threshold_kpa=f.release_threshold_kpa,
                    release_deadline_s=f.release_deadline_s, compliance_margin_kpa=f.compliance_margin_kpa,
                    on_participant_stop=f.on_participant_stop)
    return stim, safety


def _check_cue_table(m: CueMapping, where: Where) -> None:
    if (m.select == "table") != (m.table is not None):
        raise where.error(("cue_mapping", "table" if m.table is None else "select"),
                          "a counterbalancing table goes with select: table" if m.table is not None else
                          "select: table needs `table:` (a TSV file with participant_id and mapping columns)")


def _check_contrasts(contrasts: Mapping[str, Mapping[str, float]], types: Mapping[str, TrialType],
                     where: Where) -> None:
    modelled = {p.bids_trial_type for tt in types.values() for p in tt.phases if p.bids_trial_type}
    for name, weights in contrasts.items():
        for regressor in weights:
            if regressor not in modelled:
                raise where.error(("design", "contrasts", name, regressor),
                                  f"no phase has bids_trial_type {regressor!r}{suggest(regressor, sorted(modelled))}; "
                                  f"modelled: {', '.join(sorted(modelled))}", at_key=True)


def _check_keys(k: Keys, where: Where) -> None:
    seen: dict[str, str] = {}
    for role in KEYS.fields:
        key = getattr(k, role)
        if key in seen:
            raise where.error(("keys", role), f"key {key!r} is already the {seen[key]} key; every key needs "
                                              f"its own role (a trigger key that is also a response key would "
                                              f"count responses as pulses)")
        seen[key] = role


def build_protocol(doc: Located, *, base_dir: Path) -> Protocol:
    """Validate parsed YAML (with positions) into a Protocol. Pure."""
    where = doc.where
    if not isinstance(doc.data, dict):
        raise where.error((), f"a protocol must be a mapping of sections (cuedpain_version, metadata, cues, "
                              f"...); got {'an empty file' if doc.data is None else type(doc.data).__name__}")
    d = PROTOCOL_SPEC.check(doc.data, (), where)
    _check_version(d.cuedpain_version, where)
    stimuli_dir = Path(os.path.normpath(base_dir / d.stimuli_dir))
    cues = {n: _build_cue(n, c, stimuli_dir, ("cues", n), where) for n, c in d.cues.items()}
    if FIXATION not in cues:
        raise where.error(("cues",), f"must include a cue named {FIXATION!r} (shown in the lead-in, the tail and "
                                     f"between events)")
    if d.cue_mapping is not None:
        _check_cue_mapping(d.cue_mapping, cues, where)
        _check_cue_table(d.cue_mapping, where)
    scales = _build_scales(d.rating, d.ratings, where)
    stim, safety = _build_stimulation_safety(d.stimulation, d.safety, where)
    names = set(cues) | set(d.cue_mapping.roles if d.cue_mapping else ())
    types = {n: _build_trial_type(n, t, names, scales, stim.levels, where) for n, t in d.trial_types.items()}
    for tt in types.values():
        _check_cued(tt, d.cue_mapping, d.checks, where)
    if not any(tt.inflates for tt in types.values()):
        raise where.error(("trial_types",), "no trial type inflates the cuff; a cued pain protocol needs at "
                                            "least one phase with cuff: inflate")
    trials = _build_trials(d.trials, types, where)
    contrasts = d.design.contrasts if d.design is not None else {}
    _check_contrasts(contrasts, types, where)
    _check_keys(d.keys, where)
    return Protocol(version_pin=d.cuedpain_version, metadata=d.metadata, stimuli_dir=stimuli_dir, cues=cues,
                    cue_mapping=d.cue_mapping, trial_types=types, trials=trials, scales=scales, stimulation=stim,
                    safety=safety, scan=d.scan, keys=d.keys, checks=tuple(dict.fromkeys(d.checks)),
                    contrasts=contrasts, instructions=d.instructions, where=where)

def parse_protocol(text: str, *, file: str = "<protocol>", base_dir: Path | str = ".") -> Protocol:
    """Validate protocol text. Pure: image files are resolved against `base_dir`, not opened."""
    return build_protocol(parse_yaml(text, file=file), base_dir=Path(base_dir))


def check_cue_files(protocol: Protocol) -> None:
    """Every image cue's file exists and is a readable image (I/O)."""
    from PIL import Image, UnidentifiedImageError  # local: Pillow comes with PsychoPy

    for name, cue in protocol.cues.items():
        if cue.image_path is None:
            continue
        path = ("cues", name, "image")
        if not cue.image_path.is_file():
            raise protocol.where.error(path, f"image file not found: {cue.image_path} "
                                             f"(images are looked up in stimuli_dir: {protocol.stimuli_dir})")
        try:
            with Image.open(cue.image_path) as im:
                im.verify()
        except (UnidentifiedImageError, OSError, SyntaxError) as exc:
            raise protocol.where.error(path, f"{cue.image_path} is not a readable image ({exc})") from None


def load_protocol(path: str | Path) -> Protocol:
    """Read and validate a protocol file; raises InputError with file, line, column and field."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        raise InputError(f"{p}: protocol file not found") from None
    except IsADirectoryError:
        raise InputError(f"{p}: is a directory, expected a protocol file (.yaml)") from None
    except OSError as exc:
        raise InputError(f"{p}: cannot read ({exc.strerror or exc})") from None
    doc = parse_yaml(decode_text(raw, file=str(p)), file=str(p))
    protocol = build_protocol(doc, base_dir=p.resolve().parent)
    check_cue_files(protocol)
    mapping = protocol.cue_mapping
    if mapping is not None and mapping.table is not None:
        table = p.resolve().parent / mapping.table
        mapping = replace(mapping, assignments=read_cue_table(table, n_mappings=len(mapping.mappings)))
    return replace(protocol, cue_mapping=mapping, path=p, sha256=hashlib.sha256(raw).hexdigest())


def read_cue_table(path: Path, *, n_mappings: int) -> dict[str, int]:
    """A lab's counterbalancing table: TSV with columns participant_id (P01 or sub-P01) and mapping
    (1 = the first mapping). Returns participant -> 0-based mapping index; InputError naming the line."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise InputError(f"{path}: the counterbalancing table (cue_mapping.table) cannot be read "
                         f"({exc.strerror or exc})") from None
    head = lines[0].split("\t") if lines else []
    if "participant_id" not in head or "mapping" not in head:
        raise InputError(f"{path}:1: the counterbalancing table needs the columns participant_id and mapping "
                         f"(tab-separated), got {', '.join(head) or 'an empty file'}")
    i_p, i_m = head.index("participant_id"), head.index("mapping")
    out: dict[str, int] = {}
    for n, line in enumerate(lines[1:], start=2):
        cells = line.split("\t")
        if not line.strip():
            continue
        if len(cells) != len(head):
            raise InputError(f"{path}:{n}: {len(cells)} columns, the header has {len(head)}")
        who = cells[i_p].removeprefix("sub-")
        value = cells[i_m].strip()
        if not value.isdigit() or not 1 <= int(value) <= n_mappings:
            raise InputError(f"{path}:{n}: mapping must be a number from 1 to {n_mappings} (the mappings of "
                             f"cue_mapping), got {value!r}")
        if who in out:
            raise InputError(f"{path}:{n}: participant {who!r} is in the table twice")
        out[who] = int(value) - 1
    return out


def describe(protocol: Protocol) -> dict[str, object]:
    """The protocol's facts that outputs describe themselves with (goes into a run's log header,
    so that outputs derived from the log alone can say what each trial type, level and scale is)."""
    return {
        "description": protocol.metadata.description,
        "references": list(protocol.metadata.references),
        "checks": list(protocol.checks),
        "trial_types": {name: {"description": tt.description, "catch": tt.catch,
                               "phases": [{"name": p.name, "kind": p.kind, "cue": p.cue, "cuff": p.cuff,
                                           "level": p.level, "scale": p.scale, "bids_trial_type": p.bids_trial_type}
                                          for p in tt.phases]}
                        for name, tt in protocol.trial_types.items()},
        "levels": {name: {"as_written": lv.as_written, "kpa": lv.kpa, "fraction": lv.fraction, "rating": lv.rating}
                   for name, lv in protocol.stimulation.levels.items()},
        "scales": {name: {"question": r.question, "low_anchor": r.low_anchor, "high_anchor": r.high_anchor,
                          "min": r.min, "max": r.max, "step": r.step, "timeout_s": r.timeout_s}
                   for name, r in protocol.scales.items()},
        "contrasts": {name: dict(w) for name, w in protocol.contrasts.items()},
    }
