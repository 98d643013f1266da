"""The run procedure, executed on a Station: confirmation, the log, t0, the trial loop, outputs.

Order matters for safety and for the data:
1. Input was checked by pre-flight (`experiment.procedures.run.preflight`): no device touched.
2. The Station opens and checks the devices (exit 4); the operator sees what will be done
   and confirms (a real run waits for y; exit 3 if not). Nothing has been shown yet.
3. The run directory is created exclusively and the log starts; from here on everything is
   on disk as it happens.
4. Wait for t0 with Escape live, then the trial loop.
5. Whatever happens (completion, Escape, a stop signal, participant stop, device fault, log
   failure, a bug), the Station vents first, closes the devices, then writes the `end`
   record; then the outputs are derived from the log. A run that never reached t0 is kept
   as an attempt and leaves its run number free.
"""

from __future__ import annotations

import platform
import shutil
import sys
import traceback
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from pathlib import Path

from experiment import __version__
from experiment.cuff.base import PressureSample
from experiment.errors import EXIT_ABORTED, EXIT_OK, AbortError
from experiment.log.records import PlanRecord, RunRecord
from experiment.outputs.dataset import claim_root
from experiment.outputs.rundir import create_source_dir, move_to_attempts
from experiment.procedures.run.cuffschedule import CuffScheduler
from experiment.procedures.run.preflight import RunPlan
from experiment.procedures.run.ratings import rating_scales, scripted_ratings
from experiment.procedures.timingtest.procedure import latest_timing_test
from experiment.procedures.run.trialloop import LoopHooks, LoopResult, TrialLoop
from experiment.protocol.model import describe
from experiment.protocol.schedule import PlannedEvent
from experiment.scanner.base import Pulse
from experiment.scanner.pulsecheck import PulseMonitor
from experiment.scanner.startgate import StartGate, wait_for_t0
from experiment.station.briefing import Briefing, run_briefing
from experiment.station.console import OperatorConsole, Status
from experiment.station.devices import make_safe
from experiment.station.rating import RatingScale
from experiment.station.realtime import Realtime
from experiment.station.recorder import STOPS
from experiment.station.runinfo import package_versions, software_revision
from experiment.station.station import Mode, Station


def _buttons_line(st: Station) -> str | None:
    """The confirmation block's `buttons` line: the box, and whether it is on the trigger's line."""
    info = st.buttons_info()
    if info is None:
        return None
    return (str(info["spec"]) + (" (SIMULATED)" if info["simulated"] else "")
            + (", on the trigger's line (one reader)" if info["shared_with_trigger"] else ""))


@dataclass(frozen=True)
class Outcome:
    """How the run ended: exit code, reason code and the operator's message."""

    code: int = EXIT_OK
    reason: str = "completed"
    message: str = ""

    @property
    def completed(self) -> bool:
        return self.code == EXIT_OK


@dataclass
class RunState:
    """What the run learns as it goes and its ending needs."""

    t0: float | None = None
    last_i: int | None = None          # plan index of the last phase that reached the screen
    status: Status = field(default_factory=Status)
    last_pressure_kpa: float | None = None
    escape_seen: bool = False
    warned: set[str] = field(default_factory=set)
    source_dir: Path | None = None


def plan_record(ev: PlannedEvent) -> PlanRecord:
    """A timeline event as a `plan` log record (docs/event-log.md)."""
    return {"kind": "plan", "i": ev.index, "trial": ev.trial, "trial_type": ev.trial_type, "phase": ev.phase, "onset_s": ev.onset_s,
            "duration_s": ev.duration_s, "cue": ev.cue, "cuff": ev.cuff, "target_kpa": ev.target_kpa,
            "rate_kpa_s": ev.rate_kpa_s, "timed_from": ev.timed_from, "ramp_s": ev.ramp_s,
            "cuff_at": ev.cuff_at,
            "bids_trial_type": ev.bids_trial_type, "phase_kind": ev.kind, "level": ev.level, "scale": ev.scale}


class RunProcedure:
    """One run on one Station, from opened devices to derived outputs."""

    def __init__(self, plan: RunPlan, *, console: OperatorConsole | None = None) -> None:
        self.plan = plan
        self.state = RunState()
        self.monitor = PulseMonitor(plan.protocol.scan.tr_s, n_expected=plan.protocol.scan.n_volumes,
                                    stop_after_trs=plan.protocol.scan.scanner_stop_trs)
        self.gate = StartGate(plan.discard_pulses, scanner_discarded=plan.protocol.scan.scanner_discarded)
        self._console = console
        self._realtime: Realtime | None = None
        self.st: Station
        self.briefing: Briefing

    def execute(self) -> int:
        """The run; its exit code (0 completed, 3 aborted; 4 from the Station at start)."""
        p = self.plan.protocol
        with Station(self.plan.station_spec(), console=self._console) as st:
            self.st = st
            st.console.say(f"cuedpain {__version__}: {p.name} - {self.plan.run_id.stem}"
                           + (" (DRY RUN: simulated cuff and scanner)" if self.plan.dry_run else ""))
            self.briefing = self._briefing()
            st.confirm(self.briefing)
            self._start_log()
            outcome = self._guarded()
            st.finish({"status": "completed" if outcome.completed else "aborted", "reason": outcome.reason,
                       "message": outcome.message, "exit_code": outcome.code, "last_i": self.state.last_i},
                      vent_reason="end of run" if outcome.completed else outcome.reason)
        self._finish(outcome)
        return outcome.code

    def _briefing(self) -> Briefing:
        plan, st = self.plan, self.st
        assert st.cuff is not None and st.cuff.info is not None and st.trigger is not None
        return run_briefing(participant=plan.run_id.participant, session=plan.run_id.session, run=plan.run_id.run,
                            protocol_path=str(plan.protocol_path), protocol_sha256=plan.protocol.sha256,
                            pressure=plan.pressure, ceiling_kpa=plan.protocol.safety.max_pressure_kpa,
                            cuff=st.cuff.info, trigger_spec=str(st.trigger_spec),
                            trigger_simulated=st.trigger.simulated, dry_run=plan.dry_run, panel_kpa=plan.panel_kpa,
                            buttons=_buttons_line(st), lsl=plan.lsl)

    def _guarded(self) -> Outcome:
        """The run inside the log: an orderly stop or a bug becomes an Outcome, never an escape."""
        try:
            result = self._run()
        except STOPS as exc:
            reason, message = self.st.stop_cause(exc)
            return Outcome(EXIT_ABORTED, reason, message)
        except Exception as exc:  # a bug: the Station vents; keep the data, say where the traceback is
            assert self.state.source_dir is not None
            crash = self.state.source_dir / "crash.txt"
            crash.write_text(traceback.format_exc())
            return Outcome(EXIT_ABORTED, "internal_error", f"internal error: {exc!r} (traceback in {crash})")
        if result.stimulation_stopped:
            return Outcome(message=f"completed without stimulation after {result.stimulation_stopped}")
        return Outcome()

    # ------------------------------------------------------------ the log

    def _start_log(self) -> None:
        """Create the run directory (exclusively), copy the inputs, open both logs, describe the run."""
        plan, st = self.plan, self.st
        claim_root(plan.data_root, dry_run=plan.dry_run)
        run_id, source_dir = create_source_dir(plan.data_root, plan.run_id, take_next=plan.take_next)
        if run_id != plan.run_id:
            st.console.say(f"run {plan.run_id.run} was taken meanwhile by another session; this is run {run_id.run}")
            self.plan = plan = replace(plan, run_id=run_id)
        self.state.source_dir = source_dir
        shutil.copyfile(plan.protocol_path, source_dir / "protocol.yaml")
        if plan.rig_path is not None:
            shutil.copyfile(plan.rig_path, source_dir / "rig.yaml")
        st.open_log(source_dir / "log.jsonl", source_dir / "pressure.jsonl", self._header())
        for ev in plan.timeline.events:
            self.record(plan_record(ev))
        self._describe_display()
        if plan.lsl:
            self._open_lsl()
        st.console.say(f"writing to {source_dir}")

    def _header(self) -> dict[str, object]:
        plan, st, p = self.plan, self.st, self.plan.protocol
        assert st.cuff is not None and st.cuff.info is not None and st.trigger is not None
        return {
            "software": {"name": "cuedpain", "version": __version__, "revision": software_revision()},
            "participant": plan.run_id.participant, "session": plan.run_id.session, "run": plan.run_id.run,
            "task": p.task, "protocol_name": p.name, "seed": plan.seed, "dry_run": plan.dry_run,
            "headless": plan.mode is Mode.HEADLESS, "clock": st.clock.name, "protocol_path": str(plan.protocol_path),
            "protocol_sha256": p.sha256, "rig_path": str(plan.rig_path) if plan.rig_path else None,
            "cuff": asdict(st.cuff.info),
            "briefing": self.briefing.record(), "confirmation": st.confirmation,
            "scanner": {"kind": st.trigger.name, "spec": str(st.trigger_spec), "simulated": st.trigger.simulated},
            "buttons": st.buttons_info(), "lsl": plan.lsl,
            "tr_s": p.scan.tr_s, "n_volumes": p.scan.n_volumes, "discard_pulses": plan.discard_pulses,
            "scanner_discarded": p.scan.scanner_discarded,
            "pressure": plan.pressure, "cuff_timing": asdict(plan.rig.cuff_timing),
            "protocol": describe(p),
            "cue_mapping": {"index": plan.timeline.cue_mapping_index, "roles": plan.timeline.cue_mapping,
                            "select": None if p.cue_mapping is None else p.cue_mapping.select},
            "start_wall": datetime.now().astimezone().isoformat(timespec="seconds"),
            "platform": platform.platform(), "python": sys.version.split()[0], "packages": package_versions(),
            "run_length_s": plan.timeline.run_length_s,
            "timing_test": latest_timing_test(plan.data_root),   # the newest `cuedpain timing-test` of this root
        }

    def _open_lsl(self) -> None:
        """The Lab Streaming Layer outlets, fed from the log from here on (docs/lsl.md)."""
        from experiment.log.lsl import LslPublisher, StreamMeta

        plan, st, p = self.plan, self.st, self.plan.protocol
        assert st.cuff is not None
        meta = StreamMeta(participant=plan.run_id.participant, session=plan.run_id.session, run=plan.run_id.run,
                          task=p.task, protocol_name=p.name, protocol_sha256=p.sha256, dry_run=plan.dry_run)
        publisher = LslPublisher(meta, clock=st.clock, pressure_hz=float(st.cuff.limits.stream_hz), log=self.record)
        st.add_record_listener(publisher.observe, close=publisher.close)
        st.add_sample_listener(publisher.observe_sample)
        st.console.say(f"LSL streams {publisher.markers_name} and {publisher.pressure_name} open "
                       f"(source {meta.source_id}; LSL time = run time {publisher.offset_s:+.6f} s)")

    def _describe_display(self) -> None:
        st = self.st
        display = st.display
        assert display is not None
        self.record({"kind": "display", **display.info()})
        if getattr(display, "refresh_mismatch", False):
            msg = (f"the display refreshes at {getattr(display, 'measured_refresh_hz', 0.0):.1f} Hz, not the rig's "
                   f"{display.refresh_hz:g} Hz; frames are timed at the measured rate")
            self.record({"kind": "warning", "t": st.now(), "code": "refresh_mismatch", "message": msg})
            st.console.warn(msg)
        if not display.simulated and not getattr(display, "vsync", True):
            st.console.say("this display has no vertical sync: flips are paced in software "
                           f"at {display.refresh_hz:g} Hz (logged as vsync: false)")

    def record(self, rec: RunRecord) -> None:
        """Log a record; remembers the last phase that reached the screen."""
        if rec["kind"] == "onset":
            self.state.last_i = rec["i"]
        self.st.record(rec)

    # ------------------------------------------------------------ the scan

    def _run(self) -> LoopResult:
        st = self.st
        assert st.cuff is not None
        st.add_sample_listener(self._on_sample)
        status = self.state.status
        status.n_trials = max((ev.trial for ev in self.plan.timeline.events), default=0)
        status.pulses_expected = self.plan.protocol.scan.n_volumes
        self._show_instructions()
        with ExitStack() as realtime:
            if self.plan.mode is not Mode.HEADLESS:   # set-up done: no collection pauses, a higher priority
                self._realtime = realtime.enter_context(Realtime(now=st.now, log=self.record))
            t0 = self._wait_for_t0()
            loop = self._trial_loop(t0)
            # entered last, so it is closed (cancelled, joined) first, before the Station vents
            rt = self._realtime
            loop.scheduler = realtime.enter_context(CuffScheduler(
                st.clock, on_start=None if rt is None else lambda: rt.promote_thread("cuff-scheduler")))
            st.cuff.add_event_listener(loop.device_events.put)
            result = loop.run()
        assert st.display is not None
        self.record({"kind": "frames", **st.display.stats.summary(st.now())})
        return result

    def _on_sample(self, sample: PressureSample) -> None:
        self.state.last_pressure_kpa = sample.pressure_kpa

    def _show_instructions(self) -> None:
        """The instruction pages, one at a time, before waiting for the scanner (docs/event-log.md).

        The participant's confirm key or the operator's space bar turns a page; Escape and stop
        signals stay live. A dry run turns each page by itself after INSTRUCTION_PAGE_DRY_RUN_S
        (its simulated scanner starts after them); a headless run logs the pages as turned at once."""
        from experiment.procedures.run.preflight import INSTRUCTION_PAGE_DRY_RUN_S

        pages, st = self.plan.instructions, self.st
        assert st.display is not None
        display, roles, confirm = st.display, st.spec.key_roles, st.spec.keys.confirm
        for n, text in enumerate(pages, start=1):
            display.show(None)
            display.show_message(f"{text}\n\n({n} of {len(pages)}: press {confirm} to continue)")
            t_on = display.flip()
            self.record({"kind": "instructions", "t": t_on, "page": n, "n_pages": len(pages), "text": text})
            st.console.say(f"instructions page {n} of {len(pages)} on screen (confirm key {confirm} or space turns it)")
            turned_by = None
            while turned_by is None:
                st.check()
                for key, t in st.read_keys():
                    role = "operator" if key == "space" else roles.get(key, "response")
                    self.record({"kind": "key", "t": t, "key": key, "role": role})
                    if role == "escape":
                        raise AbortError("the operator pressed Escape during the instructions", reason="escape")
                    if key == confirm or key == "space":
                        turned_by = "operator (space)" if key == "space" else "participant (confirm key)"
                        break
                if turned_by is None and self.plan.dry_run and st.now() >= t_on + (
                        0.0 if self.plan.mode is Mode.HEADLESS else INSTRUCTION_PAGE_DRY_RUN_S):
                    turned_by = "dry run (turned by itself)"
                if turned_by is None:
                    display.flip()
            self.record({"kind": "instructions_turned", "t": st.now(), "page": n, "by": turned_by})
        display.show_message(None)

    def _wait_for_t0(self) -> float:
        """Fixation until the pulse of the first stored volume; Escape and stop signals live."""
        st, gate, scan = self.st, self.gate, self.plan.protocol.scan
        assert st.display is not None and st.trigger is not None
        display = st.display
        display.show(self.plan.protocol.fixation_cue.name)
        self.record({"kind": "waiting", "t": st.now(), "what": gate.status()})
        st.console.say(f"waiting for the scanner: {gate.status()} (Escape aborts; timeout "
                       f"{scan.first_trigger_timeout_s:g} s)")
        try:
            t0 = wait_for_t0(st.trigger, gate, clock=st.clock, timeout_s=scan.first_trigger_timeout_s,
                             should_abort=self._escape_or_stop, on_status=lambda s: None, on_pulse=self._on_pulse,
                             pump=self._show_waiting)
        except AbortError:
            if self.state.escape_seen:
                raise AbortError("the operator pressed Escape while waiting for the scanner", reason="escape") from None
            st.check()   # a stop signal: logged and raised as itself
            raise
        self.state.t0 = t0
        self.record({"kind": "t0", "t": t0, "pulse_index": gate.t0_pulse_index})
        st.console.say(f"t0 fixed (pulse {gate.t0_pulse_index}); run of {self.plan.timeline.run_length_s:.1f} s begins")
        return t0

    def _show_waiting(self) -> None:
        """Keep the fixation cross on screen (and the window responsive) while waiting."""
        assert self.st.display is not None
        self.st.display.flip()

    def _escape_or_stop(self) -> bool:
        roles = self.st.spec.key_roles
        for key, t in self.st.read_keys():
            if roles.get(key) == "escape":
                self.record({"kind": "key", "t": t, "key": key, "role": "escape"})
                self.state.escape_seen = True
        return self.state.escape_seen or self.st.stop_request is not None

    def _on_pulse(self, pulse: Pulse, volume: int | None) -> None:
        status = self.state.status
        if volume is None:
            status.pulses_discarded += 1
        else:
            status.pulses += 1
        self.record({"kind": "pulse", "t": pulse.t, "index": pulse.index, "source": pulse.source, "volume": volume})
        if volume is not None:
            for w in self.monitor.feed(pulse.t):
                self.record({"kind": "warning", "t": w.t, "code": w.code, "message": w.message})
                self.st.console.warn(w.message)

    def _poll_pulses(self) -> None:
        assert self.st.trigger is not None
        for pulse in self.st.trigger.poll():
            self._on_pulse(pulse, self.gate.feed(pulse))

    def _trial_loop(self, t0: float) -> TrialLoop:
        plan, st, p = self.plan, self.st, self.plan.protocol
        assert st.cuff is not None and st.display is not None
        cuff = st.cuff
        scripted = scripted_ratings(plan.timeline, seed=plan.seed) if plan.mode is Mode.HEADLESS else None
        if plan.buttons is not None and plan.buttons.spec.simulated:
            answer = scripted_ratings(plan.timeline, seed=plan.seed)

            def on_the_line(i: int, scale: RatingScale, t_onset: float) -> list[tuple[str, float]]:
                st.press_buttons(answer(i, scale, t_onset))   # fORP bytes on the scanner's line, read back
                return []

            scripted = on_the_line
        # the run lasts until the scan's last declared volume has been acquired, so every
        # pulse is logged and the pulse count can be checked against the volumes
        run_end_s = max(plan.timeline.run_length_s, p.scan.n_volumes * p.scan.tr_s)
        realtime = self._realtime
        hooks = LoopHooks(poll_pulses=self._poll_pulses, poll_keys=st.read_keys, check_safety=self._check,
                          stimulate=self._stimulate, deflate=self._deflate, status=self._show_status,
                          preset_rate=self._preset_rate,
                          vent=lambda reason: make_safe(cuff, reason), scripted_keys=scripted,
                          idle=None if realtime is None else (lambda slack_s, quiet: realtime.idle(slack_s, quiet=quiet)))
        return TrialLoop(timeline=plan.timeline.events, t0=t0, run_end_s=run_end_s, clock=st.clock,
                         display=st.display, hooks=hooks, log=self.record,
                         rating_scales=rating_scales(p, st.spec.keys), key_roles=st.spec.key_roles,
                         on_participant_stop=p.safety.on_participant_stop)

    def _stimulate(self, i: int, target_kpa: float, rate_kpa_s: float, planned_t: float) -> None:
        assert self.st.cuff is not None
        self.st.cuff.stimulate(target_kpa, rate_kpa_s, tag=i, planned_t=planned_t)

    def _preset_rate(self, i: int, rate_kpa_s: float) -> None:
        assert self.st.cuff is not None
        self.st.cuff.preset_rate(rate_kpa_s, for_event=i)

    def _deflate(self, i: int, planned_t: float) -> None:
        assert self.st.cuff is not None
        self.st.cuff.deflate(tag=i, planned_t=planned_t)

    def _check(self, now: float) -> None:
        """Every frame: the Station's checks, then a scanner that stopped sending pulses."""
        st = self.st
        st.check()
        w = self.monitor.check_silence(now)
        if w is None or w.code in self.state.warned:
            return
        self.state.warned.add(w.code)
        self.record({"kind": "warning", "t": w.t, "code": w.code, "message": w.message})
        st.console.warn(w.message)
        if self.plan.protocol.scan.on_scanner_stop == "end":
            assert st.cuff is not None
            st.cuff.emergency_vent("scanner stopped")
            raise AbortError(f"{w.message}; the cuff was vented and the run ended (on_scanner_stop: end)",
                             reason="scanner_stopped")

    def _show_status(self, trial: int, phase: str, next_s: float | None) -> None:
        st, status = self.st, self.state.status
        assert st.cuff is not None
        status.trial, status.phase, status.next_event_in_s = trial, phase, next_s
        status.pressure_kpa = self.state.last_pressure_kpa
        status.target_kpa = st.cuff.target_kpa
        st.console.update(status, st.now())

    # ------------------------------------------------------------ after the Station closed

    def _finish(self, outcome: Outcome) -> None:
        """Derive the outputs from the log and tell the operator how it went."""
        from experiment.outputs.report import write_report
        from experiment.outputs.writer import write_run_outputs

        console, source_dir = self.st.console, self.state.source_dir
        assert source_dir is not None
        console.say(f"run {'completed' if outcome.completed else f'ABORTED ({outcome.reason})'}"
                    + (f": {outcome.message}" if outcome.message else ""))
        if self.state.t0 is None:   # never reached the scan: an attempt, not a run of the dataset
            source_dir = self._keep_as_attempt(source_dir)
        try:
            paths = write_run_outputs(source_dir, data_root=self.plan.data_root)
            report = write_report(source_dir)
        except Exception as exc:  # the log is the data; outputs can be rebuilt
            console.warn(f"could not derive the outputs ({exc}); the log is safe in {source_dir}; "
                         f"run `cuedpain rebuild {source_dir}`")
        else:
            self._summary(paths.timing_summary, paths.events_tsv, report)
        console.say(f"raw log: {source_dir / 'log.jsonl'}")

    def _keep_as_attempt(self, source_dir: Path) -> Path:
        console = self.st.console
        try:
            moved = move_to_attempts(source_dir)
        except OSError as exc:
            console.warn(f"could not move the attempt's log to the attempts folder ({exc})")
            return source_dir
        console.say(f"the run ended before the first stored volume: kept as an attempt in {moved}; "
                    f"run {self.plan.run_id.run} stays free")
        self.state.source_dir = moved
        return moved

    def _summary(self, timing: str, events_tsv: Path | None, report: Path) -> None:
        console, s = self.st.console, self.monitor.summary()
        drift = "n/a" if s.drift_ppm is None else f"{s.drift_ppm:+.1f} ppm"
        tr = "n/a" if s.tr_mean_s is None else f"{s.tr_mean_s:.4f} s (sd {1000 * (s.tr_sd_s or 0):.2f} ms)"
        console.say(f"pulses: {s.n_pulses} stored-volume pulses of {s.n_expected} expected; "
                    f"TR {tr}; missed {s.n_missed}, extra {s.n_extra}; clock drift {drift}")
        console.say(f"timing: {timing}")
        console.say(f"events: {events_tsv or 'none (the run ended before t0)'}")
        console.say(f"QC report: {report}")


def run(plan: RunPlan, *, console: OperatorConsole | None = None) -> int:
    """Execute a planned run: exit 0 completed, 3 aborted, 4 hardware at start."""
    return RunProcedure(plan, console=console).execute()
