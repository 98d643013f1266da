"""The run log: append-only, synced, readable after a kill, loud on write failure."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from experiment.log.eventlog import LogFile, LogWriteError, read_log


def test_records_round_trip_with_header_and_sequence(tmp_path: Path) -> None:
    log = LogFile(tmp_path / "log.jsonl", {"participant": "P01"})
    for i in range(100):
        log.write({"kind": "pulse", "t": 10.0 + i, "index": i})
    log.close()
    contents = read_log(tmp_path / "log.jsonl")
    assert contents.header["participant"] == "P01"
    assert [r["index"] for r in contents.records] == list(range(100))
    assert [r["seq"] for r in contents.records] == list(range(1, 101))
    assert not contents.truncated and not contents.problems


def test_never_overwrites_an_existing_log(tmp_path: Path) -> None:
    (tmp_path / "log.jsonl").write_text("precious\n")
    with pytest.raises(FileExistsError, match="never overwritten"):
        LogFile(tmp_path / "log.jsonl", {})
    assert (tmp_path / "log.jsonl").read_text() == "precious\n"


def test_nan_and_newlines_stay_one_valid_line(tmp_path: Path) -> None:
    log = LogFile(tmp_path / "log.jsonl", {})
    log.write({"kind": "warning", "t": float("nan"), "message": "two\nlines\tand tab"})
    log.close()
    lines = (tmp_path / "log.jsonl").read_text().splitlines()
    assert len(lines) == 2
    rec = json.loads(lines[1])
    assert rec["t"] is None and rec["message"] == "two\nlines\tand tab"


def test_torn_last_line_is_dropped_and_reported(tmp_path: Path) -> None:
    log = LogFile(tmp_path / "log.jsonl", {})
    log.write({"kind": "pulse", "t": 1.0})
    log.close()
    with open(tmp_path / "log.jsonl", "a") as fh:
        fh.write('{"seq":2,"kind":"pu')
    contents = read_log(tmp_path / "log.jsonl")
    assert contents.truncated
    assert [r["kind"] for r in contents.records] == ["pulse"]
    assert "incomplete last record" in contents.problems[0]


def test_not_a_log_is_refused(tmp_path: Path) -> None:
    (tmp_path / "x.jsonl").write_text('{"kind":"pulse"}\n')
    with pytest.raises(ValueError, match="not a cuedpain-log/1 file"):
        read_log(tmp_path / "x.jsonl")


class _FailingFile:
    """Stands in for a disk that fills up after a few writes (cannot be made real here)."""

    def __init__(self, path: Path, fail_after: int) -> None:
        self._fh = open(path, "x", encoding="utf-8")
        self._left = fail_after

    def write(self, s: str) -> int:
        if self._left <= 0:
            raise OSError(28, "No space left on device")
        self._left -= 1
        return self._fh.write(s)

    def flush(self) -> None:
        self._fh.flush()

    def fileno(self) -> int:
        return self._fh.fileno()

    def close(self) -> None:
        self._fh.close()


def test_write_failure_is_raised_in_the_run_thread(tmp_path: Path) -> None:
    log = LogFile(tmp_path / "log.jsonl", {}, opener=lambda p: _FailingFile(p, fail_after=3))
    deadline = time.monotonic() + 5
    with pytest.raises(LogWriteError, match="No space left on device"):
        while time.monotonic() < deadline:
            log.write({"kind": "pulse", "t": 0.0})
            log.check()
            time.sleep(0.001)
    assert log.failed
    log.close()
    # what was written before the failure is intact
    assert read_log(tmp_path / "log.jsonl").header["kind"] == "header"


def test_everything_written_before_sigkill_is_on_disk(tmp_path: Path) -> None:
    """A writer process reports each record it queued; after SIGKILL the file holds
    every record up to the last complete line, in order, with nothing invented."""
    script = textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(Path(__file__).resolve().parents[1])!r})
        from experiment.log.eventlog import LogFile
        log = LogFile(__import__('pathlib').Path({str(tmp_path / 'log.jsonl')!r}), {{}})
        i = 0
        while True:
            log.write({{"kind": "pulse", "t": float(i), "index": i}})
            if i == 500:
                print("ready", flush=True)
            i += 1
            time.sleep(0.0002)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    contents = read_log(tmp_path / "log.jsonl")
    indices = [r["index"] for r in contents.records]
    assert len(indices) > 500
    assert indices == list(range(len(indices)))
