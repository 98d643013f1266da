"""Participant instructions before the scanner, and who confirmed (`--confirmed-by`)."""

from __future__ import annotations

from pathlib import Path

from experiment.cli import main
from experiment.log.eventlog import read_log
from experiment.protocol.model import parse_protocol

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "protocols" / "demo.yaml"


def _with_instructions(tmp_path: Path, pages: str) -> Path:
    text = DEMO.read_text(encoding="utf-8").replace("stimuli_dir", "#") + f"\ninstructions: {pages}\n"
    path = tmp_path / "demo_instr.yaml"
    path.write_text(text.replace("cues:", "stimuli_dir: " + str(ROOT / "stimuli") + "\ncues:", 1), encoding="utf-8")
    return path


def test_instructions_are_an_optional_list_of_pages(tmp_path: Path) -> None:
    assert parse_protocol(DEMO.read_text(), base_dir=DEMO.parent).instructions == ()
    p = parse_protocol(_with_instructions(tmp_path, '["one", "two"]').read_text(), base_dir=tmp_path)
    assert p.instructions == ("one", "two")
    try:
        parse_protocol(_with_instructions(tmp_path, "[3]").read_text(), file="x.yaml", base_dir=tmp_path)
    except Exception as exc:   # noqa: BLE001
        assert "x.yaml:" in str(exc) and "instructions[0]: must be non-empty text" in str(exc)
    else:
        raise AssertionError("a page must be text")


def test_pages_are_shown_and_logged_before_waiting_and_the_station_is_recorded(tmp_path: Path) -> None:
    protocol = _with_instructions(tmp_path, '["Keep still.", "Here we go."]')
    data = tmp_path / "data"
    code = main(["run", str(protocol), "--participant", "I01", "--dry-run", "--headless", "--data", str(data),
                 "--yes", "--confirmed-by", "station"])
    assert code == 0
    log = read_log(data / "sourcedata" / "sub-I01" / "sub-I01_task-demo_run-1" / "log.jsonl")
    kinds = [r["kind"] for r in log.records]
    pages = [r["text"] for r in log.of_kind("instructions")]
    assert pages == ["Keep still.", "Here we go."]
    assert kinds.index("instructions") < kinds.index("instructions_turned") < kinds.index("waiting")
    assert log.header["confirmation"]["started_from"] == "station"
    # a visit's pages replace the protocol's
    code = main(["run", str(protocol), "--participant", "I01", "--dry-run", "--headless", "--data", str(data),
                 "--run", "next", "--instruction", "From the plan."])
    log = read_log(data / "sourcedata" / "sub-I01" / "sub-I01_task-demo_run-2" / "log.jsonl")
    assert code == 0 and [r["text"] for r in log.of_kind("instructions")] == ["From the plan."]


def test_confirmed_by_needs_yes(tmp_path: Path, capsys) -> None:
    code = main(["run", str(DEMO), "--participant", "I02", "--dry-run", "--headless", "--data", str(tmp_path),
                 "--confirmed-by", "station"])
    assert code == 2 and "--confirmed-by" in capsys.readouterr().err
