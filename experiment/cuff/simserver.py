"""Serve a simulated cuff on a pseudo-terminal or a loopback TCP port, and the `simulate-cuff` command.

The host opens the served port with pyserial like any serial port (a pty's slave path,
or `socket://127.0.0.1:PORT`), so dry runs, tests and a rehearsing operator go through
the real serial driver. A TCP port is for systems without pseudo-terminals (Windows
stimulus computers). One thread moves bytes between the endpoint and the device and
advances the device every few milliseconds on the server's clock; the device, its byte
stream and its behaviour are the same on either endpoint.

Port open is seen on the endpoint: a pty reports POLLHUP on its master while no process
has the slave open, a TCP port sees the host connect (one host at a time: a second
connection is closed at once, as an exclusively opened port refuses a second opener).
Then the server plays a board that resets on open: for 30 ms it "boots" (the host's
bytes wait in the pty or the socket, the device says nothing), then the device gets
`on_port_open` (the CUFF/1 simulator announces `!EVT BOOT`) and the waiting input. The
delay also keeps BOOT out of the input flush pyserial does while opening. While nobody
has the port open the device's output is dropped, like a board talking to an unplugged
cable; so is output a host does not read fast enough.

`pull_cable()` cuts the endpoint (the pty master is closed, the TCP connection and
listener are closed: the host's reads fail at once, as on a hot unplug) while the device
keeps running, so its watchdog can be seen to vent.
"""

from __future__ import annotations

import argparse
import os
import select
import signal
import socket
import subprocess
import sys
import threading
from typing import Callable, Literal, Protocol, Sequence

from experiment.clock import Clock, RealClock
from experiment.cuff.bytedevice import ByteDevice
from experiment.errors import HardwareError, InputError

TICK_S = 0.003
OPEN_SETTLE_S = 0.03   # a "boot" after each port open (see the module docstring)
LOOPBACK_HOST = "127.0.0.1"
PARENT_CHECK_S = 0.1   # a served child checks this often that its parent (the run) is still there
SimLink = Literal["pty", "socket"]


def default_sim_link() -> SimLink:
    """A pseudo-terminal where there are some (POSIX), a loopback TCP port elsewhere (Windows)."""
    return "pty" if os.name == "posix" else "socket"


class Endpoint(Protocol):
    """Where the host reaches a served device."""

    port: str   # what the host opens with pyserial

    def poll(self, timeout_s: float, *, read: bool) -> tuple[bool, bytes]:
        """Wait up to `timeout_s`: (a host has the port open, bytes from it if `read`)."""

    def write(self, data: bytes) -> None:
        """Device bytes to the host; dropped when nobody reads them."""

    def cut(self) -> None:
        """Pull the cable: the host's port fails; nothing is served any more."""


class PtyEndpoint:
    """The master side of a pseudo-terminal; the host opens the slave path."""

    def __init__(self) -> None:
        if os.name != "posix":
            raise HardwareError("serving a simulated cuff on a pseudo-terminal needs a POSIX system; "
                                "serve it on a TCP port instead (simulate-cuff --socket)")
        import tty  # POSIX only

        self._master, slave = os.openpty()
        os.set_blocking(self._master, False)  # a host that stops reading must not stall the device
        tty.setraw(slave)
        self.port = os.ttyname(slave)
        os.close(slave)               # so that POLLHUP tells us when no host has the port open
        self._poller = select.poll()
        self._poller.register(self._master, select.POLLIN | select.POLLHUP | select.POLLERR)

    def poll(self, timeout_s: float, *, read: bool) -> tuple[bool, bytes]:
        if self._master < 0:
            return False, b""
        events = self._poller.poll(timeout_s * 1000)
        hup = any(ev & (select.POLLHUP | select.POLLERR) for _, ev in events)
        data = b""
        if read and any(ev & select.POLLIN for _, ev in events):
            try:
                data = os.read(self._master, 4096)
            except OSError:
                hup = True
        return not hup, data

    def write(self, data: bytes) -> None:
        if self._master < 0:
            return
        try:
            os.write(self._master, data)
        except OSError:
            pass                       # host gone, or not reading (buffer full): bytes lost, as on a wire

    def cut(self) -> None:
        if self._master >= 0:
            master, self._master = self._master, -1
            try:
                self._poller.unregister(master)
                os.close(master)
            except (OSError, KeyError):
                pass


class SocketEndpoint:
    """A TCP port on the loopback interface; the host opens `socket://127.0.0.1:PORT`."""

    def __init__(self, tcp_port: int = 0, *, host: str = LOOPBACK_HOST) -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if os.name == "posix":   # a fixed port is free again at once after a restart (Windows would share it)
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            listener.bind((host, tcp_port))
            listener.listen(1)
        except OSError as exc:
            listener.close()
            raise HardwareError(f"cannot serve the simulated cuff on {host}:{tcp_port}: {exc}") from exc
        listener.setblocking(False)
        self._listener: socket.socket | None = listener
        self._conn: socket.socket | None = None
        self.tcp_port = int(listener.getsockname()[1])
        self.port = f"socket://{host}:{self.tcp_port}"

    def poll(self, timeout_s: float, *, read: bool) -> tuple[bool, bytes]:
        listener, conn = self._listener, self._conn
        if listener is None:
            return False, b""
        waits = [listener] + ([conn] if conn is not None and read else [])
        try:
            ready, _, _ = select.select(waits, [], [], timeout_s)
        except (OSError, ValueError):       # closed by cut() meanwhile
            return False, b""
        if listener in ready:
            self._accept(listener)
        data = b""
        if conn is not None and conn in ready:
            data = self._receive(conn)
        return self._conn is not None, data

    def _accept(self, listener: socket.socket) -> None:
        try:
            conn, _ = listener.accept()
        except OSError:
            return
        if self._conn is not None:           # one host at a time
            conn.close()
            return
        conn.setblocking(False)
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)   # a reply goes out at once
        self._conn = conn

    def _receive(self, conn: socket.socket) -> bytes:
        """Bytes from the host; b"" and the connection dropped when the host has gone."""
        try:
            data = conn.recv(4096)
        except BlockingIOError:
            return b""
        except OSError:
            data = b""
        if not data:
            self._drop()
        return data

    def write(self, data: bytes) -> None:
        conn = self._conn
        if conn is None:
            return
        view = memoryview(data)
        try:
            while view:
                view = view[conn.send(view):]
        except OSError:
            pass        # not reading (buffer full) or gone: the rest is lost, as on a wire

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def cut(self) -> None:
        self._drop()
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.close()


class SimServer:
    """A `ByteDevice` served by a thread of its own, on a pty (`link="pty"`) or on a loopback
    TCP port (`link="socket"`, `tcp_port` 0 for any free one). `.path` is the port a host
    opens: a device path, or `socket://127.0.0.1:PORT`."""

    def __init__(self, device: ByteDevice, *, clock: Clock, tick_s: float = TICK_S, link: SimLink = "pty",
                 tcp_port: int = 0) -> None:
        self.device = device
        self._clock = clock
        self._tick_s = tick_s
        self._endpoint: Endpoint = PtyEndpoint() if link == "pty" else SocketEndpoint(tcp_port)
        self.link = link
        self.path = self._endpoint.port
        self.rx_log: list[tuple[float, bytes]] = []   # every host->device chunk, for tests
        self.opens = 0
        self._connected = False
        self._boot_due: float | None = None
        self._cut = False
        self._stop = threading.Event()
        self._pull = threading.Event()
        self._lock = threading.Lock()  # device access: server thread vs. `inspect`
        device.attach(self._device_write)
        self._thread = threading.Thread(target=self._run, name=f"sim-cuff-{self.path}", daemon=True)
        self._thread.start()

    def _device_write(self, data: bytes) -> None:
        if self._connected:
            self._endpoint.write(data)

    def _run(self) -> None:
        while not self._stop.is_set():
            if self._pull.is_set() and not self._cut:
                self._endpoint.cut()
                self._cut, self._connected = True, False
            if self._cut:
                self._stop.wait(self._tick_s)
                with self._lock:
                    self.device.advance(self._clock.now())
                continue
            self._step()

    def _step(self) -> None:
        """One poll of the endpoint: a host opening or leaving, its bytes, the device moved on."""
        booting = self._boot_due is not None
        present, data = self._endpoint.poll(self._tick_s if self._connected else 0.0, read=self._connected)
        now = self._clock.now()
        with self._lock:
            if not present:
                self._connected, self._boot_due = False, None
            elif not self._connected and not booting:
                self._boot_due = now + OPEN_SETTLE_S      # the board boots; input waits in the endpoint
                self.opens += 1
            elif self._boot_due is not None and now >= self._boot_due:
                self._connected, self._boot_due = True, None
                self.device.on_port_open(now)
            if data:
                self.rx_log.append((now, data))
                self.device.receive(data, now)
            self.device.advance(now)
        if not present or self._boot_due is not None:
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
        stuck = False
        if self._thread is not threading.current_thread():
            self._thread.join(2.0)
            stuck = self._thread.is_alive()
        self._endpoint.cut()
        self._connected = False
        if stuck:
            raise HardwareError("the simulated device's thread did not stop within 2 s of closing")


def start_sim_server(device_factory: Callable[[], ByteDevice], clock: Clock, *, link: SimLink = "pty") -> SimServer:
    """Serve a new device from a thread of this process (dry runs, tests)."""
    return SimServer(device_factory(), clock=clock, link=link)


class SimServerProcess:
    """`cuedpain simulate-cuff` in a child process; `.path` is its port (a device path, or
    a socket:// URL with `--socket`)."""

    def __init__(self, argv: Sequence[str] = (), *, python: str = sys.executable,
                 startup_timeout_s: float = 20.0) -> None:
        self.proc = subprocess.Popen([python, "-m", "experiment", "simulate-cuff", *argv],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = _readline_with_timeout(self.proc, startup_timeout_s)
        if not line.startswith(("/", "socket://")):
            self.close()
            raise HardwareError(f"simulate-cuff did not print a port (got {line!r})")
        self.path = line.strip()

    def close(self, timeout_s: float = 5.0) -> int:
        """SIGTERM, wait; returns the exit code (negative: killed by that signal)."""
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

    def close_checked(self, timeout_s: float = 5.0) -> None:
        """Stop the child, wait for it, and raise if it did not end cleanly (exit 0 on SIGTERM):
        a simulated device that died early or had to be killed is said, not swallowed."""
        died_early = self.proc.poll()
        code = self.close(timeout_s)
        if died_early is not None or code != 0:
            raise HardwareError(f"the simulated cuff's process (pid {self.proc.pid}) "
                                f"{'had already ended' if died_early is not None else 'ended'} with exit code {code}")


def start_sim_process(*, link: SimLink = "pty", hard_limit_kpa: float | None = None, leak_kpa_s: float = 0.0,
                      seed: int = 0) -> SimServerProcess:
    """Serve a simulated CUFF/1 cuff from a child process of its own (dry runs): its byte pump
    and firmware model then never hold this process's interpreter lock while a frame is drawn.
    The child stops when this process is no longer its parent."""
    argv = ["--parent-pid", str(os.getpid()), "--leak", repr(leak_kpa_s), "--seed", str(seed)]
    if hard_limit_kpa is not None:
        argv += ["--hard-limit", repr(hard_limit_kpa)]
    if link == "socket":
        argv += ["--socket"]
    return SimServerProcess(argv)


def start_sim_gate_process(*, link: SimLink = "pty", panel_kpa: float = 20.0, sensor: bool = True) -> SimServerProcess:
    """Serve the simulated GATE/1 gate board from a child process of its own, as `start_sim_process`
    does the CUFF/1 cuff (dry runs with `sim:gated`)."""
    argv = ["--protocol", "gated", "--parent-pid", str(os.getpid()), "--panel", repr(panel_kpa)]
    if not sensor:
        argv += ["--no-sensor"]
    if link == "socket":
        argv += ["--socket"]
    return SimServerProcess(argv)


def _readline_with_timeout(proc: subprocess.Popen[str], timeout_s: float) -> str:
    """The child's first line, or "" after `timeout_s` (a thread reads it: pipes cannot be
    select()ed on Windows)."""
    stdout = proc.stdout
    assert stdout is not None
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.append(stdout.readline()), name="simulate-cuff-stdout",
                              daemon=True)
    reader.start()
    reader.join(timeout_s)
    return lines[0] if lines else ""


def make_device(protocol: str, *, clock: Clock, hard_limit_kpa: float | None = None,
                leak_kpa_s: float = 0.0, seed: int = 0, panel_kpa: float | None = None,
                sensor: bool = True) -> ByteDevice:
    """A fresh simulated device speaking `protocol` ('line' = CUFF/1, 'cpar', or 'gated' = the GATE/1
    gate board, its inflator's panel at `panel_kpa`, with or without its pressure `sensor`)."""
    if protocol != "gated" and (panel_kpa is not None or not sensor):
        raise InputError("simulate-cuff: --panel and --no-sensor apply to --protocol gated only")
    if protocol == "line":
        from experiment.cuff.simdevice import SimCuffDevice
        return SimCuffDevice(hard_limit_kpa=100.0 if hard_limit_kpa is None else hard_limit_kpa,
                             leak_kpa_s=leak_kpa_s, seed=seed)
    if protocol == "cpar":
        if hard_limit_kpa is not None or leak_kpa_s:
            raise InputError("simulate-cuff: --hard-limit and --leak apply to --protocol line only")
        from experiment.cuff import cpar_sim  # the CPAR simulator, imported only when asked for
        return cpar_sim.make_cpar_sim(clock)
    if protocol == "gated":
        if hard_limit_kpa is not None or leak_kpa_s:
            raise InputError("simulate-cuff: --hard-limit and --leak apply to --protocol line only")
        from experiment.cuff.gate_sim import SimGateBoard
        if panel_kpa is not None and panel_kpa <= 0:
            raise InputError(f"simulate-cuff: --panel must be above 0 kPa, got {panel_kpa}")
        return SimGateBoard(panel_kpa=20.0 if panel_kpa is None else panel_kpa, sensor=sensor)
    raise InputError(f"simulate-cuff: unknown protocol {protocol!r}; allowed: line, cpar, gated")


def command(args: argparse.Namespace) -> int:
    """`cuedpain simulate-cuff`: print the port first (a device path, or `socket://127.0.0.1:PORT`
    with `--socket` and where there are no pseudo-terminals), serve until SIGINT/SIGTERM."""
    if args.leak < 0:
        raise InputError(f"simulate-cuff: --leak must be 0 or more kPa/s, got {args.leak}")
    if args.hard_limit is not None and args.hard_limit <= 0:
        raise InputError(f"simulate-cuff: --hard-limit must be above 0 kPa, got {args.hard_limit}")
    tcp_port = getattr(args, "socket", None)
    if tcp_port is not None and not 0 <= tcp_port <= 65535:
        raise InputError(f"simulate-cuff: --socket PORT must be 0-65535 (0 or none: any free port), got {tcp_port}")
    link: SimLink = "socket" if tcp_port is not None else default_sim_link()
    clock = RealClock()
    device = make_device(args.protocol, clock=clock, hard_limit_kpa=args.hard_limit, leak_kpa_s=args.leak,
                         seed=getattr(args, "seed", 0), panel_kpa=getattr(args, "panel", None),
                         sensor=not getattr(args, "no_sensor", False))
    parent_pid: int | None = getattr(args, "parent_pid", None)
    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        stop.set()

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        server = SimServer(device, clock=clock, link=link, tcp_port=tcp_port or 0)
        try:
            _serve(server, args.protocol, stop, parent_pid)
        finally:
            server.close()
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
    sys.stderr.write(f"simulate-cuff: stopped after {server.opens} connection(s), "
                     f"{len(device.vent_log)} vent(s)\n")
    return 0


def _serve(server: SimServer, protocol: str, stop: threading.Event, parent_pid: int | None = None) -> None:
    """Serve until a stop signal, or until `parent_pid` is no longer the parent (it died: a
    dry run's simulated cuff must not outlive its run)."""
    print(server.path, flush=True)
    if parent_pid is None:
        sys.stderr.write(f"simulated cuff ({protocol}) on {server.path}; use --cuff {protocol}:{server.path}"
                         f"{':board' if protocol == 'gated' else ''}; Ctrl-C to stop\n")
        sys.stderr.flush()
    while not stop.wait(PARENT_CHECK_S if parent_pid is not None else 0.5):
        if not server.alive:
            raise HardwareError("simulate-cuff: the server thread stopped")
        if parent_pid is not None and os.getppid() != parent_pid:
            sys.stderr.write(f"simulate-cuff: parent {parent_pid} is gone; stopping\n")
            return
