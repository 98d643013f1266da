"""YAML text -> plain Python values plus the line and column of every value.

Public API:
    parse_yaml(text, *, file) -> Located      pure: parse text, keep positions
    read_yaml(path) -> Located                 read a file (UTF-8) and parse it
    Located.data, Located.where                the values (plain dicts, lists, scalars) and their `Where`
    Where.error(path, problem) -> InputError   "FILE:LINE:COL: field.path: problem"
    format_path(path) -> str                   ("trial_types", "pain", "phases", 2) -> "trial_types.pain.phases[2]"

Why: every message about a protocol or rig file must name the file, the line, the
column and the field path. PyYAML's `safe_load` throws positions away, so this module
composes the node graph and records where each value sits. Duplicate keys (which
`safe_load` silently resolves to the last one) and non-text keys (YAML 1.1 reads
`on:`/`yes:` as booleans) are refused here, with their position.

Types: the parsed values are `object` (nothing is known about them before validation);
PyYAML's constructors return `Any`, and that is the only place `Any` comes in.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Union

import yaml

from experiment.errors import InputError

PathItem = Union[str, int]
FieldPath = tuple[PathItem, ...]

MAX_NODES = 100_000   # guards against alias bombs ("billion laughs") and huge files
MAX_DEPTH = 40        # no real protocol nests deeper than ~6 levels
MAX_BYTES = 1_000_000


_PLAIN_TAGS = ("tag:yaml.org,2002:seq", "tag:yaml.org,2002:map")


def format_path(path: FieldPath) -> str:
    """Render a field path the way users write it: `a.b[2].c`."""
    out = ""
    for item in path:
        if isinstance(item, int):
            out += f"[{item}]"
        else:
            name = item if item.isprintable() and item.strip() == item and item else repr(item)
            out += f".{name}" if out else name
    return out or "(top level)"


@dataclass(frozen=True)
class Where:
    """Where each value of one file came from; builds located error messages."""

    file: str
    positions: Mapping[FieldPath, tuple[int, int]] = field(default_factory=dict, repr=False)
    key_positions: Mapping[FieldPath, tuple[int, int]] = field(default_factory=dict, repr=False)

    def position(self, path: FieldPath) -> tuple[int, int] | None:
        """Line and column (1-based) of the value at `path`, or of its nearest ancestor."""
        path = tuple(path)
        while True:
            if path in self.positions:
                return self.positions[path]
            if not path:
                return None
            path = path[:-1]

    def error(self, path: FieldPath, problem: str, *, at_key: bool = False) -> InputError:
        """An InputError reading `FILE:LINE:COL: field.path: problem` (at the key itself with at_key)."""
        pos = self.key_positions.get(tuple(path)) if at_key else None
        pos = pos or self.position(path)
        loc = f"{self.file}:{pos[0]}:{pos[1]}" if pos else self.file
        return InputError(f"{loc}: {format_path(tuple(path))}: {problem}")


@dataclass(frozen=True)
class Located:
    """Parsed YAML values (dicts, lists, scalars) and where each one is."""

    data: object
    where: Where


def _mark(node: yaml.Node) -> tuple[int, int]:
    return node.start_mark.line + 1, node.start_mark.column + 1


class _Builder:
    """Turns a composed YAML node graph into plain values, recording positions."""

    def __init__(self, loader: yaml.SafeLoader, file: str) -> None:
        self.loader = loader
        self.file = file
        self.positions: dict[FieldPath, tuple[int, int]] = {}
        self.key_positions: dict[FieldPath, tuple[int, int]] = {}
        self.count = 0

    def fail(self, node: yaml.Node, problem: str) -> InputError:
        line, col = _mark(node)
        return InputError(f"{self.file}:{line}:{col}: {problem}")

    def build(self, node: yaml.Node, path: FieldPath, key_pos: tuple[int, int] | None) -> object:
        self.count += 1
        if self.count > MAX_NODES:
            raise self.fail(node, f"too many values (more than {MAX_NODES}, counting repeated aliases); "
                                  "a protocol file is a few hundred")
        if len(path) > MAX_DEPTH:
            raise self.fail(node, f"{format_path(path)}: nested more than {MAX_DEPTH} levels deep")
        if isinstance(node, yaml.ScalarNode):
            self.positions[path] = _mark(node)
            try:
                return self.loader.construct_object(node, deep=True)
            except (yaml.YAMLError, ValueError, OverflowError) as exc:
                raise self.fail(node, f"{format_path(path)}: cannot read this value ({_first_line(exc)})") from None
        # collections: point at the key that introduces them when there is one
        self.positions[path] = key_pos or _mark(node)
        if node.tag not in _PLAIN_TAGS:
            raise self.fail(node, f"{format_path(path)}: unsupported YAML tag {node.tag!r}; write plain "
                                  f"lists and mappings")
        if isinstance(node, yaml.SequenceNode):
            return [self.build(item, path + (i,), None) for i, item in enumerate(node.value)]
        if isinstance(node, yaml.MappingNode):
            try:
                self.loader.flatten_mapping(node)  # resolve `<<` merge keys
            except yaml.YAMLError as exc:
                raise self.fail(node, f"{format_path(path)}: bad merge key ({_first_line(exc)})") from None
            out: dict[str, object] = {}
            for key_node, value_node in node.value:
                if not isinstance(key_node, yaml.ScalarNode):
                    raise self.fail(key_node, f"{format_path(path)}: a key must be a plain name, not a list or mapping")
                try:
                    key: Any = self.loader.construct_object(key_node)  # PyYAML: Any
                except (yaml.YAMLError, ValueError, OverflowError) as exc:
                    raise self.fail(key_node, f"{format_path(path)}: cannot read this key "
                                              f"({_first_line(exc)})") from None
                if not isinstance(key, str):
                    hint = " (YAML reads yes/no/on/off/true/false as booleans: quote the key)" \
                        if isinstance(key, bool) else " (quote it to make it a name)"
                    raise self.fail(key_node, f"{format_path(path + (str(key),))}: key {key!r} must be text{hint}")
                if key in out:
                    raise self.fail(key_node, f"{format_path(path + (key,))}: duplicate key {key!r} "
                                              f"(first given on line {self.key_positions[path + (key,)][0]})")
                self.key_positions[path + (key,)] = _mark(key_node)
                out[key] = self.build(value_node, path + (key,), _mark(key_node))
            return out
        raise self.fail(node, f"{format_path(path)}: unsupported YAML node")  # pragma: no cover


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def parse_yaml(text: str, *, file: str) -> Located:
    """Parse one YAML document; refuse syntax errors, duplicate keys and non-text keys.

    An empty document gives `None` as data (callers refuse it as "not a mapping").
    """
    try:
        loader = yaml.SafeLoader(text)
    except yaml.reader.ReaderError as exc:  # a character YAML does not allow, found up front
        line = text[: exc.position].count("\n") + 1
        raise InputError(f"{file}:{line}: YAML syntax error: character U+{exc.character:04X} is not allowed "
                         f"in YAML text") from None
    try:
        try:
            node = loader.get_single_node()
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            what = " ".join(p for p in (exc.context, exc.problem) if p) or "invalid YAML"
            if mark is not None:
                raise InputError(f"{file}:{mark.line + 1}:{mark.column + 1}: YAML syntax error: {what}") from None
            raise InputError(f"{file}: YAML syntax error: {what}") from None
        except yaml.YAMLError as exc:
            raise InputError(f"{file}: YAML syntax error: {_first_line(exc)}") from None
        except RecursionError:
            raise InputError(f"{file}: YAML nested too deeply to read") from None
        if node is None:
            return Located(None, Where(file, {(): (1, 1)}))
        builder = _Builder(loader, file)
        try:
            data = builder.build(node, (), None)
        except RecursionError:
            raise InputError(f"{file}: YAML nested too deeply to read") from None
        return Located(data, Where(file, builder.positions, builder.key_positions))
    finally:
        loader.dispose()


def read_yaml(path: str | Path) -> Located:
    """Read a UTF-8 YAML file; a missing, unreadable or binary file is an InputError."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        raise InputError(f"{p}: file not found") from None
    except IsADirectoryError:
        raise InputError(f"{p}: is a directory, expected a YAML file") from None
    except OSError as exc:
        raise InputError(f"{p}: cannot read ({exc.strerror or exc})") from None
    return parse_yaml(decode_text(raw, file=str(p)), file=str(p))


def decode_text(raw: bytes, *, file: str) -> str:
    """Decode a text file's bytes as UTF-8, refusing binary and oversized files."""
    if len(raw) > MAX_BYTES:
        raise InputError(f"{file}: file is {len(raw)} bytes; a YAML file here is at most {MAX_BYTES}")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise InputError(f"{file}:{line}: not UTF-8 text (byte 0x{raw[exc.start]:02x}); "
                         f"save the file as UTF-8") from None
    if "\x00" in text:
        raise InputError(f"{file}: contains NUL bytes; expected a YAML text file")
    return text
