"""BIDS files of a run: events.tsv/json, the cuff pressure stim file, shared sidecars.

Content builders (`events_tsv_text`, `events_sidecar`, `stim_tsv_gz`, ...) are pure;
`write_bids` writes them through `experiment.outputs.atomic`. Per-run files are
replaced only by the run that made them (each events.json names its run); files shared
by the dataset (dataset_description.json, README, task-<label>_bold.json) are created
once and never replaced. Rules followed: docs/outputs.md and the BIDS notes in
the project's reference (onset/duration first, `n/a`, HED 8.4.0, gzip without name
and with mtime 0, no header in the stim file).
"""

from __future__ import annotations

import gzip
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from experiment.errors import InputError
from experiment.outputs.atomic import OwnedPaths, create_once, write_bytes, write_text
from experiment.outputs.derive import EventRow, PhaseTiming, PressureTrace, RunData
from experiment.outputs.tables import PRESSURE_DECIMALS, tsv_text
from experiment.outputs.rundir import RunId

BIDS_VERSION = "1.10.0"
HED_VERSION = "8.4.0"
PSYCHOPY_RRID = "RRID:SCR_006571"
STIM_COLUMNS = ("pressure_setpoint", "pressure_measured")
TIMING_KEYS = ("TaskName", "RepetitionTime", "NumberOfVolumesDiscardedByScanner", "NumberOfVolumesDiscardedByUser")

# (column, EventRow attribute, decimals); onset and duration must come first
EVENT_COLUMNS: tuple[tuple[str, str, int], ...] = (
    ("onset", "onset_s", 4), ("duration", "duration_s", 4), ("trial_type", "trial_type", 0),
    ("trial", "trial", 0), ("phase", "phase", 0), ("cue", "cue", 0), ("cuff", "cuff", 0),
    ("planned_onset", "planned_onset_s", 4), ("planned_duration", "planned_duration_s", 4),
    ("onset_error", "onset_error_s", 4), ("duration_source", "duration_source", 0),
    ("pressure_level", "pressure_level", 0),
    ("target_pressure_kpa", "target_pressure_kpa", PRESSURE_DECIMALS),
    ("measured_pressure_kpa", "measured_pressure_kpa", PRESSURE_DECIMALS),
    ("peak_pressure_kpa", "peak_pressure_kpa", PRESSURE_DECIMALS),
    ("rating", "rating", 2), ("response_time", "response_time_s", 4),
)

# HED 8.4.0 annotations (standard schema only; no pain library exists), built from what each
# phase does (its kind, cue and cuff), never from its name. Checked with bids-validator-deno.
_PAIN_HED = "Somatic-presentation, Tactile-presentation, (Pain, Tactile-pressure)"
# a level whose phase shows the rating scale (kind: rating) under another name, e.g. an expectation
RATING_SCALE_HED = "Sensory-event, Visual-presentation, Instructional, Participant-response"
CUFF_LEVELS = {"none": "cuff deflated, no command in this phase",
               "inflate": "cuff inflated to the target pressure at this phase's onset",
               "hold": "cuff held at the target pressure", "deflate": "cuff deflated at this phase's onset"}
DURATION_SOURCE_LEVELS = {
    "measured": "next phase's measured onset minus this onset",
    "planned": "planned duration (no later phase reached the screen)",
    "stopped": "cut at the moment the run stopped (aborted or killed during this phase)",
    "response": "rating without a modelled phase: from the scale's onset to the response",
}


@dataclass(frozen=True)
class BidsPaths:
    events_tsv: Path
    events_json: Path
    stim_tsv: Path
    stim_json: Path
    dataset_description: Path
    task_sidecar: Path
    readme: Path

    @classmethod
    def of(cls, rid: RunId, data_root: Path) -> "BidsPaths":
        func = rid.func_dir(data_root)
        root = Path(data_root)
        return cls(events_tsv=func / f"{rid.stem}_events.tsv", events_json=func / f"{rid.stem}_events.json",
                   stim_tsv=func / f"{rid.stem}_recording-cuff_stim.tsv.gz",
                   stim_json=func / f"{rid.stem}_recording-cuff_stim.json",
                   dataset_description=root / "dataset_description.json",
                   task_sidecar=root / f"task-{rid.task}_bold.json", readme=root / "README.md")

    def run_files(self) -> tuple[Path, ...]:
        """The per-run files this run owns (and may replace when rebuilt)."""
        return (self.events_tsv, self.events_json, self.stim_tsv, self.stim_json)


def json_bytes(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2, ensure_ascii=False) + "\n").encode("utf-8")


# ---------------------------------------------------------------- events

def events_tsv_text(events: Sequence[EventRow]) -> str:
    """events.tsv: onset and duration first, sorted by onset, `n/a` for missing."""
    columns = [c for c, _, _ in EVENT_COLUMNS]
    decimals = {c: d for c, _, d in EVENT_COLUMNS}
    rows = [tuple(getattr(e, attr) for _, attr, _ in EVENT_COLUMNS) for e in sorted(events, key=lambda e: e.onset_s)]
    return tsv_text(columns, rows, decimals=decimals)


def _hed_text(text: str) -> str:
    """Free text as a HED Description value (no commas, parentheses or other HED syntax)."""
    return " ".join("".join(ch if ch.isalnum() or ch in " -." else " " for ch in text).split())


def hed_for_level(level: str, phases: Sequence[PhaseTiming], facts: Mapping[str, Any] | None = None) -> str:
    """HED for one trial_type, from what its phases do: a rating scale is a participant
    response (with the scale's question), an inflating or held cuff is pressure pain, a cue is
    a visual cue."""
    mine = [p for p in phases if p.bids_trial_type == level]
    scales = (facts or {}).get("scales") or {}
    if mine and mine[0].kind == "rating":
        question = (scales.get(mine[0].scale or "") or {}).get("question")
        return RATING_SCALE_HED + (f", Description/{_hed_text(question)}" if question else "")
    cuff = {p.cuff for p in mine}
    parts = ["Sensory-event"]
    if "inflate" in cuff:
        parts.append("Experimental-stimulus")
    if any(p.cue for p in mine):
        parts += ["Visual-presentation", "Cue"]
    if cuff & {"inflate", "hold"}:
        parts.append(_PAIN_HED)
    return ", ".join(parts)


def _phase_text(ph: Mapping[str, Any]) -> str:
    bits = [f"cue {ph.get('cue')}" if ph.get("cue") else "blank screen"]
    if ph.get("cuff") not in (None, "none"):
        bits.append(f"cuff {ph['cuff']}" + (f" to level {ph['level']}" if ph.get("level") else ""))
    if ph.get("kind") == "rating":
        bits.append(f"rating scale {ph.get('scale')}")
    return f"{ph.get('name')} ({', '.join(bits)})"


def _level_text(level: str, phases: Sequence[PhaseTiming], facts: Mapping[str, Any] | None = None) -> str:
    """What a trial_type is: the phase(s) it models, and every phase of each trial type it is in,
    with the trial type's own description (from the protocol the run used)."""
    mine = [p for p in phases if p.bids_trial_type == level]
    if not mine:
        return level
    types = (facts or {}).get("trial_types") or {}
    out = []
    for tt in dict.fromkeys(p.trial_type for p in mine):
        names = sorted({p.phase for p in mine if p.trial_type == tt})
        t = types.get(tt) or {}
        seq = " -> ".join(_phase_text(ph) for ph in t.get("phases") or [])
        what = f"phase {', '.join(names)} of trial type {tt}"
        desc = f": {t['description']}" if t.get("description") else ""
        out.append(f"{what}{desc}" + (f" [trial: {seq}]" if seq else ""))
    return "; ".join(out)


def _rating_text(data: RunData) -> str:
    """The rating column: which phases carry ratings, and each scale's question, range and anchors."""
    facts = data.header.get("protocol") or {}
    scales: Mapping[str, Any] = facts.get("scales") or {}
    rated = [c.phase for c in data.rating_columns if c.phase is not None]
    head = (f"Rows of the rating phase{'s' if len(rated) > 1 else ''} {', '.join(repr(n) for n in rated)} carry "
            "ratings, each the rating given on its own scale (one row, and one value, per rating phase). "
            if rated else "")
    if not scales:
        return (f"{head}Rating confirmed on the scale shown in this row's phase, in the protocol's rating units; n/a "
                "if none was given or the phase shows no scale.")
    each = "; ".join(f"scale {name}: '{sc['question']}', {sc['min']} = {sc['low_anchor']} to {sc['max']} = "
                     f"{sc['high_anchor']}" for name, sc in scales.items())
    return (f"{head}Rating confirmed on the scale shown in this row's phase ({each}); n/a if none was given or the "
            "phase shows no scale.")


def stimulus_presentation(data: RunData) -> dict[str, Any]:
    """BIDS StimulusPresentation; honest about headless runs (no PsychoPy window)."""
    header, display = data.header, data.display or {}
    software = header.get("software") or {}
    out: dict[str, Any] = {"OperatingSystem": str(header.get("platform") or "unknown")}
    if display.get("simulated"):
        out.update(SoftwareName=f"{software.get('name', 'cuedpain')} simulated display (headless dry run, "
                                "nothing was shown)", SoftwareVersion=str(software.get("version", "unknown")))
    else:
        out.update(SoftwareName="PsychoPy", SoftwareVersion=str((header.get("packages") or {}).get("psychopy",
                                                                                                  "unknown")),
                   SoftwareRRID=PSYCHOPY_RRID)
    if display.get("refresh_hz"):
        out["ScreenRefreshRate"] = float(display["refresh_hz"])
    if display.get("resolution"):
        out["ScreenResolution"] = [int(v) for v in display["resolution"]]
    return out


def run_block(data: RunData, *, run_uid: str, source_log: str) -> dict[str, Any]:
    """Who made this file and from what: the run's identity (checked before replacing)."""
    header = data.header
    software = header.get("software") or {}
    return {"RunUID": run_uid, "SourceLog": source_log, "DryRun": bool(header.get("dry_run")),
            "Headless": bool(header.get("headless")),
            "Pressure": header.get("pressure"), "CueMapping": header.get("cue_mapping"),
            "Confirmation": header.get("confirmation"),
            "GeneratedBy": {"Name": software.get("name", "cuedpain"), "Version": software.get("version"),
                            "Revision": software.get("revision")}}


def _roles(data: RunData) -> dict[str, str]:
    """This run's cue mapping, cue -> role (empty without counterbalancing)."""
    roles = (data.header.get("cue_mapping") or {}).get("roles") or {}
    return {str(cue): str(role) for role, cue in roles.items()}


def _mapping_text(data: RunData) -> str:
    mapping = data.header.get("cue_mapping") or {}
    if mapping.get("index") is None:
        return ""
    roles = ", ".join(f"{role} = {cue}" for role, cue in (mapping.get("roles") or {}).items())
    return (f" Cues are counterbalanced: this participant has mapping {int(mapping['index']) + 1} "
            f"(chosen by {mapping.get('select')}): {roles}.")


def _cue_text(cue: str, data: RunData) -> str:
    role = _roles(data).get(cue)
    return f"protocol cue '{cue}'" + (f", the {role} of this participant's cue mapping" if role else "")


def _pressure_levels(data: RunData) -> dict[str, str]:
    levels = ((data.header.get("pressure") or {}).get("levels") or {})
    used = sorted({e.pressure_level for e in data.events if e.pressure_level})
    return {n: (f"{levels[n]['pressure_kpa']:g} kPa ({levels[n]['as_written']}, {levels[n]['source']})"
                if n in levels else n) for n in used}


def not_measured_text(header: Mapping[str, Any]) -> str | None:
    """Why the run's pressure was not measured (a gated inflator without read-back), or None when it was."""
    cuff = header.get("cuff") or {}
    if cuff.get("pressure_readback", True):
        return None
    panel = (header.get("briefing") or {}).get("panel_kpa")
    setting = f" ({panel:g} kPa, confirmed by the operator before the run)" if isinstance(panel, (int, float)) else ""
    return (f"n/a: not measured. The cuff ({cuff.get('name')}, {cuff.get('kind')}) is a gate on an inflator whose "
            f"pressure is set on its front panel{setting}; nothing measured the pressure in the cuff.")


def events_sidecar(data: RunData, *, run_uid: str, source_log: str) -> dict[str, Any]:
    """events.json: every column described, trial_type levels with HED, StimulusPresentation."""
    levels = sorted({e.trial_type for e in data.events} | {p.bids_trial_type for p in data.phases
                                                          if p.bids_trial_type})
    phases = sorted({e.phase for e in data.events})
    cues = sorted({e.cue for e in data.events if e.cue})
    facts = data.header.get("protocol")
    s = {"Units": "s"}
    side: dict[str, Any] = {
        "onset": {"Description": "First frame of the phase on screen (flip timestamp), in seconds from t0, the "
                                 "scanner pulse of the first stored volume.", **s},
        "duration": {"Description": "Seconds until the next phase's first frame (see duration_source).", **s},
        "trial_type": {"Description": "Modelled condition.",
                       "Levels": {lv: _level_text(lv, data.phases, facts) for lv in levels},
                       "HED": {lv: hed_for_level(lv, data.phases, facts) for lv in levels}},
        "trial": {"Description": "Trial number in the run (1-based)."},
        "phase": {"Description": "Phase of the trial as named in the protocol.", "Levels": {p: p for p in phases}},
        "cue": {"Description": "Cue on screen during the phase (protocol cue name)." + _mapping_text(data),
                "Levels": {c: _cue_text(c, data) for c in cues}},
        "cuff": {"Description": "What the cuff did in this phase.",
                 "Levels": dict(CUFF_LEVELS)},
        "planned_onset": {"Description": "Onset the runner aimed at, from t0 (protocol onset, moved later when a "
                                         "pain phase is timed from target pressure reached).", **s},
        "planned_duration": {"Description": "Duration in the protocol's timeline.", **s},
        "onset_error": {"Description": "onset minus planned_onset.", **s},
        "duration_source": {"Description": "Where the duration comes from.", "Levels": dict(DURATION_SOURCE_LEVELS)},
        "pressure_level": {"Description": "The protocol's pressure level of the stimulus in this phase (n/a: the "
                                          "cuff is deflated).",
                           "Levels": _pressure_levels(data)},
        "target_pressure_kpa": {"Description": "Commanded cuff pressure in this phase.", "Units": "kPa"},
        "measured_pressure_kpa": {"Description": "Mean measured cuff pressure while the device reported holding "
                                                 "its target during this phase.", "Units": "kPa"},
        "peak_pressure_kpa": {"Description": "Highest measured cuff pressure during this phase.", "Units": "kPa"},
        "rating": {"Description": _rating_text(data), "Units": "arbitrary"},
        "response_time": {"Description": "Time of the key press confirming this row's rating, from this row's "
                                         "onset; n/a = no response before the timeout, or no scale in this phase.",
                          **s},
        "StimulusPresentation": stimulus_presentation(data),
        "RunStatus": data.status.status,
        "RunStatusDescription": data.status.summary(),
        "CuedpainRun": {**run_block(data, run_uid=run_uid, source_log=source_log), "Notes": list(data.notes)},
    }
    unmeasured = not_measured_text(data.header)
    if unmeasured is not None:
        for column in ("measured_pressure_kpa", "peak_pressure_kpa"):
            side[column] = {**side[column], "Description": f"{side[column]['Description']} {unmeasured}"}
        side["target_pressure_kpa"] = {**side["target_pressure_kpa"],
                                       "Description": "Commanded cuff pressure in this phase: the pressure set on "
                                                      "the inflator's panel, its gate open."}
    return side


# ---------------------------------------------------------------- cuff pressure

def stim_tsv_gz(trace: PressureTrace) -> bytes:
    """The pressure trace as gzip'd TSV: no header line, no file name, mtime 0 (reproducible)."""
    text = tsv_text(STIM_COLUMNS, list(zip(trace.setpoint_kpa, trace.measured_kpa)),
                    decimals={c: PRESSURE_DECIMALS for c in STIM_COLUMNS}, header=False)
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0) as gz:
        gz.write(text.encode("utf-8"))
    return buf.getvalue()


def stim_sidecar(trace: PressureTrace, data: RunData, *, run_uid: str, source_log: str) -> dict[str, Any]:
    return {
        "TaskName": data.header.get("task"),
        "SamplingFrequency": trace.rate_hz,
        "StartTime": round(trace.start_time_s, 6),
        "Columns": list(STIM_COLUMNS),
        "pressure_setpoint": {"Description": "Cuff target pressure reported by the device (last sample at or "
                                             "before each grid time).", "Units": "kPa"},
        "pressure_measured": {"Description": "Measured cuff pressure, linearly interpolated between samples; n/a "
                                             f"inside gaps longer than {trace.max_gap_s} s.", "Units": "kPa"},
        "Resampling": f"{trace.n_source_samples} device samples (host arrival times) resampled to "
                      f"{trace.rate_hz} Hz on a grid aligned to t0.",
        "RunStatus": data.status.status,
        "CuedpainRun": run_block(data, run_uid=run_uid, source_log=source_log),
    }


# ---------------------------------------------------------------- dataset-level files

def dataset_description(header: Mapping[str, Any]) -> dict[str, Any]:
    software = header.get("software") or {}
    return {"Name": f"cuedpain task-{header.get('task')}", "BIDSVersion": BIDS_VERSION, "DatasetType": "raw",
            "HEDVersion": HED_VERSION,
            "GeneratedBy": [{"Name": software.get("name", "cuedpain"), "Version": str(software.get("version"))}]}


def _task_description(header: Mapping[str, Any]) -> str:
    """The protocol's own description (metadata.description), else what every cued pain task is."""
    name = header.get("protocol_name")
    description = str((header.get("protocol") or {}).get("description") or "").strip()
    if description:
        return description + (f" (protocol '{name}')" if name else "")
    return ("Cued pain task: visual cues and cuff-pressure pain on a schedule" + (f" (protocol '{name}')"
                                                                                   if name else ""))


def task_sidecar(header: Mapping[str, Any]) -> dict[str, Any]:
    """Task-level bold sidecar (inherited by every run's bold.json)."""
    name = header.get("protocol_name")
    return {"TaskName": header.get("task"),
            "TaskDescription": _task_description(header),
            "RepetitionTime": header.get("tr_s"),
            "NumberOfVolumesDiscardedByScanner": int(header.get("scanner_discarded") or 0),
            "NumberOfVolumesDiscardedByUser": int(header.get("discard_pulses") or 0)}


def readme_text(header: Mapping[str, Any]) -> str:
    return (f"# cuedpain task-{header.get('task')}\n\n"
            "Cued pain-anticipation fMRI data recorded with cuedpain. Events, cuff pressure and timing are derived "
            "from the raw run logs in `sourcedata/`; see the project's docs/outputs.md for every file and column.\n")


def _hed_compatible(version: Any) -> bool:
    versions = version if isinstance(version, list) else [version]
    return any(isinstance(v, str) and v.split(":")[-1].startswith("8.") for v in versions)


def ensure_dataset_files(header: Mapping[str, Any], paths: BidsPaths) -> list[str]:
    """Create dataset_description.json, README and the task sidecar if absent; never replace them.

    Returns notes for anything that exists but disagrees with this run.
    """
    notes: list[str] = []
    if not create_once(paths.dataset_description, json_bytes(dataset_description(header))):
        try:
            existing = json.loads(paths.dataset_description.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            existing = None
            notes.append(f"{paths.dataset_description.name} is not readable JSON ({exc}); left as it is")
        if isinstance(existing, dict) and not _hed_compatible(existing.get("HEDVersion")):
            notes.append(f"{paths.dataset_description.name} has HEDVersion {existing.get('HEDVersion')!r}; the HED "
                         f"annotations need {HED_VERSION} (file left as it is)")
    if not any(paths.readme.parent.glob("README*")):
        create_once(paths.readme, readme_text(header).encode("utf-8"))
    mine = task_sidecar(header)
    if not create_once(paths.task_sidecar, json_bytes(mine)):
        try:
            existing = json.loads(paths.task_sidecar.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            existing = {}
        differ = [k for k in TIMING_KEYS if isinstance(existing, dict) and existing.get(k) != mine[k]]
        if differ:
            notes.append(f"{paths.task_sidecar.name} disagrees with this run on {', '.join(differ)} and was not "
                         f"changed; this run's values are in its sourcedata bold.json")
    return notes


def check_owner(paths: BidsPaths, run_uid: str) -> None:
    """Refuse to replace per-run files that another run (another log) wrote."""
    existing = [p for p in paths.run_files() if p.exists()]
    if not existing:
        return
    try:
        owner = json.loads(paths.events_json.read_text(encoding="utf-8"))["CuedpainRun"]["RunUID"]
    except (OSError, ValueError, KeyError, TypeError):
        owner = None
    if owner != run_uid:
        raise InputError(f"{existing[0]} exists and was not written from this run's log "
                         f"({'another run' if owner else 'unknown origin'}); it is never overwritten")


def write_bids(data: RunData, rid: RunId, *, data_root: Path, run_uid: str, source_log: str,
               owned: OwnedPaths) -> tuple[BidsPaths, list[Path], list[str]]:
    """Write the run's BIDS files. Returns the paths, the files written, and notes."""
    paths = BidsPaths.of(rid, data_root)
    check_owner(paths, run_uid)
    notes = ensure_dataset_files(data.header, paths)
    written: list[Path] = []
    if data.t0 is None:
        notes.append("no BIDS events or stim files: the run never reached t0")
        return paths, written, notes
    # events.json first: it names the run, so files written after it are recognised as ours by a rebuild
    written.append(write_bytes(paths.events_json, json_bytes(events_sidecar(data, run_uid=run_uid,
                                                                          source_log=source_log)), owned=owned))
    written.append(write_text(paths.events_tsv, events_tsv_text(data.events), owned=owned))
    if data.pressure is not None:
        written.append(write_bytes(paths.stim_tsv, stim_tsv_gz(data.pressure), owned=owned))
        written.append(write_bytes(paths.stim_json, json_bytes(stim_sidecar(data.pressure, data, run_uid=run_uid,
                                                                              source_log=source_log)), owned=owned))
    return paths, written, notes
