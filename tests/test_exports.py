"""Analysis exports: FSL EV files, SPM multiple conditions (.mat), nilearn events."""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import pandas as pd
import pytest
from scipy.io import loadmat

from experiment.log.eventlog import read_log
from experiment.outputs.derive import derive_run
from experiment.outputs.exports import conditions, nilearn_events_text
from experiment.outputs.writer import write_run_outputs
from tests.logfactory import make_run

TRIALS = ("pain", "catch", "pain", "pain", "pain")
TARGETS = (40.0, 50.0, 45.0)


@pytest.fixture
def exported(tmp_path):
    run = make_run(tmp_path, trials=TRIALS, pain_targets_kpa=TARGETS, timeout_trials=(4,))
    paths = write_run_outputs(run.run_dir, data_root=tmp_path)
    events = pd.read_csv(paths.events_tsv, sep="\t", keep_default_na=False)
    return run, paths, events


def read_ev(path) -> np.ndarray:
    return np.loadtxt(path, ndmin=2)


def test_fsl_files_match_the_events(exported):
    run, paths, events = exported
    fsl = {p.name: p for p in paths.exports.fsl}
    for trial_type, rows in events.groupby("trial_type"):
        ev = read_ev(fsl[f"{run.rid.stem}_{trial_type}.txt"])
        np.testing.assert_allclose(ev[:, 0], rows["onset"].astype(float), atol=1e-4)
        np.testing.assert_allclose(ev[:, 1], rows["duration"].astype(float), atol=1e-4)
        assert (ev[:, 2] == 1.0).all()
    assert len(paths.exports.fsl) == events["trial_type"].nunique() + 2   # + pain x pressure, pain x rating


def test_fsl_pmod_weights_are_demeaned_modulators(exported):
    run, paths, events = exported
    pain = events[events["trial_type"] == "pain"]
    stem = paths.exports.directory / "fsl" / run.rid.stem
    pressure = read_ev(f"{stem}_pain_pmod-pressure.txt")
    target = pain["target_pressure_kpa"].astype(float).to_numpy()
    np.testing.assert_allclose(pressure[:, 2], target - target.mean(), atol=1e-4)
    np.testing.assert_allclose(pressure[:, 0], pain["onset"].astype(float), atol=1e-4)
    rating = read_ev(f"{stem}_pain_pmod-rating.txt")
    given = [run.ratings[t]["rating"] for t in pain["trial"]]
    present = [g for g in given if g is not None]
    expected = [0.0 if g is None else g - np.mean(present) for g in given]   # timed out -> the mean
    np.testing.assert_allclose(rating[:, 2], expected, atol=1e-4)
    assert None in given


def test_spm_mat_loads_back_with_cell_arrays(exported):
    run, paths, events = exported
    mat = loadmat(paths.exports.spm)
    names = [str(mat["names"][0, k][0]) for k in range(mat["names"].shape[1])]
    assert mat["names"].shape == (1, len(names)) and mat["names"].dtype == object
    assert names == list(dict.fromkeys(events.sort_values("onset")["trial_type"]))
    for k, name in enumerate(names):
        rows = events[events["trial_type"] == name]
        assert mat["onsets"][0, k].shape == (len(rows), 1)
        np.testing.assert_allclose(mat["onsets"][0, k].ravel(), rows["onset"].astype(float), atol=1e-4)
        np.testing.assert_allclose(mat["durations"][0, k].ravel(), rows["duration"].astype(float), atol=1e-4)
    pmod = mat["pmod"]
    assert pmod.shape == (1, len(names)) and set(pmod.dtype.names) == {"name", "param", "poly"}
    k = names.index("pain")
    assert [str(pmod[0, k]["name"][0, j][0]) for j in range(2)] == ["pressure", "rating"]
    pain = events[events["trial_type"] == "pain"]
    np.testing.assert_allclose(pmod[0, k]["param"][0, 0].ravel(), pain["target_pressure_kpa"].astype(float))
    assert [float(pmod[0, k]["poly"][0, j].ravel()[0]) for j in range(2)] == [1.0, 1.0]
    other = names.index("rating")
    assert pmod[0, other]["name"].size == 0 and pmod[0, other]["param"].size == 0


def test_nilearn_accepts_the_events_without_warnings(exported):
    from nilearn.glm.first_level import make_first_level_design_matrix

    run, paths, events = exported
    table = pd.read_csv(paths.exports.nilearn, sep="\t")
    assert list(table.columns) == ["onset", "duration", "trial_type"]
    assert not table.isna().any().any()
    frame_times = np.arange(run.n_volumes) * run.tr_s
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        design = make_first_level_design_matrix(frame_times, table, hrf_model="glover", drift_model=None)
    assert [str(w.message) for w in caught] == []
    for trial_type in events["trial_type"].unique():
        assert design[trial_type].abs().max() > 0.1


def test_missing_durations_are_replaced_by_planned_ones_for_nilearn(tmp_path):
    run = make_run(tmp_path)
    data = derive_run(read_log(run.run_dir / "log.jsonl"), read_log(run.run_dir / "pressure.jsonl"))
    first = dataclasses.replace(data.events[0], duration_s=None)
    no_plan = dataclasses.replace(data.events[1], duration_s=None, planned_duration_s=None)
    data = dataclasses.replace(data, events=(first, no_plan, *data.events[2:]))
    text, notes = nilearn_events_text(data)
    lines = text.split("\n")
    assert lines[1].split("\t")[1] == f"{first.planned_duration_s:.4f}"
    assert len(lines) - 2 == len(data.events) - 1 and "n/a" not in text
    assert any("planned duration" in n for n in notes) and any("dropped" in n for n in notes)
    conds, cond_notes = conditions(data)
    assert sum(len(c.onsets_s) for c in conds) == len(data.events) - 1
    assert any("replaced by the planned" in n for n in cond_notes)


def test_constant_modulators_are_left_out(tmp_path):
    run = make_run(tmp_path, trials=("pain", "pain"), pain_targets_kpa=(40.0,))
    paths = write_run_outputs(run.run_dir, data_root=tmp_path)
    names = {p.name for p in paths.exports.fsl}
    assert f"{run.rid.stem}_pain_pmod-pressure.txt" not in names
    assert f"{run.rid.stem}_pain_pmod-rating.txt" in names
    assert "no 'pressure' modulator for 'pain'" in paths.exports.readme.read_text()


def test_each_rating_phase_modulates_pain_with_its_own_values(tmp_path):
    run = make_run(tmp_path, trials=("pain_expectation", "catch", "pain_expectation", "pain_expectation"),
                   pain_targets_kpa=TARGETS, timeout_phases=((3, "pain_rating"),))
    paths = write_run_outputs(run.run_dir, data_root=tmp_path)
    events = pd.read_csv(paths.events_tsv, sep="\t", keep_default_na=False)
    pain = events[events["trial_type"] == "pain"]
    stem = paths.exports.directory / "fsl" / run.rid.stem
    mat = loadmat(paths.exports.spm)
    names = [str(mat["names"][0, k][0]) for k in range(mat["names"].shape[1])]
    k = names.index("pain")
    pmods = {str(mat["pmod"][0, k]["name"][0, j][0]): mat["pmod"][0, k]["param"][0, j].ravel()
             for j in range(mat["pmod"][0, k]["name"].shape[1])}
    assert list(pmods) == ["pressure", "expectation_rating", "pain_rating"]
    by_phase = {}
    for phase, column in (("expectation", "expectation_rating"), ("pain_rating", "pain_rating")):
        given = [next(r["rating"] for i, r in run.ratings_at.items()
                      if run.plan[i]["phase"] == phase and r["trial"] == t) for t in pain["trial"]]
        present = [g for g in given if g is not None]
        filled = [np.mean(present) if g is None else g for g in given]   # timed out -> the mean
        np.testing.assert_allclose(pmods[column], filled, atol=1e-9)
        ev = read_ev(f"{stem}_pain_pmod-{column}.txt")
        np.testing.assert_allclose(ev[:, 0], pain["onset"].astype(float), atol=1e-4)
        np.testing.assert_allclose(ev[:, 2], np.asarray(filled) - np.mean(filled), atol=1e-4)
        by_phase[phase] = given
    assert by_phase["expectation"] != by_phase["pain_rating"] and None in by_phase["pain_rating"]
    assert not (paths.exports.directory / "fsl" / f"{run.rid.stem}_pain_pmod-rating.txt").exists()
    for other in ("expectation", "pain_rating", "pain_anticipation"):   # ratings modulate pain only
        assert mat["pmod"][0, names.index(other)]["name"].size == 0
