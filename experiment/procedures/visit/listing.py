"""What is on disk for a visit, read into a `Listing` (the shell of experiment/procedures/visit/state.py).

Reads calibration results, run directories (their log header and `end` record, attempts
included), discard annotations, rig-check logs, the visit's own record (when it began)
and the station's state file (which step's process it started, and whether that pid
is still alive). Reading only the first and the last lines of each log keeps a listing
cheap enough to redo every second.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from experiment.outputs.annotations import read_discard
from experiment.outputs.atomic import create_once
from experiment.outputs.writer import run_uid
from experiment.procedures.calibration.results import calibration_dir
from experiment.procedures.visit.state import Active, CalibrationFact, Listing, RigCheckFact, RunFact

VISIT_FORMAT = "cuedpain-visit/1"


def subject_source_dir(data_root: Path, participant: str, session: str | None) -> Path:
    d = Path(data_root) / "sourcedata" / f"sub-{participant}"
    return d / f"ses-{session}" if session else d


def visit_record_path(data_root: Path, participant: str, session: str | None, label: str) -> Path:
    return subject_source_dir(data_root, participant, session) / "visits" / f"{label}.json"


def station_dir(data_root: Path) -> Path:
    """Where the station keeps its state file and the consoles of the processes it started."""
    return Path(data_root) / "sourcedata" / "station"


@dataclass(frozen=True)
class VisitRecord:
    started: datetime
    plan: str
    plan_sha256: str


def begin_visit(data_root: Path, participant: str, session: str | None, label: str, *, plan: Path,
                plan_sha256: str) -> VisitRecord:
    """The visit's record, created once when its first step starts (never replaced)."""
    path = visit_record_path(data_root, participant, session, label)
    existing = read_visit_record(path)
    if existing is not None:
        return existing
    path.parent.mkdir(parents=True, exist_ok=True)
    now = datetime.now().astimezone().replace(microsecond=0)
    doc = {"format": VISIT_FORMAT, "participant": participant, "session": session, "plan": str(plan),
           "plan_sha256": plan_sha256, "started": now.isoformat()}
    create_once(path, (json.dumps(doc, indent=2) + "\n").encode("utf-8"))
    return read_visit_record(path) or VisitRecord(now, str(plan), plan_sha256)


def read_visit_record(path: Path) -> VisitRecord | None:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        return VisitRecord(datetime.fromisoformat(doc["started"]), str(doc["plan"]), str(doc["plan_sha256"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _when(text: Any) -> datetime | None:
    try:
        when = datetime.fromisoformat(str(text))
    except (TypeError, ValueError):
        return None
    return when if when.tzinfo is not None else when.astimezone()


def first_and_last(path: Path) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """The first record (header) and the last complete record of a JSONL log."""
    try:
        with open(path, "rb") as fh:
            head = fh.readline()
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - 65536))
            tail = fh.read().split(b"\n")
    except OSError:
        return None, None

    def parse(line: bytes) -> dict[str, Any] | None:
        try:
            rec = json.loads(line)
        except ValueError:
            return None
        return rec if isinstance(rec, dict) else None

    last = next((r for line in reversed(tail) if line.strip() and (r := parse(line)) is not None), None)
    return parse(head), last


def discarded(run_dir: Path, header: dict[str, Any]) -> str | None:
    """The reason a run is discarded now (its annotations' last discard or restore line wins),
    or None; read as `cuedpain discard` writes it (experiment/outputs/annotations.py)."""
    state, _ = read_discard(run_dir, run_uid(header))
    return (state.reason or "") if state.discarded else None


def _calibrations(data_root: Path, participant: str) -> tuple[CalibrationFact, ...]:
    out = []
    d = calibration_dir(data_root, participant)
    for f in sorted(d.glob(f"sub-{participant}_calibration-*.json")) if d.is_dir() else []:
        try:
            doc = json.loads(f.read_text(encoding="utf-8"))
            number = int(f.stem.rsplit("-", 1)[1])
            out.append(CalibrationFact(number=number, path=str(f), method=str(doc.get("method")),
                                       session=doc.get("session") or None, created=_when(doc.get("created")),
                                       pressure_kpa=float(doc["pressure_kpa"]), dry_run=doc.get("dry_run"),
                                       decision=(doc.get("check") or {}).get("decision")))
        except (OSError, ValueError, KeyError, TypeError, IndexError):
            continue
    return tuple(sorted(out, key=lambda c: c.number))


def run_fact(run_dir: Path) -> RunFact | None:
    """A run directory as the visit sees it (None: no readable header)."""
    header, last = first_and_last(run_dir / "log.jsonl")
    if header is None or header.get("kind") != "header" or "task" not in header:
        return None
    end = last if last is not None and last.get("kind") == "end" else None
    status = "running" if end is None else str(end.get("status"))
    return RunFact(run_dir=str(run_dir), task=str(header.get("task")), run=int(header.get("run") or 0),
                   started=_when(header.get("start_wall")), status=status,
                   reason=None if end is None else end.get("reason"), attempt=run_dir.parent.name == "attempts",
                   discarded=discarded(run_dir, header))


def _runs(data_root: Path, participant: str, session: str | None) -> tuple[RunFact, ...]:
    base = subject_source_dir(data_root, participant, session)
    dirs = [*base.glob("sub-*_task-*_run-*"), *base.glob("attempts/sub-*_task-*_run-*")]
    facts = [f for d in dirs if d.is_dir() and (f := run_fact(d)) is not None]
    return tuple(sorted(facts, key=lambda r: (r.started or datetime.min.astimezone(), r.run)))


def rig_check_facts(data_root: Path) -> tuple[RigCheckFact, ...]:
    out = []
    d = Path(data_root) / "sourcedata" / "rig-checks"
    for f in sorted(d.glob("rig-check-*.jsonl")) if d.is_dir() else []:
        header, last = first_and_last(f)
        if header is None:
            continue
        ok = bool(last.get("ok")) if last is not None and last.get("kind") == "end" else None
        out.append(RigCheckFact(path=str(f), started=_when(header.get("start_wall")), ok=ok, cuff=_cuff_of(f)))
    return tuple(sorted(out, key=lambda r: (r.started or datetime.min.astimezone(), r.path)))


def _cuff_of(log: Path) -> str | None:
    """The cuff's identity from a rig-check log's cuff_check record."""
    try:
        lines = log.read_text(encoding="utf-8").splitlines()
    except OSError:
        return None
    for line in lines:
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict) and rec.get("kind") == "cuff_check":
            info = rec.get("identity") or rec.get("device") or rec.get("info") or {}
            if isinstance(info, dict) and info:
                parts = [str(info.get("name") or "?"), f"firmware {info.get('firmware') or '?'}",
                         f"serial {info.get('serial') or '?'}", f"on {info.get('port') or '?'}"]
                return ", ".join(parts) + (" (SIMULATED)" if info.get("simulated") else "")
    return None


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists (a zombie counts as gone)."""
    if os.name == "nt":   # os.kill(pid, 0) would terminate the process on Windows
        return _windows_pid_alive(pid)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _windows_pid_alive(pid: int) -> bool:  # pragma: no cover - Windows only; untested here
    """OpenProcess + GetExitCodeProcess == STILL_ACTIVE (259): written to the documented API."""
    import ctypes

    kernel32 = ctypes.windll.kernel32  # type: ignore[attr-defined,unused-ignore]
    handle = kernel32.OpenProcess(0x1000, False, pid)   # PROCESS_QUERY_LIMITED_INFORMATION
    if not handle:
        return False
    try:
        code = ctypes.c_ulong()
        return bool(kernel32.GetExitCodeProcess(handle, ctypes.byref(code))) and code.value == 259
    finally:
        kernel32.CloseHandle(handle)


def read_active(data_root: Path) -> dict[str, Any] | None:
    """The station's state file: the step process it started last (None: none)."""
    try:
        doc = json.loads((station_dir(data_root) / "active.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def active_of(doc: dict[str, Any] | None, participant: str, session: str | None, label: str) -> Active | None:
    if doc is None or (doc.get("participant"), doc.get("session"), doc.get("visit")) != (participant, session, label):
        return None
    pid = int(doc.get("pid") or 0)
    return Active(key=str(doc.get("key")), pid=pid, alive=pid > 0 and pid_alive(pid), started=str(doc.get("started")))


def read_listing(data_root: Path, participant: str, session: str | None, label: str) -> Listing:
    """Everything the visit's state is derived from."""
    record = read_visit_record(visit_record_path(data_root, participant, session, label))
    return Listing(started=None if record is None else record.started,
                   calibrations=_calibrations(data_root, participant), runs=_runs(data_root, participant, session),
                   rig_checks=rig_check_facts(data_root),
                   active=active_of(read_active(data_root), participant, session, label))
