"""Which steps of a visit are done: pure functions over a listing of the dataset root.

The plan's steps are expanded into checklist rows (`expand`): a calibration step becomes
"calibration" and, with `confirm: true`, "confirmation"; a runs step with `count: N`
becomes N rows. `visit_state(rows, listing)` says for each row whether it is done (and
by which file), running (a live process the station started for it), the next to do, or
to do. The rules (docs/visits.md):

* only what was made since the visit started counts (`Listing.started`);
* rig check: a rig-check log that ended ok;
* calibration: a staircase or ramp result of this session; the newest counts;
* confirmation: a `confirmation` result newer than that calibration;
* scanner check: a `scanner_check` result newer than the confirmation (or the calibration);
* run: a run whose `end` record says completed, not discarded, not an attempt; the runs
  of a task go to the rows of that task in run-number order.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Mapping, Sequence

from experiment.protocol.visit import CalibrationStep, RigCheckStep, RunsStep, ScannerCheckStep, Visit

CALIBRATION_METHODS = ("staircase", "ramp")


@dataclass(frozen=True)
class Row:
    """One row of the checklist: a thing to do once."""

    key: str                          # stable id, e.g. "1-calibration", "4-run-2"
    kind: str                         # rig_check | calibration | confirmation | scanner_check | run
    title: str
    plan_index: int                   # the plan step it comes from
    instructions: tuple[str, ...]     # what the participant reads (or the operator reads out)
    protocol: Path | None = None      # runs
    task: str | None = None           # runs
    nth: int = 0                      # runs: k of count
    count: int = 0


@dataclass(frozen=True)
class CalibrationFact:
    number: int
    path: str
    method: str
    session: str | None
    created: datetime | None
    pressure_kpa: float
    dry_run: bool | None
    decision: str | None = None       # checks: confirmed | adjusted


@dataclass(frozen=True)
class RunFact:
    run_dir: str
    task: str
    run: int
    started: datetime | None
    status: str                       # completed | aborted | running (no end record yet)
    reason: str | None
    attempt: bool
    discarded: str | None             # the reason, when marked discarded


@dataclass(frozen=True)
class RigCheckFact:
    path: str
    started: datetime | None
    ok: bool | None                   # None: no end record (running or killed)
    cuff: str | None                  # the cuff's identity as it answered


@dataclass(frozen=True)
class Active:
    """A step's process the station started (its state file), and whether it is alive."""

    key: str
    pid: int
    alive: bool
    started: str


@dataclass(frozen=True)
class Listing:
    started: datetime | None          # when the visit began (None: not yet)
    calibrations: tuple[CalibrationFact, ...] = ()
    runs: tuple[RunFact, ...] = ()
    rig_checks: tuple[RigCheckFact, ...] = ()
    active: Active | None = None


@dataclass(frozen=True)
class RowState:
    row: Row
    state: str                        # done | running | next | to do
    detail: str                       # one line for the operator
    evidence: str | None = None       # the file or directory that makes it done
    tries: tuple[RunFact, ...] = ()   # runs: the runs that did not count (aborted, attempts, discarded)


def expand(visit: Visit, tasks: Mapping[Path, str]) -> tuple[Row, ...]:
    """The checklist rows of a plan (`tasks`: each runs step's protocol path -> its BIDS task)."""
    rows: list[Row] = []
    for i, s in enumerate(visit.steps):
        if isinstance(s, RigCheckStep):
            rows.append(Row(f"{i}-rig_check", "rig_check", "Rig check (cuff and trigger line)", i, s.instructions))
        elif isinstance(s, CalibrationStep):
            rows.append(Row(f"{i}-calibration", "calibration", f"Calibration ({s.method}, target {s.target_rating:g}"
                            f"/100, ceiling {s.ceiling_as_written})", i, s.instructions))
            if s.confirm:
                rows.append(Row(f"{i}-confirmation", "confirmation", "Confirmation plateaus (pressure and +-10 %)", i,
                                ()))
        elif isinstance(s, ScannerCheckStep):
            rows.append(Row(f"{i}-scanner_check", "scanner_check", "Check in the scanner (one rated stimulus)", i,
                            s.instructions))
        else:
            assert isinstance(s, RunsStep)
            for k in range(1, s.count + 1):
                rows.append(Row(f"{i}-run-{k}", "run", f"Run {k} of {s.count}: {s.protocol}", i,
                                s.instructions or (), protocol=s.protocol_path, task=tasks[s.protocol_path], nth=k,
                                count=s.count))
    return tuple(rows)


def _since(when: datetime | None, start: datetime | None) -> bool:
    if start is None:
        return False
    return when is not None and when >= start.replace(microsecond=0)


def _done_runs(rows: Sequence[Row], runs: Sequence[RunFact], start: datetime | None) -> dict[str, RunFact]:
    counted = sorted((r for r in runs if r.status == "completed" and not r.attempt and r.discarded is None
                      and _since(r.started, start)), key=lambda r: r.run)
    out: dict[str, RunFact] = {}
    for task in {row.task for row in rows if row.kind == "run"}:
        mine = [r for r in counted if r.task == task]
        for row, fact in zip([row for row in rows if row.task == task], mine):
            out[row.key] = fact
    return out


def visit_state(rows: Sequence[Row], listing: Listing, *, session: str | None) -> tuple[RowState, ...]:
    """Each row's state (the rules in the module docstring). Pure."""
    start = listing.started
    done: dict[str, str] = {}
    details: dict[str, str] = {}
    rigs = [r for r in listing.rig_checks if r.ok and _since(r.started, start)]
    cals = [c for c in listing.calibrations if c.session == session and _since(c.created, start)]
    base = max((c for c in cals if c.method in CALIBRATION_METHODS), key=lambda c: c.number, default=None)
    conf = max((c for c in cals if c.method == "confirmation" and base and c.number > base.number),
               key=lambda c: c.number, default=None)
    last = conf or base
    check = max((c for c in cals if c.method == "scanner_check" and last and c.number > last.number),
                key=lambda c: c.number, default=None)
    found = {"calibration": base, "confirmation": conf, "scanner_check": check}
    runs = _done_runs(rows, listing.runs, start)
    for row in rows:
        if row.kind == "rig_check" and rigs:
            newest = rigs[-1]
            done[row.key] = newest.path
            details[row.key] = f"ok; cuff {newest.cuff or 'not checked'}"
        elif row.kind in found and (fact := found[row.kind]) is not None:
            done[row.key] = fact.path
            details[row.key] = f"{fact.pressure_kpa:g} kPa" + (f" ({fact.decision})" if fact.decision else "") + \
                f" -> {Path(fact.path).name}"
        elif row.kind == "run" and row.key in runs:
            done[row.key] = runs[row.key].run_dir
            details[row.key] = f"completed: run {runs[row.key].run}"
    counted = {f for f in done.values()}
    out: list[RowState] = []
    seen_next = False
    active = listing.active if listing.active is not None and listing.active.alive else None
    for row in rows:
        tries: tuple[RunFact, ...] = ()
        if row.kind == "run":
            tries = tuple(r for r in listing.runs if r.task == row.task and r.run_dir not in counted
                          and _since(r.started, start))
        if row.key in done:
            out.append(RowState(row, "done", details[row.key], done[row.key], tries))
        elif active is not None and active.key == row.key:
            out.append(RowState(row, "running", f"running (pid {active.pid}, since {active.started})", None, tries))
            seen_next = True
        elif not seen_next:
            out.append(RowState(row, "next", _why_not(row, tries), None, tries))
            seen_next = True
        else:
            out.append(RowState(row, "to do", "", None, tries))
    return tuple(out)


def _why_not(row: Row, tries: Sequence[RunFact]) -> str:
    if row.kind != "run" or not tries:
        return "next"
    last = tries[-1]
    if last.discarded is not None:
        what = "discarded: " + last.discarded
    elif last.attempt:
        what = "never reached the first volume (attempt)"
    elif last.status == "running":
        what = "no end record (still running, or its process was killed: `cuedpain rebuild` derives its outputs)"
    else:
        what = f"{last.status} ({last.reason})"
    return f"next (last try: run {last.run}, {what})"


def next_row(states: Sequence[RowState]) -> RowState | None:
    """The row to do next (None: the visit is complete or a step is running)."""
    return next((s for s in states if s.state == "next"), None)


def with_active(listing: Listing, active: Active | None) -> Listing:
    return replace(listing, active=active)
