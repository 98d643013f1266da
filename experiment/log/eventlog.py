"""Append-only, crash-safe run log: one JSON record per line, synced as it goes.

A run writes `log.jsonl` (every event) and `pressure.jsonl` (cuff pressure samples).
The first line of each is a header record. Records are handed to a writer thread
through a queue, so a slow disk cannot stall the frame loop; the thread writes,
flushes and fsyncs after each batch it drains. After a SIGKILL everything up to the
last completed line is on disk; a half-written last line is ignored by the reader.

A write failure (disk full, directory gone) is not swallowed: it is kept and raised
in the run's thread by `check()`, which the runner calls every frame, so the run can
vent the cuff and stop. Record kinds are typed in `experiment.log.records` (`LogRecord`:
mypy checks every record's fields where it is written) and listed in docs/event-log.md.
Records read back are plain JSON values (`dict[str, Any]`): what is on disk may be older.
"""

from __future__ import annotations

import json
import math
import os
import queue
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Callable, Iterator, Mapping

from experiment.log.records import LogRecord

LOG_FORMAT = "cuedpain-log/1"


class LogWriteError(RuntimeError):
    """The log could not be written; the run must stop (data would be lost)."""


def _clean(value: object) -> object:
    """JSON has no NaN/inf: store them as null so every line stays valid JSON.
    numpy scalars (from devices and schedules) become plain numbers."""
    if hasattr(value, "item") and type(value).__module__ == "numpy":
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def encode_record(record: Mapping[str, object]) -> str:
    """One record as one line (no embedded newline can survive json.dumps)."""
    return json.dumps(_clean(record), separators=(",", ":"), sort_keys=False, allow_nan=False) + "\n"


class LogFile:
    """One append-only JSONL file written by a background thread.

    `opener` exists so tests can inject a writer that fails (disk full).
    """

    def __init__(self, path: Path, header: Mapping[str, object], *, sync: bool = True,
                 threaded: bool = True, opener: Callable[[Path], IO[str]] | None = None) -> None:
        self.path = Path(path)
        self._sync = sync
        self._seq = 0
        self._error: BaseException | None = None
        self._closed = False
        self._lock = threading.Lock()
        if self.path.exists():
            raise FileExistsError(f"{self.path} exists; a run log is never overwritten")
        open_fn = opener or (lambda p: open(p, "x", encoding="utf-8"))
        self._fh = open_fn(self.path)
        self._queue: queue.SimpleQueue[str | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._put({"kind": "header", "format": LOG_FORMAT, **header})
        if threaded:
            self._thread = threading.Thread(target=self._run, name=f"log-{self.path.name}", daemon=True)
            self._thread.start()
        else:
            self._drain_sync()

    # -- producer side (any thread) --
    def write(self, record: LogRecord) -> int:
        """Queue one record; returns its sequence number. Never blocks on I/O."""
        return self._put(record)

    def _put(self, record: Mapping[str, object]) -> int:
        with self._lock:
            if self._closed:
                raise LogWriteError(f"{self.path}: write after close")
            seq = self._seq
            self._seq += 1
            line = encode_record({"seq": seq, **record})
            self._queue.put(line)
        if self._thread is None:
            self._drain_sync()
        return seq

    def check(self) -> None:
        """Raise in the caller's thread if the writer has failed."""
        if self._error is not None:
            raise LogWriteError(f"cannot write {self.path}: {self._error}") from self._error

    @property
    def failed(self) -> bool:
        return self._error is not None

    def close(self, timeout_s: float = 10.0) -> None:
        """Write what is queued, sync, close. Safe to call twice."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._queue.put(None)
        if self._thread is not None:
            self._thread.join(timeout_s)
        else:
            self._drain_sync()
        try:
            self._fh.close()
        except OSError as exc:  # pragma: no cover - close after failure
            self._error = self._error or exc

    # -- writer side --
    def _write_batch(self, lines: list[str]) -> None:
        if self._error is not None:
            return
        try:
            self._fh.write("".join(lines))
            self._fh.flush()
            if self._sync:
                os.fsync(self._fh.fileno())
        except (OSError, ValueError) as exc:
            self._error = exc

    def _drain_sync(self) -> None:
        lines: list[str] = []
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is not None:
                lines.append(item)
        if lines:
            self._write_batch(lines)

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            stop = item is None
            lines: list[str] = [] if item is None else [item]
            while True:  # drain what else is waiting: one fsync per batch
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                else:
                    lines.append(nxt)
            if lines:
                self._write_batch(lines)
            if stop:
                return


@dataclass
class LogContents:
    """A log read back: its header, its records, and what the reader noticed."""

    header: dict[str, Any]
    records: list[dict[str, Any]]
    truncated: bool  # the last line was incomplete (killed mid-write)
    problems: list[str]

    _by_kind: dict[object, list[dict[str, Any]]] = field(default_factory=dict, init=False, repr=False,
                                                          compare=False)
    _indexed_n: int = field(default=-1, init=False, repr=False, compare=False)

    def of_kind(self, *kinds: str) -> Iterator[dict[str, Any]]:
        """The records of these kinds, in log order (indexed by kind once: readers ask often)."""
        if self._indexed_n != len(self.records):     # built on first use; rebuilt if records were added
            self._by_kind = {}
            for r in self.records:
                self._by_kind.setdefault(r.get("kind"), []).append(r)
            self._indexed_n = len(self.records)
        if len(kinds) == 1:
            return iter(self._by_kind.get(kinds[0], ()))
        return (r for r in self.records if r.get("kind") in kinds)


def read_log(path: Path) -> LogContents:
    """Read a JSONL run log, checking its header and sequence numbers.

    Raises ValueError for a file that is not a cuedpain log. A torn last line (from a
    kill) is dropped and reported; a gap in sequence numbers is reported.
    """
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    lines = text.split("\n")
    truncated = False
    if lines and lines[-1] == "":
        lines.pop()
    elif lines:
        truncated = True  # no final newline: the last record was cut
    problems: list[str] = []
    records: list[dict[str, Any]] = []
    for i, line in enumerate(lines, start=1):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if i == len(lines):
                truncated = True
                problems.append(f"{path.name}:{i}: incomplete last record dropped")
                break
            raise ValueError(f"{path}:{i}: not a JSON record") from None
    else:
        if truncated:  # parsed fine but lacked its newline: keep it, note it
            truncated = False
    if not records or records[0].get("kind") != "header" or records[0].get("format") != LOG_FORMAT:
        raise ValueError(f"{path}: not a {LOG_FORMAT} file (first line must be its header)")
    for expected, rec in enumerate(records):
        if rec.get("seq") != expected:
            problems.append(f"{path.name}: record {expected} has seq {rec.get('seq')}")
            break
    return LogContents(header=records[0], records=records[1:], truncated=truncated, problems=problems)
