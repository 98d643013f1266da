"""provenance.json: what produced a run and how it ended (builder pure, hashing in `file_record`).

Mostly the log's header and end record: participant/session/run, seed, protocol file
and its hash (checked against the copy kept next to the log), the pressure and where it
came from, what the operator was shown and how it was confirmed, package versions,
operating system, display, the project's version and revision, dry-run flag, start
and end time, exit status (completed, aborted with its reason, or incomplete when the
log has no end record) and where the run stopped.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict
from pathlib import Path
from typing import Any, Mapping, Sequence

from experiment.outputs.bids import not_measured_text
from experiment.outputs.derive import RunData, timing_quality

PROVENANCE_FORMAT = "cuedpain-provenance/1"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def file_record(path: Path, *, relative_to: Path) -> dict[str, Any] | None:
    """Path (relative), size and sha256 of a file, or None if it does not exist."""
    path, base = Path(path).resolve(), Path(relative_to).resolve()
    if not path.is_file():
        return None
    return {"path": str(path.relative_to(base)) if path.is_relative_to(base) else str(path),
            "bytes": path.stat().st_size, "sha256": sha256_file(path)}


def _strip(rec: Mapping[str, Any] | None) -> dict[str, Any] | None:
    return None if rec is None else {k: v for k, v in rec.items() if k not in ("seq", "kind")}


def provenance(data: RunData, *, run_uid: str, protocol_copy: Mapping[str, Any] | None,
               rig_copy: Mapping[str, Any] | None, logs: Sequence[Mapping[str, Any]],
               outputs: Sequence[Mapping[str, Any]], notes: Sequence[str]) -> dict[str, Any]:
    """The provenance document (plain JSON types only)."""
    h, st = data.header, data.status
    end = _strip(data.end)
    protocol_sha = h.get("protocol_sha256")
    copy_sha = protocol_copy.get("sha256") if protocol_copy else None
    return {
        "format": PROVENANCE_FORMAT,
        "run_uid": run_uid,
        "participant": h.get("participant"), "session": h.get("session"), "run": h.get("run"),
        "task": h.get("task"), "protocol_name": h.get("protocol_name"), "seed": h.get("seed"),
        "dry_run": bool(h.get("dry_run")), "headless": bool(h.get("headless")),
        "exit_status": st.status, "exit_reason": st.reason, "exit_code": st.exit_code,
        "status_summary": st.summary(),
        "stopped": {"at_s_after_t0": st.stopped_at_s,
                    "last_phase_started": _where(st.last_started),
                    "last_phase_completed": _where(st.last_completed_phase),
                    "last_trial_completed": st.last_completed_trial, "trials_planned": st.n_trials_planned},
        "log_truncated": st.truncated, "log_problems": list(st.problems),
        "start_wall": h.get("start_wall"), "end_wall": (end or {}).get("end_wall"), "end_record": end,
        "clock": h.get("clock"), "t0_clock_s": data.t0,
        "protocol": {"path": h.get("protocol_path"), "sha256": protocol_sha, "copy": protocol_copy,
                     "copy_matches": (copy_sha == protocol_sha) if (copy_sha and protocol_sha) else None},
        "rig": {"path": h.get("rig_path"), "copy": rig_copy},
        "software": h.get("software"), "python": h.get("python"), "packages": h.get("packages"),
        "operating_system": h.get("platform"),
        "display": _strip(data.display),
        "timing_test": h.get("timing_test"),   # the newest timing test of the dataset root when the run began
        "cuff": h.get("cuff"), "device": _strip(data.device), "scanner": h.get("scanner"),
        "pressure_measured": not_measured_text(h) is None, "pressure_not_measured_why": not_measured_text(h),
        "pressure": h.get("pressure"), "cue_mapping": h.get("cue_mapping"),
        "briefing": h.get("briefing"), "confirmation": h.get("confirmation"),
        "scan": {"tr_s": h.get("tr_s"), "n_volumes": h.get("n_volumes"), "discard_pulses": h.get("discard_pulses"),
                 "scanner_discarded": h.get("scanner_discarded")},
        "timing": asdict(timing_quality(data)),
        "logs": list(logs),
        "outputs": list(outputs),
        "notes": list(data.notes) + list(notes),
    }


def _where(pos: tuple[int, str] | None) -> dict[str, Any] | None:
    return None if pos is None else {"trial": pos[0], "phase": pos[1]}
