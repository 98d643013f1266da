"""One protocol format for every cued pain paradigm: the four reference families run as written.

Loggia onset and relief cues (protocols/loggia2014.yaml), a tonic scan with ratings during
the stimulus (tonic_a2cps.yaml), a cue-intensity expectancy design with invalid trials and
two calibrated levels (cue_intensity.yaml) and an onset-only design (onset_only.yaml): each
validates, plans, runs headless through the real command line (calibrated ones after a
dry-run calibration), passes the BIDS validator and loads into nilearn. Every figure is
checked against the run's own log: the pressure of each stimulus, every rating.
"""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import yaml

from experiment.errors import InputError
from experiment.log.eventlog import read_log
from experiment.outputs.rundir import RunId
from experiment.protocol.design import design_efficiency
from experiment.protocol.model import load_protocol, parse_protocol
from experiment.protocol.schedule import build_schedule
from tests.logfactory import add_placeholder_bold, bids_validate
from tests.protocol_samples import DELETE, DEMO, LOGGIA, PROTOCOLS, ROOT, edited, load_dict, protocol_from

FAMILIES = {  # protocol -> (task, calibrate with --target-rating, or None for a fixed pressure)
    "loggia2014": ("loggia2014", None),
    "tonic_a2cps": ("tonicA2CPS", 50),
    "cue_intensity": ("cueintensity", 75),
    "onset_only": ("onsetonly", 50),
}


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "experiment", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, stdin=subprocess.DEVNULL)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every family run once, headless, by participant P01 (after a dry-run calibration where needed)."""
    data = tmp_path_factory.mktemp("families") / "data"
    for name, (_, target) in FAMILIES.items():
        if target is not None:
            proc = _cli("calibrate", "--participant", "P01", "--session", name.replace("_", ""), "--dry-run",
                        "--headless", "--ceiling", "60", "--target-rating", str(target), "--data", str(data),
                        "--protocol", str(PROTOCOLS / f"{name}.yaml"), "--sim-participant", "p50=32,slope=6,noise=2")
            assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr
        proc = _cli("run", str(PROTOCOLS / f"{name}.yaml"), "--participant", "P01",
                    "--session", name.replace("_", ""), "--dry-run", "--headless", "--data", str(data))
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr
    return data


def _run_dir(data: Path, name: str) -> Path:
    task, _ = FAMILIES[name]
    ses = name.replace("_", "")
    return data / "sourcedata" / "sub-P01" / f"ses-{ses}" / f"sub-P01_ses-{ses}_task-{task}_run-1"


def _events(data: Path, name: str) -> pd.DataFrame:
    run_dir = _run_dir(data, name)
    path = data / "sub-P01" / run_dir.parent.name / "func" / f"{run_dir.name}_events.tsv"
    return pd.read_csv(path, sep="\t", na_values=["n/a"], keep_default_na=False)


@pytest.mark.parametrize("name", list(FAMILIES))
def test_every_stimulus_gets_its_levels_pressure_in_the_log_and_the_recording(dataset: Path, name: str) -> None:
    log = read_log(_run_dir(dataset, name) / "log.jsonl")
    levels = log.header["pressure"]["levels"]
    plan = {r["i"]: r for r in log.of_kind("plan")}
    sets = {r["i"]: float(r["command"].split()[1]) for r in log.of_kind("cuff_cmd")
            if r["command"].startswith("SET") and r["ok"]}
    inflates = [i for i, r in plan.items() if r["cuff"] == "inflate"]
    assert inflates and sorted(sets) == sorted(inflates)          # one SET per stimulus, none elsewhere
    for i in inflates:
        expected = levels[plan[i]["level"]]["pressure_kpa"]
        assert sets[i] == pytest.approx(expected, abs=0.051)       # CUFF/1 takes one decimal
    events = _events(dataset, name)
    pain = events[events["cuff"] == "inflate"]
    assert len(pain) == len(inflates)
    for _, row in pain.iterrows():
        assert row["target_pressure_kpa"] == pytest.approx(levels[row["pressure_level"]]["pressure_kpa"], abs=1e-3)
        assert row["measured_pressure_kpa"] == pytest.approx(row["target_pressure_kpa"], abs=1.5)


@pytest.mark.parametrize("name", list(FAMILIES))
def test_every_rating_is_in_events_tsv_on_its_own_row(dataset: Path, name: str) -> None:
    log = read_log(_run_dir(dataset, name) / "log.jsonl")
    events = _events(dataset, name)
    records = list(log.of_kind("rating"))
    assert records
    for r in records:
        row = events[(events["trial"] == r["trial"]) & (events["phase"] == r["phase"])]
        assert len(row) == 1, (r["trial"], r["phase"])
        assert row["rating"].item() == pytest.approx(r["rating"], abs=0.005)
    assert events["rating"].notna().sum() == sum(r["rating"] is not None for r in records)


@pytest.mark.parametrize("name", list(FAMILIES))
def test_every_rating_and_level_is_in_trials_csv(dataset: Path, name: str) -> None:
    from experiment.outputs.derive import rating_columns

    log = read_log(_run_dir(dataset, name) / "log.jsonl")
    trials = pd.read_csv(_run_dir(dataset, name) / "trials.csv", keep_default_na=False, na_values=["n/a", ""])
    records = list(log.of_kind("rating"))
    phases = list(dict.fromkeys(r["phase"] for r in records))
    column = {c.phase: c.rating for c in rating_columns(phases)}
    for r in records:
        row = trials[trials["trial"] == r["trial"]]
        assert len(row) == 1
        value = row[column[r["phase"]]].item()
        if r["rating"] is None:
            assert pd.isna(value)
        else:
            assert value == pytest.approx(r["rating"], abs=0.005), (r["trial"], r["phase"])
    plan = [p for p in log.of_kind("plan") if p["cuff"] == "inflate"]
    for p in plan:
        assert trials.loc[trials["trial"] == p["trial"], "pressure_level"].item() == p["level"]


def test_the_participants_cue_mapping_is_in_every_output(dataset: Path) -> None:
    run_dir = _run_dir(dataset, "cue_intensity")
    header = read_log(run_dir / "log.jsonl").header
    mapping = header["cue_mapping"]
    assert (mapping["index"], mapping["select"]) == (0, "participant_number")     # P01: the first mapping
    low = mapping["roles"]["low_cue"]
    events_json = json.loads((dataset / "sub-P01" / run_dir.parent.name / "func" /
                              f"{run_dir.name}_events.json").read_text())
    assert events_json["CuedpainRun"]["CueMapping"] == mapping
    assert "low_cue" in events_json["cue"]["Levels"][low] and "mapping 1" in events_json["cue"]["Description"]
    trials = pd.read_csv(run_dir / "trials.csv")
    assert set(trials["cue_mapping"]) == {1}
    shown = set(_events(dataset, "cue_intensity").query("phase == 'cue'")["cue"])
    assert shown == set(mapping["roles"].values())                       # the cues drawn are the mapped ones
    provenance = json.loads((run_dir / "provenance.json").read_text())
    assert provenance["cue_mapping"] == mapping


@pytest.mark.parametrize("name", list(FAMILIES))
def test_nilearn_builds_one_regressor_per_trial_type(dataset: Path, name: str) -> None:
    from nilearn.glm.first_level import make_first_level_design_matrix

    events = _events(dataset, name)
    header = read_log(_run_dir(dataset, name) / "log.jsonl").header
    frame_times = np.arange(header["n_volumes"]) * header["tr_s"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dm = make_first_level_design_matrix(frame_times, events[["onset", "duration", "trial_type"]],
                                            hrf_model="glover")
    assert set(events["trial_type"]) <= set(dm.columns)
    modelled = {p["bids_trial_type"] for p in read_log(_run_dir(dataset, name) / "log.jsonl").of_kind("plan")
                if p["bids_trial_type"]}
    assert modelled <= set(dm.columns)


def test_the_families_pass_the_bids_validator(dataset: Path) -> None:
    for name in FAMILIES:
        run_dir = _run_dir(dataset, name)
        header = read_log(run_dir / "log.jsonl").header
        onsets = pd.read_csv(run_dir / "pulses.tsv", sep="\t", na_values=["n/a"])["onset"]
        rid = RunId("P01", name.replace("_", ""), header["task"], 1)
        add_placeholder_bold(SimpleNamespace(rid=rid, data_root=dataset, tr_s=header["tr_s"], run_dir=run_dir),
                             int((onsets >= 0).sum()))
    errors, _ = bids_validate(dataset)
    assert errors == [], [(e["code"], e.get("location")) for e in errors]


def test_sidecars_describe_the_protocol_not_loggia(dataset: Path) -> None:
    run_dir = _run_dir(dataset, "cue_intensity")
    side = json.loads((dataset / "sub-P01" / "ses-cueintensity" / "func" / f"{run_dir.name}_events.json").read_text())
    hed = side["trial_type"]["HED"]
    assert "Participant-response" in hed["expectation_rating"] and "Participant-response" in hed["pain_rating"]
    assert "How much pain do you expect" in hed["expectation_rating"]
    assert "low cue, high pressure" in side["trial_type"]["Levels"]["cue_low"]
    assert "scale expectation: 'How much pain do you expect?'" in side["rating"]["Description"]
    assert set(side["pressure_level"]["Levels"]) == {"low", "high"}
    task = json.loads((dataset / "task-cueintensity_bold.json").read_text())
    assert task["TaskDescription"].startswith("A visual cue predicts a low or a high cuff pressure")
    trials = pd.read_csv(run_dir / "trials.csv", na_values=["n/a"], keep_default_na=False)
    assert {"expectation_rating", "pain_rating", "pressure_level"} <= set(trials.columns)
    assert set(trials["pressure_level"]) == {"low", "high"}
    log = read_log(run_dir / "log.jsonl")
    assert log.header["cue_mapping"]["index"] == 0 and log.header["cue_mapping"]["roles"]["low_cue"] == "blue_circle"


def test_calibrate_reports_every_level_and_the_run_takes_them_from_the_fit(dataset: Path) -> None:
    cal = dataset / "sourcedata" / "sub-P01" / "calibration"
    result = next(json.loads(p.read_text()) for p in sorted(cal.glob("*.json"))
                  if json.loads(p.read_text())["session"] == "cueintensity")
    assert set(result["levels"]["levels"]) == {"low", "high"}
    low, high = (result["levels"]["levels"][n]["pressure_kpa"] for n in ("low", "high"))
    assert 0 < low < high <= 60
    pressure = read_log(_run_dir(dataset, "cue_intensity") / "log.jsonl").header["pressure"]
    assert pressure["levels"]["low"]["pressure_kpa"] == pytest.approx(low, abs=0.01)
    assert pressure["levels"]["high"]["rating"] == 70


# ---------------------------------------------------------------- the format


def test_old_protocols_validate_unchanged_and_give_the_same_timeline() -> None:
    """The shipped files gained `checks:`; the same files without it (as users wrote them before)
    still validate, and give the same timeline."""
    for path in (DEMO, LOGGIA):
        text = path.read_text()
        old = "\n".join(line for line in text.splitlines() if not line.startswith("checks:"))
        a = build_schedule(parse_protocol(old, base_dir=PROTOCOLS), participant="P03")
        b = build_schedule(load_protocol(path), participant="P03")
        assert a.to_tsv() == b.to_tsv()


@pytest.mark.parametrize("change, message", [
    ({"stimulation.levels": {"low": {"value": 20, "unit": "kPa"}}},
     r"stimulation\.levels: give either 'target' .* or 'levels' .*, not both"),
    ({"stimulation.target": DELETE}, r"stimulation\.target: give either 'target'"),
    ({"stimulation.target": DELETE, "stimulation.levels": {"a": {"value": 20, "unit": "kPa", "rating": 50}}},
     r"stimulation\.levels\.a: give exactly one of .*; got value, rating"),
    ({"stimulation.target": DELETE, "stimulation.levels": {"a": {"value": 20}}},
     r"stimulation\.levels\.a\.unit: required key 'unit' is missing"),
    ({"stimulation.target": DELETE, "stimulation.levels": {"a": {"value": 90, "unit": "kPa"}}},
     r"stimulation\.levels\.a: 90\.0 kPa is above safety\.max_pressure"),
    ({"stimulation.target": DELETE, "stimulation.levels": {"a": {"fraction": 0.5}, "b": {"rating": 60}}},
     r"trial_types\.pain\.phases\[1\]\.level: which pressure level does this stimulus use\? .* a, b"),
    ({"trial_types.pain.level": "hgih"}, r"trial_types\.pain\.level: no pressure level named 'hgih'"),
    ({"trial_types.pain.phases[0].level": "target"}, r"phases\[0\]\.level: a pressure level is for the phase that "
                                                     r"inflates"),
    ({"trial_types.pain.phases[4].scale": "other"}, r"phases\[4\]\.scale: no rating scale named 'other'"),
    ({"checks": ["onset_cue", "relief"]}, r"checks\[1\]: must be one of .*did you mean .relief_cue"),
    ({"design": {"contrasts": {"x": {"pain_anticipaton": 1}}}},
     r"design\.contrasts\.x\.pain_anticipaton: no phase has bids_trial_type 'pain_anticipaton' \(did you mean "
     r"'pain_anticipation'\?\)"),
])
def test_level_scale_check_and_contrast_mistakes_are_refused_with_the_field(change: dict, message: str) -> None:
    import re
    with pytest.raises(InputError) as err:
        protocol_from(edited(load_dict(DEMO), **change))
    assert re.search(message, err.value.message), err.value.message


def test_paradigm_checks_are_asked_for_not_assumed() -> None:
    """A design whose stimulus follows fixation (no onset cue) validates without checks, and is
    refused, naming the phase, by a protocol that asks for them."""
    d = edited(load_dict(DEMO), **{"trial_types.pain.phases[0].cue": "fixation"})
    d_no_checks = edited(d, **{"checks": DELETE})
    protocol_from(d_no_checks)
    with pytest.raises(InputError, match=r"phases\[0\]\.cue: the phase before inflation must show the pain-onset cue"):
        protocol_from(d)


def test_several_scales_each_with_its_own_question() -> None:
    d = edited(load_dict(DEMO), **{"rating": DELETE, "ratings": {
        "expectation": {"question": "How much pain do you expect?", "min": 0, "max": 10, "step": 1, "timeout_s": 3},
        "pain": {"question": "How painful was it?", "timeout_s": 3}}})
    phases = d["trial_types"]["pain"]["phases"]
    phases.insert(1, {"name": "expectation", "kind": "rating", "scale": "expectation", "cue": "pain_cue",
                      "duration": 3})
    with pytest.raises(InputError, match=r"phases\[5\]\.scale: which rating scale does this phase show\?"):
        protocol_from(d)
    phases[5]["scale"] = "pain"
    p = protocol_from(edited(d, **{"scan.n_volumes": 60, "safety.max_cumulative_inflation_per_run_s": 30}))
    t = build_schedule(p)
    assert [e.scale for e in t.events if e.kind == "rating"][:2] == ["expectation", "pain"]
    assert p.scales["expectation"].max == 10


def test_a_lab_counterbalancing_table_chooses_the_mapping(tmp_path: Path) -> None:
    d = edited(load_dict(LOGGIA), **{"cue_mapping.select": "table", "cue_mapping.table": "cb.tsv",
                                     "stimuli_dir": str(PROTOCOLS.parent / "stimuli")})
    (tmp_path / "cb.tsv").write_text("participant_id\tmapping\nsub-P01\t2\nP02\t1\n")
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(d, sort_keys=False))
    p = load_protocol(path)
    assert build_schedule(p, participant="P01").cue_mapping_index == 1
    assert build_schedule(p, participant="P02").cue_mapping_index == 0
    with pytest.raises(InputError, match=r"sub-P03 is not in the counterbalancing table cb\.tsv"):
        build_schedule(p, participant="P03")
    (tmp_path / "cb.tsv").write_text("participant_id\tmapping\nP01\t3\n")
    with pytest.raises(InputError, match=r"cb\.tsv:2: mapping must be a number from 1 to 2"):
        load_protocol(path)


def test_plan_reports_the_declared_contrasts_and_searches_orders(tmp_path: Path) -> None:
    p = load_protocol(PROTOCOLS / "cue_intensity.yaml")
    eff = design_efficiency(build_schedule(p, participant="P01"), contrasts=p.contrasts)
    assert set(eff.contrasts) == {"anticipation_high_vs_low", "cue_high_vs_low"}
    assert all(v > 0 for v in eff.contrasts.values()) and eff.score == min(eff.contrasts.values())
    proc = _cli("plan", str(PROTOCOLS / "cue_intensity.yaml"), "--participant", "P01", "--out", str(tmp_path / "p"),
                "--search", "6", "--seed", "100")
    assert proc.returncode == 0, proc.stderr
    line = next(x for x in proc.stdout.splitlines() if x.startswith("searched 6 orders"))
    best = int(line.split("the best is seed ")[1].split()[0])
    assert 100 <= best <= 105
    scores = [design_efficiency(build_schedule(p, seed=s, participant="P01"), contrasts=p.contrasts).score
              for s in range(100, 106)]
    assert scores[best - 100] == max(scores)                     # the best really is the best of those tried
    assert "contrast anticipation_high_vs_low: efficiency" in proc.stdout
