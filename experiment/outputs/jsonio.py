"""JSON values with a type, read at the boundary (json.loads gives Any; from here on it is typed)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping, Union

JsonValue = Union[str, int, float, bool, None, list["JsonValue"], dict[str, "JsonValue"]]
JsonObject = dict[str, JsonValue]


def loads(text: str) -> JsonValue:
    """Parse JSON text; ValueError when it is not JSON."""
    value: JsonValue = json.loads(text)
    return value


def load_object(path: Path) -> JsonObject:
    """A JSON file whose top level is an object. OSError when unreadable, ValueError when not an object."""
    value = loads(Path(path).read_text(encoding="utf-8"))
    if not isinstance(value, dict):
        raise ValueError(f"the top level is a {type(value).__name__}, not an object")
    return value


def obj(value: JsonValue | None) -> Mapping[str, JsonValue]:
    """`value` if it is an object, else an empty mapping."""
    return value if isinstance(value, dict) else {}


def text(value: JsonValue | None) -> str | None:
    """`value` if it is a string, else None."""
    return value if isinstance(value, str) else None


def number(value: JsonValue | None) -> float | None:
    """`value` as a float if it is a number (not a bool), else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def dumps(value: JsonValue) -> str:
    """Indented JSON text with a final newline (the project's JSON file style)."""
    return json.dumps(value, indent=2, ensure_ascii=False) + "\n"
