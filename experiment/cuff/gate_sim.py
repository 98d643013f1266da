"""A simulated gate board (GATE/1, docs/gate-board.md) switching a simulated panel-set inflator.

A `ByteDevice` like the CUFF/1 and CPAR simulators: bytes in through `receive`, lines out
through the `write` given to `attach`, time moved only by `advance`, so it runs on a
pseudo-terminal (simserver.py) or in-process on a virtual clock. The inflator behind the
gate is the pneumatic model (pneumatics.py) regulating to the pressure set on its panel
(`panel_kpa`) at the inflator's own speed when the gate is on, and venting when it is off.

The board's own interlocks, as the document specifies them: any byte it does not know
turns the gate off; while the gate is on, `wdt_ms` without a byte from the host turns it
off and latches WATCHDOG; the gate on longer than `maxon_ms` latches TIME_LIMIT; with a
sensor, a reading over `hard_kpa` latches OVERPRESSURE. A latched board refuses `1` until `c`.
"""

from __future__ import annotations

from typing import Callable

from experiment.cuff import gate_codec as codec
from experiment.cuff.line_codec import SIM_NAME_PREFIX
from experiment.cuff.pneumatics import CuffPneumatics

SIM_GATE_NAME = SIM_NAME_PREFIX + "-gate"   # "cuedpain-sim*": the host treats it as simulated
STEP_S = 0.002
INFLATOR_RATE_KPA_S = 100.0                 # a rapid cuff inflator fills a cuff in well under a second


class SimGateBoard:
    """GATE/1 firmware on a `CuffPneumatics` inflator set to `panel_kpa` (see the module doc)."""

    name = SIM_GATE_NAME
    serial = "SIM-GATE-0001"

    def __init__(self, *, panel_kpa: float = 20.0, sensor: bool = True, wdt_ms: int = 1000,
                 maxon_ms: int = 120_000, hard_kpa: float = 60.0, sample_hz: int = 25, firmware: str = "1.0.0",
                 seed: int = 0, pneumatics: CuffPneumatics | None = None) -> None:
        self.panel_kpa = panel_kpa
        self.sensor = sensor
        self.wdt_ms = wdt_ms
        self.maxon_ms = maxon_ms
        self.hard_kpa = hard_kpa
        self.sample_hz = sample_hz
        self.firmware = firmware
        self._air = pneumatics or CuffPneumatics(seed=seed)
        self._write: Callable[[bytes], None] = lambda data: None
        self.vent_log: list[tuple[float, str]] = []   # (time, why) of every gate off, for tests
        self.on_log: list[float] = []                 # times the gate went on, for tests
        self._now: float | None = None
        self._boot_t = 0.0
        self._gate = False
        self._fault = 0
        self._on_since = 0.0
        self._last_rx = 0.0
        self._next_sample = 0.0
        self._keepalives = 0

    # ------------------------------------------------------------ ByteDevice

    def attach(self, write: Callable[[bytes], None]) -> None:
        self._write = write

    def on_port_open(self, now: float) -> None:
        self.advance(now)
        self._emit(codec.format_report("B", {"fw": self.firmware}))

    def receive(self, data: bytes, now: float) -> None:
        self.advance(now)
        for byte in data:
            self._last_rx = now
            self._write(self._command(bytes([byte]), now))

    def advance(self, now: float) -> None:
        if self._now is None:
            self._now = self._boot_t = self._last_rx = self._next_sample = now
        while self._now < now:
            t = min(self._now + STEP_S, now)
            self._air.advance(t - self._now)
            self._now = t
            self._tick(t)

    @property
    def pressure_kpa(self) -> float:
        """The true cuff pressure (not the sensor's noisy reading)."""
        return self._air.pressure_kpa

    @property
    def state(self) -> str:
        return "FAULT" if self._fault else ("ON" if self._gate else "OFF")

    @property
    def gate_on(self) -> bool:
        return self._gate

    @property
    def fault_code(self) -> int:
        return self._fault

    # ------------------------------------------------------------ firmware

    def _emit(self, data: bytes) -> None:
        self._write(data)

    def _gate_off(self, t: float, why: str) -> None:
        if self._gate:
            self.vent_log.append((t, why))
        self._gate = False
        self._air.vent()

    def _latch(self, code: int, t: float) -> None:
        self._gate_off(t, codec.FAULTS[code])
        self._fault = code
        self._emit(codec.format_report("F", {"code": code, "name": codec.FAULTS[code]}))

    def _reading(self) -> float | None:
        return self._air.read_kpa() if self.sensor else None

    def _tick(self, t: float) -> None:
        if self._gate and (t - self._last_rx) * 1000 >= self.wdt_ms:
            self._latch(30, t)
        elif self._gate and (t - self._on_since) * 1000 >= self.maxon_ms:
            self._latch(32, t)
        if self.sensor and t >= self._next_sample:
            self._next_sample += 1.0 / self.sample_hz
            p = self._reading()
            if p is not None and p > self.hard_kpa and self._gate:
                self._latch(33, t)
            self._emit(codec.format_report("P", {"ms": int((t - self._boot_t) * 1000),
                                                 "p": codec.format_reading(p)}))

    def _command(self, byte: bytes, now: float) -> bytes:
        tag = byte.decode("latin-1")
        if byte == codec.GATE_ON:
            if self._fault:
                return codec.format_err(tag, 22, {"fault": self._fault})
            if not self._gate:
                self._gate, self._on_since = True, now
                self.on_log.append(now)
                self._air.regulate(self.panel_kpa, INFLATOR_RATE_KPA_S)
            return codec.format_ok(tag, {"gate": 1})
        if byte == codec.GATE_OFF:
            self._gate_off(now, "OFF")
            return codec.format_ok(tag, {"gate": 0})
        if byte == codec.KEEPALIVE:
            self._keepalives += 1
            return codec.format_ok(tag, {"n": self._keepalives})
        if byte == codec.STATUS:
            return codec.format_ok(tag, {"gate": int(self._gate), "p": codec.format_reading(self._reading()),
                                         "fault": self._fault})
        if byte == codec.CLEAR:
            self._fault = 0
            return codec.format_ok(tag, {"fault": 0})
        if byte == codec.IDENTIFY:
            return codec.format_ok(tag, {"proto": codec.PROTOCOL_VERSION, "dev": self.name, "fw": self.firmware,
                                         "sn": self.serial, "sensor": int(self.sensor), "wdt_ms": self.wdt_ms,
                                         "maxon_ms": self.maxon_ms, "hard_kpa": f"{self.hard_kpa:.1f}",
                                         "hz": self.sample_hz if self.sensor else 0})
        self._gate_off(now, "UNKNOWN_BYTE")
        return codec.format_err(codec.UNKNOWN_TAG, 10, {"byte": f"0x{byte[0]:02x}", "gate": 0})
