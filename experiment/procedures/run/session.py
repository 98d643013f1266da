"""The `run` command: pre-flight, devices, the run, every exit path, outputs.

Order matters for safety and for the data:
1. Input (identifiers, protocol, rig, schedule, stimuli files, calibration) is checked
   before any device is touched: errors exit 2 with the cuff never opened.
2. Devices are opened and checked (cuff answers, its limits cover the protocol; the
   trigger line opens): errors exit 4. Nothing has been shown to the participant.
3. The run directory is created exclusively and the log starts; everything from
   here on is on disk as it happens.
4. The run: wait for t0 with Escape live, then the trial loop.
5. Whatever happens (completion, Escape, Ctrl-C, SIGTERM, participant stop, device
   fault, log failure, a bug), the cuff is vented first, then the log gets its `end`
   record, then the outputs are derived from the log.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import traceback
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from experiment import __version__
from experiment.clock import Clock, VirtualClock, psychopy_clock
from experiment.station.console import OperatorConsole, Status
from experiment.station.briefing import Briefing, confirm, run_briefing
from experiment.outputs.dataset import check_root, claim_root, default_root
from experiment.errors import EXIT_ABORTED, EXIT_OK, AbortError, HardwareError, InputError
from experiment.station.recorder import STOPS, Recorder, install_stop_signals, stop_reason
from experiment.outputs.rundir import RunId, create_source_dir, move_to_attempts, resolve_run
from experiment.station.runinfo import check_writable, package_versions, software_revision
from experiment.procedures.run.trialloop import LoopHooks, TrialLoop
from experiment.protocol.specs import SIM_CUFF, CuffSpec, ScannerSpec, SimSpec, parse_cuff_spec, parse_scanner_spec



@dataclass
class Prepared:
    """Everything known good before a device is touched."""

    protocol: Any
    protocol_path: Path
    rig: Any
    rig_path: Path | None
    timeline: Any
    run_id: RunId
    data_root: Path
    dry_run: bool
    headless: bool
    seed: int
    cuff_spec: CuffSpec
    scanner_spec: ScannerSpec
    pressure: dict[str, Any]
    stimuli_dir: Path
    assume_yes: bool = False      # --yes: the operator confirmed in advance (recorded)
    run_arg: str = "1"            # --run as given ('next' takes the next free number at creation)


def preflight(args: argparse.Namespace) -> Prepared:
    """Check all input; touches no device. Raises InputError (exit 2)."""
    import experiment.procedures.calibration.results as calibration
    import experiment.protocol.model as protocol_mod
    import experiment.protocol.rig as rig_mod
    import experiment.protocol.schedule as schedule

    if args.headless and not args.dry_run:
        raise InputError("--headless runs on a virtual clock with simulated devices: it needs --dry-run")
    protocol_path = Path(args.protocol)
    protocol = protocol_mod.load_protocol(protocol_path)
    rig_path = Path(args.rig) if args.rig else None
    rig = rig_mod.load_rig(rig_path)
    rig_mod.check_rig_for_protocol(protocol, rig)
    data_root = Path(args.data) if args.data else default_root(dry_run=args.dry_run)
    check_writable(data_root)
    check_root(data_root, dry_run=args.dry_run)
    run_id = resolve_run(data_root, participant=args.participant, session=args.session,
                         task=protocol.task, run=str(args.run))
    cli_cuff = None if args.cuff is None else parse_cuff_spec(args.cuff, what="--cuff")
    cli_scanner = None if args.scanner is None else parse_scanner_spec(args.scanner, what="--scanner")
    cuff_spec = cli_cuff or rig.cuff
    scanner_spec = cli_scanner or rig.scanner
    if args.dry_run:
        if cli_cuff is not None and not cli_cuff.simulated:
            raise InputError(f"--dry-run uses the simulated cuff; remove --cuff {cli_cuff} or drop --dry-run")
        cuff_spec, scanner_spec = SIM_CUFF, (cli_scanner or SimSpec())
    else:
        if cuff_spec is None:
            raise InputError("no cuff given: use --cuff line:PORT or cpar:PORT, a rig file, or --dry-run")
        if scanner_spec is None:
            raise InputError("no trigger source given: use --scanner keyboard|serial:PORT, a rig file, or --dry-run")
        for what, spec in (("--cuff", cuff_spec), ("--scanner", scanner_spec)):
            if spec.simulated:
                raise InputError(f"{what} {spec} is only allowed with --dry-run; a real run never uses simulation")
    pressure = calibration.resolve_pressure(
        protocol, data_root=data_root, participant=run_id.participant, session=run_id.session,
        dry_run=args.dry_run, calibration_file=Path(args.calibration) if args.calibration else None,
        max_age_h=rig.calibration_max_age_h, override_kpa=args.pressure_override,
        override_reason=args.override_reason)
    seed = args.seed if args.seed is not None else protocol.seed
    timeline = schedule.build_schedule(protocol, seed=seed, participant=run_id.participant,
                                       pressure_kpa=None if pressure["source"] == "protocol"
                                       else pressure["pressure_kpa"], timing=rig.cuff_timing)
    _check_stimulus_files(protocol)
    check_can_confirm(dry_run=args.dry_run, assume_yes=args.yes)
    if not args.headless:
        check_display()
    return Prepared(protocol=protocol, protocol_path=protocol_path, rig=rig, rig_path=rig_path,
                    timeline=timeline, run_id=run_id, data_root=data_root, dry_run=args.dry_run,
                    headless=args.headless, seed=seed, cuff_spec=cuff_spec, scanner_spec=scanner_spec,
                    pressure=pressure, stimuli_dir=protocol.stimuli_dir, assume_yes=args.yes,
                    run_arg=str(args.run))


def check_can_confirm(*, dry_run: bool, assume_yes: bool) -> None:
    """A real session asks the operator to confirm on the terminal; without one, --yes is needed."""
    if dry_run or assume_yes:
        return
    try:
        interactive = sys.stdin is not None and sys.stdin.isatty()
    except (OSError, ValueError):
        interactive = False
    if not interactive:
        raise InputError("a real session shows what it will do and asks the operator to confirm, but there is no "
                         "terminal to ask on (stdin is not a terminal); run it from a terminal, or confirm in "
                         "advance with --yes (recorded in the log)")


def check_display() -> None:
    """A window needs a display: say so, and how to proceed, before anything is touched (exit 4)."""
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        raise HardwareError("no display: this command opens the participant's window, but no display is set "
                            "(DISPLAY is empty). Run it on the stimulus computer's desktop session, or rehearse "
                            "without a window: --dry-run --headless")


def _check_stimulus_files(protocol: Any) -> None:
    """Every image cue decodes (load_protocol already checked that the files exist);
    a corrupt file is refused before any device or window is opened."""
    from PIL import Image

    for name, cue in protocol.cues.items():
        if cue.kind != "image":
            continue
        path = cue.image_path
        try:
            with Image.open(path) as im:
                im.load()
        except Exception as exc:
            raise InputError(f"cue {name!r}: image file {path} cannot be read ({exc})") from None


@dataclass
class RunState:
    """Mutable facts of a run that the exit path needs."""

    t0: float | None = None
    abort: AbortError | None = None   # set by a signal handler; raised by the run's loop
    abort_t: float | None = None
    last_i: int | None = None         # plan index of the last phase that reached the screen
    status: Status = field(default_factory=Status)
    last_pressure_kpa: float | None = None


class Session:
    """One run, from opened devices to derived outputs."""

    def __init__(self, prep: Prepared, *, console: OperatorConsole | None = None) -> None:
        self.prep = prep
        self.state = RunState()
        self.clock: Clock = VirtualClock(start=1000.0) if prep.headless else psychopy_clock()
        self.rec = Recorder()
        self.console = console or OperatorConsole(dry_run=prep.dry_run, on_lost=self._console_lost)
        self.briefing: Briefing | None = None
        self.confirmation: dict[str, Any] | None = None

    def _console_lost(self, exc: BaseException) -> None:
        """The operator's terminal or pipe went away: log it once; the run goes on (everything is logged)."""
        self.record({"kind": "warning", "t": self.clock.now(), "code": "console_lost",
                     "message": f"the operator console could not be written ({exc}); the run continues and "
                                "everything is in this log"})

    def record(self, rec: dict[str, Any]) -> None:
        """Log a record (any thread); interlock records are also shown to the operator."""
        self.rec.record(rec)
        kind = rec.get("kind")
        if kind == "onset":
            self.state.last_i = rec["i"]
        elif kind == "safety":
            self.console.warn(f"SAFETY {rec.get('reason')}: {rec.get('message') or rec.get('action')}")

    def _sample(self, sample: Any) -> None:
        self.state.last_pressure_kpa = sample.pressure_kpa
        self.rec.sample(sample)

    # -- the run --
    def execute(self) -> int:
        import experiment.station.devices as devices

        prep = self.prep
        p = prep.protocol
        outcome_code = EXIT_OK
        reason = "completed"
        message = ""
        with ExitStack() as stack:
            self.console.say(f"cuedpain {__version__}: {p.name} - {prep.run_id.stem}"
                             + (" (DRY RUN: simulated cuff and scanner)" if prep.dry_run else ""))
            # 2. devices (exit 4 on failure; no run directory is created)
            cuff = devices.open_cuff(prep, clock=self.clock, stack=stack, on_record=self.record,
                                     on_sample=self._sample)
            display = devices.open_display(prep, clock=self.clock, stack=stack)
            source = devices.open_trigger_source(prep, clock=self.clock, stack=stack, display=display)
            # the operator sees what will be done, with which device, and confirms (exit 3 if not)
            self.briefing = run_briefing(
                participant=prep.run_id.participant, session=prep.run_id.session, run=prep.run_id.run,
                protocol_path=str(prep.protocol_path), protocol_sha256=p.sha256, pressure=prep.pressure,
                ceiling_kpa=p.safety.max_pressure_kpa, cuff=cuff.info, trigger_spec=str(prep.scanner_spec),
                trigger_simulated=source.simulated, dry_run=prep.dry_run)
            self.confirmation = confirm(self.briefing, say=self.console.say, assume_yes=prep.assume_yes)
            # 3. the run directory and the log (all later failures still end in the vent below)
            source_dir = self._start_log(stack, cuff, source, display)
            try:
                for ev in prep.timeline.events:
                    self.record({"kind": "plan", **devices.plan_record(ev)})
                self.record({"kind": "display", **display.info()})
                if getattr(display, "refresh_mismatch", False):
                    msg = (f"the display refreshes at {display.measured_refresh_hz:.1f} Hz, not the rig's "
                           f"{display.refresh_hz:g} Hz; frames are timed at the measured rate")
                    self.record({"kind": "warning", "t": self.clock.now(), "code": "refresh_mismatch", "message": msg})
                    self.console.warn(msg)
                if not display.simulated and not display.vsync:
                    self.console.say("this display has no vertical sync: flips are paced in software "
                                     f"at {display.refresh_hz:g} Hz (logged as vsync: false)")
                self.console.say(f"writing to {source_dir}")
                install_stop_signals(stack, vent=cuff.emergency_vent, on_stop=self._on_stop_signal)
                loop_result = self._run(cuff, display, source)
                if loop_result.stimulation_stopped:
                    message = f"completed without stimulation after {loop_result.stimulation_stopped}"
            except STOPS as exc:
                outcome_code = EXIT_ABORTED
                reason, message = stop_reason(exc)
            except Exception as exc:  # a bug: vent, keep the data, say where the traceback is
                outcome_code, reason = EXIT_ABORTED, "internal_error"
                crash = source_dir / "crash.txt"
                crash.write_text(traceback.format_exc())
                message = f"internal error: {exc!r} (traceback in {crash})"
            finally:
                vent_reason = "end of run" if outcome_code == EXIT_OK else reason
                devices.make_safe(cuff, vent_reason)
                self.console.finish()
            if self.rec.writable:
                self.record({"kind": "end", "t": self.clock.now(),
                             "status": "completed" if outcome_code == EXIT_OK else "aborted",
                             "reason": reason, "message": message, "exit_code": outcome_code,
                             "last_i": self.state.last_i,
                             "end_wall": datetime.now().astimezone().isoformat(timespec="seconds")})
        # devices and logs are closed here (ExitStack): derive the outputs from the log
        self._finish(outcome_code, reason, message)
        return outcome_code

    def _start_log(self, stack: ExitStack, cuff: Any, source: Any, display: Any) -> Path:
        """Create the run directory (exclusively), copy the inputs, open both logs."""
        prep = self.prep
        claim_root(prep.data_root, dry_run=prep.dry_run)
        run_id, source_dir = create_source_dir(prep.data_root, prep.run_id, take_next=prep.run_arg == "next")
        if run_id != prep.run_id:
            self.console.say(f"run {prep.run_id.run} was taken meanwhile by another session; this is run {run_id.run}")
            self.prep = prep = replace(prep, run_id=run_id)
        self.source_dir = source_dir
        shutil.copyfile(prep.protocol_path, source_dir / "protocol.yaml")
        if prep.rig_path is not None:
            shutil.copyfile(prep.rig_path, source_dir / "rig.yaml")
        self.rec.open(source_dir / "log.jsonl", source_dir / "pressure.jsonl", self._header(cuff, source, display))
        stack.callback(self.rec.close)
        return source_dir

    def _header(self, cuff: Any, source: Any, display: Any) -> dict[str, Any]:
        prep, p = self.prep, self.prep.protocol
        info = cuff.info
        return {
            "software": {"name": "cuedpain", "version": __version__, "revision": software_revision()},
            "participant": prep.run_id.participant, "session": prep.run_id.session, "run": prep.run_id.run,
            "task": p.task, "protocol_name": p.name, "seed": prep.seed, "dry_run": prep.dry_run, "headless": prep.headless,
            "clock": self.clock.name, "protocol_path": str(prep.protocol_path),
            "protocol_sha256": p.sha256,
            "rig_path": str(prep.rig_path) if prep.rig_path else None,
            "cuff": asdict(info),
            "briefing": self.briefing.record() if self.briefing else None, "confirmation": self.confirmation,
            "scanner": {"kind": source.name, "spec": str(prep.scanner_spec), "simulated": source.simulated},
            "tr_s": p.scan.tr_s, "n_volumes": p.scan.n_volumes, "discard_pulses": self._discard_pulses(),
            "scanner_discarded": p.scan.scanner_discarded,
            "pressure": self.prep.pressure, "cuff_timing": asdict(prep.rig.cuff_timing),
            "start_wall": datetime.now().astimezone().isoformat(timespec="seconds"),
            "platform": platform.platform(), "python": sys.version.split()[0], "packages": package_versions(),
            "run_length_s": prep.timeline.run_length_s,
        }

    def _discard_pulses(self) -> int:
        rig_discard = getattr(self.prep.rig, "discard_pulses", None)
        return rig_discard if rig_discard is not None else self.prep.protocol.scan.discard_pulses

    def _raise_pending_abort(self) -> None:
        """Log the operator's signal (outside the handler) and end the run with it."""
        abort = self.state.abort
        if abort is not None:
            self.record({"kind": "operator", "t": self.state.abort_t, "action": abort.reason})
            raise abort

    def _on_stop_signal(self, name: str, message: str) -> None:
        """From a signal handler: only set the flag (see install_stop_signals)."""
        if self.state.abort is None:
            self.state.abort_t = self.clock.now()
            self.state.abort = AbortError(message, reason=name)

    def _run(self, cuff: Any, display: Any, source: Any) -> Any:
        import experiment.station.devices as devices
        from experiment.scanner.pulsecheck import PulseMonitor
        from experiment.scanner.startgate import StartGate, wait_for_t0

        prep, p = self.prep, self.prep.protocol
        gate = StartGate(self._discard_pulses(), scanner_discarded=p.scan.scanner_discarded)
        monitor = PulseMonitor(p.scan.tr_s, n_expected=p.scan.n_volumes, stop_after_trs=p.scan.scanner_stop_trs)
        self.monitor = monitor
        keys = devices.key_reader(prep, source=source, display=display)
        roles = devices.key_roles(prep)
        status = self.state.status
        status.n_trials = max((ev.trial for ev in prep.timeline.events), default=0)
        status.pulses_expected = p.scan.n_volumes
        escape_seen = False
        warned_codes: set[str] = set()

        def on_pulse(pulse: Any, volume: int | None) -> None:
            if volume is None:
                status.pulses_discarded += 1
            else:
                status.pulses += 1
            self.record({"kind": "pulse", "t": pulse.t, "index": pulse.index, "source": pulse.source, "volume": volume})
            if volume is not None:
                for w in monitor.feed(pulse.t):
                    self.record({"kind": "warning", "t": w.t, "code": w.code, "message": w.message})
                    self.console.warn(w.message)

        def poll_pulses() -> None:
            for pulse in source.poll():
                on_pulse(pulse, gate.feed(pulse))

        def should_abort() -> bool:
            nonlocal escape_seen
            for key, t in keys():
                if roles.get(key) == "escape":
                    self.record({"kind": "key", "t": t, "key": key, "role": "escape"})
                    escape_seen = True
            return escape_seen or self.state.abort is not None

        display.show(p.fixation_cue.name)
        self.record({"kind": "waiting", "t": self.clock.now(), "what": gate.status()})
        self.console.say(f"waiting for the scanner: {gate.status()} (Escape aborts; timeout "
                         f"{p.scan.first_trigger_timeout_s:g} s)")
        try:
            t0 = wait_for_t0(source, gate, clock=self.clock, timeout_s=p.scan.first_trigger_timeout_s,
                             should_abort=should_abort, on_status=lambda s: None, on_pulse=on_pulse,
                             pump=lambda: display.flip())
        except AbortError:
            if escape_seen:
                raise AbortError("the operator pressed Escape while waiting for the scanner", reason="escape") from None
            self._raise_pending_abort()
            raise
        self.state.t0 = t0
        self.record({"kind": "t0", "t": t0, "pulse_index": gate.t0_pulse_index})
        self.console.say(f"t0 fixed (pulse {gate.t0_pulse_index}); run of {prep.timeline.run_length_s:.1f} s begins")

        def check_safety(now: float) -> None:
            self._raise_pending_abort()
            self.rec.check()   # a lost pressure trace is lost data too
            tripped = cuff.safety_tripped
            if tripped is not None:
                raise AbortError(f"safety interlock ({tripped}): {cuff.trip_message}", reason="safety")
            w = monitor.check_silence(now)
            if w is not None and w.code not in warned_codes:
                warned_codes.add(w.code)
                self.record({"kind": "warning", "t": w.t, "code": w.code, "message": w.message})
                self.console.warn(w.message)
                if p.scan.on_scanner_stop == "end":
                    cuff.emergency_vent("scanner stopped")
                    raise AbortError(f"{w.message}; the cuff was vented and the run ended (on_scanner_stop: end)",
                                     reason="scanner_stopped")

        def stimulate(i: int, target_kpa: float, rate_kpa_s: float) -> None:
            cuff.stimulate(target_kpa, rate_kpa_s, tag=i)

        def deflate(i: int) -> None:
            cuff.deflate(tag=i)

        def on_status(trial: int, phase: str, next_s: float | None) -> None:
            status.trial, status.phase, status.next_event_in_s = trial, phase, next_s
            status.pressure_kpa = self.state.last_pressure_kpa
            status.target_kpa = cuff.target_kpa
            self.console.update(status, self.clock.now())

        scale = devices.rating_scale(prep)
        # the run lasts until the scan's last declared volume has been acquired, so every
        # pulse is logged and the pulse count can be checked against the volumes
        run_end_s = max(prep.timeline.run_length_s, p.scan.n_volumes * p.scan.tr_s)
        loop = TrialLoop(timeline=prep.timeline.events, t0=t0, run_end_s=run_end_s,
                         clock=self.clock, display=display,
                         hooks=LoopHooks(poll_pulses=poll_pulses, poll_keys=keys, check_safety=check_safety,
                                         stimulate=stimulate, deflate=deflate, status=on_status,
                                         vent=lambda reason: devices.make_safe(cuff, reason),
                                         scripted_keys=devices.scripted_ratings(prep, self.clock)),
                         log=self.record, rating_scale=scale, key_roles=roles,
                         on_participant_stop=p.safety.on_participant_stop)
        cuff.add_event_listener(loop.device_events.put)
        result = loop.run()
        self.record({"kind": "frames", **display.stats.summary(self.clock.now())})
        return result

    def _finish(self, code: int, reason: str, message: str) -> None:
        """Derive outputs from the log and tell the operator how it went."""
        from experiment.outputs.report import write_report
        from experiment.outputs.writer import write_run_outputs

        prep = self.prep
        verdict = "completed" if code == EXIT_OK else f"ABORTED ({reason})"
        self.console.say(f"run {verdict}" + (f": {message}" if message else ""))
        if self.state.t0 is None:   # never reached the scan: an attempt, not a run of the dataset
            try:
                self.source_dir = move_to_attempts(self.source_dir)
                self.console.say(f"the run ended before the first stored volume: kept as an attempt in "
                                 f"{self.source_dir}; run {prep.run_id.run} stays free")
            except OSError as exc:
                self.console.warn(f"could not move the attempt's log to the attempts folder ({exc})")
        outputs_ok = True
        try:
            paths = write_run_outputs(self.source_dir, data_root=prep.data_root)
            report = write_report(self.source_dir)
        except Exception as exc:  # the log is the data; outputs can be rebuilt
            outputs_ok = False
            self.console.warn(f"could not derive the outputs ({exc}); the log is safe in {self.source_dir}; "
                              f"run `cuedpain rebuild {self.source_dir}`")
        if hasattr(self, "monitor"):
            s = self.monitor.summary()
            drift = "n/a" if s.drift_ppm is None else f"{s.drift_ppm:+.1f} ppm"
            tr = "n/a" if s.tr_mean_s is None else f"{s.tr_mean_s:.4f} s (sd {1000 * (s.tr_sd_s or 0):.2f} ms)"
            self.console.say(f"pulses: {s.n_pulses} stored-volume pulses of {s.n_expected} expected; "
                             f"TR {tr}; missed {s.n_missed}, extra {s.n_extra}; clock drift {drift}")
        if outputs_ok:
            self.console.say(f"timing: {paths.timing_summary}")
            self.console.say(f"events: {paths.events_tsv or 'none (the run ended before t0)'}")
            self.console.say(f"QC report: {report}")
        self.console.say(f"raw log: {self.source_dir / 'log.jsonl'}")


def command(args: argparse.Namespace) -> int:
    """`cuedpain run`: exit 0 completed, 2 bad input, 3 aborted, 4 hardware at start."""
    return Session(preflight(args)).execute()
