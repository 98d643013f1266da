"""The two append-only logs of a run or a calibration, and how a signal ends one.

`Recorder` holds `log.jsonl` (events) and `pressure.jsonl` (cuff samples); records
produced before the logs exist (device identification during pre-flight) are kept
and written first, so nothing said by a device is lost. `install_stop_signals` makes
Ctrl-C, SIGTERM and SIGHUP vent at once and leave the rest to the loop.
"""

from __future__ import annotations

import signal
import threading
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Callable

from experiment.errors import AbortError, DeviceFault
from experiment.log.eventlog import LogFile, LogWriteError

#: the exceptions that end a run or calibration early but in order (vent, log, outputs)
STOPS = (AbortError, DeviceFault, LogWriteError)


class Recorder:
    def __init__(self) -> None:
        self.log: LogFile | None = None
        self.pressure_log: LogFile | None = None
        self._early: list[dict[str, Any]] = []

    def open(self, events_path: Path, pressure_path: Path, header: dict[str, Any]) -> None:
        """Create both logs (never over an existing file) and write the early records."""
        self.log = LogFile(events_path, {**header, "stream": "events"})
        self.pressure_log = LogFile(pressure_path, {**header, "stream": "pressure"})
        for rec in self._early:
            self.log.write(rec)
        self._early.clear()

    def record(self, rec: dict[str, Any]) -> None:
        if self.log is None:
            self._early.append(rec)
        else:
            self.log.write(rec)

    def sample(self, sample: Any) -> None:
        """One cuff pressure sample (`experiment.cuff.base.PressureSample`)."""
        if self.pressure_log is not None:
            self.pressure_log.write({"kind": "p", "t": sample.t, "dev_ms": sample.device_ms, "p": sample.pressure_kpa,
                                     "tgt": sample.target_kpa, "st": sample.state.value})

    def check(self) -> None:
        """Raise LogWriteError if either log could not be written (lost data stops the run)."""
        for lf in (self.log, self.pressure_log):
            if lf is not None:
                lf.check()

    @property
    def writable(self) -> bool:
        return self.log is not None and not self.log.failed

    def close(self) -> None:
        for lf in (self.log, self.pressure_log):
            if lf is not None:
                lf.close()


#: how each stop signal is described to the operator and in the log's end record
_SIGNAL_WORDS = {"SIGINT": "Ctrl-C from the operator", "SIGTERM": "SIGTERM (the process was asked to stop)",
                 "SIGHUP": "SIGHUP (the terminal was closed or the session ended)"}


def stop_signals() -> tuple[signal.Signals, ...]:
    """The signals that end a run in order on this system (SIGHUP is POSIX only)."""
    names = ("SIGINT", "SIGTERM", "SIGHUP")
    return tuple(getattr(signal, n) for n in names if hasattr(signal, n))


def install_stop_signals(stack: ExitStack, *, vent: Callable[[str], None],
                         on_stop: Callable[[str, str], None]) -> None:
    """Ctrl-C, SIGTERM and SIGHUP: `vent(name)` at once, then `on_stop(name, message)`.

    The handler runs between two bytecodes of the main thread, which may hold a log's
    lock: `vent` must be lock-free (the supervisor's `emergency_vent` is) and `on_stop`
    must only set a flag; the loop writes the records. Restored on `stack` exit.
    """
    if threading.current_thread() is not threading.main_thread():
        return

    def handler(signum: int, _frame: Any) -> None:
        sig = signal.Signals(signum)
        vent(sig.name.lower())
        on_stop(sig.name.lower(), f"stopped by {_SIGNAL_WORDS.get(sig.name, sig.name)}")

    for sig in stop_signals():
        old = signal.signal(sig, handler)
        stack.callback(signal.signal, sig, old)


def stop_reason(exc: BaseException) -> tuple[str, str]:
    """(reason code, operator message) for one of `STOPS`, as the `end` record says it."""
    if isinstance(exc, AbortError):
        return exc.reason, exc.message
    if isinstance(exc, DeviceFault):
        return "device_fault", exc.message
    return "log_write_failed", str(exc)
