"""A light sensor on a serial port: a photodiode board that sends one byte when the patch it
sits on turns white (docs/light-sensor.md).

The wire protocol is one byte per dark-to-light edge: `L` from a real board, `S` from the
simulated one (`cuedpain simulate-light-sensor`), so a figure measured with the simulator
can never be mistaken for a measurement of the screen. The reader thread stamps each byte
on the run's clock as it arrives (as the serial trigger source does); any other byte is
counted and ignored.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import serial

from experiment.clock import Clock
from experiment.errors import HardwareError

LIGHT = b"L"          # a real board: the patch turned white
SIMULATED = b"S"      # the simulated sensor: the same edge, said to be simulated
BAUD = 115200
READ_TIMEOUT_S = 0.05
JOIN_S = 2.0


@dataclass(frozen=True)
class LightEdge:
    """One dark-to-light edge: when its byte arrived (run clock) and whether a simulator sent it."""

    t: float
    simulated: bool


class LightSensor:
    """The reader of a light sensor's port; `take()` returns the edges since the last call."""

    def __init__(self, port: str, *, clock: Clock, baud: int = BAUD) -> None:
        self.port = port
        self._clock = clock
        self._baud = baud
        self._serial: serial.Serial | None = None
        self._edges: list[LightEdge] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.other_bytes = 0
        self.error: BaseException | None = None

    def open(self) -> None:
        try:
            self._serial = serial.serial_for_url(self.port, baudrate=self._baud, timeout=READ_TIMEOUT_S)
        except (serial.SerialException, OSError, ValueError) as exc:
            raise HardwareError(f"cannot open the light sensor's port {self.port}: {exc}") from exc
        self._serial.reset_input_buffer()
        self._thread = threading.Thread(target=self._read, name="light-sensor", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        ser = self._serial
        assert ser is not None
        try:
            while not self._stop.is_set():
                first = ser.read(1)
                if not first:
                    continue
                t = self._clock.now()
                data = first + ser.read(ser.in_waiting or 0)
                with self._lock:
                    for byte in data:
                        if byte in LIGHT or byte in SIMULATED:
                            self._edges.append(LightEdge(t, simulated=bytes([byte]) == SIMULATED))
                        else:
                            self.other_bytes += 1
        except (serial.SerialException, OSError) as exc:
            if not self._stop.is_set():
                self.error = exc

    def take(self) -> list[LightEdge]:
        if self.error is not None:
            raise HardwareError(f"the light sensor on {self.port} failed: {self.error}")
        with self._lock:
            edges, self._edges = self._edges, []
        return edges

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(JOIN_S)
        if self._serial is not None:
            self._serial.close()
        if self._thread is not None and self._thread.is_alive():
            raise HardwareError(f"the light sensor's reader on {self.port} did not stop within {JOIN_S:g} s")
