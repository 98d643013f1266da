"""What a simulated device looks like to the code that serves it (pty server, loopback).

Both simulators (CUFF/1 in `simdevice.py`, CPAR in `cpar_sim.py`) implement
`ByteDevice`: bytes in, bytes out, and time moved forward only by the caller, so the
same firmware model runs on a pseudo-terminal in real time or in-process on a virtual
clock.
"""

from __future__ import annotations

from typing import Callable, Protocol


class ByteDevice(Protocol):
    """A simulated serial device driven by its server's clock."""

    vent_log: list[tuple[float, str]]  # (time, reason) of every vent, for tests

    def attach(self, write: Callable[[bytes], None]) -> None:
        """Where device->host bytes go."""

    def on_port_open(self, now: float) -> None:
        """The host opened the port (CUFF/1 announces BOOT; CPAR says nothing)."""

    def receive(self, data: bytes, now: float) -> None:
        """Host->device bytes, in any chunking."""

    def advance(self, now: float) -> None:
        """Move physics, firmware, watchdog and telemetry forward to `now`."""

    @property
    def pressure_kpa(self) -> float:
        """True simulated cuff pressure (not the noisy sensor reading)."""

    @property
    def state(self) -> str:
        """Firmware state name."""
