"""Visit plan (YAML) -> a validated, frozen `Visit`: the steps of one scanner visit, in order.

Public API:
    load_visit(path) -> Visit                 read, validate, check the protocols it names (the shell)
    parse_visit(text, *, file, base_dir) -> Visit   pure: validate text (protocol files not opened)
    VISIT_SPEC                                the format, field by field (experiment.protocol.schema)
    visit_json_schema() -> str                the JSON Schema committed as visits/cuedpain-visit.schema.json
    Visit and its steps: RigCheckStep, CalibrationStep, ScannerCheckStep, RunsStep

A visit plan lists what happens while the participant is in, so that an operator runs a
visit without typing flags: a rig check, the calibration (method, ceiling, target rating,
and confirmation plateaus at the found pressure and +-10 %), a short check inside the
scanner at the confirmed pressure, then runs of one or more protocols (how many of each),
each step with the instruction pages the participant sees. `cuedpain visit PLAN` and the
operator station (`cuedpain station`) carry it out; which steps are done is read from
disk (experiment/procedures/visit/). Every problem is one InputError:
`FILE:LINE:COL: field.path: what is wrong and what is allowed`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Union

from experiment import __version__
from experiment.errors import InputError
from experiment.protocol.model import HARD_MAX_KPA, Pressure
from experiment.protocol.schema import (Boolean, Choice, Integer, ListOf, Nullable, Number, Record, Tagged, Text,
                                        json_schema_document, record, spec)
from experiment.protocol.yamlload import Located, Where, decode_text, parse_yaml

SCHEMA_ID = "https://github.com/cuedpain/cuedpain/visits/cuedpain-visit.schema.json"
PAGES = ListOf(Text("one page of text", max_length=2000),
               "instruction pages the participant sees on the screen before this step, one at a time (the confirm "
               "key or the operator's space bar turns a page)", max_items=20)
SPOKEN = ListOf(Text("one page of text", max_length=2000),
                "what the operator tells the participant before this step (shown to the operator in the terminal "
                "and on the station's page)", max_items=20)


def _opt_number(description: str, *, unit: str, minimum: float, maximum: float) -> Nullable[float]:
    return Nullable(Number(description, unit=unit, minimum=minimum, exclusive_minimum=True, maximum=maximum))


@record
class RigCheckStep:
    """Check the cuff and the trigger line before the participant is in (`cuedpain rig-check`)."""

    listen_s: float = spec(Number("how long to count trigger pulses", unit="seconds", minimum=0.0,
                                  exclusive_minimum=True, maximum=600.0), default=10.0)
    instructions: tuple[str, ...] = spec(SPOKEN, default=[])


@record
class CalibrationStepDoc:
    method: str = spec(Choice(["staircase", "ramp"], "the calibration method (docs/calibration.md)"),
                       default="staircase")
    ceiling: Pressure = spec(Record(Pressure, f"the highest pressure this participant may get (your ethics "
                                              f"approval), required, no default; at most {HARD_MAX_KPA:g} kPa"))
    target_rating: float = spec(Number("the pain rating the pressure is chosen for (0-100 scale)", minimum=0.0,
                                       exclusive_minimum=True, maximum=99.0), default=50.0)
    confirm: bool = spec(Boolean("after the fit: confirmation plateaus at the found pressure and +-10 %, each "
                                 "rated; the pressure rated nearest the target is kept (cuedpain confirm-pressure)"),
                         default=True)
    start_kpa: float | None = spec(_opt_number("staircase: first plateau (null: 10 kPa)", unit="kPa", minimum=0.0,
                                               maximum=HARD_MAX_KPA), default=None)
    step_kpa: float | None = spec(_opt_number("staircase: step (null: 5 kPa)", unit="kPa", minimum=0.0,
                                              maximum=HARD_MAX_KPA), default=None)
    plateau_s: float | None = spec(_opt_number("staircase and confirmation: plateau length from target reached "
                                               "(null: 5 s)", unit="seconds", minimum=0.0, maximum=60.0),
                                   default=None)
    rest_s: float | None = spec(_opt_number("rest between stimuli (null: 10 s)", unit="seconds", minimum=0.0,
                                            maximum=600.0), default=None)
    instructions: tuple[str, ...] = spec(SPOKEN, default=[])


@record
class ScannerCheckStepDoc:
    plateau_s: float = spec(Number("length of the check stimulus from target reached", unit="seconds", minimum=0.0,
                                   exclusive_minimum=True, maximum=60.0), default=5.0)
    instructions: tuple[str, ...] = spec(PAGES, default=[])


@record
class RunsStepDoc:
    protocol: str = spec(Text("the protocol file, relative to this plan", max_length=500))
    count: int = spec(Integer("how many completed runs of it this step needs", minimum=1, maximum=20), default=1)
    instructions: tuple[str, ...] | None = spec(Nullable(ListOf(
        Text("one page of text", max_length=2000), "pages shown before waiting for the scanner, instead of the "
        "protocol's own (null: the protocol's)", max_items=20)), default=None)


StepDoc = Union[RigCheckStep, CalibrationStepDoc, ScannerCheckStepDoc, RunsStepDoc]
_STEPS: dict[str, Record[StepDoc]] = {
    "rig_check": Record(RigCheckStep, "check the cuff and the trigger line (cuedpain rig-check)"),
    "calibration": Record(CalibrationStepDoc, "find the participant's pressure (cuedpain calibrate), then confirm it "
                                              "(cuedpain confirm-pressure)"),
    "scanner_check": Record(ScannerCheckStepDoc, "in the scanner, before the first run: one stimulus at the "
                                                 "confirmed pressure, rated; the operator may adjust it within the "
                                                 "ceiling (cuedpain scanner-check)"),
    "runs": Record(RunsStepDoc, "runs of one protocol (cuedpain run)"),
}
STEP = Tagged("step", _STEPS, "one step of the visit")


@record
class VisitDoc:
    cuedpain_version: str = spec(Text("the cuedpain version this plan was checked with, or 'dev'", max_length=40))
    name: str = spec(Text("what this visit is, shown to the operator", max_length=200))
    description: str = spec(Text("notes for the operator", min_length=0, max_length=5000), default="")
    steps: tuple[StepDoc, ...] = spec(ListOf(STEP, "the steps, in the order they are done", min_items=1,
                                             max_items=40))


VISIT_SPEC = Record(VisitDoc, "a cuedpain visit plan")


def visit_json_schema() -> str:
    """The visit plan format's JSON Schema, as committed in visits/cuedpain-visit.schema.json."""
    return json_schema_document(VISIT_SPEC, title="cuedpain visit plan", schema_id=SCHEMA_ID)


# ---------------------------------------------------------------- the values


@dataclass(frozen=True)
class CalibrationStep:
    method: str
    ceiling_kpa: float
    ceiling_as_written: str
    target_rating: float
    confirm: bool
    start_kpa: float | None
    step_kpa: float | None
    plateau_s: float | None
    rest_s: float | None
    instructions: tuple[str, ...]


@dataclass(frozen=True)
class ScannerCheckStep:
    plateau_s: float
    instructions: tuple[str, ...]


@dataclass(frozen=True)
class RunsStep:
    protocol: str                     # as written
    protocol_path: Path               # resolved against the plan's directory
    count: int
    instructions: tuple[str, ...] | None


Step = Union[RigCheckStep, CalibrationStep, ScannerCheckStep, RunsStep]


@dataclass(frozen=True)
class Visit:
    name: str
    description: str
    steps: tuple[Step, ...]
    path: Path | None = None
    sha256: str = ""
    where: Where = field(default_factory=lambda: Where("<visit>"), compare=False, repr=False)

    @property
    def label(self) -> str:
        """The plan's file name without .yaml (how a visit is named on disk)."""
        return "visit" if self.path is None else self.path.stem


def _build_step(doc: StepDoc, i: int, base_dir: Path, where: Where, *, calibrated: bool) -> Step:
    path = ("steps", i)
    if isinstance(doc, CalibrationStepDoc):
        ceiling = doc.ceiling.kpa
        if ceiling > HARD_MAX_KPA:
            raise where.error(path + ("ceiling",), f"{ceiling:.1f} kPa is above {HARD_MAX_KPA:g} kPa, the highest "
                                                   f"any supported cuff allows")
        for name in ("start_kpa", "step_kpa"):
            value = getattr(doc, name)
            if doc.method == "ramp" and value is not None:
                raise where.error(path + (name,), "applies to the staircase only; remove it or use method: staircase")
        if doc.start_kpa is not None and doc.start_kpa > ceiling:
            raise where.error(path + ("start_kpa",), f"must be at most the ceiling ({ceiling:g} kPa)")
        return CalibrationStep(method=doc.method, ceiling_kpa=ceiling, ceiling_as_written=doc.ceiling.as_written,
                               target_rating=doc.target_rating, confirm=doc.confirm, start_kpa=doc.start_kpa,
                               step_kpa=doc.step_kpa, plateau_s=doc.plateau_s, rest_s=doc.rest_s,
                               instructions=doc.instructions)
    if isinstance(doc, ScannerCheckStepDoc):
        if not calibrated:
            raise where.error(path + ("step",), "a scanner check gives the calibrated pressure: put a calibration "
                                                "step before it")
        return ScannerCheckStep(plateau_s=doc.plateau_s, instructions=doc.instructions)
    if isinstance(doc, RunsStepDoc):
        if Path(doc.protocol).is_absolute() or "\\" in doc.protocol:
            raise where.error(path + ("protocol",), f"must be a path relative to this plan with '/' separators, "
                                                    f"got {doc.protocol!r}")
        return RunsStep(protocol=doc.protocol, protocol_path=(base_dir / doc.protocol), count=doc.count,
                        instructions=doc.instructions)
    return doc


def build_visit(doc: Located, *, base_dir: Path) -> Visit:
    """Validate parsed YAML (with positions) into a Visit. Pure."""
    where = doc.where
    if not isinstance(doc.data, dict):
        raise where.error((), "a visit plan must be a mapping (cuedpain_version, name, steps); got "
                              f"{'an empty file' if doc.data is None else type(doc.data).__name__}")
    d = VISIT_SPEC.check(doc.data, (), where)
    if d.cuedpain_version not in (__version__, "dev"):
        raise where.error(("cuedpain_version",), f"this plan is pinned to cuedpain {d.cuedpain_version!r} but this "
                                                 f"is cuedpain {__version__}; check it and set {__version__!r}")
    steps: list[Step] = []
    calibrated = False
    for i, s in enumerate(d.steps):
        if isinstance(s, CalibrationStepDoc):
            if calibrated:
                raise where.error(("steps", i, "step"), "a visit has at most one calibration step")
            calibrated = True
        steps.append(_build_step(s, i, base_dir, where, calibrated=calibrated))
    if not any(isinstance(s, RunsStep) for s in steps):
        raise where.error(("steps",), "a visit needs at least one 'runs' step (step: runs, protocol: FILE)")
    return Visit(name=d.name, description=d.description, steps=tuple(steps), where=where)


def parse_visit(text: str, *, file: str = "<visit>", base_dir: Path | str = ".") -> Visit:
    """Validate plan text. Pure: protocol paths are resolved against `base_dir`, not opened."""
    return build_visit(parse_yaml(text, file=file), base_dir=Path(base_dir))


def load_visit(path: str | Path) -> Visit:
    """Read and validate a visit plan and every protocol it names (InputError with file, line, column)."""
    from experiment.protocol.model import load_protocol

    p = Path(path)
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        raise InputError(f"{p}: visit plan not found") from None
    except IsADirectoryError:
        raise InputError(f"{p}: is a directory, expected a visit plan (.yaml)") from None
    except OSError as exc:
        raise InputError(f"{p}: cannot read ({exc.strerror or exc})") from None
    visit = build_visit(parse_yaml(decode_text(raw, file=str(p)), file=str(p)), base_dir=p.parent)
    for i, step in enumerate(visit.steps):
        if isinstance(step, RunsStep):
            if not step.protocol_path.is_file():
                raise visit.where.error(("steps", i, "protocol"), f"protocol file not found: {step.protocol_path}")
            try:
                load_protocol(step.protocol_path)
            except InputError as exc:
                raise visit.where.error(("steps", i, "protocol"), f"is not a valid protocol: {exc.message}") from None
    return replace(visit, path=p, sha256=hashlib.sha256(raw).hexdigest())
