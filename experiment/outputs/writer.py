"""The one entry point that turns a run directory's logs into every derived file.

`write_run_outputs(run_dir, data_root=...)` is called by the runner at the end of a run
and by `cuedpain rebuild` after a crash. It reads `log.jsonl` (and `pressure.jsonl`),
derives the tables (experiment.outputs.derive) and writes, each file atomically:
BIDS events/stim files and dataset-level files, trials.csv, pulses.tsv, the run's bold
sidecar values, the analysis exports and provenance.json. It never writes the raw files
and never replaces another run's files. Layout: docs/outputs.md.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from experiment.errors import InputError
from experiment.log.eventlog import LogContents, read_log
from experiment.outputs.atomic import OwnedPaths, write_bytes, write_text
from experiment.outputs.bids import BidsPaths, json_bytes, task_sidecar, write_bids
from experiment.outputs.derive import RunData, RunStatus, derive_run, timing_quality
from experiment.outputs.exports import ExportPaths, write_exports
from experiment.outputs.participants import list_subject
from experiment.outputs.provenance import file_record, provenance
from experiment.outputs.tables import csv_text, tsv_text
from experiment.outputs.rundir import RunId, is_attempt_dir

LOG_NAME = "log.jsonl"
PRESSURE_NAME = "pressure.jsonl"
RAW_NAMES = (LOG_NAME, PRESSURE_NAME, "protocol.yaml", "rig.yaml", "crash.txt")
PULSE_COLUMNS = ("index", "volume", "t", "onset", "interval", "missed_before", "source")


@dataclass(frozen=True)
class OutputPaths:
    """What was written, and the status line the runner shows."""

    run_dir: Path
    data_root: Path
    status: RunStatus
    timing_summary: str
    events_tsv: Path | None
    events_json: Path | None
    stim_tsv: Path | None
    stim_json: Path | None
    dataset_description: Path
    task_sidecar: Path
    bold_sidecar: Path
    trials_csv: Path
    pulses_tsv: Path
    provenance: Path
    exports: ExportPaths
    notes: tuple[str, ...]


def load_run(run_dir: Path) -> tuple[LogContents, LogContents | None]:
    """Read a run directory's logs; InputError (exit 2) when there is no valid event log."""
    run_dir = Path(run_dir)
    log_path = run_dir / LOG_NAME
    if not run_dir.is_dir():
        raise InputError(f"{run_dir} is not a directory; give a run directory under <data>/sourcedata/")
    if not log_path.is_file():
        raise InputError(f"{run_dir} has no event log ({LOG_NAME}); nothing to derive outputs from")
    try:
        log = read_log(log_path)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InputError(f"{log_path} is not a valid cuedpain event log: {exc}") from None
    pressure = None
    if (run_dir / PRESSURE_NAME).is_file():
        try:
            pressure = read_log(run_dir / PRESSURE_NAME)
        except (ValueError, UnicodeDecodeError) as exc:
            raise InputError(f"{run_dir / PRESSURE_NAME} is not a valid cuedpain log: {exc}") from None
    return log, pressure


def run_id_of(header: Mapping[str, Any]) -> RunId:
    try:
        return RunId(str(header["participant"]), header.get("session") or None, str(header["task"]),
                     int(header["run"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise InputError(f"the log header lacks the run's identity ({exc})") from None


def run_uid(header: Mapping[str, Any]) -> str:
    """A run's identity: hash of its log header (which includes the start time)."""
    canonical = json.dumps(header, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]


def data_root_of(run_dir: Path) -> Path:
    """<data> for a run directory <data>/sourcedata/sub-X/[ses-Y/]<stem>."""
    for parent in Path(run_dir).resolve().parents:
        if parent.name == "sourcedata":
            return parent.parent
    raise InputError(f"{run_dir} is not inside a 'sourcedata' directory of a BIDS dataset root")


def owned_paths(run_dir: Path, bids: BidsPaths | None = None) -> OwnedPaths:
    """A run may replace its own BIDS files and derived files in its run directory, nothing else."""
    return OwnedPaths.of(bids.run_files() if bids else (), dirs=(Path(run_dir),),
                         protected=tuple(Path(run_dir) / n for n in RAW_NAMES))


def pulses_tsv_text(data: RunData) -> str:
    rows = [(p.index, p.volume, p.t, p.onset_s, p.interval_s, p.missed_before, p.source) for p in data.pulses]
    return tsv_text(PULSE_COLUMNS, rows, decimals={"t": 6})


def trials_csv_text(data: RunData) -> str:
    dry = bool(data.header.get("dry_run"))
    index = (data.header.get("cue_mapping") or {}).get("index")
    mapping = None if index is None else int(index) + 1     # 1-based, as the protocol lists them
    return csv_text((*data.trials.columns, "cue_mapping", "dry_run"), [(*r, mapping, dry) for r in data.trials.rows],
                    decimals={"target_pressure_kpa": 3, "plateau_pressure_kpa": 3, "peak_pressure_kpa": 3,
                              **{c.rating: 2 for c in data.rating_columns}})


def write_run_outputs(run_dir: Path, *, data_root: Path, rate_hz: float = 20.0) -> OutputPaths:
    """Derive and write every output of the run in `run_dir` (see module docstring)."""
    run_dir = Path(run_dir)
    log, pressure = load_run(run_dir)
    rid = run_id_of(log.header)
    attempt = is_attempt_dir(run_dir)
    if not attempt and rid.source_dir(data_root).resolve() != run_dir.resolve():
        raise InputError(f"{run_dir} holds the log of {rid.stem}, whose directory under {data_root} would be "
                         f"{rid.source_dir(data_root)}; refusing to write outputs for a moved run")
    data = derive_run(log, pressure, rate_hz=rate_hz)
    uid = run_uid(log.header)
    bids = BidsPaths.of(rid, data_root)
    owned = owned_paths(run_dir, None if attempt else bids)
    source_log = str((run_dir / LOG_NAME).resolve().relative_to(Path(data_root).resolve()))
    if attempt:   # it never reached the scan: nothing for the BIDS dataset, and no run number taken
        bids_written: list[Path] = []
        notes = ["an attempt that ended before the first stored volume: no BIDS files; its run number stays free"]
    else:
        _, bids_written, notes = write_bids(data, rid, data_root=data_root, run_uid=uid, source_log=source_log,
                                            owned=owned)
        unlisted = list_subject(Path(data_root), rid.participant)
        notes = [*notes, unlisted] if unlisted else notes
    written = list(bids_written)
    bold = write_bytes(run_dir / f"{rid.stem}_bold.json", json_bytes(task_sidecar(log.header)), owned=owned)
    trials = write_text(run_dir / "trials.csv", trials_csv_text(data), owned=owned)
    pulses = write_text(run_dir / "pulses.tsv", pulses_tsv_text(data), owned=owned)
    exports, export_notes = write_exports(data, run_dir, stem=rid.stem, owned=owned)
    written += [bold, trials, pulses, *exports.all()]
    root = Path(data_root)
    prov = provenance(
        data, run_uid=uid, protocol_copy=file_record(run_dir / "protocol.yaml", relative_to=root),
        rig_copy=file_record(run_dir / "rig.yaml", relative_to=root),
        logs=[r for r in (file_record(run_dir / n, relative_to=root) for n in (LOG_NAME, PRESSURE_NAME)) if r],
        outputs=[r for r in (file_record(p, relative_to=root) for p in written) if r],
        notes=notes + export_notes)
    prov_path = write_bytes(run_dir / "provenance.json", json_bytes(prov), owned=owned)
    wrote = set(bids_written)
    return OutputPaths(
        run_dir=run_dir, data_root=root, status=data.status, timing_summary=timing_quality(data).summary(),
        events_tsv=bids.events_tsv if bids.events_tsv in wrote else None,
        events_json=bids.events_json if bids.events_json in wrote else None,
        stim_tsv=bids.stim_tsv if bids.stim_tsv in wrote else None,
        stim_json=bids.stim_json if bids.stim_json in wrote else None,
        dataset_description=bids.dataset_description, task_sidecar=bids.task_sidecar, bold_sidecar=bold,
        trials_csv=trials, pulses_tsv=pulses, provenance=prov_path, exports=exports,
        notes=tuple(data.notes) + tuple(notes) + tuple(export_notes))
