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

from experiment.clock import Clock
from experiment.errors import DeviceFault, HardwareError
from experiment.protocol.specs import PRESETS, SerialPreset
from experiment.scanner.base import KeyPress, Pulse, PulseBuffer

if TYPE_CHECKING:
    import serial

__all__ = ["PRESETS", "SerialPreset", "SerialSource", "TriggerDecoder"]


class TriggerDecoder:
    """Bytes -> number of pulses (pure). Keeps the last byte for edge detection."""

    def __init__(self, preset: SerialPreset) -> None:
        self.preset = preset
        self._bit_was_set = False  # bitwise: the first byte with the bit set is an edge
        self.other_bytes = 0

    def feed(self, data: bytes) -> int:
        pulses = 0
        p = self.preset
        for b in data:
            if p.trigger_mask is not None:
                now_set = bool(b & p.trigger_mask)
                if now_set and not self._bit_was_set:
                    pulses += 1
                elif not now_set:
                    self.other_bytes += 1
                self._bit_was_set = now_set
            elif b == p.trigger_byte:
                pulses += 1
            else:
                self.other_bytes += 1
        return pulses


class SerialSource:
    """A trigger box on a serial port, read by its own thread.

    `poll()` raises DeviceFault when the port was lost (after handing out the pulses
    read before the loss) or when pulses were dropped from a full queue.
    """

    simulated = False
    reads_keyboard = False

    def __init__(self, port: str, *, clock: Clock, preset: SerialPreset, capacity: int = 100_000,
                 name: str = "serial", read_timeout_s: float = 0.2) -> None:
        self.port = port
        self.preset = preset
        self.name = name
        self._clock = clock
        self._decoder = TriggerDecoder(preset)
        self._buffer: PulseBuffer[Pulse] = PulseBuffer(capacity, what=f"trigger port {port}")
        self._read_timeout_s = read_timeout_s
        self._serial: serial.Serial | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._count = 0
        self.lost: BaseException | None = None
        self.low_latency: bool | None = None  # True when the driver accepted low-latency mode

    def open(self) -> None:
        import serial  # local import: only serial sources need pyserial loaded

        try:
            self._serial = serial.serial_for_url(self.port, baudrate=self.preset.baud, timeout=self._read_timeout_s,
                                                 exclusive=True)
        except (serial.SerialException, OSError, ValueError) as exc:
            raise HardwareError(f"cannot open trigger port {self.port!r} ({self.preset.describe()}): {exc}") from exc
        try:
            self._serial.set_low_latency_mode(True)
            self.low_latency = True
        except (AttributeError, NotImplementedError, OSError, ValueError):
            self.low_latency = False  # ptys and non-FTDI drivers refuse; recorded, not fatal
        self._serial.reset_input_buffer()  # bytes from before the run are not pulses of this run
        self._thread = threading.Thread(target=self._read_loop, name=f"trigger-{self.port}", daemon=True)
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
                for _ in range(self._decoder.feed(data)):
                    self._buffer.push(Pulse(self._count, t, self.name))
                    self._count += 1
        except Exception as exc:  # noqa: BLE001 - any end of the port is reported by poll()
            if not self._stop.is_set():
                self.lost = exc

    @property
    def dropped(self) -> int:
        """Pulses refused by a full queue (poll() raises once this is non-zero)."""
        return self._buffer.dropped

    @property
    def other_bytes(self) -> int:
        """Bytes that were not pulses (button presses, noise, a wrong baud rate)."""
        return self._decoder.other_bytes

    def poll(self) -> list[Pulse]:
        pulses = self._buffer.drain()
        if not pulses and self.lost is not None:
            raise DeviceFault(f"trigger port {self.port!r} lost during the run: {self.lost}")
        return pulses

    def poll_keys(self) -> list[KeyPress]:
        return []  # a serial line carries no keys of the participant

    def describe(self) -> dict[str, str | int | bool | None]:
        """For the log header: what was opened and how."""
        return {"port": self.port, "preset": self.preset.name, "baud": self.preset.baud,
                "trigger": self.preset.describe(), "low_latency": self.low_latency}

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
