"""The visit plan format: validated with the project's field specs, committed schema, examples."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from experiment.errors import InputError
from experiment.protocol.schema import GENERATED_BEGIN, GENERATED_END, reference_markdown
from experiment.protocol.visit import (VISIT_SPEC, CalibrationStep, RunsStep, ScannerCheckStep, load_visit,
                                       parse_visit, visit_json_schema)

ROOT = Path(__file__).resolve().parents[1]
GOOD = """cuedpain_version: dev
name: t
steps:
  - step: rig_check
  - {step: calibration, ceiling: {value: 300, unit: mmHg}, plateau_s: 1}
  - step: scanner_check
  - {step: runs, protocol: ../protocols/demo.yaml, count: 2, instructions: [Look at the cross.]}
"""


def test_a_plan_reads_into_typed_steps() -> None:
    v = parse_visit(GOOD, file="v.yaml", base_dir=ROOT / "visits")
    cal, check, runs = v.steps[1], v.steps[2], v.steps[3]
    assert isinstance(cal, CalibrationStep) and cal.method == "staircase" and cal.confirm
    assert round(cal.ceiling_kpa, 1) == 40.0 and cal.target_rating == 50.0
    assert isinstance(check, ScannerCheckStep) and check.plateau_s == 5.0
    assert isinstance(runs, RunsStep) and runs.count == 2 and runs.instructions == ("Look at the cross.",)


@pytest.mark.parametrize("change, message", [
    ("  - step: runs\n", "v.yaml:8:5: steps[4].protocol: required key 'protocol' is missing"),
    ("  - {step: run, protocol: x.yaml}\n", "v.yaml:8:12: steps[4].step: must be one of 'rig_check', 'calibration', "
                                            "'scanner_check', 'runs', got 'run' (text) (did you mean 'runs'?)"),
    ("  - {step: runs, protocol: x.yaml, cout: 2}\n", "v.yaml:8:36: steps[4].cout: unknown key 'cout' (did you mean "
                                                      "'count'?)"),
    ("  - {step: calibration, ceiling: {value: 50, unit: kPa}}\n", "steps[4].step: a visit has at most one calibration"),
    ("  - {step: runs, protocol: x.yaml, count: 0}\n", "steps[4].count: must be a whole number from 1 to 20, got 0"),
])
def test_bad_plans_get_one_located_message(change: str, message: str) -> None:
    with pytest.raises(InputError) as e:
        parse_visit(GOOD + change, file="v.yaml", base_dir=ROOT)
    assert message in e.value.message


def test_a_scanner_check_needs_a_calibration_before_it_and_a_plan_needs_runs() -> None:
    with pytest.raises(InputError, match="put a calibration step before it"):
        parse_visit("cuedpain_version: dev\nname: t\nsteps:\n  - step: scanner_check\n", file="v.yaml")
    with pytest.raises(InputError, match="at least one 'runs' step"):
        parse_visit("cuedpain_version: dev\nname: t\nsteps:\n  - step: rig_check\n", file="v.yaml")


def test_load_checks_the_protocols_it_names(tmp_path: Path) -> None:
    plan = tmp_path / "v.yaml"
    plan.write_text(GOOD.replace("../protocols/demo.yaml", "missing.yaml"))
    with pytest.raises(InputError, match=r"v.yaml:7:28: steps\[3\].protocol: protocol file not found"):
        load_visit(plan)


def test_shipped_plans_are_valid_and_the_schema_and_docs_are_generated() -> None:
    for plan in sorted((ROOT / "visits").glob("*.yaml")):
        assert load_visit(plan).steps
    committed = (ROOT / "visits" / "cuedpain-visit.schema.json").read_text(encoding="utf-8")
    assert committed == visit_json_schema(), "run: python -m experiment.protocol.generate"
    assert json.loads(committed)["properties"]["steps"]["minItems"] == 1
    doc = (ROOT / "docs" / "visits.md").read_text(encoding="utf-8")
    table = doc.split(GENERATED_BEGIN.format(name="visit"))[1].split(GENERATED_END.format(name="visit"))[0]
    assert table.lstrip("\n") == reference_markdown(VISIT_SPEC)
