"""Read a dataset root into a `Study`: participants, runs, attempts, calibrations, problems.

Reads only the BIDS files (participants.tsv/json, the task sidecars, each run's
events.tsv/json) and the raw logs under `sourcedata/` (run logs, calibration results and
logs, discard annotations); never the derived files in run directories (trials.csv,
provenance.json, report.html) and never writes anything. A run is derived from its log by
`experiment.outputs.derive` without its pressure log (fast); the measured pressures come
from its events.tsv when that file was written from this very log (its events.json names
the log's RunUID), otherwise from the pressure log, derived again. What cannot be read (a
missing sidecar, a cut-off log, a file cuedpain did not write) becomes a `Problem` on the
page; reading goes on.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Mapping

from experiment.errors import InputError
from experiment.log.eventlog import LogContents, read_log
from experiment.outputs.bids import BidsPaths
from experiment.outputs.dataset import root_holds
from experiment.outputs.derive import RunData, derive_run
from experiment.outputs.rundir import ATTEMPTS, RunId
from experiment.outputs.writer import LOG_NAME, PRESSURE_NAME, run_id_of, run_uid
from experiment.procedures.calibration.results import read_calibration
from experiment.protocol.model import parse_protocol
from experiment.outputs.annotations import ANNOTATIONS_NAME, DiscardState, read_discard
from experiment.outputs.jsonio import JsonValue, load_object, number, obj, text
from experiment.study.model import (AttemptRecord, CalibrationRecord, Limits, ParticipantRecord, Problem, RunRecord,
                                    Study)
from experiment.outputs.participants import MISSING, read_participants, subjects_with_data
from experiment.study.plans import PlanReader, no_plans
from experiment.study.qc import PressureRow, ratings_of, run_flags, stimuli_of, timing_of

RUN_NAME = re.compile(r"^sub-(?P<p>[A-Za-z0-9]+)(?:_ses-(?P<s>[A-Za-z0-9]+))?_task-(?P<t>[A-Za-z0-9]+)"
                      r"_run-(?P<r>\d+)$")
CAL_RESULT = re.compile(r"^sub-(?P<p>[A-Za-z0-9]+)_calibration-(?P<n>\d+)\.json$")
CAL_LOG = re.compile(r"^sub-(?P<p>[A-Za-z0-9]+)_calibration-(?P<n>\d+)_(?P<k>log|pressure)\.jsonl$")
SESSION = re.compile(r"^ses-[A-Za-z0-9]+$")
#: files of a run directory that the runner and the writers put there (anything else is named as foreign)
RUN_FILES = frozenset({LOG_NAME, PRESSURE_NAME, "protocol.yaml", "rig.yaml", "crash.txt", "trials.csv", "pulses.tsv",
                       "provenance.json", "report.html", "exports", ANNOTATIONS_NAME})
ROOT_FILES = frozenset({"dataset_description.json", "participants.tsv", "participants.json", "README", "README.md",
                        "README.txt", "README.rst", "CHANGES", "LICENSE", "sourcedata", "derivatives", "code",
                        "stimuli", "phenotype", ".bidsignore"})
STIMULATING_CUFF = ("inflate", "hold")


@dataclass
class _Context:
    """Caches for one reading (protocol limits by content, task sidecars) and the problems found."""

    root: Path
    problems: list[Problem] = field(default_factory=list)
    limits: dict[str, tuple[Limits, str | None]] = field(default_factory=dict)
    sidecar_tr: dict[str, float | None] = field(default_factory=dict)

    def rel(self, path: Path) -> str:
        try:
            return str(Path(path).relative_to(self.root))
        except ValueError:
            return str(path)

    def problem(self, path: Path, what: str) -> None:
        self.problems.append(Problem(self.rel(path), what))


# ---------------------------------------------------------------- pieces of a run

def _protocol_limits(ctx: _Context, run_dir: Path) -> Limits:
    path = run_dir / "protocol.yaml"
    try:
        raw = path.read_bytes()
    except OSError:
        ctx.problem(path, "missing: the run's copy of its protocol; inflation limits unknown")
        return Limits(None, None, None)
    key = hashlib.sha256(raw).hexdigest()
    if key not in ctx.limits:
        try:
            p = parse_protocol(raw.decode("utf-8-sig"), file=str(path), base_dir=run_dir)
            ctx.limits[key] = (Limits(p.safety.max_inflation_per_stimulus_s, p.safety.max_cumulative_inflation_per_run_s,
                                      p.safety.compliance_margin_kpa), None)
        except (InputError, UnicodeDecodeError) as exc:
            what = exc.message if isinstance(exc, InputError) else str(exc)
            ctx.limits[key] = (Limits(None, None, None), f"cannot be read as a protocol ({what}); inflation limits "
                                                         f"unknown")
    limits, problem = ctx.limits[key]
    if problem:
        ctx.problem(path, problem)
    return limits


def _sidecar_tr(ctx: _Context, task: str) -> float | None:
    if task not in ctx.sidecar_tr:
        path = ctx.root / f"task-{task}_bold.json"
        tr = None
        if not path.exists():
            ctx.problem(path, "missing: the task's bold sidecar (RepetitionTime); a run of the task writes it")
        else:
            try:
                tr = number(load_object(path).get("RepetitionTime"))
                if tr is None:
                    ctx.problem(path, "has no RepetitionTime")
            except (OSError, ValueError) as exc:
                ctx.problem(path, f"cannot be read ({exc})")
        ctx.sidecar_tr[task] = tr
    return ctx.sidecar_tr[task]


def _cell(value: str) -> float | None:
    if value in ("", MISSING):
        return None
    try:
        return float(value)
    except ValueError:
        return None


def parse_events_pressure(content: str) -> tuple[PressureRow, ...]:
    """The pressure columns of events.tsv (pure); ValueError when the file lacks them."""
    lines = [ln for ln in content.split("\n") if ln]
    if not lines:
        raise ValueError("empty file")
    columns = lines[0].split("\t")
    need = ("trial", "cuff", "target_pressure_kpa", "measured_pressure_kpa", "peak_pressure_kpa")
    missing = [c for c in need if c not in columns]
    if missing:
        raise ValueError(f"no column(s) {', '.join(missing)}: not written by cuedpain")
    k = {c: columns.index(c) for c in need}
    rows = []
    for n, line in enumerate(lines[1:], start=2):
        cells = line.split("\t")
        if len(cells) != len(columns):
            raise ValueError(f"line {n} has {len(cells)} cells for {len(columns)} columns")
        trial = _cell(cells[k["trial"]])
        rows.append(PressureRow(trial=int(trial) if trial is not None else 0, cuff=cells[k["cuff"]],
                                target_kpa=_cell(cells[k["target_pressure_kpa"]]),
                                measured_kpa=_cell(cells[k["measured_pressure_kpa"]]),
                                peak_kpa=_cell(cells[k["peak_pressure_kpa"]])))
    return tuple(rows)


def _pressure_rows(ctx: _Context, run_dir: Path, rid: RunId, uid: str, log: LogContents,
                   status: str) -> tuple[tuple[PressureRow, ...], str | None]:
    """The run's pressure rows from its events.tsv if written from this log, else derived from its pressure log.

    Returns the rows and what is wrong with the BIDS files (None: nothing)."""
    paths = BidsPaths.of(rid, ctx.root)
    problem: str | None = None
    if not paths.events_json.exists():
        problem = ("no BIDS events files: the outputs were never derived (killed before the end?); "
                   "`cuedpain rebuild RUN_DIR` derives them" if status != "unreadable" else "no BIDS events files")
    else:
        try:
            sidecar = load_object(paths.events_json)
            owner = text(obj(sidecar.get("CuedpainRun")).get("RunUID"))
            if owner != uid:
                problem = (f"{paths.events_json.name} was written from another log (RunUID {owner}, this log's is {uid}): "
                           f"not this run's events")
            else:
                return parse_events_pressure(paths.events_tsv.read_text(encoding="utf-8")), None
        except (OSError, ValueError, UnicodeDecodeError) as exc:
            problem = f"{paths.events_json.name} or its events.tsv cannot be read ({exc})"
    ctx.problem(paths.events_json if paths.events_json.exists() else run_dir, problem)
    pressure = None
    if (run_dir / PRESSURE_NAME).is_file():
        try:
            pressure = read_log(run_dir / PRESSURE_NAME)
        except (ValueError, UnicodeDecodeError) as exc:
            ctx.problem(run_dir / PRESSURE_NAME, f"not a cuedpain log ({exc}); measured pressures unknown")
    if pressure is None:
        return (), problem
    data = derive_run(log, pressure)
    return tuple(PressureRow.of(e) for e in data.events), problem


def _unreadable(ctx: _Context, run_dir: Path, m: re.Match[str] | None, what: str) -> RunRecord:
    ctx.problem(run_dir, what)
    return RunRecord(participant=m.group("p") if m else "?", session=m.group("s") if m else None,
                     task=m.group("t") if m else "?", run=int(m.group("r")) if m else None, stem=run_dir.name,
                     run_dir=ctx.rel(run_dir), status="unreadable", status_text=what, reason=what,
                     discard=DiscardState())


def read_run(ctx: _Context, run_dir: Path) -> RunRecord:
    """One run directory as a RunRecord (status `unreadable` with the reason when its log cannot be read)."""
    m = RUN_NAME.match(run_dir.name)
    try:
        log = read_log(run_dir / LOG_NAME)
        rid = run_id_of(log.header)
    except FileNotFoundError:
        return _unreadable(ctx, run_dir, m, f"no {LOG_NAME}: not a run directory cuedpain wrote, or its log was lost")
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        return _unreadable(ctx, run_dir, m, f"{LOG_NAME} is not a cuedpain run log ({exc})")
    except InputError as exc:
        return _unreadable(ctx, run_dir, m, f"{LOG_NAME}: {exc.message}")
    if rid.stem != run_dir.name:
        ctx.problem(run_dir, f"the directory's name does not match its log, which is {rid.stem}'s (moved or renamed?)")
    for p in sorted(run_dir.iterdir()):
        if p.name not in RUN_FILES and not (p.name.endswith("_bold.json") and p.name.startswith(rid.stem)):
            ctx.problem(p, "not a file cuedpain writes in a run directory; ignored")
    uid = run_uid(log.header)
    data: RunData = derive_run(log, None)
    st = data.status
    if st.truncated:
        ctx.problem(run_dir / LOG_NAME, "the last line is cut off (the program was killed while writing); "
                                        "read up to the line before")
    for problem in st.problems:
        ctx.problem(run_dir / LOG_NAME, problem)
    timing = timing_of(data, tr_sidecar_s=_sidecar_tr(ctx, rid.task)) if data.t0 is not None else None
    limits = _protocol_limits(ctx, run_dir)
    rows, bids_problem = _pressure_rows(ctx, run_dir, rid, uid, log, st.status) if data.t0 is not None else ((), None)
    stimuli = stimuli_of(data, rows, log.of_kind("cuff_cmd"))
    discard, annotation_problems = read_discard(run_dir, uid)
    for problem in annotation_problems:
        ctx.problems.append(Problem(ctx.rel(run_dir / ANNOTATIONS_NAME), problem.split(": ", 1)[-1]))
    h = log.header
    pressure = obj(h.get("pressure"))
    source = text(pressure.get("source"))
    note = text(pressure.get("reason")) if source == "override" else text(pressure.get("calibration_file"))
    if note and source == "calibration":
        note = Path(note).name
    return RunRecord(
        participant=rid.participant, session=rid.session, task=rid.task, run=rid.run, stem=rid.stem,
        run_dir=ctx.rel(run_dir), status=st.status, status_text=st.summary(), reason=st.reason, discard=discard,
        dry_run=h.get("dry_run") if isinstance(h.get("dry_run"), bool) else None,
        start_wall=text(h.get("start_wall")), protocol=text(h.get("protocol_name")) or text(h.get("protocol_path")),
        pressure_levels=_pressure_levels(pressure), pressure_source=source, pressure_note=note, timing=timing,
        limits=limits, stimuli=stimuli, ratings=ratings_of(data),
        flags=run_flags(timing, stimuli, limits, status=st.status, log_cut=st.truncated, bids_problem=bids_problem))


def _pressure_levels(pressure: Mapping[str, JsonValue]) -> tuple[tuple[str, float], ...]:
    """(level, kPa) of each pressure level in a run's header (`pressure.levels`); a log written
    before levels existed has one pressure, read as the level `target`."""
    out: list[tuple[str, float]] = []
    for name, lv in obj(pressure.get("levels")).items():
        if (kpa := number(obj(lv).get("pressure_kpa"))) is not None:
            out.append((name, kpa))
    if not out and (kpa := number(pressure.get("pressure_kpa"))) is not None:
        out.append(("target", kpa))
    return tuple(out)


# ---------------------------------------------------------------- calibrations and attempts

def read_calibrations(ctx: _Context, cal_dir: Path, participant: str) -> list[CalibrationRecord]:
    """Result files, and logs of attempts that ended without a result."""
    out: list[CalibrationRecord] = []
    results: set[int] = set()
    logs: dict[int, Path] = {}
    for p in sorted(cal_dir.iterdir()):
        m, lm = CAL_RESULT.match(p.name), CAL_LOG.match(p.name)
        if m and m.group("p") == participant:
            n = int(m.group("n"))
            results.add(n)
            try:
                cal = read_calibration(p)
            except InputError as exc:
                ctx.problem(p, exc.message.replace(f"calibration file {p} ", ""))
                out.append(CalibrationRecord(participant, None, n, ctx.rel(p), "unreadable", exc.message))
                continue
            out.append(CalibrationRecord(
                participant=participant, session=cal.session, number=n, file=ctx.rel(p), status="result", detail=None,
                pressure_kpa=cal.pressure_kpa, method=cal.method, target_rating=cal.target_rating,
                ceiling_kpa=cal.ceiling_kpa, dry_run=cal.dry_run,
                created=None if cal.created is None else cal.created.isoformat(timespec="minutes")))
        elif lm and lm.group("p") == participant:
            if lm.group("k") == "log":
                logs[int(lm.group("n"))] = p
        else:
            ctx.problem(p, "not a calibration file cuedpain writes; ignored")
    for n, path in sorted(logs.items()):
        if n in results:
            continue
        try:
            log = read_log(path)
        except (OSError, ValueError, UnicodeDecodeError) as exc:
            ctx.problem(path, f"not a cuedpain log ({exc})")
            continue
        end = next(iter(log.of_kind("end")), None)
        why = "the log ends without an end record (killed?)" if end is None else \
            f"{end.get('reason') or 'ended'}: {end.get('message') or 'no result'}"
        out.append(CalibrationRecord(participant=participant, session=text(log.header.get("session")), number=n,
                                     file=ctx.rel(path), status="no result", detail=why,
                                     method=text(log.header.get("method")),
                                     ceiling_kpa=number(log.header.get("ceiling_kpa")),
                                     dry_run=log.header.get("dry_run") if isinstance(log.header.get("dry_run"), bool)
                                     else None))
    return sorted(out, key=lambda c: c.number)


def read_attempt(ctx: _Context, path: Path, participant: str, session: str | None) -> AttemptRecord:
    reason = None
    try:
        end = next(iter(read_log(path / LOG_NAME).of_kind("end")), None)
        reason = None if end is None else f"{end.get('reason')}: {end.get('message') or ''}".rstrip(": ")
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        ctx.problem(path, f"an attempt without a readable log ({exc})")
    return AttemptRecord(participant=participant, session=session, path=ctx.rel(path), reason=reason)


# ---------------------------------------------------------------- the root

def _subject_source(ctx: _Context, subject_dir: Path, runs: list[Path], cals: list[CalibrationRecord],
                    attempts: list[AttemptRecord]) -> None:
    participant = subject_dir.name[4:]

    def visit(d: Path, session: str | None) -> None:
        for p in sorted(d.iterdir()):
            m = RUN_NAME.match(p.name)
            if p.is_dir() and m and m.group("p") == participant and m.group("s") == session:
                runs.append(p)
            elif p.is_dir() and p.name == ATTEMPTS:
                attempts.extend(read_attempt(ctx, a, participant, session) for a in sorted(p.iterdir()) if a.is_dir())
            elif p.is_dir() and p.name == "calibration" and session is None:
                cals.extend(read_calibrations(ctx, p, participant))
            elif p.is_dir() and session is None and SESSION.match(p.name):
                visit(p, p.name[4:])
            elif p.is_dir() and p.name == "visits":
                continue   # the records of visits carried out from a visit plan (their reader: plans.py)
            else:
                ctx.problem(p, "not a run, session, calibration or attempts directory; ignored")

    visit(subject_dir, None)


def _check_bids_tree(ctx: _Context, stems: set[str]) -> None:
    """Name files in the BIDS tree that belong to no run log, and foreign entries at the root."""
    for p in sorted(ctx.root.iterdir()):
        if p.name.startswith(".") or p.name in ROOT_FILES or re.match(r"^task-[A-Za-z0-9]+_bold\.json$", p.name):
            continue
        if p.is_dir() and re.match(r"^sub-[A-Za-z0-9]+$", p.name):
            for f in sorted(p.glob("**/func/*")):
                stem = re.sub(r"_(events|recording-[A-Za-z0-9]+_stim|bold|physio|sbref)\..*$", "", f.name)
                if stem not in stems:
                    ctx.problem(f, "no run log in sourcedata/ for this file (not written by cuedpain, or its run "
                                   "directory is missing)")
            continue
        ctx.problem(p, "not part of a cuedpain dataset; ignored")


def read_study(root: Path, *, plan_reader: PlanReader = no_plans,
               now: Callable[[], datetime] = lambda: datetime.now().astimezone()) -> Study:
    """Everything in the dataset root, as a Study. InputError (exit 2) only when `root` is not a directory."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"{root} is not a directory; give a dataset root (the --data of the runs)")
    ctx = _Context(root=root)
    try:
        holds = root_holds(root)
    except InputError as exc:
        holds = None
        ctx.problems.append(Problem("sourcedata/cuedpain-dataset.json", exc.message))
    if not (root / "dataset_description.json").exists():
        ctx.problem(root / "dataset_description.json", "missing (a run writes it): not a BIDS dataset yet")
    files = read_participants(root)
    ctx.problems += [Problem(name, what) for name, what in files.problems]
    run_dirs: list[Path] = []
    cals: list[CalibrationRecord] = []
    attempts: list[AttemptRecord] = []
    source = root / "sourcedata"
    if source.is_dir():
        for d in sorted(source.iterdir()):
            if d.is_dir() and re.match(r"^sub-[A-Za-z0-9]+$", d.name):
                _subject_source(ctx, d, run_dirs, cals, attempts)
            elif d.name not in ("cuedpain-dataset.json", "rig-checks", "timing-tests", "station") and not d.name.startswith("."):
                ctx.problem(d, "not a participant's sourcedata; ignored")
    runs = tuple(read_run(ctx, d) for d in run_dirs)
    _check_bids_tree(ctx, {r.stem for r in runs})
    participants = _participants(files.table.columns if files.table else None,
                                 files.table.rows if files.table else (), subjects_with_data(root))
    unlisted = [p.participant_id for p in participants if not p.listed]
    if unlisted and files.table is not None:
        ctx.problem(root / "participants.tsv", f"no row for {', '.join(unlisted)} (the BIDS validator reports "
                                               f"PARTICIPANT_ID_MISMATCH); add them: cuedpain participants set ID "
                                               f"--field group=...")
    plans = plan_reader(root)
    ctx.problems += [Problem("(visit plans)", p) for p in plans.problems]
    return Study(root=str(root), read_at=now().isoformat(timespec="seconds"), holds_dry_runs=holds,
                 declaration=files.declaration, participants=participants, runs=runs, attempts=tuple(attempts),
                 calibrations=tuple(cals), plans=plans, problems=tuple(ctx.problems))


def _participants(columns: tuple[str, ...] | None, rows: tuple[tuple[str, ...], ...],
                  with_data: tuple[str, ...]) -> tuple[ParticipantRecord, ...]:
    listed = {r[0]: r for r in rows}
    out = [ParticipantRecord(participant_id=pid, fields=tuple(zip(columns[1:], r[1:])) if columns else (), listed=True)
           for pid, r in sorted(listed.items())]
    out += [ParticipantRecord(participant_id=pid, fields=(), listed=False) for pid in with_data if pid not in listed]
    return tuple(sorted(out, key=lambda p: p.participant_id))
