"""Serve a simulated cuff on a pseudo-terminal, and the `simulate-cuff` command.

The device sits on the pty master; the host opens the slave path with pyserial like
any serial port, so dry runs, tests and a rehearsing operator go through the real
serial driver. One thread moves bytes master <-> device and advances the device every
few milliseconds on the server's clock.

Port open is seen on the master side: while no process has the slave open, Linux
reports POLLHUP on the master; when that clears, the server plays a board that resets
on open: for 30 ms it "boots" (the host's bytes wait in the pty, the device says
nothing), then the device gets `on_port_open` (the CUFF/1 simulator announces
`!EVT BOOT`) and the waiting input. The delay also keeps BOOT out of the input flush
pyserial does while opening. While nobody has the port open the device's output is
dropped, like a board talking to an unplugged cable.

`pull_cable()` closes the master (the host's reads fail at once, as on a hot unplug)
while the device keeps running, so its watchdog can be seen to vent.
"""

from __future__ import annotations

import argparse
import os
import select
import signal
import subprocess
import sys
import threading
import tty
from typing import Callable, Sequence

from experiment.clock import Clock, RealClock
from experiment.cuff.bytedevice import ByteDevice
from experiment.errors import HardwareError, InputError

TICK_S = 0.003
OPEN_SETTLE_S = 0.03   # a "boot" after each port open (see the module docstring)


class SimServer:
    """A `ByteDevice` served on a pty by a thread of its own. Use `.path` as the port."""

    def __init__(self, device: ByteDevice, *, clock: Clock, tick_s: float = TICK_S) -> None:
        if os.name != "posix":
            raise HardwareError("serving a simulated cuff on a pseudo-terminal needs a POSIX system")
        self.device = device
        self._clock = clock
        self._tick_s = tick_s
        self._master, slave = os.openpty()
        os.set_blocking(self._master, False)  # a host that stops reading must not stall the device
        tty.setraw(slave)
        self.path = os.ttyname(slave)
        os.close(slave)               # so that POLLHUP tells us when no host has the port open
        self.rx_log: list[tuple[float, bytes]] = []   # every host->device chunk, for tests
        self.opens = 0
        self._connected = False
        self._boot_due: float | None = None
        self._stop = threading.Event()
        self._pull = threading.Event()
        self._lock = threading.Lock()  # device access: server thread vs. `inspect`
        device.attach(self._device_write)
        self._thread = threading.Thread(target=self._run, name=f"sim-cuff-{self.path}", daemon=True)
        self._thread.start()

    def _device_write(self, data: bytes) -> None:
        if not self._connected or self._master < 0:
            return
        try:
            os.write(self._master, data)
        except OSError:
            pass                       # host gone, or not reading (buffer full): bytes lost, as on a wire

    def _run(self) -> None:
        poller = select.poll()
        poller.register(self._master, select.POLLIN | select.POLLHUP | select.POLLERR)
        while not self._stop.is_set():
            if self._pull.is_set() and self._master >= 0:
                poller.unregister(self._master)
                os.close(self._master)
                self._master = -1
                self._connected = False
            if self._master < 0:
                self._stop.wait(self._tick_s)
                with self._lock:
                    self.device.advance(self._clock.now())
                continue
            booting = self._boot_due is not None
            events = poller.poll(self._tick_s * 1000 if self._connected else 0)
            hup = any(ev & (select.POLLHUP | select.POLLERR) for _, ev in events)
            data = b""
            if self._connected and any(ev & select.POLLIN for _, ev in events):
                try:
                    data = os.read(self._master, 4096)
                except OSError:
                    hup = True
            now = self._clock.now()
            with self._lock:
                if hup:
                    self._connected, self._boot_due = False, None
                elif not self._connected and not booting:
                    self._boot_due = now + OPEN_SETTLE_S      # the board boots; input waits in the pty
                    self.opens += 1
                elif booting and now >= self._boot_due:
                    self._connected, self._boot_due = True, None
                    self.device.on_port_open(now)
                if data:
                    self.rx_log.append((now, data))
                    self.device.receive(data, now)
                self.device.advance(now)
            if hup or self._boot_due is not None:
                self._stop.wait(self._tick_s)

    def inspect(self, fn: Callable[[ByteDevice], object]) -> object:
        """Run `fn(device)` between two server steps (a consistent view for tests)."""
        with self._lock:
            return fn(self.device)

    def pull_cable(self) -> None:
        """Cut the link: the host's port fails, the device keeps running unconnected."""
        self._pull.set()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not threading.current_thread():
            self._thread.join(2.0)
        if self._master >= 0:
            try:
                os.close(self._master)
            except OSError:
                pass
            self._master = -1


def start_sim_server(device_factory: Callable[[], ByteDevice], clock: Clock) -> SimServer:
    """Serve a new device on a pty from a thread of this process (dry runs, tests)."""
    return SimServer(device_factory(), clock=clock)


class SimServerProcess:
    """`cuedpain simulate-cuff` in a child process; `.path` is its port."""

    def __init__(self, argv: Sequence[str] = (), *, python: str = sys.executable,
                 startup_timeout_s: float = 20.0) -> None:
        self.proc = subprocess.Popen([python, "-m", "experiment", "simulate-cuff", *argv],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = _readline_with_timeout(self.proc, startup_timeout_s)
        if not line.startswith("/"):
            self.close()
            raise HardwareError(f"simulate-cuff did not print a device path (got {line!r})")
        self.path = line.strip()

    def close(self, timeout_s: float = 5.0) -> int:
        """SIGTERM, wait; returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout_s)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()
        return self.proc.returncode


def _readline_with_timeout(proc: subprocess.Popen, timeout_s: float) -> str:
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout_s)
    return proc.stdout.readline() if ready else ""


def make_device(protocol: str, *, clock: Clock, hard_limit_kpa: float | None = None,
                leak_kpa_s: float = 0.0) -> ByteDevice:
    """A fresh simulated device speaking `protocol` ('line' = CUFF/1, or 'cpar')."""
    if protocol == "line":
        from experiment.cuff.simdevice import SimCuffDevice
        return SimCuffDevice(hard_limit_kpa=100.0 if hard_limit_kpa is None else hard_limit_kpa,
                             leak_kpa_s=leak_kpa_s)
    if protocol == "cpar":
        if hard_limit_kpa is not None or leak_kpa_s:
            raise InputError("simulate-cuff: --hard-limit and --leak apply to --protocol line only")
        from experiment.cuff import cpar_sim  # the CPAR simulator, imported only when asked for
        return cpar_sim.make_cpar_sim(clock)
    raise InputError(f"simulate-cuff: unknown protocol {protocol!r}; allowed: line, cpar")


def command(args: argparse.Namespace) -> int:
    """`cuedpain simulate-cuff`: print the device path first, serve until SIGINT/SIGTERM."""
    if args.leak < 0:
        raise InputError(f"simulate-cuff: --leak must be 0 or more kPa/s, got {args.leak}")
    if args.hard_limit is not None and args.hard_limit <= 0:
        raise InputError(f"simulate-cuff: --hard-limit must be above 0 kPa, got {args.hard_limit}")
    clock = RealClock()
    device = make_device(args.protocol, clock=clock, hard_limit_kpa=args.hard_limit, leak_kpa_s=args.leak)
    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        stop.set()

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    server = SimServer(device, clock=clock)
    try:
        print(server.path, flush=True)
        sys.stderr.write(f"simulated cuff ({args.protocol}) on {server.path}; "
                         f"use --cuff {args.protocol}:{server.path}; Ctrl-C to stop\n")
        sys.stderr.flush()
        while not stop.wait(0.5):
            if not server.alive:
                raise HardwareError("simulate-cuff: the server thread stopped")
    finally:
        server.close()
        for s, handler in old.items():
            signal.signal(s, handler)
    sys.stderr.write(f"simulate-cuff: stopped after {server.opens} connection(s), "
                     f"{len(device.vent_log)} vent(s)\n")
    return 0
