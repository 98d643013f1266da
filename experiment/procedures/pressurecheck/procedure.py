"""A pressure check, executed on a Station: plateaus at given pressures, each rated, then
what to keep (experiment/procedures/pressurecheck/steps.py), written as a new calibration
result that says it was confirmed or adjusted and what it came from.

It is the calibration procedure with another list of stimuli: the same Station, cuff
interlocks, frame loop, rating scale, simulated participant, log and result files
(`sub-<id>_calibration-<n>`), reused from experiment/procedures/calibration/procedure.py
by subclassing, so the calibration itself is unchanged. The log header says `purpose:
confirmation` or `purpose: scanner_check` and names the result the check started from;
a `decision` record says what was kept. Exit codes as for a calibration: 0 a result
written, 2 bad input, 3 aborted or nothing rated, 4 hardware at start.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

from experiment import __version__
from experiment.errors import EXIT_ABORTED, EXIT_OK, AbortError
from experiment.log.records import EndUpdate
from experiment.outputs.atomic import create_once
from experiment.procedures.calibration.procedure import RESULT_FORMAT, Calibration, Outcome
from experiment.procedures.calibration.procedure import RatedLoop as CalibrationLoop
from experiment.procedures.calibration.steps import Done, Plateau, PlateauOutcome
from experiment.procedures.pressurecheck.preflight import PressureCheckSetup
from experiment.procedures.pressurecheck.steps import Decision, Rated, decide
from experiment.station.briefing import Briefing, calibration_briefing
from experiment.station.console import OperatorConsole
from experiment.station.recorder import STOPS, stop_reason
from experiment.station.station import Station
from experiment.units import kpa_to_mmhg

PAGE_DRY_RUN_S = 1.0     # a dry run turns each instruction page after this


class PressureCheck(Calibration):
    """One pressure check on one Station, from opened devices to the result file."""

    def __init__(self, setup: PressureCheckSetup, *, console: OperatorConsole | None = None) -> None:
        super().__init__(setup.calibration, console=console)
        self.check = setup
        self.decision: Decision | None = None
        self.rated: list[Rated] = []

    def execute(self) -> int:
        """The check; exit 0 with a result file, else AbortError (3) or the crash."""
        s, c = self.s, self.check
        with Station(s.station_spec(), console=self._console) as st:
            self.st = st
            st.console.say(f"cuedpain {__version__}: {self._what()} for sub-{s.participant}, from "
                           f"{c.source.describe(datetime.now().astimezone())}"
                           + (" (DRY RUN: simulated cuff and participant)" if s.dry_run else ""))
            self.briefing = self._check_briefing()
            st.confirm(self.briefing)
            st.add_sample_listener(self._sample)
            self._start_log()
            assert st.cuff is not None
            st.cuff.add_event_listener(self.events.put)
            self.outcome = self._guarded()
            st.finish(self._end_fields(), then=self._write_result_once_vented,
                      vent_reason=f"end of {c.kind}" if self.outcome.code == EXIT_OK else self.outcome.reason)
        return self._conclude()

    def _what(self) -> str:
        return "confirmation plateaus" if self.check.kind == "confirmation" else "pressure check in the scanner"

    def _check_briefing(self) -> Briefing:
        s, c, st = self.s, self.check, self.st
        assert st.cuff is not None and st.cuff.info is not None
        base = calibration_briefing(participant=s.participant, session=s.session, method=c.kind,
                                    target_rating=s.target_rating, ceiling_kpa=s.ceiling_kpa, cuff=st.cuff.info,
                                    dry_run=s.dry_run)
        plateaus = ", ".join(f"{p:g} kPa ({kpa_to_mmhg(p):.0f} mmHg)" for p in c.pressures)
        adjusted = "" if c.adjust_kpa is None else f", ADJUSTED by the operator from {c.source.pressure_kpa:g} kPa"
        lines = [base.lines[0], ("procedure", f"{self._what()}: plateaus at {plateaus}{adjusted}, each rated"),
                 ("from", c.source.describe(datetime.now().astimezone())), *base.lines[2:]]
        facts = {**base.facts, "kind": c.kind, "pressures_kpa": list(c.pressures), "from_file": str(c.source.path),
                 "from_kpa": c.source.pressure_kpa, "adjust_kpa": c.adjust_kpa}
        return Briefing(c.kind, s.dry_run, tuple(lines), facts)

    def _header(self) -> dict[str, object]:
        c = self.check
        return {**super()._header(), "purpose": c.kind, "pressures_kpa": list(c.pressures),
                "from_file": c.source.path.name, "from_kpa": c.source.pressure_kpa, "adjust_kpa": c.adjust_kpa,
                "instructions": list(c.instructions)}

    def _guarded(self) -> Outcome:
        """The pages, the plateaus and the decision; an orderly stop or a bug becomes an Outcome."""
        c, s = self.check, self.s
        try:
            loop = CalibrationLoop(self)
            self._pages(loop)
            hold_s, rate = s.settings.plateau_s, s.settings.rate_kpa_s   # type: ignore[union-attr]

            def choose(done: list[PlateauOutcome]) -> Plateau | Done:
                if len(done) < len(c.pressures):
                    return Plateau(index=len(done) + 1, pressure_kpa=c.pressures[len(done)], rate_kpa_s=rate,
                                   hold_s=hold_s)
                return Done("checked", f"{len(done)} plateau(s) given", fit=True)

            outcomes, _ = loop._steps(choose, loop._plateau)
            self.rated = [Rated(o.target_kpa, o.pressure_kpa, o.rating) for o in outcomes]
            self.decision = decide(c.kind, self.rated, from_kpa=c.source.pressure_kpa,
                                   target_rating=s.target_rating)
            if self.decision is None:
                self.record({"kind": "decision", "t": self.st.now(), "ok": False, "error": "no rating was given"})
                raise AbortError("no plateau was rated; nothing was kept", reason="no_result")
            d = self.decision
            self.record({"kind": "decision", "t": self.st.now(), "ok": True, "pressure_kpa": d.pressure_kpa,
                         "decision": d.decision, "rule": d.rule})
        except STOPS as exc:
            return Outcome(EXIT_ABORTED, *stop_reason(exc))
        except Exception as exc:  # a bug: the Station vents and ends the log, then the CLI reports it
            self.crash = exc
            return Outcome(EXIT_ABORTED, "internal_error", repr(exc))
        return Outcome()

    def _pages(self, loop: CalibrationLoop) -> None:
        """The instruction pages on the participant's screen (confirm key or space turns; a dry run turns them)."""
        pages = self.check.instructions
        confirm = self.s.keys.confirm
        for n, text in enumerate(pages, start=1):
            loop.display.show("fixation")
            loop.display.show_message(f"{text}\n\n({n} of {len(pages)}: press {confirm} to continue)")
            t_on = loop.display.flip()
            self.record({"kind": "instructions", "t": t_on, "page": n, "n_pages": len(pages), "text": text})
            turned_by = None
            while turned_by is None:
                _, responses = loop._frame()
                if any(key in (confirm, "space") for key, _ in responses):
                    turned_by = "participant or operator key"
                elif self.s.dry_run and self.st.now() >= t_on + (0.0 if self.s.headless else PAGE_DRY_RUN_S):
                    turned_by = "dry run (turned by itself)"
            self.record({"kind": "instructions_turned", "t": self.st.now(), "page": n, "by": turned_by})
        loop.display.show_message(None)

    def _write_result_once_vented(self) -> EndUpdate:
        """After the cuff closed: the result file, when something was kept."""
        if self.decision is None or self.outcome.code != EXIT_OK:
            return {}
        try:
            self.result_path = self._write_check_result(self.decision)
        except (AbortError, OSError) as exc:
            self.outcome = Outcome(EXIT_ABORTED, "result_not_written", str(exc))
            return {**self._end_fields()}
        return {"result": self.result_path.name}

    def _write_check_result(self, d: Decision) -> Path:
        s, c = self.s, self.check
        path = Path(f"{self.stem}.json")
        device = self._device()
        result = {
            "format": RESULT_FORMAT, "participant": s.participant, "session": s.session,
            "pressure_kpa": round(d.pressure_kpa, 2), "target_rating": s.target_rating, "method": c.kind,
            "ceiling_kpa": s.ceiling_kpa,
            "check": {"kind": c.kind, "decision": d.decision, "rule": d.rule, "from_file": c.source.path.name,
                      "from_kpa": c.source.pressure_kpa, "from_method": c.source.method,
                      "adjusted_by_operator_kpa": c.adjust_kpa,
                      "plateaus": [{"target_kpa": r.target_kpa, "pressure_kpa": r.pressure_kpa, "rating": r.rating}
                                   for r in self.rated]},
            "stimuli": [], "dry_run": s.dry_run, "headless": s.headless, "simulated_device": device["simulated"],
            "device": device, "simulated_participant": None if s.sim is None else s.sim.as_dict(),
            "confirmation": self.st.confirmation, "software": self._software(),
            "log": self.stem.name + "_log.jsonl" if self.stem else None,
            "created": datetime.now().astimezone().isoformat(timespec="seconds"),
        }
        if not create_once(path, (json.dumps(result, indent=2) + "\n").encode("utf-8")):
            raise AbortError(f"{path} appeared meanwhile; it was not replaced", reason="result_exists")
        return path

    def _conclude(self) -> int:
        if self.crash is not None:
            raise self.crash
        o, d = self.outcome, self.decision
        if o.code != EXIT_OK or d is None or self.result_path is None:
            raise AbortError(f"{self._what()} ended without a result: {o.message} (log: {self._log_path()})",
                             reason=o.reason)
        self.st.console.say(f"{d.decision} pressure: {d.pressure_kpa:.1f} kPa ({kpa_to_mmhg(d.pressure_kpa):.0f} "
                            f"mmHg): {d.rule} -> {self.result_path}")
        return EXIT_OK


def run_check(setup: PressureCheckSetup, *, console: OperatorConsole | None = None) -> int:
    """Execute a planned check: exit 0 result written; AbortError (3) otherwise."""
    return PressureCheck(setup, console=console).execute()
