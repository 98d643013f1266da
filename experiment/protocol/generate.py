"""Regenerate the committed files that are made from the format specs:

    python -m experiment.protocol.generate

writes protocols/cuedpain-protocol.schema.json, protocols/cuedpain-rig.schema.json,
visits/cuedpain-visit.schema.json and the field tables of docs/protocol-format.md and
docs/visits.md (between the BEGIN/END GENERATED markers). Tests
check that the committed files equal what this writes.
"""

from __future__ import annotations

from pathlib import Path

from experiment.protocol.model import PROTOCOL_SPEC, protocol_json_schema
from experiment.protocol.rig import RIG_SPEC, rig_json_schema
from experiment.protocol.schema import reference_markdown, replace_generated
from experiment.protocol.visit import VISIT_SPEC, visit_json_schema


def main() -> None:
    """Write the committed schema files and the generated field tables of the docs from the specs."""
    root = Path(__file__).resolve().parents[2]
    (root / "protocols" / "cuedpain-protocol.schema.json").write_text(protocol_json_schema(), encoding="utf-8")
    (root / "protocols" / "cuedpain-rig.schema.json").write_text(rig_json_schema(), encoding="utf-8")
    doc_path = root / "docs" / "protocol-format.md"
    doc = doc_path.read_text(encoding="utf-8")
    doc = replace_generated(doc, "protocol", reference_markdown(PROTOCOL_SPEC))
    doc = replace_generated(doc, "rig", reference_markdown(RIG_SPEC))
    doc_path.write_text(doc, encoding="utf-8")
    (root / "visits" / "cuedpain-visit.schema.json").write_text(visit_json_schema(), encoding="utf-8")
    visits_doc = root / "docs" / "visits.md"
    visits_doc.write_text(replace_generated(visits_doc.read_text(encoding="utf-8"), "visit",
                                            reference_markdown(VISIT_SPEC)), encoding="utf-8")


if __name__ == "__main__":
    main()
