"""`LineCuff`: the CUFF/1 driver (experiment.cuff.base.Cuff over a byte transport).

Rules it keeps (docs/cuff-protocol.md, "Host rules"):
* One ordinary command outstanding at a time (a lock), each with a reply timeout:
  no reply in time, an `ERR` reply or a lost port raise `DeviceFault`.
* `VENT` and `ESTOP` are *urgent*: they do not wait for the outstanding command, they go
  on the wire at once. The device answers every command exactly once and in order, so
  replies are matched to commands first-in first-out; an OK reply that names a later
  command means the earlier ones lost their replies. A command whose wait timed out
  keeps its place for `late_reply_s`, so its late reply is absorbed instead of being
  taken for the next command's; after that it is dropped (a device that was silent
  never answers the commands it lost). One ambiguity is resolved in favour of the
  live command: when an abandoned and a waiting command have the same name, a reply
  of that name goes to the waiting one (otherwise one lost reply would shift every
  later same-named reply by one, forever).
* Lines beginning with `!` are unsolicited (events, telemetry) and go to the listeners
  from the reader thread; they never stand in for a reply.
* After opening: boards often reset when the port opens, so `connect` sends HELLO, and
  while it gets no answer waits for `!EVT BOOT` or retries, up to `boot_wait_s`.

Translation: replies become typed acknowledgements (`OK ARM max=40.0` -> `ArmAck(ceiling_kpa=
40.0)`, `eta_ms=` -> `eta_s`, `PING n=` -> `count`); a value a reply lacks or sends malformed is
the value sent (or None where there is none), never a crash in the caller. `ERR` replies raise
`CommandError` (a `CommandRefused`). `!EVT` lines become `DeviceEvent`s (kind, `p=` ->
`pressure_kpa`, `src=` -> `StopSource`), `!P` lines `PressureSample`s; `STATUS` a
`CuffStatus` with its `CuffState` and `Fault`. The wire text stays on acks and events
for the log.
"""

from __future__ import annotations

import re
import threading
from collections import deque
from dataclasses import dataclass
from typing import Callable, Sequence

from experiment.clock import Clock
from experiment.cuff.base import (Ack, ArmAck, CommandRefused, CuffState, CuffStatus, DeflateAck, DeviceEvent,
                                  DeviceInfo, DeviceLimits, EventKind, Fault, MaxTimeAck, PingAck,
                                  PressureSample, RampAck, RateAck, Span, StopSource, StreamAck, WatchdogAck)
from experiment.cuff.line_codec import (MAXTIME_MS, RATE_KPA_S, SIM_NAME_PREFIX, WDT_MS, EventLine, LineSplitter,
                                        Reply, Telemetry, floor_kpa, format_command, format_kpa,
                                        parse_device_line, reply_command)
from experiment.cuff.transport import Transport
from experiment.errors import CuedpainError, DeviceFault, HardwareError

URGENT = frozenset({"VENT", "ESTOP"})
HOST_LINE_LIMIT = 256     # the host tolerates longer device lines than it sends
LIMITS = DeviceLimits(rate_kpa_s=Span(*RATE_KPA_S), watchdog_ms=Span(*WDT_MS), max_time_ms=Span(*MAXTIME_MS))

_NUMBER = re.compile(r"^-?[0-9]{1,7}(\.[0-9]{1,6})?$")   # a finite decimal as CUFF/1 sends them
_EVENT_KINDS = {k.name: k for k in EventKind if k is not EventKind.OTHER}
_SOURCES = {s.value: s for s in StopSource}
_STATES = {s.value: s for s in CuffState}


class CommandError(CommandRefused):
    """The device answered `ERR <code> <NAME>`; `ack` holds the exchange."""


@dataclass
class _Slot:
    command: str              # the name its OK reply carries ("PING", "STATUS", "SIM LEAK")
    text: str
    t_write: float = 0.0
    reply: Reply | None = None
    t_ack: float | None = None
    lost: bool = False        # a later command's reply came first: this one's never will
    abandoned: bool = False   # its caller gave up waiting; a late reply is still absorbed


@dataclass(frozen=True)
class _Exchange:
    """One command and its OK reply."""

    text: str
    t_write: float
    t_ack: float
    reply: Reply


# ---------------------------------------------------------------- translation (pure)


def number(fields: dict[str, str], key: str) -> float | None:
    """A well-formed finite number from a CUFF/1 field, or None (absent or malformed)."""
    text = fields.get(key)
    return float(text) if text is not None and _NUMBER.match(text) else None


def integer(fields: dict[str, str], key: str) -> int | None:
    """A non-negative integer from a CUFF/1 field, or None (absent or malformed)."""
    text = fields.get(key)
    return int(text) if text is not None and text.isdigit() and len(text) <= 9 else None


def seconds(fields: dict[str, str], key: str) -> float | None:
    """A millisecond field (`eta_ms=1500`) in seconds, or None."""
    ms = integer(fields, key)
    return None if ms is None else ms / 1000


def event_from_line(line: EventLine, t: float) -> DeviceEvent:
    """`!EVT NAME k=v` -> a typed event; malformed values are left out (the log keeps the text)."""
    f = line.fields
    kind = _EVENT_KINDS.get(line.name, EventKind.OTHER)
    return DeviceEvent(t=t, kind=kind, name=line.name, fields=dict(f), pressure_kpa=number(f, "p"),
                       target_kpa=number(f, "tgt"), source=_SOURCES.get(f.get("src", "")),
                       limit_ms=integer(f, "ms"), firmware=f.get("fw"))


def sample_from_line(line: Telemetry, t: float) -> PressureSample | None:
    """`!P` -> a sample; None for a state CUFF/1 does not have (the line counts as garbage)."""
    state = _STATES.get(line.state)
    if state is None:
        return None
    return PressureSample(t, line.t_ms, line.pressure_kpa, line.target_kpa, state)


def status_from_reply(reply: Reply) -> CuffStatus:
    """`OK STATUS st= p= tgt= max= hard= err=` -> CuffStatus; ValueError when malformed."""
    f = reply.fields
    state = _STATES.get(f.get("st", ""))
    p, tgt, armed, hard = (number(f, k) for k in ("p", "tgt", "max", "hard"))
    err = integer(f, "err")
    if state is None or p is None or tgt is None or armed is None or hard is None or err is None:
        raise ValueError("st, p, tgt, max, hard or err missing or malformed")
    return CuffStatus(state=state, pressure_kpa=p, target_kpa=tgt, armed_max_kpa=armed, hard_limit_kpa=hard,
                      fault=Fault(err) if err else None)


class LineCuff:
    """A CUFF/1 cuff over any `Transport` (a serial port or an in-process loopback)."""

    kind = "line"

    def __init__(self, transport: Transport, *, clock: Clock, reply_timeout_s: float = 0.5,
                 boot_wait_s: float = 2.5, hello_timeout_s: float = 0.3, late_reply_s: float | None = None,
                 on_close: Sequence[Callable[[], None]] = ()) -> None:
        self.info: DeviceInfo | None = None
        self.port = transport.port
        self._transport = transport
        self._clock = clock
        self._reply_timeout_s = reply_timeout_s
        self._boot_wait_s = boot_wait_s
        self._hello_timeout_s = hello_timeout_s
        self._late_reply_s = max(1.0, 2 * reply_timeout_s) if late_reply_s is None else late_reply_s
        self._on_close = list(on_close)
        self._splitter = LineSplitter(HOST_LINE_LIMIT)
        self._cmd_lock = threading.Lock()      # one ordinary command outstanding
        self._io_lock = threading.RLock()      # slot order == wire order
        self._slots: deque[_Slot] = deque()
        self._lost: BaseException | None = None
        self._boot_seen = False
        self._opened = False
        self._closed = False
        self.garbage_lines = 0
        self.stray_replies = 0
        self._on_event: Callable[[DeviceEvent], None] | None = None
        self._on_sample: Callable[[PressureSample], None] | None = None
        self._on_lost: Callable[[BaseException], None] | None = None

    # ------------------------------------------------------------ listeners and receive path

    def set_listeners(self, *, on_event: Callable[[DeviceEvent], None] | None = None,
                      on_sample: Callable[[PressureSample], None] | None = None,
                      on_lost: Callable[[BaseException], None] | None = None) -> None:
        """Callbacks run in the reader thread; keep them short and make them not raise."""
        self._on_event, self._on_sample, self._on_lost = on_event, on_sample, on_lost

    def _on_data(self, data: bytes, t: float) -> None:
        for raw in self._splitter.feed(data):
            if raw.overflow:
                self.garbage_lines += 1
                continue
            try:
                line = parse_device_line(raw.data.decode("ascii"))
            except (ValueError, UnicodeDecodeError):
                self.garbage_lines += 1
                continue
            if isinstance(line, Reply):
                self._take_reply(line, t)
            elif isinstance(line, EventLine):
                self._take_event(event_from_line(line, t))
            else:
                self._take_sample(line, t)

    def _take_event(self, event: DeviceEvent) -> None:
        if event.kind is EventKind.BOOT:
            self._boot_seen = True
        if self._on_event is not None:
            self._on_event(event)

    def _take_sample(self, line: Telemetry, t: float) -> None:
        sample = sample_from_line(line, t)
        if sample is None:
            self.garbage_lines += 1
        elif self._on_sample is not None:
            self._on_sample(sample)

    def _take_reply(self, reply: Reply, t: float) -> None:
        with self._io_lock:
            for s in self._slots:
                if s.abandoned and t - s.t_write > self._late_reply_s:
                    s.lost = True
            pending = [s for s in self._slots if s.reply is None and not s.lost]
            if not pending:
                self.stray_replies += 1
                return
            slot = pending[0]
            if reply.ok:
                same = [s for s in pending if s.command == reply.command]
                if not same:
                    self.stray_replies += 1
                    return
                # a command still waited for wins over abandoned ones of the same name
                slot = next((s for s in same if not s.abandoned), same[0])
                for skipped in pending[:pending.index(slot)]:
                    skipped.lost = True      # the device answers in order: theirs will not come
            slot.reply, slot.t_ack = reply, t
            while self._slots and (self._slots[0].reply is not None or self._slots[0].lost):
                self._slots.popleft()

    def _lost_link(self, exc: BaseException) -> None:
        self._lost = exc
        if self._on_lost is not None and not self._closed:
            self._on_lost(DeviceFault(f"cuff on {self.port}: connection lost ({exc})"))

    # ------------------------------------------------------------ commands

    def command(self, text: str, *, timeout_s: float | None = None) -> Ack:
        """Send one command line and wait for its reply (ERR -> `CommandError`).

        The raw CUFF/1 escape hatch (tests, fault injection); VENT and ESTOP skip the
        one-outstanding lock (see the module docstring).
        """
        return self._ack(self._send(text, timeout_s))

    def _send(self, text: str, timeout_s: float | None = None) -> _Exchange:
        if not text.split():
            raise ValueError("a CUFF/1 command cannot be blank")
        name = text.split()[0].upper()
        if name in URGENT:
            return self._exchange(text, timeout_s)
        with self._cmd_lock:
            return self._exchange(text, timeout_s)

    def _exchange(self, text: str, timeout_s: float | None) -> _Exchange:
        if self._lost is not None:
            raise DeviceFault(f"cuff on {self.port}: connection lost ({self._lost}); {text!r} not sent")
        words = text.split()
        name = reply_command(" ".join(words[:2]) if words and words[0].upper() == "SIM" else words[0])
        data = format_command(text)
        slot = _Slot(name, text)
        with self._io_lock:
            self._slots.append(slot)
            try:
                slot.t_write = self._transport.write(data)
            except DeviceFault:
                slot.lost = True
                raise
        timeout = self._reply_timeout_s if timeout_s is None else timeout_s
        self._transport.wait(lambda: slot.reply is not None or slot.lost or self._lost is not None, timeout)
        with self._io_lock:
            reply = slot.reply
            slot.abandoned = reply is None
        if reply is None:
            raise self._no_reply(text, slot, timeout)
        done = _Exchange(text, slot.t_write, slot.t_ack or slot.t_write, reply)
        if not reply.ok:
            raise CommandError(f"cuff on {self.port} refused {text!r}: {reply.text}",
                               ack=self._ack(done), code=reply.code, error=reply.name)
        return done

    def _no_reply(self, text: str, slot: _Slot, timeout_s: float) -> DeviceFault:
        if self._lost is not None:
            return DeviceFault(f"cuff on {self.port}: connection lost ({self._lost}) "
                               f"while waiting for the reply to {text!r}")
        why = "its reply never came (a later reply arrived first)" if slot.lost else \
            f"no reply within {timeout_s * 1000:.0f} ms"
        return DeviceFault(f"cuff on {self.port}: {why} to {text!r}")

    @staticmethod
    def _ack(done: _Exchange) -> Ack:
        return Ack(command=done.text, t_write=done.t_write, t_ack=done.t_ack, reply=done.reply.text)

    # ------------------------------------------------------------ Cuff interface

    def connect(self) -> DeviceInfo:
        """Open the port and identify the device (HardwareError if it cannot)."""
        if not self._opened:
            self._transport.open(self._on_data, self._lost_link)
            self._opened = True
        self.info = self._identify(self._hello())
        return self.info

    def _hello(self) -> _Exchange:
        """HELLO until it is answered; a board that reset on open announces BOOT when it can listen."""
        deadline = self._clock.now() + self._boot_wait_s
        last_error = "no reply"
        while True:
            with self._io_lock:
                self._slots.clear()         # any OK HELLO, also a late one, will do
            self._boot_seen = False
            try:
                return self._send("HELLO", timeout_s=self._hello_timeout_s)
            except CommandError as exc:
                last_error = exc.ack.reply
            except DeviceFault as exc:
                if self._lost is not None:
                    raise HardwareError(f"cuff on {self.port}: connection lost while identifying it "
                                        f"({self._lost})") from exc
            remaining = deadline - self._clock.now()
            if remaining <= 0:
                raise HardwareError(f"cuff on {self.port} did not identify itself within "
                                    f"{self._boot_wait_s:g} s ({last_error} to HELLO); "
                                    "is it a CUFF/1 device and powered?")
            self._transport.wait(lambda: self._boot_seen, min(remaining, self._hello_timeout_s))

    def _identify(self, done: _Exchange) -> DeviceInfo:
        f = done.reply.fields
        missing = [k for k in ("dev", "fw", "proto", "hard") if k not in f]
        if missing:
            raise HardwareError(f"cuff on {self.port}: HELLO reply lacks {', '.join(missing)}: {done.reply.text!r}")
        if f["proto"] != "1":
            raise HardwareError(f"cuff on {self.port} speaks CUFF/{f['proto']}; this program speaks CUFF/1")
        hard = number(f, "hard")
        if hard is None:
            raise HardwareError(f"cuff on {self.port}: hard limit {f['hard']!r} is not a number")
        return DeviceInfo(kind=self.kind, port=self.port, name=f["dev"], firmware=f["fw"], hard_limit_kpa=hard,
                          simulated=f["dev"].lower().startswith(SIM_NAME_PREFIX), serial=f.get("sn") or None,
                          limits=LIMITS)

    def ping(self) -> PingAck:
        """PING: `n` counts PINGs since boot (None when the reply lacks it)."""
        done = self._send("PING")
        return PingAck(command=done.text, reply=done.reply.text, count=integer(done.reply.fields, "n"),
                       t_write=done.t_write, t_ack=done.t_ack)

    def set_watchdog(self, timeout_ms: int) -> WatchdogAck:
        done = self._send(f"WDT {int(timeout_ms)}")
        ms = integer(done.reply.fields, "ms")
        return WatchdogAck(command=done.text, reply=done.reply.text,
                           timeout_ms=int(timeout_ms) if ms is None else ms, t_write=done.t_write, t_ack=done.t_ack)

    def set_max_time(self, max_ms: int) -> MaxTimeAck:
        done = self._send(f"MAXTIME {int(max_ms)}")
        ms = integer(done.reply.fields, "ms")
        return MaxTimeAck(command=done.text, reply=done.reply.text, max_ms=int(max_ms) if ms is None else ms,
                          t_write=done.t_write, t_ack=done.t_ack)

    def arm(self, ceiling_kpa: float) -> ArmAck:
        """Armed with the ceiling rounded *down* to the protocol's 0.1 kPa (the device's
        `max=` when it says one)."""
        sent = floor_kpa(ceiling_kpa)
        done = self._send(f"ARM {format_kpa(sent)}")
        armed = number(done.reply.fields, "max")
        return ArmAck(command=done.text, reply=done.reply.text, ceiling_kpa=sent if armed is None else armed,
                      t_write=done.t_write, t_ack=done.t_ack)

    def disarm(self) -> Ack:
        return self._ack(self._send("DISARM"))

    def set_rate(self, rate_kpa_s: float) -> RateAck:
        done = self._send(f"RATE {format_kpa(rate_kpa_s)}")
        rate = number(done.reply.fields, "kpa_s")
        return RateAck(command=done.text, reply=done.reply.text,
                       rate_kpa_s=round(rate_kpa_s, 1) if rate is None else rate, t_write=done.t_write, t_ack=done.t_ack)

    def set_target(self, pressure_kpa: float) -> RampAck:
        done = self._send(f"SET {format_kpa(pressure_kpa)}")
        f = done.reply.fields
        target = number(f, "tgt")
        return RampAck(command=done.text, reply=done.reply.text,
                       target_kpa=round(pressure_kpa, 1) if target is None else target,
                       eta_s=seconds(f, "eta_ms"), t_write=done.t_write, t_ack=done.t_ack)

    def deflate(self) -> DeflateAck:
        done = self._send("DEFLATE")
        return DeflateAck(command=done.text, reply=done.reply.text, eta_s=seconds(done.reply.fields, "eta_ms"),
                          t_write=done.t_write, t_ack=done.t_ack)

    def vent(self) -> Ack:
        return self._ack(self._send("VENT"))

    def estop(self) -> Ack:
        return self._ack(self._send("ESTOP"))

    def clear(self) -> Ack:
        return self._ack(self._send("CLEAR"))

    def sim_stop_button(self) -> Ack:
        """`SIM BUTTON` (real firmware answers ERR 10: CommandError)."""
        return self._ack(self._send("SIM BUTTON"))

    def stream(self, rate_hz: int) -> StreamAck:
        done = self._send(f"STREAM {int(rate_hz)}")
        hz = integer(done.reply.fields, "hz")
        return StreamAck(command=done.text, reply=done.reply.text, rate_hz=int(rate_hz) if hz is None else hz,
                         t_write=done.t_write, t_ack=done.t_ack)

    def status(self) -> CuffStatus:
        done = self._send("STATUS?")
        try:
            return status_from_reply(done.reply)
        except ValueError as exc:
            raise DeviceFault(f"cuff on {self.port}: malformed STATUS reply {done.reply.text!r} ({exc})") from None

    def close(self) -> None:
        """Close the port, then whatever was handed over with it (a sim server)."""
        if self._closed:
            return
        self._closed = True
        errors: list[str] = []
        for action in [self._transport.close, *self._on_close]:
            try:
                action()
            except (OSError, CuedpainError) as exc:
                errors.append(str(exc))
        if errors:
            raise HardwareError(f"closing cuff on {self.port}: {'; '.join(errors)}")
