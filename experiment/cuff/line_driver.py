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
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass
from typing import Callable, Sequence

from experiment.clock import Clock
from experiment.cuff.base import CommandResult, CuffStatus, DeviceEvent, DeviceInfo, PressureSample
from experiment.cuff.line_codec import (SIM_NAME_PREFIX, EventLine, LineSplitter, Reply, Telemetry,
                                        floor_kpa, format_command, format_kpa, parse_device_line,
                                        reply_command)
from experiment.cuff.transport import Transport
from experiment.errors import CuedpainError, DeviceFault, HardwareError

URGENT = frozenset({"VENT", "ESTOP"})
HOST_LINE_LIMIT = 256     # the host tolerates longer device lines than it sends


class CommandError(DeviceFault):
    """The device answered `ERR <code> <NAME>`; `result` holds the exchange."""

    def __init__(self, message: str, *, result: CommandResult, code: int, name: str) -> None:
        super().__init__(message)
        self.result = result
        self.code = code
        self.name = name


@dataclass
class _Slot:
    command: str              # the name its OK reply carries ("PING", "STATUS", "SIM LEAK")
    text: str
    t_write: float = 0.0
    reply: Reply | None = None
    t_ack: float | None = None
    lost: bool = False        # a later command's reply came first: this one's never will
    abandoned: bool = False   # its caller gave up waiting; a late reply is still absorbed


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
                if line.name == "BOOT":
                    self._boot_seen = True
                if self._on_event is not None:
                    self._on_event(DeviceEvent(t, line.name, dict(line.fields)))
            elif isinstance(line, Telemetry) and self._on_sample is not None:
                self._on_sample(PressureSample(t, line.t_ms, line.pressure_kpa, line.target_kpa, line.state))

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

    def command(self, text: str, *, timeout_s: float | None = None) -> CommandResult:
        """Send one command line and wait for its reply (ERR -> `CommandError`).

        VENT and ESTOP skip the one-outstanding lock (see the module docstring).
        """
        if not text.split():
            raise ValueError("a CUFF/1 command cannot be blank")
        name = text.split()[0].upper()
        if name in URGENT:
            return self._exchange(text, timeout_s)
        with self._cmd_lock:
            return self._exchange(text, timeout_s)

    def _exchange(self, text: str, timeout_s: float | None) -> CommandResult:
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
            if self._lost is not None:
                raise DeviceFault(f"cuff on {self.port}: connection lost ({self._lost}) "
                                  f"while waiting for the reply to {text!r}")
            why = "its reply never came (a later reply arrived first)" if slot.lost else \
                f"no reply within {timeout * 1000:.0f} ms"
            raise DeviceFault(f"cuff on {self.port}: {why} to {text!r}")
        result = CommandResult(text, slot.t_write, slot.t_ack or slot.t_write, reply.text, dict(reply.fields))
        if not reply.ok:
            raise CommandError(f"cuff on {self.port} refused {text!r}: {reply.text}",
                               result=result, code=reply.code, name=reply.name)
        return result

    # ------------------------------------------------------------ Cuff interface

    def connect(self) -> DeviceInfo:
        """Open the port and identify the device (HardwareError if it cannot)."""
        if not self._opened:
            self._transport.open(self._on_data, self._lost_link)
            self._opened = True
        deadline = self._clock.now() + self._boot_wait_s
        last_error = "no reply"
        while True:
            with self._io_lock:
                self._slots.clear()         # any OK HELLO, also a late one, will do
            self._boot_seen = False
            try:
                result = self.command("HELLO", timeout_s=self._hello_timeout_s)
                break
            except CommandError as exc:
                last_error = exc.result.reply
            except DeviceFault as exc:
                if self._lost is not None:
                    raise HardwareError(f"cuff on {self.port}: connection lost while identifying it "
                                        f"({self._lost})") from exc
            remaining = deadline - self._clock.now()
            if remaining <= 0:
                raise HardwareError(f"cuff on {self.port} did not identify itself within "
                                    f"{self._boot_wait_s:g} s ({last_error} to HELLO); "
                                    "is it a CUFF/1 device and powered?")
            # a board that reset on open announces BOOT when it can listen: retry then
            self._transport.wait(lambda: self._boot_seen, min(remaining, self._hello_timeout_s))
        self.info = self._identify(result)
        return self.info

    def _identify(self, result: CommandResult) -> DeviceInfo:
        f = result.fields
        missing = [k for k in ("dev", "fw", "proto", "hard") if k not in f]
        if missing:
            raise HardwareError(f"cuff on {self.port}: HELLO reply lacks {', '.join(missing)}: {result.reply!r}")
        if f["proto"] != "1":
            raise HardwareError(f"cuff on {self.port} speaks CUFF/{f['proto']}; this program speaks CUFF/1")
        try:
            hard = float(f["hard"])
        except ValueError:
            raise HardwareError(f"cuff on {self.port}: hard limit {f['hard']!r} is not a number") from None
        return DeviceInfo(kind=self.kind, port=self.port, name=f["dev"], firmware=f["fw"],
                          hard_limit_kpa=hard, simulated=f["dev"].lower().startswith(SIM_NAME_PREFIX),
                          serial=f.get("sn") or None)

    def ping(self) -> CommandResult:
        return self.command("PING")

    def set_watchdog(self, timeout_ms: int) -> CommandResult:
        return self.command(f"WDT {int(timeout_ms)}")

    def set_max_time(self, max_ms: int) -> CommandResult:
        return self.command(f"MAXTIME {int(max_ms)}")

    def arm(self, ceiling_kpa: float) -> CommandResult:
        """Armed with the ceiling rounded *down* to the protocol's 0.1 kPa."""
        return self.command(f"ARM {format_kpa(floor_kpa(ceiling_kpa))}")

    def disarm(self) -> CommandResult:
        return self.command("DISARM")

    def set_rate(self, rate_kpa_s: float) -> CommandResult:
        return self.command(f"RATE {format_kpa(rate_kpa_s)}")

    def set_target(self, pressure_kpa: float) -> CommandResult:
        return self.command(f"SET {format_kpa(pressure_kpa)}")

    def deflate(self) -> CommandResult:
        return self.command("DEFLATE")

    def vent(self) -> CommandResult:
        return self.command("VENT")

    def estop(self) -> CommandResult:
        return self.command("ESTOP")

    def clear(self) -> CommandResult:
        return self.command("CLEAR")

    def stream(self, rate_hz: int) -> CommandResult:
        return self.command(f"STREAM {int(rate_hz)}")

    def status(self) -> CuffStatus:
        result = self.command("STATUS?")
        f = result.fields
        try:
            return CuffStatus(state=f["st"], pressure_kpa=float(f["p"]), target_kpa=float(f["tgt"]),
                              armed_max_kpa=float(f["max"]), hard_limit_kpa=float(f["hard"]),
                              error_code=int(f["err"]))
        except (KeyError, ValueError) as exc:
            raise DeviceFault(f"cuff on {self.port}: malformed STATUS reply {result.reply!r} ({exc})") from None

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
