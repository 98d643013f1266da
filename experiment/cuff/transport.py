"""Byte transports for cuff drivers: a real serial port, or an in-process loopback.

A driver sees one small interface (`Transport`): open with a receiver, write bytes,
wait for a condition its receiver makes true, close. Every chunk of received bytes is
stamped with `clock.now()` the moment it arrives, so replies and telemetry carry host
times on the run's clock.

* `SerialTransport` opens a pyserial port (a path, a COM name or a URL such as
  `socket://` or `hwgrep://`), exclusively on POSIX, and reads it from a thread of its
  own in the manner of `serial.threaded.ReaderThread`: `read(in_waiting or 1)` in a
  loop; a `SerialException` (unplugged adapter, closed pty master, a TCP peer that
  closed) or an exception from the receiver ends the loop and is reported once through
  `on_lost`. On a `socket://` port it turns Nagle's algorithm off, so that a VENT is not
  held back behind an unacknowledged PING.
* `LoopbackTransport` connects a driver to a `ByteDevice` in the same thread on a
  `VirtualClock`: writes reach the device at once, the device is advanced by a clock
  timer, and waiting means moving virtual time. Headless runs use it.
"""

from __future__ import annotations

import os
import socket
import threading
from typing import Callable, Protocol

import serial

from experiment.clock import Clock, VirtualClock
from experiment.cuff.bytedevice import ByteDevice
from experiment.cuff.line_codec import BAUDRATE
from experiment.errors import DeviceFault, HardwareError

OnData = Callable[[bytes, float], None]
OnLost = Callable[[BaseException], None]


class Transport(Protocol):
    port: str

    def open(self, on_data: OnData, on_lost: OnLost) -> None:
        """Open; received chunks go to `on_data(data, t_arrival)`, a lost link to `on_lost`."""

    def write(self, data: bytes) -> float:
        """Write all of `data`; returns the clock time the bytes were handed to the OS.

        Taken just before the write call, so that it is never later than the reply's
        arrival stamp (the reader thread may run before the writer resumes). Raises
        DeviceFault.
        """

    def wait(self, predicate: Callable[[], bool], timeout_s: float) -> bool:
        """Until `predicate()` is true (re-checked after each received chunk) or timeout."""

    def close(self) -> None: ...


class SerialTransport:
    """A pyserial port with a reader thread that stamps every chunk on arrival."""

    READ_TIMEOUT_S = 0.1      # how often the reader re-checks for close where cancel_read is missing
    WRITE_TIMEOUT_S = 0.5     # a write never blocks longer than this

    def __init__(self, port: str, *, clock: Clock, baudrate: int = BAUDRATE, exclusive: bool = True,
                 after_open: Callable[[serial.Serial], None] | None = None) -> None:
        """`after_open` runs on the open port before the reader starts (the gate board sets HUPCL);
        a HardwareError from it closes the port again."""
        self.port = port
        self._after_open = after_open
        self._clock = clock
        self._baudrate = baudrate
        self._exclusive = exclusive and os.name == "posix"
        # pyserial's own type; a URL handler's class (socket://) is another SerialBase without cancel_read
        self._serial: serial.Serial | None = None
        self._thread: threading.Thread | None = None
        self._cond = threading.Condition()
        self._write_lock = threading.Lock()
        self._closing = False

    def open(self, on_data: OnData, on_lost: OnLost) -> None:
        kwargs = {"exclusive": True} if self._exclusive else {}
        try:
            ser = serial.serial_for_url(self.port, baudrate=self._baudrate, bytesize=8, parity="N",
                                        stopbits=1, timeout=self.READ_TIMEOUT_S,
                                        write_timeout=self.WRITE_TIMEOUT_S, do_not_open=True, **kwargs)
            ser.open()
            _no_delay(ser)
            ser.reset_input_buffer()   # whatever waited in the buffer predates this session
        except (serial.SerialException, OSError, ValueError) as exc:
            raise HardwareError(f"cannot open cuff port {self.port}: {exc}") from exc
        if self._after_open is not None:
            try:
                self._after_open(ser)
            except HardwareError:
                ser.close()
                raise
        self._serial = ser
        self._thread = threading.Thread(target=self._read_loop, args=(ser, on_data, on_lost),
                                        name=f"serial-reader-{self.port}", daemon=True)
        self._thread.start()

    def _read_loop(self, ser: serial.Serial, on_data: OnData, on_lost: OnLost) -> None:
        try:
            while not self._closing:
                data = ser.read(ser.in_waiting or 1)
                if data:
                    t = self._clock.now()
                    on_data(data, t)
                    with self._cond:
                        self._cond.notify_all()
        except Exception as exc:  # noqa: BLE001 - any failure of the link or the receiver ends it
            if not self._closing:
                on_lost(exc)
        finally:
            with self._cond:
                self._cond.notify_all()

    def write(self, data: bytes) -> float:
        ser = self._serial
        if ser is None:
            raise DeviceFault(f"cuff port {self.port} is not open")
        with self._write_lock:
            t_write = self._clock.now()
            try:
                ser.write(data)
            except (serial.SerialException, OSError, TypeError, AttributeError) as exc:
                raise DeviceFault(f"cannot write to cuff port {self.port}: {exc}") from exc
            return t_write

    def wait(self, predicate: Callable[[], bool], timeout_s: float) -> bool:
        with self._cond:
            return self._cond.wait_for(predicate, timeout=max(0.0, timeout_s))

    @property
    def reader_alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def close(self) -> None:
        self._closing = True
        ser, self._serial = self._serial, None
        if ser is None:
            return
        try:
            if hasattr(ser, "cancel_read"):
                ser.cancel_read()
        except Exception:  # noqa: BLE001 - closing a port that is already gone
            pass
        stuck = False
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(2.0)
            stuck = self._thread.is_alive()
        try:
            ser.close()
        except Exception:  # noqa: BLE001 - closing a port that is already gone
            pass
        if stuck:
            raise HardwareError(f"the reader of {self.port} did not stop within 2 s of closing")


def _no_delay(ser: serial.Serial) -> None:
    """TCP_NODELAY on a `socket://` port (pyserial keeps the socket in `_socket`); nothing elsewhere."""
    sock = getattr(ser, "_socket", None)
    if isinstance(sock, socket.socket):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class LoopbackTransport:
    """A `ByteDevice` in the same thread, on a virtual clock (headless runs and tests).

    The device is advanced every `tick_s` of virtual time by a clock timer, so its
    telemetry and events arrive while the run sleeps on the clock; `wait` moves the
    clock in ticks until the predicate holds.
    """

    def __init__(self, device: ByteDevice, *, clock: VirtualClock, tick_s: float = 0.002,
                 port: str = "loopback") -> None:
        if not isinstance(clock, VirtualClock):
            raise TypeError("LoopbackTransport runs on a VirtualClock; use SimServer for real time")
        self.port = port
        self.device = device
        self._clock = clock
        self._tick_s = tick_s
        self._on_data: OnData | None = None
        self._timer: int | None = None
        self._open = False

    def open(self, on_data: OnData, on_lost: OnLost) -> None:
        self._on_data = on_data
        self._open = True
        self.device.attach(self._from_device)
        self.device.on_port_open(self._clock.now())
        self._schedule()

    def _from_device(self, data: bytes) -> None:
        if self._open and self._on_data is not None:
            self._on_data(data, self._clock.now())

    def _schedule(self) -> None:
        self._timer = self._clock.call_later(self._tick_s, self._tick)

    def _tick(self) -> None:
        if self._open:
            self.device.advance(self._clock.now())
            self._schedule()

    def write(self, data: bytes) -> float:
        if not self._open:
            raise DeviceFault(f"cuff port {self.port} is not open")
        t_write = self._clock.now()
        self.device.receive(data, t_write)
        return t_write

    def wait(self, predicate: Callable[[], bool], timeout_s: float) -> bool:
        deadline = self._clock.now() + max(0.0, timeout_s)
        while not predicate():
            now = self._clock.now()
            if now >= deadline:
                return False
            self._clock.sleep_until(min(deadline, now + self._tick_s))
        return True

    def close(self) -> None:
        self._open = False
        if self._timer is not None:
            self._clock.cancel(self._timer)
            self._timer = None
