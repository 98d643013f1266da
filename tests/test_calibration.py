"""Calibration: the fit and the procedures (pure), then `cuedpain calibrate` end to end.

Tolerances (measured over 100 seeds each, docs/calibration.md): with rating noise SD 5
the staircase recovers the simulated participant's true pressure for 50/100
(`RatingModel.pressure_for(50)`) within 3 kPa and the ramp within 2.5 kPa (its
presses are late by the 0.4-s reaction time: +0.4 kPa at 1 kPa/s).
"""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

from experiment.procedures.calibration.fit import FitError, fit_pressure_for_rating, invert, isotonic
from experiment.procedures.calibration.participant import parse_sim_spec
from experiment.procedures.calibration.steps import (Done, Plateau, PlateauOutcome, Ramp, RampOutcome, RampSettings,
                                               StaircaseSettings, check_settings, next_plateau, next_ramp,
                                               inflation_limits_s, plateau_pressures, pressure_at)
from experiment.protocol.cuff_timing import CuffTiming
from experiment.cli import main
from experiment.errors import InputError
from experiment.log.eventlog import read_log
from experiment.station.simparticipant import RatingModel

ROOT = Path(__file__).resolve().parents[1]
STAIRCASE_TOL_KPA = 3.0
RAMP_TOL_KPA = 2.5


# ------------------------------------------------------------------ the fit (pure)

def test_isotonic_pools_adjacent_violators_and_averages_ties() -> None:
    knots, fitted, weights = isotonic([1, 2, 3, 4, 4], [1, 3, 2, 4, 6])
    assert knots == (1, 2, 3, 4) and weights == (1, 1, 1, 2)
    assert fitted == (1, 2.5, 2.5, 5)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 60), st.integers(0, 100)), min_size=1, max_size=12))
def test_isotonic_is_non_decreasing_and_keeps_the_mean(points) -> None:
    xs, ys = [p for p, _ in points], [r for _, r in points]
    knots, fitted, weights = isotonic(xs, ys)
    assert all(a <= b + 1e-9 for a, b in zip(fitted, fitted[1:]))
    assert sum(f * w for f, w in zip(fitted, weights)) == pytest.approx(sum(ys))
    # least squares among non-decreasing fits: at least as good as the flat one
    sse = sum((r - fitted[knots.index(p)]) ** 2 for p, r in points)
    flat = sum(ys) / len(ys)
    assert sse <= sum((r - flat) ** 2 for r in ys) + 1e-6


def test_inversion_interpolates_between_the_bracketing_knots_or_averages_a_flat_stretch() -> None:
    assert invert((10, 20), (20, 60), (1, 1), 50) == (17.5, (10, 20))
    assert invert((10, 20, 30, 40), (0, 50, 50, 80), (1, 1, 3, 1), 50) == (27.5, (20, 30))


def test_staircase_like_data_give_the_crossing_pressure() -> None:
    fit = fit_pressure_for_rating([10, 15, 20, 25, 30, 35], [10, 10, 0, 5, 30, 55], target_rating=50)
    assert fit.pressure_kpa == pytest.approx(34.0)
    assert fit.bracket_kpa == (30.0, 35.0) and fit.max_reversal == 10


def test_ramp_like_data_give_the_mean_of_the_target_presses() -> None:
    fit = fit_pressure_for_rating([18, 19, 17, 34, 36, 35.5], [0, 0, 0, 50, 50, 50], target_rating=50)
    assert fit.pressure_kpa == pytest.approx((34 + 36 + 35.5) / 3)


@pytest.mark.parametrize("pressures, ratings, message", [
    ([10, 15, 20], [0, 10, 30], r"never reached 50 \(highest: 30 at 20\.0 kPa"),
    ([10, 15], [60, 80], r"lowest pressure \(10\.0 kPa\) was already rated above 50; start lower"),
    ([10], [70], r"already rated at or above 50; start lower"),
    ([10, 10], [0, 20], r"needs ratings at two or more different pressures"),
    ([10, 15, 20, 25], [0, 40, 5, 60], r"do not rise with pressure: 40 at 15\.0 kPa but 5 at 20\.0 kPa \(a fall of 35"),
])
def test_the_fit_refuses_data_that_cannot_give_the_pressure(pressures, ratings, message) -> None:
    with pytest.raises(FitError, match=message):
        fit_pressure_for_rating(pressures, ratings, target_rating=50)


# ------------------------------------------------------------------ the procedures (pure)

def _plateau_done(pressure: float, rating: float | None, i: int) -> PlateauOutcome:
    return PlateauOutcome(index=i, target_kpa=pressure, pressure_kpa=pressure, rating=rating, t_start=0.0,
                          t_onset=0.0, t_response=None)


def test_staircase_steps_up_repeats_a_miss_once_and_stops_at_the_target() -> None:
    s = StaircaseSettings(start_kpa=10, step_kpa=5)
    done: list[PlateauOutcome] = []
    seen = []
    for rating in (0, None, 10, 30, 55):
        nxt = next_plateau(s, ceiling_kpa=60, target_rating=50, done=done)
        assert isinstance(nxt, Plateau)
        seen.append(nxt.pressure_kpa)
        done.append(_plateau_done(nxt.pressure_kpa, rating, nxt.index))
    assert seen == [10, 15, 15, 20, 25]
    end = next_plateau(s, ceiling_kpa=60, target_rating=50, done=done)
    assert isinstance(end, Done) and end.reason == "target_reached" and end.fit


def test_staircase_gives_up_after_two_misses_and_ends_at_the_ceiling() -> None:
    s = StaircaseSettings(start_kpa=10, step_kpa=5)
    missed = [_plateau_done(10, None, 1), _plateau_done(10, None, 2)]
    end = next_plateau(s, ceiling_kpa=60, target_rating=50, done=missed)
    assert isinstance(end, Done) and end.reason == "no_rating" and not end.fit
    assert plateau_pressures(s, ceiling_kpa=32.07) == [10, 15, 20, 25, 30, 32.0]
    top = next_plateau(s, ceiling_kpa=32.07, target_rating=50, done=[_plateau_done(30, 20, 1)])
    assert isinstance(top, Plateau) and top.pressure_kpa == 32.0
    end = next_plateau(s, ceiling_kpa=32.07, target_rating=50, done=[_plateau_done(32.0, 20, 1)])
    assert isinstance(end, Done) and end.reason == "ceiling_reached"


def test_ramps_repeat_and_a_ramp_to_the_ceiling_ends_without_a_fit() -> None:
    s = RampSettings(repeats=2)
    first = next_ramp(s, ceiling_kpa=40.05, done=[])
    assert first == Ramp(index=1, ceiling_kpa=40.0, rate_kpa_s=1.0)
    ok = RampOutcome(1, "target_press", 15.0, 30.0, 0.0, 15.0, 30.0)
    assert isinstance(next_ramp(s, ceiling_kpa=40, done=[ok]), Ramp)
    assert next_ramp(s, ceiling_kpa=40, done=[ok, ok]).reason == "repeats_done"
    capped = next_ramp(s, ceiling_kpa=40, done=[RampOutcome(1, "ceiling", 15.0, None, 0.0, 15.0, None)])
    assert isinstance(capped, Done) and not capped.fit and "target lies above the ceiling" in capped.message


def test_pressure_at_a_press_is_interpolated_in_the_measured_trace() -> None:
    trace = [(0.0, 10.0), (0.04, 10.04), (0.08, 10.08)]
    assert pressure_at(trace, 0.05) == pytest.approx(10.05)
    assert pressure_at(trace, 1.0) == 10.08 and pressure_at([], 1.0) is None


def test_settings_that_the_cuff_cannot_hold_are_refused() -> None:
    # the rise to 100 kPa at 0.1 kPa/s counted with the default slower real cuff (x 1.1 + 1 s), plus 5 s
    with pytest.raises(InputError, match=r"one stimulus could last 1106 s .* use a faster --rate or a lower --ceiling"):
        check_settings(RampSettings(rate_kpa_s=0.1), ceiling_kpa=100)
    ideal = CuffTiming(ramp_margin_s=0.0, ramp_margin_fraction=0.0, release_margin_s=0.0, onset_slack_s=0.0)
    with pytest.raises(InputError, match=r"one stimulus could last 1005 s"):
        check_settings(RampSettings(rate_kpa_s=0.1), ceiling_kpa=100, timing=ideal)
    assert inflation_limits_s(RampSettings(rate_kpa_s=1.0, repeats=3), ceiling_kpa=60)[0] == pytest.approx(72.0)
    with pytest.raises(InputError, match=r"--start must be above 0 and at most the ceiling 20 kPa, got 25"):
        check_settings(StaircaseSettings(start_kpa=25), ceiling_kpa=20)


def test_simulated_participant_spec() -> None:
    spec = parse_sim_spec("p50=28,slope=4,noise=3,stop=button@20")
    assert spec.model == RatingModel(28, 4, 3) and (spec.stop_with, spec.stop_at_kpa) == ("button", 20)
    with pytest.raises(InputError, match=r"unknown key\(s\) p60"):
        parse_sim_spec("p60=3")
    with pytest.raises(InputError, match=r"stop=button@KPA or stop=key@KPA"):
        parse_sim_spec("stop=now")


# ------------------------------------------------------------------ the command, headless

def _calibrate(data: Path, *extra: str, participant: str = "P01") -> int:
    return main(["calibrate", "--participant", participant, "--dry-run", "--headless", "--data", str(data), *extra])


def _cal_dir(data: Path, participant: str = "P01") -> Path:
    return data / "sourcedata" / f"sub-{participant}" / "calibration"


def _result(data: Path, n: int = 1, participant: str = "P01") -> dict:
    return json.loads((_cal_dir(data, participant) / f"sub-{participant}_calibration-{n}.json").read_text())


@pytest.mark.parametrize("method, tolerance", [("staircase", STAIRCASE_TOL_KPA), ("ramp", RAMP_TOL_KPA)])
@pytest.mark.parametrize("model", [RatingModel(35, 6, 5), RatingModel(25, 4, 5)])
def test_both_methods_recover_the_simulated_participants_pressure(tmp_path: Path, method: str, tolerance: float,
                                                                  model: RatingModel) -> None:
    true_kpa = model.pressure_for(50)
    spec = f"p50={model.p50_kpa:g},slope={model.slope_kpa:g},noise={model.noise_sd:g}"
    for seed in range(1, 4):
        participant = f"S{seed}"
        started = time.perf_counter()
        code = _calibrate(tmp_path, "--method", method, "--ceiling", "70", "--seed", str(seed),
                          "--sim-participant", spec, participant=participant)
        took_s = time.perf_counter() - started
        assert code == 0
        assert took_s < 5.0, f"a headless calibration took {took_s:.1f} s"
        result = _result(tmp_path, participant=participant)
        assert abs(result["pressure_kpa"] - true_kpa) <= tolerance, (seed, result["pressure_kpa"], true_kpa)
        assert result["method"] == method and result["dry_run"] and result["simulated_device"]
        log = read_log(_cal_dir(tmp_path, participant) / f"sub-{participant}_calibration-1_log.jsonl")
        keys = [r for r in log.of_kind("key") if r["role"] == "response"]
        if method == "staircase":
            # every rating was given with keys on the rating scale and confirmed
            ratings = list(log.of_kind("rating"))
            assert [r["rating"] for r in ratings] == [s["rating"] for s in result["stimuli"]]
            assert all(not r["timed_out"] and r["t_response"] > r["t_onset"] for r in ratings)
            assert sum(1 for k in keys if k["key"] == "3") == len(ratings)
        else:
            presses = list(log.of_kind("press"))
            assert [p["what"] for p in presses] == ["detection", "target"] * 3
            assert [p["t"] for p in presses] == [k["t"] for k in keys if k["key"] == "3"]
            assert result["detection_kpa"] < result["pressure_kpa"]
        assert next(log.of_kind("end"))["result"] == f"sub-{participant}_calibration-1.json"


def _sets(log) -> list[float]:
    return [float(r["command"].split()[1]) for r in log.of_kind("cuff_cmd") if r["command"].startswith("SET")]


@pytest.mark.parametrize("method, ceiling", [("staircase", "32.07"), ("ramp", "30")])
def test_the_ceiling_is_never_exceeded_and_a_target_above_it_gives_no_result(tmp_path: Path, capsys,
                                                                               method: str, ceiling: str) -> None:
    code = _calibrate(tmp_path, "--method", method, "--ceiling", ceiling, "--sim-participant", "p50=50,noise=2")
    assert code == 3
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err
    assert ("never reached 50" in err) if method == "staircase" else ("reached the ceiling 30 kPa" in err)
    d = _cal_dir(tmp_path)
    assert not (d / "sub-P01_calibration-1.json").exists()
    log = read_log(d / "sub-P01_calibration-1_log.jsonl")
    top = float(ceiling)
    sets = _sets(log)
    assert sets and max(sets) <= top and max(sets) == pytest.approx(32.0 if method == "staircase" else 30.0)
    samples = [r["p"] for r in read_log(d / "sub-P01_calibration-1_pressure.jsonl").records]
    assert len(samples) > 100 and max(samples) <= top + 0.5
    assert max(samples) > top - 1.0     # the ceiling was actually reached, so the check meant something
    assert next(log.of_kind("end"))["status"] == "aborted"


@pytest.mark.parametrize("how, reason", [("button", "participant_stop_button"), ("key", "participant_stop_key")])
def test_the_participant_stop_during_a_ramp_vents_and_exits_3(tmp_path: Path, capsys, how: str, reason: str) -> None:
    code = _calibrate(tmp_path, "--method", "ramp", "--ceiling", "60", "--sim-participant", f"stop={how}@15")
    assert code == 3
    assert "stop" in capsys.readouterr().err
    d = _cal_dir(tmp_path)
    log = read_log(d / "sub-P01_calibration-1_log.jsonl")
    stop = next(r for r in log.of_kind("safety") if r["reason"] == reason)
    vents = [r for r in log.of_kind("cuff_cmd") if r["command"] == "VENT" and r["t_write"] >= stop["t"] - 1e-9]
    assert vents and vents[0]["t_write"] - stop["t"] < 0.1
    if how == "button":
        assert any(e["name"] == "ESTOP" and e["fields"].get("src") == "button" for e in log.of_kind("cuff_event"))
    end = next(log.of_kind("end"))
    assert end["reason"] == reason and end["exit_code"] == 3
    trace = read_log(d / "sub-P01_calibration-1_pressure.jsonl").records
    assert max(r["p"] for r in trace) < 17     # the ramp went no further than the stop (15 kPa + reaction)
    assert trace[-1]["t"] > stop["t"] and trace[-1]["p"] < 2.0   # and the cuff was seen empty
    assert not (d / "sub-P01_calibration-1.json").exists()


def test_results_are_never_overwritten_and_a_failed_attempt_keeps_its_number(tmp_path: Path) -> None:
    assert _calibrate(tmp_path, "--ceiling", "60", "--sim-participant", "stop=key@12") == 3
    assert _calibrate(tmp_path, "--ceiling", "60") == 0
    first = (_cal_dir(tmp_path) / "sub-P01_calibration-2.json").read_bytes()
    assert _calibrate(tmp_path, "--ceiling", "60", "--seed", "9") == 0
    d = _cal_dir(tmp_path)
    assert (d / "sub-P01_calibration-1_log.jsonl").exists() and not (d / "sub-P01_calibration-1.json").exists()
    assert (d / "sub-P01_calibration-2.json").read_bytes() == first
    third, second = _result(tmp_path, 3), json.loads(first)
    assert third["log"] != second["log"] and third["stimuli"] != second["stimuli"]   # a new calibration, not a copy


@pytest.mark.parametrize("args, message", [
    (["--cuff", "line:/dev/does-not-exist"], r"needs --ceiling KPA: .* there is no default"),
    (["--dry-run", "--ceiling", "150"], r"--ceiling must be above 0 and at most 100 kPa, got 150"),
    (["--dry-run", "--headless", "--ceiling", "40", "--repeats", "2"], r"--repeats does not apply to --method staircase"),
    (["--headless", "--ceiling", "40"], r"--headless .* needs --dry-run"),
    (["--cuff", "line:/dev/x", "--ceiling", "40", "--sim-participant", "p50=3"], r"--sim-participant .* needs --dry-run"),
    (["--dry-run", "--ceiling", "40", "--target-rating", "100"], r"--target-rating must be between 0 and 100"),
    (["--dry-run", "--ceiling", "40", "--method", "ramp", "--rate", "0.05"], r"--rate must be 0\.1-100 kPa/s"),
])
def test_bad_input_exits_2_before_any_device(tmp_path: Path, capsys, args: list[str], message: str) -> None:
    code = main(["calibrate", "--participant", "P01", "--data", str(tmp_path), *args])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert re.search(message, err), err
    assert not (tmp_path / "sourcedata").exists()


# ------------------------------------------------------------------ a calibrated protocol runs with it

def test_the_group_given_at_calibration_is_checked_first_and_kept_in_participants_tsv(tmp_path: Path,
                                                                                        capsys) -> None:
    data = tmp_path / "data"
    assert _calibrate(data, "--ceiling", "40", "--field", "group=patient") == 2
    assert "participants declare" in capsys.readouterr().err and not _cal_dir(data).exists()
    assert main(["participants", "declare", str(ROOT / "protocols" / "participants.yaml"), "--data", str(data)]) == 0
    assert _calibrate(data, "--ceiling", "40", "--field", "group=patiant") == 2          # a typo: nothing touched
    assert "group" in capsys.readouterr().err and not _cal_dir(data).exists()
    assert _calibrate(data, "--ceiling", "40", "--field", "group=patient", "--field", "age=41",
                      "--sim-participant", "p50=28,slope=4,noise=3") == 0
    rows = list(csv.DictReader((data / "participants.tsv").open(), delimiter="\t"))
    assert [(r["participant_id"], r["group"], r["age"]) for r in rows] == [("sub-P01", "patient", "41")]
    log = read_log(next(_cal_dir(data).glob("*_log.jsonl")))
    assert [r["fields"] for r in log.of_kind("participant_fields")] == [{"group": "patient", "age": "41"}]


def _calibrated_protocol(tmp_path: Path) -> Path:
    text = (ROOT / "protocols" / "demo.yaml").read_text()
    text = text.replace("target: {value: 20, unit: kPa}", "target: calibrated\n  calibrated_fraction: 0.8")
    text = text.replace("cues:", f"stimuli_dir: {ROOT / 'stimuli'}\n\ncues:", 1)
    path = tmp_path / "calibrated.yaml"
    path.write_text(text)
    return path


def test_a_calibrated_protocol_runs_with_the_participants_pressure(tmp_path: Path) -> None:
    data = tmp_path / "data"
    protocol = _calibrated_protocol(tmp_path)
    assert _calibrate(data, "--ceiling", "40", "--sim-participant", "p50=28,slope=4,noise=3") == 0
    calibrated = _result(data)["pressure_kpa"]
    assert main(["run", str(protocol), "--participant", "P01", "--dry-run", "--headless", "--data", str(data)]) == 0
    log = read_log(data / "sourcedata" / "sub-P01" / "sub-P01_task-demo_run-1" / "log.jsonl")
    pressure = log.header["pressure"]
    assert pressure["source"] == "calibration" and pressure["calibrated_kpa"] == calibrated
    assert pressure["calibration_file"].endswith("sub-P01_calibration-1.json")
    sets = _sets(log)
    assert len(sets) == 2 and all(s == pytest.approx(calibrated * 0.8, abs=0.051) for s in sets)


def test_an_override_needs_a_reason_which_is_recorded(tmp_path: Path, capsys) -> None:
    data = tmp_path / "data"
    protocol = _calibrated_protocol(tmp_path)
    run = ["run", str(protocol), "--participant", "P02", "--dry-run", "--headless", "--data", str(data)]
    assert main(run) == 2
    assert "cuedpain calibrate" in capsys.readouterr().err
    assert main([*run, "--pressure-override", "22"]) == 2
    assert "--pressure-override needs --override-reason" in capsys.readouterr().err
    assert main([*run, "--pressure-override", "22", "--override-reason", "cuff calibration device broken"]) == 0
    log = read_log(data / "sourcedata" / "sub-P02" / "sub-P02_task-demo_run-1" / "log.jsonl")
    pressure = log.header["pressure"]
    # The override stands in for the calibrated pressure; the protocol's level (0.8 x) applies to it.
    assert (pressure["source"], pressure["override_kpa"], pressure["reason"]) == \
        ("override", 22.0, "cuff calibration device broken")
    assert pressure["pressure_kpa"] == pytest.approx(17.6) and pressure["levels"]["target"]["source"] == "override"
    assert _sets(log) == [pytest.approx(17.6), pytest.approx(17.6)]
    assert "17.6 kPa" in capsys.readouterr().out


# ------------------------------------------------------------------ real time, through the pty and a window

@pytest.mark.realtime
def test_a_short_staircase_dry_run_in_real_time_through_the_serial_path(tmp_path: Path, xdisplay) -> None:
    started = time.perf_counter()
    code = main(["calibrate", "--participant", "R01", "--dry-run", "--data", str(tmp_path), "--ceiling", "40",
                 "--start", "24", "--step", "4", "--plateau", "0.5", "--rest", "0.3",
                 "--sim-participant", "p50=28,slope=4,noise=3"])
    took_s = time.perf_counter() - started
    assert code == 0 and took_s < 30
    result = _result(tmp_path, participant="R01")
    assert abs(result["pressure_kpa"] - 28.0) <= STAIRCASE_TOL_KPA
    log = read_log(_cal_dir(tmp_path, "R01") / "sub-R01_calibration-1_log.jsonl")
    assert log.header["cuff"]["port"].startswith("/dev/pts/") and log.header["clock"] == "psychopy.clock.getTime"
    assert log.header["display"]["simulated"] is False
    acks = [r["t_ack"] - r["t_write"] for r in log.of_kind("cuff_cmd") if r["command"].startswith("SET")]
    assert acks and all(0 < a < 0.1 for a in acks)
    print(f"real-time staircase: {took_s:.1f} s, {len(acks)} plateaus, SET acks {max(acks) * 1000:.1f} ms at most")


@pytest.mark.realtime
def test_sigint_during_a_ramp_vents_at_once_and_exits_3(tmp_path: Path, xdisplay) -> None:
    cmd = [sys.executable, "-m", "experiment", "calibrate", "--participant", "R02", "--dry-run", "--method", "ramp",
           "--rate", "5", "--ceiling", "60", "--data", str(tmp_path)]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "DISPLAY": xdisplay})
    log_path = _cal_dir(tmp_path, "R02") / "sub-R02_calibration-1_log.jsonl"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:   # wait for the ramp to be under way (no notification exists)
        if log_path.exists() and '"kind":"stimulus"' in log_path.read_text():
            break
        time.sleep(0.05)
    else:
        proc.kill()
        pytest.fail("the ramp never started")
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=20)
    assert proc.returncode == 3, err
    log = read_log(log_path)
    op = next(log.of_kind("operator"))
    assert op["action"] == "sigint"
    vent = next(r for r in log.of_kind("cuff_cmd") if r["command"] == "VENT" and r["t_write"] >= op["t"])
    assert vent["t_write"] - op["t"] < 0.1
    assert next(log.of_kind("end"))["reason"] == "sigint"
