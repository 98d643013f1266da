"""The `cuedpain` command line of each checklist row: a visit step runs exactly as typed by hand. Pure."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from experiment.procedures.visit.state import Row
from experiment.protocol.visit import CalibrationStep, RigCheckStep, ScannerCheckStep, Visit


@dataclass(frozen=True)
class Context:
    """What every step of one visit shares."""

    participant: str
    session: str | None
    data: Path
    rig: Path | None = None
    dry_run: bool = False
    headless: bool = False
    yes: bool = False                 # the step does not ask again (--yes, or the station's Start)
    confirmed_by: str | None = None   # who confirmed instead of the terminal ('station')


def _who(ctx: Context) -> list[str]:
    out = ["--participant", ctx.participant]
    return out + (["--session", ctx.session] if ctx.session else [])


def _common(ctx: Context, *, rig: bool = True) -> list[str]:
    out = ["--data", str(ctx.data)]
    if rig and ctx.rig is not None:
        out += ["--rig", str(ctx.rig)]
    if ctx.dry_run:
        out.append("--dry-run")
        if ctx.headless:
            out.append("--headless")
    if ctx.yes:
        out.append("--yes")
        if ctx.confirmed_by:
            out += ["--confirmed-by", ctx.confirmed_by]
    return out


def _num(x: float) -> str:
    return f"{x:g}"


def _pages(pages: tuple[str, ...]) -> list[str]:
    return [a for page in pages for a in ("--instruction", page)]


def row_argv(visit: Visit, row: Row, ctx: Context, *, pressure_kpa: float | None = None) -> list[str]:
    """The arguments after `cuedpain` for one row (`pressure_kpa`: a scanner check at an adjusted pressure)."""
    step = visit.steps[row.plan_index]
    if row.kind == "rig_check":
        assert isinstance(step, RigCheckStep)
        if ctx.dry_run:   # rig-check has no --dry-run: the simulated cuff, and no trigger line to listen to
            return ["rig-check", "--cuff", "sim", "--pings", "100", "--data", str(ctx.data)]
        out = ["rig-check", "--listen", _num(step.listen_s), "--data", str(ctx.data)]
        return out + (["--rig", str(ctx.rig)] if ctx.rig is not None else [])
    if row.kind == "calibration":
        assert isinstance(step, CalibrationStep)
        out = ["calibrate", *_who(ctx), "--ceiling", _num(step.ceiling_kpa), "--method", step.method,
               "--target-rating", _num(step.target_rating)]
        for flag, value in (("--start", step.start_kpa), ("--step", step.step_kpa), ("--plateau", step.plateau_s),
                            ("--rest", step.rest_s)):
            if value is not None and not (step.method == "ramp" and flag in ("--start", "--step", "--plateau")):
                out += [flag, _num(value)]
        return out + _common(ctx)
    if row.kind == "confirmation":
        assert isinstance(step, CalibrationStep)
        out = ["confirm-pressure", *_who(ctx)]
        for flag, value in (("--plateau", step.plateau_s), ("--rest", step.rest_s)):
            if value is not None:
                out += [flag, _num(value)]
        return out + _common(ctx)
    if row.kind == "scanner_check":
        assert isinstance(step, ScannerCheckStep)
        out = ["scanner-check", *_who(ctx), "--plateau", _num(step.plateau_s)]
        if pressure_kpa is not None:
            out += ["--pressure", _num(pressure_kpa)]
        return out + _common(ctx) + _pages(step.instructions)
    assert row.kind == "run" and row.protocol is not None
    return ["run", str(row.protocol), *_who(ctx), "--run", "next", *_common(ctx), *_pages(row.instructions)]
