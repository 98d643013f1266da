"""A simulated Nocitech CPAR that speaks the binary protocol (a `ByteDevice`).

It is a firmware model, not a copy of the real firmware (which is not public):
* functions: DeviceIdentification, KickWatchdog, SetWaveformProgram (replies with the
  CRC-8 of the instruction bytes), Start/ForceStart/StopStimulation; NACK 0x01 for an
  unknown function, 0x02 for bad content, a start or a waveform upload while
  stimulating, a start in EMERGENCY;
* a waveform interpreter per outlet at 20 Hz (NOP/INC/DEC/STEP, repeat);
* pressure follows the waveform target with a first-order lag and drops to 0 at once on
  every stop (the CPAR dumps its cuff; it has no slow deflation);
* StatusMessage (0x80) every interpreter tick (20 Hz), EventMessage (0x81) on events;
* stop conditions: waveform completed, STOP_BUTTON_PRESSED (test hook), EMERGENCY
  (test hook), MAXIMAL_TIME_EXCEEDED (10 min), OUT_OF_COMPLIANCE (target not followed),
  COMM_WATCHDOG.

Assumptions (not published for the real device; see docs/cpar.md): the device watchdog
expires `watchdog_timeout_s` = 5 s after the last KickWatchdog (the maker's host kicks
every 2 s; no other function feeds it); compliance fails when the cuff lags its target
by more than 10 kPa for 2 s; the update counter counts 20 Hz ticks since power-up.

Time only enters through the `now` arguments, so it runs the same on a VirtualClock
and on a pseudo-terminal in real time. A lock makes the test hooks safe to call from
another thread than the one serving the port.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from typing import Callable

from experiment.clock import Clock
from experiment.cuff import cpar_codec as codec

DEFAULT_WATCHDOG_TIMEOUT_S = 5.0
SUPPLY_KPA = 500.0


@dataclass
class _Outlet:
    """One waveform interpreter and the cuff pressure on its outlet."""

    program: codec.WaveformProgram | None = None
    pc: int = 0
    steps_left: int = 0
    repeats_left: int = 0
    target_q8: int = 0              # 1/256 pressure units
    pressure_kpa: float = 0.0
    final_kpa: float = 0.0

    @property
    def target_kpa(self) -> float:
        return self.target_q8 / 256.0 / codec.UNITS_PER_KPA

    def start(self) -> None:
        self.pc, self.target_q8 = 0, 0
        prog = self.program
        self.repeats_left = prog.repeat if prog and prog.instructions else 0
        self.steps_left = prog.instructions[0].steps if prog and self.repeats_left else 0

    @property
    def done(self) -> bool:
        return self.repeats_left == 0

    def tick(self) -> None:
        """Execute one 20 Hz step of the current instruction."""
        if self.done or self.program is None:
            return
        instr = self.program.instructions[self.pc]
        top = 255 * 256
        if instr.kind == codec.INC:
            self.target_q8 = min(top, self.target_q8 + instr.argument_q8)
        elif instr.kind == codec.DEC:
            self.target_q8 = max(0, self.target_q8 - instr.argument_q8)
        elif instr.kind == codec.STEP:
            self.target_q8 = min(top, instr.argument_q8)
        self.steps_left -= 1
        if self.steps_left > 0:
            return
        self.pc += 1
        if self.pc == len(self.program.instructions):
            self.pc = 0
            self.repeats_left -= 1
        if self.repeats_left:
            self.steps_left = self.program.instructions[self.pc].steps


class CparSimDevice:
    """Simulated CPAR firmware and pneumatics; implements the ByteDevice interface."""

    def __init__(self, *, firmware: str = "nocitech", start_s: float | None = None,
                 watchdog_timeout_s: float = DEFAULT_WATCHDOG_TIMEOUT_S,
                 max_stimulation_s: float = codec.MAX_STIMULATION_S,
                 time_constant_s: float = 0.1, compliance_kpa: float = 10.0,
                 compliance_s: float = 2.0) -> None:
        self.fw = codec.firmware_table(firmware)
        self.watchdog_timeout_s = watchdog_timeout_s
        self.max_stimulation_s = max_stimulation_s
        self.time_constant_s = time_constant_s
        self.compliance_kpa = compliance_kpa
        self.compliance_s = compliance_s
        self.vent_log: list[tuple[float, str]] = []
        self._write: Callable[[bytes], None] | None = None
        self._lock = threading.RLock()
        self._destuffer = codec.Destuffer()
        self._leak_kpa_s = 0.0
        self._nack_next: int | None = None
        self._power_up(0.0 if start_s is None else start_s)
        self._t0: float | None = start_s      # power-up time; None: the first `now` seen

    # ------------------------------------------------------------ ByteDevice

    def attach(self, write: Callable[[bytes], None]) -> None:
        with self._lock:
            self._write = write

    def on_port_open(self, now: float) -> None:
        """A host opened the port: its watchdog clock starts now (assumption)."""
        with self._lock:
            self.advance(now)
            self._destuffer.reset()
            self._last_kick_s = now

    def receive(self, data: bytes, now: float) -> None:
        with self._lock:
            self.advance(now)
            for frame in self._destuffer.feed(data):
                self._handle_frame(frame, now)

    def advance(self, now: float) -> None:
        with self._lock:
            if self._t0 is None:
                self._t0 = self._last_kick_s = self._stim_start_s = now
            while self._t0 + (self._ticks + 1) * codec.TICK_S <= now:
                self._ticks += 1
                self._tick(self._t0 + self._ticks * codec.TICK_S)

    @property
    def pressure_kpa(self) -> float:
        """Actual pressure on outlet 1 (the cuff our driver uses)."""
        return self._outlets[0].pressure_kpa

    @property
    def state(self) -> str:
        return codec.DEVICE_STATES[self._state]

    @property
    def stop_condition(self) -> str:
        return codec.STOP_CONDITIONS[self._stop_condition]

    # ------------------------------------------------------------ test hooks

    def press_stop_button(self) -> None:
        """The participant presses the stop button (takes effect on the next tick)."""
        with self._lock:
            self._pending.append("press")

    def release_stop_button(self) -> None:
        with self._lock:
            self._pending.append("release")

    def press_emergency(self) -> None:
        """The emergency stop on the device is activated (latched until released)."""
        with self._lock:
            self._pending.append("emergency")

    def release_emergency(self) -> None:
        with self._lock:
            self._pending.append("emergency_release")

    def inject_nack(self, error: int = codec.ERR_INVALID_CONTENT) -> None:
        """Answer the next known function with a NACK carrying `error`."""
        with self._lock:
            self._nack_next = error

    def set_leak(self, leak_kpa_s: float) -> None:
        """A leak on outlet 1: pressure lost per second regardless of the target."""
        with self._lock:
            self._leak_kpa_s = max(0.0, leak_kpa_s)

    def reboot(self, now: float) -> None:
        """Power-cycle: the stimulation stops, programs and the kick counter reset (a
        leak, being in the hose, stays)."""
        with self._lock:
            self.advance(now)
            if self._state == 1:
                self.vent_log.append((now, "REBOOT"))
            self._power_up(now)

    # ------------------------------------------------------------ firmware

    def _power_up(self, now: float) -> None:
        self._t0, self._ticks = now, 0
        self._state = 0
        self._stop_condition = 0
        self._criterion = codec.STOP_ON_BUTTON_PRESSED
        self._kicks = 0
        self._last_kick_s = now
        self._stim_start_s = now
        self._lag_since_s: float | None = None
        self._button = False
        self._pending: list[str] = []
        self._outlets = [_Outlet(), _Outlet()]

    def _send(self, packet: codec.Packet) -> None:
        if self._write is not None:
            self._write(codec.frame_packet(packet))

    def _event(self, name: str) -> None:
        if name in self.fw.events:
            self._send(codec.encode_event(self.fw, name))

    def _handle_frame(self, frame: bytes, now: float) -> None:
        try:
            pkt = codec.decode_packet(frame, allow_trailing_zero=True)
        except codec.CparFormatError:
            self._send(codec.nack(codec.ERR_INVALID_CONTENT))
            return
        if pkt.is_message:
            return                              # the host sends no messages; ignore
        name = self.fw.function_name(pkt.code)
        handler = {
            "DeviceIdentification": self._fn_identify,
            "KickWatchdog": self._fn_kick,
            "SetWaveformProgram": self._fn_waveform,
            "StartStimulation": self._fn_start,
            "ForceStartStimulation": self._fn_start,
            "StopStimulation": self._fn_stop,
        }.get(name)
        if handler is None:
            self._send(codec.nack(codec.ERR_UNKNOWN_FUNCTION))
            return
        if self._nack_next is not None:
            self._send(codec.nack(self._nack_next))
            self._nack_next = None
            return
        try:
            reply = handler(pkt, now)
        except codec.CparFormatError:
            self._send(codec.nack(codec.ERR_INVALID_CONTENT))
            return
        self._send(codec.Packet(pkt.code, reply))
        if name in ("StartStimulation", "ForceStartStimulation"):
            self._event("START_STIMULATION")

    def _fn_identify(self, pkt: codec.Packet, now: float) -> bytes:
        if pkt.data:
            raise codec.CparFormatError("DeviceIdentification takes no data")
        return codec.encode_identification(self.fw, codec.SIMULATOR_IDENTIFICATION)

    def _fn_kick(self, pkt: codec.Packet, now: float) -> bytes:
        if pkt.data:
            raise codec.CparFormatError("KickWatchdog takes no data")
        self._kicks = (self._kicks + 1) & 0xFFFFFFFF
        self._last_kick_s = now
        return codec.encode_kick_response(self._kicks)

    def _fn_waveform(self, pkt: codec.Packet, now: float) -> bytes:
        program = codec.decode_waveform_request(self.fw, pkt.data)
        if self._state == 1:                    # our choice: no reprogramming mid-stimulation
            raise codec.CparFormatError("waveform refused while stimulating")
        self._outlets[program.channel].program = program
        return bytes((program.crc,))

    def _fn_start(self, pkt: codec.Packet, now: float) -> bytes:
        criterion, _mode = codec.decode_start_request(self.fw, pkt.data)
        if self._state != 0:                    # stimulating already, or emergency
            raise codec.CparFormatError(f"start refused in state {self.state}")
        self._criterion = criterion
        self._state = 1
        self._stop_condition = 0
        self._stim_start_s = now
        self._lag_since_s = None
        for outlet in self._outlets:
            outlet.start()
        return b""

    def _fn_stop(self, pkt: codec.Packet, now: float) -> bytes:
        if pkt.data:
            raise codec.CparFormatError("StopStimulation takes no data")
        self._stop(now, "CONTROL_SOFTWARE", None)
        return b""

    def _stop(self, now: float, condition: str, event: str | None) -> None:
        """Send `event`, end the stimulation (if any) and dump both cuffs; every call
        is a vent and is logged in `vent_log`."""
        self.vent_log.append((now, condition))
        if event:
            self._event(event)
        was_stimulating = self._state == 1
        for outlet in self._outlets:
            if was_stimulating:
                outlet.final_kpa = outlet.pressure_kpa
            outlet.pressure_kpa = 0.0
            outlet.target_q8 = 0
            outlet.repeats_left = 0
        if was_stimulating:
            self._state = 0
            self._stop_condition = codec.STOP_CONDITIONS.index(condition)
            self._event("STOP_STIMULATION")

    def _tick(self, t: float) -> None:
        self._handle_pending(t)
        if self._state == 1:
            for outlet in self._outlets:
                outlet.tick()
        self._physics(codec.TICK_S)
        if self._state == 1:
            self._check_stop_conditions(t)
        self._send(codec.encode_status(self.fw, self._status()))

    def _handle_pending(self, t: float) -> None:
        pending, self._pending = self._pending, []
        for what in pending:
            if what == "press":
                self._button = True
                self._event("STOP_BUTTON_PRESSED")
                if self._state == 1 and self._criterion in (codec.STOP_ON_BUTTON_OR_VAS, codec.STOP_ON_BUTTON_PRESSED):
                    self._stop(t, "STOP_BUTTON_PRESSED", None)
            elif what == "release":
                self._button = False
                self._event("STOP_BUTTON_RELEASED")
                if self._state == 1 and self._criterion == codec.STOP_ON_BUTTON_RELEASED:
                    self._stop(t, "STOP_BUTTON_PRESSED", None)
            elif what == "emergency" and self._state != 2:
                self._stop(t, "EMERGENCY_STOP_ACTIVATED", "EMERGENCY_ACTIVATED")
                self._state = 2
            elif what == "emergency_release" and self._state == 2:
                self._state = 0
                self._event("EMERGENCY_DEACTIVATED")

    def _physics(self, dt: float) -> None:
        alpha = 1.0 - math.exp(-dt / self.time_constant_s) if self.time_constant_s > 0 else 1.0
        for k, outlet in enumerate(self._outlets):
            if self._state != 1:
                outlet.pressure_kpa = 0.0
                continue
            p = outlet.pressure_kpa + (outlet.target_kpa - outlet.pressure_kpa) * alpha
            if k == 0:
                p -= self._leak_kpa_s * dt
            outlet.pressure_kpa = min(codec.MAX_PRESSURE_KPA, max(0.0, p))

    def _check_stop_conditions(self, t: float) -> None:
        if all(o.done for o in self._outlets):
            self._stop(t, "STIMULATION_COMPLETED", "WAVEFORMS_COMPLETED")
        elif t - self._last_kick_s > self.watchdog_timeout_s:
            self._stop(t, "COMM_WATCHDOG", "COMM_WATCHDOG_TRIGGERED")
        elif t - self._stim_start_s >= self.max_stimulation_s:
            self._stop(t, "MAXIMAL_TIME_EXCEEDED", "TIMELIMIT_EXCEEDED")
        elif self._lagging_too_long(t):
            self._stop(t, "OUT_OF_COMPLIANCE", "CUFF01_OUT_OF_COMPLIANCE")

    def _lagging_too_long(self, t: float) -> bool:
        outlet = self._outlets[0]
        if outlet.target_kpa - outlet.pressure_kpa <= self.compliance_kpa:
            self._lag_since_s = None
            return False
        if self._lag_since_s is None:
            self._lag_since_s = t
        return t - self._lag_since_s >= self.compliance_s

    def _status(self) -> codec.Status:
        o1, o2 = self._outlets
        flags = codec.FLAG_VAS_CONNECTED | codec.FLAG_VAS_LOW | codec.FLAG_POWER_ON
        if self._state == 0:
            flags |= codec.FLAG_START_POSSIBLE
        return codec.Status(
            state=self._state, flags=flags, update_counter=self._ticks & 0xFFFF,
            stop_condition=self._stop_condition, supply=int(round(255 * SUPPLY_KPA / codec.MAX_SUPPLY_KPA)),
            actual=(codec.kpa_to_byte(o1.pressure_kpa), codec.kpa_to_byte(o2.pressure_kpa)),
            target=(codec.kpa_to_byte(o1.target_kpa), codec.kpa_to_byte(o2.target_kpa)),
            final=(codec.kpa_to_byte(o1.final_kpa), codec.kpa_to_byte(o2.final_kpa)),
            stop_pressed=self._button)


def make_cpar_sim(clock: Clock, *, firmware: str = "nocitech") -> CparSimDevice:
    """The CPAR simulator that `simulate-cuff --protocol cpar` serves, powered up at
    `clock.now()` with the default (published or assumed) device behaviour."""
    return CparSimDevice(firmware=firmware, start_s=clock.now())
