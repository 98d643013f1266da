"""The two append-only logs of a session, and how an orderly stop is named in them.

`Recorder` holds `log.jsonl` (events) and `pressure.jsonl` (cuff samples); records
produced before the logs exist (device identification while the Station opens) are kept
and written first, so nothing said by a device is lost. `STOPS` are the exceptions that
end a session early but in order; `stop_reason` names one for the `end` record.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

from experiment.cuff.base import PressureSample
from experiment.errors import AbortError, DeviceFault
from experiment.log.eventlog import LogFile, LogWriteError
from experiment.log.records import SessionRecord

#: the exceptions that end a run or calibration early but in order (vent, log, outputs)
STOPS = (AbortError, DeviceFault, LogWriteError)


class Recorder:
    def __init__(self) -> None:
        self.log: LogFile | None = None
        self.pressure_log: LogFile | None = None
        self._early: list[SessionRecord] = []

    def open(self, events_path: Path, pressure_path: Path, header: Mapping[str, object]) -> None:
        """Create both logs (never over an existing file) and write the early records."""
        self.log = LogFile(events_path, {**header, "stream": "events"})
        self.pressure_log = LogFile(pressure_path, {**header, "stream": "pressure"})
        for rec in self._early:
            self.log.write(rec)
        self._early.clear()

    def record(self, rec: SessionRecord) -> None:
        if self.log is None:
            self._early.append(rec)
        else:
            self.log.write(rec)

    def sample(self, sample: PressureSample) -> None:
        """One cuff pressure sample."""
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


def stop_reason(exc: BaseException) -> tuple[str, str]:
    """(reason code, operator message) for one of `STOPS`, as the `end` record says it."""
    if isinstance(exc, AbortError):
        return exc.reason, exc.message
    if isinstance(exc, DeviceFault):
        return "device_fault", exc.message
    return "log_write_failed", str(exc)
