"""Scanner pulses from a serial trigger box: a pure decoder and a reader thread.

A dedicated thread blocks on the port and stamps each read with `clock.now()` as it
returns, so the pulse time does not depend on how often the runner polls. Bytes read
together share one stamp (a trigger is one byte; see docs/scanner.md for the FTDI
latency timer, which delays and batches bytes before they reach the host).

Presets (`SerialPreset`, `PRESETS`) and the `serial:PORT[:PRESET]` grammar live in
`experiment.protocol.specs`; docs/scanner.md lists them.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from experiment.buttons.decoders import UNMATCHED_HEAD, ButtonDecoder, ButtonPress, Fed, Unmatched
from experiment.clock import Clock
from experiment.errors import DeviceFault, HardwareError
from experiment.protocol.specs import PRESETS, SerialPreset
from experiment.scanner.base import KeyPress, Pulse, PulseBuffer

if TYPE_CHECKING:
    import serial

__all__ = ["PRESETS", "ButtonPress", "LineSplitter", "SerialPreset", "SerialSource", "TriggerDecoder", "Unmatched"]


class TriggerDecoder:
    """Bytes -> number of pulses (pure). Keeps the last byte for edge detection."""

    def __init__(self, preset: SerialPreset) -> None:
        self.preset = preset
        self._bit_was_set = False  # bitwise: the first byte with the bit set is an edge
        self.other_bytes = 0

    def feed(self, data: bytes) -> int:
        return sum(self.feed_byte(b)[0] for b in data)

    def feed_byte(self, b: int) -> tuple[bool, bool]:
        """(a pulse, the byte was the trigger's): a held trigger bit is the trigger's but no pulse."""
        p = self.preset
        if p.trigger_mask is not None:
            now_set = bool(b & p.trigger_mask)
            edge = now_set and not self._bit_was_set
            self._bit_was_set = now_set
            if not now_set:
                self.other_bytes += 1
            return edge, now_set
        if b == p.trigger_byte:
            return True, True
        self.other_bytes += 1
        return False, False


class LineSplitter:
    """One serial line's bytes -> pulses, button presses and unmatched bytes (pure).

    Each byte goes to the trigger decoder first, unless the button decoder is half-way
    through a packet (a Cedrus packet's timer bytes may equal the trigger byte)."""

    def __init__(self, trigger: TriggerDecoder | None, buttons: ButtonDecoder | None) -> None:
        self.trigger = trigger
        self.buttons = buttons

    def feed(self, data: bytes) -> tuple[int, Fed]:
        fed, pulses = Fed(), 0
        trigger, buttons = self.trigger, self.buttons
        for b in data:
            if buttons is not None and buttons.mid_packet:
                buttons.feed_byte(b, fed)
                continue
            if trigger is not None:
                pulse, taken = trigger.feed_byte(b)
                pulses += pulse
                if taken:
                    continue
            if buttons is not None:
                buttons.feed_byte(b, fed)
            elif trigger is None:
                fed.unmatched.append(b)
        return pulses, fed


class SerialSource:
    """A trigger box, a button box, or both on one serial port, read by one thread.

    With `preset` None the line carries no pulses (a button box alone); with `buttons`
    set, the bytes that are not the trigger's are the button decoder's (one reader owns a
    port that carries both: a fORP sends the trigger and the presses on one line). Every
    byte is stamped on the run's clock when its read returns.

    `poll()` raises DeviceFault when the port was lost (after handing out the pulses
    read before the loss) or when pulses were dropped from a full queue.
    """

    simulated = False
    reads_keyboard = False

    def __init__(self, port: str, *, clock: Clock, preset: SerialPreset | None, capacity: int = 100_000,
                 name: str = "serial", read_timeout_s: float = 0.2, buttons: ButtonDecoder | None = None,
                 baud: int | None = None) -> None:
        if preset is None and buttons is None:
            raise ValueError("SerialSource: a line needs a trigger preset, a button decoder or both")
        self.port = port
        self.preset = preset
        self.buttons = buttons
        self.baud = baud if baud is not None else preset.baud if preset is not None else 19200
        self.name = name
        self._clock = clock
        self._decoder = TriggerDecoder(preset) if preset is not None else None
        self._splitter = LineSplitter(self._decoder, buttons)
        self._buffer: PulseBuffer[Pulse] = PulseBuffer(capacity, what=f"trigger port {port}")
        self._presses: PulseBuffer[ButtonPress] = PulseBuffer(capacity, what=f"button port {port}")
        self._unmatched_lock = threading.Lock()
        self._unmatched: Unmatched | None = None
        self._read_timeout_s = read_timeout_s
        self._serial: serial.Serial | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._count = 0
        self.lost: BaseException | None = None
        self.low_latency: bool | None = None  # True when the driver accepted low-latency mode

    def _what(self) -> str:
        if self.buttons is None and self.preset is not None:
            return self.preset.describe()
        parts = [] if self.preset is None else [self.preset.describe()]
        return ", ".join(parts + [f"{self.buttons.name if self.buttons else ''} buttons at {self.baud} baud"])

    def open(self) -> None:
        import serial  # local import: only serial sources need pyserial loaded

        role = "trigger" if self.buttons is None else "button" if self.preset is None else "trigger and button"
        try:
            self._serial = serial.serial_for_url(self.port, baudrate=self.baud, timeout=self._read_timeout_s,
                                                 exclusive=True)
        except (serial.SerialException, OSError, ValueError) as exc:
            raise HardwareError(f"cannot open {role} port {self.port!r} ({self._what()}): {exc}") from exc
        try:
            self._serial.set_low_latency_mode(True)
            self.low_latency = True
        except (AttributeError, NotImplementedError, OSError, ValueError):
            self.low_latency = False  # ptys and non-FTDI drivers refuse; recorded, not fatal
        self._serial.reset_input_buffer()  # bytes from before the run are not pulses of this run
        self._thread = threading.Thread(target=self._read_loop, name=f"{role}-{self.port}", daemon=True)
        self._thread.start()

    def _read_loop(self) -> None:
        ser = self._serial
        assert ser is not None
        try:
            while not self._stop.is_set():
                data = ser.read(ser.in_waiting or 1)
                t = self._clock.now()
                if not data:
                    continue
                self._take(data, t)
        except Exception as exc:  # noqa: BLE001 - any end of the port is reported by poll()
            if not self._stop.is_set():
                self.lost = exc

    def _take(self, data: bytes, t: float) -> None:
        """One read's bytes, all stamped `t`: pulses, presses, and what matched nothing."""
        pulses, fed = self._splitter.feed(data)
        for _ in range(pulses):
            self._buffer.push(Pulse(self._count, t, self.name))
            self._count += 1
        for d in fed.presses:
            self._presses.push(ButtonPress(d.button, t, d.raw, d.device_ms))
        if fed.unmatched:
            with self._unmatched_lock:
                u = self._unmatched
                if u is None:
                    self._unmatched = Unmatched(t, len(fed.unmatched), bytes(fed.unmatched[:UNMATCHED_HEAD]))
                else:
                    head = (u.head + bytes(fed.unmatched))[:UNMATCHED_HEAD]
                    self._unmatched = Unmatched(u.t, u.n + len(fed.unmatched), head)

    @property
    def dropped(self) -> int:
        """Pulses refused by a full queue (poll() raises once this is non-zero)."""
        return self._buffer.dropped

    @property
    def other_bytes(self) -> int:
        """Bytes that were not pulses (button presses, noise, a wrong baud rate)."""
        return 0 if self._decoder is None else self._decoder.other_bytes

    def poll(self) -> list[Pulse]:
        pulses = self._buffer.drain()
        if not pulses and self.lost is not None:
            raise DeviceFault(f"{'trigger' if self.preset else 'button'} port {self.port!r} lost during the run: "
                              f"{self.lost}")
        return pulses

    def poll_buttons(self) -> list[ButtonPress]:
        """Button presses since the last call, oldest first. Never blocks."""
        presses = self._presses.drain()
        if not presses and self.preset is None and self.lost is not None:
            raise DeviceFault(f"button port {self.port!r} lost during the run: {self.lost}")
        return presses

    def take_unmatched(self) -> Unmatched | None:
        """The bytes that matched no trigger or button since the last call (None: there were none)."""
        with self._unmatched_lock:
            u, self._unmatched = self._unmatched, None
        return u

    def poll_keys(self) -> list[KeyPress]:
        return []  # a serial line's buttons come out of poll_buttons()

    def describe(self) -> dict[str, str | int | bool | None]:
        """For the log header: what was opened and how."""
        return {"port": self.port, "preset": None if self.preset is None else self.preset.name, "baud": self.baud,
                "trigger": None if self.preset is None else self.preset.describe(),
                "buttons": None if self.buttons is None else self.buttons.name, "low_latency": self.low_latency}

    def close(self) -> None:
        self._stop.set()
        if self._serial is not None:
            try:
                self._serial.cancel_read()
            except Exception:  # noqa: BLE001 - not every port type can cancel
                pass
        if self._thread is not None:
            self._thread.join(2.0)
        if self._serial is not None:
            try:
                self._serial.close()
            except Exception:  # noqa: BLE001 - closing a lost port
                pass
        self._serial = None
