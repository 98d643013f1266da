"""How the operating system asks a session to stop, mapped to one path: vent first, then stop.

POSIX: Ctrl-C (SIGINT), SIGTERM, and SIGHUP (the terminal was closed). Windows: Ctrl-C
(SIGINT), Ctrl-Break (SIGBREAK), and closing the console window, logging off or shutting
down (console control events, which Python does not turn into signals: a handler is
registered with `SetConsoleCtrlHandler`; Windows then gives the process a few seconds,
which the handler spends waiting for the session to finish in order). SIGKILL cannot be
caught anywhere: the cuff's own watchdog vents then.

A handler runs between two bytecodes of the main thread, which may hold a log's lock, so
it only calls `vent(name)` (which must be lock-free: the cuff supervisor's
`emergency_vent` is) and records that a stop was asked; the session's loop turns that
into an `operator` record and an `AbortError`. While the main thread blocks on the
operator (`interruptible()`), the handler raises at once instead, so a signal during the
confirmation prompt is not left waiting for a key.
"""

from __future__ import annotations

import signal
import sys
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from types import FrameType
from typing import Callable, Iterator

from experiment.errors import AbortError

_WORDS = {"sigint": "Ctrl-C from the operator", "sigterm": "SIGTERM (the process was asked to stop)",
          "sighup": "SIGHUP (the terminal was closed or the session ended)",
          "sigbreak": "Ctrl-Break from the operator",
          "console_close": "the console window was closed, or Windows is logging off or shutting down"}
_WINDOWS_CONSOLE_EVENTS = {2: "console_close", 5: "console_close", 6: "console_close"}  # CLOSE, LOGOFF, SHUTDOWN
WINDOWS_GRACE_S = 4.0      # Windows ends the process about 5 s after a console close


@dataclass(frozen=True)
class StopRequest:
    """A stop the operating system asked for: its name (sigint, sigterm, ...) and when."""

    name: str
    t: float
    message: str

    def error(self) -> AbortError:
        return AbortError(self.message, reason=self.name)


def stop_signal_names() -> tuple[str, ...]:
    """The signals this system delivers for an orderly stop."""
    names = ("SIGINT", "SIGBREAK") if sys.platform == "win32" else ("SIGINT", "SIGTERM", "SIGHUP")
    return tuple(n for n in names if hasattr(signal, n))


class StopSignals:
    """Installs the stop handlers for a session's lifetime (a context manager; restores on exit)."""

    def __init__(self, *, vent: Callable[[str], None], now: Callable[[], float]) -> None:
        self._vent = vent
        self._now = now
        self.request: StopRequest | None = None
        self._interruptible = False
        self._finished = threading.Event()
        self._saved: list[tuple[int, object]] = []
        self._console_handler: object = None

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            for name in stop_signal_names():
                sig = getattr(signal, name)
                self._saved.append((sig, signal.signal(sig, self._on_signal)))
        if sys.platform == "win32":
            self._install_console_handler()
        return self

    def __exit__(self, *exc: object) -> None:
        self._finished.set()
        for sig, old in reversed(self._saved):
            signal.signal(sig, old)  # type: ignore[arg-type]
        self._saved.clear()

    def _stop(self, name: str) -> StopRequest:
        self._vent(name)
        if self.request is None:
            self.request = StopRequest(name, self._now(), f"stopped by {_WORDS.get(name, name)}")
        return self.request

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        request = self._stop(signal.Signals(signum).name.lower())
        if self._interruptible:
            raise request.error()

    @contextmanager
    def interruptible(self) -> Iterator[None]:
        """While the main thread blocks on the operator, a stop signal raises at once."""
        if self.request is not None:
            raise self.request.error()
        self._interruptible = True
        try:
            yield
        finally:
            self._interruptible = False

    def _install_console_handler(self) -> None:  # pragma: no cover - Windows only, untested here
        import ctypes

        handler_type = getattr(ctypes, "WINFUNCTYPE")(ctypes.c_int, ctypes.c_uint)   # Windows-only name

        def on_console_event(event: int) -> int:
            name = _WINDOWS_CONSOLE_EVENTS.get(event)
            if name is None:
                return 0          # Ctrl-C and Ctrl-Break: Python's own SIGINT / SIGBREAK handling
            self._stop(name)
            self._finished.wait(WINDOWS_GRACE_S)   # let the session vent, log and derive its outputs
            return 1

        self._console_handler = handler_type(on_console_event)   # kept alive as long as we are
        ctypes.windll.kernel32.SetConsoleCtrlHandler(self._console_handler, True)  # type: ignore[attr-defined]
