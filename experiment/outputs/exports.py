"""Analysis exports from the events table: FSL EV files, SPM multiple conditions, nilearn.

Builders are pure (`conditions`, `fsl_ev_files`, `spm_multiple_conditions`,
`nilearn_events_text`); `write_exports` writes them atomically into the run's
`exports/` directory. Onsets are seconds from t0 (the first stored volume) in all of
them; see docs/outputs.md for FEAT "Delete volumes" and slice-timing notes.

Parametric modulators ("pmod") exist for conditions that inflate the cuff (pain):
`pressure` (the commanded target pressure, kPa), then one per rating phase of the
condition's trials (the trial's rating in that phase), named like that phase's rating
column in trials.csv: `rating` when the run has one rating phase, `<phase>_rating` when
it has several (e.g. `expectation_rating`, `pain_rating_rating`).
A modulator with fewer than two distinct values is left out (it would be a copy of the
main regressor); a missing value (e.g. a timed-out rating) gets the mean of the others,
so it does not move the modulator's estimate.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from experiment.outputs.atomic import OwnedPaths, write_bytes, write_text
from experiment.outputs.derive import EventRow, RunData
from experiment.outputs.tables import tsv_text

MAT_HEADER = b"MATLAB 5.0 MAT-file, written by cuedpain (SPM multiple conditions)"


@dataclass(frozen=True)
class Pmod:
    name: str
    values: tuple[float, ...]      # one per onset; missing ones filled with the mean


@dataclass(frozen=True)
class Condition:
    name: str
    onsets_s: tuple[float, ...]
    durations_s: tuple[float, ...]
    pmods: tuple[Pmod, ...] = ()


def model_duration(e: EventRow) -> float | None:
    """The measured duration, else the planned one; None when there is neither."""
    return e.duration_s if e.duration_s is not None else e.planned_duration_s


def _pmod(name: str, raw: Sequence[float | None], *, condition: str, notes: list[str]) -> Pmod | None:
    present = [v for v in raw if v is not None]
    if len(set(present)) < 2:
        notes.append(f"no '{name}' modulator for '{condition}': fewer than two distinct values")
        return None
    mean = float(np.mean(present))
    filled = len(raw) - len(present)
    if filled:
        notes.append(f"'{condition}' x {name}: {filled} missing value(s) set to the mean ({mean:.3f})")
    return Pmod(name=name, values=tuple(mean if v is None else float(v) for v in raw))


def conditions(data: RunData) -> tuple[tuple[Condition, ...], list[str]]:
    """One condition per trial_type with at least one event, in order of first onset."""
    notes: list[str] = []
    ratings = [(c, data.ratings_in(c)) for c in data.rating_columns if c.phase is not None]
    phases_of_trial: dict[int, set[str]] = {}
    for p in data.phases:
        phases_of_trial.setdefault(p.trial, set()).add(p.phase)
    order: list[str] = []
    for e in data.events:
        if e.trial_type not in order:
            order.append(e.trial_type)
    planned = [p.bids_trial_type for p in data.phases if p.bids_trial_type]
    never = sorted(set(planned) - set(order))
    if never:
        notes.append(f"condition(s) with no events, left out: {', '.join(never)}")
    out = []
    for name in order:
        rows = []
        for e in data.events:
            if e.trial_type != name:
                continue
            duration = model_duration(e)
            if duration is None:
                notes.append(f"'{name}' at {e.onset_s:.3f} s left out: no duration, measured or planned")
                continue
            if e.duration_s is None:
                notes.append(f"'{name}' at {e.onset_s:.3f} s: n/a duration replaced by the planned {duration:.3f} s")
            rows.append((e, duration))
        if not rows:
            continue
        pmods: list[Pmod] = []
        if any(e.cuff == "inflate" for e, _ in rows):
            candidates = [_pmod("pressure", [e.target_pressure_kpa for e, _ in rows], condition=name, notes=notes)]
            for c, of_trial in ratings:   # only rating phases that the condition's trials have
                if any(c.phase in phases_of_trial.get(e.trial, ()) for e, _ in rows):
                    candidates.append(_pmod(c.rating, [of_trial.get(e.trial) for e, _ in rows], condition=name,
                                            notes=notes))
            pmods += [pm for pm in candidates if pm is not None]
        out.append(Condition(name=name, onsets_s=tuple(e.onset_s for e, _ in rows),
                             durations_s=tuple(d for _, d in rows), pmods=tuple(pmods)))
    return tuple(out), notes


def fsl_ev_files(conds: Sequence[Condition], stem: str) -> dict[str, str]:
    """FSL 3-column files: `onset duration weight`, one per condition; `_pmod-<name>` files
    carry the demeaned modulator as the weight."""
    files: dict[str, str] = {}
    for c in conds:
        files[f"{stem}_{c.name}.txt"] = tsv_text(("o", "d", "w"), [(o, d, 1.0) for o, d in
                                                                 zip(c.onsets_s, c.durations_s)], header=False)
        for pm in c.pmods:
            centred = np.asarray(pm.values) - np.mean(pm.values)
            files[f"{stem}_{c.name}_pmod-{pm.name}.txt"] = tsv_text(
                ("o", "d", "w"), [(o, d, float(w)) for o, d, w in zip(c.onsets_s, c.durations_s, centred)],
                header=False)
    return files


def _cell(items: Sequence[Any]) -> np.ndarray:
    cell = np.empty((1, len(items)), dtype=object)
    for k, item in enumerate(items):
        cell[0, k] = item
    return cell


def _column(values: Sequence[float]) -> np.ndarray:
    """A column vector, as SPM wants onsets, durations and parametric values."""
    return np.asarray(values, dtype=float).reshape(-1, 1)


def spm_multiple_conditions(conds: Sequence[Condition]) -> dict[str, Any]:
    """The variables of an SPM multiple-conditions file (units: seconds)."""
    mdict: dict[str, Any] = {"names": _cell([c.name for c in conds]),
                             "onsets": _cell([_column(c.onsets_s) for c in conds]),
                             "durations": _cell([_column(c.durations_s) for c in conds])}
    if any(c.pmods for c in conds):
        pmod = np.zeros((1, len(conds)), dtype=[("name", "O"), ("param", "O"), ("poly", "O")])
        for k, c in enumerate(conds):
            if c.pmods:
                pmod[0, k]["name"] = _cell([pm.name for pm in c.pmods])
                pmod[0, k]["param"] = _cell([_column(pm.values) for pm in c.pmods])
                pmod[0, k]["poly"] = _cell([1.0 for _ in c.pmods])
            else:
                for f in ("name", "param", "poly"):
                    pmod[0, k][f] = np.zeros((0, 0))
        mdict["pmod"] = pmod
    return mdict


def mat_bytes(mdict: dict[str, Any]) -> bytes:
    """A MATLAB v5 file with a fixed header text (scipy writes the date there)."""
    from scipy.io import savemat  # local import: scipy.io is only needed here

    buf = io.BytesIO()
    savemat(buf, mdict, format="5", oned_as="column")
    data = bytearray(buf.getvalue())
    data[:116] = MAT_HEADER.ljust(116, b" ")
    return bytes(data)


def nilearn_events_text(data: RunData) -> tuple[str, list[str]]:
    """onset, duration, trial_type only (nilearn warns on other columns); no n/a anywhere."""
    notes: list[str] = []
    rows = []
    for e in data.events:
        duration = model_duration(e)
        if duration is None:
            notes.append(f"nilearn: '{e.trial_type}' at {e.onset_s:.3f} s dropped (no duration)")
            continue
        if e.duration_s is None:
            notes.append(f"nilearn: '{e.trial_type}' at {e.onset_s:.3f} s uses its planned duration")
        rows.append((e.onset_s, duration, e.trial_type))
    return tsv_text(("onset", "duration", "trial_type"), rows), notes


def readme_text(data: RunData, stem: str, notes: Sequence[str]) -> str:
    dry = " DRY RUN (simulated devices): not participant data." if data.header.get("dry_run") else ""
    lines = [f"Analysis exports for {stem}.{dry}", f"Run status: {data.status.summary()}", "",
             "Onsets are seconds from t0, the scanner pulse of the first stored volume. If you delete N more",
             "volumes in FEAT or before SPM, subtract N x TR from every onset.",
             "fsl/<stem>_<condition>.txt           FSL 3-column EVs: onset duration 1",
             "fsl/<stem>_<condition>_pmod-X.txt    same onsets, weight = demeaned modulator X",
             f"{stem}_spm_multiple_conditions.mat   SPM: names, onsets, durations (units: secs), pmod",
             f"{stem}_nilearn_events.tsv           nilearn make_first_level_design_matrix events",
             "Slice timing: onsets refer to the start of the volume's acquisition (the pulse). Set nilearn",
             "slice_time_ref / SPM fmri_t0 to the reference slice you used; FEAT aligns to mid-TR itself.", ""]
    lines += ["Notes:"] + [f"- {n}" for n in notes] if notes else []
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class ExportPaths:
    directory: Path
    fsl: tuple[Path, ...]
    spm: Path | None
    nilearn: Path | None
    readme: Path

    def all(self) -> tuple[Path, ...]:
        return tuple(p for p in (*self.fsl, self.spm, self.nilearn, self.readme) if p is not None)


def export_dir(run_dir: Path) -> Path:
    return Path(run_dir) / "exports"


def write_exports(data: RunData, run_dir: Path, *, stem: str, owned: OwnedPaths) -> tuple[ExportPaths, list[str]]:
    """Write every export; remove this run's FSL files for conditions that no longer exist."""
    out = export_dir(run_dir)
    conds, notes = conditions(data)
    fsl_dir = out / "fsl"
    fsl_paths = []
    for name, text in fsl_ev_files(conds, stem).items():
        fsl_paths.append(write_text(fsl_dir / name, text, owned=owned))
    if fsl_dir.is_dir():
        for stale in fsl_dir.glob(f"{stem}_*.txt"):
            if stale not in fsl_paths and owned.owns(stale):
                stale.unlink()
    spm = nilearn = None
    if conds:
        spm = write_bytes(out / f"{stem}_spm_multiple_conditions.mat", mat_bytes(spm_multiple_conditions(conds)),
                          owned=owned)
        text, nl_notes = nilearn_events_text(data)
        notes += nl_notes
        nilearn = write_text(out / f"{stem}_nilearn_events.tsv", text, owned=owned)
    else:
        notes.append("no events: no SPM or nilearn export")
    readme = write_text(out / "README.txt", readme_text(data, stem, notes), owned=owned)
    return ExportPaths(directory=out, fsl=tuple(fsl_paths), spm=spm, nilearn=nilearn, readme=readme), notes
