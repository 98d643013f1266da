"""Discarding a run, and taking that back, without touching its raw log.

A run is marked discarded with a reason (the participant moved, the cuff slipped, the wrong
protocol) by appending one JSON line to `annotations.jsonl` in the run's sourcedata
directory; `restore` appends a line that takes it back. The file is append-only: the last
`discarded` or `restored` line says the run's state, the earlier lines are its history. Each
line names the run it is about (`run_uid`, the hash of the log header, as in events.json),
so a line copied next to another run's log is recognised and ignored; a line without
`run_uid` (the operator station's placeholder writer before this module) is taken as this
run's.

    {"format": "cuedpain-annotation/1", "kind": "discarded" | "restored", "run_uid": "...",
     "stem": "sub-P01_task-demo_run-1", "reason": "...", "by": "...", "at": "ISO 8601",
     "software": {"name": "cuedpain", "version": "..."}}

The session's BIDS `scans.tsv` (`sub-<id>/[ses-<s>/]sub-<id>[_ses-<s>]_scans.tsv`) is then
written again: one row per BIDS file of each run of the session (`func/<stem>_*`, sidecars
excepted), with `acq_time`, `run_status`, `discarded` (true/false) and `discard_reason`,
described in its sidecar `..._scans.json`. Rows and columns written by others (a DICOM
converter's) are kept; only these columns of cuedpain's own files are set.

Pure: `annotation_record`, `check_reason`, `parse_annotations`, `discard_state`,
`scans_table`, `scans_sidecar`. Shell: `read_discard`, `discard_run`, `restore_run`,
`write_session_scans` (the operator's page calls `discard_run` and `restore_run`).
"""

from __future__ import annotations

import getpass
import json
import os
import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Mapping, Sequence

from experiment import __version__
from experiment.errors import InputError
from experiment.log.eventlog import read_log
from experiment.outputs.atomic import OwnedPaths, write_text
from experiment.outputs.derive import derive_run
from experiment.outputs.rundir import RunId, is_attempt_dir
from experiment.outputs.writer import LOG_NAME, data_root_of, load_run, run_id_of, run_uid
from experiment.outputs.filelock import locked
from experiment.outputs.jsonio import JsonObject, JsonValue, dumps, load_object, loads, obj, text

ANNOTATIONS_NAME = "annotations.jsonl"
ANNOTATION_FORMAT = "cuedpain-annotation/1"
KINDS = ("discarded", "restored")
MAX_REASON_CHARS = 500
SCANS_LOCK = Path("sourcedata") / ".scans.lock"
MISSING = "n/a"
SCAN_COLUMNS = ("acq_time", "run_status", "discarded", "discard_reason")
SCAN_DESCRIPTIONS: JsonObject = {
    "acq_time": {"Description": "When the run started (the run log's start_wall, local time of the stimulus "
                                "computer)."},
    "run_status": {"Description": "How the run ended, from its log (cuedpain).",
                   "Levels": {"completed": "the run ended as planned",
                              "aborted": "the run was stopped (operator, participant, safety interlock, device); "
                                         "see RunStatusDescription in the events sidecar",
                              "incomplete": "the log ends without an end record (killed or crashed)"}},
    "discarded": {"Description": "Whether the run was marked discarded (cuedpain discard): leave it out of the "
                                 "analysis.",
                  "Levels": {"true": "discarded, see discard_reason", "false": "not discarded"}},
    "discard_reason": {"Description": "Why the run was discarded, as the operator wrote it; n/a when it is not."},
}


@dataclass(frozen=True)
class Annotation:
    """One discard or restore line."""

    kind: str                 # discarded | restored
    reason: str
    by: str
    at: str                   # ISO 8601 with offset
    line: int


@dataclass(frozen=True)
class DiscardState:
    """A run's state from its annotations: the last discard or restore line wins."""

    discarded: bool = False
    reason: str | None = None
    by: str | None = None
    at: str | None = None
    history: tuple[Annotation, ...] = ()


# ---------------------------------------------------------------- pure

def check_reason(reason: str | None) -> str:
    """The reason on one line; InputError when there is none or it is too long."""
    clean = " ".join((reason or "").split())
    if not clean:
        raise InputError("--reason is required: say why (it is recorded with the run and in scans.tsv)")
    if len(clean) > MAX_REASON_CHARS:
        raise InputError(f"--reason is {len(clean)} characters; at most {MAX_REASON_CHARS}")
    return clean


def annotation_record(kind: str, *, reason: str, by: str, at: str, run_uid: str, stem: str) -> JsonObject:
    """One annotations.jsonl line as a JSON object (`kind`: discarded or restored)."""
    if kind not in KINDS:
        raise ValueError(f"annotation kind {kind!r} is not one of {KINDS}")
    return {"format": ANNOTATION_FORMAT, "kind": kind, "run_uid": run_uid, "stem": stem, "reason": reason,
            "by": by, "at": at, "software": {"name": "cuedpain", "version": __version__}}


def parse_annotations(content: str, *, source: str, run_uid: str) -> tuple[tuple[Annotation, ...], tuple[str, ...]]:
    """The discard/restore lines of this run, and what was ignored and why."""
    out: list[Annotation] = []
    problems: list[str] = []
    lines = content.split("\n")
    torn = bool(lines) and lines[-1] != ""
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            rec = obj(loads(line))
        except ValueError:
            what = "is cut off (the writer was stopped mid-line)" if (torn and n == len(lines)) else "is not JSON"
            problems.append(f"{source}:{n}: {what}; ignored")
            continue
        if rec.get("format", ANNOTATION_FORMAT) != ANNOTATION_FORMAT or rec.get("kind") not in KINDS:
            problems.append(f"{source}:{n}: not a cuedpain discard/restore record; ignored")
            continue
        if rec.get("run_uid", run_uid) != run_uid:
            problems.append(f"{source}:{n}: about another run (run_uid {rec.get('run_uid')}, this log's is "
                            f"{run_uid}); ignored")
            continue
        out.append(Annotation(kind=str(rec["kind"]), reason=text(rec.get("reason")) or "",
                              by=text(rec.get("by")) or "unknown", at=text(rec.get("at")) or "", line=n))
    return tuple(out), tuple(problems)


def discard_state(annotations: Sequence[Annotation]) -> DiscardState:
    """Discarded or not, with the reason, from the last discard or restore line."""
    if not annotations:
        return DiscardState()
    last = annotations[-1]
    if last.kind == "discarded":
        return DiscardState(True, last.reason, last.by, last.at, tuple(annotations))
    return DiscardState(False, None, last.by, last.at, tuple(annotations))


@dataclass(frozen=True)
class ScanEntry:
    """One file of a run as scans.tsv lists it."""

    filename: str                  # relative to the session directory: func/<file>
    acq_time: str | None
    run_status: str
    discarded: bool
    discard_reason: str | None


@dataclass(frozen=True)
class TsvTable:
    columns: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]


def parse_tsv(content: str, source: str, *, first: str) -> TsvTable:
    """A BIDS TSV (header line, tab-separated); ValueError naming the line when it is not one."""
    lines = [ln.rstrip("\r") for ln in content.split("\n")]
    while lines and not lines[-1]:
        lines.pop()
    if not lines:
        return TsvTable(columns=(first,), rows=())
    columns = tuple(lines[0].split("\t"))
    if columns[0] != first:
        raise ValueError(f"{source}:1: the first column must be {first!r}, found {columns[0]!r}")
    rows = []
    for n, line in enumerate(lines[1:], start=2):
        cells = tuple(line.split("\t"))
        if len(cells) != len(columns):
            raise ValueError(f"{source}:{n}: {len(cells)} cells for {len(columns)} columns")
        rows.append(cells)
    return TsvTable(columns=columns, rows=tuple(rows))


def tsv_text(table: TsvTable) -> str:
    return "".join("\t".join(r) + "\n" for r in (table.columns, *table.rows))


def scans_table(existing: TsvTable | None, entries: Sequence[ScanEntry]) -> TsvTable:
    """scans.tsv with cuedpain's columns set for `entries`; other rows and columns kept as they are."""
    base = existing or TsvTable(columns=("filename",), rows=())
    columns = list(base.columns) + [c for c in SCAN_COLUMNS if c not in base.columns]
    rows: dict[str, dict[str, str]] = {r[0]: dict(zip(base.columns, r)) for r in base.rows}
    for e in entries:
        cells = rows.setdefault(e.filename, {"filename": e.filename})
        if e.acq_time and cells.get("acq_time", MISSING) == MISSING:
            cells["acq_time"] = e.acq_time
        cells.update(run_status=e.run_status, discarded="true" if e.discarded else "false",
                     discard_reason=e.discard_reason if e.discarded and e.discard_reason else MISSING)
    ordered = sorted(rows)
    return TsvTable(columns=tuple(columns),
                    rows=tuple(tuple(rows[f].get(c, MISSING) for c in columns) for f in ordered))


def scans_sidecar(existing: Mapping[str, JsonValue] | None) -> JsonObject:
    """The scans.json: the existing entries kept, cuedpain's columns described."""
    out: JsonObject = {k: v for k, v in (existing or {}).items() if k not in SCAN_DESCRIPTIONS}
    out.update(SCAN_DESCRIPTIONS)
    return out


def acq_time(start_wall: object) -> str | None:
    """BIDS acq_time (YYYY-MM-DDThh:mm:ss, local time) from the log's ISO start time."""
    if not isinstance(start_wall, str):
        return None
    try:
        return datetime.fromisoformat(start_wall).strftime("%Y-%m-%dT%H:%M:%S")
    except ValueError:
        return None


# ---------------------------------------------------------------- shell

def read_discard(run_dir: Path, uid: str) -> tuple[DiscardState, tuple[str, ...]]:
    """The run's discard state from its annotations.jsonl (none: not discarded), and problems."""
    path = Path(run_dir) / ANNOTATIONS_NAME
    if not path.exists():
        return DiscardState(), ()
    try:
        content = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        return DiscardState(), (f"{path}: cannot be read ({exc}); the run is shown as not discarded",)
    annotations, problems = parse_annotations(content, source=str(path), run_uid=uid)
    return discard_state(annotations), problems


def _session_paths(root: Path, rid: RunId) -> tuple[Path, Path]:
    ses = f"_ses-{rid.session}" if rid.session else ""
    d = rid.subject_dir(root)
    stem = f"sub-{rid.participant}{ses}_scans"
    return d / f"{stem}.tsv", d / f"{stem}.json"


def _session_runs(root: Path, rid: RunId) -> list[Path]:
    """The run directories of rid's participant and session (attempts and calibrations left out)."""
    parent = rid.source_dir(root).parent
    ses = f"_ses-{rid.session}" if rid.session else ""
    pattern = re.compile(rf"^sub-{re.escape(rid.participant)}{re.escape(ses)}_task-[A-Za-z0-9]+_run-\d+$")
    return sorted(d for d in parent.iterdir() if d.is_dir() and pattern.match(d.name) and (d / LOG_NAME).is_file())


def _entries(root: Path, run_dir: Path) -> list[ScanEntry]:
    log = read_log(run_dir / LOG_NAME)
    rid = run_id_of(log.header)
    state, _ = read_discard(run_dir, run_uid(log.header))
    status = derive_run(log, None).status.status
    func = rid.func_dir(root)
    files = sorted(p for p in func.glob(f"{rid.stem}_*") if p.is_file() and not p.name.endswith(".json")) \
        if func.is_dir() else []
    return [ScanEntry(filename=f"func/{p.name}", acq_time=acq_time(log.header.get("start_wall")), run_status=status,
                      discarded=state.discarded, discard_reason=state.reason) for p in files]


def _read_scans(tsv: Path, js: Path) -> tuple[TsvTable | None, JsonObject | None]:
    table = doc = None
    try:
        if tsv.exists():
            table = parse_tsv(tsv.read_text(encoding="utf-8"), str(tsv), first="filename")
        if js.exists():
            doc = load_object(js)
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise InputError(f"the session's scans file cannot be read ({exc}); repair it, then try again (nothing was "
                         f"recorded)") from None
    return table, doc


def write_session_scans(root: Path, rid: RunId) -> Path | None:
    """Write the session's scans.tsv and scans.json again from its runs; None when it has no BIDS file yet."""
    tsv, js = _session_paths(root, rid)
    with locked(Path(root) / SCANS_LOCK):
        table, doc = _read_scans(tsv, js)
        entries = [e for d in _session_runs(root, rid) for e in _entries(root, d)]
        if not entries and table is None:
            return None
        write_text(js, dumps(scans_sidecar(doc)), owned=OwnedPaths.of([js]))
        write_text(tsv, tsv_text(scans_table(table, entries)), owned=OwnedPaths.of([tsv]))
    return tsv


@dataclass(frozen=True)
class DiscardOutcome:
    """What `discard_run` or `restore_run` did."""

    run_dir: Path
    stem: str
    state: DiscardState
    annotations: Path
    scans_tsv: Path | None        # None: the run has no BIDS files yet (nothing to list)
    was_discarded: bool


def _annotate(run_dir: Path, kind: str, reason: str | None, *, by: str | None, now: datetime | None) -> DiscardOutcome:
    run_dir = Path(run_dir)
    clean = check_reason(reason)
    if is_attempt_dir(run_dir):
        raise InputError(f"{run_dir} is an attempt that never reached the first stored volume: it has no BIDS files "
                         f"and takes no run number, so it cannot be {kind}")
    log, _ = load_run(run_dir)
    rid = run_id_of(log.header)
    root = data_root_of(run_dir)
    if rid.source_dir(root).resolve() != run_dir.resolve():
        raise InputError(f"{run_dir} holds the log of {rid.stem}, whose directory would be {rid.source_dir(root)}; "
                         f"refusing to annotate a moved run")
    uid = run_uid(log.header)
    before, _ = read_discard(run_dir, uid)
    if kind == "restored" and not before.discarded:
        raise InputError(f"{rid.stem} is not discarded; nothing to take back")
    tsv, js = _session_paths(root, rid)
    _read_scans(tsv, js)  # refuse before recording anything when the session's scans file is broken
    who = by if by and by.strip() else _user()
    at = (now or datetime.now().astimezone()).isoformat(timespec="seconds")
    record = annotation_record(kind, reason=clean, by=" ".join(who.split()), at=at, run_uid=uid, stem=rid.stem)
    _append_line(run_dir / ANNOTATIONS_NAME, dumps_line(record))
    state, _ = read_discard(run_dir, uid)
    return DiscardOutcome(run_dir=run_dir, stem=rid.stem, state=state, annotations=run_dir / ANNOTATIONS_NAME,
                          scans_tsv=write_session_scans(root, rid), was_discarded=before.discarded)


def discard_run(run_dir: Path, reason: str | None, *, by: str | None = None,
                now: datetime | None = None) -> DiscardOutcome:
    """Mark the run in `run_dir` discarded (again, with a new reason, if it already is)."""
    return _annotate(run_dir, "discarded", reason, by=by, now=now)


def restore_run(run_dir: Path, reason: str | None, *, by: str | None = None,
                now: datetime | None = None) -> DiscardOutcome:
    """Take a discard back (the run counts again); InputError when it is not discarded."""
    return _annotate(run_dir, "restored", reason, by=by, now=now)


def dumps_line(record: JsonObject) -> str:
    """One record as one line (no indentation)."""
    return json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n"


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001 - no login name (a service account): say so rather than fail
        return "unknown"


def _append_line(path: Path, line: str) -> None:
    """Append one line and sync it (after a newline if a torn last line is there)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | getattr(os, "O_BINARY", 0), 0o666)
    try:
        size = os.fstat(fd).st_size
        prefix = b""
        if size:
            with open(path, "rb") as fh:
                fh.seek(size - 1)
                prefix = b"" if fh.read(1) == b"\n" else b"\n"
        os.write(fd, prefix + line.encode("utf-8"))
        os.fsync(fd)
    finally:
        os.close(fd)
