"""Simulated CUFF/1 firmware: the state machine of docs/cuff-protocol.md on a pneumatic model.

A `ByteDevice`: the host's bytes go in through `receive`, the device's bytes come out
through the `write` given to `attach`, and time moves only when the caller says
(`advance(now)`). No clock is read and no port is touched here, so the same firmware
runs on a pseudo-terminal in real time (simserver.py) or in-process on a virtual clock
(transport.LoopbackTransport), and its tests are deterministic.

Every decision the firmware makes (target reached, deflated, overpressure, time limit,
compliance) uses the noisy sensor reading, as real firmware must; tests read the true
pressure through `pressure_kpa`. Thresholds read "below T" or "T or more", and readings
go on the wire rounded down (`format_reading_kpa`), so a reported pressure is always on
the side of its threshold that the firmware decided.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Callable

from experiment.cuff.bytedevice import ByteDevice
from experiment.cuff.line_codec import (ARMED_STATES, FAULT_CODES, LATCHED_STATES, PROTOCOL_VERSION,
                                        SIM_NAME_PREFIX, CodecError, Command, LineSplitter, RawLine, format_err,
                                        format_event, format_kpa, format_ok, format_reading_kpa,
                                        format_telemetry, parse_command)
from experiment.cuff.pneumatics import CuffPneumatics

__all__ = ["ByteDevice", "SimCuffDevice", "SIM_DEVICE_NAME"]

SIM_DEVICE_NAME = SIM_NAME_PREFIX      # the host treats "cuedpain-sim*" as simulated
STEP_S = 0.002                         # physics and firmware step
REACHED_KPA = 0.5                      # TARGET_REACHED when within this of the target
RELEASED_KPA = 1.0                     # below: deflated; this or more: holds air (MAXTIME counts)
OVERPRESSURE_MARGIN_KPA = 2.0          # armed max + this -> OVERPRESSURE
COMPLIANCE_GRACE_S = 2.0               # RAMP must reach the target by eta + this
HOLD_SAG_KPA = 2.0                     # HOLD below target - this ...
HOLD_SAG_S = 1.0                       # ... for this long -> COMPLIANCE
DEFAULT_RATE_KPA_S = 5.0
DEFAULT_MAXTIME_MS = 600000

_FAULT_NAMES = {code: name for name, code in FAULT_CODES.items()}

_Result = tuple[bytes, Callable[[], None] | None]   # reply, and what happens after it is sent


class SimCuffDevice:
    """CUFF/1 firmware on a `CuffPneumatics` model (see docs/cuff-protocol.md).

    `allow_sim=False` makes it answer the SIM fault-injection commands with ERR 10,
    as real firmware does. Its HELLO always names it `cuedpain-sim`: there is no option
    that makes the simulator pass for a device (a real run refuses a simulated cuff).
    """

    name = SIM_DEVICE_NAME
    serial = "SIM-0001"

    def __init__(self, *, hard_limit_kpa: float = 100.0, firmware: str = "1.0.0", seed: int = 0,
                 leak_kpa_s: float = 0.0, allow_sim: bool = True,
                 pneumatics: CuffPneumatics | None = None) -> None:
        self.hard_limit_kpa = float(hard_limit_kpa)
        self.firmware = firmware
        self.allow_sim = allow_sim
        self._air = pneumatics or CuffPneumatics(seed=seed, leak_kpa_s=leak_kpa_s)
        self._write: Callable[[bytes], None] = lambda data: None
        self.vent_log: list[tuple[float, str]] = []
        self._now: float | None = None
        self._boot_t = 0.0
        self._rx = LineSplitter()
        self._reset()

    # ------------------------------------------------------------ ByteDevice

    def attach(self, write: Callable[[bytes], None]) -> None:
        self._write = write

    def on_port_open(self, now: float) -> None:
        self.advance(now)
        self._rx = LineSplitter()     # a half line from an earlier connection is gone
        self._emit(format_event("BOOT", {"fw": self.firmware}))

    def receive(self, data: bytes, now: float) -> None:
        self.advance(now)
        if now < self._silent_until:
            return                    # the serial stack is hung: input is lost
        for raw in self._rx.feed(data):
            self._handle(raw, now)

    def advance(self, now: float) -> None:
        if self._now is None:
            self._now = self._boot_t = now
        while self._now < now:
            t = min(self._now + STEP_S, now)
            self._air.advance(t - self._now)
            self._now = t
            self._tick(t)
        while self._delayed and self._delayed[0][0] <= now:
            self._emit(self._delayed.popleft()[1])

    @property
    def pressure_kpa(self) -> float:
        return self._air.pressure_kpa

    @property
    def state(self) -> str:
        return self._state

    # ------------------------------------------------------------ read-only extras for tests

    @property
    def armed_max_kpa(self) -> float:
        return self._max

    @property
    def fault_code(self) -> int:
        return self._fault

    @property
    def watchdog_ms(self) -> int | None:
        return None if self._wdt_s is None else round(self._wdt_s * 1000)

    # ------------------------------------------------------------ firmware

    def _reset(self) -> None:
        """Power-up state: vented, disarmed, defaults."""
        self._air.vent()
        self._state = "IDLE"
        self._max = 0.0
        self._target = 0.0
        self._rate = DEFAULT_RATE_KPA_S
        self._wdt_s: float | None = None          # off until the host sets it
        self._wdt_deadline: float | None = None
        self._maxtime_s = DEFAULT_MAXTIME_MS / 1000
        self._above_since: float | None = None
        self._stream_hz = 0
        self._next_sample = 0.0
        self._fault = 0
        self._pings = 0
        self._reach_deadline: float | None = None
        self._sag_since: float | None = None
        self._silent_until = -math.inf
        self._delay_s = 0.0
        self._delayed: deque[tuple[float, bytes]] = deque()
        self._deferred: list[bytes] | None = None
        self._p_meas = 0.0

    def _ms(self, t: float) -> int:
        return int(round((t - self._boot_t) * 1000))

    def _tick(self, t: float) -> None:
        """One firmware loop iteration at time `t` (after the physics step)."""
        p = self._p_meas = self._air.read_kpa()
        st = self._state
        if st not in LATCHED_STATES:
            if st in ARMED_STATES and self._wdt_deadline is not None and t >= self._wdt_deadline:
                self._latch("WATCHDOG", t, {"ms": round(self._wdt_s * 1000)} if self._wdt_s else {})
            elif p >= (self._max if st in ARMED_STATES else self.hard_limit_kpa) + OVERPRESSURE_MARGIN_KPA:
                self._latch("OVERPRESSURE", t, {"p": format_reading_kpa(p)})
            elif self._above_since is not None and t - self._above_since > self._maxtime_s:
                self._latch("TIME_LIMIT", t, {"ms": round(self._maxtime_s * 1000)})
            else:
                self._regulate(t, p)
        if p >= RELEASED_KPA and self._state not in LATCHED_STATES:
            self._above_since = t if self._above_since is None else self._above_since
        else:
            self._above_since = None
        if self._stream_hz and t >= self._next_sample:
            self._emit(format_telemetry(self._ms(t), p, self._target, self._state))
            period = 1.0 / self._stream_hz
            self._next_sample = max(self._next_sample + period, t + period / 2)

    def _regulate(self, t: float, p: float) -> None:
        """RAMP -> HOLD, HOLD sag, DEFLATING -> ARMED."""
        if self._state == "RAMP":
            if abs(p - self._target) <= REACHED_KPA:
                self._state = "HOLD"
                self._reach_deadline = None
                self._emit(format_event("TARGET_REACHED", {"p": format_reading_kpa(p)}))
            elif self._reach_deadline is not None and t > self._reach_deadline:
                self._latch("COMPLIANCE", t, {"p": format_reading_kpa(p), "tgt": format_kpa(self._target)})
        elif self._state == "HOLD":
            if p < self._target - HOLD_SAG_KPA:
                self._sag_since = t if self._sag_since is None else self._sag_since
                if t - self._sag_since > HOLD_SAG_S:
                    self._latch("COMPLIANCE", t, {"p": format_reading_kpa(p), "tgt": format_kpa(self._target)})
            else:
                self._sag_since = None
        elif self._state == "DEFLATING" and p < RELEASED_KPA:
            self._state = "ARMED"
            self._air.vent()           # open the valve for the last kPa (not an emergency vent)
            self._emit(format_event("DEFLATED", {"p": format_reading_kpa(p)}))

    def _vent(self, t: float, reason: str) -> None:
        self._air.vent()
        self._target = 0.0
        self._reach_deadline = None
        self._sag_since = None
        self.vent_log.append((t, reason))

    def _latch(self, name: str, t: float, fields: dict[str, object]) -> None:
        """A 3x fault: vent, latch FAULT (ESTOP for ESTOP), announce it."""
        self._vent(t, name)
        self._state = "ESTOP" if name == "ESTOP" else "FAULT"
        self._fault = FAULT_CODES[name]
        self._emit(format_event(name, fields))

    def _feed(self, now: float) -> None:
        if self._wdt_s is not None:
            self._wdt_deadline = now + self._wdt_s

    # ------------------------------------------------------------ output

    def _emit(self, data: bytes) -> None:
        if self._deferred is not None:       # events caused by a command follow its reply
            self._deferred.append(data)
        elif (self._now or 0.0) >= self._silent_until:
            self._write(data)

    def _reply(self, data: bytes, now: float) -> None:
        if self._delay_s > 0 or self._delayed:   # keep replies in order when the delay changes
            due = max(now + self._delay_s, self._delayed[-1][0] if self._delayed else now)
            self._delayed.append((due, data))
        else:
            self._emit(data)

    # ------------------------------------------------------------ commands

    def _handle(self, raw: RawLine, now: float) -> None:
        if raw.overflow:
            self._reply(format_err(12), now)
            return
        try:
            cmd = parse_command(raw.data, allow_sim=self.allow_sim)
        except CodecError as exc:
            self._reply(format_err(exc.code, exc.detail), now)
            return
        if cmd is None:
            return                            # blank line: no command, no reply
        self._deferred = []
        try:
            reply, after = self._execute(cmd, now)
        finally:
            deferred, self._deferred = self._deferred, None
        self._reply(reply, now)
        if reply.startswith(b"OK"):
            self._feed(now)
        for data in deferred:
            self._emit(data)
        if after is not None:
            after()

    def _latched_err(self) -> bytes:
        return format_err(22, _FAULT_NAMES.get(self._fault, ""))

    def _execute(self, cmd: Command, now: float) -> _Result:
        name = cmd.name
        st = self._state
        latched = st in LATCHED_STATES
        if name == "HELLO":
            return format_ok("HELLO", {"dev": self.name, "fw": self.firmware, "proto": PROTOCOL_VERSION,
                                       "hard": format_kpa(self.hard_limit_kpa), "sn": self.serial}), None
        if name == "PING":
            self._pings += 1
            return format_ok("PING", {"n": self._pings}), None
        if name == "WDT":
            self._wdt_s = int(cmd.value) / 1000
            return format_ok("WDT", {"ms": int(cmd.value)}), None
        if name == "MAXTIME":
            self._maxtime_s = int(cmd.value) / 1000
            return format_ok("MAXTIME", {"ms": int(cmd.value)}), None
        if name == "RATE":
            self._rate = float(cmd.value)
            if st in ("RAMP", "DEFLATING"):
                self._air.rate_kpa_s = self._rate
            return format_ok("RATE", {"kpa_s": format_kpa(self._rate)}), None
        if name == "STREAM":
            self._stream_hz = int(cmd.value)
            self._next_sample = now + (1.0 / self._stream_hz if self._stream_hz else 0.0)
            return format_ok("STREAM", {"hz": self._stream_hz}), None
        if name == "STATUS?":
            return format_ok("STATUS", {"st": st, "p": format_reading_kpa(self._p_meas),
                                        "tgt": format_kpa(self._target),
                                        "max": format_kpa(self._max), "hard": format_kpa(self.hard_limit_kpa),
                                        "err": self._fault}), None
        if name == "VENT":
            self._vent(now, "VENT")
            if st in ARMED_STATES:
                self._state = "ARMED"
            return format_ok("VENT"), None
        if name == "ESTOP":
            return format_ok("ESTOP"), lambda: self._latch("ESTOP", now, {"src": "host"})
        if name == "CLEAR":
            if self._p_meas >= RELEASED_KPA:
                return format_err(24, f"p={format_reading_kpa(self._p_meas)}"), None
            self._air.vent()
            self._state, self._max, self._target, self._fault = "IDLE", 0.0, 0.0, 0
            return format_ok("CLEAR"), None
        if name == "ARM":
            if latched:
                return self._latched_err(), None
            if st not in ("IDLE", "ARMED"):
                return format_err(13, f"st={st}"), None
            if self._p_meas >= RELEASED_KPA:
                return format_err(13, f"not vented p={format_reading_kpa(self._p_meas)}"), None
            if cmd.value > self.hard_limit_kpa:
                return format_err(20, f"hard={format_kpa(self.hard_limit_kpa)}"), None
            if cmd.value <= 0:
                return format_err(11, "ARM needs a ceiling above 0"), None
            self._state, self._max = "ARMED", float(cmd.value)
            return format_ok("ARM", {"max": format_kpa(self._max)}), None
        if name == "DISARM":
            if latched:
                return self._latched_err(), None
            self._vent(now, "DISARM")
            self._state, self._max = "IDLE", 0.0
            return format_ok("DISARM"), None
        if name in ("SET", "DEFLATE"):
            if latched:
                return self._latched_err(), None
            if st == "IDLE":
                return format_err(21), None
            return self._set(now, float(cmd.value)) if name == "SET" else self._deflate(now)
        return self._execute_sim(cmd, now)

    def _set(self, now: float, target_kpa: float) -> _Result:
        if target_kpa > self._max:
            return format_err(20, f"max={format_kpa(self._max)}"), None
        self._target = target_kpa
        self._air.regulate(target_kpa, self._rate)
        self._state = "RAMP"
        eta_s = abs(target_kpa - self._p_meas) / self._rate
        self._reach_deadline = now + eta_s + COMPLIANCE_GRACE_S
        self._sag_since = None
        return format_ok("SET", {"tgt": format_kpa(target_kpa), "eta_ms": math.ceil(eta_s * 1000)}), None

    def _deflate(self, now: float) -> _Result:
        self._target = 0.0
        self._reach_deadline = None
        self._air.regulate(0.0, self._rate)
        self._state = "DEFLATING"
        eta_ms = math.ceil(max(self._p_meas, 0.0) / self._rate * 1000)
        return format_ok("DEFLATE", {"eta_ms": eta_ms}), None

    def _execute_sim(self, cmd: Command, now: float) -> _Result:
        name = cmd.name
        if name == "SIM BUTTON":
            return format_ok(name), lambda: self._latch("ESTOP", now, {"src": "button"})
        if name == "SIM LEAK":
            self._air.leak_kpa_s = float(cmd.value)
            return format_ok(name, {"kpa_s": format_kpa(float(cmd.value))}), None
        if name == "SIM SILENT":
            def go_silent() -> None:
                self._silent_until = now + int(cmd.value) / 1000
            return format_ok(name, {"ms": int(cmd.value)}), go_silent
        if name == "SIM DELAY":
            def set_delay() -> None:
                self._delay_s = int(cmd.value) / 1000
            return format_ok(name, {"ms": int(cmd.value)}), set_delay
        if name == "SIM OVERPRESSURE":
            ceiling = self._max if self._state in ARMED_STATES else self.hard_limit_kpa
            return format_ok(name), lambda: self._air.surge(ceiling + OVERPRESSURE_MARGIN_KPA + 5.0)
        if name == "SIM REBOOT":
            return format_ok(name), lambda: self._reboot(now)
        raise AssertionError(name)  # pragma: no cover - parse_command admits only known names

    def _reboot(self, now: float) -> None:
        """Power cycle: everything back to defaults, the cuff dumps, BOOT is announced."""
        self.vent_log.append((now, "REBOOT"))
        self._reset()
        self._boot_t = now
        self._rx = LineSplitter()
        self._emit(format_event("BOOT", {"fw": self.firmware}))
