"""Helpers shared by the cuff tests: a bench for the simulated firmware, condition waits."""

from __future__ import annotations

import threading
import time
from typing import Callable

from experiment.cuff.line_codec import EventLine, Reply, Telemetry, parse_device_line
from experiment.cuff.simdevice import SimCuffDevice


def wait_for(predicate: Callable[[], bool], timeout_s: float, *, poll_s: float = 0.002) -> bool:
    """Wait for a condition another thread or process makes true (no notification exists)."""
    pause = threading.Event()
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() >= deadline:
            return False
        pause.wait(poll_s)
    return True


class Bench:
    """The simulated firmware on a hand-moved clock: send lines, move time, read lines."""

    def __init__(self, **device_options: object) -> None:
        self.device = SimCuffDevice(**device_options)  # type: ignore[arg-type]
        self.out = bytearray()
        self.device.attach(self.out.extend)
        self.t = 0.0
        self.device.advance(0.0)
        self._read = 0
        self._backlog: list[str] = []

    def run(self, dt_s: float) -> None:
        self.t += dt_s
        self.device.advance(self.t)

    def send_bytes(self, data: bytes) -> None:
        self.device.receive(data, self.t)

    def new_lines(self) -> list[str]:
        """Lines the device sent since the last look (unsolicited ones `cmd` set aside first)."""
        text = bytes(self.out[self._read:])
        end = text.rfind(b"\n") + 1
        self._read += end
        lines = self._backlog + [line.decode("ascii") for line in text[:end].split(b"\n") if line]
        self._backlog = []
        return lines

    def cmd(self, text: str) -> Reply:
        """Send one line; return its reply. Unsolicited lines are kept for `events`/`telemetry`."""
        self.send_bytes(text.encode("ascii") + b"\n")
        lines = self.new_lines()
        replies = [p for p in map(parse_device_line, lines) if isinstance(p, Reply)]
        assert len(replies) == 1, f"{text!r} got {len(replies)} replies: {lines}"
        self._backlog = [line for line in lines if line.startswith("!")]
        return replies[0]

    def events(self) -> list[EventLine]:
        return [p for p in map(parse_device_line, self.new_lines()) if isinstance(p, EventLine)]

    def telemetry(self) -> list[Telemetry]:
        return [p for p in map(parse_device_line, self.new_lines()) if isinstance(p, Telemetry)]

    def armed_at(self, max_kpa: float = 50.0, *, rate: float = 10.0) -> None:
        assert self.cmd(f"ARM {max_kpa}").ok
        assert self.cmd(f"RATE {rate}").ok
