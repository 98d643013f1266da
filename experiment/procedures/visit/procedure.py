"""`cuedpain visit PLAN`: the visit in the terminal, step after step, each as its own process.

Before each step that is not done the operator sees the checklist, what the participant
will read, and the command; `Start this step? [y/N]` (`--yes` answers). The step runs as
`python -m experiment ...` in the foreground (its console in this terminal, its own
confirmation block for a real session), and the checklist is read again from disk after
it, so a visit killed at any point resumes at the next step and repeats none.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from experiment.errors import EXIT_ABORTED, EXIT_INPUT, EXIT_OK, AbortError, InputError
from experiment.outputs.dataset import check_root, default_root
from experiment.procedures.run.preflight import mode_of
from experiment.procedures.visit.commands import Context, row_argv
from experiment.procedures.visit.listing import begin_visit, read_listing
from experiment.procedures.visit.state import Row, RowState, expand, next_row, visit_state
from experiment.protocol.identifiers import check_label
from experiment.protocol.model import load_protocol
from experiment.protocol.rig import load_rig
from experiment.protocol.visit import Visit, load_visit

MARKS = {"done": "[x]", "running": "[>]", "next": "[ ]", "to do": "[ ]"}


@dataclass(frozen=True)
class VisitRequest:
    plan: Path
    participant: str
    session: str | None = None
    rig: Path | None = None
    data: Path | None = None
    dry_run: bool = False
    headless: bool = False
    yes: bool = False


@dataclass(frozen=True)
class VisitSetup:
    visit: Visit
    rows: tuple[Row, ...]
    ctx: Context


def tasks_of(visit: Visit) -> dict[Path, str]:
    """Each runs step's protocol -> its BIDS task (the plan was loaded, so the protocols are valid)."""
    from experiment.protocol.visit import RunsStep

    return {s.protocol_path: load_protocol(s.protocol_path).task for s in visit.steps if isinstance(s, RunsStep)}


def preflight(req: VisitRequest) -> VisitSetup:
    """Check the plan, the labels, the rig and the dataset root; touches no device (exit 2)."""
    mode_of(dry_run=req.dry_run, headless=req.headless)
    participant = check_label(req.participant, "participant")
    session = None if req.session is None else check_label(req.session, "session")
    visit = load_visit(req.plan)
    load_rig(req.rig)
    data = req.data if req.data is not None else default_root(dry_run=req.dry_run)
    check_root(data, dry_run=req.dry_run)
    ctx = Context(participant=participant, session=session, data=data, rig=req.rig, dry_run=req.dry_run,
                  headless=req.headless, yes=req.yes)
    return VisitSetup(visit=visit, rows=expand(visit, tasks_of(visit)), ctx=ctx)


def states(setup: VisitSetup) -> tuple[RowState, ...]:
    c = setup.ctx
    listing = read_listing(c.data, c.participant, c.session, setup.visit.label)
    return visit_state(setup.rows, listing, session=c.session)


def checklist_text(rows: Sequence[RowState]) -> str:
    return "\n".join(f"  {MARKS[s.state]} {s.row.title}" + (f"  - {s.detail}" if s.detail and s.state != "to do"
                                                             else "") for s in rows)


def child_argv(args: Sequence[str]) -> list[str]:
    """`cuedpain ARGS` as this interpreter runs it."""
    return [sys.executable, "-m", "experiment", *args]


class TerminalVisit:
    """The visit's loop in the terminal (ask, run the step, read the state again)."""

    def __init__(self, setup: VisitSetup, *, ask: Callable[[str], str] = input,
                 say: Callable[[str], None] = print) -> None:
        self.setup, self.ask, self.say = setup, ask, say

    def _yes(self, question: str) -> bool:
        if self.setup.ctx.yes:
            return True
        try:
            return self.ask(question).strip().lower() in ("y", "yes")
        except EOFError:
            return False

    def execute(self) -> int:
        s, c = self.setup, self.setup.ctx
        mark = " (DRY RUN: simulated devices)" if c.dry_run else ""
        self.say(f"visit: {s.visit.name}{mark}: sub-{c.participant}" + (f", session {c.session}" if c.session else "")
                 + f"; data in {c.data}")
        while True:
            rows = states(s)
            self.say(checklist_text(rows))
            row = next_row(rows)
            if row is None:
                running = [r for r in rows if r.state == "running"]
                if running:
                    raise InputError(f"{running[0].row.title} is running ({running[0].detail}); wait for it or "
                                     "abort it from the station")
                self.say("visit complete: every step is done")
                return EXIT_OK
            code = self._step(row)
            if code != EXIT_OK:
                self.say(f"step '{row.row.title}' ended with exit code {code}; the data are kept. Run the same "
                         "command again to carry on (a step that did not finish is done again)")
                return code

    def _step(self, state: RowState) -> int:
        s, c, row = self.setup, self.setup.ctx, state.row
        self.say(f"\nNEXT: {row.title}" + ("" if state.detail == "next" else f" ({state.detail})"))
        reader = "the participant reads" if row.kind in ("run", "scanner_check") else "read this to the participant"
        for n, page in enumerate(row.instructions, start=1):
            self.say(f"  {reader} ({n}/{len(row.instructions)}): {page}")
        argv = row_argv(s.visit, row, c)
        self.say("  command: cuedpain " + " ".join(_quote(a) for a in argv))
        if not self._yes("Start this step? Type y and Enter to start, anything else stops the visit here: "):
            self.say("stopped before this step; run the same command again to carry on")
            return EXIT_ABORTED
        begin_visit(c.data, c.participant, c.session, s.visit.label, plan=s.visit.path or Path("?"),
                    plan_sha256=s.visit.sha256)
        code = subprocess.call(child_argv(argv))
        while code == EXIT_OK and row.kind == "scanner_check" and not c.yes:
            answer = self._ask_adjust()
            if answer is None:
                break
            code = subprocess.call(child_argv(row_argv(s.visit, row, c, pressure_kpa=answer)))
        return code

    def _ask_adjust(self) -> float | None:
        try:
            text = self.ask("Keep this pressure? Press Enter to keep it, or type a new pressure in kPa to check "
                            "again at it: ").strip()
        except EOFError:
            return None
        if not text:
            return None
        try:
            return float(text)
        except ValueError:
            self.say(f"not a pressure: {text!r}; keeping the checked one")
            return None


def _quote(a: str) -> str:
    return a if a and all(ch.isalnum() or ch in "-_./:=" for ch in a) else repr(a)


def run_visit(req: VisitRequest) -> int:
    """Exit 0 every step done, 2 bad input, 3 stopped or a step aborted (or that step's own code)."""
    try:
        setup = preflight(req)
    except AbortError:
        raise
    return TerminalVisit(setup).execute()


__all__ = ["VisitRequest", "run_visit", "EXIT_INPUT"]
