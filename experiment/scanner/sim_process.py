"""The simulated scanner of a real-time dry run, in a child process of its own.

A real scanner's trigger box is another machine; a dry run's simulated one should not
share the run's interpreter lock either, or its pulses would wait for the frame loop
and a pulse's write would delay a flip. `ProcessScanner` starts a child (multiprocessing,
'spawn' context: nothing of the parent's state is inherited) that opens a pseudo-terminal
and writes `payload` into its master at the planned times; the run's `SerialSource` reads
the slave like a trigger box's port.

The child dies with its run: it leaves when the pipe to its parent closes (the parent
exited, however) or when its parent process changes. Times cross the pipe on
`time.perf_counter` (CLOCK_MONOTONIC on Linux, one clock for every process of the
machine); the parent converts them to the run's clock with an offset measured at start.
The teardown is joined and checked: a child that does not end, or ends with an error,
raises HardwareError.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from multiprocessing.connection import Connection
from typing import Sequence

from experiment.clock import Clock
from experiment.errors import HardwareError, InputError

START_TIMEOUT_S = 20.0     # spawning a Python child and opening its pty
JOIN_TIMEOUT_S = 5.0
REPORT_TIMEOUT_S = 2.0     # the child answers a `report` between two pulses
SPIN_S = 0.002             # the child sleeps until this close to a pulse, then polls without sleeping


def _serve(conn: Connection, parent_pid: int, payload: bytes) -> None:  # pragma: no cover - runs in the child
    """The child: a pty, then pulses at the times the parent sends, until told to exit.

    The write times are kept here and sent only when asked (`report`): a message per pulse
    could fill the pipe during a long run while the parent does not read it, and stall the pulses."""
    import tty

    master, slave = os.openpty()
    tty.setraw(slave)
    conn.send(("port", os.ttyname(slave)))
    pulses: list[float] = []
    sent: list[float] = []
    pulsing = False
    try:
        while True:
            if os.getppid() != parent_pid:
                return
            due = pulses[len(sent)] if pulsing and len(sent) < len(pulses) else None
            wait = 0.1 if due is None else max(0.0, min(0.1, due - time.perf_counter() - SPIN_S))
            if conn.poll(wait):
                try:
                    msg = conn.recv()
                except EOFError:
                    return
                if msg[0] == "start":
                    pulses, pulsing = list(msg[1]), True
                elif msg[0] == "stop":
                    pulsing = False
                elif msg[0] == "report":
                    conn.send(("sent", sent))
                elif msg[0] == "write":     # a simulated button box's bytes, on the same line
                    _write_all(master, msg[1])
                elif msg[0] == "exit":
                    return
                continue
            if due is None or due - time.perf_counter() > SPIN_S:
                continue   # the wait above was capped at 0.1 s: wait again, do not spin the rest
            while time.perf_counter() < due:
                pass
            t_sent = time.perf_counter()
            _write_all(master, payload)
            sent.append(t_sent)
    finally:
        os.close(master)
        os.close(slave)


def _write_all(fd: int, data: bytes) -> None:  # pragma: no cover - runs in the child
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


class ProcessScanner:
    """Pulses written by a child process into a pseudo-terminal it owns (see the module docstring).

    `port` is the slave path to read; `start()` sends the plan's pulse offsets from
    `start_t` (the run's clock); `sent` are the run-clock times the child wrote each pulse."""

    def __init__(self, offsets_s: Sequence[float], *, clock: Clock, start_delay_s: float, payload: bytes = b"5",
                 tr_s: float = 2.0) -> None:
        if clock.virtual:
            raise InputError("the simulated scanner's process needs a real clock; use VirtualScanner")
        self._offsets = [float(x) for x in offsets_s]
        self._clock = clock
        self._start_delay_s = start_delay_s
        self.tr_s = tr_s
        ctx = multiprocessing.get_context("spawn")
        self._conn, child_conn = ctx.Pipe()
        self._proc = ctx.Process(target=_serve, args=(child_conn, os.getpid(), payload), name="sim-scanner",
                                 daemon=True)
        self._proc.start()
        child_conn.close()
        self._sent_pc: list[float] = []
        self._send_lock = threading.Lock()   # the button box's thread and the caller's share the pipe
        self._offset = self._clock_offset()
        self.start_t: float | None = None
        self._stopped = False
        if not self._conn.poll(START_TIMEOUT_S):
            self._kill()
            raise HardwareError(f"the simulated scanner's process did not start within {START_TIMEOUT_S:g} s")
        kind, port = self._conn.recv()
        if kind != "port":
            self._kill()
            raise HardwareError(f"the simulated scanner's process said {kind!r} instead of its port")
        self.port: str = port

    def _clock_offset(self) -> float:
        """run clock - perf_counter, from the tightest of a few bracketed readings."""
        best: tuple[float, float] | None = None
        for _ in range(5):
            a = time.perf_counter()
            t = self._clock.now()
            b = time.perf_counter()
            if best is None or b - a < best[0]:
                best = (b - a, t - (a + b) / 2)
        assert best is not None
        return best[1]

    @property
    def done(self) -> "_AllSent":
        """`.wait(timeout_s)`: True once every planned pulse was written (as a driver thread's Event)."""
        return _AllSent(self)

    @property
    def error(self) -> BaseException | None:
        """The child ended before it was told to (checked by the source's poll)."""
        if not self._stopped and self._proc.exitcode is not None:
            return HardwareError(f"the simulated scanner's process ended early (exit code {self._proc.exitcode})")
        return None

    def start(self) -> None:
        now_pc = time.perf_counter()
        self.start_t = self._clock.now() + self._start_delay_s
        start_pc = now_pc + self._start_delay_s
        self._send(("start", [start_pc + x for x in self._offsets]))

    @property
    def sent(self) -> list[float]:
        """Run-clock times at which the child wrote each pulse (so far; asked of the child while
        it runs, the last answer after it ended)."""
        if self._proc.exitcode is None and not self._conn.closed:
            try:
                with self._send_lock:
                    self._conn.send(("report",))
                    if self._conn.poll(REPORT_TIMEOUT_S):
                        kind, times = self._conn.recv()
                        if kind == "sent":
                            self._sent_pc = list(times)
            except (EOFError, OSError):
                pass
        return [t + self._offset for t in self._sent_pc]

    def write(self, data: bytes) -> None:
        """Have the child write `data` on the line now (a simulated button box shares it)."""
        self._send(("write", bytes(data)))

    def _send(self, msg: tuple[object, ...]) -> None:
        with self._send_lock:
            self._conn.send(msg)

    def stop(self) -> None:
        """No more pulses (the pty stays open until `close`, so the reader never sees the line drop)."""
        if not self._stopped:
            _ = self.sent
            self._stopped = True
            try:
                self._send(("stop",))
            except OSError:
                pass

    def close(self) -> None:
        """Tell the child to exit, join it, and raise if it did not end cleanly."""
        self.stop()
        try:
            self._send(("exit",))
        except OSError:
            pass
        self._proc.join(JOIN_TIMEOUT_S)
        code = self._proc.exitcode
        if code is None:
            self._kill()
        self._conn.close()
        if code != 0:
            raise HardwareError(f"the simulated scanner's process (pid {self._proc.pid}) "
                                f"{'did not stop' if code is None else f'ended with exit code {code}'}")

    def _kill(self) -> None:
        self._proc.kill()
        self._proc.join(JOIN_TIMEOUT_S)


class _AllSent:
    """`wait(timeout_s)` until the child has written every pulse of its plan."""

    def __init__(self, scanner: ProcessScanner) -> None:
        self._scanner = scanner

    def is_set(self) -> bool:
        return len(self._scanner.sent) >= len(self._scanner._offsets)

    def wait(self, timeout_s: float | None = None) -> bool:
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while not self.is_set():
            if deadline is not None and time.monotonic() >= deadline:
                return False
            time.sleep(0.01)
        return True
