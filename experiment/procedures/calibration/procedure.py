"""The `calibrate` command: find the pressure that gives the participant's target pain rating.

Order, as in `run` (experiment/procedures/run/session.py):
1. Input is checked before any device is touched (participant and session labels, a
   ceiling given with --ceiling and at most 100 kPa, the method's options): exit 2.
2. Devices open through experiment/station/devices.py, mode by mode (real; dry run: simulated
   cuff on a pseudo-terminal through the serial driver and a window; headless: the same
   on a virtual clock with a simulated display); the cuff's supervisor checks the
   ceiling against the device's hard limit and arms the device with it: exit 4.
3. The calibration log (append-only, like a run's) is created exclusively in
   data/sourcedata/sub-<id>/calibration/ next to where the result will go.
4. The procedure (experiment/procedures/calibration/steps.py). In dry runs a simulated
   participant (experiment/procedures/calibration/participant.py) answers with keys.
5. Whatever happens, the cuff is vented first; then, only when the fit gives a
   pressure, the result file is created (never replaced); then the log's `end` record.
Exit codes: 0 result written; 2 bad input; 3 aborted (operator, participant stop,
interlock, device fault) or no result (the fit refused the data); 4 hardware at start.
docs/calibration.md describes the procedures, the files and the records.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import queue
import sys
import threading
from collections import deque
from contextlib import ExitStack
from dataclasses import asdict, dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

from experiment import __version__
import experiment.station.devices as devices
from experiment.procedures.calibration.results import calibration_dir, latest_calibration, next_calibration_path
from experiment.procedures.calibration.fit import FitError, MonotoneFit, fit_pressure_for_rating
from experiment.procedures.calibration.participant import CalibrationParticipant, SimSpec, parse_sim_spec
from experiment.procedures.calibration.steps import (Done, Plateau, PlateauOutcome, Ramp, RampOutcome, RampSettings,
                                               Settings, StaircaseSettings, check_settings, fit_points,
                                               inflation_limits_s, mean_pressure, next_plateau, next_ramp,
                                               pressure_at, stimulus_records)
from experiment.station.briefing import Briefing, calibration_briefing, confirm
from experiment.clock import Clock, VirtualClock, psychopy_clock
from experiment.cuff.base import EventKind
from experiment.station.console import OperatorConsole
from experiment.outputs.dataset import check_root, claim_root, default_root
from experiment.errors import EXIT_ABORTED, EXIT_OK, AbortError, InputError
from experiment.station.recorder import STOPS, Recorder, install_stop_signals, stop_reason
from experiment.protocol.identifiers import check_label
from experiment.outputs.atomic import create_once
from experiment.protocol.model import HARD_MAX_KPA, KEYS_DEFAULT, Keys, Rating, Safety
from experiment.station.rating import RatingScale, press, start_rating, timed_out
from experiment.protocol.rig import load_rig
from experiment.station.runinfo import check_writable, package_versions, software_revision
from experiment.procedures.run.session import check_can_confirm, check_display
from experiment.units import kpa_to_mmhg

RESULT_FORMAT = "cuedpain-calibration/1"
READY_S = 2.0                 # instructions on screen before each stimulus
RATING_TIMEOUT_S = 8.0
RELEASE_GRACE_S = 1.0         # beyond the supervisor's own deadlines, before the loop gives up waiting
CUES = {"fixation": {"kind": "shape", "shape": "cross", "color": "white", "size": 0.05, "units": "height"}}
ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class DeviceNeeds:
    """What experiment/station/devices.py reads from a run's protocol, for the calibration station."""

    cues: dict[str, dict[str, Any]]
    safety: Safety
    keys: Keys
    rating: Rating


@dataclass(frozen=True)
class CalibrationSetup:
    """Everything known good before a device is touched (devices.py reads it like a run's `Prepared`)."""

    participant: str
    session: str | None
    method: str
    target_rating: float
    ceiling_kpa: float
    settings: Settings
    data_root: Path
    dry_run: bool
    headless: bool
    seed: int
    rig: Any
    rig_path: Path | None
    cuff_spec: str
    sim: SimSpec | None
    protocol: DeviceNeeds
    stimuli_dir: Path = ROOT / "stimuli"
    assume_yes: bool = False


def _method_settings(args: argparse.Namespace) -> Settings:
    """The method's settings from the options; an option of the other method is refused."""
    ramp_only, stair_only = {"repeats": args.repeats}, {"start": args.start, "step": args.step,
                                                        "plateau": args.plateau}
    wrong = [k for k, v in (stair_only if args.method == "ramp" else ramp_only).items() if v is not None]
    if wrong:
        raise InputError(f"--{wrong[0]} does not apply to --method {args.method}")
    given = {"rate_kpa_s": args.rate, "rest_s": args.rest}
    if args.method == "ramp":
        given["repeats"] = args.repeats
        return RampSettings(**{k: v for k, v in given.items() if v is not None})
    given.update(start_kpa=args.start, step_kpa=args.step, plateau_s=args.plateau)
    return StaircaseSettings(**{k: v for k, v in given.items() if v is not None})


def _keys(rig: Any) -> Keys:
    """The default keys with the rig's button-box overrides; every key its own role."""
    keys = Keys(**KEYS_DEFAULT)
    overrides = {f: getattr(rig.keys, f) for f in ("stop", "left", "right", "confirm")
                 if getattr(rig.keys, f, None) is not None}
    keys = replace(keys, **overrides)
    roles = {"stop": keys.stop, "escape": keys.escape, "left": keys.left, "right": keys.right,
             "confirm": keys.confirm}
    seen: dict[str, str] = {}
    for role, key in roles.items():
        if key in seen:
            raise InputError(f"key {key!r} is both the {seen[key]} and the {role} key (with {rig.label}); "
                             "every key needs its own role")
        seen[key] = role
    return keys


def preflight(args: argparse.Namespace) -> CalibrationSetup:
    """Check all input; touches no device. Raises InputError (exit 2)."""
    if args.headless and not args.dry_run:
        raise InputError("--headless runs on a virtual clock with simulated devices: it needs --dry-run")
    participant = check_label(args.participant, "participant")
    session = None if args.session is None else check_label(args.session, "session")
    ceiling = args.ceiling
    if ceiling is None:
        raise InputError("calibration needs --ceiling KPA: the highest pressure this participant may receive "
                         "(from your ethics approval); there is no default")
    if not (math.isfinite(ceiling) and 0 < ceiling <= HARD_MAX_KPA):
        raise InputError(f"--ceiling must be above 0 and at most {HARD_MAX_KPA:g} kPa, got {ceiling:g}")
    target = args.target_rating
    if not (math.isfinite(target) and 0 < target < 100):
        raise InputError(f"--target-rating must be between 0 and 100 (exclusive), got {target:g}")
    settings = _method_settings(args)
    check_settings(settings, ceiling_kpa=ceiling)
    if args.sim_participant is not None and not args.dry_run:
        raise InputError("--sim-participant describes the simulated participant of a dry run: it needs --dry-run")
    sim = parse_sim_spec(args.sim_participant) if args.dry_run else None
    rig_path = Path(args.rig) if args.rig else None
    rig = load_rig(rig_path)
    cuff_spec = args.cuff or rig.cuff
    if args.dry_run:
        if args.cuff and args.cuff != "sim":
            raise InputError(f"--dry-run uses the simulated cuff; remove --cuff {args.cuff} or drop --dry-run")
        cuff_spec = "sim"
    elif not cuff_spec:
        raise InputError("no cuff given: use --cuff line:PORT or cpar:PORT, a rig file, or --dry-run")
    elif cuff_spec == "sim":
        raise InputError("--cuff sim is only allowed with --dry-run; a real calibration never uses simulation")
    keys = _keys(rig)
    data_root = Path(args.data) if args.data else default_root(dry_run=args.dry_run)
    check_writable(data_root)
    check_root(data_root, dry_run=args.dry_run)
    next_calibration_path(data_root, participant)   # a broken earlier calibration file is an input error
    check_can_confirm(dry_run=args.dry_run, assume_yes=args.yes)
    if not args.headless:
        check_display()
    one_s, total_s = inflation_limits_s(settings, ceiling_kpa=ceiling)
    safety = Safety(max_pressure_kpa=ceiling, max_inflation_per_stimulus_s=one_s,
                    max_cumulative_inflation_per_run_s=total_s, min_deflated_between_s=settings.rest_s,
                    release_threshold_kpa=2.0, release_deadline_s=2.0, compliance_margin_kpa=2.0,
                    on_participant_stop="end")
    rating = Rating(question="How painful was the pressure?", low_anchor="no pain",
                    high_anchor="most intense pain imaginable", min=0, max=100, start=50, step=5,
                    timeout_s=RATING_TIMEOUT_S)
    return CalibrationSetup(participant=participant, session=session, method=args.method, target_rating=target,
                            ceiling_kpa=ceiling, settings=settings, data_root=data_root, dry_run=args.dry_run,
                            headless=args.headless, seed=0 if args.seed is None else args.seed, rig=rig,
                            rig_path=rig_path, cuff_spec=cuff_spec, sim=sim,
                            protocol=DeviceNeeds(cues=CUES, safety=safety, keys=keys, rating=rating),
                            assume_yes=args.yes)


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
    """One calibration, from opened devices to the result file."""

    def __init__(self, setup: CalibrationSetup, *, console: OperatorConsole | None = None) -> None:
        self.s = setup
        self.clock: Clock = VirtualClock(start=1000.0) if setup.headless else psychopy_clock()
        self.rec = Recorder()
        self.record = self.rec.record
        self.console = console or OperatorConsole(dry_run=setup.dry_run, on_lost=self._console_lost)
        self.confirmation: dict[str, Any] | None = None
        self.briefing: Briefing | None = None
        self._trace: deque[tuple[float, float]] = deque(maxlen=100_000)
        self._trace_lock = threading.Lock()
        self._device_info: dict[str, Any] = {}
        self._events: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._abort: AbortError | None = None
        self._signalled: tuple[str, float] | None = None   # recorded by the loop, not the handler
        keys = setup.protocol.keys
        self.participant = (CalibrationParticipant(setup.sim, seed=setup.seed, confirm_key=keys.confirm,
                                                   stop_key=keys.stop) if setup.sim is not None else None)
        self.stem: Path | None = None

    # ------------------------------------------------------------ records

    def _sample(self, sample: Any) -> None:
        with self._trace_lock:
            self._trace.append((sample.t, sample.pressure_kpa))
        self.rec.sample(sample)
        if self.participant is not None:
            self.participant.feel(sample.t, sample.pressure_kpa)

    def _trace_since(self, t: float) -> list[tuple[float, float]]:
        with self._trace_lock:
            return [s for s in self._trace if s[0] >= t]

    # ------------------------------------------------------------ the command

    def execute(self) -> int:
        s = self.s
        code, reason, message = EXIT_OK, "completed", ""
        result_path: Path | None = None
        fit: MonotoneFit | None = None
        records: list[dict[str, Any]] = []
        crash: BaseException | None = None
        self.console.say(f"cuedpain {__version__}: calibration of sub-{s.participant} ({s.method}, target "
                         f"{s.target_rating:g}/100, ceiling {s.ceiling_kpa:g} kPa)"
                         + (" (DRY RUN: simulated cuff and participant)" if s.dry_run else ""))
        previous = latest_calibration(s.data_root, s.participant)
        if previous is not None:
            self.console.say(f"previous calibration: {previous.describe(datetime.now().astimezone())}; "
                             "a new file will be added, the old one is kept")
        try:
            with ExitStack() as stack:
                cuff = devices.open_cuff(s, clock=self.clock, stack=stack, on_record=self.record,
                                         on_sample=self._sample)
                display = devices.open_display(s, clock=self.clock, stack=stack)
                read_keys = devices.key_reader(s, source=None, display=display)
                self.briefing = calibration_briefing(
                    participant=s.participant, session=s.session, method=s.method, target_rating=s.target_rating,
                    ceiling_kpa=s.ceiling_kpa, cuff=cuff.info, dry_run=s.dry_run)
                self.confirmation = confirm(self.briefing, say=self.console.say, assume_yes=s.assume_yes)
                self._start_log(cuff, display)
                cuff.add_event_listener(self._events.put)
                try:
                    install_stop_signals(stack, vent=cuff.emergency_vent, on_stop=self._on_stop_signal)
                    loop = _Loop(self, cuff, display, read_keys)
                    outcomes, done = loop.procedure()
                    records = stimulus_records(outcomes, target_rating=s.target_rating)
                    self.record({"kind": "done", "t": self.clock.now(), "reason": done.reason,
                                 "message": done.message})
                    fit = self._fit(records, done)
                except STOPS as exc:
                    code = EXIT_ABORTED
                    reason, message = stop_reason(exc)
                except Exception as exc:  # a bug: vent, end the log, then let the CLI report it
                    code, reason, message, crash = EXIT_ABORTED, "internal_error", repr(exc), exc
                finally:
                    devices.make_safe(cuff, "end of calibration" if code == EXIT_OK else reason)
            # the supervisor has closed here: vented, disarmed, release verified (all logged)
            if fit is not None:
                try:
                    result_path = self._write_result(fit, records)
                except (AbortError, OSError) as exc:
                    code, reason, message = EXIT_ABORTED, "result_not_written", str(exc)
            self._end(code, reason, message, result_path)
        finally:
            self.rec.close()
        if crash is not None:
            raise crash
        if code != EXIT_OK:
            raise AbortError(f"calibration ended without a result: {message} (log: {self._log_path()})",
                             reason=reason)
        self.console.say(f"calibrated pressure: {fit.pressure_kpa:.1f} kPa ({kpa_to_mmhg(fit.pressure_kpa):.0f} mmHg) "
                         f"for {s.target_rating:g}/100 -> {result_path}")
        return EXIT_OK

    def _fit(self, records: list[dict[str, Any]], done: Done) -> MonotoneFit:
        if not done.fit:
            self.record({"kind": "fit", "t": self.clock.now(), "ok": False, "error": done.message})
            raise AbortError(done.message, reason=done.reason)
        pressures, ratings = fit_points(records)
        try:
            fit = fit_pressure_for_rating(pressures, ratings, target_rating=self.s.target_rating)
        except FitError as exc:
            self.record({"kind": "fit", "t": self.clock.now(), "ok": False, "error": str(exc)})
            raise AbortError(f"no pressure for {self.s.target_rating:g}/100: {exc}", reason="no_result") from None
        self.record({"kind": "fit", "t": self.clock.now(), "ok": True, **fit.as_dict()})
        return fit

    def _log_path(self) -> Path | None:
        return None if self.rec.log is None else self.rec.log.path

    def _start_log(self, cuff: Any, display: Any) -> None:
        s = self.s
        claim_root(s.data_root, dry_run=s.dry_run)
        calibration_dir(s.data_root, s.participant).mkdir(parents=True, exist_ok=True)
        self.stem = claim_stem(s.data_root, s.participant)
        self._device_info = self._device(cuff)
        header = self._header(display)
        self.rec.open(Path(f"{self.stem}_log.jsonl"), Path(f"{self.stem}_pressure.jsonl"), header)
        self.console.say(f"writing to {self.rec.log.path}")

    def _software(self) -> dict[str, Any]:
        return {"name": "cuedpain", "version": __version__, "revision": software_revision()}

    def _device(self, cuff: Any) -> dict[str, Any]:
        return asdict(cuff.info)

    def _console_lost(self, exc: BaseException) -> None:
        """The operator's terminal or pipe went away: log it once; the calibration goes on."""
        self.record({"kind": "warning", "t": self.clock.now(), "code": "console_lost",
                     "message": f"the operator console could not be written ({exc}); everything is in this log"})

    def _header(self, display: Any) -> dict[str, Any]:
        s = self.s
        return {"software": self._software(), "purpose": "calibration", "participant": s.participant,
                "session": s.session, "method": s.method, "target_rating": s.target_rating,
                "ceiling_kpa": s.ceiling_kpa, "settings": asdict(s.settings), "seed": s.seed,
                "dry_run": s.dry_run, "headless": s.headless, "clock": self.clock.name,
                "rig_path": str(s.rig_path) if s.rig_path else None, "cuff": self._device_info,
                "display": display.info(), "keys": asdict(s.protocol.keys),
                "briefing": None if self.briefing is None else self.briefing.record(),
                "confirmation": self.confirmation,
                "safety": asdict(s.protocol.safety),
                "simulated_participant": None if s.sim is None else s.sim.as_dict(),
                "start_wall": datetime.now().astimezone().isoformat(timespec="seconds"),
                "platform": platform.platform(), "python": sys.version.split()[0], "packages": package_versions()}

    def _write_result(self, fit: MonotoneFit, records: list[dict[str, Any]]) -> Path:
        s = self.s
        path = Path(f"{self.stem}.json")
        detections = [r["pressure_kpa"] for r in records if r["kind"] == "detection"]
        result = {
            "format": RESULT_FORMAT, "participant": s.participant, "session": s.session,
            "pressure_kpa": round(fit.pressure_kpa, 2), "target_rating": s.target_rating, "method": s.method,
            "ceiling_kpa": s.ceiling_kpa, "settings": asdict(s.settings), "fit": fit.as_dict(),
            "detection_kpa": round(sum(detections) / len(detections), 2) if detections else None,
            "stimuli": records, "dry_run": s.dry_run, "headless": s.headless,
            "simulated_device": self._device_info["simulated"], "device": self._device_info,
            "simulated_participant": None if s.sim is None else s.sim.as_dict(),
            "confirmation": self.confirmation,
            "software": self._software(), "log": self.rec.log.path.name if self.rec.log else None,
            "created": datetime.now().astimezone().isoformat(timespec="seconds"),
        }
        if not create_once(path, (json.dumps(result, indent=2) + "\n").encode("utf-8")):
            raise AbortError(f"{path} appeared meanwhile; it was not replaced", reason="result_exists")
        return path

    def _end(self, code: int, reason: str, message: str, result_path: Path | None) -> None:
        if not self.rec.writable:
            return
        self.record({"kind": "end", "t": self.clock.now(), "status": "completed" if code == EXIT_OK else "aborted",
                        "reason": reason, "message": message, "exit_code": code,
                        "result": None if result_path is None else result_path.name,
                        "end_wall": datetime.now().astimezone().isoformat(timespec="seconds")})

    def _on_stop_signal(self, name: str, message: str) -> None:
        """From a signal handler: only set the flag; the loop writes the `operator` record."""
        if self._abort is None:
            self._signalled = (name, self.clock.now())
            self._abort = AbortError(message, reason=name)


class _Loop:
    """The frame loop that carries out the procedure's stimuli on the opened devices."""

    def __init__(self, cal: Calibration, cuff: Any, display: Any,
                 read_keys: Callable[[], list[tuple[str, float]]]) -> None:
        self.cal, self.s, self.cuff, self.display = cal, cal.s, cuff, display
        self.clock = cal.clock
        self.read_keys = read_keys
        self.keys = cal.s.protocol.keys
        self.roles = devices.key_roles(cal.s)
        self.scale: RatingScale = devices.rating_scale(cal.s)
        self.participant = cal.participant
        self.release_kpa = cuff.limits.release_threshold_kpa
        self.reach_tolerance_kpa = cuff.limits.reach_tolerance_kpa
        self._target_kpa: float | None = None      # of the stimulus under way
        self._reached_t: float | None = None       # when it was reached (device event or measured)

    # ------------------------------------------------------------ the procedure

    def procedure(self) -> tuple[list[Any], Done]:
        s = self.s
        done: list[Any] = []
        while True:
            if isinstance(s.settings, RampSettings):
                nxt = next_ramp(s.settings, ceiling_kpa=s.ceiling_kpa, done=done)
            else:
                nxt = next_plateau(s.settings, ceiling_kpa=s.ceiling_kpa, target_rating=s.target_rating, done=done)
            if isinstance(nxt, Done):
                self.cal.console.say(f"procedure done: {nxt.message}")
                return done, nxt
            if done and s.settings.rest_s > READY_S:
                self._pause(s.settings.rest_s - READY_S, "Rest")
            self._pause(min(READY_S, s.settings.rest_s) if done else READY_S, self._instructions())
            outcome = self._ramp(nxt) if isinstance(nxt, Ramp) else self._plateau(nxt)
            done.append(outcome)

    def _instructions(self) -> str:
        k = self.keys
        if isinstance(self.s.settings, RampSettings):
            return (f"The pressure will rise slowly. Press {k.confirm} when it first becomes painful, and again "
                    f"when the pain reaches {self.s.target_rating:g} of 100. Press {k.stop} to stop at any time.")
        return (f"A pressure will come for a few seconds. Afterwards, rate how painful it was. "
                f"Press {k.stop} to stop at any time.")

    # ------------------------------------------------------------ one frame

    def _check(self) -> None:
        cal, cuff = self.cal, self.cuff
        if cal._abort is not None:
            if cal._signalled is not None:
                name, t = cal._signalled
                cal._signalled = None
                cal.record({"kind": "operator", "t": t, "action": name})
            raise cal._abort
        cal.rec.check()
        if cuff.participant_stop_t is not None:
            raise AbortError("the participant pressed the cuff's stop button; the cuff vented",
                             reason="participant_stop_button")
        if cuff.safety_tripped is not None:
            raise AbortError(f"safety interlock ({cuff.safety_tripped}): {cuff.trip_message}", reason="safety")

    def _frame(self) -> tuple[float, list[tuple[str, float]]]:
        """Checks, device events and keys (routed by role), then one flip: (flip time, response keys)."""
        self._check()
        while True:
            try:
                ev = self.cal._events.get_nowait()
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
                assert self.cuff.info.simulated, "the simulated participant needs the simulated cuff"
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

    def _begin(self, index: int, target_kpa: float, rate_kpa_s: float, **extra: Any) -> float:
        """Forget the last stimulus' events and trace, start this one; returns its SET time."""
        while True:
            try:
                self.cal._events.get_nowait()
            except queue.Empty:
                break
        self._reached_t = None
        self._target_kpa = target_kpa
        result = self.cuff.stimulate(target_kpa, rate_kpa_s, tag=index)
        self.cal.record({"kind": "stimulus", "t": result.t_write, "index": index, "method": self.s.method,
                         "target_kpa": target_kpa, "rate_kpa_s": rate_kpa_s, **extra})
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
        trace = self.cal._trace_since(t_start)
        found = []
        for what, t in zip(("detection", "target"), presses):
            p = pressure_at(trace, t)
            p = None if p is None else round(p, 3)
            found.append(p)
            self.cal.record({"kind": "press", "t": t, "index": stim.index, "what": what, "pressure_kpa": p})
        det = found[0] if found else None
        tgt = found[1] if len(found) > 1 else None
        self.cal.console.say(f"ramp {stim.index}: " + ", ".join(
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
        measured = mean_pressure(self.cal._trace_since(t_start), self._reached_t, t_vent)
        pressure = stim.pressure_kpa if measured is None else round(measured, 3)
        rating, t_onset, t_response = self._ask_rating(stim, pressure)
        text = "no rating (timed out)" if rating is None else f"rated {rating:g}"
        self.cal.console.say(f"plateau {stim.index}: {stim.pressure_kpa:g} kPa (measured {pressure:.1f}), {text}")
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


def command(args: argparse.Namespace) -> int:
    """`cuedpain calibrate`: exit 0 result written, 2 bad input, 3 aborted or no result, 4 hardware."""
    return Calibration(preflight(args)).execute()
