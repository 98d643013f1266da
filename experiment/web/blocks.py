"""The confirmation block of a step, computed before it is started, without touching a device.

The same facts as the block the step's process shows at its start (README, "What the
operator confirms"): participant, pressure and where it comes from, ceiling, cuff
identity, trigger source, dry run or real. They come from the step's own pre-flight
(run, calibration, pressure check), which checks every input and opens nothing; the cuff's
identity from the newest rig-check log, or "not known yet". A pre-flight that refuses
gives the block's error instead, and the page offers no Start.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from experiment.errors import CuedpainError
from experiment.procedures.visit.listing import rig_check_facts
from experiment.procedures.visit.state import Row
from experiment.protocol.visit import CalibrationStep, ScannerCheckStep, Visit
from experiment.units import kpa_to_mmhg

if TYPE_CHECKING:
    from experiment.procedures.run.preflight import RunPlan


@dataclass(frozen=True)
class Where:
    participant: str
    session: str | None
    data: Path
    rig: Path | None
    dry_run: bool
    headless: bool


def _kpa(p: float) -> str:
    return f"{p:.1f} kPa ({kpa_to_mmhg(p):.0f} mmHg)"


def cuff_identity(w: Where) -> str:
    if w.dry_run:
        return "the simulated cuff (cuedpain-sim), on a pseudo-terminal"
    checks = [r for r in rig_check_facts(w.data) if r.cuff]
    if not checks:
        return "not known yet (no rig check in this data root): run the rig check first"
    newest = checks[-1]
    return f"{newest.cuff} (rig check of {newest.started:%Y-%m-%d %H:%M})" if newest.started else str(newest.cuff)


def block(visit: Visit, row: Row, w: Where, *, pressure_kpa: float | None = None) -> dict[str, Any]:
    """{'mode', 'lines': [[label, text]], 'error'} for one checklist row."""
    mode = "DRY RUN: simulated devices, nothing reaches a participant" if w.dry_run else "REAL"
    ses = f", session {w.session}" if w.session else ""
    try:
        lines = _lines(visit, row, w, pressure_kpa)
    except CuedpainError as exc:
        return {"mode": mode, "lines": [["participant", f"sub-{w.participant}{ses}"]], "error": exc.message}
    return {"mode": mode, "lines": [["participant", f"sub-{w.participant}{ses}"], *lines], "error": None}


def _lines(visit: Visit, row: Row, w: Where, pressure_kpa: float | None) -> list[list[str]]:
    step = visit.steps[row.plan_index]
    cuff = ["cuff", cuff_identity(w)]
    if row.kind == "rig_check":
        from experiment.protocol.rig import load_rig

        rig = load_rig(w.rig)
        if not w.dry_run and rig.cuff is None and rig.scanner is None:
            from experiment.errors import InputError

            raise InputError(f"{rig.label} names no cuff and no trigger line to check; give the station a rig file "
                             "(--rig) with their ports (the serial ports of this computer are listed on this page)")
        return [["procedure", "rig check: cuff identity, limits and round trips; trigger pulses and TR"],
                ["cuff", "sim (simulated)" if w.dry_run else (str(rig.cuff) if rig.cuff else "NOT CONFIGURED")],
                ["trigger", "not checked in a dry run" if w.dry_run else
                 (str(rig.scanner) if rig.scanner else "NOT CONFIGURED")]]
    if row.kind == "calibration":
        from experiment.procedures.calibration.preflight import CalibrationRequest
        from experiment.procedures.calibration.preflight import preflight as cal_preflight

        assert isinstance(step, CalibrationStep)
        s = cal_preflight(CalibrationRequest(
            participant=w.participant, ceiling_kpa=step.ceiling_kpa, session=w.session, method=step.method,
            target_rating=step.target_rating, rig=w.rig, dry_run=w.dry_run, headless=w.headless, data=w.data,
            yes=True, start_kpa=step.start_kpa if step.method == "staircase" else None,
            step_kpa=step.step_kpa if step.method == "staircase" else None,
            plateau_s=step.plateau_s if step.method == "staircase" else None, rest_s=step.rest_s))
        return [["procedure", f"calibration, {s.method} method, target rating {s.target_rating:g}/100"],
                ["pressure", "found by this calibration"], ["ceiling", f"{_kpa(s.ceiling_kpa)}: no stimulus above it"],
                cuff]
    if row.kind in ("confirmation", "scanner_check"):
        from datetime import datetime

        from experiment.procedures.pressurecheck.preflight import PressureCheckRequest
        from experiment.procedures.pressurecheck.preflight import preflight as check_preflight

        plateau = step.plateau_s if isinstance(step, ScannerCheckStep) else \
            (step.plateau_s if isinstance(step, CalibrationStep) and step.plateau_s else 5.0)
        c = check_preflight(PressureCheckRequest(
            kind=row.kind, participant=w.participant, session=w.session, pressure_kpa=pressure_kpa, plateau_s=plateau,
            rig=w.rig, dry_run=w.dry_run, headless=w.headless, data=w.data, yes=True))
        what = "confirmation plateaus" if row.kind == "confirmation" else "one stimulus in the scanner"
        adjusted = "" if pressure_kpa is None else f", ADJUSTED by the operator from {c.source.pressure_kpa:g} kPa"
        return [["procedure", f"{what}, each rated"],
                ["pressure", ", ".join(_kpa(p) for p in c.pressures) + adjusted],
                ["from", c.source.describe(datetime.now().astimezone())],
                ["ceiling", _kpa(c.calibration.ceiling_kpa)], cuff]
    from experiment.procedures.run.preflight import RunRequest
    from experiment.procedures.run.preflight import preflight as run_preflight
    from experiment.protocol.specs import Gate
    from experiment.station.briefing import pressure_line

    assert row.protocol is not None
    plan = run_preflight(RunRequest(protocol=row.protocol, participant=w.participant, session=w.session, run="next",
                                    rig=w.rig, dry_run=w.dry_run, headless=w.headless, data=w.data, yes=True,
                                    instructions=row.instructions or None))
    sim = " (SIMULATED)" if w.dry_run else ""
    panel = [] if plan.panel_kpa is None else [["panel", f"pressure set on the device's panel: {_kpa(plan.panel_kpa)}, "
                                                + ("measured by the gate board's sensor, if it has one"
                                                   if plan.cuff_spec.gate is Gate.BOARD else "not measured")]]
    return [["run", f"run {plan.run_id.run}: {plan.protocol.name}"],
            ["protocol", f"{plan.protocol_path} (sha256 {plan.protocol.sha256[:12]})"],
            ["pressure", pressure_line(plan.pressure)], *panel,
            ["ceiling", _kpa(plan.protocol.safety.max_pressure_kpa)],
            cuff, ["trigger", str(plan.scanner_spec) + sim], *_input_lines(plan),
            ["instructions", f"{len(plan.instructions)} page(s) before waiting for the scanner"]]


def _input_lines(plan: RunPlan) -> list[list[str]]:
    """A serial button box and Lab Streaming Layer streams, when the run has them (docs/buttons.md, docs/lsl.md)."""
    from experiment.station.devices import shares_line

    lines = []
    if plan.buttons is not None:
        shared = shares_line(plan.buttons.spec, plan.scanner_spec)
        lines.append(["buttons", str(plan.buttons.spec) + (" (SIMULATED)" if plan.buttons.spec.simulated else "")
                      + (", on the trigger's line (one reader)" if shared else "")])
    if plan.lsl:
        lines.append(["streams", "Lab Streaming Layer: markers and pressure (docs/lsl.md)"])
    return lines
