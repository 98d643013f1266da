"""`CuffSupervisor`: the host-side interlocks around any `Cuff`, and vent on every exit path.

The runner talks to the cuff only through this class. What it guarantees (each has a
test in tests/test_cuff_safety.py):

1. Ceiling: the protocol's maximum must not exceed the device's hard limit, and its
   watchdog, time limit and planned ramp rates must be ones the device accepts
   (`device_problems`; HardwareError at start); the device is armed with the ceiling (a
   device that says it armed higher is refused); a target above it is refused before
   anything is sent (InputError).
2. Time limits: one stimulus (SET to DEFLATE) and the run's cumulative inflated time,
   checked by the host every 10 ms; the device's own MAXTIME is set just above the
   stimulus limit as a backstop.
3. Heartbeat: a thread of its own sends PING every WDT/4, so a blocked render loop
   cannot starve the device's watchdog (WDT is set at start); when the host process
   dies, the device vents by itself.
4. Vent on every exit path: `close()` (and the context manager's exit, exception or
   not) vents, disarms and checks the pressure fell. `emergency_vent(reason)` may be
   called from any thread, including a signal handler: it takes no lock, it only appends
   the reason to a deque that the guard thread polls every 5 ms; the guard puts VENT on
   the wire, and the driver lets VENT past a command that is still waiting for its
   reply (measured in tests/test_cuff_safety.py: well under the 100 ms required).
5. A lost port, a missing reply or an error reply trips the supervisor with a message
   that says so; nothing is assumed about the cuff after that, and the last known
   pressure and state are logged.
6. Read-back: the target not reached by the device's ETA plus a margin (host check, or
   the device's COMPLIANCE event), a pressure over ceiling plus margin (host check on
   telemetry, or the device's OVERPRESSURE event), and every deflation or vent verified
   below the release threshold within a deadline.
7. The device's identity (simulated or not) comes from the device (`info.simulated`).
8. A cuff latched in FAULT or ESTOP from before is refused at start (`LatchedFault`,
   exit 4): only the operator clears a latch, on purpose, with `rig-check --clear-fault`.
9. A device that measures nothing (`DeviceInfo.pressure_readback` False: a gate on a
   panel-set inflator) keeps every time limit and every vent; the read-back checks of 6
   (target reached, release verified) are left out rather than judged on numbers nobody
   measured, and the log's `cuff_cmd` replies say `p=-`.

A trip records a `safety` record, vents, and sets `safety_tripped` (the reason code)
for the run's loop to poll; later stimulation is refused. The participant's stop
button is different: it vents and records, and sets `participant_stop_t`, but does not
trip, because the protocol decides whether the run ends or goes on without stimulation;
further stimulation is refused all the same.

Threads: on a real clock the heartbeat and the guard run as daemon threads (`_Guards`).
On a `VirtualClock` (headless runs) both run from clock timers instead, so a headless run
stays single-threaded and reproducible. `close()` joins every thread the supervisor
started; one that does not stop in time is named in a `warning` record
(`cuff_thread_not_stopped`), never forgotten silently.

The supervisor reads only the typed values of `experiment.cuff.base` (states, faults,
acknowledgements, events); the wire text on them goes into the log untouched.
"""

from __future__ import annotations

import math
import threading
from collections import deque
from dataclasses import dataclass
from typing import Callable, TypeVar, Union

from experiment.clock import Clock, VirtualClock
from experiment.cuff.base import (Ack, ArmAck, CommandRefused, Cuff, CuffState, CuffStatus, DeflateAck,
                                  DeviceEvent, DeviceInfo, DeviceRestarted, EventKind, Fault, PingAck,
                                  PressureSample, RampAck, StopSource)
from experiment.errors import AbortError, CuedpainError, DeviceFault, HardwareError, InputError
from experiment.log.records import CuffCmdRecord, SupervisorRecord

GUARD_PERIOD_S = 0.005     # guard thread: vent requests and deadline checks
VENTED_KPA = 1.0           # CUFF/1's "released" level: ARM needs the cuff below it
THREAD_JOIN_S = 2.0        # how long close() waits for each of its threads
WATCHDOG_MS = (200, 5000)  # the heartbeat runs every WDT/4: faster floods the link, slower inflates too long
MAX_DEVICE_TIME_MS = 600_000  # no supported device times one inflation beyond 10 min
STREAM_HZ = (20, 100)      # a pressure trace fine enough for the read-back checks
PANEL_TOLERANCE_KPA = 0.05  # a gated inflator's target vs its panel setting (300 mmHg on a panel is 39.997 kPa)

Record = Callable[[SupervisorRecord], None]
_Reply = TypeVar("_Reply", bound=Union[Ack, CuffStatus])
_T = TypeVar("_T")

_DEVICE_FAULT_EVENTS = {EventKind.WATCHDOG: "device_watchdog", EventKind.TIME_LIMIT: "device_time_limit",
                        EventKind.OVERPRESSURE: "device_overpressure", EventKind.COMPLIANCE: "device_compliance"}


class LatchedFault(HardwareError):
    """The cuff is latched in FAULT or ESTOP from before: nothing starts until the operator
    has checked the cuff and the participant and cleared it on purpose (rig-check --clear-fault)."""

    def __init__(self, state: CuffState, fault: Fault, info: DeviceInfo) -> None:
        super().__init__(f"the cuff on {info.port} ({info.name}) is latched in {fault.describe(state)}; "
                         "nothing was started. Check the cuff and the participant, then clear the fault on purpose "
                         "with `cuedpain rig-check --clear-fault` (with the same --cuff or --rig)")
        self.state = state
        self.fault = fault


@dataclass(frozen=True)
class SafetyLimits:
    """The interlock settings of one run (from the protocol's safety section)."""

    ceiling_kpa: float               # protocol maximum; the device is armed with it
    max_stimulus_s: float            # one stimulus, SET to DEFLATE
    max_run_inflated_s: float        # all stimuli of the run together
    watchdog_ms: int = 1000          # device watchdog; heartbeat every watchdog_ms / 4
    overpressure_margin_kpa: float = 2.0
    reach_tolerance_kpa: float = 0.5
    compliance_margin_s: float = 2.0  # target reached by the device's ETA plus this
    release_threshold_kpa: float = 2.0
    release_deadline_s: float = 2.0   # below the threshold by the device's ETA plus this
    stream_hz: int = 25
    device_time_margin_s: float = 0.5  # device MAXTIME = max_stimulus_s + this
    planned_rates_kpa_s: tuple[float, ...] = ()  # the protocol's ramp rates, checked against the device at start
    panel_kpa: float | None = None   # a gated inflator's panel setting: the only target it can be sent
    needs_readback: bool = False     # the protocol times phases from "target reached": the device must measure

    @property
    def device_time_ms(self) -> int:
        """The device's own time limit for one inflation (MAXTIME), just above the host's."""
        return math.ceil((self.max_stimulus_s + self.device_time_margin_s) * 1000)

    def check(self) -> None:
        """InputError naming the first bad setting."""
        problems = [*self._pressure_problems(), *self._time_problems()]
        if problems:
            raise InputError("cuff safety limits: " + "; ".join(problems))

    def _pressure_problems(self) -> list[str]:
        problems = []
        if not (math.isfinite(self.ceiling_kpa) and self.ceiling_kpa > 0):
            problems.append(f"ceiling_kpa must be above 0, got {self.ceiling_kpa}")
        bad_rates = [r for r in self.planned_rates_kpa_s if not (math.isfinite(r) and r > 0)]
        if bad_rates:
            problems.append(f"planned ramp rates must be above 0 kPa/s, got {bad_rates[0]}")
        return problems

    def _time_problems(self) -> list[str]:
        problems = []
        if not self.max_stimulus_s > 0:
            problems.append(f"max_stimulus_s must be above 0, got {self.max_stimulus_s}")
        elif self.device_time_ms > MAX_DEVICE_TIME_MS:
            problems.append(f"max_stimulus_s {self.max_stimulus_s:g} s is beyond the device's MAXTIME range "
                            f"({MAX_DEVICE_TIME_MS / 1000 - self.device_time_margin_s:g} s at most)")
        if not self.max_run_inflated_s > 0:
            problems.append(f"max_run_inflated_s must be above 0, got {self.max_run_inflated_s}")
        if not WATCHDOG_MS[0] <= self.watchdog_ms <= WATCHDOG_MS[1]:
            problems.append(f"watchdog_ms must be {WATCHDOG_MS[0]}-{WATCHDOG_MS[1]}, got {self.watchdog_ms}")
        if not STREAM_HZ[0] <= self.stream_hz <= STREAM_HZ[1]:
            problems.append(f"stream_hz must be {STREAM_HZ[0]}-{STREAM_HZ[1]} (pressure trace), got {self.stream_hz}")
        return problems


def device_problems(limits: SafetyLimits, info: DeviceInfo) -> list[str]:
    """What of `limits` the device cannot do, in the operator's words (empty: it fits).

    Pure: the Station may call it as soon as the device is identified, before a run; the
    supervisor calls it at start. The ceiling against the hard limit is checked first.
    """
    problems = []
    if limits.ceiling_kpa > info.hard_limit_kpa:
        problems.append(f"the protocol's maximum pressure {limits.ceiling_kpa:g} kPa exceeds the hard limit "
                        f"{info.hard_limit_kpa:g} kPa of the cuff on {info.port} ({info.name}); "
                        "lower the protocol's maximum")
    dev = info.limits
    if dev.watchdog_ms is not None and limits.watchdog_ms not in dev.watchdog_ms:
        problems.append(f"the watchdog {limits.watchdog_ms} ms is outside the {dev.watchdog_ms.text('ms')} "
                        f"the cuff on {info.port} accepts")
    if dev.max_time_ms is not None and limits.device_time_ms not in dev.max_time_ms:
        problems.append(f"the time limit {limits.device_time_ms} ms (max_stimulus_s + margin) is outside the "
                        f"{dev.max_time_ms.text('ms')} the cuff on {info.port} accepts")
    if limits.needs_readback and not info.pressure_readback:
        problems.append(f"the protocol times phases from the moment the target is reached, but nothing measures the "
                        f"pressure of the cuff on {info.port} ({info.name}); time them from onset")
    for rate in sorted(set(limits.planned_rates_kpa_s)):
        if rate not in dev.rate_kpa_s:
            problems.append(f"the ramp rate {rate:g} kPa/s is outside the {dev.rate_kpa_s.text('kPa/s')} "
                            f"the cuff on {info.port} ({info.name}) accepts")
    return problems


@dataclass
class _Stimulus:
    target_kpa: float
    t_start: float
    reach_deadline: float = math.inf
    reached: bool = False


class _Guards:
    """The heartbeat and the guard: two daemon threads on a real clock, clock timers on a
    `VirtualClock`. Knows nothing of cuffs: it calls `heartbeat` every `period_s` and
    `service` every GUARD_PERIOD_S (and at once when woken)."""

    def __init__(self, clock: Clock, *, period_s: float, heartbeat: Callable[[], None],
                 service: Callable[[], None]) -> None:
        self._clock = clock
        self._vclock = clock if isinstance(clock, VirtualClock) else None
        self._period_s = period_s
        self._heartbeat = heartbeat
        self._service = service
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._threads: list[threading.Thread] = []    # heartbeat and guard, once started
        self._oneshots: list[threading.Thread] = []   # vents sent while no guard runs
        self._timer: int | None = None
        self._next_ping = 0.0

    @property
    def threaded(self) -> bool:
        return self._vclock is None

    def start(self) -> None:
        if self._vclock is not None:
            self._next_ping = self._vclock.now()
            self._timer = self._vclock.call_at(self._vclock.now(), self._virtual_tick)
            return
        self._threads = [threading.Thread(target=self._heartbeat_loop, name="cuff-heartbeat", daemon=True),
                         threading.Thread(target=self._guard_loop, name="cuff-guard", daemon=True)]
        for t in self._threads:
            t.start()

    def call_soon(self) -> None:
        """Virtual clock: run `service` at the current virtual time. Takes no lock (signal-safe)."""
        if self._vclock is not None:
            self._vclock.call_at(self._vclock.now(), self._service)

    def wake(self) -> None:
        """Run `service` now: at once in virtual time, by the guard thread, or by a one-shot
        thread when no guard runs (before start, after stop)."""
        if self._vclock is not None:
            self.call_soon()
        elif any(t.is_alive() for t in self._threads):
            self._wake.set()
        else:
            t = threading.Thread(target=self._service, name="cuff-vent", daemon=True)
            self._oneshots.append(t)
            t.start()

    def stop(self, join_s: float) -> list[str]:
        """Stop and join every thread; returns the names of those still running after `join_s` each."""
        self._stop.set()
        self._wake.set()
        if self._vclock is not None and self._timer is not None:
            self._vclock.cancel(self._timer)
            self._timer = None
        stuck = []
        for t in [*self._threads, *self._oneshots]:
            if t is not threading.current_thread() and t.ident is not None:
                t.join(join_s)
                if t.is_alive():
                    stuck.append(t.name)
        self._oneshots = [t for t in self._oneshots if t.is_alive()]
        return stuck

    def _heartbeat_loop(self) -> None:
        while not self._stop.wait(self._period_s):
            self._heartbeat()

    def _guard_loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(GUARD_PERIOD_S)
            self._wake.clear()
            self._service()

    def _virtual_tick(self) -> None:
        assert self._vclock is not None
        if self._stop.is_set():
            return
        now = self._vclock.now()
        if now >= self._next_ping:
            self._next_ping = max(self._next_ping + self._period_s, now)
            self._heartbeat()
        self._service()
        self._timer = self._vclock.call_at(now + GUARD_PERIOD_S, self._virtual_tick)


def _failure_code(exc: DeviceFault, *, lost: bool) -> str:
    """The `safety` reason of a failed command."""
    if lost:
        return "connection_lost"
    if isinstance(exc, CommandRefused):
        return "error_reply"
    if isinstance(exc, DeviceRestarted):
        return "device_reboot"
    return "no_reply"


class CuffSupervisor:
    """Host-side interlocks around a connected or unconnected `Cuff` (see module doc).

    `on_record` gets `cuff_cmd`, `cuff_event`, `safety` and `warning` records
    (docs/event-log.md) from several threads; `on_sample` gets every pressure sample.
    The supervisor owns the cuff and closes it in `close()` unless `close_cuff=False`.
    """

    def __init__(self, cuff: Cuff, *, clock: Clock, limits: SafetyLimits,
                 on_record: Record | None = None,
                 on_sample: Callable[[PressureSample], None] | None = None,
                 close_cuff: bool = True) -> None:
        limits.check()
        self.cuff = cuff
        self.limits = limits
        self._clock = clock
        self._on_record = on_record
        self._on_sample_cb = on_sample
        self._close_cuff = close_cuff
        self._lock = threading.Lock()
        self._listeners: list[Callable[[DeviceEvent], None]] = []
        self._listener_failed = False    # a listener's first failure is logged; the rest would repeat it
        self.info: DeviceInfo | None = None
        self.safety_tripped: str | None = None     # reason code of the first trip
        self.trip_message: str | None = None
        self.participant_stop_t: float | None = None
        self.last_pressure_kpa: float | None = None
        self.last_state: CuffState | None = None
        self.heartbeats = 0
        self._trips: set[str] = set()
        self._armed_kpa = 0.0
        self._rate_kpa_s: float | None = None
        self._target_kpa = 0.0
        self._active: _Stimulus | None = None
        self._run_inflated_s = 0.0
        self._release_deadline: float | None = None
        self._last_ping_count: int | None = None
        self._lost: BaseException | None = None
        self._vent_requests: deque[tuple[float, str]] = deque()
        self._sample_cond = threading.Condition()
        self._guards = _Guards(clock, period_s=limits.watchdog_ms / 4000, heartbeat=self._heartbeat,
                               service=self._service)
        self._started = False
        self._closed = False

    # ------------------------------------------------------------ public API

    @property
    def target_kpa(self) -> float:
        """The target last commanded (0 after deflate or vent)."""
        return self._target_kpa

    @property
    def run_inflated_s(self) -> float:
        with self._lock:
            return self._inflated_total(self._clock.now())

    def add_event_listener(self, fn: Callable[[DeviceEvent], None]) -> None:
        """Also hand every device event to `fn` (reader thread; must not block)."""
        self._listeners.append(fn)

    def start(self) -> DeviceInfo:
        """Identify, check the device against the limits, configure (WDT, MAXTIME, ARM, STREAM),
        start the heartbeat.

        HardwareError when the device is unfit or fails here; the cuff is left vented.
        """
        info = self.cuff.info or self.cuff.connect()
        self.info = info
        problems = device_problems(self.limits, info)
        if problems:
            raise HardwareError("; ".join(problems) if len(problems) == 1 else
                                f"the cuff on {info.port} ({info.name}) does not fit: " + "; ".join(problems))
        self.cuff.set_listeners(on_event=self._on_event, on_sample=self._on_sample, on_lost=self._on_lost)
        try:
            self._configure(info)
        except LatchedFault as exc:
            self._record({"kind": "safety", "t": self._clock.now(), "reason": "latched_at_start", "action": "refuse",
                          "message": exc.message})
            self._try(self.cuff.vent)
            raise
        except BaseException as exc:
            self._stop_guards()
            self._try(self.cuff.vent)
            if isinstance(exc, DeviceFault):
                raise HardwareError(f"cuff on {info.port} failed while being set up: {exc.message}") from exc
            raise
        self._started = True
        return info

    def _configure(self, info: DeviceInfo) -> None:
        """The start sequence: refuse a latch, leave a stray state, then WDT, MAXTIME, ARM, STREAM."""
        lim = self.limits
        status = self._command("STATUS?", self.cuff.status, purpose="start")
        if status.pressure_kpa is not None:
            self._wait_vented_at_start(status.pressure_kpa)
        if status.state.latched:
            raise LatchedFault(status.state, status.fault or Fault(0), info)
        if status.state is not CuffState.IDLE:
            self._command("VENT", self.cuff.vent, purpose="start: not idle")
            self._command("DISARM", self.cuff.disarm, purpose="start: not idle")
        self._command("WDT", lambda: self.cuff.set_watchdog(lim.watchdog_ms), purpose="start")
        self._guards.start()
        self._command("MAXTIME", lambda: self.cuff.set_max_time(lim.device_time_ms), purpose="start")
        armed = self._command("ARM", lambda: self.cuff.arm(lim.ceiling_kpa), purpose="start")
        self._armed_kpa = self._checked_ceiling(armed, info)
        self._command("STREAM", lambda: self.cuff.stream(lim.stream_hz), purpose="start")

    def _checked_ceiling(self, armed: ArmAck, info: DeviceInfo) -> float:
        """The ceiling the device armed with; a device armed above what was sent is unfit."""
        if armed.ceiling_kpa > self.limits.ceiling_kpa + 1e-9:
            raise HardwareError(f"the cuff on {info.port} ({info.name}) armed with {armed.ceiling_kpa:g} kPa, above "
                                f"the ceiling {self.limits.ceiling_kpa:g} kPa it was sent ({armed.reply!r}); "
                                "nothing was started")
        return armed.ceiling_kpa

    def _wait_vented_at_start(self, pressure_kpa: float) -> None:
        """A cuff still holding air (a previous run just ended) is vented and waited for."""
        if pressure_kpa < VENTED_KPA:
            return
        self._command("VENT", self.cuff.vent, purpose="start: pressure left in the cuff")
        deadline = self._clock.now() + self.limits.release_deadline_s
        while pressure_kpa >= VENTED_KPA:
            if self._clock.now() > deadline:
                raise HardwareError(f"the cuff on {self.cuff.info.port if self.cuff.info else '?'} still holds "
                                    f"{pressure_kpa:.1f} kPa {self.limits.release_deadline_s:g} s after VENT; check it")
            self._clock.sleep(GUARD_PERIOD_S * 5)
            measured = self._command("STATUS?", self.cuff.status, purpose="start: wait vented").pressure_kpa
            if measured is None:
                return
            pressure_kpa = measured

    def stimulate(self, target_kpa: float, rate_kpa_s: float, *, tag: int | None = None,
                  planned_t: float | None = None) -> RampAck:
        """Ramp to `target_kpa` at `rate_kpa_s` (RATE if changed, then SET). `tag`: plan index (`i`);
        `planned_t`: when the plan wanted it written (logged next to the write time)."""
        self._require_running("stimulate")
        self._check_request(target_kpa, rate_kpa_s, tag)
        new = self._begin_stimulus(target_kpa)
        try:
            result = self._ramp(target_kpa, rate_kpa_s, tag, planned_t)
        except DeviceFault:
            if new:
                with self._lock:
                    self._active = None
            raise
        if self._vent_pending_or_tripped():
            # a stop (a signal, an interlock) crossed this SET on its way out: the guard's VENT
            # may already have gone, so vent again; a SET never outlives a vent
            self._send_vent("a stimulus crossed a stop")
            self._require_running("stimulate")
            raise AbortError("cuff stimulate refused: a stop crossed it", reason="safety")
        eta_s = result.eta_s
        if eta_s is None:
            eta_s = abs(target_kpa - (self.last_pressure_kpa or 0.0)) / rate_kpa_s
        with self._lock:
            if self._active is not None:
                if new:
                    self._active.t_start = result.t_write
                self._active.reach_deadline = result.t_ack + eta_s + self.limits.compliance_margin_s \
                    if self._readback else math.inf
        self._target_kpa = target_kpa
        return result

    def _check_rate(self, rate_kpa_s: float) -> None:
        """InputError for a ramp rate the device does not accept."""
        rates = self._device_info().limits.rate_kpa_s
        if not (math.isfinite(rate_kpa_s) and rate_kpa_s in rates):
            raise InputError(f"cuff ramp rate must be {rates.text('kPa/s')}, got {rate_kpa_s!r}")

    def _check_request(self, target_kpa: float, rate_kpa_s: float, tag: int | None) -> None:
        """InputError for a target or rate the run must not send; over the ceiling is recorded."""
        if not (math.isfinite(target_kpa) and target_kpa > 0):
            raise InputError(f"cuff target must be a pressure above 0 kPa, got {target_kpa!r}")
        self._check_rate(rate_kpa_s)
        panel = self.limits.panel_kpa
        if panel is not None and abs(target_kpa - panel) > PANEL_TOLERANCE_KPA + 1e-9:
            message = (f"target {target_kpa:g} kPa is not the {panel:g} kPa set on the inflator's panel; "
                       "refused, nothing was sent to the cuff")
            self._record({"kind": "safety", "t": self._clock.now(), "reason": "not_panel_pressure",
                          "action": "refuse", "message": message, "i": tag})
            raise InputError(message)
        if round(target_kpa, 1) > self._armed_kpa:
            message = (f"target {target_kpa:g} kPa is above the ceiling {self._armed_kpa:g} kPa; "
                       "refused, nothing was sent to the cuff")
            self._record({"kind": "safety", "t": self._clock.now(), "reason": "over_ceiling", "action": "refuse",
                          "message": message, "i": tag})
            raise InputError(message)

    def _begin_stimulus(self, target_kpa: float) -> bool:
        """Open (or retarget) the stimulus' time account; True when it is a new stimulus.
        AbortError when the run's inflated-time budget is used up."""
        now = self._clock.now()
        with self._lock:
            spent = self._inflated_total(now) >= self.limits.max_run_inflated_s
            active = self._active
            if not spent:
                if active is None:
                    self._active = _Stimulus(target_kpa, now)
                else:
                    active.target_kpa, active.reached, active.reach_deadline = target_kpa, False, math.inf
                self._release_deadline = None
        if spent:
            self._trip("run_time_limit", f"the run's inflated time limit ({self.limits.max_run_inflated_s:g} s) "
                       "is used up; no further stimulus", action="stop")
            raise AbortError(self.trip_message or "run time limit", reason="safety")
        return active is None

    def _ramp(self, target_kpa: float, rate_kpa_s: float, tag: int | None, planned_t: float | None) -> RampAck:
        if rate_kpa_s != self._rate_kpa_s:
            self._command("RATE", lambda: self.cuff.set_rate(rate_kpa_s), purpose="stimulate", tag=tag,
                          planned_t=planned_t)
            self._rate_kpa_s = rate_kpa_s
        return self._command("SET", lambda: self.cuff.set_target(target_kpa), purpose="stimulate", tag=tag,
                             planned_t=planned_t)

    def preset_rate(self, rate_kpa_s: float, *, for_event: int | None = None) -> bool:
        """Send a ramp-rate change ahead of the SET that needs it (`for_event`: its plan index), so
        that SET goes out at its planned time instead of after RATE's round trip. Only while no
        stimulus is active and no release is awaited (a new rate could change a ramp in progress):
        otherwise, or when a stop is queued, nothing is sent and False is returned; the SET then
        sends the rate itself, as it always could."""
        self._require_running("preset rate")
        if rate_kpa_s == self._rate_kpa_s:
            return True
        self._check_rate(rate_kpa_s)
        with self._lock:
            idle = self._active is None and self._release_deadline is None
        if not idle or self._vent_pending_or_tripped():
            return False
        what = "preset rate" + ("" if for_event is None else f" for event {for_event}")
        self._command("RATE", lambda: self.cuff.set_rate(rate_kpa_s), purpose=what)
        self._rate_kpa_s = rate_kpa_s
        return True

    def deflate(self, *, tag: int | None = None, planned_t: float | None = None) -> DeflateAck:
        """Ramp down at the current rate; the release is then verified by read-back."""
        self._require_running("deflate")
        result = self._command("DEFLATE", self.cuff.deflate, purpose="deflate", tag=tag, planned_t=planned_t)
        self._end_stimulus(result, extra_s=result.eta_s or 0.0)
        return result

    def vent(self, reason: str, *, tag: int | None = None) -> Ack:
        """A planned vent from the run's own thread (not an interlock; no trip)."""
        result = self._command("VENT", self.cuff.vent, purpose=f"vent: {reason}", tag=tag)
        self._end_stimulus(result, extra_s=0.0)
        return result

    def emergency_vent(self, reason: str) -> None:
        """Vent now, from any thread or a signal handler; never blocks, never raises.

        Takes no lock (a signal may interrupt a thread holding any of them): the reason
        goes into a deque the guard polls every 5 ms; the guard writes VENT, which the
        driver lets past an outstanding command. Trips with `reason`. Before `start()`
        and after `close()` there is nothing armed to vent and nothing happens.
        """
        self._vent_requests.append((self._clock.now(), reason))
        if not self._closed:
            self._guards.call_soon()

    def check(self) -> None:
        """Raise AbortError if an interlock tripped (for loops that prefer raising to polling)."""
        if self.safety_tripped is not None:
            raise AbortError(f"cuff safety interlock ({self.safety_tripped}): {self.trip_message}",
                             reason="safety")

    def close(self, reason: str = "end of run") -> None:
        """Vent, disarm, verify the release, stop the threads, close the cuff. Safe to call twice.

        Every step runs even if an earlier one failed; what could not be verified is
        logged as a `warning`.
        """
        if self._closed:
            return
        self._closed = True
        if self._lost is not None:
            self._warn("cuff_state_unknown",
                       f"the cuff connection was lost ({self._lost}); its state is unknown (last known "
                       f"{self._last_known()}); its watchdog ({self.limits.watchdog_ms} ms) should have vented it: "
                       "check that the cuff is deflated")
        elif self.cuff.info is not None:
            self._close_cuff_safely(reason)
        self._stop_guards()
        if self._close_cuff:
            try:
                self.cuff.close()
            except (OSError, CuedpainError) as exc:   # the cuff was vented above; say what did not close
                self._warn("cuff_close_failed", f"closing the cuff's connection: {exc}")

    def _close_cuff_safely(self, reason: str) -> None:
        """VENT, STATUS?, DISARM (unless latched), the release verified, STREAM 0."""
        self._try(lambda: self._send_vent(f"close: {reason}"))
        status = self._try(lambda: self._command("STATUS?", self.cuff.status, purpose="close"))
        if status is not None and not status.state.latched:
            self._try(lambda: self._command("DISARM", self.cuff.disarm, purpose="close"))
        if not self._readback:   # nothing to verify the release with; the gate-off acknowledgement is all there is
            self._try(lambda: self._command("STATUS?", self.cuff.status, purpose="close: final"))
            self._try(lambda: self._command("STREAM", lambda: self.cuff.stream(0), purpose="close"))
            return
        released = self._wait_released(self.limits.release_deadline_s)
        final = self._try(lambda: self._command("STATUS?", self.cuff.status, purpose="close: final"))
        final_kpa = None if final is None else final.pressure_kpa
        if not released and (final_kpa is None or final_kpa >= self.limits.release_threshold_kpa):
            self._warn("cuff_release_not_verified",
                       f"after closing, the cuff pressure was not verified below "
                       f"{self.limits.release_threshold_kpa:g} kPa (last known {self._last_known()}); check the cuff")
        self._try(lambda: self._command("STREAM", lambda: self.cuff.stream(0), purpose="close"))

    def __enter__(self) -> "CuffSupervisor":
        if not self._started:
            self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        self.close("end of run" if exc is None else f"exception: {type(exc).__name__}: {exc}")

    # ------------------------------------------------------------ commands and records

    def _record(self, rec: SupervisorRecord) -> None:
        if self._on_record is not None:
            try:
                self._on_record(rec)
            except Exception:  # noqa: BLE001 - a failing log must never stop a vent; the log reports itself
                pass

    def _warn(self, code: str, message: str) -> None:
        self._record({"kind": "warning", "t": self._clock.now(), "code": code, "message": message})

    def _command(self, name: str, fn: Callable[[], _Reply], *, purpose: str, tag: int | None = None,
                 planned_t: float | None = None) -> _Reply:
        """Run one driver call, log it as `cuff_cmd` (with `planned_t` when the plan timed it), trip
        on failure (then re-raise)."""
        t_call = self._clock.now()
        try:
            out = fn()
        except DeviceFault as exc:
            self._command_failed(name, exc, purpose=purpose, tag=tag, planned_t=planned_t)
            raise
        rec: CuffCmdRecord
        if isinstance(out, CuffStatus):   # log what it says, timed around the call
            rec = {"kind": "cuff_cmd", "t_write": t_call, "t_ack": self._clock.now(), "command": name,
                   "reply": out.summary(), "ok": True, "i": tag, "purpose": purpose}
            self.last_state = out.state
            if out.pressure_kpa is not None:
                self.last_pressure_kpa = out.pressure_kpa
                self._note_pressure(out.pressure_kpa)
        else:
            rec = {"kind": "cuff_cmd", "t_write": out.t_write, "t_ack": out.t_ack, "command": out.command,
                   "reply": out.reply, "ok": True, "i": tag, "purpose": purpose}
        if planned_t is not None:
            rec["planned_t"] = planned_t
        self._record(rec)
        return out

    def _command_failed(self, name: str, exc: DeviceFault, *, purpose: str, tag: int | None,
                        planned_t: float | None = None) -> None:
        ack = exc.ack if isinstance(exc, CommandRefused) else None
        rec: CuffCmdRecord = {"kind": "cuff_cmd", "t_write": ack.t_write if ack else None,
                              "t_ack": ack.t_ack if ack else None, "command": ack.command if ack else name,
                              "reply": ack.reply if ack else None, "ok": False, "i": tag, "purpose": purpose,
                              "error": exc.message}
        if planned_t is not None:
            rec["planned_t"] = planned_t
        self._record(rec)
        self._trip(_failure_code(exc, lost=self._lost is not None), f"{name} ({purpose}) failed: {exc.message}")

    def _try(self, fn: Callable[[], _T]) -> _T | None:
        try:
            return fn()
        except Exception:  # noqa: BLE001 - cleanup steps are independent; failures are logged where they happen
            return None

    def _listen(self, fn: Callable[[], object]) -> None:
        """Call a listener (the pressure recording, the live view) from the reader thread: its failure
        never stops the safety checks that follow, but the first one is said, since a recording that
        fails in silence loses data."""
        try:
            fn()
        except Exception as exc:  # noqa: BLE001 - any listener error; the interlocks must go on
            if not self._listener_failed:
                self._listener_failed = True
                self._try(lambda: self._warn("cuff_listener_failed",
                                             f"a pressure or event listener failed ({type(exc).__name__}: {exc}); "
                                             "later failures are not repeated"))

    def _device_info(self) -> DeviceInfo:
        if self.info is None:
            raise AbortError("the cuff is not identified yet", reason="safety")
        return self.info

    @property
    def _readback(self) -> bool:
        """The device measures its pressure (True until it has said otherwise)."""
        info = self.info or self.cuff.info
        return info is None or info.pressure_readback

    def _last_known(self) -> str:
        if self.last_pressure_kpa is None:
            return "nothing"
        state = self.last_state.value if self.last_state is not None else "?"
        return f"{self.last_pressure_kpa:.1f} kPa, state {state}"

    def _vent_pending_or_tripped(self) -> bool:
        """An emergency vent is queued (a signal handler's, not yet sent) or an interlock tripped."""
        return bool(self._vent_requests) or self.safety_tripped is not None or self.participant_stop_t is not None

    def _require_running(self, what: str) -> None:
        if not self._started:
            raise AbortError(f"cuff {what} before the supervisor started", reason="safety")
        if self._closed:
            raise AbortError(f"cuff {what} after the supervisor closed", reason="safety")
        if self.safety_tripped is not None:
            raise AbortError(f"cuff {what} refused: safety interlock ({self.safety_tripped}): {self.trip_message}",
                             reason="safety")
        if self.participant_stop_t is not None:
            raise AbortError(f"cuff {what} refused: the participant pressed the stop button",
                             reason="participant_stop_button")
        pending = tuple(self._vent_requests)
        if pending:
            raise AbortError(f"cuff {what} refused: an emergency vent is under way ({pending[0][1]})",
                             reason="safety")

    # ------------------------------------------------------------ trips and vents

    def _trip(self, code: str, message: str, *, action: str = "vent", t: float | None = None,
              queue_vent: bool = True) -> None:
        """Record an interlock once per reason, remember the first, and (action vent) vent."""
        with self._lock:
            if code in self._trips:
                return
            self._trips.add(code)
            if self.safety_tripped is None:
                self.safety_tripped, self.trip_message = code, message
        self._record({"kind": "safety", "t": self._clock.now() if t is None else t, "reason": code,
                      "action": action, "message": message})
        if action == "vent" and queue_vent:
            self._vent_requests.append((self._clock.now(), code))
            self._wake_guard()

    def _wake_guard(self) -> None:
        if not self._closed:
            self._guards.wake()

    def _service(self) -> None:
        """Guard work: queued vents first, then the deadline checks."""
        reasons: list[tuple[float, str]] = []
        while self._vent_requests:
            reasons.append(self._vent_requests.popleft())
        if reasons and self.cuff.info is not None:
            for t, reason in reasons:
                if reason not in self._trips:   # an emergency_vent(): trip with its reason
                    self._trip(reason, f"emergency vent: {reason}", t=t, queue_vent=False)
            self._try(lambda: self._send_vent(", ".join(r for _, r in reasons)))
        self._check_deadlines(self._clock.now())

    def _send_vent(self, reason: str) -> Ack | None:
        try:
            result = self._command("VENT", self.cuff.vent, purpose=f"vent: {reason}")
        except DeviceFault as exc:
            self._trip("vent_failed", f"VENT was not acknowledged ({exc.message}); the cuff may still be "
                       f"inflated (last known {self._last_known()}): check it", action="stop")
            return None
        self._end_stimulus(result, extra_s=0.0)
        return result

    def _end_stimulus(self, result: Ack, *, extra_s: float) -> None:
        """DEFLATE or VENT sent: close the stimulus' time account, expect the release."""
        with self._lock:
            was_active = self._active is not None
            if self._active is not None:
                self._run_inflated_s += max(0.0, result.t_write - self._active.t_start)
                self._active = None
            p = self.last_pressure_kpa
            if self._readback and (was_active or p is None or p >= self.limits.release_threshold_kpa):
                self._release_deadline = result.t_ack + extra_s + self.limits.release_deadline_s
        self._target_kpa = 0.0

    def _inflated_total(self, now: float) -> float:
        active = 0.0 if self._active is None else max(0.0, now - self._active.t_start)
        return self._run_inflated_s + active

    def _check_deadlines(self, now: float) -> None:
        with self._lock:
            trip = self._stimulus_overdue(now) or self._release_overdue(now)
        if trip is not None:
            self._trip(*trip)

    def _stimulus_overdue(self, now: float) -> tuple[str, str] | None:
        """The time limits and the reach deadline of the active stimulus (caller holds the lock)."""
        lim, st = self.limits, self._active
        if st is None:
            return None
        if now - st.t_start > lim.max_stimulus_s:
            return "stimulus_time_limit", f"a stimulus lasted over {lim.max_stimulus_s:g} s"
        if self._inflated_total(now) > lim.max_run_inflated_s:
            return "run_time_limit", f"the run's inflated time went over {lim.max_run_inflated_s:g} s"
        if not st.reached and now > st.reach_deadline:
            return ("host_compliance", f"target {st.target_kpa:g} kPa not reached in time "
                    f"(last pressure {self._last_known()}): leak or cuff off?")
        return None

    def _release_overdue(self, now: float) -> tuple[str, str] | None:
        """The release after a deflate or vent, not verified by its deadline (caller holds the lock)."""
        if self._release_deadline is None or now <= self._release_deadline:
            return None
        self._release_deadline = None
        return ("release_not_verified", f"the cuff did not fall below {self.limits.release_threshold_kpa:g} kPa "
                f"in time after deflate/vent (last known {self._last_known()})")

    # ------------------------------------------------------------ reader-thread callbacks

    def _on_event(self, ev: DeviceEvent) -> None:
        self._record({"kind": "cuff_event", "t": ev.t, "name": ev.name, "fields": dict(ev.fields)})
        self._react(ev)
        for fn in list(self._listeners):
            self._listen(lambda: fn(ev))

    def _react(self, ev: DeviceEvent) -> None:
        """What an event means for the run (policy by event kind)."""
        fault_reason = _DEVICE_FAULT_EVENTS.get(ev.kind)
        if ev.kind is EventKind.TARGET_REACHED:
            with self._lock:
                if self._active is not None:
                    self._active.reached = True
        elif ev.kind is EventKind.DEFLATED:
            self._released()
        elif fault_reason is not None:
            self._trip(fault_reason, f"the cuff reported {ev.summary()}; it vented and latched", t=ev.t)
        elif ev.kind is EventKind.ESTOP and ev.source is StopSource.BUTTON:
            self._participant_stop(ev.t)
        elif ev.kind is EventKind.ESTOP:
            source = ev.source.value if ev.source is not None else "unknown"
            self._trip("device_estop", f"the cuff latched ESTOP (source: {source})", t=ev.t)
        elif ev.kind is EventKind.BOOT and self._started:
            self._trip("device_reboot", "the cuff rebooted during the run (its settings were lost)", t=ev.t)

    def _participant_stop(self, t: float) -> None:
        """The participant's stop button: the cuff vented itself; record once, vent again, refuse more."""
        with self._lock:
            first = self.participant_stop_t is None
            if first:
                self.participant_stop_t = t
                self._trips.add("participant_stop_button")
        if first:
            self._record({"kind": "safety", "t": t, "reason": "participant_stop_button", "action": "vent",
                          "message": "the participant pressed the cuff's stop button; the cuff vented"})
            self._vent_requests.append((t, "participant_stop_button"))
            self._wake_guard()

    def _on_sample(self, sample: PressureSample) -> None:
        self.last_pressure_kpa, self.last_state = sample.pressure_kpa, sample.state
        callback = self._on_sample_cb
        if callback is not None:
            self._listen(lambda: callback(sample))
        if sample.pressure_kpa > self._armed_kpa + self.limits.overpressure_margin_kpa and self._started:
            self._trip("host_overpressure", f"pressure {sample.pressure_kpa:.1f} kPa is over the ceiling "
                       f"{self._armed_kpa:g} kPa + {self.limits.overpressure_margin_kpa:g} kPa", t=sample.t)
        self._note_pressure(sample.pressure_kpa)

    def _note_pressure(self, pressure_kpa: float) -> None:
        with self._lock:
            st = self._active
            if st is not None and not st.reached and abs(pressure_kpa - st.target_kpa) <= self.limits.reach_tolerance_kpa:
                st.reached = True
        if pressure_kpa < self.limits.release_threshold_kpa:
            self._released()

    def _released(self) -> None:
        with self._lock:
            if self._active is None:
                self._release_deadline = None
        with self._sample_cond:
            self._sample_cond.notify_all()

    def _wait_released(self, timeout_s: float) -> bool:
        def released() -> bool:
            p = self.last_pressure_kpa
            return p is not None and p < self.limits.release_threshold_kpa
        if not self._guards.threaded:
            deadline = self._clock.now() + timeout_s
            while not released() and self._clock.now() < deadline:
                self._clock.sleep(GUARD_PERIOD_S)
            return released()
        with self._sample_cond:
            return self._sample_cond.wait_for(released, timeout_s)

    def _on_lost(self, exc: BaseException) -> None:
        self._lost = exc
        self._trip("connection_lost", f"{exc}; the cuff's state is unknown (last known {self._last_known()}); "
                   f"its watchdog ({self.limits.watchdog_ms} ms) should vent it: check the cuff", action="stop")

    # ------------------------------------------------------------ heartbeat and guard

    def _heartbeat(self) -> None:
        if self._lost is not None or self._closed:
            return
        try:
            result = self.cuff.ping()
        except DeviceFault as exc:
            self._record({"kind": "cuff_cmd", "t_write": None, "t_ack": None, "command": "PING", "reply": None,
                          "ok": False, "i": None, "purpose": "heartbeat", "error": exc.message})
            self._trip(_failure_code(exc, lost=self._lost is not None), f"heartbeat failed: {exc.message}")
            return
        self.heartbeats += 1
        self._check_ping_count(result)

    def _check_ping_count(self, result: PingAck) -> None:
        """A ping counter that goes down means the device restarted (its settings are gone)."""
        n = result.count
        if n is None:
            return
        if self._last_ping_count is not None and n < self._last_ping_count:
            self._trip("device_reboot", f"the cuff's PING count went down ({self._last_ping_count} -> {n}): "
                       "it restarted", t=result.t_ack)
        self._last_ping_count = n

    def _stop_guards(self) -> None:
        """Stop the heartbeat and the guard, and join every thread; one that will not stop is logged."""
        for name in self._guards.stop(THREAD_JOIN_S):
            self._warn("cuff_thread_not_stopped",
                       f"the supervisor's thread {name} did not stop within {THREAD_JOIN_S:g} s of closing (it may "
                       "be waiting for the cuff); it is a daemon thread and ends with the program")
