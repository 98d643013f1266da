"""Visit plans: which runs and calibrations each participant should have, and which are missing.

Visit plans (YAML files listing a visit's steps) are being designed elsewhere; until they
exist the study page says there is no plan. The reader is a plain function of the dataset
root, `PlanReader`, passed to `read_study`: when the plan format lands, its reader turns
the files into `VisitPlan`s and nothing else changes. `missing_steps` (pure) compares the
plans with what the dataset holds: a planned run counts as done when a run of its task and
session completed and was not discarded; a planned calibration when a result exists.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence


@dataclass(frozen=True)
class PlannedStep:
    """One step of a visit: `count` completed runs of `task`, or a calibration."""

    kind: str                     # run | calibration
    session: str | None
    task: str | None = None       # runs: the BIDS task label
    count: int = 1


@dataclass(frozen=True)
class VisitPlan:
    name: str
    source: str                   # the file it came from
    steps: tuple[PlannedStep, ...]
    participants: tuple[str, ...] | None = None   # labels; None: every participant of the study


@dataclass(frozen=True)
class PlanReading:
    """The plans found, and a sentence saying what was looked for (shown on the page)."""

    plans: tuple[VisitPlan, ...]
    note: str
    problems: tuple[str, ...] = ()


PlanReader = Callable[[Path], PlanReading]


def no_plans(root: Path) -> PlanReading:
    """The reader until visit plans exist: there is none."""
    return PlanReading(plans=(), note="No visit plan: this version of cuedpain has no visit plans yet, so runs "
                                      "missing from a plan cannot be listed. The section fills in once plans "
                                      "exist (experiment/study/plans.py takes their reader).")


@dataclass(frozen=True)
class Done:
    """What a participant has: completed, counted runs by (session, task); calibrations with a result by session."""

    participant: str
    runs: tuple[tuple[str | None, str], ...]
    calibrations: tuple[str | None, ...]


@dataclass(frozen=True)
class MissingStep:
    participant: str
    plan: str
    kind: str
    session: str | None
    task: str | None
    expected: int
    found: int


def missing_steps(plans: Sequence[VisitPlan], participants: Sequence[str], done: Sequence[Done]) -> tuple[MissingStep, ...]:
    """Every planned step a participant has not completed (fewer runs than planned, no calibration)."""
    by_participant = {d.participant: d for d in done}
    out: list[MissingStep] = []
    for plan in plans:
        who = plan.participants if plan.participants is not None else tuple(participants)
        for p in who:
            d = by_participant.get(p, Done(p, (), ()))
            for step in plan.steps:
                if step.kind == "calibration":
                    found = sum(1 for s in d.calibrations if s == step.session)
                else:
                    found = sum(1 for s, t in d.runs if s == step.session and t == step.task)
                if found < step.count:
                    out.append(MissingStep(participant=p, plan=plan.name, kind=step.kind, session=step.session,
                                           task=step.task, expected=step.count, found=found))
    return tuple(out)
