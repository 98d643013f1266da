"""A simulated scanner: a pure pulse plan, and drivers that deliver it through real paths.

`ScannerPlan` says when a scanner would send pulses (TR, stored volumes, preparation
scans without pulses, pulses the user discards, jitter, dropped pulses, per-slice
pulses). The drivers deliver it:

* `PtyScanner` writes bytes into a pseudo-terminal master at the planned times, so
  `SerialSource` reads them through a real tty (POSIX);
* `SocketScanner` sends the same bytes on a loopback TCP connection, which
  `SerialSource` reads through pyserial's `socket://` URL (any platform: Windows has
  no pseudo-terminals);
* `XdotoolScanner` types real X key events (XTEST) with one persistent
  `xdotool -` process, so `KeyboardSource` reads them like a trigger box's keys;
* `VirtualScanner` is itself a trigger source for headless runs: pulses fire on a
  `VirtualClock` through `call_at`, one timer at a time.

`pty_sim_source`, `socket_sim_source` and `xdotool_sim_source` pair a driver with the
real source it feeds (`DrivenSource`); the factory's `sim` spec uses them in dry runs
with a real clock.
"""

from __future__ import annotations

import heapq
import os
import shutil
import socket
import subprocess
import threading
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterator, Protocol

import numpy as np
import numpy.typing as npt

from experiment.clock import Clock, VirtualClock
from experiment.errors import DeviceFault, HardwareError, InputError
from experiment.buttons.decoders import ButtonDecoder, ButtonPress, Unmatched
from experiment.scanner.base import KeyPress, Pulse, PulseBuffer, TriggerSource
from experiment.scanner.serial_source import PRESETS, SerialSource

Seconds = npt.NDArray[np.float64]


@dataclass(frozen=True)
class ScannerPlan:
    """When a scanner sends its pulses (pure).

    Volumes are acquired every `tr_s` from the scan start: first
    `prep_scans_no_pulse` volumes without a pulse (discarded by the scanner), then
    `discard_pulses` volumes with a pulse that the user discards, then `n_volumes`
    stored volumes. Each volume's start moves by a seeded normal jitter (SD
    `jitter_s`, clipped to a quarter TR). With `slices_per_volume` > 1 the box sends
    one pulse per slice, evenly spread over the TR. `dropped` lists indices (into
    the pulses the scanner sends) that never arrive. `start_delay_s` is the time from
    the driver's start to the first acquired volume.
    """

    tr_s: float
    n_volumes: int
    prep_scans_no_pulse: int = 0
    discard_pulses: int = 0
    jitter_s: float = 0.0
    dropped: tuple[int, ...] = ()
    slices_per_volume: int = 1
    seed: int = 0
    start_delay_s: float = 1.0

    def __post_init__(self) -> None:
        if not self.tr_s > 0:
            raise InputError(f"simulated scanner: TR must be > 0 s, got {self.tr_s}")
        for name in ("n_volumes", "prep_scans_no_pulse", "discard_pulses", "seed"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise InputError(f"simulated scanner: {name} must be a whole number >= 0, got {value!r}")
        if self.slices_per_volume < 1:
            raise InputError(f"simulated scanner: slices_per_volume must be >= 1, got {self.slices_per_volume}")
        if self.jitter_s < 0 or self.start_delay_s < 0:
            raise InputError("simulated scanner: jitter_s and start_delay_s must be >= 0")
        object.__setattr__(self, "dropped", tuple(sorted(set(self.dropped))))

    @property
    def n_pulsed_volumes(self) -> int:
        return self.discard_pulses + self.n_volumes

    def volume_starts_s(self) -> Seconds:
        """Start of every acquired volume (prep scans included), from the scan start."""
        n = self.prep_scans_no_pulse + self.n_pulsed_volumes
        starts: Seconds = np.arange(n, dtype=np.float64) * self.tr_s
        if self.jitter_s > 0:
            rng = np.random.default_rng(self.seed)
            starts += np.clip(rng.normal(0.0, self.jitter_s, n), -self.tr_s / 4, self.tr_s / 4)
        return starts

    def sent_pulse_times_s(self) -> Seconds:
        """Every pulse the scanner sends, dropped ones included, from the scan start."""
        starts = self.volume_starts_s()[self.prep_scans_no_pulse:]
        slice_offsets = np.arange(self.slices_per_volume, dtype=np.float64) * (self.tr_s / self.slices_per_volume)
        times: Seconds = (starts[:, None] + slice_offsets[None, :]).ravel()
        return times

    def pulse_times_s(self) -> Seconds:
        """The pulses that arrive (dropped ones removed), from the scan start."""
        times = self.sent_pulse_times_s()
        if not self.dropped:
            return times
        keep = np.ones(len(times), dtype=bool)
        keep[[i for i in self.dropped if i < len(times)]] = False
        kept: Seconds = times[keep]
        return kept

    def first_stored_volume_s(self) -> float:
        """When the first stored volume starts (its pulse is t0), from the scan start."""
        return float(self.volume_starts_s()[self.prep_scans_no_pulse + self.discard_pulses])


class _TimedDriver:
    """A thread that calls `emit()` at each planned time on a real clock."""

    def __init__(self, plan: ScannerPlan, *, clock: Clock, name: str) -> None:
        if clock.virtual:
            raise InputError(f"{name} needs a real clock; use VirtualScanner with a virtual clock")
        self.plan = plan
        self._clock = clock
        self._name = name
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.start_t: float | None = None
        self.sent: list[float] = []      # clock time just before each pulse was handed to the OS
        self.error: BaseException | None = None
        self.done = threading.Event()

    def start(self) -> None:
        self.start_t = self._clock.now() + self.plan.start_delay_s
        self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        assert self.start_t is not None
        try:
            for offset in self.plan.pulse_times_s():
                self._clock.sleep_until(self.start_t + float(offset))
                if self._stop.is_set():
                    return
                self.sent.append(self._clock.now())
                self.emit()
        except BaseException as exc:  # noqa: BLE001 - reported through .error
            self.error = exc
        finally:
            self.done.set()

    def emit(self) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self.plan.tr_s + 2.0)


class PtyScanner(_TimedDriver):
    """Writes `payload` into a pseudo-terminal master at each planned pulse."""

    def __init__(self, plan: ScannerPlan, master_fd: int, *, clock: Clock, payload: bytes = b"5") -> None:
        super().__init__(plan, clock=clock, name="sim-scanner-pty")
        self._fd = master_fd
        self.payload = payload

    def emit(self) -> None:
        os.write(self._fd, self.payload)


class SocketScanner(_TimedDriver):
    """Sends `payload` on a connected TCP socket at each planned pulse.

    The connection is the one `LoopbackListener.accept()` returned; its owner closes it
    (after the reader), so the reader never sees the line drop at the end of a plan.
    """

    def __init__(self, plan: ScannerPlan, connection: socket.socket, *, clock: Clock,
                 payload: bytes = b"5") -> None:
        super().__init__(plan, clock=clock, name="sim-scanner-socket")
        self._connection = connection
        self.payload = payload

    def emit(self) -> None:
        self._connection.sendall(self.payload)


class LoopbackListener:
    """A TCP listener on 127.0.0.1 (a free port) for one simulated scanner connection.

    `url` is what `SerialSource` opens (`socket://127.0.0.1:PORT`); `accept()` takes its
    connection, with Nagle's algorithm off so each pulse is sent when it is written.
    """

    HOST = "127.0.0.1"

    def __init__(self) -> None:
        self._listener: socket.socket | None = socket.create_server((self.HOST, 0), backlog=1)
        self.port: int = self._listener.getsockname()[1]
        self.connection: socket.socket | None = None

    @property
    def url(self) -> str:
        return f"socket://{self.HOST}:{self.port}"

    def accept(self, *, timeout_s: float = 5.0) -> socket.socket:
        """The reader's connection (it connects first: DrivenSource opens the reader before the driver)."""
        if self._listener is None:
            raise RuntimeError("LoopbackListener: already accepted or closed")
        self._listener.settimeout(timeout_s)
        try:
            connection, _ = self._listener.accept()
        except OSError as exc:
            raise HardwareError(f"the simulated scanner's reader did not connect to {self.url}: {exc}") from exc
        finally:
            self._listener.close()
            self._listener = None
        connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.connection = connection
        return connection

    def close(self) -> None:
        for sock in (self._listener, self.connection):
            if sock is not None:
                sock.close()
        self._listener = self.connection = None


class XdotoolScanner(_TimedDriver):
    """Types `key` as a real X key event at each planned pulse.

    One `xdotool -` process reads commands from its stdin, so a pulse costs a pipe
    write (median 0.2-0.3 ms to the key stamp here) instead of a process start (median 3 ms).
    `window` (an X window id) is focused first, for readers that need focus.
    """

    def __init__(self, plan: ScannerPlan, *, clock: Clock, key: str = "5", window: str | None = None) -> None:
        super().__init__(plan, clock=clock, name="sim-scanner-xdotool")
        if shutil.which("xdotool") is None:
            raise HardwareError("the simulated keyboard scanner needs xdotool (apt-get install xdotool)")
        self.key = key
        self.window = window
        self._proc: subprocess.Popen[str] | None = None

    def start(self) -> None:
        self._proc = subprocess.Popen(["xdotool", "-"], stdin=subprocess.PIPE, text=True, bufsize=1)
        if self.window is not None:
            self._command(f"windowfocus --sync {self.window}")
        super().start()

    def _command(self, line: str) -> None:
        assert self._proc is not None and self._proc.stdin is not None
        self._proc.stdin.write(line + "\n")
        self._proc.stdin.flush()

    def emit(self) -> None:
        self._command(f"key --delay 0 {self.key}")

    def stop(self) -> None:
        super().stop()
        if self._proc is not None:
            if self._proc.stdin is not None:
                self._proc.stdin.close()
            try:
                self._proc.wait(5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(5)
            self._proc = None


class ButtonPresser:
    """A simulated button box on a simulated scanner's line: writes each press's bytes at its time.

    `press(data, t)` may be called from any thread; one thread sleeps until the earliest
    press is due and writes it with `write` (the pty master or the socket the scanner
    driver writes its pulses to), so triggers and presses share one real line. `sent`
    records (t just before the write, bytes)."""

    def __init__(self, write: Callable[[bytes], None], *, clock: Clock) -> None:
        if clock.virtual:
            raise InputError("the simulated button box needs a real clock")
        self._write = write
        self._clock = clock
        self._due: list[tuple[float, int, bytes]] = []
        self._cond = threading.Condition()
        self._stop = False
        self._n = 0
        self._thread: threading.Thread | None = None
        self.sent: list[tuple[float, bytes]] = []
        self.error: BaseException | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="sim-buttons", daemon=True)
        self._thread.start()

    def press(self, data: bytes, t: float) -> None:
        with self._cond:
            heapq.heappush(self._due, (t, self._n, data))
            self._n += 1
            self._cond.notify()

    def _run(self) -> None:
        try:
            while True:
                with self._cond:
                    while not self._stop and not self._due:
                        self._cond.wait()
                    if self._stop:
                        return
                    t, _, data = self._due[0]
                    wait_s = t - self._clock.now()
                    if wait_s > 0.002:
                        self._cond.wait(min(wait_s - 0.002, 0.05))   # a new, earlier press wakes it
                        continue
                    heapq.heappop(self._due)
                self._clock.sleep_until(t)
                self.sent.append((self._clock.now(), data))
                self._write(data)
        except BaseException as exc:  # noqa: BLE001 - reported through .error
            self.error = exc

    def stop(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(2.0)


class VirtualScanner:
    """A trigger source on a VirtualClock: each planned pulse fires as a timer."""

    simulated = True
    reads_keyboard = False

    def __init__(self, plan: ScannerPlan, *, clock: VirtualClock, name: str = "sim", capacity: int = 100_000) -> None:
        if not clock.virtual:
            raise InputError("VirtualScanner needs a VirtualClock; with a real clock use pty_sim_source")
        self.plan = plan
        self.name = name
        self._clock = clock
        self._buffer: PulseBuffer[Pulse] = PulseBuffer(capacity, what="simulated scanner")
        self._times: Iterator[float] = iter(())
        self._handle: int | None = None
        self._count = 0
        self.start_t: float | None = None

    def open(self) -> None:
        self.start_t = self._clock.now() + self.plan.start_delay_s
        self._times = (self.start_t + float(x) for x in self.plan.pulse_times_s())
        self._schedule_next()

    def _schedule_next(self) -> None:
        t = next(self._times, None)
        self._handle = None if t is None else self._clock.call_at(t, self._fire)

    def _fire(self) -> None:
        self._buffer.push(Pulse(self._count, self._clock.now(), self.name))
        self._count += 1
        self._schedule_next()

    def poll(self) -> list[Pulse]:
        return self._buffer.drain()

    def poll_keys(self) -> list[KeyPress]:
        return []

    def close(self) -> None:
        if self._handle is not None:
            self._clock.cancel(self._handle)
            self._handle = None


def _nothing() -> None:
    pass


class PulseDriver(Protocol):
    """What `DrivenSource` starts and stops: a thread of this process, or a child process."""

    @property
    def error(self) -> BaseException | None: ...
    @property
    def sent(self) -> list[float]: ...
    def start(self) -> None: ...
    def stop(self) -> None: ...


@dataclass
class DrivenSource:
    """A real trigger source fed by a simulated scanner driver; pulses say `sim`.

    `make_source` builds the reader and `make_driver` the driver, at `open()`, in
    that order, so the reader is listening before the first pulse is sent. If
    `open()` fails half-way, what it opened is closed again. `reads_keyboard` is the
    reader's (known before it is built, so the runner can ask before `open()`).
    """

    make_source: Callable[[], TriggerSource]
    make_driver: Callable[[], PulseDriver]
    cleanup: Callable[[], None] = _nothing
    name: str = "sim"
    reads_keyboard: bool = False
    make_presser: Callable[[], ButtonPresser] | None = None   # a simulated button box on the same line
    simulated: bool = field(default=True, init=False)
    source: TriggerSource | None = field(default=None, init=False)
    driver: PulseDriver | None = field(default=None, init=False)
    presser: ButtonPresser | None = field(default=None, init=False)

    def open(self) -> None:
        try:
            self.source = self.make_source()
            self.source.open()
            self.driver = self.make_driver()
            self.driver.start()
            if self.make_presser is not None:
                self.presser = self.make_presser()
                self.presser.start()
        except BaseException:
            self.close()
            raise

    def press(self, presses: list[KeyPress]) -> None:
        """The simulated participant's presses (button, time): their fORP bytes go on the line at those times."""
        from experiment.buttons.decoders import forp_byte

        if self.presser is None:
            raise RuntimeError("DrivenSource: this simulated scanner has no button box")
        for button, t in presses:
            self.presser.press(forp_byte(button), t)

    def poll_buttons(self) -> list[ButtonPress]:
        if self.presser is not None and self.presser.error is not None:
            raise DeviceFault(f"simulated button box failed: {self.presser.error}")
        source = self._reader()
        return source.poll_buttons() if isinstance(source, SerialSource) else []

    def take_unmatched(self) -> Unmatched | None:
        source = self._reader()
        return source.take_unmatched() if isinstance(source, SerialSource) else None

    def _reader(self) -> TriggerSource:
        if self.source is None:
            raise RuntimeError("DrivenSource.open() was not called")
        return self.source

    def poll(self) -> list[Pulse]:
        if self.driver is not None and self.driver.error is not None:
            raise DeviceFault(f"simulated scanner failed: {self.driver.error}")
        return [replace(p, source=self.name) for p in self._reader().poll()]

    def poll_keys(self) -> list[KeyPress]:
        return self._reader().poll_keys()

    def close(self) -> None:
        try:
            if self.presser is not None:
                self.presser.stop()
            if self.driver is not None:
                self.driver.stop()
            if self.source is not None:
                self.source.close()
        finally:
            self.cleanup()


def has_pty() -> bool:
    """Whether this platform has pseudo-terminals (POSIX does, Windows does not)."""
    return hasattr(os, "openpty")


def pty_sim_source(plan: ScannerPlan, *, clock: Clock, buttons: ButtonDecoder | None = None) -> DrivenSource:
    """The simulated scanner through a real pseudo-terminal and SerialSource (POSIX).

    The pulses are written by a child process that owns the pseudo-terminal
    (`experiment.scanner.sim_process`), so they never wait for this process's frame loop;
    it is started at `open()` and joined (and its exit checked) at `close()`. With `buttons`
    (a fORP decoder), a simulated button box writes the participant's presses on the same
    line (through the child, which owns it) and the one reader splits them from the pulses.
    """
    from experiment.scanner.sim_process import ProcessScanner

    if not has_pty():
        raise InputError("the simulated scanner 'sim:pty' needs a POSIX pseudo-terminal; use sim:socket, "
                         "--headless or sim:syncgen")
    children: list[ProcessScanner] = []

    def make_source() -> SerialSource:
        children.append(ProcessScanner(plan.pulse_times_s().tolist(), clock=clock, start_delay_s=plan.start_delay_s,
                                       payload=b"5", tr_s=plan.tr_s))
        return SerialSource(children[0].port, clock=clock, preset=PRESETS["forp"], name="sim", buttons=buttons)

    def cleanup() -> None:
        while children:
            children.pop().close()

    return DrivenSource(make_source=make_source, make_driver=lambda: children[0], cleanup=cleanup,
                        make_presser=None if buttons is None else
                        lambda: ButtonPresser(lambda data: children[0].write(data), clock=clock))


def socket_sim_source(plan: ScannerPlan, *, clock: Clock, buttons: ButtonDecoder | None = None) -> DrivenSource:
    """The simulated scanner through a loopback TCP socket and SerialSource (any platform).

    At `open()` a `LoopbackListener` listens on 127.0.0.1, `SerialSource` opens its
    `socket://` URL (pyserial), and the driver takes that connection; `close()` closes
    the reader, then both sockets. `buttons`: as for `pty_sim_source`.
    """

    links: list[LoopbackListener] = []

    def make_source() -> SerialSource:
        links.append(LoopbackListener())
        return SerialSource(links[0].url, clock=clock, preset=PRESETS["forp"], name="sim", buttons=buttons)

    def cleanup() -> None:
        while links:
            links.pop().close()

    def send(data: bytes) -> None:
        connection = links[0].connection
        assert connection is not None
        connection.sendall(data)

    return DrivenSource(make_source=make_source,
                        make_driver=lambda: SocketScanner(plan, links[0].accept(), clock=clock, payload=b"5"),
                        cleanup=cleanup,
                        make_presser=None if buttons is None else lambda: ButtonPresser(send, clock=clock))


def xdotool_sim_source(plan: ScannerPlan, *, clock: Clock, win: Any = None, key: str = "5",
                       backend: str = "ptb", window: str | None = None) -> DrivenSource:
    """The simulated scanner as real X key events read by KeyboardSource (Linux/X11).

    The participant window is focused first (its X id taken from the PsychoPy window
    when `window` is not given), so the keys never land in the operator's terminal.
    `win` is the PsychoPy window: an object of an untyped library, hence Any.
    """
    from experiment.scanner.keyboard_source import KeyboardSource

    if window is None and win is not None:
        xid = getattr(getattr(win, "winHandle", None), "_window", None)  # pyglet's X window id
        window = None if xid is None else str(int(xid))
    if window is None:
        raise InputError("the simulated keyboard scanner needs the participant window to type into")

    return DrivenSource(make_source=lambda: KeyboardSource(win, clock=clock, trigger_keys=(key,), backend=backend),
                        make_driver=lambda: XdotoolScanner(plan, clock=clock, key=key, window=window),
                        reads_keyboard=True)
