"""The visit's state is a pure function of what is on disk."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

from experiment.procedures.visit.commands import Context, row_argv
from experiment.procedures.visit.state import (Active, CalibrationFact, Listing, RigCheckFact, RunFact, expand,
                                               next_row, visit_state)
from experiment.protocol.visit import parse_visit

ROOT = Path(__file__).resolve().parents[1]
PLAN = parse_visit("""cuedpain_version: dev
name: t
steps:
  - step: rig_check
  - {step: calibration, ceiling: {value: 50, unit: kPa}}
  - step: scanner_check
  - {step: runs, protocol: a.yaml, count: 2}
""", file="v.yaml", base_dir=ROOT)
ROWS = expand(PLAN, {ROOT / "a.yaml": "demo"})
T0 = datetime(2026, 12, 2, 9, 0, tzinfo=timezone.utc)


def _at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


def _cal(n: int, method: str, minutes: float, session: str | None = "1") -> CalibrationFact:
    return CalibrationFact(n, f"c/sub-P_calibration-{n}.json", method, session, _at(minutes), 40.0, True)


def _run(n: int, minutes: float, status: str = "completed", **kw) -> RunFact:
    return RunFact(**{"run_dir": f"r/run-{n}", "task": "demo", "run": n, "started": _at(minutes), "status": status,
                      "reason": None if status == "completed" else "escape", "attempt": False, "discarded": None,
                      **kw})


def _states(listing: Listing) -> list[str]:
    return [s.state for s in visit_state(ROWS, listing, session="1")]


def test_rows_of_a_plan() -> None:
    assert [r.kind for r in ROWS] == ["rig_check", "calibration", "confirmation", "scanner_check", "run", "run"]


def test_nothing_counts_before_the_visit_started() -> None:
    listing = Listing(started=None, calibrations=(_cal(1, "staircase", 1),), runs=(_run(1, 2),))
    assert _states(listing) == ["next"] + ["to do"] * 5
    old = Listing(started=_at(10), calibrations=(_cal(1, "staircase", 1),),
                  rig_checks=(RigCheckFact("rc", _at(5), True, "x"),))
    assert _states(old) == ["next"] + ["to do"] * 5


def test_each_step_is_done_by_its_own_evidence() -> None:
    listing = Listing(started=_at(0), rig_checks=(RigCheckFact("rc", _at(1), True, "labcuff"),),
                      calibrations=(_cal(1, "staircase", 2), _cal(2, "confirmation", 3), _cal(3, "scanner_check", 4)),
                      runs=(_run(1, 5),))
    states = visit_state(ROWS, listing, session="1")
    assert [s.state for s in states] == ["done"] * 5 + ["next"]
    assert states[3].evidence == "c/sub-P_calibration-3.json" and states[4].evidence == "r/run-1"


def test_a_failed_rig_check_another_session_and_a_stale_confirmation_do_not_count() -> None:
    listing = Listing(started=_at(0), rig_checks=(RigCheckFact("rc", _at(1), False, None),),
                      calibrations=(_cal(1, "staircase", 2, session="2"),))
    assert _states(listing) == ["next"] + ["to do"] * 5
    # a recalibration after the confirmation: the confirmation must be done again
    listing = Listing(started=_at(0), rig_checks=(RigCheckFact("rc", _at(1), True, None),),
                      calibrations=(_cal(1, "staircase", 2), _cal(2, "confirmation", 3), _cal(3, "ramp", 4)))
    assert _states(listing) == ["done", "done", "next", "to do", "to do", "to do"]


def test_aborted_attempted_and_discarded_runs_leave_their_row_to_redo() -> None:
    base = dict(started=_at(0), rig_checks=(RigCheckFact("rc", _at(1), True, None),),
                calibrations=(_cal(1, "staircase", 2), _cal(2, "confirmation", 3), _cal(3, "scanner_check", 4)))
    runs = (_run(1, 5, discarded="participant moved"), _run(2, 6, status="aborted"), _run(3, 7, attempt=True),
            _run(4, 8))
    states = visit_state(ROWS, Listing(**base, runs=runs), session="1")
    assert [s.state for s in states][4:] == ["done", "next"]
    assert states[4].evidence == "r/run-4"
    assert "attempt" in states[5].detail and len(states[5].tries) == 3
    running = Listing(**base, runs=runs, active=Active("3-run-2", 123, True, "now"))
    states = visit_state(ROWS, running, session="1")
    assert states[5].state == "running" and next_row(states) is None


def test_each_row_runs_as_the_command_an_operator_would_type(tmp_path: Path) -> None:
    ctx = Context(participant="P", session="1", data=tmp_path, dry_run=True, yes=True, confirmed_by="station")
    cal = row_argv(PLAN, ROWS[1], ctx)
    assert cal[:6] == ["calibrate", "--participant", "P", "--session", "1", "--ceiling"]
    assert cal[-4:] == ["--dry-run", "--yes", "--confirmed-by", "station"]
    run = row_argv(PLAN, ROWS[4], ctx)
    assert run[:2] == ["run", str(ROOT / "a.yaml")] and "--run" in run and run[run.index("--run") + 1] == "next"
    assert row_argv(PLAN, ROWS[3], ctx, pressure_kpa=38.5)[-2:] != ["--pressure", "38.5"]
    assert "38.5" in row_argv(PLAN, ROWS[3], ctx, pressure_kpa=38.5)
    assert row_argv(PLAN, ROWS[0], ctx)[:3] == ["rig-check", "--cuff", "sim"]
