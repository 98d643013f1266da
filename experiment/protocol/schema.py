"""Declarative field specs: one definition checks YAML values, exports JSON Schema, documents fields.

Public API:
    Number, Text, Choice, KeyName, Boolean, ListOf, MapOf, Object, Field, Nullable, AnyOf, Tagged
    spec.check(value, path, where) -> value     checked, converted (defaults filled); raises InputError
    spec.json_schema() -> dict                   JSON Schema (draft 2020-12) fragment
    json_schema_document(spec, *, title, schema_id) -> str   the file written to protocols/
    reference_rows(spec, prefix) -> list[Row]    one row per field, for docs/protocol-format.md
    reference_markdown(spec, root) -> str        those rows as a Markdown table

Why one definition: the checker, the editor schema in `protocols/*.schema.json` and the
field reference in the docs cannot drift apart when all three come from the same specs.
Checks are pure (no I/O) and stop at the first problem, reported as
`FILE:LINE:COL: field.path: must be <allowed>, got <value>`.
Cross-field rules (a cue that must exist, min <= max, safety limits) are not here; the
modules that own the format (`experiment.protocol.model`, `experiment.protocol.rig`) check them after.
"""

from __future__ import annotations

import difflib
import json
import math
import re
from pathlib import Path
from dataclasses import dataclass
from typing import Any, Iterator, Mapping, Sequence

from experiment.errors import InputError
from experiment.protocol.yamlload import FieldPath, Where



def got(value: Any) -> str:
    """A short description of a received value for messages."""
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return f"{str(value).lower()} (a boolean)"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        text = value if len(value) <= 40 else value[:37] + "..."
        return f"{text!r} (text)"
    if isinstance(value, list):
        return f"a list of {len(value)}"
    if isinstance(value, dict):
        return "a mapping"
    return f"{value!r} (a {type(value).__name__})"


def suggest(word: str, choices: Sequence[str]) -> str:
    """' (did you mean 'x'?)' for the closest choice, or ''."""
    lowered = {c.lower(): c for c in choices}
    if word.lower() in lowered:
        return f" (did you mean {lowered[word.lower()]!r}?)"
    match = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {match[0]!r}?)" if match else ""


def _quoted(values: Sequence[Any]) -> str:
    return ", ".join(repr(v) for v in values)


def _fmt(x: float) -> str:
    return str(x) if isinstance(x, int) else f"{x:g}"


class Spec:
    """A field's rules: what it accepts, how it converts, how it is described."""

    description: str = ""

    def accepts(self, value: Any) -> bool:
        """Whether the value is of the YAML kind this spec reads (used by AnyOf)."""
        raise NotImplementedError

    def allowed(self) -> str:
        """What is allowed, as a phrase: 'a number of seconds > 0'."""
        raise NotImplementedError

    def check(self, value: Any, path: FieldPath, where: Where) -> Any:
        raise NotImplementedError

    def json_schema(self) -> dict:
        raise NotImplementedError

    def wrong(self, value: Any, path: FieldPath, where: Where) -> InputError:
        return where.error(path, f"must be {self.allowed()}, got {got(value)}")

    def _with_description(self, schema: dict) -> dict:
        return {"description": self.description, **schema} if self.description else schema


class Number(Spec):
    """A finite number (never a boolean), optionally whole, within bounds."""

    def __init__(self, description: str = "", *, unit: str = "", minimum: float | None = None,
                 maximum: float | None = None, exclusive_minimum: bool = False, integer: bool = False) -> None:
        self.description = description
        self.unit = unit
        self.minimum = minimum
        self.maximum = maximum
        self.exclusive_minimum = exclusive_minimum
        self.integer = integer

    def accepts(self, value: Any) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool)

    def allowed(self) -> str:
        noun = "a whole number" if self.integer else "a number"
        if self.unit:
            noun += f" of {self.unit}"
        lo = self.minimum
        if lo is not None and self.maximum is not None:
            op = "more than" if self.exclusive_minimum else "from"
            joiner = "and at most" if self.exclusive_minimum else "to"
            return f"{noun} {op} {_fmt(lo)} {joiner} {_fmt(self.maximum)}"
        if lo is not None:
            return f"{noun} {'>' if self.exclusive_minimum else '>='} {_fmt(lo)}"
        if self.maximum is not None:
            return f"{noun} <= {_fmt(self.maximum)}"
        return noun

    def check(self, value: Any, path: FieldPath, where: Where) -> Any:
        if not self.accepts(value) or not math.isfinite(value):
            raise self.wrong(value, path, where)
        if self.integer:
            if isinstance(value, float):
                if not value.is_integer():
                    raise self.wrong(value, path, where)
                value = int(value)
        else:
            value = float(value)
        lo, hi = self.minimum, self.maximum
        if lo is not None and (value <= lo if self.exclusive_minimum else value < lo):
            raise self.wrong(value, path, where)
        if hi is not None and value > hi:
            raise self.wrong(value, path, where)
        return value

    def json_schema(self) -> dict:
        s: dict[str, Any] = {"type": "integer" if self.integer else "number"}
        if self.minimum is not None:
            s["exclusiveMinimum" if self.exclusive_minimum else "minimum"] = self.minimum
        if self.maximum is not None:
            s["maximum"] = self.maximum
        return self._with_description(s)


class Text(Spec):
    """Text, optionally matching a pattern (described in words for messages)."""

    def __init__(self, description: str = "", *, pattern: str | None = None, pattern_doc: str = "",
                 min_length: int = 1, max_length: int = 2000) -> None:
        self.description = description
        self.pattern = pattern
        self.pattern_doc = pattern_doc
        self.min_length = min_length
        self.max_length = max_length
        self._re = re.compile(pattern) if pattern else None

    def accepts(self, value: Any) -> bool:
        return isinstance(value, str)

    def allowed(self) -> str:
        if self.pattern_doc:
            return self.pattern_doc
        if self.min_length:
            return f"non-empty text (at most {self.max_length} characters)"
        return f"text (at most {self.max_length} characters)"

    def check(self, value: Any, path: FieldPath, where: Where) -> Any:
        if not isinstance(value, str) or not (self.min_length <= len(value) <= self.max_length):
            raise self.wrong(value, path, where)
        if self._re is not None and not self._re.fullmatch(value):
            raise self.wrong(value, path, where)
        return value

    def json_schema(self) -> dict:
        s: dict[str, Any] = {"type": "string", "minLength": self.min_length, "maxLength": self.max_length}
        if self.pattern:
            s["pattern"] = f"^(?:{self.pattern})$"
        return self._with_description(s)


class Choice(Spec):
    """One of a fixed set of words; a near miss gets a suggestion."""

    def __init__(self, values: Sequence[str], description: str = "") -> None:
        self.values = tuple(values)
        self.description = description

    def accepts(self, value: Any) -> bool:
        return isinstance(value, str)

    def allowed(self) -> str:
        return f"one of {_quoted(self.values)}"

    def check(self, value: Any, path: FieldPath, where: Where) -> Any:
        if isinstance(value, str) and value in self.values:
            return value
        hint = suggest(value, self.values) if isinstance(value, str) else ""
        raise where.error(path, f"must be {self.allowed()}, got {got(value)}{hint}")

    def json_schema(self) -> dict:
        return self._with_description({"enum": list(self.values)})


class KeyName(Spec):
    """A keyboard key as PsychoPy names it ('5', 'space', 'escape', 'num_1'); digits may be unquoted."""

    _RE = re.compile(r"[a-z0-9_]{1,20}")

    def __init__(self, description: str = "") -> None:
        self.description = description

    def accepts(self, value: Any) -> bool:
        return isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool))

    def allowed(self) -> str:
        return "a key name as PsychoPy reports it: lowercase letters, digits or '_' (e.g. '5', 'space', 'escape')"

    def check(self, value: Any, path: FieldPath, where: Where) -> Any:
        if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 9:
            value = str(value)
        if not isinstance(value, str) or not self._RE.fullmatch(value):
            raise self.wrong(value, path, where)
        return value

    def json_schema(self) -> dict:
        return self._with_description({"anyOf": [{"type": "string", "pattern": "^[a-z0-9_]{1,20}$"},
                                                 {"type": "integer", "minimum": 0, "maximum": 9}]})


class Boolean(Spec):
    def __init__(self, description: str = "") -> None:
        self.description = description

    def accepts(self, value: Any) -> bool:
        return isinstance(value, bool)

    def allowed(self) -> str:
        return "true or false"

    def check(self, value: Any, path: FieldPath, where: Where) -> Any:
        if not isinstance(value, bool):
            raise self.wrong(value, path, where)
        return value

    def json_schema(self) -> dict:
        return self._with_description({"type": "boolean"})


class ListOf(Spec):
    """A list of items (returned as a tuple)."""

    def __init__(self, item: Spec, description: str = "", *, min_items: int = 0,
                 max_items: int | None = None) -> None:
        self.item = item
        self.description = description
        self.min_items = min_items
        self.max_items = max_items

    def accepts(self, value: Any) -> bool:
        return isinstance(value, list)

    def allowed(self) -> str:
        if self.min_items == self.max_items:
            count = f"of exactly {self.min_items}"
        elif self.max_items is not None:
            count = f"of {self.min_items} to {self.max_items}"
        elif self.min_items:
            count = f"of at least {self.min_items}"
        else:
            count = ""
        return " ".join(p for p in ("a list", count, f"(each {self.item.allowed()})") if p)

    def check(self, value: Any, path: FieldPath, where: Where) -> Any:
        if not isinstance(value, list):
            raise self.wrong(value, path, where)
        if len(value) < self.min_items or (self.max_items is not None and len(value) > self.max_items):
            raise where.error(path, f"must be {self.allowed()}, got {got(value)}")
        return tuple(self.item.check(v, path + (i,), where) for i, v in enumerate(value))

    def json_schema(self) -> dict:
        s: dict[str, Any] = {"type": "array", "items": self.item.json_schema()}
        if self.min_items:
            s["minItems"] = self.min_items
        if self.max_items is not None:
            s["maxItems"] = self.max_items
        return self._with_description(s)


class MapOf(Spec):
    """A mapping from user-chosen names to values of one spec (order kept)."""

    def __init__(self, key: Text, value: Spec, description: str = "", *, min_items: int = 0,
                 max_items: int = 200, key_label: str = "name") -> None:
        self.key = key
        self.value = value
        self.description = description
        self.min_items = min_items
        self.max_items = max_items
        self.key_label = key_label

    def accepts(self, value: Any) -> bool:
        return isinstance(value, dict)

    def allowed(self) -> str:
        return f"a mapping of {self.key_label} -> entry, each {self.key_label} {self.key.allowed()}"

    def check(self, value: Any, path: FieldPath, where: Where) -> Any:
        if not isinstance(value, dict):
            raise self.wrong(value, path, where)
        if not (self.min_items <= len(value) <= self.max_items):
            raise where.error(path, f"must have {self.min_items} to {self.max_items} entries, got {len(value)}")
        out = {}
        for k, v in value.items():
            if self.key._re is not None and not self.key._re.fullmatch(k):
                raise where.error(path + (k,), f"the {self.key_label} {k!r} is not allowed: use {self.key.allowed()}",
                                  at_key=True)
            out[k] = self.value.check(v, path + (k,), where)
        return out

    def json_schema(self) -> dict:
        s: dict[str, Any] = {"type": "object", "additionalProperties": self.value.json_schema()}
        if self.key.pattern:
            s["propertyNames"] = {"pattern": f"^(?:{self.key.pattern})$"}
        if self.min_items:
            s["minProperties"] = self.min_items
        return self._with_description(s)


@dataclass(frozen=True)
class Field:
    """One key of an Object: its spec, and whether it is required or its default."""

    spec: Spec
    required: bool = False
    default: Any = None


class Object(Spec):
    """A mapping with fixed keys; unknown keys are refused with a suggestion."""

    def __init__(self, fields: Mapping[str, Field], description: str = "") -> None:
        self.fields = dict(fields)
        self.description = description

    def accepts(self, value: Any) -> bool:
        return isinstance(value, dict)

    def allowed(self) -> str:
        return f"a mapping with keys {', '.join(self.fields)}"

    def check(self, value: Any, path: FieldPath, where: Where) -> Any:
        if not isinstance(value, dict):
            raise where.error(path, f"must be a mapping (key: value lines) with keys "
                                    f"{', '.join(self.fields)}; got {got(value)}")
        for key in value:
            if key not in self.fields:
                raise where.error(path + (key,), f"unknown key {key!r}{suggest(key, list(self.fields))}; "
                                                 f"allowed keys here: {', '.join(self.fields)}", at_key=True)
        for name, f in self.fields.items():
            if f.required and name not in value:
                raise where.error(path + (name,), f"required key {name!r} is missing "
                                                  f"(it must be {f.spec.allowed()})")
        out = {}
        for name, f in self.fields.items():
            if name in value:
                out[name] = f.spec.check(value[name], path + (name,), where)
            else:
                out[name] = f.default
        return out

    def json_schema(self) -> dict:
        props = {}
        for name, f in self.fields.items():
            s = f.spec.json_schema()
            if not f.required and f.default is not None:
                s = {**s, "default": f.default}
            props[name] = s
        s = {"type": "object", "properties": props, "additionalProperties": False}
        required = [n for n, f in self.fields.items() if f.required]
        if required:
            s["required"] = required
        return self._with_description(s)


class Nullable(Spec):
    """`null` or the inner spec."""

    def __init__(self, inner: Spec, description: str = "") -> None:
        self.inner = inner
        self.description = description or inner.description

    def accepts(self, value: Any) -> bool:
        return value is None or self.inner.accepts(value)

    def allowed(self) -> str:
        return f"{self.inner.allowed()}, or null"

    def check(self, value: Any, path: FieldPath, where: Where) -> Any:
        if value is None:
            return None
        if not self.inner.accepts(value):
            raise self.wrong(value, path, where)
        return self.inner.check(value, path, where)

    def json_schema(self) -> dict:
        inner = dict(self.inner.json_schema())
        inner.pop("description", None)
        return self._with_description({"anyOf": [inner, {"type": "null"}]})


class AnyOf(Spec):
    """Alternatives told apart by YAML kind (number, text, list, mapping)."""

    def __init__(self, *alternatives: Spec, description: str = "") -> None:
        self.alternatives = alternatives
        self.description = description

    def accepts(self, value: Any) -> bool:
        return any(a.accepts(value) for a in self.alternatives)

    def allowed(self) -> str:
        return " or ".join(a.allowed() for a in self.alternatives)

    def check(self, value: Any, path: FieldPath, where: Where) -> Any:
        for alt in self.alternatives:
            if alt.accepts(value):
                return alt.check(value, path, where)
        raise self.wrong(value, path, where)

    def json_schema(self) -> dict:
        return self._with_description({"anyOf": [a.json_schema() for a in self.alternatives]})


class Tagged(Spec):
    """A mapping whose `tag` key selects which Object spec applies (e.g. `dist: uniform`)."""

    def __init__(self, tag: str, alternatives: Mapping[str, Object], description: str = "") -> None:
        self.tag = tag
        self.alternatives = dict(alternatives)
        self.description = description

    def accepts(self, value: Any) -> bool:
        return isinstance(value, dict)

    def allowed(self) -> str:
        return f"a mapping with {self.tag}: {' | '.join(self.alternatives)}"

    def check(self, value: Any, path: FieldPath, where: Where) -> Any:
        if not isinstance(value, dict):
            raise self.wrong(value, path, where)
        if self.tag not in value:
            raise where.error(path + (self.tag,), f"required key {self.tag!r} is missing "
                                                  f"(one of {_quoted(list(self.alternatives))})")
        tag = value[self.tag]
        if not isinstance(tag, str) or tag not in self.alternatives:
            hint = suggest(tag, list(self.alternatives)) if isinstance(tag, str) else ""
            raise where.error(path + (self.tag,), f"must be one of {_quoted(list(self.alternatives))}, "
                                                  f"got {got(tag)}{hint}")
        rest = {k: v for k, v in value.items() if k != self.tag}
        out = self.alternatives[tag].check(rest, path, where)
        return {self.tag: tag, **out}

    def _alt_schema(self, tag: str) -> dict:
        s = self.alternatives[tag].json_schema()
        props = {self.tag: {"const": tag}, **s["properties"]}
        return {**s, "properties": props, "required": [self.tag] + s.get("required", [])}

    def json_schema(self) -> dict:
        return self._with_description({"type": "object", "required": [self.tag],
                                       "oneOf": [self._alt_schema(t) for t in self.alternatives]})


# ---------------------------------------------------------------- documents and docs

def json_schema_document(spec: Spec, *, title: str, schema_id: str) -> str:
    """The JSON Schema file for a format, as committed under protocols/ (stable text)."""
    doc = {"$schema": "https://json-schema.org/draft/2020-12/schema", "$id": schema_id, "title": title,
           **spec.json_schema()}
    return json.dumps(doc, indent=2, ensure_ascii=False) + "\n"


@dataclass(frozen=True)
class Row:
    path: str
    allowed: str
    default: str
    description: str


def _default_text(f: Field) -> str:
    if f.required:
        return "required"
    if f.default is None:
        return "optional"
    return json.dumps(f.default)


def reference_rows(spec: Spec, prefix: str = "") -> Iterator[Row]:
    """Every documented field under `spec`, depth first, in definition order."""
    if isinstance(spec, Nullable):
        yield from reference_rows(spec.inner, prefix)
    elif isinstance(spec, Object):
        for name, f in spec.fields.items():
            path = f"{prefix}.{name}" if prefix else name
            inner = f.spec.inner if isinstance(f.spec, Nullable) else f.spec
            summary = inner.allowed() if not isinstance(inner, (Object, MapOf, Tagged, AnyOf)) \
                else _kind_summary(inner)
            if isinstance(f.spec, Nullable):
                summary += ", or null"
            yield Row(path, summary, _default_text(f), f.spec.description)
            yield from reference_rows(f.spec, path)
    elif isinstance(spec, MapOf):
        yield from reference_rows(spec.value, f"{prefix}.<{spec.key_label}>")
    elif isinstance(spec, ListOf):
        yield from reference_rows(spec.item, f"{prefix}[]")
    elif isinstance(spec, Tagged):
        for tag, alt in spec.alternatives.items():
            yield Row(f"{prefix} ({spec.tag}: {tag})", f"{spec.tag}: {tag}", "", alt.description)
            yield from reference_rows(alt, prefix)
    elif isinstance(spec, AnyOf):
        for alt in spec.alternatives:
            yield from reference_rows(alt, prefix)


def _kind_summary(spec: Spec) -> str:
    if isinstance(spec, Object):
        return "mapping"
    if isinstance(spec, MapOf):
        return f"mapping of {spec.key_label} -> entry"
    if isinstance(spec, Tagged):
        return f"mapping with {spec.tag}: {' | '.join(spec.alternatives)}"
    if isinstance(spec, AnyOf):
        return " or ".join(_kind_summary(a) if isinstance(a, (Object, MapOf, Tagged)) else a.allowed()
                           for a in spec.alternatives)
    return spec.allowed()  # pragma: no cover


def reference_markdown(spec: Spec) -> str:
    """A Markdown table of every field (generated; pasted into the docs and checked by a test)."""
    lines = ["| field | allowed | default | meaning |", "|---|---|---|---|"]
    for r in reference_rows(spec):
        cells = [f"`{r.path}`", r.allowed, r.default, r.description]
        lines.append("| " + " | ".join(c.replace("|", "\\|").replace("\n", " ") for c in cells) + " |")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- regenerating the committed files

GENERATED_BEGIN = "<!-- BEGIN GENERATED {name}: python -m experiment.protocol.generate -->"
GENERATED_END = "<!-- END GENERATED {name} -->"


def replace_generated(doc: str, name: str, content: str) -> str:
    """`doc` with the text between the BEGIN/END GENERATED markers of `name` replaced."""
    begin, end = GENERATED_BEGIN.format(name=name), GENERATED_END.format(name=name)
    head, sep, rest = doc.partition(begin)
    _, sep2, tail = rest.partition(end)
    if not sep or not sep2:
        raise ValueError(f"markers for {name!r} not found")
    return f"{head}{begin}\n{content}{end}{tail}"
