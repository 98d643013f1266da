"""One process per step: launch it, remember it on disk, find its logs, stop it by signal.

A step runs as `python -m experiment ...` (the same command as from the terminal) in a
session of its own, so the station's death (Ctrl-C in its terminal, a closed window, a
crash) does not reach it; its console goes to a file. When it starts, the station writes
`<data>/sourcedata/station/active.json` (pid, the process's start time, the step, the
command), so a restarted station finds it again and follows it from its logs. The only
control is a signal: abort = SIGINT, the path of Ctrl-C (the Station vents first).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Sequence

from experiment.procedures.calibration.results import calibration_dir
from experiment.procedures.visit.listing import first_and_last, pid_alive, read_active, station_dir, \
    subject_source_dir


def replace_file(path: Path, text: str) -> None:
    """Write a small state file whole (a reader never sees half of it)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def proc_start_ticks(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (Linux), to tell it from a later one with its pid."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            return int(fh.read().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


@dataclass(frozen=True)
class ActiveStep:
    """The station's state file: the last step process it started."""

    key: str
    kind: str
    title: str
    pid: int
    start_ticks: int | None
    started: str                 # ISO wall time, seconds
    argv: tuple[str, ...]
    console: str                 # the file its console goes to
    participant: str
    session: str | None
    visit: str                   # the plan's label

    def as_dict(self) -> dict[str, Any]:
        return {"key": self.key, "kind": self.kind, "title": self.title, "pid": self.pid,
                "start_ticks": self.start_ticks, "started": self.started, "argv": list(self.argv),
                "console": self.console, "participant": self.participant, "session": self.session,
                "visit": self.visit}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ActiveStep":
        return cls(key=str(d["key"]), kind=str(d["kind"]), title=str(d.get("title") or d["key"]), pid=int(d["pid"]),
                   start_ticks=d.get("start_ticks"), started=str(d["started"]), argv=tuple(d.get("argv") or ()),
                   console=str(d.get("console") or ""), participant=str(d["participant"]),
                   session=d.get("session"), visit=str(d["visit"]))

    @property
    def alive(self) -> bool:
        """Still running, and the same process (not a later one that got its pid)."""
        if not pid_alive(self.pid):
            return False
        ticks = proc_start_ticks(self.pid)
        return self.start_ticks is None or ticks is None or ticks == self.start_ticks


def load_active(data_root: Path) -> ActiveStep | None:
    doc = read_active(data_root)
    try:
        return None if doc is None else ActiveStep.from_dict(doc)
    except (KeyError, TypeError, ValueError):
        return None


class Children:
    """Launches step processes and keeps their Popen objects (to reap them) while the station lives."""

    def __init__(self, data_root: Path, *, command: Sequence[str] | None = None) -> None:
        self.data_root = data_root
        self.command = tuple(command) if command is not None else (sys.executable, "-m", "experiment")
        self._procs: dict[int, subprocess.Popen[bytes]] = {}

    def reap(self) -> None:
        for pid, p in list(self._procs.items()):
            if p.poll() is not None:
                del self._procs[pid]

    def launch(self, args: Sequence[str], *, key: str, kind: str, title: str, participant: str,
               session: str | None, visit: str) -> ActiveStep:
        """Start `cuedpain ARGS` in its own session; write the state file; return what was written."""
        d = station_dir(self.data_root)
        d.mkdir(parents=True, exist_ok=True)
        now = datetime.now().astimezone().replace(microsecond=0)
        console = d / f"console-{now:%Y%m%dT%H%M%S}-{key}.txt"
        # its own session (POSIX) or process group (Windows): the station's Ctrl-C or death does not reach it
        detach: dict[str, Any] = ({"creationflags": getattr(subprocess, "CREATE_NEW_PROCESS_GROUP", 0)}
                                  if os.name == "nt" else {"start_new_session": True})
        with open(console, "ab") as out:
            proc = subprocess.Popen([*self.command, *args], stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT, **detach)
        self._procs[proc.pid] = proc
        step = ActiveStep(key=key, kind=kind, title=title, pid=proc.pid, start_ticks=proc_start_ticks(proc.pid),
                          started=now.isoformat(), argv=tuple(args), console=str(console), participant=participant,
                          session=session, visit=visit)
        replace_file(d / "active.json", json.dumps(step.as_dict(), indent=1) + "\n")
        return step

    def abort(self, step: ActiveStep) -> bool:
        """SIGINT to the step's process (Ctrl-C: it vents first, then ends in order). False: not running.

        On Windows, CTRL_BREAK_EVENT to its process group (the Station's SIGBREAK handler vents
        first); written to the documented API, untested here."""
        if not step.alive:
            return False
        try:
            os.kill(step.pid, getattr(signal, "CTRL_BREAK_EVENT") if os.name == "nt" else signal.SIGINT)
        except ProcessLookupError:
            return False
        return True

    def run_quick(self, args: Sequence[str], *, timeout_s: float = 60.0) -> tuple[int, str]:
        """A short command (discard) run to its end: exit code and output."""
        done = subprocess.run([*self.command, *args], stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              timeout=timeout_s)
        return done.returncode, (done.stdout + done.stderr).strip()


def _started(path: Path) -> str | None:
    header, _ = first_and_last(path)
    return None if header is None else str(header.get("start_wall") or "")


def find_logs(data_root: Path, step: ActiveStep, *, task: str | None) -> tuple[Path, Path | None] | None:
    """The event log (and pressure log) the step's process writes: the newest of its kind begun since it started."""
    if step.kind == "run":
        base = subject_source_dir(data_root, step.participant, step.session)
        pattern = f"*_task-{task or '*'}_run-*/log.jsonl"
        candidates = [*base.glob(pattern), *base.glob(f"attempts/{pattern}")]
    elif step.kind == "rig_check":
        candidates = list((Path(data_root) / "sourcedata" / "rig-checks").glob("rig-check-*.jsonl"))
    else:
        candidates = list(calibration_dir(data_root, step.participant).glob("*_log.jsonl"))
    since = datetime.fromisoformat(step.started)
    fresh = []
    for c in candidates:
        text = _started(c)
        try:
            when = datetime.fromisoformat(text) if text else None
        except ValueError:
            when = None
        if when is not None and when >= since:
            fresh.append((when, c.stat().st_mtime, c))
    if not fresh:
        return None
    log = max(fresh)[2]
    if step.kind == "run":
        return log, log.parent / "pressure.jsonl"
    if step.kind == "rig_check":
        return log, None
    return log, log.with_name(log.name.replace("_log.jsonl", "_pressure.jsonl"))


def console_tail(step: ActiveStep, n_lines: int = 12) -> list[str]:
    try:
        with open(step.console, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - 8192))
            text = fh.read().decode("utf-8", "replace")
    except OSError:
        return []
    lines = [line.split("\r")[-1] for line in text.splitlines() if line.strip()]
    return lines[-n_lines:]
