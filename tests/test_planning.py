"""`cuedpain validate` and `cuedpain plan`: exit codes, summaries, files, design efficiency."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import yaml

from experiment.protocol.design import R_LIMIT, VIF_LIMIT, _design, design_efficiency
from experiment.errors import InputError
from experiment.procedures.planning import summary, write_plan
from experiment.protocol.model import load_protocol
from experiment.protocol.schedule import build_schedule, worst_case
from tests.protocol_samples import DEMO, LOGGIA, ROOT, edited, load_dict, protocol_from

PNG = b"\x89PNG\r\n\x1a\n"


def cuedpain(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "experiment", *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=120)


# ---------------------------------------------------------------- validate


def test_validate_reference_protocols():
    r = cuedpain("validate", "protocols/demo.yaml")
    assert r.returncode == 0 and r.stderr == ""
    lines = r.stdout.splitlines()
    assert lines[0] == "protocols/demo.yaml: valid"
    assert "trials per run: 2 (pain 2); order seed 1, no limit on trials of a type in a row" in lines
    assert "run length: 35.5 s with seed 1; worst case 37 s" in lines
    assert ("volumes: 36 needed (worst case 37), 40 declared x TR 1 s = 40 s; 2 pulses discarded before t0"
            in lines)
    assert ("pressure: 0 to 20 kPa (150 mmHg); target 20 kPa (150 mmHg); ramp 40 kPa/s (0.5 s); ceiling 30 kPa "
            "(225 mmHg)") in lines
    assert ("cuff inflated: 11 s = 31.0% of the run (worst case 13.2 s, limit 20 s); per stimulus at most 8.15 s "
            "(limit 10 s)") in lines
    assert ("worst cases counted with a slower cuff: ramp up to 1.55 s, release up to 1.55 s after DEFLATE "
            "(rig file: cuff_timing)") in lines
    assert len(lines) <= 24  # one screen
    r = cuedpain("validate", "protocols/loggia2014.yaml")
    assert r.returncode == 0, r.stderr
    assert "cue mapping: 2 mappings by participant_hash; no participant given: mapping 0" in r.stdout


@pytest.mark.parametrize("text,message", [
    ("cuedpain_version: dev\nmetadata: {name: x, task: x}\ncues: 3\ntrial_types: {}\ntrials: {}\n"
     "stimulation: {}\nsafety: {}\nscan: {}\n",
     r"^cuedpain validate: {path}:3:7: cues: must be a mapping of cue -> entry, each cue a name of lowercase "
     r"letters, digits and '_', starting with a letter \(at most 40\), got 3$"),
    ("a: [1, 2\n", r"^cuedpain validate: {path}:2:1: YAML syntax error"),
])
def test_validate_invalid_file(tmp_path, text, message):
    import re

    path = tmp_path / "bad.yaml"
    path.write_text(text)
    r = cuedpain("validate", str(path))
    assert r.returncode == 2 and r.stdout == ""
    assert re.match(message.format(path=re.escape(str(path))), r.stderr), r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.splitlines()) == 1


def test_validate_preflight_failure_and_missing_file(tmp_path):
    path = tmp_path / "short.yaml"
    path.write_text(yaml.safe_dump(edited(load_dict(DEMO), stimuli_dir=str(ROOT / "stimuli"),
                                          **{"scan.n_volumes": 30})))
    r = cuedpain("validate", str(path))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "scan.n_volumes: the run can last up to 37 s" in r.stderr
    r = cuedpain("validate", str(tmp_path / "none.yaml"))
    assert r.returncode == 2 and r.stderr.strip().endswith("none.yaml: protocol file not found")


def _demo_file(tmp_path, name: str, **changes) -> str:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(edited(load_dict(DEMO), stimuli_dir=str(ROOT / "stimuli"), **changes)))
    return str(path)


@pytest.mark.parametrize("changes,field,numbers", [
    # ideal ramp: 3 + 0.5 + 2 = 5.5 s fits 5.67 s by 0.17 s; a real ramp (up to 1.55 s), the slack and
    # the release (up to 1.55 s) do not
    ({"safety.max_inflation_per_stimulus_s": 5.67}, "trial_types.pain.phases[1]: ",
     "the cuff can hold air 8.15 s (phases pain to relief_anticipation at their longest, the ramp counted as up to "
     "1.55 s, not 0.5 s, since pain waits for the target; SET to DEFLATE up to 6.6 s plus up to 1.55 s to release), "
     "over safety.max_inflation_per_stimulus_s (5.67 s)"),
    # ideal ramp: 2 x 5.5 = 11 s fits 11.17 s; 2 x 6.6 s does not
    ({"safety.max_cumulative_inflation_per_run_s": 11.17}, "safety.max_cumulative_inflation_per_run_s: ",
     "the cuff can be inflated 13.2 s in one run (every stimulus at its longest from SET to DEFLATE, the ramp "
     "counted as up to 1.55 s where a phase waits for it), over this limit (11.17 s); use fewer or shorter stimuli"),
])
def test_validate_refuses_what_only_an_ideal_cuff_would_fit(tmp_path, changes, field, numbers):
    path = _demo_file(tmp_path, "tight.yaml", **changes)
    with pytest.raises(InputError):
        build_schedule(protocol_from(edited(load_dict(DEMO), **changes)))
    from experiment.protocol.cuff_timing import CuffTiming
    ideal = CuffTiming(ramp_margin_s=0, ramp_margin_fraction=0, release_margin_s=0, onset_slack_s=0)
    ideal_wc = worst_case(protocol_from(edited(load_dict(DEMO), **changes)), timing=ideal)
    assert ideal_wc.inflation_per_run_s == 11.0 and ideal_wc.inflation_per_stimulus_s - 0.5 == 5.5  # the old count
    r = cuedpain("validate", path)
    assert r.returncode == 2 and r.stdout == "" and "Traceback" not in r.stderr
    assert len(r.stderr.splitlines()) == 1
    assert r.stderr.startswith(f"cuedpain validate: {path}:") and f": {field}{numbers}\n" in r.stderr, r.stderr


def test_validate_accepts_the_bound_itself_and_the_rig_sets_the_margins(tmp_path):
    at = _demo_file(tmp_path, "at.yaml", **{"safety.max_inflation_per_stimulus_s": 8.15,
                                            "safety.max_cumulative_inflation_per_run_s": 13.2})
    r = cuedpain("validate", at)
    assert r.returncode == 0, r.stderr
    # a rig whose cuff was measured faster: ramp 0.5 x 1.05 + 0.4 s, release 0.525 + 0.3 s
    rig = tmp_path / "rig.yaml"
    rig.write_text("cuff_timing: {ramp_margin_s: 0.4, ramp_margin_fraction: 0.05, release_margin_s: 0.3}\n")
    tight = _demo_file(tmp_path, "tight.yaml", **{"safety.max_inflation_per_stimulus_s": 7})
    assert cuedpain("validate", tight).returncode == 2
    r = cuedpain("validate", tight, "--rig", str(rig))
    assert r.returncode == 0, r.stderr
    assert ("worst cases counted with a slower cuff: ramp up to 0.925 s, release up to 0.825 s after DEFLATE "
            "(rig file: cuff_timing)") in r.stdout.splitlines()
    bad = tmp_path / "bad.yaml"
    bad.write_text("cuff_timing: {ramp_margin_s: -1}\n")
    r = cuedpain("validate", at, "--rig", str(bad))
    assert r.returncode == 2 and len(r.stderr.splitlines()) == 1
    assert "cuff_timing.ramp_margin_s: must be a number of seconds from 0 to 30, got -1" in r.stderr, r.stderr


# ---------------------------------------------------------------- plan


def test_plan_writes_timeline_png_and_efficiency(tmp_path):
    out = tmp_path / "plan"
    r = cuedpain("plan", "protocols/loggia2014.yaml", "--seed", "3", "--participant", "P01", "--out", str(out))
    assert r.returncode == 0, r.stderr
    expected = build_schedule(load_protocol(LOGGIA), seed=3, participant="P01").to_tsv()
    assert (out / "timeline.tsv").read_text() == expected
    png = (out / "timeline.png").read_bytes()
    assert png[:8] == PNG and len(png) > 10_000
    assert "design efficiency (Glover HRF, cosine drift 1/128 Hz):" in r.stdout
    assert "r(pain_anticipation, pain) = " in r.stdout and "VIF: pain_anticipation" in r.stdout
    assert f"wrote {out / 'timeline.tsv'}" in r.stdout

    # the same plan again: kept; a different one: refused, file untouched
    r = cuedpain("plan", "protocols/loggia2014.yaml", "--seed", "3", "--participant", "P01", "--out", str(out))
    assert r.returncode == 0 and f"kept {out / 'timeline.tsv'} (it already holds this timeline)" in r.stdout
    r = cuedpain("plan", "protocols/loggia2014.yaml", "--seed", "4", "--out", str(out))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert f"{out / 'timeline.tsv'} exists and holds a different timeline; refusing to overwrite it" in r.stderr
    assert (out / "timeline.tsv").read_text() == expected


def test_plan_bad_participant_exits_2(tmp_path):
    r = cuedpain("plan", "protocols/demo.yaml", "--participant", "P 01", "--out", str(tmp_path))
    assert r.returncode == 2 and "participant 'P 01' is not a valid BIDS label" in r.stderr
    assert not (tmp_path / "timeline.tsv").exists()


def test_write_plan_refuses_a_file_as_directory(tmp_path):
    p = load_protocol(DEMO)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(InputError, match=r"cannot create the output directory"):
        write_plan(p, build_schedule(p), blocker)


def test_calibrated_summary_and_picture(tmp_path):
    d = edited(load_dict(DEMO), **{"stimulation.target": "calibrated", "stimulation.calibrated_fraction": 0.8})
    p = protocol_from(d)
    t = build_schedule(p)
    text = summary(p, t, worst_case(p))
    assert ("pressure: 0 to at most 30 kPa (225 mmHg); target calibrated x 0.8 (at run time); calibrated levels "
            "are planned with the ceiling for timing") in text
    files = write_plan(p, t, tmp_path)
    assert files.png.read_bytes()[:8] == PNG and "calibrated" in files.tsv.read_text()


# ---------------------------------------------------------------- design efficiency


def _short_fixed_phases(seconds: float):
    return protocol_from(edited(load_dict(LOGGIA), **{
        "trial_types.pain.phases[0].duration": seconds, "trial_types.pain.phases[1].duration": seconds,
        "trial_types.pain.phases[1].timed_from": "onset", "trial_types.pain.phases[2].duration": seconds}))


def test_efficiency_warns_when_anticipation_and_pain_cannot_be_separated():
    eff = design_efficiency(build_schedule(_short_fixed_phases(1.0)))
    assert abs(eff.correlations[("pain_anticipation", "pain")]) > R_LIMIT
    assert eff.vifs["pain"] > VIF_LIMIT
    assert any(w.startswith("pain_anticipation and pain correlate (r = +0.9") for w in eff.warnings)
    assert any(w.startswith("pain has VIF ") for w in eff.warnings)
    assert "WARNING: " in eff.report()


def test_efficiency_of_the_reference_design_is_fine():
    eff = design_efficiency(build_schedule(load_protocol(LOGGIA), participant="P01"))
    assert eff.warnings == ()
    assert eff.regressors == ("pain_anticipation", "pain", "relief_anticipation", "rating")
    assert all(1.0 <= v < VIF_LIMIT for v in eff.vifs.values())
    assert "ok: every |r| <= 0.7 and VIF <= 5 for pain_anticipation, pain, relief_anticipation" in eff.report()


def test_vif_matches_the_inverse_correlation_matrix():
    """VIF_j = [R^-1]_jj for the non-constant design columns: an independent route to the same numbers."""
    timeline = build_schedule(_short_fixed_phases(2.0))
    eff = design_efficiency(timeline)
    dm = _design(timeline)
    x = dm.drop(columns=["constant"]).to_numpy()
    inv = np.linalg.inv(np.corrcoef(x, rowvar=False))
    cols = [c for c in dm.columns if c != "constant"]
    for name in eff.regressors:
        assert eff.vifs[name] == pytest.approx(inv[cols.index(name), cols.index(name)], rel=1e-6)
    r = np.corrcoef(dm["pain_anticipation"], dm["pain"])[0, 1]
    assert eff.correlations[("pain_anticipation", "pain")] == pytest.approx(r)


def test_efficiency_names_a_missing_regressor():
    # the protocol models relief_anticipation, but this timeline has no such event (a design whose
    # trial type with that phase was given count 0): the report names it rather than dropping it
    d = edited(load_dict(DEMO), **{"trial_types.pain.phases[2].bids_trial_type": None})
    eff = design_efficiency(build_schedule(protocol_from(d)),
                            regressors=("pain_anticipation", "pain", "relief_anticipation"),
                            contrasts={"relief_vs_pain": {"relief_anticipation": 1, "pain_anticipation": -1}})
    assert "no events of relief_anticipation in this timeline, so it cannot be estimated" in eff.warnings
    assert "contrast relief_vs_pain: no events of relief_anticipation in this timeline" in eff.warnings
    assert eff.contrasts == {}
