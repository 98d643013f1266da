"""The pure derivation from a run's log: events, timing, pressure, pulses, status."""

from __future__ import annotations

import math

import numpy as np
import pytest

from experiment.eventlog import read_log
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
