"""Regenerate the record tables of docs/event-log.md from the typed records:

    python -m experiment.log.generate

The tables sit between the BEGIN/END GENERATED markers; each record kind's fields, their
types and their one-line documentation come from `experiment.log.records` (the comment
after each field; the class docstring says what the record is). A test checks that the
committed doc equals what this writes.
"""

from __future__ import annotations

import ast
from pathlib import Path

from experiment.log import records

BEGIN = "<!-- BEGIN GENERATED records: python -m experiment.log.generate -->"
END = "<!-- END GENERATED records -->"


def _fields(tree: ast.Module, source: str) -> dict[str, tuple[str | None, list[tuple[str, str, str]]]]:
    """class name -> (its docstring, [(field, type as written, the comment after it)]), bases' fields first."""
    lines = source.splitlines()
    out: dict[str, tuple[str | None, list[tuple[str, str, str]]]] = {}
    for node in tree.body:
        if not isinstance(node, ast.ClassDef):
            continue
        fields: list[tuple[str, str, str]] = []
        for base in node.bases:           # a record that extends another (DisplayRecord(DisplayInfo))
            if isinstance(base, ast.Name) and base.id in out:
                fields += out[base.id][1]
        for stmt in node.body:
            if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
                ann = ast.get_source_segment(source, stmt.annotation) or ""
                end_line = lines[(stmt.end_lineno or stmt.lineno) - 1]
                comment = end_line[stmt.end_col_offset or 0:].strip()
                fields.append((stmt.target.id, ann, comment[1:].strip() if comment.startswith("#") else ""))
        out[node.name] = (ast.get_docstring(node), fields)
    return out


def _type_text(ann: str) -> str:
    """A field's type as the doc shows it: `NotRequired[X]` becomes X (the doc says 'optional')."""
    if ann.startswith("NotRequired[") and ann.endswith("]"):
        return ann[len("NotRequired["):-1]
    return ann


def records_markdown() -> str:
    """The record tables: one section per log kind, one table per record kind."""
    source = Path(records.__file__).read_text(encoding="utf-8")
    classes = _fields(ast.parse(source), source)
    seen: dict[str, str] = {}          # class name -> the section it was first described in
    parts: list[str] = []
    for log_kind, title in records.LOG_KINDS:
        parts.append(f"## {title}\n")
        for kind, cls in records.REGISTRY[log_kind].items():
            name = cls.__name__
            doc, fields = classes[name]
            if name in seen:
                parts.append(f"* `{kind}`: as in {seen[name]} above.\n")
                continue
            seen[name] = f"\"{title}\""
            parts.append(f"### `{kind}`\n\n{doc or ''}\n\n| field | type | meaning |\n|---|---|---|")
            for field, ann, comment in fields:
                if field == "kind":
                    continue
                optional = " (optional)" if ann.startswith("NotRequired[") else ""
                cell = _type_text(ann).replace("|", "\\|")
                parts.append(f"| `{field}` | `{cell}`{optional} | {comment.replace('|', '/')} |")
            parts.append("")
        if parts[-1].startswith("* "):
            parts.append("")
    return "\n".join(parts).rstrip("\n") + "\n"


def replace_records(doc: str, content: str) -> str:
    """`doc` with the text between the markers replaced by `content`."""
    head, sep, rest = doc.partition(BEGIN)
    _, sep2, tail = rest.partition(END)
    if not sep or not sep2:
        raise ValueError("the GENERATED records markers are not in docs/event-log.md")
    return f"{head}{BEGIN}\n{content}{END}{tail}"


def main() -> None:
    """Rewrite the generated part of docs/event-log.md."""
    path = Path(__file__).resolve().parents[2] / "docs" / "event-log.md"
    path.write_text(replace_records(path.read_text(encoding="utf-8"), records_markdown()), encoding="utf-8")


if __name__ == "__main__":
    main()
