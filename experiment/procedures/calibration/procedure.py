"""The calibration procedure, executed on a Station: find the pressure that gives the
participant's target pain rating.

Order, as in a run (experiment/procedures/run/procedure.py):
1. Input was checked by pre-flight (experiment/procedures/calibration/preflight.py): exit 2.
2. The Station opens the cuff (real; dry run: simulated on a pseudo-terminal through the
   serial driver; headless: the same on a virtual clock) and a window; the supervisor checks
   the ceiling against the device's hard limit and arms the device with it: exit 4. The
   operator sees what will be done and confirms (a real calibration waits for y).
3. The calibration log (append-only, like a run's) is created exclusively in
   data/sourcedata/sub-<id>/calibration/ next to where the result will go.
4. The procedure (experiment/procedures/calibration/steps.py). In dry runs a simulated
   participant (experiment/procedures/calibration/participant.py) answers with keys.
5. Whatever happens, the Station vents first and closes the cuff (vent, disarm, release
   verified, all logged); then, only when the fit gives a pressure, the result file is
   created (never replaced); then the log's `end` record.
Exit codes: 0 result written; 2 bad input; 3 aborted (operator, participant stop,
interlock, device fault) or no result (the fit refused the data); 4 hardware at start.
docs/calibration.md describes the procedures, the files and the records.
"""

from __future__ import annotations

import json
import platform
import queue
import sys
import threading
from collections import deque
from dataclasses import asdict, dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Callable, Sequence, TypeVar

from experiment import __version__
from experiment.cuff.base import DeviceEvent, EventKind, PressureSample
from experiment.cuff.safety import CuffSupervisor
from experiment.errors import EXIT_ABORTED, EXIT_OK, AbortError, InputError
from experiment.log.records import CalibrationRecord, EndFields, EndUpdate, FitFields, FitRecord, StimulusRecord
from experiment.outputs.atomic import create_once
from experiment.outputs.dataset import claim_root
from experiment.outputs.participants import set_participant
from experiment.procedures.calibration.fit import FitError, MonotoneFit, fit_pressure_for_rating
from experiment.procedures.calibration.participant import CalibrationParticipant
from experiment.procedures.calibration.preflight import CalibrationSetup
from experiment.procedures.calibration.results import (LevelReport, calibration_dir, latest_calibration, level_report,
                                                       next_calibration_path)
from experiment.procedures.calibration.steps import (Done, Plateau, PlateauOutcome, Ramp, RampOutcome, RampSettings,
                                                     StaircaseSettings,
                                                     fit_points, mean_pressure, next_plateau, next_ramp,
                                                     pressure_at, stimulus_records, StimulusPoint)
from experiment.station.briefing import Briefing, calibration_briefing
from experiment.station.console import OperatorConsole
from experiment.station.devices import Display, KeyReader
from experiment.station.rating import RatingScale, press, start_rating, timed_out
from experiment.station.recorder import STOPS
from experiment.station.runinfo import package_versions, software_revision
from experiment.station.station import Station
from experiment.units import kpa_to_mmhg

S = TypeVar("S", Ramp, Plateau)                     # a stimulus the method chose
O = TypeVar("O", RampOutcome, PlateauOutcome)       # what came of it

RESULT_FORMAT = "cuedpain-calibration/1"
READY_S = 2.0                 # instructions on screen before each stimulus
RELEASE_GRACE_S = 1.0         # beyond the supervisor's own deadlines, before the loop gives up waiting


def fit_record(t: float, f: FitFields) -> FitRecord:
    """The `fit` record of a fit that was made: its fields as in the result file's `fit`."""
    return {"kind": "fit", "t": t, "ok": True, "method": f["method"], "pressure_kpa": f["pressure_kpa"],
            "target_rating": f["target_rating"], "knots_kpa": f["knots_kpa"], "fitted_ratings": f["fitted_ratings"],
            "weights": f["weights"], "bracket_kpa": f["bracket_kpa"], "kendall_tau": f["kendall_tau"],
            "max_reversal": f["max_reversal"], "max_reversal_allowed": f["max_reversal_allowed"], "n": f["n"]}


@dataclass(frozen=True)
class Outcome:
    """How the calibration's procedure ended (before the result file is written)."""

    code: int = EXIT_OK
    reason: str = "completed"
    message: str = ""


def claim_stem(data_root: Path, participant: str) -> Path:
    """`.../sub-<id>_calibration-<n>` for the first n with no result and no log (a failed
    attempt keeps its number and its log)."""
    first = next_calibration_path(data_root, participant)
    n = int(first.stem.rsplit("-", 1)[1])
    d = calibration_dir(data_root, participant)
    while True:
        stem = d / f"sub-{participant}_calibration-{n}"
        if not any(Path(f"{stem}{sfx}").exists() for sfx in (".json", "_log.jsonl", "_pressure.jsonl")):
            return stem
        n += 1


class Calibration:
    """One calibration on one Station, from opened devices to the result file."""

    def __init__(self, setup: CalibrationSetup, *, console: OperatorConsole | None = None) -> None:
        self.s = setup
        self._console = console
        self._trace: deque[tuple[float, float]] = deque(maxlen=100_000)
        self._trace_lock = threading.Lock()
        self.events: queue.SimpleQueue[DeviceEvent] = queue.SimpleQueue()
        self.participant = (CalibrationParticipant(setup.sim, seed=setup.seed, confirm_key=setup.keys.confirm,
                                                   stop_key=setup.keys.stop) if setup.sim is not None else None)
        self.stem: Path | None = None
        self.fit: MonotoneFit | None = None
        self.records: list[StimulusPoint] = []
        self.result_path: Path | None = None
        self.outcome = Outcome()
        self.crash: BaseException | None = None
        self.levels: dict[str, LevelReport] = {}    # --protocol: the pressure of each calibrated level
        self.st: Station
        self.briefing: Briefing

    # ------------------------------------------------------------ the command

    def execute(self) -> int:
        """The calibration; exit 0 with a result file, else AbortError (3) or the crash."""
        s = self.s
        with Station(s.station_spec(), console=self._console) as st:
            self.st = st
            self._introduce()
            assert st.cuff is not None and st.cuff.info is not None
            self.briefing = calibration_briefing(
                participant=s.participant, session=s.session, method=s.method, target_rating=s.target_rating,
                ceiling_kpa=s.ceiling_kpa, cuff=st.cuff.info, dry_run=s.dry_run)
            st.confirm(self.briefing)
            st.add_sample_listener(self._sample)
            self._start_log()
            st.cuff.add_event_listener(self.events.put)
            self.outcome = self._guarded()
            st.finish(self._end_fields(), then=self._write_result_once_vented,
                      vent_reason="end of calibration" if self.outcome.code == EXIT_OK else self.outcome.reason)
        return self._conclude()

    def _introduce(self) -> None:
        s, console = self.s, self.st.console
        console.say(f"cuedpain {__version__}: calibration of sub-{s.participant} ({s.method}, target "
                    f"{s.target_rating:g}/100, ceiling {s.ceiling_kpa:g} kPa)"
                    + (" (DRY RUN: simulated cuff and participant)" if s.dry_run else ""))
        previous = latest_calibration(s.data_root, s.participant)
        if previous is not None:
            console.say(f"previous calibration: {previous.describe(datetime.now().astimezone())}; "
                        "a new file will be added, the old one is kept")

    def _guarded(self) -> Outcome:
        """The procedure and the fit; an orderly stop or a bug becomes an Outcome."""
        try:
            outcomes, done = RatedLoop(self).procedure()
            self.records = stimulus_records(outcomes, target_rating=self.s.target_rating)
            self.record({"kind": "done", "t": self.st.now(), "reason": done.reason, "message": done.message})
            self.fit = self._fit(self.records, done)
            if self.s.protocol is not None:
                self.levels = level_report(self.s.protocol, self.fit.as_dict(), self.fit.pressure_kpa)
        except STOPS as exc:
            return Outcome(EXIT_ABORTED, *self.st.stop_cause(exc))
        except Exception as exc:  # a bug: the Station vents and ends the log, then the CLI reports it
            self.crash = exc
            return Outcome(EXIT_ABORTED, "internal_error", repr(exc))
        return Outcome()

    def _end_fields(self) -> EndFields:
        o = self.outcome
        return {"status": "completed" if o.code == EXIT_OK else "aborted", "reason": o.reason, "message": o.message,
                "exit_code": o.code, "result": None}

    def _write_result_once_vented(self) -> EndUpdate:
        """After the cuff closed (vented, disarmed, release verified): the result file, if there is one."""
        if self.fit is None:
            return {}
        try:
            self.result_path = self._write_result(self.fit, self.records)
        except (AbortError, OSError) as exc:
            self.outcome = Outcome(EXIT_ABORTED, "result_not_written", str(exc))
            return {**self._end_fields()}
        return {"result": self.result_path.name}

    def _conclude(self) -> int:
        if self.crash is not None:
            raise self.crash
        o = self.outcome
        if o.code != EXIT_OK or self.fit is None:
            raise AbortError(f"calibration ended without a result: {o.message} (log: {self._log_path()})",
                             reason=o.reason)
        s = self.s
        self.st.console.say(f"calibrated pressure: {self.fit.pressure_kpa:.1f} kPa "
                            f"({kpa_to_mmhg(self.fit.pressure_kpa):.0f} mmHg) for {s.target_rating:g}/100 -> "
                            f"{self.result_path}")
        for name, lv in self.levels.items():
            value = "none" if lv["pressure_kpa"] is None else f"{lv['pressure_kpa']:.1f} kPa"
            self.st.console.say(f"level {name} ({lv['as_written']}): {value}"
                                + (f"; {lv['problem']}" if lv["problem"] else ""))
        return EXIT_OK

    # ------------------------------------------------------------ records

    def record(self, rec: CalibrationRecord) -> None:
        self.st.record(rec)

    def _sample(self, sample: PressureSample) -> None:
        with self._trace_lock:
            self._trace.append((sample.t, sample.pressure_kpa))
        if self.participant is not None:
            self.participant.feel(sample.t, sample.pressure_kpa)

    def trace_since(self, t: float) -> list[tuple[float, float]]:
        with self._trace_lock:
            return [s for s in self._trace if s[0] >= t]

    def _fit(self, records: list[StimulusPoint], done: Done) -> MonotoneFit:
        if not done.fit:
            self.record({"kind": "fit", "t": self.st.now(), "ok": False, "error": done.message})
            raise AbortError(done.message, reason=done.reason)
        pressures, ratings = fit_points(records)
        try:
            fit = fit_pressure_for_rating(pressures, ratings, target_rating=self.s.target_rating)
        except FitError as exc:
            self.record({"kind": "fit", "t": self.st.now(), "ok": False, "error": str(exc)})
            raise AbortError(f"no pressure for {self.s.target_rating:g}/100: {exc}", reason="no_result") from None
        self.record(fit_record(self.st.now(), fit.as_dict()))
        return fit

    def _log_path(self) -> Path | None:
        return None if self.st.rec.log is None else self.st.rec.log.path

    def _start_log(self) -> None:
        s = self.s
        claim_root(s.data_root, dry_run=s.dry_run)
        calibration_dir(s.data_root, s.participant).mkdir(parents=True, exist_ok=True)
        self.stem = claim_stem(s.data_root, s.participant)
        self.st.open_log(Path(f"{self.stem}_log.jsonl"), Path(f"{self.stem}_pressure.jsonl"), self._header())
        self.st.console.say(f"writing to {self._log_path()}")
        if s.fields:
            self._keep_fields()

    def _keep_fields(self) -> None:
        """The participant fields given with --field (checked in pre-flight) into participants.tsv;
        a failure now (the lab's file changed meanwhile) is a warning: the calibration goes on."""
        s = self.s
        try:
            set_participant(s.data_root, s.participant, s.fields)
        except (InputError, OSError) as exc:
            message = f"participants.tsv was not updated: {exc}"
            self.record({"kind": "warning", "t": self.st.now(), "code": "participant_fields_not_kept",
                         "message": message})
            self.st.console.warn(message)
            return
        self.record({"kind": "participant_fields", "t": self.st.now(), "fields": dict(s.fields)})

    def _software(self) -> dict[str, str | None]:
        return {"name": "cuedpain", "version": __version__, "revision": software_revision()}

    def _device(self) -> dict[str, object]:
        assert self.st.cuff is not None and self.st.cuff.info is not None
        return asdict(self.st.cuff.info)

    def _header(self) -> dict[str, object]:
        s, st = self.s, self.st
        assert st.display is not None
        return {"software": self._software(), "purpose": "calibration", "participant": s.participant,
                "session": s.session, "method": s.method, "target_rating": s.target_rating,
                "ceiling_kpa": s.ceiling_kpa, "settings": asdict(s.settings), "seed": s.seed,
                "dry_run": s.dry_run, "headless": s.headless, "clock": st.clock.name,
                "rig_path": str(s.rig_path) if s.rig_path else None, "cuff": self._device(),
                "display": st.display.info(), "keys": asdict(s.keys),
                "briefing": self.briefing.record(), "confirmation": st.confirmation,
                "safety": asdict(s.safety),
                "simulated_participant": None if s.sim is None else s.sim.as_dict(),
                "start_wall": datetime.now().astimezone().isoformat(timespec="seconds"),
                "platform": platform.platform(), "python": sys.version.split()[0], "packages": package_versions()}

    def _write_result(self, fit: MonotoneFit, records: list[StimulusPoint]) -> Path:
        s = self.s
        path = Path(f"{self.stem}.json")
        detections = [r["pressure_kpa"] for r in records if r["kind"] == "detection"]
        device = self._device()
        result = {
            "format": RESULT_FORMAT, "participant": s.participant, "session": s.session,
            "pressure_kpa": round(fit.pressure_kpa, 2), "target_rating": s.target_rating, "method": s.method,
            "ceiling_kpa": s.ceiling_kpa, "settings": asdict(s.settings), "fit": fit.as_dict(),
            "detection_kpa": round(sum(detections) / len(detections), 2) if detections else None,
            "stimuli": records, "dry_run": s.dry_run, "headless": s.headless,
            "simulated_device": device["simulated"], "device": device,
            "simulated_participant": None if s.sim is None else s.sim.as_dict(),
            "confirmation": self.st.confirmation,
            "levels": None if self.s.protocol is None else {"protocol": str(self.s.protocol.path),
                                                            "levels": self.levels},
            "software": self._software(), "log": self.stem.name + "_log.jsonl" if self.stem else None,
            "created": datetime.now().astimezone().isoformat(timespec="seconds"),
        }
        if not create_once(path, (json.dumps(result, indent=2) + "\n").encode("utf-8")):
            raise AbortError(f"{path} appeared meanwhile; it was not replaced", reason="result_exists")
        return path


class RatedLoop:
    """The frame loop that carries out rated stimuli on the opened devices: the calibration's
    procedure, and (subclassed) the pressure checks of a visit."""

    def __init__(self, cal: Calibration) -> None:
        st = cal.st
        assert st.cuff is not None and st.display is not None
        self.cal, self.s = cal, cal.s
        self.cuff: CuffSupervisor = st.cuff
        self.display: Display = st.display
        self.clock = st.clock
        self.read_keys: KeyReader = st.read_keys
        self.keys = cal.s.keys
        self.roles = st.spec.key_roles
        self.scale: RatingScale = cal.s.scale
        self.participant = cal.participant
        self.release_kpa = self.cuff.limits.release_threshold_kpa
        self.reach_tolerance_kpa = self.cuff.limits.reach_tolerance_kpa
        self._target_kpa: float | None = None      # of the stimulus under way
        self._reached_t: float | None = None       # when it was reached (device event or measured)

    # ------------------------------------------------------------ the procedure

    def procedure(self) -> tuple[Sequence[RampOutcome | PlateauOutcome], Done]:
        """The method's stimuli, each chosen from the outcomes so far, until it says it is done."""
        s, settings = self.s, self.s.settings
        if isinstance(settings, RampSettings):
            return self._steps(lambda done: next_ramp(settings, ceiling_kpa=s.ceiling_kpa, done=done), self._ramp)
        assert isinstance(settings, StaircaseSettings)
        return self._steps(lambda done: next_plateau(settings, ceiling_kpa=s.ceiling_kpa,
                                                     target_rating=s.target_rating, done=done), self._plateau)

    def _steps(self, choose: Callable[[list[O]], S | Done], give: Callable[[S], O]) -> tuple[list[O], Done]:
        rest_s = self.s.settings.rest_s
        done: list[O] = []
        while True:
            nxt = choose(done)
            if isinstance(nxt, Done):
                self.cal.st.console.say(f"procedure done: {nxt.message}")
                return done, nxt
            if done and rest_s > READY_S:
                self._pause(rest_s - READY_S, "Rest")
            self._pause(min(READY_S, rest_s) if done else READY_S, self._instructions())
            done.append(give(nxt))

    def _instructions(self) -> str:
        k = self.keys
        if isinstance(self.s.settings, RampSettings):
            return (f"The pressure will rise slowly. Press {k.confirm} when it first becomes painful, and again "
                    f"when the pain reaches {self.s.target_rating:g} of 100. Press {k.stop} to stop at any time.")
        return (f"A pressure will come for a few seconds. Afterwards, rate how painful it was. "
                f"Press {k.stop} to stop at any time.")

    # ------------------------------------------------------------ one frame

    def _check(self) -> None:
        """The Station's checks (stop signals, the log, interlocks), then the participant's button."""
        self.cal.st.check()
        if self.cuff.participant_stop_t is not None:
            raise AbortError("the participant pressed the cuff's stop button; the cuff vented",
                             reason="participant_stop_button")

    def _frame(self) -> tuple[float, list[tuple[str, float]]]:
        """Checks, device events and keys (routed by role), then one flip: (flip time, response keys)."""
        self._check()
        while True:
            try:
                ev = self.cal.events.get_nowait()
            except queue.Empty:
                break
            if ev.kind is EventKind.TARGET_REACHED and self._target_kpa is not None and self._reached_t is None:
                self._reached_t = ev.t
        now = self.clock.now()
        p = self.cuff.last_pressure_kpa
        if (self._target_kpa is not None and self._reached_t is None and p is not None
                and p >= self._target_kpa - self.reach_tolerance_kpa):
            self._reached_t = now   # a device without TARGET_REACHED events: the measured pressure says so
        keys = list(self.read_keys())
        if self.participant is not None:
            keys += self.participant.due_keys(now)
            if self.participant.button_due(now):
                self.cal.record({"kind": "sim", "t": now, "action": "the simulated participant presses the "
                                                                    "cuff's stop button"})
                assert self.cuff.info is not None and self.cuff.info.simulated, \
                    "the simulated participant needs the simulated cuff"
                self.cuff.cuff.sim_stop_button()
        responses = []
        for key, t in sorted(keys, key=lambda k: k[1]):
            role = self.roles.get(key, "response")
            self.cal.record({"kind": "key", "t": t, "key": key, "role": role})
            if role == "escape":
                raise AbortError("the operator pressed Escape", reason="escape")
            if role == "stop":
                self.cuff.vent("participant stop key")
                self.cal.record({"kind": "safety", "t": t, "reason": "participant_stop_key", "action": "vent",
                                 "message": "the participant pressed the stop key; the cuff vented"})
                raise AbortError("the participant pressed the stop key; the cuff vented",
                                 reason="participant_stop_key")
            responses.append((key, t))
        return self.display.flip(), responses

    def _pause(self, duration_s: float, message: str | None) -> None:
        self.display.show("fixation")
        self.display.show_message(message)
        end = self.clock.now() + duration_s
        while self.clock.now() < end:
            self._frame()

    def _begin(self, index: int, target_kpa: float, rate_kpa_s: float, *, hold_s: float | None = None) -> float:
        """Forget the last stimulus' events and trace, start this one; returns its SET time."""
        while True:
            try:
                self.cal.events.get_nowait()
            except queue.Empty:
                break
        self._reached_t = None
        self._target_kpa = target_kpa
        result = self.cuff.stimulate(target_kpa, rate_kpa_s, tag=index)
        rec: StimulusRecord = {"kind": "stimulus", "t": result.t_write, "index": index, "method": self.s.method,
                               "target_kpa": target_kpa, "rate_kpa_s": rate_kpa_s}
        if hold_s is not None:
            rec["hold_s"] = hold_s
        self.cal.record(rec)
        return result.t_write

    def _end_stimulus(self, index: int, why: str) -> float:
        """Vent, wait for the release; returns the vent's time."""
        t_vent = self.cuff.vent(f"stimulus {index} end: {why}", tag=index).t_write
        self._target_kpa = None
        deadline = self.clock.now() + self.cuff.limits.release_deadline_s + RELEASE_GRACE_S
        while not (self.cuff.last_pressure_kpa is not None and self.cuff.last_pressure_kpa < self.release_kpa):
            if self.clock.now() > deadline:
                raise AbortError(f"the cuff did not release after stimulus {index}", reason="safety")
            self._frame()
        if self.participant is not None:
            self.participant.end_stimulus()
        self.cal.record({"kind": "stimulus_end", "t": self.clock.now(), "index": index, "ended": why,
                         "t_vent": t_vent})
        return t_vent

    # ------------------------------------------------------------ the two kinds of stimulus

    def _ramp(self, stim: Ramp) -> RampOutcome:
        if self.participant is not None:
            self.participant.begin_ramp(self.s.target_rating)
        t_start = self._begin(stim.index, stim.ceiling_kpa, stim.rate_kpa_s)
        presses: list[float] = []
        ended = None
        while ended is None:
            _, responses = self._frame()
            presses += [t for key, t in responses if key == self.keys.confirm][:2 - len(presses)]
            if len(presses) == 2:
                ended = "target_press"
            elif self._reached_t is not None:
                ended = "ceiling"
        self._end_stimulus(stim.index, ended)
        trace = self.cal.trace_since(t_start)
        found = []
        for what, t in zip(("detection", "target"), presses):
            p = pressure_at(trace, t)
            p = None if p is None else round(p, 3)
            found.append(p)
            self.cal.record({"kind": "press", "t": t, "index": stim.index, "what": what, "pressure_kpa": p})
        det = found[0] if found else None
        tgt = found[1] if len(found) > 1 else None
        self.cal.st.console.say(f"ramp {stim.index}: " + ", ".join(
            [f"painful at {det:.1f} kPa" if det is not None else "no detection press",
             f"{self.s.target_rating:g}/100 at {tgt:.1f} kPa" if tgt is not None else
             f"reached the ceiling {stim.ceiling_kpa:g} kPa without the target press"]))
        return RampOutcome(index=stim.index, ended=ended, detection_kpa=det, target_kpa=tgt, t_start=t_start,
                           t_detection=presses[0] if presses else None,
                           t_target=presses[1] if len(presses) > 1 else None)

    def _plateau(self, stim: Plateau) -> PlateauOutcome:
        if self.participant is not None:
            self.participant.begin_plateau()
        self.display.show_message(None)
        t_start = self._begin(stim.index, stim.pressure_kpa, stim.rate_kpa_s, hold_s=stim.hold_s)
        while self._reached_t is None:
            self._frame()
        hold_end = self._reached_t + stim.hold_s
        while self.clock.now() < hold_end:
            self._frame()
        t_vent = self._end_stimulus(stim.index, "plateau done")
        measured = mean_pressure(self.cal.trace_since(t_start), self._reached_t, t_vent)
        pressure = stim.pressure_kpa if measured is None else round(measured, 3)
        rating, t_onset, t_response = self._ask_rating(stim, pressure)
        text = "no rating (timed out)" if rating is None else f"rated {rating:g}"
        self.cal.st.console.say(f"plateau {stim.index}: {stim.pressure_kpa:g} kPa (measured {pressure:.1f}), {text}")
        return PlateauOutcome(index=stim.index, target_kpa=stim.pressure_kpa, pressure_kpa=pressure, rating=rating,
                              t_start=t_start, t_onset=t_onset, t_response=t_response)

    def _ask_rating(self, stim: Plateau, pressure_kpa: float) -> tuple[float | None, float, float | None]:
        """The rating scale until confirmed or timed out: (rating or None, onset, response time)."""
        state = start_rating(self.scale, self.display.predict_next_flip())
        self.display.show_rating(state)
        t_onset, _ = self._frame()
        state = replace(state, t_onset=t_onset)
        self.display.show_rating(state)
        if self.participant is not None:
            self.participant.answer_rating(self.scale, t_onset)
        while not (state.confirmed or timed_out(state, self.clock.now())):
            _, responses = self._frame()
            for key, t in responses:
                state = press(state, key, t)
            self.display.show_rating(state)
        self.display.show_rating(None)
        rating = state.value if state.confirmed else None
        self.cal.record({"kind": "rating", "t": self.clock.now(), "t_onset": state.t_onset,
                         "t_response": state.t_response, "index": stim.index, "target_kpa": stim.pressure_kpa,
                         "pressure_kpa": pressure_kpa, "rating": rating, "response_time_s": state.response_time_s,
                         "timed_out": not state.confirmed, "moved": state.moved})
        return rating, state.t_onset, state.t_response
