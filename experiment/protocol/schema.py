"""Declarative field specs: one definition checks YAML values, exports JSON Schema, documents fields.

Public API:
    Number, Integer, Text, Choice, KeyName, Boolean, ListOf, Pair, MapOf, Nullable, AnyOf, Tagged, Refined
    record, spec(s, default=...)                a frozen dataclass whose fields carry their specs
    Record(cls, description)                    the spec of such a dataclass (a YAML mapping)
    s.check(value, path, where) -> T            checked and converted; raises InputError
    s.json_schema() -> dict                     JSON Schema (draft 2020-12) fragment
    json_schema_document(spec, *, title, schema_id) -> str   the file written to protocols/
    reference_rows(spec, prefix) -> rows        one row per field, for docs/protocol-format.md
    reference_markdown(spec) -> str             those rows as a Markdown table

Why one definition: the checker, the editor schema in `protocols/*.schema.json` and the
field reference in the docs cannot drift apart when all three come from the same specs.
Why typed: `Spec[T].check` returns a T, and a `record` field `x: float = spec(Number(...))`
is checked by mypy against its annotation, so validated values are typed all the way
into `Protocol` and `Rig` (the only untyped value is the parsed YAML going in, `object`).
Checks are pure (no I/O) and stop at the first problem, reported as
`FILE:LINE:COL: field.path: must be <allowed>, got <value>`. Cross-field rules (a cue
that must exist, min <= max, safety limits) are not here; the modules that own the
format (`experiment.protocol.model`, `experiment.protocol.rig`) check them after.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import json
import math
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Generic, Iterator, Mapping, Sequence, TypeVar, Union, cast

from experiment.errors import InputError
from experiment.protocol.yamlload import FieldPath, Where

T = TypeVar("T")
A = TypeVar("A")
B = TypeVar("B")
T_co = TypeVar("T_co", covariant=True)
C = TypeVar("C")
JSON = dict[str, object]   # a JSON Schema fragment

if TYPE_CHECKING:
    from typing_extensions import dataclass_transform
else:
    def dataclass_transform(**_: object) -> Callable[[C], C]:
        """PEP 681 marker for type checkers; nothing to do at run time."""
        return lambda f: f


def got(value: object) -> str:
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


def _quoted(values: Sequence[str]) -> str:
    return ", ".join(repr(v) for v in values)


def _fmt(x: float) -> str:
    return str(x) if isinstance(x, int) else f"{x:g}"


class Spec(Generic[T_co]):
    """A field's rules: what it accepts, how it converts (to a T), how it is described."""

    description: str = ""
    kinds: tuple[type, ...] = ()   # the YAML kinds it reads: AnyOf and Nullable choose by them

    def accepts(self, value: object) -> bool:
        """Whether the value is of a kind this spec reads (a boolean is never a number)."""
        return isinstance(value, self.kinds) and (bool in self.kinds or not isinstance(value, bool))

    def allowed(self) -> str:
        """What is allowed, as a phrase: 'a number of seconds > 0'."""
        raise NotImplementedError

    def check(self, value: object, path: FieldPath, where: Where) -> T_co:
        raise NotImplementedError

    def schema(self) -> JSON:
        """The JSON Schema of this spec without its description."""
        raise NotImplementedError

    def json_schema(self) -> JSON:
        s = self.schema()
        return {"description": self.description, **s} if self.description else s

    def wrong(self, value: object, path: FieldPath, where: Where) -> InputError:
        return where.error(path, f"must be {self.allowed()}, got {got(value)}")


class _Numeric(Spec[T_co]):
    """A finite number (never a boolean) within bounds; subclasses say whole or not."""

    noun = "a number"
    json_type = "number"
    kinds = (int, float)

    def __init__(self, description: str = "", *, unit: str = "", minimum: float | None = None,
                 maximum: float | None = None, exclusive_minimum: bool = False) -> None:
        self.description = description
        self.unit = unit
        self.minimum = minimum
        self.maximum = maximum
        self.exclusive_minimum = exclusive_minimum

    def allowed(self) -> str:
        noun = f"{self.noun} of {self.unit}" if self.unit else self.noun
        lo, hi = self.minimum, self.maximum
        if lo is not None and hi is not None:
            if self.exclusive_minimum:
                return f"{noun} more than {_fmt(lo)} and at most {_fmt(hi)}"
            return f"{noun} from {_fmt(lo)} to {_fmt(hi)}"
        if lo is not None:
            return f"{noun} {'>' if self.exclusive_minimum else '>='} {_fmt(lo)}"
        return noun if hi is None else f"{noun} <= {_fmt(hi)}"

    def _number(self, value: object, path: FieldPath, where: Where) -> float:
        """The value as a finite number within bounds (int or float as given)."""
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
            raise self.wrong(value, path, where)
        lo, hi = self.minimum, self.maximum
        if (lo is not None and (value <= lo if self.exclusive_minimum else value < lo)) \
                or (hi is not None and value > hi):
            raise self.wrong(value, path, where)
        return value

    def schema(self) -> JSON:
        s: JSON = {"type": self.json_type}
        if self.minimum is not None:
            s["exclusiveMinimum" if self.exclusive_minimum else "minimum"] = self.minimum
        if self.maximum is not None:
            s["maximum"] = self.maximum
        return s


class Number(_Numeric[float]):
    """A finite number, as a float."""

    def check(self, value: object, path: FieldPath, where: Where) -> float:
        if isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        return float(self._number(value, path, where))


class Integer(_Numeric[int]):
    """A whole number (2.0 reads as 2)."""

    noun = "a whole number"
    json_type = "integer"

    def check(self, value: object, path: FieldPath, where: Where) -> int:
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if not isinstance(value, int):
            raise self.wrong(value, path, where)
        return int(self._number(value, path, where))


class Text(Spec[str]):
    """Text, optionally matching a pattern (described in words for messages)."""

    kinds = (str,)

    def __init__(self, description: str = "", *, pattern: str | None = None, pattern_doc: str = "",
                 min_length: int = 1, max_length: int = 2000) -> None:
        self.description = description
        self.pattern = pattern
        self.pattern_doc = pattern_doc
        self.min_length = min_length
        self.max_length = max_length
        self._re = re.compile(pattern) if pattern else None

    def allowed(self) -> str:
        if self.pattern_doc:
            return self.pattern_doc
        return f"{'non-empty ' if self.min_length else ''}text (at most {self.max_length} characters)"

    def matches(self, value: str) -> bool:
        fits = self.min_length <= len(value) <= self.max_length
        return fits and (self._re is None or self._re.fullmatch(value) is not None)

    def check(self, value: object, path: FieldPath, where: Where) -> str:
        if not isinstance(value, str) or not self.matches(value):
            raise self.wrong(value, path, where)
        return value

    def schema(self) -> JSON:
        s: JSON = {"type": "string", "minLength": self.min_length, "maxLength": self.max_length}
        if self.pattern:
            s["pattern"] = f"^(?:{self.pattern})$"
        return s


class Choice(Spec[str]):
    """One of a fixed set of words; a near miss gets a suggestion."""

    kinds = (str,)

    def __init__(self, values: Sequence[str], description: str = "") -> None:
        self.values = tuple(values)
        self.description = description

    def allowed(self) -> str:
        return f"one of {_quoted(self.values)}"

    def check(self, value: object, path: FieldPath, where: Where) -> str:
        if isinstance(value, str) and value in self.values:
            return value
        hint = suggest(value, self.values) if isinstance(value, str) else ""
        raise where.error(path, f"must be {self.allowed()}, got {got(value)}{hint}")

    def schema(self) -> JSON:
        return {"enum": list(self.values)}


class KeyName(Spec[str]):
    """A keyboard key as PsychoPy names it ('5', 'space', 'escape', 'num_1'); digits may be unquoted."""

    _RE = re.compile(r"[a-z0-9_]{1,20}")
    kinds = (str, int)

    def __init__(self, description: str = "") -> None:
        self.description = description

    def allowed(self) -> str:
        return "a key name as PsychoPy reports it: lowercase letters, digits or '_' (e.g. '5', 'space', 'escape')"

    def check(self, value: object, path: FieldPath, where: Where) -> str:
        if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 9:
            value = str(value)
        if not isinstance(value, str) or not self._RE.fullmatch(value):
            raise self.wrong(value, path, where)
        return value

    def schema(self) -> JSON:
        return {"anyOf": [{"type": "string", "pattern": "^[a-z0-9_]{1,20}$"},
                          {"type": "integer", "minimum": 0, "maximum": 9}]}


class Boolean(Spec[bool]):
    kinds = (bool,)

    def __init__(self, description: str = "") -> None:
        self.description = description

    def allowed(self) -> str:
        return "true or false"

    def check(self, value: object, path: FieldPath, where: Where) -> bool:
        if not isinstance(value, bool):
            raise self.wrong(value, path, where)
        return value

    def schema(self) -> JSON:
        return {"type": "boolean"}


class ListOf(Spec[tuple[T, ...]]):
    """A list of items (returned as a tuple)."""

    kinds = (list,)

    def __init__(self, item: Spec[T], description: str = "", *, min_items: int = 0,
                 max_items: int | None = None) -> None:
        self.item = item
        self.description = description
        self.min_items = min_items
        self.max_items = max_items

    def allowed(self) -> str:
        if self.min_items == self.max_items:
            count = f"of exactly {self.min_items}"
        elif self.max_items is not None:
            count = f"of {self.min_items} to {self.max_items}"
        else:
            count = f"of at least {self.min_items}" if self.min_items else ""
        return " ".join(p for p in ("a list", count, f"(each {self.item.allowed()})") if p)

    def check(self, value: object, path: FieldPath, where: Where) -> tuple[T, ...]:
        if not isinstance(value, list) or len(value) < self.min_items \
                or (self.max_items is not None and len(value) > self.max_items):
            raise self.wrong(value, path, where)
        return tuple(self.item.check(v, path + (i,), where) for i, v in enumerate(value))

    def schema(self) -> JSON:
        s: JSON = {"type": "array", "items": self.item.json_schema()}
        if self.min_items:
            s["minItems"] = self.min_items
        if self.max_items is not None:
            s["maxItems"] = self.max_items
        return s


class Pair(Spec[tuple[T, T]]):
    """A list of exactly two items, e.g. [width, height] (returned as a 2-tuple)."""

    kinds = (list,)

    def __init__(self, item: Spec[T], description: str = "") -> None:
        self.items = ListOf(item, description, min_items=2, max_items=2)
        self.description = description

    def allowed(self) -> str:
        return self.items.allowed()

    def check(self, value: object, path: FieldPath, where: Where) -> tuple[T, T]:
        first, second = self.items.check(value, path, where)
        return first, second

    def schema(self) -> JSON:
        return self.items.schema()


class MapOf(Spec[dict[str, T]]):
    """A mapping from user-chosen names to values of one spec (order kept)."""

    kinds = (dict,)

    def __init__(self, key: Text, value: Spec[T], description: str = "", *, min_items: int = 0,
                 max_items: int = 200, key_label: str = "name") -> None:
        self.key = key
        self.value = value
        self.description = description
        self.min_items = min_items
        self.max_items = max_items
        self.key_label = key_label

    def allowed(self) -> str:
        return f"a mapping of {self.key_label} -> entry, each {self.key_label} {self.key.allowed()}"

    def check(self, value: object, path: FieldPath, where: Where) -> dict[str, T]:
        if not isinstance(value, dict):
            raise self.wrong(value, path, where)
        if not (self.min_items <= len(value) <= self.max_items):
            raise where.error(path, f"must have {self.min_items} to {self.max_items} entries, got {len(value)}")
        out = {}
        for k, v in value.items():
            if not self.key.matches(k):
                raise where.error(path + (k,), f"the {self.key_label} {k!r} is not allowed: use {self.key.allowed()}",
                                  at_key=True)
            out[k] = self.value.check(v, path + (k,), where)
        return out

    def schema(self) -> JSON:
        s: JSON = {"type": "object", "additionalProperties": self.value.json_schema()}
        if self.key.pattern:
            s["propertyNames"] = {"pattern": f"^(?:{self.key.pattern})$"}
        if self.min_items:
            s["minProperties"] = self.min_items
        return s


class Nullable(Spec[Union[T, None]]):
    """`null` or the inner spec."""

    def __init__(self, inner: Spec[T], description: str = "") -> None:
        self.inner = inner
        self.description = description or inner.description
        self.kinds = (type(None), *inner.kinds)

    def allowed(self) -> str:
        return f"{self.inner.allowed()}, or null"

    def check(self, value: object, path: FieldPath, where: Where) -> T | None:
        if value is None:
            return None
        if not self.inner.accepts(value):
            raise self.wrong(value, path, where)
        return self.inner.check(value, path, where)

    def schema(self) -> JSON:
        return {"anyOf": [self.inner.schema(), {"type": "null"}]}


class AnyOf(Spec[Union[A, B]]):
    """Two alternatives told apart by YAML kind (number, text, list, mapping)."""

    def __init__(self, first: Spec[A], second: Spec[B], *, description: str = "") -> None:
        self.alternatives: tuple[Spec[A | B], ...] = (first, second)
        self.description = description
        self.kinds = first.kinds + second.kinds

    def allowed(self) -> str:
        return " or ".join(a.allowed() for a in self.alternatives)

    def check(self, value: object, path: FieldPath, where: Where) -> A | B:
        for alt in self.alternatives:
            if alt.accepts(value):
                return alt.check(value, path, where)
        raise self.wrong(value, path, where)

    def schema(self) -> JSON:
        return {"anyOf": [a.json_schema() for a in self.alternatives]}


class Refined(Spec[B], Generic[A, B]):
    """The inner spec, then a conversion that may refuse with a located message (min <= max, ...)."""

    def __init__(self, inner: Spec[A], convert: Callable[[A, FieldPath, Where], B]) -> None:
        self.inner = inner
        self.convert = convert
        self.description = inner.description
        self.kinds = inner.kinds

    def allowed(self) -> str:
        return self.inner.allowed()

    def check(self, value: object, path: FieldPath, where: Where) -> B:
        return self.convert(self.inner.check(value, path, where), path, where)

    def schema(self) -> JSON:
        return self.inner.schema()


# ---------------------------------------------------------------- records: frozen dataclasses read from mappings

class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED = _Required()
_SPEC = "cuedpain.spec"


@dataclass(frozen=True)
class Field:
    """One key of a record: its spec and its default as written in YAML (REQUIRED: none)."""

    spec: Spec[object]
    default: object = REQUIRED

    @property
    def required(self) -> bool:
        return self.default is REQUIRED


_NOWHERE = Where("<default>")


def spec(s: Spec[T], *, default: object = REQUIRED) -> T:
    """A `record` field read by `s`; `default` is written as in a YAML file ([0, 0], {}, 'white').

    Typed as T so that mypy checks the spec against the field's annotation.
    """
    meta = {_SPEC: Field(s, default)}
    if default is REQUIRED:
        return cast(T, dataclasses.field(metadata=meta))
    value = s.check(default, (), _NOWHERE)
    if isinstance(value, (dict, list, set)):   # a mutable default: a fresh copy for every instance
        return cast(T, dataclasses.field(default_factory=lambda: copy.deepcopy(value), metadata=meta))
    return dataclasses.field(default=value, metadata=meta)


@dataclass_transform(frozen_default=True, kw_only_default=True, field_specifiers=(spec, dataclasses.field))
def record(cls: type[C]) -> type[C]:
    """A frozen, keyword-only dataclass whose `spec` fields a `Record` reads from YAML."""
    return dataclasses.dataclass(frozen=True, kw_only=True)(cls)


class Record(Spec[T_co]):
    """A mapping with fixed keys -> an instance of a `record` class; unknown keys are refused with
    a suggestion. Fields without a spec (e.g. a file path set later) are not read from YAML."""

    kinds = (dict,)

    def __init__(self, cls: type[T_co], description: str = "") -> None:
        self.cls = cls
        self.description = description
        read = dataclasses.fields(cls)  # type: ignore[arg-type]  # a record class is a dataclass
        self.fields: dict[str, Field] = {f.name: f.metadata[_SPEC] for f in read if _SPEC in f.metadata}

    def allowed(self) -> str:
        return f"a mapping with keys {', '.join(self.fields)}"

    def defaults(self) -> dict[str, object]:
        """Every field's default as written in YAML (for a record whose fields are all optional)."""
        assert not any(f.required for f in self.fields.values()), f"{self.cls.__name__} has required fields"
        return {name: f.default for name, f in self.fields.items()}

    def check(self, value: object, path: FieldPath, where: Where) -> T_co:
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
        values = {name: f.spec.check(value[name], path + (name,), where)
                  for name, f in self.fields.items() if name in value}
        return cast(Callable[..., T_co], self.cls)(**values)  # missing keys: the dataclass defaults

    def properties(self) -> JSON:
        props: JSON = {}
        for name, f in self.fields.items():
            s = f.spec.json_schema()
            props[name] = s if f.required or f.default is None else {**s, "default": f.default}
        return props

    def required(self) -> list[str]:
        return [n for n, f in self.fields.items() if f.required]

    def schema(self) -> JSON:
        s: JSON = {"type": "object", "properties": self.properties(), "additionalProperties": False}
        return {**s, "required": self.required()} if self.required() else s


class Tagged(Spec[T_co]):
    """A mapping whose `tag` key selects which record applies (e.g. `dist: uniform`)."""

    kinds = (dict,)

    def __init__(self, tag: str, alternatives: Mapping[str, Record[T_co]], description: str = "") -> None:
        self.tag = tag
        self.alternatives = dict(alternatives)
        self.description = description

    def allowed(self) -> str:
        return f"a mapping with {self.tag}: {' | '.join(self.alternatives)}"

    def check(self, value: object, path: FieldPath, where: Where) -> T_co:
        if not isinstance(value, dict):
            raise self.wrong(value, path, where)
        tags = list(self.alternatives)
        if self.tag not in value:
            raise where.error(path + (self.tag,), f"required key {self.tag!r} is missing (one of {_quoted(tags)})")
        tag = value[self.tag]
        if not isinstance(tag, str) or tag not in self.alternatives:
            hint = suggest(tag, tags) if isinstance(tag, str) else ""
            raise where.error(path + (self.tag,), f"must be one of {_quoted(tags)}, got {got(tag)}{hint}")
        return self.alternatives[tag].check({k: v for k, v in value.items() if k != self.tag}, path, where)

    def schema(self) -> JSON:
        return {"type": "object", "required": [self.tag],
                "oneOf": [{**alt.json_schema(), "properties": {self.tag: {"const": tag}, **alt.properties()},
                           "required": [self.tag, *alt.required()]} for tag, alt in self.alternatives.items()]}


# ---------------------------------------------------------------- documents and docs

def json_schema_document(s: Spec[object], *, title: str, schema_id: str) -> str:
    """The JSON Schema file for a format, as committed under protocols/ (stable text)."""
    doc = {"$schema": "https://json-schema.org/draft/2020-12/schema", "$id": schema_id, "title": title,
           **s.json_schema()}
    return json.dumps(doc, indent=2, ensure_ascii=False) + "\n"


@dataclass(frozen=True)
class Row:
    path: str
    allowed: str
    default: str
    description: str


def _plain(s: Spec[object]) -> Spec[object]:
    """The spec that describes the YAML (a Refined spec reads as its inner spec)."""
    return _plain(s.inner) if isinstance(s, Refined) else s


def _default_text(f: Field) -> str:
    if f.required:
        return "required"
    return "optional" if f.default is None else json.dumps(f.default)


def reference_rows(s: Spec[object], prefix: str = "") -> Iterator[Row]:
    """Every documented field under `s`, depth first, in definition order."""
    s = _plain(s)
    if isinstance(s, Nullable):
        yield from reference_rows(s.inner, prefix)
    elif isinstance(s, Record):
        for name, f in s.fields.items():
            path = f"{prefix}.{name}" if prefix else name
            inner = _plain(f.spec.inner if isinstance(f.spec, Nullable) else f.spec)
            summary = _kind_summary(inner) if isinstance(inner, (Record, MapOf, Tagged, AnyOf)) else inner.allowed()
            if isinstance(f.spec, Nullable):
                summary += ", or null"
            yield Row(path, summary, _default_text(f), f.spec.description)
            yield from reference_rows(f.spec, path)
    elif isinstance(s, MapOf):
        yield from reference_rows(s.value, f"{prefix}.<{s.key_label}>")
    elif isinstance(s, ListOf):
        yield from reference_rows(s.item, f"{prefix}[]")
    elif isinstance(s, Tagged):
        for tag, alt in s.alternatives.items():
            yield Row(f"{prefix} ({s.tag}: {tag})", f"{s.tag}: {tag}", "", alt.description)
            yield from reference_rows(alt, prefix)
    elif isinstance(s, AnyOf):
        for a in s.alternatives:
            yield from reference_rows(a, prefix)


def _kind_summary(s: Spec[object]) -> str:
    s = _plain(s)
    if isinstance(s, Record):
        return "mapping"
    if isinstance(s, MapOf):
        return f"mapping of {s.key_label} -> entry"
    if isinstance(s, Tagged):
        return f"mapping with {s.tag}: {' | '.join(s.alternatives)}"
    if isinstance(s, AnyOf):
        return " or ".join(_kind_summary(a) for a in s.alternatives)
    return s.allowed()


def reference_markdown(s: Spec[object]) -> str:
    """A Markdown table of every field (generated; pasted into the docs and checked by a test)."""
    lines = ["| field | allowed | default | meaning |", "|---|---|---|---|"]
    for r in reference_rows(s):
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
