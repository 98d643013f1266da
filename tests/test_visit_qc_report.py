"""The QC report read at a glance after every run: a verdict, one question per figure."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from experiment.cli import main
from experiment.outputs.derive import derive_run, timing_quality
from experiment.outputs.report import _colour, frames_figure, onset_errors_ms, render_report, verdict
from experiment.outputs.writer import load_run

ROOT = Path(__file__).resolve().parents[1]


def _demo(tmp_path: Path):
    data = tmp_path / "data"
    assert main(["run", str(ROOT / "protocols" / "demo.yaml"), "--participant", "R1", "--dry-run", "--headless",
                 "--data", str(data)]) == 0
    run_dir = data / "sourcedata" / "sub-R1" / "sub-R1_task-demo_run-1"
    return derive_run(*load_run(run_dir)), run_dir


def test_a_clean_run_is_good_to_analyse_and_the_plots_agree_with_the_summary(tmp_path: Path) -> None:
    data, run_dir = _demo(tmp_path)
    q = timing_quality(data)
    errors = onset_errors_ms(data)
    assert errors.size == q.n_onsets and abs(abs(errors).max() - q.max_abs_error_ms) < 1e-9   # no lead-in bar
    assert any(p.trial == 0 and p.onset_error_s for p in data.phases)                        # it was there
    assert verdict(data, q) == []
    page = (run_dir / "report.html").read_text()
    assert "Good to analyse" in page and "No dropped frames (" in page
    assert frames_figure(data) is None
    for question in ("Did each trial follow its plan?", "Did each cue appear when planned?",
                     "Did the scanner send every pulse on time?", "Did the cuff follow its target?",
                     "Were frames dropped?"):
        assert question in page


def test_what_to_look_at(tmp_path: Path) -> None:
    data, _ = _demo(tmp_path)
    t0 = data.t0 or 0.0
    worse = replace(data, frame_drops=({"t": t0 + 3.0, "interval_s": 0.05},),
                    frames=({"n": 100, "dropped": 1, "p99_interval_s": 0.0175, "max_interval_s": 0.05},),
                    warnings=({"t": t0 + 4.0, "code": "missed_pulse", "message": "gap"},))
    items = verdict(worse, timing_quality(worse))
    assert any("dropped frame" in i for i in items) and any("missed_pulse" in i for i in items)
    assert frames_figure(worse) is not None
    page = render_report(worse, stem="x")
    assert "Look at this before analysing" in page and "Good to analyse" not in page


def test_every_trial_type_has_its_own_colour() -> None:
    types = ["pain_anticipation", "catch_anticipation", "pain", "other"]
    colours = {_colour(t, types) for t in types}
    assert len(colours) == 4 and "#777777" not in colours
