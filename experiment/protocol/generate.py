"""Regenerate the committed files that are made from the format specs:

    python -m experiment.protocol.generate

writes protocols/cuedpain-protocol.schema.json, protocols/cuedpain-rig.schema.json and the
field tables of docs/protocol-format.md (between the BEGIN/END GENERATED markers). Tests
check that the committed files equal what this writes.
"""

from __future__ import annotations

from pathlib import Path

from experiment.protocol.model import PROTOCOL_SPEC, protocol_json_schema
from experiment.protocol.rig import RIG_SPEC, rig_json_schema
from experiment.protocol.schema import reference_markdown, replace_generated


def main() -> None:
    """Write protocols/*.schema.json and the field tables of docs/protocol-format.md from the specs."""
    root = Path(__file__).resolve().parents[2]
    (root / "protocols" / "cuedpain-protocol.schema.json").write_text(protocol_json_schema(), encoding="utf-8")
    (root / "protocols" / "cuedpain-rig.schema.json").write_text(rig_json_schema(), encoding="utf-8")
    doc_path = root / "docs" / "protocol-format.md"
    doc = doc_path.read_text(encoding="utf-8")
    doc = replace_generated(doc, "protocol", reference_markdown(PROTOCOL_SPEC))
    doc = replace_generated(doc, "rig", reference_markdown(RIG_SPEC))
    doc_path.write_text(doc, encoding="utf-8")


if __name__ == "__main__":
    main()
