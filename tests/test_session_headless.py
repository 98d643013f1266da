"""The run command end to end on a virtual clock, and its refusals before any device."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import yaml
from scipy.io import loadmat

from experiment.cli import main
from experiment.log.eventlog import read_log
from experiment.outputs.rundir import RunId

ROOT = Path(__file__).resolve().parents[1]
LOGGIA = ROOT / "protocols" / "loggia2014.yaml"
DEMO = ROOT / "protocols" / "demo.yaml"


def _cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "experiment", *args], capture_output=True, text=True,
                          cwd=cwd or ROOT, timeout=300)


def _run_dir(data: Path, stem: str) -> Path:
    sub = stem.split("_")[0]
    return data / "sourcedata" / sub / stem


def test_full_loggia_protocol_headless_on_plan_without_drift(tmp_path: Path) -> None:
    data = tmp_path / "data"
    code = main(["run", str(LOGGIA), "--participant", "P01", "--dry-run", "--headless", "--data", str(data)])
    assert code == 0
    run_dir = _run_dir(data, "sub-P01_task-loggia2014_run-1")
    log = read_log(run_dir / "log.jsonl")
    assert log.header["dry_run"] is True and log.header["cuff"]["simulated"] is True
    frame_s = next(log.of_kind("display"))["frame_s"]
    onsets = [r for r in log.of_kind("onset") if r["trial"] > 0]
    plan = {r["i"]: r for r in log.of_kind("plan")}
    assert len(onsets) == sum(1 for p in plan.values() if p["trial"] > 0)
    errors = np.array([r["t"] - r["planned_t"] for r in onsets])
    times = np.array([r["onset_s"] for r in onsets])
    # each visual change lands on the first flip at or after its time minus half a frame
    assert np.all(errors >= -frame_s / 2 - 1e-9) and np.all(errors < frame_s / 2 + 1e-9)
    # no drift from the first trial to the last: the error does not grow with time
    slope = np.polyfit(times, errors, 1)[0]
    assert abs(slope) * times[-1] < frame_s / 2
    # phases timed from target reached were re-anchored to the measured reach
    assert sum(1 for _ in log.of_kind("reanchor")) == 8
    # every stimulus was commanded and acknowledged, and the cuff ended vented
    sets = [r for r in log.of_kind("cuff_cmd") if r["command"].startswith("SET")]
    assert len(sets) == 8 and all(r["ok"] and r["t_ack"] >= r["t_write"] for r in sets)
    end = next(log.of_kind("end"))
    assert end["status"] == "completed" and end["exit_code"] == 0
    pressure = read_log(run_dir / "pressure.jsonl")
    assert pressure.records[-1]["p"] < 1.0
    # outputs were derived and say it was a dry run
    events = data / "sub-P01" / "func" / "sub-P01_task-loggia2014_run-1_events.tsv"
    text = events.read_text()
    assert "nan" not in text.lower() and "\t\t" not in text
    prov = json.loads((run_dir / "provenance.json").read_text())
    assert prov["dry_run"] is True


def test_ratings_are_answered_by_the_simulated_participant(tmp_path: Path) -> None:
    data = tmp_path / "data"
    assert main(["run", str(DEMO), "--participant", "P02", "--dry-run", "--headless", "--data", str(data)]) == 0
    log = read_log(_run_dir(data, "sub-P02_task-demo_run-1") / "log.jsonl")
    ratings = list(log.of_kind("rating"))
    assert len(ratings) == 2
    for r in ratings:
        assert not r["timed_out"] and 0 <= r["rating"] <= 100 and r["response_time_s"] > 0


def test_an_existing_run_is_never_overwritten(tmp_path: Path) -> None:
    data = tmp_path / "data"
    args = ["run", str(DEMO), "--participant", "P03", "--dry-run", "--headless", "--data", str(data)]
    assert main(args) == 0
    log_path = _run_dir(data, "sub-P03_task-demo_run-1") / "log.jsonl"
    before = log_path.read_bytes()
    proc = _cli(*args)
    assert proc.returncode == 2
    assert "already exists" in proc.stderr and "run 2 is free (--run 2)" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert log_path.read_bytes() == before
    assert main([*args, "--run", "next"]) == 0
    assert _run_dir(data, "sub-P03_task-demo_run-2").is_dir()


@pytest.mark.parametrize("args, message", [
    (["--participant", "../x"], "participant '../x' is not a valid BIDS label"),
    (["--participant", "P1", "--session", "a b"], "session 'a b' is not a valid BIDS label"),
    (["--participant", "P1", "--headless"], "--headless runs on a virtual clock with simulated devices: it needs --dry-run"),
    (["--participant", "P1"], "no cuff given"),
    (["--participant", "P1", "--cuff", "sim", "--scanner", "keyboard"], "--cuff sim is only allowed with --dry-run"),
    (["--participant", "P1", "--cuff", "line:/dev/ttyUSB0", "--scanner", "sim"], "--scanner sim is only allowed with --dry-run"),
    (["--participant", "P1", "--dry-run", "--headless", "--run", "0"], "from 1 to 99"),
])
def test_bad_input_exits_2_with_a_clear_message(tmp_path: Path, args: list[str], message: str) -> None:
    proc = _cli("run", str(DEMO), "--data", str(tmp_path / "data"), *args)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "data" / "sourcedata").exists()


def test_a_cuff_port_that_does_not_open_is_exit_4_and_never_simulated(tmp_path: Path, xdisplay: str) -> None:
    proc = _cli("run", str(DEMO), "--participant", "P1", "--data", str(tmp_path / "data"),
                "--cuff", "line:/dev/does-not-exist", "--scanner", "serial:/dev/also-missing", "--yes")
    assert proc.returncode == 4, proc.stderr
    assert "/dev/does-not-exist" in proc.stderr and "Traceback" not in proc.stderr
    assert "sim" not in proc.stdout.lower()
    assert not (tmp_path / "data" / "sourcedata").exists()


def test_a_missing_stimulus_is_refused_before_the_cuff_is_touched(tmp_path: Path) -> None:
    from experiment.clock import RealClock
    from experiment.cuff.simdevice import SimCuffDevice
    from experiment.cuff.simserver import start_sim_server

    protocol = tmp_path / "p.yaml"
    stimuli = tmp_path / "stimuli"
    stimuli.mkdir()
    text = DEMO.read_text().replace("cues:", f"stimuli_dir: {stimuli}\ncues:", 1)
    protocol.write_text(text)
    server = start_sim_server(SimCuffDevice, RealClock())
    try:
        proc = _cli("run", str(protocol), "--participant", "P1", "--data", str(tmp_path / "data"),
                    "--cuff", f"line:{server.path}", "--scanner", "serial:/dev/null")
        assert proc.returncode == 2, proc.stderr
        assert "orange_triangle.png" in proc.stderr and "Traceback" not in proc.stderr
        assert server.opens == 0 and server.rx_log == []  # the cuff's port was never opened
    finally:
        server.close()


def _two_rating_protocol(path: Path) -> Path:
    """The demo with an expectation rating (before inflation) and a pain rating (after deflation)."""
    from tests.protocol_samples import edited, load_dict, protocol_from

    data = load_dict(DEMO)
    phases = data["trial_types"]["pain"]["phases"]
    assert [p["name"] for p in phases][1:2] == ["pain"] and phases[4]["name"] == "rating"
    phases.insert(1, {"name": "expectation", "kind": "rating", "cue": "pain_cue", "duration": 4,
                      "bids_trial_type": "expectation"})
    phases[5] = {**phases[5], "name": "pain_rating", "bids_trial_type": "pain_rating"}
    data = edited(data, **{"metadata.task": "tworatings", "trials.counts.pain": 4, "scan.n_volumes": 100,
                           "rating.step": 5, "safety.max_cumulative_inflation_per_run_s": 60,
                           "stimuli_dir": str(ROOT / "stimuli")})
    protocol_from(data)   # valid before it is run
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def _check_every_rating_kept(data: Path, run_dir: Path) -> None:
    """Each rating record of the log, in events.tsv, trials.csv and the FSL and SPM exports."""
    log = read_log(run_dir / "log.jsonl")
    plan = {r["i"]: r for r in log.of_kind("plan")}
    onset_t = {r["i"]: r["t"] for r in log.of_kind("onset")}
    rated = {i for i, p in plan.items() if p["phase_kind"] == "rating"}
    records = list(log.of_kind("rating"))
    assert sorted(r["i"] for r in records) == sorted(rated) and len(rated) == 8   # every rating phase answered
    given: dict[tuple[int, str], dict] = {}
    for r in records:
        assert (r["trial"], r["phase"]) == (plan[r["i"]]["trial"], plan[r["i"]]["phase"]) and not r["timed_out"]
        assert r["t_onset"] == onset_t[r["i"]]
        given[(r["trial"], r["phase"])] = r
    trials = sorted({n for n, _ in given})
    # the simulated participant's expectation and pain rating differ, so a mix-up would show
    assert any(given[(n, "expectation")]["rating"] != given[(n, "pain_rating")]["rating"] for n in trials)
    assert any(given[(n, "expectation")]["response_time_s"] != given[(n, "pain_rating")]["response_time_s"]
               for n in trials)
    stem = run_dir.name
    events = pd.read_csv(data / "sub-P05" / "func" / f"{stem}_events.tsv", sep="\t", na_values=["n/a"],
                         keep_default_na=False)
    for (n, phase), r in given.items():
        row = events[(events["trial"] == n) & (events["phase"] == phase)]
        assert len(row) == 1 and row["trial_type"].item() == phase
        assert row["rating"].item() == pytest.approx(r["rating"], abs=0.005)
        assert row["response_time"].item() == pytest.approx(r["t_response"] - onset_t[r["i"]], abs=1e-4)
    assert events.loc[~events["phase"].isin(["expectation", "pain_rating"]), "rating"].isna().all()
    table = pd.read_csv(run_dir / "trials.csv", na_values=["n/a"], keep_default_na=False).set_index("trial")
    assert "rating" not in table.columns
    for (n, phase), r in given.items():
        col = phase if phase.endswith("_rating") else f"{phase}_rating"
        assert table.loc[n, col] == pytest.approx(r["rating"], abs=0.005)
        assert table.loc[n, f"{phase}_response_time"] == pytest.approx(r["response_time_s"], abs=1e-4)
        assert not table.loc[n, f"{col}_timed_out"]
    pain = events[events["trial_type"] == "pain"]
    mat = loadmat(run_dir / "exports" / f"{stem}_spm_multiple_conditions.mat")
    names = [str(mat["names"][0, k][0]) for k in range(mat["names"].shape[1])]
    pmod = mat["pmod"][0, names.index("pain")]
    params = {str(pmod["name"][0, j][0]): pmod["param"][0, j].ravel() for j in range(pmod["name"].shape[1])}
    assert set(params) == {"expectation_rating", "pain_rating"}   # the pressure is constant: left out
    for phase, col in (("expectation", "expectation_rating"), ("pain_rating", "pain_rating")):
        values = np.array([given[(n, phase)]["rating"] for n in pain["trial"]], dtype=float)
        np.testing.assert_allclose(params[col], values)
        fsl = np.loadtxt(run_dir / "exports" / "fsl" / f"{stem}_pain_pmod-{col}.txt", ndmin=2)
        np.testing.assert_allclose(fsl[:, 0], pain["onset"], atol=1e-4)
        np.testing.assert_allclose(fsl[:, 2], values - values.mean(), atol=1e-4)


def test_two_rating_phases_are_each_kept_in_every_output_and_after_rebuild(tmp_path: Path) -> None:
    from tests.logfactory import add_placeholder_bold, bids_validate

    protocol = _two_rating_protocol(tmp_path / "two_ratings.yaml")
    data = tmp_path / "data"
    proc = _cli("run", str(protocol), "--participant", "P05", "--dry-run", "--headless", "--data", str(data))
    assert proc.returncode == 0, proc.stderr
    run_dir = _run_dir(data, "sub-P05_task-tworatings_run-1")
    _check_every_rating_kept(data, run_dir)
    func = data / "sub-P05" / "func"
    events_json = func / f"{run_dir.name}_events.json"   # kept: it names the run that may replace these files
    derived = [func / f"{run_dir.name}_events.tsv", run_dir / "trials.csv", *(run_dir / "exports").rglob("*.*")]
    before = {p: p.read_bytes() for p in [events_json, *derived]}
    for p in derived:
        p.unlink()
    proc = _cli("rebuild", str(run_dir))
    assert proc.returncode == 0, proc.stderr
    assert {p: p.read_bytes() for p in [events_json, *derived] if p.exists()} == before   # the same, from the log
    _check_every_rating_kept(data, run_dir)
    header = json.loads((run_dir / "log.jsonl").read_text().split("\n")[0])
    onsets = pd.read_csv(run_dir / "pulses.tsv", sep="\t", na_values=["n/a"])["onset"]
    add_placeholder_bold(SimpleNamespace(rid=RunId("P05", None, "tworatings", 1), data_root=data,
                                         tr_s=header["tr_s"], run_dir=run_dir), int((onsets >= 0).sum()))
    errors, _ = bids_validate(data)   # the rating levels' HED tags are valid
    assert errors == [], [(e["code"], e.get("location")) for e in errors]


def test_a_protocol_at_the_preflight_bound_runs_without_an_interlock(tmp_path: Path) -> None:
    """Limits set to exactly the modelled worst case (default cuff timing) at the fastest ramp
    (100 kPa/s, where the simulated cuff lags target / rate the most): pre-flight passes, the run
    completes, and no interlock fires, though each stimulus outlasts the ideal-ramp count that
    pre-flight used to make."""
    import yaml

    from experiment.protocol.schedule import worst_case
    from tests.protocol_samples import edited, load_dict, protocol_from

    changes = {"stimulation.rate_kpa_s": 100, "stimuli_dir": str(ROOT / "stimuli")}
    wc = worst_case(protocol_from(edited(load_dict(DEMO), **changes)))
    assert (wc.inflation_per_stimulus_s, wc.inflation_per_run_s) == (7.49, 12.54)  # 3 + 1.22 + 2 + 0.05 + 1.22
    limits = {"safety.max_inflation_per_stimulus_s": wc.inflation_per_stimulus_s,
              "safety.max_cumulative_inflation_per_run_s": wc.inflation_per_run_s}
    protocol = tmp_path / "at-bound.yaml"
    protocol.write_text(yaml.safe_dump(edited(load_dict(DEMO), **changes, **limits)))
    data = tmp_path / "data"
    proc = _cli("run", str(protocol), "--participant", "P09", "--dry-run", "--headless", "--data", str(data))
    assert proc.returncode == 0, proc.stderr
    run_dir = _run_dir(data, "sub-P09_task-demo_run-1")
    log = read_log(run_dir / "log.jsonl")
    assert list(log.of_kind("safety")) == []
    assert next(log.of_kind("end"))["status"] == "completed"
    cmds = [r for r in log.of_kind("cuff_cmd") if r["purpose"] in ("stimulate", "deflate")]
    sets = [r["t_write"] for r in cmds if r["command"].startswith("SET")]
    deflates = [r["t_write"] for r in cmds if r["command"] == "DEFLATE"]
    held = [b - a for a, b in zip(sets, deflates)]
    assert len(held) == 2
    ideal_count = 3 + 0.2 + 2    # what pre-flight counted before: phases at their longest, ramp target / rate
    assert all(ideal_count < h < wc.inflation_per_stimulus_s for h in held), held
    assert sum(held) < wc.inflation_per_run_s
    # the device's count (time at or above 1 kPa) also stays under the per-stimulus limit
    samples = [r for r in read_log(run_dir / "pressure.jsonl").records if r.get("kind") == "p"]
    above = [r["t"] for r in samples if r["p"] >= 1.0]
    runs, start, prev = [], above[0], above[0]
    for t in above[1:]:
        if t - prev > 0.5:
            runs.append(prev - start)
            start = t
        prev = t
    runs.append(prev - start)
    assert len(runs) == 2 and all(r < wc.inflation_per_stimulus_s for r in runs), runs
