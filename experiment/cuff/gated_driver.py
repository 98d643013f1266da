"""`gated:PORT:rts|dtr|board` - a cuff inflator whose pressure is set on its own panel, switched by a gate.

Some cuff inflators (a rapid cuff inflator with its air source) have no command set: the
operator sets the pressure on the front panel, and inflation is switched by a foot switch
or an external gate. This driver is that gate, behind the same `Cuff` interface, so the
supervisor's interlocks (time limits per stimulus and per run, vent on every exit path)
apply unchanged. Gate on = inflate to the panel's pressure; gate off = vent.

Two ways to switch it (docs/gate-board.md):
* `rts` / `dtr`: a USB-serial adapter's modem line drives an isolated, normally open
  relay. The port is opened with both lines low, and with HUPCL set (checked after the
  open), so the kernel drops the lines when the last holder of the port goes away: a
  killed runner cannot leave the gate on. There is no read-back and no watchdog of its
  own; the heartbeat checks that the port is still there (a pulled adapter fails it).
  `ModemLines` is the thin layer that sets a line on a `serial.Serial`; tests swap it for
  a recorder because a pseudo-terminal has no modem lines.
* `board`: a gate board on a serial line (GATE/1, gate_codec.py): one byte per command,
  each answered with one line, a watchdog of its own that turns the gate off when the
  host goes silent, latched faults, and with a sensor a stream of readings (then the
  supervisor's read-back checks apply as for any cuff).

What the host does for the device (`Ack.sent` False, nothing on the wire): ARM, RATE,
WDT, MAXTIME and STREAM; a target is refused here when not armed, latched, or over the
ceiling. The pressure itself is the panel's: `set_target(p)` only opens the gate, and the
run's pre-flight makes sure `p` is the panel setting the operator confirmed.
`DeviceInfo.pressure_readback` says whether anything measures it.
"""

from __future__ import annotations

import os
import threading
from collections import deque
from dataclasses import dataclass
from typing import Callable, Protocol

import serial

from experiment.clock import Clock
from experiment.cuff import gate_codec as codec
from experiment.cuff.base import (Ack, ArmAck, CommandRefused, CuffState, CuffStatus, DeflateAck, DeviceEvent,
                                  DeviceInfo, DeviceLimits, EventKind, Fault, FaultKind, MaxTimeAck, PingAck,
                                  PressureSample, RampAck, RateAck, Span, StreamAck, WatchdogAck)
from experiment.cuff.line_codec import SIM_NAME_PREFIX, LineSplitter, floor_kpa
from experiment.cuff.transport import SerialTransport, Transport
from experiment.errors import CuedpainError, DeviceFault, HardwareError

RELAY_HARD_LIMIT_KPA = 100.0   # a relay reads nothing: the protocol's own limit (HARD_MAX_KPA) is the bound
REACHED_TOLERANCE_KPA = 0.5
# rates are not sent (the inflator fills at its own speed); any the protocol may write is accepted
LIMITS = DeviceLimits(rate_kpa_s=Span(0.1, 100.0), watchdog_ms=None, max_time_ms=None)
_FAULT_EVENTS = {30: EventKind.WATCHDOG, 32: EventKind.TIME_LIMIT, 33: EventKind.OVERPRESSURE}


# ---------------------------------------------------------------- the modem-line layer


class Lines(Protocol):
    """What the relay variant needs of a port: set its gate line, check it is still there, close."""

    port: str
    line: str   # "rts" or "dtr": which line is the gate

    def open(self) -> None: ...
    def set_gate(self, on: bool) -> None: ...
    def check(self) -> None: ...
    def close(self) -> None: ...


def set_hupcl(ser: serial.Serial) -> None:
    """Set HUPCL on an open POSIX port and check it took: the kernel then drops RTS and DTR
    when the port's last holder closes it or dies. HardwareError when it cannot be set."""
    if os.name != "posix" or not isinstance(ser, serial.Serial):
        return      # Windows drops the lines when the handle closes (untested here); a socket:// URL has none
    import termios  # POSIX only

    try:
        fd = ser.fileno()
        attrs = termios.tcgetattr(fd)
        attrs[2] |= termios.HUPCL
        termios.tcsetattr(fd, termios.TCSANOW, attrs)
        ok = bool(termios.tcgetattr(fd)[2] & termios.HUPCL)
    except (termios.error, OSError, ValueError) as exc:
        raise HardwareError(f"cannot set HUPCL on {ser.port}: {exc}") from exc
    if not ok:
        raise HardwareError(f"HUPCL did not stay set on {ser.port}: a killed program could leave the gate on")


class ModemLines:
    """One modem line (RTS or DTR) of a pyserial port as the gate: both lines low from the open
    on, HUPCL set, the chosen line raised for gate on."""

    def __init__(self, port: str, line: str) -> None:
        if line not in ("rts", "dtr"):
            raise ValueError(f"ModemLines: line is rts or dtr, got {line!r}")
        self.port = port
        self.line = line
        self._serial: serial.Serial | None = None

    def open(self) -> None:
        try:
            ser = serial.serial_for_url(self.port, do_not_open=True, exclusive=True) if os.name == "posix" \
                else serial.serial_for_url(self.port, do_not_open=True)
            ser.rts = False    # applied by pyserial as the port opens: the gate starts off
            ser.dtr = False
            ser.open()
        except (serial.SerialException, OSError, ValueError) as exc:
            raise HardwareError(f"cannot open gate port {self.port}: {exc}") from exc
        self._serial = ser
        try:
            set_hupcl(ser)
        except HardwareError:
            ser.close()
            self._serial = None
            raise

    def set_gate(self, on: bool) -> None:
        ser = self._require()
        try:
            setattr(ser, self.line, on)
        except (serial.SerialException, OSError, ValueError) as exc:
            raise DeviceFault(f"gate on {self.port}: cannot set {self.line.upper()} ({exc})") from exc

    def check(self) -> None:
        """Read the modem status (TIOCMGET): fails when the adapter was pulled."""
        ser = self._require()
        try:
            ser.cts
        except (serial.SerialException, OSError, ValueError) as exc:
            raise DeviceFault(f"gate on {self.port}: the port is gone ({exc})") from exc

    def close(self) -> None:
        ser, self._serial = self._serial, None
        if ser is not None:
            try:
                ser.rts = False
                ser.dtr = False
            except (serial.SerialException, OSError, ValueError):
                pass    # an adapter that is gone has no lines; closing (HUPCL) drops them where there are
            finally:
                ser.close()

    def _require(self) -> serial.Serial:
        if self._serial is None:
            raise DeviceFault(f"gate port {self.port} is not open")
        return self._serial


# ---------------------------------------------------------------- the board link


@dataclass
class _Slot:
    tag: str
    reply: codec.Reply | None = None
    t_ack: float = 0.0
    lost: bool = False


class _BoardLink:
    """GATE/1 over a transport: one ordinary command outstanding, `0` past it; replies matched
    in order by their tag (the board answers every byte once, in order)."""

    def __init__(self, transport: Transport, *, clock: Clock, reply_timeout_s: float,
                 on_report: Callable[[codec.Report, float], None]) -> None:
        self.transport = transport
        self.port = transport.port
        self._clock = clock
        self._timeout_s = reply_timeout_s
        self._on_report = on_report
        self._splitter = LineSplitter(codec.MAX_LINE_CHARS)
        self._cmd_lock = threading.Lock()
        self._io_lock = threading.RLock()    # a loopback device answers inside the write
        self._slots: deque[_Slot] = deque()
        self.lost: BaseException | None = None
        self.garbage_lines = 0
        self.boot_seen = False

    def on_data(self, data: bytes, t: float) -> None:
        for raw in self._splitter.feed(data):
            try:
                if raw.overflow:
                    raise ValueError("line too long")
                line = codec.parse_board_line(raw.data.decode("ascii"))
            except (ValueError, UnicodeDecodeError):
                self.garbage_lines += 1
                continue
            if isinstance(line, codec.Reply):
                self._take_reply(line, t)
            else:
                if line.what == "B":
                    self.boot_seen = True
                self._on_report(line, t)

    def _take_reply(self, reply: codec.Reply, t: float) -> None:
        with self._io_lock:
            pending = [s for s in self._slots if s.reply is None and not s.lost]
            same = [s for s in pending if s.tag == reply.tag or reply.tag == codec.UNKNOWN_TAG]
            if not same:
                self.garbage_lines += 1
                return
            slot = same[0]
            for skipped in pending[:pending.index(slot)]:
                skipped.lost = True
            slot.reply, slot.t_ack = reply, t
            while self._slots and (self._slots[0].reply is not None or self._slots[0].lost):
                self._slots.popleft()

    def command(self, byte: bytes, *, urgent: bool = False,
                timeout_s: float | None = None) -> tuple[codec.Reply, float, float]:
        """Send one command byte, wait for its reply: (reply, t_write, t_ack). DeviceFault on silence."""
        if urgent:
            return self._exchange(byte, timeout_s)
        with self._cmd_lock:
            return self._exchange(byte, timeout_s)

    def _exchange(self, byte: bytes, timeout_s: float | None) -> tuple[codec.Reply, float, float]:
        tag = byte.decode("ascii")
        if self.lost is not None:
            raise DeviceFault(f"gate board on {self.port}: connection lost ({self.lost}); {tag!r} not sent")
        slot = _Slot(tag)
        with self._io_lock:
            self._slots.append(slot)
            try:
                t_write = self.transport.write(byte)
            except DeviceFault:
                slot.lost = True
                raise
        timeout = self._timeout_s if timeout_s is None else timeout_s
        self.transport.wait(lambda: slot.reply is not None or slot.lost or self.lost is not None, timeout)
        with self._io_lock:
            reply = slot.reply
            if reply is None:
                slot.lost = True
        if reply is None:
            why = f"connection lost ({self.lost})" if self.lost is not None else \
                f"no reply within {timeout * 1000:.0f} ms"
            raise DeviceFault(f"gate board on {self.port}: {why} to {tag!r}")
        return reply, t_write, slot.t_ack


# ---------------------------------------------------------------- the driver


class GatedCuff:
    """A panel-set inflator behind a gate: `lines` (relay on RTS/DTR) or a GATE/1 board on `transport`."""

    kind = "gated"

    def __init__(self, *, clock: Clock, lines: Lines | None = None, transport: Transport | None = None,
                 reply_timeout_s: float = 0.5, boot_wait_s: float = 2.5,
                 on_close: list[Callable[[], None]] | None = None) -> None:
        if (lines is None) == (transport is None):
            raise ValueError("GatedCuff: give either lines or a transport")
        self.info: DeviceInfo | None = None
        self._clock = clock
        self._lines = lines
        self._board = None if transport is None else _BoardLink(transport, clock=clock, reply_timeout_s=reply_timeout_s,
                                                                 on_report=self._on_report)
        self.port = lines.port if lines is not None else transport.port if transport is not None else ""
        self._boot_wait_s = boot_wait_s
        self._on_close = list(on_close or [])
        self._lock = threading.RLock()
        self._opened = False
        self._closed = False
        self._gate = False
        self._armed_kpa = 0.0
        self._target_kpa = 0.0
        self._latched: tuple[CuffState, Fault] | None = None
        self._last_p: float | None = None
        self._reached_sent = False
        self._sample_hz = 0
        self._board_wdt_ms: int | None = None
        self._on_event: Callable[[DeviceEvent], None] | None = None
        self._on_sample: Callable[[PressureSample], None] | None = None
        self._on_lost: Callable[[BaseException], None] | None = None

    @property
    def gate_on(self) -> bool:
        """What the host last set (the board's own interlocks may have turned it off since)."""
        return self._gate

    # ------------------------------------------------------------ listeners and reports

    def set_listeners(self, *, on_event: Callable[[DeviceEvent], None] | None = None,
                      on_sample: Callable[[PressureSample], None] | None = None,
                      on_lost: Callable[[BaseException], None] | None = None) -> None:
        self._on_event, self._on_sample, self._on_lost = on_event, on_sample, on_lost

    def _lost_link(self, exc: BaseException) -> None:
        if self._board is not None:
            self._board.lost = exc
        if self._on_lost is not None and not self._closed:
            self._on_lost(DeviceFault(f"gate on {self.port}: connection lost ({exc})"))

    def _emit(self, event: DeviceEvent) -> None:
        if self._on_event is not None:
            self._on_event(event)

    def _on_report(self, report: codec.Report, t: float) -> None:
        f = report.fields
        if report.what == "B":
            with self._lock:
                self._gate = False
            self._emit(DeviceEvent(t=t, kind=EventKind.BOOT, name="BOOT", fields=dict(f), firmware=f.get("fw")))
        elif report.what == "F":
            code = codec.integer(f, "code") or 0
            kind = _FAULT_EVENTS.get(code, EventKind.OTHER)
            with self._lock:
                self._gate = False
                self._latched = (CuffState.FAULT, Fault(code))
            self._emit(DeviceEvent(t=t, kind=kind, name=kind.name if kind is not EventKind.OTHER else
                                   f"GATE_FAULT_{code}", fields=dict(f)))
        else:
            self._take_reading(f, t)

    def _take_reading(self, f: dict[str, str], t: float) -> None:
        p = codec.number(f, "p")
        ms = codec.integer(f, "ms")
        if p is None or ms is None:
            return
        with self._lock:
            self._last_p = p
            state, target = self._state(), self._target_kpa
            reached = self._gate and not self._reached_sent and abs(p - target) <= REACHED_TOLERANCE_KPA
            if reached:
                self._reached_sent = True
        if self._on_sample is not None:
            self._on_sample(PressureSample(t, ms, p, target, state))
        if reached:   # measured by the board's sensor, as CUFF/1 firmware decides it
            self._emit(DeviceEvent(t=t, kind=EventKind.TARGET_REACHED, name="TARGET_REACHED",
                                   fields={"p": f["p"]}, pressure_kpa=p, target_kpa=target))

    def _state(self) -> CuffState:
        if self._latched is not None:
            return self._latched[0]
        if self._gate:   # filling until a reading reaches the target; without read-back nothing says so
            measured = self.info is not None and self.info.pressure_readback
            return CuffState.RAMP if measured and not self._reached_sent else CuffState.HOLD
        return CuffState.ARMED if self._armed_kpa > 0 else CuffState.IDLE

    # ------------------------------------------------------------ connect

    def connect(self) -> DeviceInfo:
        """Open the port with the gate off and identify what is there (HardwareError if it cannot)."""
        if self._lines is not None:
            if not self._opened:
                self._lines.open()
                self._opened = True
            self._lines.set_gate(False)
            self.info = DeviceInfo(kind=self.kind, port=self.port, name=f"relay on {self._lines_name()}",
                                   firmware="none", hard_limit_kpa=RELAY_HARD_LIMIT_KPA, simulated=False,
                                   serial=None, limits=LIMITS, pressure_readback=False)
            return self.info
        board = self._board
        assert board is not None
        if not self._opened:
            board.transport.open(board.on_data, self._lost_link)
            self._opened = True
        reply = self._identify(board)
        self._board_cmd(codec.GATE_OFF, urgent=True)
        self.info = self._info(reply)
        return self.info

    def _lines_name(self) -> str:
        return self._lines.line.upper() if self._lines is not None else "GATE"

    def _identify(self, board: _BoardLink) -> codec.Reply:
        deadline = self._clock.now() + self._boot_wait_s
        while True:
            board.boot_seen = False
            try:
                reply, _, _ = board.command(codec.IDENTIFY, timeout_s=0.3)
                if reply.ok:
                    return reply
            except DeviceFault as exc:
                if board.lost is not None:
                    raise HardwareError(f"gate board on {self.port}: connection lost while identifying it") from exc
            if self._clock.now() >= deadline:
                raise HardwareError(f"gate board on {self.port} did not identify itself within "
                                    f"{self._boot_wait_s:g} s (no answer to '?'); is it a GATE/1 board and powered?")
            board.transport.wait(lambda: board.boot_seen, 0.3)

    def _info(self, reply: codec.Reply) -> DeviceInfo:
        f = reply.fields
        missing = [k for k in ("proto", "dev", "fw", "sensor", "hard_kpa") if k not in f]
        if missing:
            raise HardwareError(f"gate board on {self.port}: identity lacks {', '.join(missing)}: {reply.text!r}")
        if f["proto"] != str(codec.PROTOCOL_VERSION):
            raise HardwareError(f"gate board on {self.port} speaks GATE/{f['proto']}; this program speaks GATE/1")
        hard = codec.number(f, "hard_kpa")
        if hard is None or f["sensor"] not in ("0", "1"):
            raise HardwareError(f"gate board on {self.port}: malformed identity {reply.text!r}")
        self._sample_hz = codec.integer(f, "hz") or 0
        self._board_wdt_ms = codec.integer(f, "wdt_ms")
        if self._board_wdt_ms is None or self._board_wdt_ms == 0:
            raise HardwareError(f"gate board on {self.port}: its identity gives no watchdog (wdt_ms): {reply.text!r}; "
                                "a gate board without a watchdog cannot be used")
        return DeviceInfo(kind=self.kind, port=self.port, name=f["dev"], firmware=f["fw"], hard_limit_kpa=hard,
                          simulated=f["dev"].lower().startswith(SIM_NAME_PREFIX), serial=f.get("sn") or None,
                          limits=LIMITS, pressure_readback=f["sensor"] == "1")

    # ------------------------------------------------------------ the gate

    def _board_cmd(self, byte: bytes, *, urgent: bool = False) -> tuple[codec.Reply, float, float]:
        assert self._board is not None
        reply, t_write, t_ack = self._board.command(byte, urgent=urgent)
        if not reply.ok:
            ack = Ack(command=byte.decode("ascii"), t_write=t_write, t_ack=t_ack, reply=reply.text)
            if reply.code in (22, *codec.FAULTS):
                with self._lock:
                    self._latched = (CuffState.FAULT, Fault(codec.integer(reply.fields, "fault") or 30))
            raise CommandRefused(f"gate board on {self.port} refused {byte.decode('ascii')!r}: {reply.text}",
                                 ack=ack, code=reply.code, error=reply.name or "")
        return reply, t_write, t_ack

    def _switch(self, on: bool) -> Ack:
        """Gate on or off; off goes past any command waiting for its reply."""
        name = "GATE ON" if on else "GATE OFF"
        if self._lines is not None:
            t = self._clock.now()
            try:
                self._lines.set_gate(on)
            except DeviceFault as exc:
                self._lost_link(exc)
                raise
            with self._lock:
                self._gate = on
            return Ack(command=name, t_write=t, t_ack=self._clock.now(), reply=f"{self._lines_name()}={int(on)}")
        reply, t_write, t_ack = self._board_cmd(codec.GATE_ON if on else codec.GATE_OFF, urgent=not on)
        with self._lock:
            self._gate = on
        return Ack(command=name, t_write=t_write, t_ack=t_ack, reply=reply.text)

    def _refuse(self, command: str, why: str, error: str) -> CommandRefused:
        t = self._clock.now()
        return CommandRefused(f"gate on {self.port}: {command} refused: {why}",
                              ack=Ack(command=command, t_write=t, t_ack=t, reply=f"refused: {why}", sent=False),
                              code=None, error=error)

    # ------------------------------------------------------------ Cuff interface

    def ping(self) -> PingAck:
        if self._lines is not None:
            t = self._clock.now()
            try:
                self._lines.check()
            except DeviceFault as exc:
                self._lost_link(exc)
                raise
            return PingAck(command="LINES?", t_write=t, t_ack=self._clock.now(), reply="present", count=None,
                           sent=False)
        reply, t_write, t_ack = self._board_cmd(codec.KEEPALIVE)
        return PingAck(command=".", t_write=t_write, t_ack=t_ack, reply=reply.text,
                       count=codec.integer(reply.fields, "n"))

    def set_watchdog(self, timeout_ms: int) -> WatchdogAck:
        """Host side: the board's watchdog is fixed (its identity's wdt_ms). The supervisor's heartbeat,
        every `timeout_ms / 4`, must come at least twice within it, or the board would cut a stimulus."""
        t = self._clock.now()
        board_ms = self._board_wdt_ms
        if board_ms is not None and timeout_ms / 4 * 2 > board_ms:
            raise self._refuse(f"WDT {int(timeout_ms)}", f"a heartbeat every {timeout_ms / 4:g} ms is too slow for the "
                               f"board's fixed watchdog of {board_ms} ms (at most {board_ms * 2} ms of watchdog_ms)",
                               "BAD_ARGUMENT")
        return WatchdogAck(command=f"WDT {int(timeout_ms)}", t_write=t, t_ack=t, sent=False, timeout_ms=None,
                           reply="host side: the board's watchdog is fixed" if self._board else
                           "host side: no watchdog; HUPCL drops the line when the program dies")

    def set_max_time(self, max_ms: int) -> MaxTimeAck:
        t = self._clock.now()
        return MaxTimeAck(command=f"MAXTIME {int(max_ms)}", t_write=t, t_ack=t, reply="host side", sent=False,
                          max_ms=int(max_ms))

    def arm(self, ceiling_kpa: float) -> ArmAck:
        with self._lock:
            if self._latched is not None:
                raise self._refuse("ARM", f"latched in {self._latched[1].describe(self._latched[0])}", "LATCHED")
            self._armed_kpa = floor_kpa(ceiling_kpa)
        t = self._clock.now()
        return ArmAck(command=f"ARM {self._armed_kpa:.1f}", t_write=t, t_ack=t, reply="host side", sent=False,
                      ceiling_kpa=self._armed_kpa)

    def disarm(self) -> Ack:
        ack = self._switch(False)
        with self._lock:
            self._armed_kpa = 0.0
        return Ack(command="DISARM", t_write=ack.t_write, t_ack=ack.t_ack, reply=ack.reply)

    def set_rate(self, rate_kpa_s: float) -> RateAck:
        t = self._clock.now()
        return RateAck(command=f"RATE {rate_kpa_s:g}", t_write=t, t_ack=t, sent=False, rate_kpa_s=rate_kpa_s,
                       reply="host side: the inflator fills at its own speed")

    def set_target(self, pressure_kpa: float) -> RampAck:
        """Gate on: the inflator fills to its panel setting (the pre-flight made it `pressure_kpa`)."""
        with self._lock:
            if self._latched is not None:
                raise self._refuse("GATE ON", f"latched in {self._latched[1].describe(self._latched[0])}", "LATCHED")
            if self._armed_kpa <= 0:
                raise self._refuse("GATE ON", "not armed", "NOT_ARMED")
            if round(pressure_kpa, 1) > self._armed_kpa:
                raise self._refuse("GATE ON", f"{pressure_kpa:g} kPa is over the ceiling {self._armed_kpa:g} kPa",
                                   "OVER_LIMIT")
            self._target_kpa = pressure_kpa
            self._reached_sent = False
        ack = self._switch(True)
        return RampAck(command=ack.command, t_write=ack.t_write, t_ack=ack.t_ack, reply=ack.reply,
                       target_kpa=pressure_kpa, eta_s=None)

    def deflate(self) -> DeflateAck:
        """Gate off: the inflator vents (it has no slow deflation)."""
        ack = self._switch(False)
        self._target_kpa = 0.0
        return DeflateAck(command=ack.command, t_write=ack.t_write, t_ack=ack.t_ack, reply=ack.reply, eta_s=None)

    def vent(self) -> Ack:
        ack = self._switch(False)
        self._target_kpa = 0.0
        return ack

    def estop(self) -> Ack:
        ack = self._switch(False)
        with self._lock:
            self._latched = (CuffState.ESTOP, Fault(FaultKind.ESTOP.value))
        return ack

    def clear(self) -> Ack:
        if self._board is not None:
            reply, t_write, t_ack = self._board_cmd(codec.CLEAR)
            ack = Ack(command="c", t_write=t_write, t_ack=t_ack, reply=reply.text)
        else:
            t = self._clock.now()
            ack = Ack(command="CLEAR", t_write=t, t_ack=t, reply="host side", sent=False)
        with self._lock:
            self._latched = None
        return ack

    def status(self) -> CuffStatus:
        hard = self.info.hard_limit_kpa if self.info is not None else RELAY_HARD_LIMIT_KPA
        p: float | None = None
        if self._board is not None:
            reply, _, _ = self._board_cmd(codec.STATUS)
            p = codec.number(reply.fields, "p")
            fault = codec.integer(reply.fields, "fault")
            gate = reply.fields.get("gate")
            if fault is None or gate not in ("0", "1"):
                raise DeviceFault(f"gate board on {self.port}: malformed status {reply.text!r}")
            with self._lock:
                if gate == "1" and not self._gate:
                    # the host turned it off (or never on): a board that says otherwise is not trusted,
                    # and the supervisor's trip sends the off byte again
                    raise DeviceFault(f"gate board on {self.port}: reports the gate on although the host "
                                      f"turned it off ({reply.text!r})")
                self._gate = gate == "1"     # the board's own interlocks may have turned it off
                if fault:
                    self._latched = self._latched or (CuffState.FAULT, Fault(fault))
        with self._lock:
            latched = self._latched
            return CuffStatus(state=self._state(), pressure_kpa=p, target_kpa=self._target_kpa if self._gate else 0.0,
                              armed_max_kpa=self._armed_kpa, hard_limit_kpa=hard,
                              fault=None if latched is None else latched[1])

    def stream(self, rate_hz: int) -> StreamAck:
        t = self._clock.now()
        return StreamAck(command=f"STREAM {int(rate_hz)}", t_write=t, t_ack=t, sent=False,
                         reply="host side: the board streams at its own rate" if self._sample_hz else
                         "host side: nothing measures the pressure", rate_hz=self._sample_hz)

    def sim_stop_button(self) -> Ack:
        raise self._refuse("SIM BUTTON", "a gated inflator has no participant stop button of its own", "UNKNOWN")

    def close(self) -> None:
        """Gate off (best effort), close the port, then whatever was handed over with it."""
        if self._closed:
            return
        self._closed = True
        errors: list[str] = []
        if self._opened and (self._board is None or self._board.lost is None):
            try:
                self._switch(False)
            except (OSError, CuedpainError) as exc:
                errors.append(f"gate off at close: {exc}")
        closers = [self._lines.close] if self._lines is not None else \
            [self._board.transport.close] if self._board is not None else []
        for action in [*closers, *self._on_close]:
            try:
                action()
            except (OSError, CuedpainError, serial.SerialException) as exc:
                errors.append(str(exc))
        if errors:
            raise HardwareError(f"closing gate on {self.port}: {'; '.join(errors)}")


def board_transport(port: str, *, clock: Clock) -> SerialTransport:
    """A GATE/1 board's serial port: 115200 8N1, exclusive, HUPCL set after the open."""
    return SerialTransport(port, clock=clock, baudrate=codec.BAUDRATE, after_open=set_hupcl)
