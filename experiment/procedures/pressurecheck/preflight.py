"""Pre-flight of a pressure check: every input checked, nothing touched.

The check starts from the participant's newest calibration result (or the one named),
under the rules a run follows (docs/calibration.md: a real check never starts from a
dry-run result, nor from another session's or an old one unless named). Its ceiling is
that calibration's. The Station's needs (cuff, window, rating scale, keys) are a
calibration's: the setup is built by the calibration's own pre-flight, as a staircase
whose worst case covers the check's plateaus (so the interlocks are never looser).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path

from experiment.errors import InputError
from experiment.outputs.dataset import default_root
from experiment.procedures.calibration.preflight import CalibrationRequest, CalibrationSetup, check_not_gated
from experiment.procedures.calibration.preflight import preflight as calibration_preflight
from experiment.procedures.calibration.results import (CalibrationFile, calibration_dir, check_usable,
                                                       latest_calibration, read_calibration)
from experiment.procedures.calibration.steps import StaircaseSettings
from experiment.procedures.pressurecheck.steps import KINDS, check_pressures
from experiment.protocol.identifiers import check_label
from experiment.protocol.rig import load_rig


@dataclass(frozen=True)
class PressureCheckRequest:
    """What the operator asked for (the command line, or a visit step)."""

    kind: str                              # confirmation | scanner_check
    participant: str
    session: str | None = None
    pressure_kpa: float | None = None      # scanner_check: adjust to this pressure (within the ceiling)
    calibration: Path | None = None        # start from this result instead of the newest
    plateau_s: float = 5.0
    rest_s: float = 10.0
    rig: Path | None = None
    cuff: str | None = None
    dry_run: bool = False
    headless: bool = False
    data: Path | None = None
    seed: int | None = None
    yes: bool = False
    confirmed_by: str | None = None
    sim_participant: str | None = None
    instructions: tuple[str, ...] = ()     # pages the participant reads before the first stimulus


@dataclass(frozen=True)
class PressureCheckSetup:
    kind: str
    source: CalibrationFile                # the result the check starts from
    pressures: tuple[float, ...]           # the plateaus, in the order given
    adjust_kpa: float | None
    instructions: tuple[str, ...]
    calibration: CalibrationSetup          # the Station's needs, the keys, the rating scale, the limits


def _source(req: PressureCheckRequest, data_root: Path, participant: str, session: str | None,
            max_age_h: float) -> CalibrationFile:
    cal = read_calibration(req.calibration) if req.calibration is not None else \
        latest_calibration(data_root, participant)
    if cal is None:
        raise InputError(f"a pressure check starts from the participant's calibration, but there is none for "
                         f"sub-{participant} in {calibration_dir(data_root, participant)}; run `cuedpain calibrate "
                         f"--participant {participant}` first")
    check_usable(cal, participant=participant, session=session, dry_run=req.dry_run,
                 named=req.calibration is not None, max_age_h=max_age_h, now=datetime.now().astimezone())
    if cal.ceiling_kpa is None:
        raise InputError(f"calibration file {cal.path} does not say its ceiling; a check needs it (calibrate again)")
    return cal


def preflight(req: PressureCheckRequest) -> PressureCheckSetup:
    """Check all input; touches no device. InputError (exit 2), HardwareError for no display (exit 4)."""
    if req.kind not in KINDS:
        raise InputError(f"a pressure check is one of {', '.join(KINDS)}, got {req.kind!r}")
    participant = check_label(req.participant, "participant")
    session = None if req.session is None else check_label(req.session, "session")
    if req.pressure_kpa is not None and req.kind != "scanner_check":
        raise InputError("--pressure adjusts the pressure of the check in the scanner (scanner-check) only")
    for name, value, lo, hi in (("--plateau", req.plateau_s, 0.2, 60.0), ("--rest", req.rest_s, 0.0, 600.0)):
        if not (math.isfinite(value) and lo <= value <= hi):
            raise InputError(f"{name} must be {lo:g}-{hi:g} s, got {value:g}")
    rig = load_rig(req.rig)
    check_not_gated(req.cuff, rig)
    data_root = req.data if req.data is not None else default_root(dry_run=req.dry_run)
    source = _source(req, data_root, participant, session, rig.calibration_max_age_h)
    ceiling = float(source.ceiling_kpa or 0.0)
    if req.pressure_kpa is not None and not (math.isfinite(req.pressure_kpa) and 0 < req.pressure_kpa <= ceiling):
        raise InputError(f"--pressure must be above 0 and at most the calibration's ceiling {ceiling:g} kPa, got "
                         f"{req.pressure_kpa:g}")
    pressures = check_pressures(req.kind, from_kpa=source.pressure_kpa, ceiling_kpa=ceiling,
                                adjust_kpa=req.pressure_kpa)
    cal = calibration_preflight(CalibrationRequest(
        participant=participant, ceiling_kpa=ceiling, session=session, method="staircase",
        target_rating=source.target_rating or 50.0, rig=req.rig, cuff=req.cuff, dry_run=req.dry_run,
        headless=req.headless, data=data_root, seed=req.seed, yes=req.yes, start_kpa=max(0.5, min(pressures)),
        step_kpa=0.5, plateau_s=req.plateau_s, rest_s=req.rest_s, sim_participant=req.sim_participant,
        confirmed_by=req.confirmed_by))
    assert isinstance(cal.settings, StaircaseSettings)
    return PressureCheckSetup(kind=req.kind, source=source, pressures=pressures, adjust_kpa=req.pressure_kpa,
                              instructions=req.instructions, calibration=replace(cal, method=req.kind))
