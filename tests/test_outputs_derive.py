"""The pure derivation from a run's log: events, timing, pressure, pulses, status."""

from __future__ import annotations

import math

import numpy as np
import pytest

from experiment.log.eventlog import read_log
from experiment.outputs.derive import derive_run, timing_quality
from experiment.outputs.tables import format_value, tsv_text
from tests.logfactory import make_run


def derive(run, **kw):
    return derive_run(read_log(run.run_dir / "log.jsonl"), read_log(run.run_dir / "pressure.jsonl"), **kw)


@pytest.fixture
def full(tmp_path):
    run = make_run(tmp_path, trials=("pain", "catch", "pain"), timeout_trials=(3,))
    return run, derive(run)


def test_one_row_per_modelled_phase_with_measured_onset_and_duration(full):
    run, data = full
    modelled = [p for p in run.plan if p["bids_trial_type"]]
    assert len(data.events) == len(modelled)
    for p, e in zip(modelled, sorted(data.events, key=lambda e: e.i)):
        assert e.trial_type == p["bids_trial_type"] and e.phase == p["phase"] and e.trial == p["trial"]
        assert e.onset_s == pytest.approx(run.onset_t[p["i"]] - run.t0, abs=1e-9)
        assert e.duration_s == pytest.approx(run.onset_t[p["i"] + 1] - run.onset_t[p["i"]], abs=1e-9)
        assert e.duration_source == "measured"
    assert [e.onset_s for e in data.events] == sorted(e.onset_s for e in data.events)
    assert {e.trial_type for e in data.events} == {"pain_anticipation", "pain", "relief_anticipation", "rating",
                                                   "catch_pain_anticipation"}


def test_planned_onset_follows_reanchoring_and_error_is_measured_minus_planned(full):
    run, data = full
    relief = next(e for e in data.events if e.trial_type == "relief_anticipation")
    plan = run.plan[relief.i]
    assert relief.planned_onset_s == pytest.approx(plan["onset_s"] + run.reanchor_shift_s, abs=1e-9)
    assert relief.onset_error_s == pytest.approx(run.onset_t[relief.i] - run.planned_t[relief.i], abs=1e-9)
    assert relief.planned_duration_s == plan["duration_s"]


def test_ratings_and_response_times(full):
    run, data = full
    rows = {e.trial: e for e in data.events if e.trial_type == "rating"}
    answered = run.ratings[1]
    assert rows[1].rating == answered["rating"]
    assert rows[1].response_time_s == pytest.approx(answered["t_response"] - run.onset_t[rows[1].i], abs=1e-9)
    assert rows[3].rating is None and rows[3].response_time_s is None  # timed out
    assert data.ratings_in(data.rating_columns[0]) == {1: answered["rating"]}


def test_pressure_columns_only_where_the_cuff_works(full):
    run, data = full
    for e in data.events:
        if e.cuff == "none":
            assert (e.target_pressure_kpa, e.measured_pressure_kpa, e.peak_pressure_kpa) == (None, None, None)
    pain = [e for e in data.events if e.trial_type == "pain"]
    for e in pain:
        assert e.target_pressure_kpa == 40.0
        assert e.measured_pressure_kpa == pytest.approx(40.0, abs=0.05)   # model noise is +-0.05 kPa
        assert e.peak_pressure_kpa >= e.measured_pressure_kpa


def test_trial_summary_planned_vs_actual(full):
    run, data = full
    t = data.trials
    assert t.column("trial") == [1, 2, 3]
    assert t.column("trial_type") == ["pain", "catch", "pain"]
    assert t.column("status") == ["completed"] * 3
    i_pain = next(p["i"] for p in run.plan if p["trial"] == 3 and p["phase"] == "pain")
    row = dict(zip(t.columns, t.rows[2]))
    assert row["pain_onset"] == pytest.approx(run.onset_t[i_pain] - run.t0)
    assert row["pain_planned_onset"] == pytest.approx(run.planned_t[i_pain] - run.t0)
    assert row["target_reached_latency"] == pytest.approx(run.plan[i_pain]["ramp_s"] + run.reanchor_shift_s)
    assert row["rating"] is None and row["rating_timed_out"] is True
    catch = dict(zip(t.columns, t.rows[1]))
    assert catch["pain_onset"] is None and catch["target_pressure_kpa"] is None


def test_pressure_resampled_on_a_t0_aligned_grid(tmp_path):
    run = make_run(tmp_path, pressure_gap=(30.5, 32.0))
    trace = derive(run, rate_hz=10.0).pressure
    raw_t = np.array([s["t"] for s in run.samples])
    raw_p = np.array([s["p"] for s in run.samples])
    assert trace.rate_hz == 10.0
    assert trace.start_time_s == pytest.approx(math.ceil((raw_t[0] - run.t0) * 10) / 10)
    assert round(trace.start_time_s * 10, 9).is_integer()
    grid = run.t0 + trace.start_time_s + np.arange(len(trace.measured_kpa)) / 10.0
    assert grid[-1] <= raw_t[-1] < grid[-1] + 0.1
    inside = (grid > run.t0 + 30.5) & (grid < run.t0 + 32.0)
    got = np.array([np.nan if v is None else v for v in trace.measured_kpa])
    assert np.all(np.isnan(got[inside])) and inside.sum() >= 14
    ok = ~np.isnan(got)
    np.testing.assert_allclose(got[ok], np.interp(grid[ok], raw_t, raw_p), atol=1e-9)
    # setpoint: the last sample's target at or before each grid time (a step, never interpolated)
    k = int(np.searchsorted(grid, run.t0 + 19.0))
    before = [s for s in run.samples if s["t"] <= grid[k]][-1]
    assert trace.setpoint_kpa[k] == before["tgt"]


def test_missed_pulse_is_found_from_the_interval(tmp_path):
    run = make_run(tmp_path, missed_volumes=(10,))
    data = derive(run)
    missed = [p for p in data.pulses if p.missed_before]
    assert len(missed) == 1 and missed[0].missed_before == 1
    assert missed[0].onset_s == pytest.approx(11 * run.tr_s, abs=1e-3)
    q = timing_quality(data)
    assert (q.volumes_received, q.volumes_expected, q.missed_pulses) == (run.n_volumes - 1, run.n_volumes, 1)


def test_aborted_run_cuts_the_running_phase_at_the_stop(tmp_path):
    run = make_run(tmp_path, abort_at_s=24.0)   # during trial 1's pain phase
    data = derive(run)
    st = data.status
    assert (st.status, st.reason, st.exit_code) == ("aborted", "escape", 3)
    assert st.last_started == (1, "pain") and st.last_completed_phase == (1, "pain_anticipation")
    assert st.last_completed_trial is None
    pain = next(e for e in data.events if e.trial_type == "pain")
    assert pain.duration_source == "stopped"
    assert pain.duration_s == pytest.approx(run.end["t"] - run.onset_t[pain.i], abs=1e-9)
    assert "aborted (escape: the operator pressed Escape)" in st.summary() and "trial 1 'pain'" in st.summary()
    assert len(data.safety) == 1 and data.operator[0]["action"] == "escape"


def test_killed_run_is_incomplete_and_says_where_it_stopped(tmp_path):
    run = make_run(tmp_path, kill_at_s=80.0)
    data = derive(run)
    st = data.status
    assert st.status == "incomplete" and st.truncated and st.exit_code is None
    assert st.last_completed_trial == 2 and st.last_started == (3, "pain")
    assert st.stopped_at_s == pytest.approx(run.last_time - run.t0, abs=1e-9)
    assert max(e.onset_s for e in data.events) <= 80.0
    assert {e.i for e in data.events} == {p["i"] for p in run.plan if p["bids_trial_type"] and p["i"] in run.onset_t}
    assert any("incomplete" in n for n in data.notes) and any("cut off" in n for n in data.notes)


def test_killed_before_t0_gives_no_events(tmp_path):
    run = make_run(tmp_path, kill_at_s=-3.0)
    data = derive(run)
    assert data.t0 is None and data.events == () and data.pressure is None
    assert data.status.status == "incomplete" and data.status.last_started is None
    assert any("t0" in n for n in data.notes)


def test_values_are_never_written_as_nan_or_empty():
    assert [format_value(v) for v in (None, float("nan"), float("inf"), -0.00001, 1.23456, 3, True, "a\tb")] == \
        ["n/a", "n/a", "n/a", "0.0000", "1.2346", "3", "true", "a b"]
    assert tsv_text(("a", "b"), [(None, 1.0)]) == "a\tb\nn/a\t1.0000\n"


# ---------------------------------------------------------------- several rating phases per trial

def _rating_records_by_phase(run, phase):
    """trial -> the rating record written for `phase` (the log's own truth)."""
    return {rec["trial"]: rec for i, rec in run.ratings_at.items() if run.plan[i]["phase"] == phase}


def test_two_ratings_in_a_trial_derive_to_their_own_rows(tmp_path):
    run = make_run(tmp_path, trials=("pain_expectation", "catch", "pain_expectation", "pain_expectation"),
                   timeout_phases=((3, "pain_rating"),))
    data = derive(run)
    rated = [i for i, p in enumerate(run.plan) if p["phase"] in ("expectation", "pain_rating")]
    assert sorted(run.ratings_at) == rated and len(rated) == 6
    first = [run.ratings_at[i] for i in rated[:2]]    # trial 1: the mix-up would be visible
    assert first[0]["rating"] != first[1]["rating"] and first[0]["response_time_s"] != first[1]["response_time_s"]
    rows = {e.i: e for e in data.events}
    for i in rated:
        rec, row = run.ratings_at[i], rows[i]
        assert (row.trial, row.phase, row.trial_type) == (run.plan[i]["trial"], run.plan[i]["phase"],
                                                          run.plan[i]["bids_trial_type"])
        assert row.onset_s == pytest.approx(rec["t_onset"] - run.t0, abs=1e-9)
        assert row.rating == rec["rating"]
        if rec["timed_out"]:
            assert row.response_time_s is None
        else:   # from this row's own onset, and within this phase
            assert row.response_time_s == pytest.approx(rec["t_response"] - run.onset_t[i], abs=1e-9)
            assert 0 < row.response_time_s < run.plan[i]["duration_s"]
    trial3 = {run.plan[i]["phase"]: i for i in rated if run.plan[i]["trial"] == 3}
    assert run.ratings_at[trial3["pain_rating"]]["timed_out"] and rows[trial3["pain_rating"]].rating is None
    assert rows[trial3["expectation"]].rating is not None and rows[trial3["expectation"]].response_time_s > 0
    assert all(e.rating is None and e.response_time_s is None for e in data.events if e.i not in rated)
    assert not any(e.duration_source == "response" for e in data.events)   # no fallback rows


def test_two_ratings_in_a_trial_get_their_own_trial_columns(tmp_path):
    run = make_run(tmp_path, trials=("pain_expectation", "catch", "pain_expectation"),
                   timeout_phases=((3, "expectation"),))
    data = derive(run)
    assert [c.phase for c in data.rating_columns] == ["expectation", "pain_rating"]
    t = data.trials
    assert "rating" not in t.columns and "response_time" not in t.columns
    # columns named for the phase, `_rating` added unless the name already ends with it
    for phase, column in (("expectation", "expectation_rating"), ("pain_rating", "pain_rating")):
        given = _rating_records_by_phase(run, phase)
        assert sorted(given) == [1, 3]
        for n, row in zip(t.column("trial"), t.rows):
            row = dict(zip(t.columns, row))
            rec = given.get(n)
            if rec is None:   # the catch trial has no rating phase
                assert row[column] is None and row[f"{column}_timed_out"] is None
                continue
            assert row[column] == rec["rating"]
            assert row[f"{phase}_response_time"] == rec["response_time_s"]
            assert row[f"{column}_timed_out"] is rec["timed_out"]
        cols = next(c for c in data.rating_columns if c.phase == phase)
        assert data.ratings_in(cols) == {n: r["rating"] for n, r in given.items() if r["rating"] is not None}


def test_a_rating_phase_that_is_not_modelled_keeps_its_own_row(tmp_path):
    run = make_run(tmp_path, trials=("pain_expectation", "pain_expectation"), unmodelled=("expectation",))
    data = derive(run)
    fallback = [e for e in data.events if e.duration_source == "response"]
    given = _rating_records_by_phase(run, "expectation")
    assert [(e.trial, e.phase, e.trial_type) for e in fallback] == [(1, "expectation", "rating"),
                                                                     (2, "expectation", "rating")]
    for e in fallback:
        rec = given[e.trial]
        assert e.rating == rec["rating"] and e.response_time_s == pytest.approx(rec["response_time_s"])
        assert e.onset_s == pytest.approx(rec["t_onset"] - run.t0, abs=1e-9)
    pain_rows = {e.trial: e for e in data.events if e.phase == "pain_rating"}
    for n, rec in _rating_records_by_phase(run, "pain_rating").items():
        assert pain_rows[n].rating == rec["rating"] != given[n]["rating"]


def test_an_old_log_without_plan_indices_keeps_the_first_rating_of_each_trial(tmp_path):
    old = make_run(tmp_path / "old", trials=("pain_expectation", "pain"), legacy_ratings=True)
    assert all("i" not in rec for rec in old.ratings_at.values())
    data = derive(old)
    rows = {e.i: e for e in data.events}
    i_expect, i_pain_rating, i_rating = (next(i for i, p in enumerate(old.plan) if p["phase"] == name)
                                         for name in ("expectation", "pain_rating", "rating"))
    for i in (i_expect, i_rating):   # the first rating of each trial, on the phase shown at its onset
        rec = old.ratings_at[i]
        assert rows[i].rating == rec["rating"]
        assert rows[i].response_time_s == pytest.approx(rec["t_response"] - old.onset_t[i], abs=1e-9)
    assert rows[i_pain_rating].rating is None          # the second rating cannot be placed
    assert any("without a plan index" in n for n in data.notes)
    # the same run written with plan indices places every rating
    new = derive(make_run(tmp_path / "new", trials=("pain_expectation", "pain")))
    assert {e.i: e.rating for e in new.events if e.rating is not None} == \
        {i: rec["rating"] for i, rec in old.ratings_at.items()}
    assert not any("plan index" in n for n in new.notes)


def test_an_old_log_with_one_rating_per_trial_derives_as_a_new_one(tmp_path):
    old = derive(make_run(tmp_path / "old", trials=("pain", "catch", "pain"), timeout_trials=(3,),
                          legacy_ratings=True))
    new = derive(make_run(tmp_path / "new", trials=("pain", "catch", "pain"), timeout_trials=(3,)))
    assert old.events == new.events and old.trials == new.trials and old.ratings == new.ratings
    assert [c.rating for c in old.rating_columns] == ["rating"]
