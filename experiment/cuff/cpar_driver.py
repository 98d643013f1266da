"""`cpar:PORT` - the Nocitech CPAR cuff algometer behind our `Cuff` interface.

A thin shell around `cpar_codec` over a byte `Transport` (a pyserial port at 38400 8N1,
exclusive, DTR on, whose reader thread stamps every chunk with `clock.now()`; or a
loopback to the simulator on a VirtualClock). One function outstanding at a time with a
reply timeout (500 ms, as the maker's DeviceMaster); a NACK raises `CommandRefused`.

How our stimulus maps onto the CPAR (details in docs/cpar.md):
* `set_rate` + `set_target(p)`: upload a waveform to outlet 1 [INC 0 -> p at the rate,
  STEP p held for the rest of the stimulus time limit], an empty program to outlet 2,
  then StartStimulation with stop criterion 1 (participant's button pressed). The
  `RampAck` carries the ramp's `eta_s` and the bounded `hold_s`.
* `deflate`, `vent`, `disarm`, `estop`: StopStimulation (the CPAR dumps the cuff; it
  has no slow deflation, and gives no `eta_s`).
* `arm`, `set_rate`, `set_watchdog`, `set_max_time`, `stream`, `clear`: host-side only
  (`Ack.sent` False); the CPAR has no such functions, and refusals CUFF/1 firmware
  would make (not armed, over the ceiling, latched) are made here, nothing sent. The
  hard limit is the device's 100 kPa; `DeviceLimits` says the watchdog is not settable.
* `ping`: KickWatchdog, its counter in `PingAck.count`; a counter that goes down raises
  `DeviceRestarted`.
* Events: EventMessages translated by EVENT_MAP into `EventKind`s (the stop button is
  `ESTOP` with `StopSource.BUTTON`); a stop seen only in a StatusMessage is reported from
  its stop condition (messages can be lost); TARGET_REACHED and DEFLATED are derived from
  StatusMessages by the driver. WATCHDOG, TIME_LIMIT, COMPLIANCE and ESTOP latch on the
  host side (`CuffStatus.state` FAULT/ESTOP with its `Fault`) until `clear`.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Callable

from experiment.clock import Clock
from experiment.cuff import cpar_codec as codec
from experiment.cuff.base import (Ack, ArmAck, CommandRefused, CuffState, CuffStatus, DeflateAck, DeviceEvent,
                                  DeviceInfo, DeviceLimits, DeviceRestarted, EventKind, Fault, FaultKind,
                                  MaxTimeAck, PingAck, PressureSample, RampAck, RateAck, Span, StopSource,
                                  StreamAck, WatchdogAck)
from experiment.cuff.line_codec import format_reading_kpa
from experiment.cuff.transport import SerialTransport, Transport
from experiment.errors import DeviceFault, HardwareError

BAUD = 38400
HARD_LIMIT_KPA = codec.MAX_PRESSURE_KPA
REACHED_TOLERANCE_KPA = 0.5
DEFLATED_BELOW_KPA = 1.0
RATE_RANGE_KPA_S = (0.1, 100.0)
CUFF_CHANNEL = 0                  # wire channel 0 = outlet/cuff 1; outlet 2 gets an empty program
# the watchdog is fixed in the firmware; the time limit bounds each waveform's hold (10 min at most)
LIMITS = DeviceLimits(rate_kpa_s=Span(*RATE_RANGE_KPA_S), watchdog_ms=None,
                      max_time_ms=Span(1, codec.MAX_STIMULATION_S * 1000))


@dataclass(frozen=True)
class Meaning:
    """What a CPAR event or stop condition means in our terms, and how the log words it."""

    kind: EventKind
    fields: dict[str, str] = field(default_factory=dict)
    source: StopSource | None = None
    other_name: str = ""          # the log name of an EventKind.OTHER

    @property
    def name(self) -> str:
        return self.other_name or self.kind.value


def _estop(src: StopSource) -> Meaning:
    return Meaning(EventKind.ESTOP, {"src": src.value}, src)


# CPAR EventID -> its meaning. Unlisted events pass as OTHER named CPAR_<name>.
EVENT_MAP: dict[str, Meaning] = {
    "STOP_BUTTON_PRESSED": _estop(StopSource.BUTTON),
    "EMERGENCY_ACTIVATED": _estop(StopSource.EMERGENCY),
    "COMM_WATCHDOG_TRIGGERED": Meaning(EventKind.WATCHDOG),
    "TIMELIMIT_EXCEEDED": Meaning(EventKind.TIME_LIMIT, {"src": "device"}),
    "WAVEFORMS_COMPLETED": Meaning(EventKind.TIME_LIMIT, {"src": "waveform_end"}),
    "CUFF01_OUT_OF_COMPLIANCE": Meaning(EventKind.COMPLIANCE, {"cuff": "1"}),
    "CUFF02_OUT_OF_COMPLIANCE": Meaning(EventKind.COMPLIANCE, {"cuff": "2"}),
    "AIR_LEAK": Meaning(EventKind.COMPLIANCE, {"src": "air_leak"}),
}
# StatusMessage stop condition -> the event reported when no EventMessage said it first.
STOP_CONDITION_MAP: dict[str, Meaning] = {
    "STOP_BUTTON_PRESSED": _estop(StopSource.BUTTON),
    "MAXIMAL_VAS_SCORED": _estop(StopSource.VAS),
    "STIMULATION_COMPLETED": Meaning(EventKind.TIME_LIMIT, {"src": "waveform_end"}),
    "MAXIMAL_TIME_EXCEEDED": Meaning(EventKind.TIME_LIMIT, {"src": "device"}),
    "VASMETER_DISCONNECTED": Meaning(EventKind.OTHER, other_name="CPAR_VASMETER_DISCONNECTED"),
    "EMERGENCY_STOP_ACTIVATED": _estop(StopSource.EMERGENCY),
    "OUT_OF_COMPLIANCE": Meaning(EventKind.COMPLIANCE, {"cuff": "1"}),
    "COMM_WATCHDOG": Meaning(EventKind.WATCHDOG),
    "12V_POWER_OFF": Meaning(EventKind.OTHER, other_name="CPAR_12V_POWER_OFF"),
}
STOP_CAUSES = frozenset(m.name for m in STOP_CONDITION_MAP.values())
# Host-side latch per event, as CUFF/1 latches FAULT/ESTOP until CLEAR, with its fault.
LATCH: dict[EventKind, tuple[CuffState, Fault]] = {
    EventKind.ESTOP: (CuffState.ESTOP, Fault(FaultKind.ESTOP.value)),
    EventKind.WATCHDOG: (CuffState.FAULT, Fault(FaultKind.WATCHDOG.value)),
    EventKind.TIME_LIMIT: (CuffState.FAULT, Fault(FaultKind.TIME_LIMIT.value)),
    EventKind.COMPLIANCE: (CuffState.FAULT, Fault(FaultKind.COMPLIANCE.value)),
}


class ReplyTimeout(DeviceFault):
    """No response to a function within the reply timeout."""


@dataclass
class _Slot:
    """One function on the wire, waiting for its response."""

    code: int
    name: str
    reply: codec.Packet | None = None
    t_ack: float = 0.0


class CparCuff:
    """A Nocitech CPAR over a transport: a port string (device path, COM name or pyserial
    URL, opened as a `SerialTransport` at 38400 8N1, exclusive, DTR on as pyserial sets it
    on open) or any `Transport` (e.g. a `LoopbackTransport` to the simulator)."""

    kind = "cpar"

    def __init__(self, transport: Transport | str, *, clock: Clock, reply_timeout_s: float = 0.5,
                 firmware: str = "nocitech", force_start: bool = False, identify_tries: int = 3) -> None:
        try:
            self.fw = codec.firmware_table(firmware)
        except ValueError as exc:
            raise HardwareError(f"cpar: {exc}") from None
        if isinstance(transport, str):
            transport = SerialTransport(transport, clock=clock, baudrate=BAUD, exclusive=True)
        self._transport = transport
        self.port = transport.port
        self.clock = clock
        self.reply_timeout_s = reply_timeout_s
        self.force_start = force_start
        self.identify_tries = identify_tries
        self.info: DeviceInfo | None = None
        self.stray_replies = 0
        self._opened = False
        self._destuffer = codec.Destuffer()
        self._cmd_lock = threading.RLock()           # one ordinary function outstanding
        self._lock = threading.RLock()               # guards the state below
        self._slots: list[_Slot] = []                # on the wire, in wire order
        self._lost: BaseException | None = None
        self._status: codec.Status | None = None
        self._counter_base = 0
        self._last_counter: int | None = None
        self._kick_counter: int | None = None
        # host-side state
        self._armed_max: float | None = None
        self._rate: float | None = None
        self._max_time_s = codec.MAX_STIMULATION_S
        self._streaming = True
        self._target: float | None = None
        self._running = False                        # a stimulation is (believed) running
        self._reached = False
        self._awaiting_deflated = False
        self._reported_cause: str | None = None      # log name of a stop cause already reported
        self._latch: tuple[CuffState, Fault] | None = None
        self._on_event: Callable[[DeviceEvent], None] | None = None
        self._on_sample: Callable[[PressureSample], None] | None = None
        self._on_lost: Callable[[BaseException], None] | None = None

    # ------------------------------------------------------------ connection

    def connect(self) -> DeviceInfo:
        """Open the port, identify the device (retried), read the watchdog counter."""
        if not self._opened:
            self._transport.open(self._on_data, self._lost_link)
            self._opened = True
        try:
            ident = self._identify()
            self._kick_counter = codec.decode_kick_response(self._call("KickWatchdog")[0].data)
        except (DeviceFault, codec.CparFormatError) as exc:
            self.close()
            raise HardwareError(str(exc)) from exc
        if ident.device_id != codec.DEVICE_ID_CPAR:
            self.close()
            raise HardwareError(f"cpar: the device on {self.port} identifies as device id {ident.device_id}, "
                                f"not a CPAR ({codec.DEVICE_ID_CPAR})")
        name = f"{ident.manufacturer} {ident.device}".strip() or f"CPAR serial {ident.serial_number}"
        self.info = DeviceInfo(kind="cpar", port=self.port, name=name, firmware=ident.version_text,
                               hard_limit_kpa=HARD_LIMIT_KPA, simulated=codec.is_simulator(self.fw, ident),
                               serial=str(ident.serial_number), limits=LIMITS)
        return self.info

    def _identify(self) -> codec.Identification:
        """DeviceIdentification, retried on silence (the maker's host rescans the same way)."""
        attempt = 1
        while True:
            try:
                reply = self._call("DeviceIdentification")[0]
                break
            except ReplyTimeout as exc:
                if attempt >= self.identify_tries:
                    raise DeviceFault(f"{exc.message} ({attempt} tries); is it a CPAR at {BAUD} baud, "
                                      "powered on?") from exc
                attempt += 1
        try:
            return codec.decode_identification(self.fw, reply.data)
        except codec.CparFormatError as exc:
            raise DeviceFault(f"cpar: {exc}; another firmware generation? known tables: "
                              f"{', '.join(sorted(codec.FIRMWARES))}") from exc

    def close(self) -> None:
        """Close the port (does not vent: the caller vents first)."""
        self._transport.close()

    def set_listeners(self, *, on_event: Callable[[DeviceEvent], None] | None = None,
                      on_sample: Callable[[PressureSample], None] | None = None,
                      on_lost: Callable[[BaseException], None] | None = None) -> None:
        """Callbacks run in the transport's reader thread: keep them short, never raise,
        and never call the driver from them (its reply would wait behind the callback)."""
        self._on_event, self._on_sample, self._on_lost = on_event, on_sample, on_lost

    # ------------------------------------------------------------ functions on the wire

    def _call(self, name: str, data: bytes = b"", *, packet: codec.Packet | None = None
              ) -> tuple[codec.Packet, float, float]:
        """Send one function and wait for its response: (packet, t_write, t_ack).

        One function outstanding at a time (ECP rule), except StopStimulation, which
        goes on the wire at once: responses are matched by function code.
        """
        pkt = packet or codec.request(self.fw, name, data)
        if name == "StopStimulation":
            return self._exchange(name, pkt)
        with self._cmd_lock:
            return self._exchange(name, pkt)

    def _exchange(self, name: str, pkt: codec.Packet) -> tuple[codec.Packet, float, float]:
        if self._lost is not None:
            raise DeviceFault(f"cpar: port {self.port} lost ({self._lost}); {name} not sent")
        slot = _Slot(pkt.code, name)
        with self._lock:
            self._slots.append(slot)
        try:
            t_write = self._transport.write(codec.frame_packet(pkt, trailing_zero=self.fw.host_trailing_zero))
            self._transport.wait(lambda: slot.reply is not None or self._lost is not None, self.reply_timeout_s)
        finally:
            with self._lock:
                if slot in self._slots:
                    self._slots.remove(slot)
        answer = slot.reply
        if answer is None:
            if self._lost is not None:
                raise DeviceFault(f"cpar: port {self.port} lost during {name}: {self._lost}")
            raise ReplyTimeout(f"cpar: no reply to {name} within {self.reply_timeout_s * 1000:.0f} ms on {self.port}")
        if answer.is_nack:
            text = f"NACK {codec.nack_text(answer)}"
            raise CommandRefused(f"cpar: {name} refused by the device: {text}",
                                 ack=Ack(command=name, t_write=t_write, t_ack=slot.t_ack, reply=text),
                                 code=answer.data[0] if answer.data else -1,
                                 error=codec.NACK_ERRORS.get(answer.data[0] if answer.data else -1, "device-specific"))
        return answer, t_write, slot.t_ack

    def _take_reply(self, pkt: codec.Packet, t: float) -> None:
        """A response goes to the first pending function with its code; a NACK (no
        code) to the oldest pending one; anything else is counted as stray."""
        with self._lock:
            pending = [s for s in self._slots if s.reply is None]
            match = pending[:1] if pkt.is_nack else [s for s in pending if s.code == pkt.code][:1]
            if not match:
                self.stray_replies += 1
                return
            match[0].reply, match[0].t_ack = pkt, t
            self._slots.remove(match[0])
            if match[0].name in ("StartStimulation", "ForceStartStimulation") and not pkt.is_nack:
                self._running = True     # every StatusMessage from here on is post-start

    def _stop_stimulation(self, command: str) -> DeflateAck:
        """StopStimulation: the CPAR dumps the cuff at once and gives no estimate of how long it takes."""
        with self._lock:
            self._target = None
            self._awaiting_deflated = True
        _, t_write, t_ack = self._call("StopStimulation")
        return DeflateAck(command=command, t_write=t_write, t_ack=t_ack, reply="StopStimulation ok (dump)",
                          eta_s=None)

    def _host_side(self, command: str, reply: str) -> Ack:
        """What a command handled on the host side only acknowledges (nothing went on the wire)."""
        t = self.clock.now()
        return Ack(command=command, t_write=t, t_ack=t, reply=f"host-side: {reply}", sent=False)

    def _refuse(self, command: str, error: str, detail: str) -> CommandRefused:
        message = f"cpar: {command} refused ({error}): {detail}; nothing was sent"
        t = self.clock.now()
        return CommandRefused(message, code=None, error=error,
                              ack=Ack(command=command, t_write=t, t_ack=t, reply=f"host-side: refused ({error}): "
                                      f"{detail}", sent=False))

    # ------------------------------------------------------------ the Cuff interface

    def ping(self) -> PingAck:
        """KickWatchdog: feeds the device watchdog; a lower counter means a restart
        (`DeviceRestarted`: the waveforms and latches this driver set up are gone)."""
        answer, t_write, t_ack = self._call("KickWatchdog")
        counter = codec.decode_kick_response(answer.data)
        previous, self._kick_counter = self._kick_counter, counter
        if previous is not None and counter < previous:
            raise DeviceRestarted(f"cpar: device restarted: watchdog counter went from {previous} to {counter}")
        return PingAck(command="KickWatchdog", t_write=t_write, t_ack=t_ack, reply=f"KickWatchdog n={counter}",
                       count=counter)

    def set_watchdog(self, timeout_ms: int) -> WatchdogAck:
        """Host-side only: the CPAR's watchdog timeout is not settable over serial."""
        ack = self._host_side(f"WDT {timeout_ms}", "the CPAR watchdog timeout is fixed in its firmware "
                              "(not published); kick at least every 2 s")
        return WatchdogAck(command=ack.command, t_write=ack.t_write, t_ack=ack.t_ack, reply=ack.reply, sent=False,
                           timeout_ms=None)

    def set_max_time(self, max_ms: int) -> MaxTimeAck:
        """Bounds the hold of every later waveform (capped by the device's 10 min)."""
        if max_ms <= 0:
            raise self._refuse(f"MAXTIME {max_ms}", "BAD_ARGUMENT", "the time limit must be positive")
        self._max_time_s = min(max_ms / 1000.0, codec.MAX_STIMULATION_S)
        ack = self._host_side(f"MAXTIME {max_ms}", "bounds each waveform's hold")
        return MaxTimeAck(command=ack.command, t_write=ack.t_write, t_ack=ack.t_ack, reply=ack.reply, sent=False,
                          max_ms=round(self._max_time_s * 1000))

    def arm(self, ceiling_kpa: float) -> ArmAck:
        self._check_not_latched(f"ARM {ceiling_kpa}")
        if not 0 < ceiling_kpa <= HARD_LIMIT_KPA:
            raise self._refuse(f"ARM {ceiling_kpa}", "OVER_LIMIT",
                               f"ceiling {ceiling_kpa} kPa is outside 0..{HARD_LIMIT_KPA:g} kPa (the CPAR's limit)")
        self._armed_max = float(ceiling_kpa)
        ack = self._host_side(f"ARM {ceiling_kpa:.1f}", "the CPAR has no arming")
        return ArmAck(command=ack.command, t_write=ack.t_write, t_ack=ack.t_ack, reply=ack.reply, sent=False,
                      ceiling_kpa=self._armed_max)

    def disarm(self) -> Ack:
        result = self._stop_stimulation("DISARM")
        self._armed_max = None
        return result

    def set_rate(self, rate_kpa_s: float) -> RateAck:
        lo, hi = RATE_RANGE_KPA_S
        if not lo <= rate_kpa_s <= hi:
            raise self._refuse(f"RATE {rate_kpa_s}", "BAD_ARGUMENT", f"rate outside {lo:g}..{hi:g} kPa/s")
        self._rate = float(rate_kpa_s)
        ack = self._host_side(f"RATE {rate_kpa_s}", "used by the next waveform")
        return RateAck(command=ack.command, t_write=ack.t_write, t_ack=ack.t_ack, reply=ack.reply, sent=False,
                       rate_kpa_s=self._rate)

    def set_target(self, pressure_kpa: float) -> RampAck:
        """Upload [INC to target, STEP hold] and start; refused (nothing sent) when
        unarmed, over the ceiling, latched, or while a stimulation runs."""
        command = f"SET {pressure_kpa:.1f}"
        self._check_target(command, pressure_kpa)
        if pressure_kpa == 0:
            stop = self.deflate()
            return RampAck(command=command, t_write=stop.t_write, t_ack=stop.t_ack, reply=stop.reply,
                           target_kpa=0.0, eta_s=None)
        program, ramp_s = self._ramp_hold(command, pressure_kpa)
        crc = self._upload(CUFF_CHANNEL, program)
        self._upload(1 - CUFF_CHANNEL, ())
        with self._lock:
            self._target, self._reached = float(pressure_kpa), False
            self._reported_cause, self._awaiting_deflated = None, False
        start = codec.start_request(self.fw, stop_criterion=codec.STOP_ON_BUTTON_PRESSED, force=self.force_start)
        try:
            _, t_write, t_ack = self._call(self.fw.function_name(start.code), packet=start)
        except DeviceFault:
            with self._lock:
                self._target = None
            raise
        return RampAck(command=command, t_write=t_write, t_ack=t_ack,
                       reply=f"StartStimulation ok; waveform {'; '.join(i.describe() for i in program)}; "
                             f"crc 0x{crc:02X}",
                       target_kpa=float(pressure_kpa), eta_s=round((ramp_s + codec.TICK_S) * 1000) / 1000,
                       hold_s=round(program[-1].duration_s * 1000) / 1000)

    def _check_target(self, command: str, pressure_kpa: float) -> None:
        """The refusals CUFF/1 firmware would give, made here (the CPAR has no arming)."""
        self._check_not_latched(command)
        if self._armed_max is None:
            raise self._refuse(command, "NOT_ARMED", "arm with the session ceiling first")
        if not 0 <= pressure_kpa <= self._armed_max:
            raise self._refuse(command, "OVER_LIMIT", f"target outside 0..{self._armed_max:g} kPa (the armed ceiling)")

    def _ramp_hold(self, command: str, pressure_kpa: float) -> tuple[tuple[codec.Instruction, ...], float]:
        """The waveform [INC, STEP hold to the time limit] and its ramp time; refused when
        no rate is set, a waveform runs, or the ramp does not fit the time limit."""
        if self._rate is None:
            raise self._refuse(command, "BAD_STATE", "no ramp rate set")
        status = self._status
        if self._target is not None or (status is not None and status.state != 0):
            state = status.state_name if status is not None and status.state != 0 else "STIMULATING"
            raise self._refuse(command, "BAD_STATE", f"device is {state}; the CPAR cannot change "
                               "a running waveform, deflate first")
        probe = codec.ramp_hold_program(pressure_kpa, self._rate, hold_s=codec.TICK_S)
        ramp_s = codec.program_duration_s(probe[:-1])
        hold_s = self._max_time_s - ramp_s - codec.TICK_S
        if hold_s < codec.TICK_S:
            raise self._refuse(command, "BAD_ARGUMENT", f"the ramp takes {ramp_s:.2f} s, longer than the "
                               f"stimulus time limit {self._max_time_s:.2f} s")
        return codec.ramp_hold_program(pressure_kpa, self._rate, hold_s=hold_s), ramp_s

    def _upload(self, channel: int, program: tuple[codec.Instruction, ...]) -> int:
        request = codec.waveform_request(self.fw, channel=channel, repeat=1, instructions=program)
        answer = self._call("SetWaveformProgram", packet=request)[0]
        crc = codec.decode_waveform_response(answer.data)
        expected = codec.WaveformProgram(channel, 1, program).crc
        if crc != expected:
            raise DeviceFault(f"cpar: waveform upload to outlet {channel + 1} garbled: device CRC 0x{crc:02X}, "
                              f"expected 0x{expected:02X}")
        return crc

    def deflate(self) -> DeflateAck:
        """StopStimulation: the CPAR dumps the cuff at once (no slow deflation)."""
        return self._stop_stimulation("DEFLATE")

    def vent(self) -> Ack:
        return self._stop_stimulation("VENT")

    def estop(self) -> Ack:
        """StopStimulation, latch ESTOP host-side, and report `ESTOP src=host`."""
        try:
            result = self._stop_stimulation("ESTOP")
        finally:
            with self._lock:
                self._latch = LATCH[EventKind.ESTOP]
        self._emit([self._event(result.t_ack, _estop(StopSource.HOST))])
        return result

    def sim_stop_button(self) -> Ack:
        """The CPAR simulator's stop button is not reachable over serial (`press_stop_button()`
        on the simulator object, tests only): refused, nothing sent."""
        raise self._refuse("SIM BUTTON", "NOT_SUPPORTED", "the CPAR protocol has no simulator commands")

    def clear(self) -> Ack:
        status = self._latest_status()
        if status.state == 2:
            raise self._refuse("CLEAR", "CLEAR_REFUSED", "the CPAR's emergency stop is active; release it first")
        if status.actual_kpa >= DEFLATED_BELOW_KPA or status.state == 1:
            raise self._refuse("CLEAR", "CLEAR_REFUSED", f"cuff at {format_reading_kpa(status.actual_kpa)} kPa")
        with self._lock:
            self._latch, self._armed_max = None, None
        return self._host_side("CLEAR", "latch cleared, disarmed")

    def status(self) -> CuffStatus:
        s = self._latest_status()
        with self._lock:
            return CuffStatus(state=self._state(s), pressure_kpa=s.actual_kpa,
                              target_kpa=self._target if self._target is not None else 0.0,
                              armed_max_kpa=self._armed_max or 0.0, hard_limit_kpa=HARD_LIMIT_KPA,
                              fault=self._latch[1] if self._latch else None)

    def stream(self, rate_hz: int) -> StreamAck:
        """Host-side: forward every StatusMessage as a sample (rate_hz > 0) or none (0)."""
        self._streaming = rate_hz > 0
        ack = self._host_side(f"STREAM {rate_hz}", "the CPAR sends status messages at its own rate")
        return StreamAck(command=ack.command, t_write=ack.t_write, t_ack=ack.t_ack, reply=ack.reply, sent=False,
                         rate_hz=rate_hz)

    # ------------------------------------------------------------ host-side state

    def _check_not_latched(self, command: str) -> None:
        with self._lock:
            latch = self._latch
        if latch is not None:
            raise self._refuse(command, "LATCHED", f"latched {latch[0].value} (error {latch[1].code}); CLEAR first")

    def _latest_status(self) -> codec.Status:
        if self._lost is not None:
            raise DeviceFault(f"cpar: port {self.port} lost ({self._lost}); no current status")
        self._transport.wait(lambda: self._status is not None, self.reply_timeout_s)
        status = self._status
        if status is None:
            raise DeviceFault(f"cpar: no StatusMessage from the device on {self.port} "
                              f"within {self.reply_timeout_s * 1000:.0f} ms")
        return status

    def _state(self, s: codec.Status) -> CuffState:
        """The device state in our terms: its emergency, our latch, our stimulus, our arming."""
        if s.state == 2:
            return CuffState.ESTOP
        if self._latch is not None:
            return self._latch[0]
        if s.state == 1:
            return CuffState.HOLD if self._reached else CuffState.RAMP
        return CuffState.ARMED if self._armed_max is not None else CuffState.IDLE

    # ------------------------------------------------------------ reader thread

    def _lost_link(self, exc: BaseException) -> None:
        self._lost = exc
        if self._on_lost is not None:
            self._on_lost(DeviceFault(f"cpar: port {self.port} lost ({exc})"))

    def _on_data(self, data: bytes, t: float) -> None:
        events: list[DeviceEvent] = []
        samples: list[PressureSample] = []
        for frame in self._destuffer.feed(data):
            try:
                pkt = codec.decode_packet(frame)
                if pkt.code == self.fw.messages["status"]:
                    samples += self._on_status(codec.decode_status(self.fw, pkt.data), t, events)
                elif pkt.code == self.fw.messages["event"]:
                    self._on_device_event(codec.decode_event(self.fw, pkt.data), t, events)
                elif not pkt.is_message:
                    self._take_reply(pkt, t)
                else:
                    events.append(self._event(t, Meaning(EventKind.OTHER, {"code": f"0x{pkt.code:02X}"},
                                                         other_name="CPAR_UNKNOWN_MESSAGE")))
            except codec.CparFormatError as exc:
                events.append(self._event(t, Meaning(EventKind.OTHER, {"detail": str(exc)},
                                                     other_name="CPAR_BAD_FRAME")))
        self._emit(events)
        if self._on_sample is not None:
            for sample in samples:
                self._on_sample(sample)

    def _on_status(self, s: codec.Status, t: float, events: list[DeviceEvent]) -> list[PressureSample]:
        with self._lock:
            previous, self._status = self._status, s
            if self._last_counter is not None and s.update_counter < self._last_counter:
                self._counter_base += 0x10000
            self._last_counter = s.update_counter
            # a stimulation shorter than one status period is never seen as STIMULATING,
            # hence the flag set by the start's response
            if (self._running or (previous is not None and previous.state == 1)) and s.state != 1:
                self._on_stopped(s, t, events)
            self._running = s.state == 1
            if s.state == 1 and self._target is not None and not self._reached \
                    and abs(s.actual_kpa - self._target) <= REACHED_TOLERANCE_KPA:
                self._reached = True
                events.append(self._event(t, Meaning(EventKind.TARGET_REACHED), pressure_kpa=s.actual_kpa))
            if self._awaiting_deflated and s.state != 1 and s.actual_kpa < DEFLATED_BELOW_KPA:
                self._awaiting_deflated = False
                events.append(self._event(t, Meaning(EventKind.DEFLATED), pressure_kpa=s.actual_kpa))
            if not self._streaming:
                return []
            device_ms = round((self._counter_base + s.update_counter) * codec.TICK_S * 1000)
            return [PressureSample(t=t, device_ms=device_ms, pressure_kpa=s.actual_kpa,
                                   target_kpa=s.target_kpa, state=self._state(s))]

    def _on_stopped(self, s: codec.Status, t: float, events: list[DeviceEvent]) -> None:
        """The device left STIMULATING (caller holds the lock): report a device-side
        cause unless an EventMessage already did."""
        self._target = None
        self._awaiting_deflated = True
        meaning = STOP_CONDITION_MAP.get(s.stop_condition_name)
        if meaning is None:                     # NO_CONDITION, CONTROL_SOFTWARE (our stop)
            return
        self._latch = self._latch or LATCH.get(meaning.kind)
        if self._reported_cause == meaning.name:
            self._reported_cause = None
            return
        self._reported_cause = meaning.name
        events.append(self._event(t, meaning, stop=s.stop_condition_name))

    def _on_device_event(self, cpar_name: str, t: float, events: list[DeviceEvent]) -> None:
        meaning = EVENT_MAP.get(cpar_name, Meaning(EventKind.OTHER, other_name=f"CPAR_{cpar_name}"))
        with self._lock:
            stimulating = self._running
            if meaning.name in STOP_CAUSES:
                if self._reported_cause == meaning.name:    # the StatusMessage told us first
                    self._reported_cause = None
                    return
                if stimulating:
                    self._reported_cause = meaning.name
            latch = LATCH.get(meaning.kind)
            if latch is not None and (stimulating or meaning.kind is EventKind.ESTOP):
                self._latch = self._latch or latch
        events.append(self._event(t, meaning, cpar=cpar_name))

    @staticmethod
    def _event(t: float, meaning: Meaning, *, pressure_kpa: float | None = None, **extra: str) -> DeviceEvent:
        """A typed event; its log fields as CUFF/1 would word them (`p=` rounded down), plus `extra`."""
        fields = dict(meaning.fields)
        if pressure_kpa is not None:
            fields["p"] = format_reading_kpa(pressure_kpa)
        return DeviceEvent(t=t, kind=meaning.kind, name=meaning.name, fields={**fields, **extra},
                           pressure_kpa=pressure_kpa, source=meaning.source)

    def _emit(self, events: list[DeviceEvent]) -> None:
        if self._on_event is not None:
            for event in events:
                self._on_event(event)
