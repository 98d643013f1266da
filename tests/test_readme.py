"""The README's quick start and its annotated protocol example stay true."""

from __future__ import annotations

import re
from pathlib import Path

from experiment.protocol.model import parse_protocol
from experiment.protocol.rig import load_rig

ROOT = Path(__file__).resolve().parents[1]


def _yaml_blocks(text: str) -> list[str]:
    return re.findall(r"```yaml\n(.*?)```", text, flags=re.S)


def test_quick_start_is_exactly_the_two_commands() -> None:
    readme = (ROOT / "README.md").read_text()
    quick = readme.split("## Quick start", 1)[1].split("```sh", 1)[1].split("```", 1)[0]
    commands = [line.split("#")[0].strip() for line in quick.strip().splitlines()]
    assert commands == ["make demo", "make test"]
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in ci


def test_annotated_example_matches_the_docs_and_is_valid() -> None:
    readme_example = _yaml_blocks((ROOT / "README.md").read_text())[0]
    docs_example = _yaml_blocks((ROOT / "docs" / "protocol-format.md").read_text())[0]
    assert readme_example == docs_example
    protocol = parse_protocol(readme_example, file="README.md", base_dir=ROOT / "protocols")
    assert protocol.safety.max_pressure_kpa > 0


def test_rig_example_in_the_readme_is_valid(tmp_path: Path) -> None:
    rig_yaml = _yaml_blocks((ROOT / "README.md").read_text())[1]
    path = tmp_path / "rig.yaml"
    path.write_text(rig_yaml)
    rig = load_rig(path)
    assert str(rig.cuff) == "line:/dev/ttyUSB0" and str(rig.scanner).startswith("serial:")
