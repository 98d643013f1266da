"""Confirmation plateaus and the check in the scanner: new calibration results the runs take."""

from __future__ import annotations

import json
from pathlib import Path

from experiment.cli import main
from experiment.log.eventlog import read_log
from experiment.procedures.pressurecheck.steps import Rated, check_pressures, decide

ROOT = Path(__file__).resolve().parents[1]


def test_the_plateaus_and_what_is_kept() -> None:
    assert check_pressures("confirmation", from_kpa=40.0, ceiling_kpa=60) == (36.0, 40.0, 44.0)
    assert check_pressures("confirmation", from_kpa=40.0, ceiling_kpa=42) == (36.0, 40.0, 42.0)
    assert check_pressures("scanner_check", from_kpa=40.0, ceiling_kpa=60, adjust_kpa=38.04) == (38.0,)
    rated = [Rated(36.0, 36.0, 30.0), Rated(40.0, 40.0, 70.0), Rated(44.0, 44.0, 52.0)]
    d = decide("confirmation", rated, from_kpa=40.0, target_rating=50)
    assert d is not None and d.pressure_kpa == 44.0 and d.decision == "adjusted"
    tie = [Rated(36.0, 36.0, 45.0), Rated(40.0, 40.0, 55.0)]
    assert decide("confirmation", tie, from_kpa=40.0, target_rating=50).decision == "confirmed"  # type: ignore[union-attr]
    assert decide("confirmation", [Rated(40.0, 40.0, None)], from_kpa=40.0, target_rating=50) is None


def test_checks_write_the_newest_result_and_the_run_takes_it(tmp_path: Path) -> None:
    data = tmp_path / "data"
    common = ["--participant", "K1", "--session", "1", "--dry-run", "--headless", "--data", str(data)]
    assert main(["calibrate", "--ceiling", "60", "--plateau", "0.5", "--rest", "0.5", *common]) == 0
    assert main(["confirm-pressure", "--plateau", "0.5", "--rest", "0.5", "--instruction", "Rate it.",
                 *common]) == 0
    assert main(["scanner-check", "--plateau", "0.5", "--pressure", "30", *common]) == 0
    cal = data / "sourcedata" / "sub-K1" / "calibration"
    confirmation = json.loads((cal / "sub-K1_calibration-2.json").read_text())
    check = json.loads((cal / "sub-K1_calibration-3.json").read_text())
    assert confirmation["method"] == "confirmation" and confirmation["check"]["from_file"] == "sub-K1_calibration-1.json"
    assert len(confirmation["check"]["plateaus"]) == 3
    assert check["check"]["decision"] == "adjusted" and check["pressure_kpa"] == 30.0
    log = read_log(cal / "sub-K1_calibration-2_log.jsonl")
    assert log.header["purpose"] == "confirmation"
    assert [r["text"] for r in log.of_kind("instructions")] == ["Rate it."]
    assert [r["decision"] for r in log.of_kind("decision")] == [confirmation["check"]["decision"]]
    # a protocol whose target is calibrated takes the newest result: the check's 30 kPa
    protocol = tmp_path / "cal.yaml"
    protocol.write_text((ROOT / "protocols" / "demo.yaml").read_text().replace(
        "target: {value: 20, unit: kPa}", "target: calibrated\n  calibrated_fraction: 0.5").replace(
        "cues:", f"stimuli_dir: {ROOT / 'stimuli'}\ncues:", 1))
    assert main(["run", str(protocol), *common]) == 0
    run = read_log(data / "sourcedata" / "sub-K1" / "ses-1" / "sub-K1_ses-1_task-demo_run-1" / "log.jsonl")
    assert run.header["pressure"]["calibration_file"].endswith("sub-K1_calibration-3.json")
    assert run.header["pressure"]["pressure_kpa"] == 15.0


def test_a_check_without_a_calibration_is_refused(tmp_path: Path, capsys) -> None:
    assert main(["confirm-pressure", "--participant", "K2", "--dry-run", "--headless", "--data", str(tmp_path)]) == 2
    assert "run `cuedpain calibrate" in capsys.readouterr().err
