"""The Station: one object that owns a session's hardware and bookkeeping for its lifetime.

A procedure (a run, a calibration, a display test) says what it needs in a `StationSpec`
(a cuff or not, a trigger source or not, the window's cues and rating scales, the keys,
the mode) and executes on the Station:

    with Station(spec) as station:          # devices open, identified, armed (exit 4 if not)
        station.confirm(briefing)            # the operator sees what will be done, and says yes
        station.open_log(events, pressure, header)
        ... the procedure, calling station.check() every frame ...
        station.finish(end_fields)           # how it ended
    # here: vented, devices closed (their closing records logged), `end` record, logs closed

The Station's exit vents the cuff first and closes everything on every path (a normal end,
an exception, Ctrl-C, SIGTERM, SIGHUP, Ctrl-Break, a closed console); stop signals vent at
once from the handler (`experiment.station.signals`). Nothing simulated ever reaches a real
session: in `Mode.REAL` a device that says it is simulated is refused (exit 4).
"""

from __future__ import annotations

import enum
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Callable, Mapping

from experiment.log.records import EndFields, EndUpdate, SessionRecord

from experiment.clock import Clock, VirtualClock, psychopy_clock
from experiment.errors import AbortError
from experiment.protocol.model import Cue, Keys
from experiment.protocol.rig import Screen
from experiment.protocol.specs import ButtonSpec, CuffSpec, ScannerSpec
from experiment.station.briefing import Briefing, Confirmation, confirm
from experiment.station.console import OperatorConsole
from experiment.station.rating import RatingScale
from experiment.station.recorder import Recorder, stop_reason
from experiment.station.signals import StopRequest, StopSignals

if TYPE_CHECKING:
    from experiment.buttons.decoders import ButtonSource
    from experiment.cuff.base import PressureSample
    from experiment.cuff.safety import CuffSupervisor, SafetyLimits
    from experiment.scanner.base import TriggerSource
    from experiment.scanner.sim_scanner import ScannerPlan
    from experiment.station.devices import Display, KeyReader

VIRTUAL_START_S = 1000.0      # where a headless session's virtual clock starts


class Mode(enum.Enum):
    """How a session meets the world."""

    REAL = "real"           # the rig's devices, a real window; nothing simulated is accepted
    DRY_RUN = "dry run"     # simulated devices through the real serial paths, a real window
    HEADLESS = "headless"   # simulated devices and display on a virtual clock, no window

    @property
    def simulated(self) -> bool:
        return self is not Mode.REAL


@dataclass(frozen=True)
class WindowSpec:
    """What the participant's screen must be able to show."""

    screen: Screen
    cues: Mapping[str, Cue]
    stimuli_dir: Path
    rating_scales: tuple[RatingScale, ...] = ()   # laid out before time zero


@dataclass(frozen=True)
class CuffNeed:
    """A cuff, and the interlock settings it is armed with."""

    spec: CuffSpec
    limits: SafetyLimits


@dataclass(frozen=True)
class TriggerNeed:
    """A trigger source; `plan` drives the simulated scanner of a dry run."""

    spec: ScannerSpec
    plan: ScannerPlan
    default_key: str = "5"        # the trigger key of a keyboard spec that names none (the protocol's)


@dataclass(frozen=True)
class ButtonNeed:
    """A button box on a serial line (docs/buttons.md); `byte_map` is a custom box's bytes -> button names."""

    spec: ButtonSpec
    byte_map: Mapping[int, str] | None = None


@dataclass(frozen=True)
class StationSpec:
    """What a procedure needs from the rig, resolved from the rig file and the command line."""

    mode: Mode
    keys: Keys
    window: WindowSpec
    cuff: CuffNeed | None = None
    trigger: TriggerNeed | None = None
    assume_yes: bool = False      # --yes: the operator confirmed in advance (recorded)
    sim_link: str = "auto"        # dry runs: simulated devices on a pty, a loopback socket, or auto
    confirmed_by: str | None = None   # with --yes: who confirmed instead (e.g. 'station': its page), recorded
    buttons: ButtonNeed | None = None   # a serial button box besides the keyboard

    @property
    def key_roles(self) -> dict[str, str]:
        """key -> escape | stop | response (the trigger key is the trigger source's)."""
        k = self.keys
        return {k.escape: "escape", k.stop: "stop", k.left: "response", k.right: "response", k.confirm: "response"}


@dataclass
class _Lifetime:
    """What the Station opened, for its exit (kept apart from the typed attributes)."""

    stack: ExitStack = field(default_factory=ExitStack)
    end: EndFields | None = None
    vent_reason: str = "end of session"
    then: Callable[[], EndUpdate] | None = None    # after the devices closed, before `end`


class Station:
    """Owns the clock, display, cuff (under its supervisor), trigger source, keys, console,
    log and stop signals of one session (see the module docstring)."""

    def __init__(self, spec: StationSpec, *, console: OperatorConsole | None = None) -> None:
        self.spec = spec
        self.clock: Clock = VirtualClock(start=VIRTUAL_START_S) if spec.mode is Mode.HEADLESS else psychopy_clock()
        self.rec = Recorder()
        self.console = console or OperatorConsole(dry_run=spec.mode.simulated, on_lost=self._console_lost)
        self.cuff: CuffSupervisor | None = None
        self.display: Display | None = None
        self.trigger: TriggerSource | None = None
        self.trigger_spec: ScannerSpec | None = None   # what the trigger source was opened with
        self.read_keys: KeyReader = lambda: []
        self.buttons: ButtonSource | None = None
        self.buttons_shared = False     # the button box is on the trigger's line (one reader)
        self.signals: StopSignals | None = None
        self._stop_logged = False
        self.confirmation: Confirmation | None = None
        self._sample_listeners: list[Callable[[PressureSample], None]] = []
        self._record_listeners: list[Callable[[SessionRecord], None]] = []
        self._closers: list[Callable[[], None]] = []
        self._life = _Lifetime()

    # ------------------------------------------------------------ lifetime

    def __enter__(self) -> "Station":
        try:
            self._open()
        except BaseException:
            self._life.stack.close()
            raise
        return self

    def _open(self) -> None:
        """Cuff first (exit 4 before anything is shown), then display, trigger source, keys."""
        from experiment.station import devices

        spec, stack = self.spec, self._life.stack
        if spec.cuff is not None:
            self.cuff = devices.open_cuff(spec.cuff, mode=spec.mode, clock=self.clock, stack=stack,
                                          on_record=self.record, on_sample=self._sample, sim_link=spec.sim_link)
            self.signals = stack.enter_context(StopSignals(vent=self.cuff.emergency_vent, now=self.clock.now))
        else:
            self.signals = stack.enter_context(StopSignals(vent=lambda name: None, now=self.clock.now))
        self.display = devices.open_display(spec.window, mode=spec.mode, clock=self.clock, stack=stack)
        decoder = None if spec.buttons is None else devices.button_decoder(spec.buttons)
        if spec.trigger is not None:
            self.trigger_spec = devices.trigger_spec_for(spec.trigger.spec, mode=spec.mode, sim_link=spec.sim_link)
            self.buttons_shared = spec.buttons is not None and devices.shares_line(spec.buttons.spec,
                                                                                   self.trigger_spec)
            self.trigger = devices.open_trigger(spec.trigger, mode=spec.mode, clock=self.clock, stack=stack,
                                                display=self.display, sim_link=spec.sim_link,
                                                buttons=decoder if self.buttons_shared else None)
        if spec.buttons is not None and decoder is not None:
            self.buttons = (devices.line_buttons(self.trigger) if self.buttons_shared and self.trigger is not None
                            else devices.open_buttons(spec.buttons, decoder, mode=spec.mode, clock=self.clock,
                                                      stack=stack))
        keys = devices.key_reader(mode=spec.mode, trigger=self.trigger, display=self.display, clock=self.clock)
        self.read_keys = keys if self.buttons is None else devices.with_buttons(keys, self.buttons,
                                                                                 record=self.record)

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        """Vent first, close the devices (their closing records still logged), then `end`, then the logs."""
        from experiment.station.devices import make_safe

        life = self._life
        try:
            if self.cuff is not None:
                reason = life.vent_reason if exc is None else f"{exc_type.__name__ if exc_type else 'exit'}: {exc}"
                make_safe(self.cuff, reason)
            self.console.finish()
        finally:
            try:
                life.stack.close()
            finally:
                self._write_end(life, ok=exc is None)
                self._close_observers()
                self.rec.close()

    def _close_observers(self) -> None:
        """After the `end` record, before the logs close: what observes the log (LSL) closes, in
        reverse order; a failure is logged, never raised (the data is in the log)."""
        while self._closers:
            try:
                self._closers.pop()()
            except Exception as exc:  # noqa: BLE001 - an observer cannot lose the run its log already holds
                if self.rec.writable:
                    self.rec.record({"kind": "warning", "t": self.clock.now(), "code": "observer_close_failed",
                                     "message": f"closing a log observer failed: {exc!r}"})

    def _write_end(self, life: _Lifetime, *, ok: bool) -> None:
        if life.end is None:
            return
        end: EndFields = {**life.end}
        if ok and life.then is not None:
            end.update(life.then())
        if self.rec.writable:
            self.record({"kind": "end", "t": self.clock.now(), **end,
                         "end_wall": datetime.now().astimezone().isoformat(timespec="seconds")})

    def finish(self, end: EndFields, *, vent_reason: str, then: Callable[[], EndUpdate] | None = None) -> None:
        """How the session ended: the fields of the `end` record the exit writes, and why it vents.

        `then` runs once the devices are closed (the cuff vented, disarmed, its release
        verified) and before the `end` record; what it returns is added to that record (a
        calibration writes its result file there)."""
        self._life.end = {**end}
        self._life.vent_reason = vent_reason
        self._life.then = then

    # ------------------------------------------------------------ the operator

    def confirm(self, briefing: Briefing) -> Confirmation:
        """Show what will be done; in a real session wait for the operator's yes (AbortError if not)."""
        assert self.signals is not None
        with self.signals.interruptible():
            self.confirmation = confirm(briefing, say=self.console.say, assume_yes=self.spec.assume_yes,
                                        confirmed_by=self.spec.confirmed_by)
        return self.confirmation

    def _console_lost(self, exc: BaseException) -> None:
        """The operator's terminal or pipe went away: log it once; the session goes on."""
        self.record({"kind": "warning", "t": self.clock.now(), "code": "console_lost",
                     "message": f"the operator console could not be written ({exc}); the session continues and "
                                "everything is in this log"})

    # ------------------------------------------------------------ the log

    def open_log(self, events_path: Path, pressure_path: Path, header: Mapping[str, object]) -> None:
        """Create both logs (never over a file) and write what was recorded before them."""
        self.rec.open(events_path, pressure_path, header)

    def record(self, rec: SessionRecord) -> None:
        """Log a record (any thread); interlock records are also shown to the operator at once."""
        self.rec.record(rec)
        for fn in self._record_listeners:
            fn(rec)
        if rec["kind"] == "safety":
            self.console.warn(f"SAFETY {rec['reason']}: {rec.get('message') or rec['action']}")

    def add_record_listener(self, fn: Callable[[SessionRecord], None], *,
                            close: Callable[[], None] | None = None) -> None:
        """Also hand every record logged from now on to `fn` (any thread; must not block: LSL's
        publisher only queues it); `close` runs after the `end` record, before the logs close."""
        self._record_listeners.append(fn)
        if close is not None:
            self._closers.append(close)

    def add_sample_listener(self, fn: Callable[[PressureSample], None]) -> None:
        """Also hand every cuff pressure sample to `fn` (reader thread; must not block)."""
        self._sample_listeners.append(fn)

    def _sample(self, sample: PressureSample) -> None:
        self.rec.sample(sample)
        for fn in self._sample_listeners:
            fn(sample)

    # ------------------------------------------------------------ every frame

    @property
    def stop_request(self) -> StopRequest | None:
        """A stop the operating system asked for (the cuff was vented when it came)."""
        return None if self.signals is None else self.signals.request

    def check(self) -> None:
        """Raise what must end the session now: a stop signal (logged as an `operator` record
        here, outside the handler), a log that cannot be written, a tripped interlock."""
        request = self.stop_request
        if request is not None:
            self._log_stop_request(request)
            raise request.error()
        self.rec.check()   # a lost pressure trace is lost data too
        cuff = self.cuff
        if cuff is not None and cuff.safety_tripped is not None:
            raise AbortError(f"safety interlock ({cuff.safety_tripped}): {cuff.trip_message}", reason="safety")

    def _log_stop_request(self, request: StopRequest) -> None:
        if not self._stop_logged:
            self._stop_logged = True
            self.record({"kind": "operator", "t": request.t, "action": request.name})

    def stop_cause(self, exc: BaseException) -> tuple[str, str]:
        """(reason, message) of the `end` record for an orderly stop. A stop signal that came
        first is the cause, whatever error followed from the vent it made (a stimulus refused
        because the cuff had just been vented, say): the end record names the operator's signal."""
        request = self.stop_request
        if request is None:
            return stop_reason(exc)
        self._log_stop_request(request)
        err = request.error()
        return err.reason or request.name, err.message

    def press_buttons(self, presses: list[tuple[str, float]]) -> None:
        """Dry runs with `--buttons sim`: the simulated participant's presses go out as fORP bytes
        on the simulated scanner's line at their times (the reader reads them back like a box's)."""
        from experiment.scanner.sim_scanner import DrivenSource

        if not isinstance(self.buttons, DrivenSource):
            raise RuntimeError("press_buttons needs the simulated button box (--buttons sim in a dry run)")
        self.buttons.press(presses)

    def buttons_info(self) -> dict[str, object] | None:
        """For the log header: the button box, and whether it shares the trigger's line."""
        need = self.spec.buttons
        if need is None:
            return None
        return {"spec": str(need.spec), "simulated": need.spec.simulated, "shared_with_trigger": self.buttons_shared,
                "byte_map": None if need.byte_map is None else {f"0x{b:02x}": n for b, n in need.byte_map.items()}}

    def now(self) -> float:
        return self.clock.now()
