"""The typed log records: the doc is generated from them, and real logs conform to them.

Headless dry runs of two reference protocols, a calibration and a pressure check are read
back and every record is validated against its TypedDict (pydantic's TypeAdapter, strict:
no coercion), with no unknown kinds, no unknown fields and no missing required fields.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any, get_type_hints

from pydantic import TypeAdapter, ValidationError

from experiment.cli import main
from experiment.log import records
from experiment.log.eventlog import read_log
from experiment.log.generate import BEGIN, END, records_markdown

ROOT = Path(__file__).resolve().parents[1]

_ADAPTERS: dict[type, TypeAdapter[Any]] = {}


def record_problems(header: dict[str, Any], recs: list[dict[str, Any]]) -> list[str]:
    """What does not conform in one log: unknown kinds, unknown or missing fields, wrong types."""
    log_kind = records.log_kind(header)
    registry = records.REGISTRY[log_kind]
    problems: list[str] = []
    if header.get("kind") != "header" or header.get("format") != "cuedpain-log/1":
        problems.append(f"bad header: {header.get('kind')} {header.get('format')}")
    for rec in recs:
        body = {k: v for k, v in rec.items() if k != "seq"}
        kind = body.get("kind")
        td = registry.get(str(kind))
        if td is None:
            problems.append(f"{log_kind}: unknown kind {kind!r}")
            continue
        unknown = set(body) - set(get_type_hints(td))
        if unknown:
            problems.append(f"{log_kind} {kind}: unknown fields {sorted(unknown)}")
        adapter = _ADAPTERS.setdefault(td, TypeAdapter(td))
        try:
            adapter.validate_python(body, strict=True)
        except ValidationError as exc:
            problems.append(f"{log_kind} {kind}: {exc}")
    return problems


def test_committed_doc_equals_the_generated_one() -> None:
    doc = (ROOT / "docs" / "event-log.md").read_text(encoding="utf-8")
    committed = doc.partition(BEGIN)[2].partition(END)[0]
    assert committed == "\n" + records_markdown(), "run: python -m experiment.log.generate"


def test_every_kind_written_in_the_code_is_registered() -> None:
    """Every dict literal with a `kind` handed to a record/log/write call names a registered kind."""
    known = {kind for kinds in records.REGISTRY.values() for kind in kinds} | {"header"}
    written: set[str] = set()
    for path in (ROOT / "experiment").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Dict)):
                continue
            name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            if name not in ("record", "_record", "log", "write"):
                continue
            for key, value in zip(node.args[0].keys, node.args[0].values):
                if isinstance(key, ast.Constant) and key.value == "kind" and isinstance(value, ast.Constant):
                    written.add(str(value.value))
    assert len(written) > 20     # the walk found the writers
    assert written <= known, sorted(written - known)


def test_the_checker_sees_unknown_kinds_and_missing_or_wrong_fields() -> None:
    header = {"kind": "header", "format": "cuedpain-log/1", "stream": "events"}
    good = {"seq": 1, "kind": "t0", "t": 1.5, "pulse_index": 3}
    assert record_problems(header, [good]) == []
    bad = [{"seq": 2, "kind": "nonsense"}, {"seq": 3, "kind": "t0", "t": 1.5},
           {"seq": 4, "kind": "t0", "t": "soon", "pulse_index": 3},
           {"seq": 5, "kind": "t0", "t": 1.5, "pulse_index": 3, "extra": 1}]
    found = record_problems(header, bad)
    assert len(found) == 4 and "unknown kind" in found[0] and "pulse_index" in found[1]
    assert "unknown fields ['extra']" in found[3]


def test_records_of_headless_dry_runs_conform(tmp_path: Path) -> None:
    data = tmp_path / "data"
    common = ["--dry-run", "--headless", "--data", str(data)]
    assert main(["calibrate", "--participant", "ref", "--ceiling", "60", "--method", "staircase", "--seed", "1",
                 *common]) == 0
    assert main(["run", str(ROOT / "protocols" / "loggia2014.yaml"), "--participant", "ref", "--seed", "3",
                 *common]) == 0
    assert main(["run", str(ROOT / "protocols" / "tonic_a2cps.yaml"), "--participant", "ref", "--seed", "4",
                 *common]) == 0
    assert main(["confirm-pressure", "--participant", "ref", "--seed", "8", *common]) == 0
    logs = sorted(data.rglob("*.jsonl"))
    kinds_seen: dict[str, set[str]] = {}
    problems: list[str] = []
    for path in logs:
        log = read_log(path)
        kinds_seen.setdefault(records.log_kind(log.header), set()).update(r["kind"] for r in log.records)
        problems += [f"{path.name}: {p}" for p in record_problems(log.header, log.records)]
    assert problems == []
    assert {"run", "calibration", "pressure"} <= set(kinds_seen)
    assert {"plan", "onset", "pulse", "t0", "rating", "cuff_cmd", "frames", "end"} <= kinds_seen["run"]
    assert {"stimulus", "stimulus_end", "rating", "fit", "decision", "end"} <= kinds_seen["calibration"]
