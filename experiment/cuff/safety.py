"""`CuffSupervisor`: the host-side interlocks around any `Cuff`, and vent on every exit path.

The runner talks to the cuff only through this class. What it guarantees (each has a
test in tests/test_cuff_safety.py):

1. Ceiling: the protocol's maximum must not exceed the device's hard limit
   (HardwareError at start); the device is armed with the ceiling; a target above it is
   refused before anything is sent (InputError).
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

A trip records a `safety` record, vents, and sets `safety_tripped` (the reason code)
for the run's loop to poll; later stimulation is refused. The participant's stop
button is different: it vents and records, and sets `participant_stop_t`, but does not
trip, because the protocol decides whether the run ends or goes on without stimulation;
further stimulation is refused all the same.

Threads: on a real clock the heartbeat and the guard run as daemon threads. On a
`VirtualClock` (headless runs) both run from clock timers instead, so a headless run
stays single-threaded and reproducible.
"""

from __future__ import annotations

import math
import threading
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable

from experiment.clock import Clock
from experiment.cuff.base import CommandResult, Cuff, DeviceEvent, DeviceInfo, PressureSample
from experiment.cuff.line_codec import LATCHED_STATES, MAXTIME_MS, RATE_KPA_S, WDT_MS, describe_fault, floor_kpa
from experiment.errors import AbortError, DeviceFault, HardwareError, InputError

GUARD_PERIOD_S = 0.005     # guard thread: vent requests and deadline checks
VENTED_KPA = 1.0           # CUFF/1's "released" level: ARM needs the cuff below it
Record = Callable[[dict[str, Any]], None]

_DEVICE_FAULT_EVENTS = {"WATCHDOG": "device_watchdog", "TIME_LIMIT": "device_time_limit",
                        "OVERPRESSURE": "device_overpressure", "COMPLIANCE": "device_compliance"}


class LatchedFault(HardwareError):
    """The cuff is latched in FAULT or ESTOP from before: nothing starts until the operator
    has checked the cuff and the participant and cleared it on purpose (rig-check --clear-fault)."""

    def __init__(self, state: str, code: int, info: DeviceInfo) -> None:
        super().__init__(f"the cuff on {info.port} ({info.name}) is latched in {describe_fault(state, code)}; "
                         "nothing was started. Check the cuff and the participant, then clear the fault on purpose "
                         "with `cuedpain rig-check --clear-fault` (with the same --cuff or --rig)")
        self.state = state
        self.code = code


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

    def check(self) -> None:
        """InputError naming the first bad setting."""
        problems = []
        if not (math.isfinite(self.ceiling_kpa) and self.ceiling_kpa > 0):
            problems.append(f"ceiling_kpa must be above 0, got {self.ceiling_kpa}")
        if not self.max_stimulus_s > 0:
            problems.append(f"max_stimulus_s must be above 0, got {self.max_stimulus_s}")
        elif (self.max_stimulus_s + self.device_time_margin_s) * 1000 > MAXTIME_MS[1]:
            problems.append(f"max_stimulus_s {self.max_stimulus_s:g} s is beyond the device's "
                            f"MAXTIME range ({MAXTIME_MS[1] / 1000 - self.device_time_margin_s:g} s at most)")
        if not self.max_run_inflated_s > 0:
            problems.append(f"max_run_inflated_s must be above 0, got {self.max_run_inflated_s}")
        if not WDT_MS[0] <= self.watchdog_ms <= WDT_MS[1]:
            problems.append(f"watchdog_ms must be {WDT_MS[0]}-{WDT_MS[1]}, got {self.watchdog_ms}")
        if not 20 <= self.stream_hz <= 100:
            problems.append(f"stream_hz must be 20-100 (pressure trace), got {self.stream_hz}")
        if problems:
            raise InputError("cuff safety limits: " + "; ".join(problems))


@dataclass
class _Stimulus:
    target_kpa: float
    t_start: float
    reach_deadline: float = math.inf
    reached: bool = False


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
        self._threaded = not getattr(clock, "virtual", False)
        self._lock = threading.Lock()
        self._listeners: list[Callable[[DeviceEvent], None]] = []
        self.info: DeviceInfo | None = None
        self.safety_tripped: str | None = None     # reason code of the first trip
        self.trip_message: str | None = None
        self.participant_stop_t: float | None = None
        self.last_pressure_kpa: float | None = None
        self.last_state: str | None = None
        self.heartbeats = 0
        self._trips: set[str] = set()
        self._armed_kpa = 0.0
        self._rate_kpa_s: float | None = None
        self._target_kpa = 0.0
        self._active: _Stimulus | None = None
        self._run_inflated_s = 0.0
        self._release_deadline: float | None = None
        self._last_ping_n: int | None = None
        self._lost: BaseException | None = None
        self._vent_requests: deque[tuple[float, str]] = deque()
        self._vent_event = threading.Event()
        self._stop = threading.Event()
        self._sample_cond = threading.Condition()
        self._threads: list[threading.Thread] = []
        self._timer: int | None = None
        self._next_ping = 0.0
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
        """Identify, check the ceiling, configure (WDT, MAXTIME, ARM, STREAM), start the heartbeat.

        HardwareError when the device is unfit or fails here; the cuff is left vented.
        """
        lim = self.limits
        info = self.cuff.info or self.cuff.connect()
        self.info = info
        if lim.ceiling_kpa > info.hard_limit_kpa:
            raise HardwareError(f"the protocol's maximum pressure {lim.ceiling_kpa:g} kPa exceeds the hard limit "
                                f"{info.hard_limit_kpa:g} kPa of the cuff on {info.port} ({info.name}); "
                                "lower the protocol's maximum")
        self.cuff.set_listeners(on_event=self._on_event, on_sample=self._on_sample, on_lost=self._on_lost)
        try:
            status = self._command("STATUS?", self.cuff.status, purpose="start")
            self._wait_vented_at_start(status.pressure_kpa)
            if status.state in LATCHED_STATES:
                raise LatchedFault(status.state, status.error_code, info)
            if status.state != "IDLE":
                self._command("VENT", self.cuff.vent, purpose="start: not idle")
                self._command("DISARM", self.cuff.disarm, purpose="start: not idle")
            self._command("WDT", lambda: self.cuff.set_watchdog(lim.watchdog_ms), purpose="start")
            self._start_guards()
            self._command("MAXTIME", lambda: self.cuff.set_max_time(
                math.ceil((lim.max_stimulus_s + lim.device_time_margin_s) * 1000)), purpose="start")
            armed = self._command("ARM", lambda: self.cuff.arm(lim.ceiling_kpa), purpose="start")
            self._armed_kpa = float(armed.fields.get("max", floor_kpa(lim.ceiling_kpa)))
            self._command("STREAM", lambda: self.cuff.stream(lim.stream_hz), purpose="start")
        except LatchedFault as exc:
            self._record({"kind": "safety", "t": self._clock.now(), "reason": "latched_at_start", "action": "refuse",
                          "message": exc.message})
            self._try(lambda: self.cuff.vent())
            raise
        except DeviceFault as exc:
            self._stop_guards()
            self._try(lambda: self.cuff.vent())
            raise HardwareError(f"cuff on {info.port} failed while being set up: {exc.message}") from exc
        self._started = True
        return info

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
            pressure_kpa = self._command("STATUS?", self.cuff.status, purpose="start: wait vented").pressure_kpa

    def stimulate(self, target_kpa: float, rate_kpa_s: float, *, tag: int | None = None) -> CommandResult:
        """Ramp to `target_kpa` at `rate_kpa_s` (RATE if changed, then SET). `tag`: plan index (`i`)."""
        self._require_running("stimulate")
        if not (math.isfinite(target_kpa) and target_kpa > 0):
            raise InputError(f"cuff target must be a pressure above 0 kPa, got {target_kpa!r}")
        if not (math.isfinite(rate_kpa_s) and RATE_KPA_S[0] <= rate_kpa_s <= RATE_KPA_S[1]):
            raise InputError(f"cuff ramp rate must be {RATE_KPA_S[0]:g}-{RATE_KPA_S[1]:g} kPa/s, got {rate_kpa_s!r}")
        if round(target_kpa, 1) > self._armed_kpa:
            message = (f"target {target_kpa:g} kPa is above the ceiling {self._armed_kpa:g} kPa; "
                       "refused, nothing was sent to the cuff")
            self._record({"kind": "safety", "t": self._clock.now(), "reason": "over_ceiling", "action": "refuse",
                          "message": message, "i": tag})
            raise InputError(message)
        now = self._clock.now()
        new = False
        with self._lock:
            if self._inflated_total(now) >= self.limits.max_run_inflated_s:
                budget_spent = True
            else:
                budget_spent = False
                new = self._active is None
                if new:
                    self._active = _Stimulus(target_kpa, now)
                else:
                    self._active.target_kpa, self._active.reached = target_kpa, False
                    self._active.reach_deadline = math.inf
                self._release_deadline = None
        if budget_spent:
            self._trip("run_time_limit", f"the run's inflated time limit ({self.limits.max_run_inflated_s:g} s) "
                       "is used up; no further stimulus", action="stop")
            raise AbortError(self.trip_message or "run time limit", reason="safety")
        try:
            if rate_kpa_s != self._rate_kpa_s:
                self._command("RATE", lambda: self.cuff.set_rate(rate_kpa_s), purpose="stimulate", tag=tag)
                self._rate_kpa_s = rate_kpa_s
            result = self._command("SET", lambda: self.cuff.set_target(target_kpa), purpose="stimulate", tag=tag)
        except DeviceFault:
            with self._lock:
                if new:
                    self._active = None
            raise
        eta_s = _eta_s(result, fallback_s=abs(target_kpa - (self.last_pressure_kpa or 0.0)) / rate_kpa_s)
        with self._lock:
            if self._active is not None:
                if new:
                    self._active.t_start = result.t_write
                self._active.reach_deadline = result.t_ack + eta_s + self.limits.compliance_margin_s
        self._target_kpa = target_kpa
        return result

    def deflate(self, *, tag: int | None = None) -> CommandResult:
        """Ramp down at the current rate; the release is then verified by read-back."""
        self._require_running("deflate")
        result = self._command("DEFLATE", self.cuff.deflate, purpose="deflate", tag=tag)
        self._end_stimulus(result, extra_s=_eta_s(result, fallback_s=0.0))
        return result

    def vent(self, reason: str, *, tag: int | None = None) -> CommandResult:
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
        now = self._clock.now()
        self._vent_requests.append((now, reason))
        if not self._threaded and not self._closed:
            self._clock.call_at(now, self._service)  # type: ignore[attr-defined]

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
        lost = self._lost is not None
        if not lost and self.cuff.info is not None:
            self._try(lambda: self._send_vent(f"close: {reason}"))
            status = self._try(lambda: self._command("STATUS?", self.cuff.status, purpose="close"))
            if status is not None and status.state not in LATCHED_STATES:
                self._try(lambda: self._command("DISARM", self.cuff.disarm, purpose="close"))
            released = self._wait_released(self.limits.release_deadline_s)
            final = self._try(lambda: self._command("STATUS?", self.cuff.status, purpose="close: final"))
            if final is not None:
                self.last_pressure_kpa, self.last_state = final.pressure_kpa, final.state
            if not released and (final is None or final.pressure_kpa >= self.limits.release_threshold_kpa):
                self._warn("cuff_release_not_verified",
                           f"after closing, the cuff pressure was not verified below "
                           f"{self.limits.release_threshold_kpa:g} kPa (last known {self._last_known()}); check the cuff")
            self._try(lambda: self._command("STREAM", lambda: self.cuff.stream(0), purpose="close"))
        elif lost:
            self._warn("cuff_state_unknown",
                       f"the cuff connection was lost ({self._lost}); its state is unknown (last known "
                       f"{self._last_known()}); its watchdog ({self.limits.watchdog_ms} ms) should have vented it: "
                       "check that the cuff is deflated")
        self._stop_guards()
        if self._close_cuff:
            self._try(self.cuff.close)

    def __enter__(self) -> "CuffSupervisor":
        if not self._started:
            self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        self.close("end of run" if exc is None else f"exception: {exc_type.__name__}: {exc}")

    # ------------------------------------------------------------ commands and records

    def _record(self, rec: dict[str, Any]) -> None:
        if self._on_record is not None:
            try:
                self._on_record(rec)
            except Exception:  # noqa: BLE001 - a failing log must never stop a vent; the log reports itself
                pass

    def _warn(self, code: str, message: str) -> None:
        self._record({"kind": "warning", "t": self._clock.now(), "code": code, "message": message})

    def _command(self, name: str, fn: Callable[[], Any], *, purpose: str, tag: int | None = None) -> Any:
        """Run one driver call, log it as `cuff_cmd`, trip on failure (then re-raise)."""
        t_call = self._clock.now()
        try:
            out = fn()
        except DeviceFault as exc:
            result = getattr(exc, "result", None)
            self._record({"kind": "cuff_cmd", "t_write": getattr(result, "t_write", None),
                          "t_ack": getattr(result, "t_ack", None), "command": getattr(result, "command", name),
                          "reply": getattr(result, "reply", None), "ok": False, "i": tag, "purpose": purpose,
                          "error": exc.message})
            code = "connection_lost" if self._lost is not None else ("error_reply" if result is not None else "no_reply")
            self._trip(code, f"{name} ({purpose}) failed: {exc.message}")
            raise
        if isinstance(out, CommandResult):
            self._record({"kind": "cuff_cmd", "t_write": out.t_write, "t_ack": out.t_ack,
                          "command": out.command, "reply": out.reply, "ok": True, "i": tag, "purpose": purpose})
        else:   # status() returns a CuffStatus: log what it says, timed around the call
            self._record({"kind": "cuff_cmd", "t_write": t_call, "t_ack": self._clock.now(), "command": name,
                          "reply": f"st={out.state} p={out.pressure_kpa:.1f} tgt={out.target_kpa:.1f} "
                                   f"max={out.armed_max_kpa:.1f} err={out.error_code}",
                          "ok": True, "i": tag, "purpose": purpose})
            self.last_pressure_kpa, self.last_state = out.pressure_kpa, out.state
            self._note_pressure(out.pressure_kpa)
        return out

    def _try(self, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except Exception:  # noqa: BLE001 - cleanup steps are independent; failures are logged where they happen
            return None

    def _last_known(self) -> str:
        if self.last_pressure_kpa is None:
            return "nothing"
        return f"{self.last_pressure_kpa:.1f} kPa, state {self.last_state or '?'}"

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
        if self._closed:
            return
        if not self._threaded:   # headless: at once in virtual time, from the clock's own loop
            self._clock.call_at(self._clock.now(), self._service)  # type: ignore[attr-defined]
        elif any(t.is_alive() for t in self._threads):
            self._vent_event.set()
        else:  # before start or after the guards stopped: a one-shot thread does it
            threading.Thread(target=self._service, name="cuff-vent", daemon=True).start()

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

    def _send_vent(self, reason: str) -> CommandResult | None:
        try:
            result = self._command("VENT", self.cuff.vent, purpose=f"vent: {reason}")
        except DeviceFault as exc:
            self._trip("vent_failed", f"VENT was not acknowledged ({exc.message}); the cuff may still be "
                       f"inflated (last known {self._last_known()}): check it", action="stop")
            return None
        self._end_stimulus(result, extra_s=0.0)
        return result

    def _end_stimulus(self, result: CommandResult, *, extra_s: float) -> None:
        """DEFLATE or VENT sent: close the stimulus' time account, expect the release."""
        with self._lock:
            was_active = self._active is not None
            if self._active is not None:
                self._run_inflated_s += max(0.0, result.t_write - self._active.t_start)
                self._active = None
            p = self.last_pressure_kpa
            if was_active or p is None or p >= self.limits.release_threshold_kpa:
                self._release_deadline = result.t_ack + extra_s + self.limits.release_deadline_s
        self._target_kpa = 0.0

    def _inflated_total(self, now: float) -> float:
        active = 0.0 if self._active is None else max(0.0, now - self._active.t_start)
        return self._run_inflated_s + active

    def _check_deadlines(self, now: float) -> None:
        lim = self.limits
        trip: tuple[str, str] | None = None
        with self._lock:
            st = self._active
            if st is not None:
                if now - st.t_start > lim.max_stimulus_s:
                    trip = ("stimulus_time_limit", f"a stimulus lasted over {lim.max_stimulus_s:g} s")
                elif self._inflated_total(now) > lim.max_run_inflated_s:
                    trip = ("run_time_limit", f"the run's inflated time went over {lim.max_run_inflated_s:g} s")
                elif not st.reached and now > st.reach_deadline:
                    trip = ("host_compliance", f"target {st.target_kpa:g} kPa not reached in time "
                            f"(last pressure {self._last_known()}): leak or cuff off?")
            if trip is None and self._release_deadline is not None and now > self._release_deadline:
                self._release_deadline = None
                trip = ("release_not_verified", f"the cuff did not fall below {lim.release_threshold_kpa:g} kPa "
                        f"in time after deflate/vent (last known {self._last_known()})")
        if trip is not None:
            self._trip(*trip)

    # ------------------------------------------------------------ reader-thread callbacks

    def _on_event(self, ev: DeviceEvent) -> None:
        self._record({"kind": "cuff_event", "t": ev.t, "name": ev.name, "fields": dict(ev.fields)})
        if ev.name == "TARGET_REACHED":
            with self._lock:
                if self._active is not None:
                    self._active.reached = True
        elif ev.name == "DEFLATED":
            self._released()
        elif ev.name in _DEVICE_FAULT_EVENTS:
            fields = " ".join(f"{k}={v}" for k, v in ev.fields.items())
            self._trip(_DEVICE_FAULT_EVENTS[ev.name], f"the cuff reported {ev.name} {fields}".rstrip()
                       + "; it vented and latched", t=ev.t)
        elif ev.name == "ESTOP" and ev.fields.get("src") == "button":
            with self._lock:
                first = self.participant_stop_t is None
                if first:
                    self.participant_stop_t = ev.t
                    self._trips.add("participant_stop_button")
            if first:
                self._record({"kind": "safety", "t": ev.t, "reason": "participant_stop_button", "action": "vent",
                              "message": "the participant pressed the cuff's stop button; the cuff vented"})
                self._vent_requests.append((ev.t, "participant_stop_button"))
                self._wake_guard()
        elif ev.name == "ESTOP":
            self._trip("device_estop", f"the cuff latched ESTOP ({ev.fields})", t=ev.t)
        elif ev.name == "BOOT" and self._started:
            self._trip("device_reboot", "the cuff rebooted during the run (its settings were lost)", t=ev.t)
        for fn in list(self._listeners):
            self._try(lambda: fn(ev))

    def _on_sample(self, sample: PressureSample) -> None:
        self.last_pressure_kpa, self.last_state = sample.pressure_kpa, sample.state
        if self._on_sample_cb is not None:
            self._try(lambda: self._on_sample_cb(sample))
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
        if not self._threaded:
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
            code = "connection_lost" if self._lost is not None else "no_reply"
            self._trip(code, f"heartbeat failed: {exc.message}")
            return
        self.heartbeats += 1
        n_text = result.fields.get("n")
        if n_text is not None and n_text.isdigit():
            n = int(n_text)
            if self._last_ping_n is not None and n < self._last_ping_n:
                self._trip("device_reboot", f"the cuff's PING count went down ({self._last_ping_n} -> {n}): "
                           "it restarted", t=result.t_ack)
            self._last_ping_n = n

    def _start_guards(self) -> None:
        period_s = self.limits.watchdog_ms / 4000
        if not self._threaded:
            self._next_ping = self._clock.now()
            self._timer = self._clock.call_at(self._clock.now(), self._virtual_tick)  # type: ignore[attr-defined]
            return

        def heartbeat_loop() -> None:
            while not self._stop.wait(period_s):
                self._heartbeat()

        def guard_loop() -> None:
            while not self._stop.is_set():
                self._vent_event.wait(GUARD_PERIOD_S)
                self._vent_event.clear()
                self._service()

        self._threads = [threading.Thread(target=heartbeat_loop, name="cuff-heartbeat", daemon=True),
                         threading.Thread(target=guard_loop, name="cuff-guard", daemon=True)]
        for t in self._threads:
            t.start()

    def _virtual_tick(self) -> None:
        if self._stop.is_set():
            return
        now = self._clock.now()
        if now >= self._next_ping:
            period_s = self.limits.watchdog_ms / 4000
            self._next_ping = max(self._next_ping + period_s, now)
            self._heartbeat()
        self._service()
        self._timer = self._clock.call_at(now + GUARD_PERIOD_S, self._virtual_tick)  # type: ignore[attr-defined]

    def _stop_guards(self) -> None:
        self._stop.set()
        self._vent_event.set()
        for t in self._threads:
            if t is not threading.current_thread():
                t.join(2.0)
        if self._timer is not None:
            self._clock.cancel(self._timer)  # type: ignore[attr-defined]
            self._timer = None


def _eta_s(result: CommandResult, *, fallback_s: float) -> float:
    eta = result.fields.get("eta_ms")
    return int(eta) / 1000 if eta is not None and eta.isdigit() else fallback_s
