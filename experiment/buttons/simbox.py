"""`cuedpain simulate-buttons`: a simulated fORP (or Cedrus pad) on a pseudo-terminal, for rehearsal.

It serves one pseudo-terminal and prints its device path first. A fORP sends the scanner's
trigger byte `5` every TR (with `--tr`) and button bytes on the same line, as the box does in
ASCII mode; a Cedrus pad sends XID key packets (a press, then its release) and no triggers.
Presses come from `--press BUTTON@SECONDS` (seconds from the first trigger, or from the start
without triggers) and from standard input, one line of button names at a time, pressed at once.
Use the path as both `--scanner serial:PATH` and `--buttons serial:PATH` (one line, one reader),
or as `--buttons serial:PATH:cedrus`.
"""

from __future__ import annotations

import os
import re
import select
import signal
import sys
import threading
import tty
from dataclasses import dataclass

from experiment.buttons.decoders import forp_byte, xid_packet
from experiment.clock import Clock, RealClock
from experiment.errors import InputError
from experiment.scanner.sim_scanner import ButtonPresser, PtyScanner, ScannerPlan, has_pty

_PRESS = re.compile(r"(?P<button>[0-9a-z_]{1,20})@(?P<s>[0-9]+(?:\.[0-9]+)?)")


@dataclass(frozen=True)
class Press:
    button: str
    at_s: float       # from the first trigger (or the start, without triggers)


def parse_press(text: str) -> Press:
    """`BUTTON@SECONDS` -> Press; an InputError otherwise."""
    m = _PRESS.fullmatch(text.strip())
    if m is None:
        raise InputError(f"simulate-buttons: --press {text!r} is not BUTTON@SECONDS (e.g. 1@3.5)")
    return Press(m["button"], float(m["s"]))


def encode(box: str, button: str) -> bytes:
    """The bytes a box sends for one press of `button` (a Cedrus pad: the press and its release)."""
    if box == "cedrus":
        if not button.isdigit() or not 1 <= int(button) <= 8:
            raise InputError(f"simulate-buttons: a Cedrus pad's buttons are 1-8, not {button!r}")
        return xid_packet(int(button)) + xid_packet(int(button), pressed=False)
    try:
        return forp_byte(button)
    except ValueError as exc:
        raise InputError(f"simulate-buttons: {exc}") from None


class SimulatedBox:
    """The pseudo-terminal, its trigger driver (fORP with a TR) and its button presser."""

    def __init__(self, *, box: str, clock: Clock, tr_s: float | None, start_delay_s: float = 1.0) -> None:
        if not has_pty():
            raise InputError("simulate-buttons needs a POSIX pseudo-terminal")
        if box == "cedrus" and tr_s is not None:
            raise InputError("simulate-buttons: a Cedrus pad carries no scanner triggers; drop --tr")
        self.box = box
        self.clock = clock
        self.master, self._slave = os.openpty()
        tty.setraw(self._slave)
        os.set_blocking(self.master, False)   # nobody reading: drop, never block
        self.path = os.ttyname(self._slave)
        self.start_t = clock.now() + start_delay_s
        self.scanner = None if tr_s is None else PtyScanner(
            ScannerPlan(tr_s=tr_s, n_volumes=1_000_000, start_delay_s=start_delay_s), self.master, clock=clock)
        self.presser = ButtonPresser(self._write, clock=clock)

    def _write(self, data: bytes) -> None:
        try:
            os.write(self.master, data)
        except BlockingIOError:
            pass

    def start(self) -> None:
        if self.scanner is not None:
            self.scanner.start()
        self.presser.start()

    def press(self, button: str, t: float) -> None:
        self.presser.press(encode(self.box, button), t)

    def close(self) -> None:
        self.presser.stop()
        if self.scanner is not None:
            self.scanner.stop()
        for fd in (self.master, self._slave):
            try:
                os.close(fd)
            except OSError:
                pass


def serve(*, box: str, tr_s: float | None, presses: list[Press], stop: threading.Event) -> int:
    clock = RealClock()
    for p in presses:
        encode(box, p.button)     # refuse a button the box has not, before serving
    sim = SimulatedBox(box=box, clock=clock, tr_s=tr_s)
    try:
        print(sim.path, flush=True)
        sys.stderr.write(f"simulated {box} on {sim.path}; use "
                         + (f"--scanner serial:{sim.path} --buttons serial:{sim.path}" if box == "forp"
                            else f"--buttons serial:{sim.path}:cedrus")
                         + "; type button names and Enter to press them; Ctrl-C to stop\n")
        sys.stderr.flush()
        sim.start()
        for p in presses:
            sim.press(p.button, sim.start_t + p.at_s)
        while not stop.is_set():
            if not _stdin_open():
                stop.wait(0.2)
                continue
            if select.select([sys.stdin], [], [], 0.2)[0]:
                line = sys.stdin.readline()
                if not line:
                    sys.stdin.close()
                    continue
                t = clock.now()
                for i, button in enumerate(line.split()):
                    try:
                        sim.press(button, t + 0.1 * i)
                    except InputError as exc:
                        sys.stderr.write(f"{exc}\n")
    finally:
        sim.close()
    return 0


def _stdin_open() -> bool:
    return not sys.stdin.closed and hasattr(sys.stdin, "fileno")


def command(*, box: str, tr_s: float | None, press_texts: list[str]) -> int:
    """Serve until SIGINT/SIGTERM."""
    if tr_s is not None and not tr_s > 0:
        raise InputError(f"simulate-buttons: --tr must be above 0 s, got {tr_s}")
    presses = [parse_press(t) for t in press_texts]
    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        stop.set()

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        return serve(box=box, tr_s=tr_s, presses=presses, stop=stop)
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
