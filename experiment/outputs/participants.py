"""participants.tsv and participants.json: who is in the study, in which group, with which facts.

The lab declares its participant fields once, in a small YAML file (example:
protocols/participants.yaml), and passes it once (`cuedpain participants declare FILE`, or
`--fields FILE` with `set`). The declaration is kept in the dataset root's
participants.json, the BIDS sidecar of participants.tsv: per column a Description, Levels
for a categorical field, Units, Format (string, integer, number), Minimum and Maximum.
From then on the sidecar is the declaration, so the dataset describes itself and every
value set later is checked against it. A changed YAML passed again replaces the
declaration if every value already entered still fits it; a field with values is never
dropped.

participants.tsv: `participant_id` (`sub-<label>`) first, then the declared fields in
their order (columns the lab added by hand are kept as they are), one row per
participant sorted by id, `n/a` for a missing value. Every subject of the root (a
`sub-*` directory, or data under `sourcedata/sub-*`) gets a row whenever the file is
written: the BIDS validator reports PARTICIPANT_ID_MISMATCH for a subject directory
without one. A participant may be entered before any data exist.

Pure: `parse_declaration`, `declaration_from_sidecar`, `parse_participants_tsv`,
`apply_declaration`, `set_fields`, `with_rows_for`, `participants_tsv_text`,
`sidecar_doc`. Shell: `read_participants` (lenient, for the study page),
`set_participant` (the one call the calibration command, a visit plan or the operator's
page makes), `declare_fields`, `subjects_with_data`.
"""

from __future__ import annotations

import difflib
import math
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Mapping, Sequence

from experiment.errors import InputError
from experiment.outputs.atomic import OwnedPaths, write_text
from experiment.protocol.identifiers import check_label
from experiment.protocol.yamlload import Located, Where, read_yaml
from experiment.outputs.filelock import locked
from experiment.outputs.jsonio import JsonObject, JsonValue, dumps, load_object, number, obj, text

MISSING = "n/a"
ID_COLUMN = "participant_id"
GROUP_FIELD = "group"
FORMATS = ("string", "integer", "number")
TSV_NAME = "participants.tsv"
JSON_NAME = "participants.json"
LOCK_PATH = Path("sourcedata") / ".participants.lock"
FIELD_KEYS = ("description", "levels", "format", "units", "minimum", "maximum")
ID_DESCRIPTION = "Participant label: sub-<label>, as in the dataset's directory names."

_FIELD_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
_SUBJECT = re.compile(r"^sub-([A-Za-z0-9]+)$")
_INTEGER = re.compile(r"^[+-]?\d+$")


def _hint(word: str, choices: Sequence[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def _number_text(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


@dataclass(frozen=True)
class FieldSpec:
    """One declared participant field (a column of participants.tsv)."""

    name: str
    description: str
    levels: tuple[tuple[str, str], ...] = ()   # (value, meaning); empty: not categorical
    format: str = "string"                      # string | integer | number
    units: str | None = None
    minimum: float | None = None
    maximum: float | None = None

    @property
    def level_values(self) -> tuple[str, ...]:
        return tuple(v for v, _ in self.levels)

    def allowed(self) -> str:
        """What this field takes, in words."""
        if self.levels:
            return "one of " + ", ".join(self.level_values)
        kind = {"integer": "a whole number", "number": "a number", "string": "text"}[self.format]
        if self.units:
            kind += f" ({self.units})"
        if self.minimum is not None and self.maximum is not None:
            kind += f" from {_number_text(self.minimum)} to {_number_text(self.maximum)}"
        elif self.minimum is not None:
            kind += f" of at least {_number_text(self.minimum)}"
        elif self.maximum is not None:
            kind += f" of at most {_number_text(self.maximum)}"
        return kind

    def check(self, value: str) -> str:
        """The value as stored (`n/a` clears it); ValueError saying what is allowed."""
        v = value.strip()
        if v == MISSING:
            return MISSING
        if not v or any(c in v for c in "\t\r\n"):
            raise ValueError(f"must be {self.allowed()}, or n/a (empty values, tabs and line breaks are not "
                             "allowed)")
        if self.levels:
            if v not in self.level_values:
                raise ValueError(f"must be {self.allowed()}, or n/a; got {v!r}{_hint(v, self.level_values)}")
            return v
        if self.format == "string":
            return v
        if self.format == "integer" and not _INTEGER.match(v):
            raise ValueError(f"must be {self.allowed()}, or n/a; got {v!r}")
        try:
            x = float(v)
        except ValueError:
            raise ValueError(f"must be {self.allowed()}, or n/a; got {v!r}") from None
        if not math.isfinite(x) or (self.minimum is not None and x < self.minimum) or \
                (self.maximum is not None and x > self.maximum):
            raise ValueError(f"must be {self.allowed()}, or n/a; got {v!r}")
        return str(int(v)) if self.format == "integer" else v

    def sidecar(self) -> JsonObject:
        """This field's entry in participants.json."""
        out: JsonObject = {"Description": self.description}
        if self.levels:
            out["Levels"] = {v: meaning for v, meaning in self.levels}
        if self.format != "string" or not self.levels:
            out["Format"] = self.format
        if self.units:
            out["Units"] = self.units
        if self.minimum is not None:
            out["Minimum"] = int(self.minimum) if self.format == "integer" else self.minimum
        if self.maximum is not None:
            out["Maximum"] = int(self.maximum) if self.format == "integer" else self.maximum
        return out


@dataclass(frozen=True)
class Declaration:
    """The lab's participant fields, in order, and where they were declared (for messages)."""

    fields: tuple[FieldSpec, ...]
    source: str

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.fields)

    def field(self, name: str) -> FieldSpec | None:
        return next((f for f in self.fields if f.name == name), None)


@dataclass(frozen=True)
class ParticipantsTable:
    """participants.tsv as text cells: `participant_id` first, `n/a` for missing."""

    columns: tuple[str, ...] = (ID_COLUMN,)
    rows: tuple[tuple[str, ...], ...] = ()

    def ids(self) -> tuple[str, ...]:
        return tuple(r[0] for r in self.rows)

    def row(self, participant_id: str) -> dict[str, str] | None:
        for r in self.rows:
            if r[0] == participant_id:
                return dict(zip(self.columns, r))
        return None

    def column(self, name: str) -> tuple[str, ...]:
        if name not in self.columns:
            return tuple(MISSING for _ in self.rows)
        k = self.columns.index(name)
        return tuple(r[k] for r in self.rows)


# ---------------------------------------------------------------- declarations (pure)

def _levels(value: object, where: Where, path: tuple[str | int, ...]) -> tuple[tuple[str, str], ...]:
    pairs: list[tuple[object, object, str | int]] = []   # (level, meaning, path item)
    if isinstance(value, list):
        pairs = [(item, item, k) for k, item in enumerate(value)]
    elif isinstance(value, dict):
        pairs = [(k, v, str(k)) for k, v in value.items()]
    else:
        raise where.error(path, "must be a mapping of value: meaning (or a list of values)")
    out: list[tuple[str, str]] = []
    for level, meaning, item in pairs:
        at = path + (item,)
        if isinstance(level, bool) or not isinstance(level, (str, int)) or not str(level).strip():
            raise where.error(at, f"a level must be a word or a number, got {level!r} (quote yes/no/on/off)")
        lv = str(level).strip()
        if lv == MISSING or any(c in lv for c in "\t\r\n"):
            raise where.error(at, f"{lv!r} cannot be a level ('n/a' means missing; no tabs or line breaks)")
        if isinstance(meaning, bool) or not isinstance(meaning, (str, int, float)):
            raise where.error(at, "the meaning of a level must be text")
        if lv in (v for v, _ in out):
            raise where.error(at, f"level {lv!r} is listed twice")
        out.append((lv, str(meaning)))
    if not out:
        raise where.error(path, "must list at least one level")
    return tuple(out)


def _bound(spec: Mapping[str, object], key: str, where: Where, path: tuple[str | int, ...]) -> float | None:
    value = spec.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(float(value)):
        raise where.error(path + (key,), f"must be a number, got {value!r}")
    return float(value)


def _field(name: str, spec: object, doc: Located) -> FieldSpec:
    path: tuple[str | int, ...] = ("fields", name)
    where = doc.where
    if not _FIELD_NAME.match(name) or name == ID_COLUMN:
        raise where.error(path, f"field name {name!r} must be lower-case letters, digits and '_', starting with a "
                                f"letter, and not {ID_COLUMN!r}", at_key=True)
    if not isinstance(spec, dict):
        raise where.error(path, f"must be a mapping with {', '.join(FIELD_KEYS)}")
    for key in spec:
        if key not in FIELD_KEYS:
            raise where.error(path + (key,), f"unknown key {key!r} (allowed: {', '.join(FIELD_KEYS)})"
                                             f"{_hint(key, FIELD_KEYS)}", at_key=True)
    description = spec.get("description")
    if not isinstance(description, str) or not description.strip():
        raise where.error(path + ("description",), "a description is required (it goes into participants.json)")
    levels = _levels(spec["levels"], where, path + ("levels",)) if "levels" in spec else ()
    fmt = spec.get("format", "string")
    if fmt not in FORMATS:
        raise where.error(path + ("format",), f"must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if levels and fmt != "string":
        raise where.error(path + ("format",), "a field with levels is categorical: leave format out")
    units = spec.get("units")
    if units is not None and (not isinstance(units, str) or not units.strip()):
        raise where.error(path + ("units",), "must be text, e.g. year")
    low, high = _bound(spec, "minimum", where, path), _bound(spec, "maximum", where, path)
    if (low is not None or high is not None) and fmt == "string":
        raise where.error(path + ("minimum" if low is not None else "maximum",),
                          "minimum and maximum need format: integer or number")
    if low is not None and high is not None and low > high:
        raise where.error(path + ("maximum",), f"maximum {high:g} is below minimum {low:g}")
    return FieldSpec(name=name, description=description.strip(), levels=levels, format=str(fmt),
                     units=units.strip() if isinstance(units, str) else None, minimum=low, maximum=high)


def parse_declaration(doc: Located) -> Declaration:
    """The lab's YAML (`fields: {name: {description, levels|format, units, minimum, maximum}}`)."""
    data = doc.data
    if not isinstance(data, dict) or "fields" not in data:
        raise doc.where.error((), "must be a mapping with 'fields:' (see protocols/participants.yaml)")
    for key in data:
        if key != "fields":
            raise doc.where.error((key,), f"unknown key {key!r}: the file holds 'fields:' only", at_key=True)
    fields = data["fields"]
    if not isinstance(fields, dict) or not fields:
        raise doc.where.error(("fields",), "must map at least one field name to its description")
    return Declaration(fields=tuple(_field(name, spec, doc) for name, spec in fields.items()),
                       source=doc.where.file)


def declaration_from_sidecar(doc: Mapping[str, JsonValue], source: str) -> tuple[Declaration, tuple[str, ...]]:
    """The declaration kept in participants.json, and what in it could not be used."""
    fields: list[FieldSpec] = []
    problems: list[str] = []
    for name, entry in doc.items():
        if name == ID_COLUMN:
            continue
        e = obj(entry)
        if not e:
            problems.append(f"{source}: {name!r} is not a column description (an object); ignored")
            continue
        levels_doc = obj(e.get("Levels"))
        levels = tuple((str(k), text(v) or str(v)) for k, v in levels_doc.items())
        fmt = text(e.get("Format")) or "string"
        fields.append(FieldSpec(name=name, description=text(e.get("Description")) or "", levels=levels,
                                format=fmt if fmt in FORMATS and not levels else "string",
                                units=text(e.get("Units")), minimum=number(e.get("Minimum")),
                                maximum=number(e.get("Maximum"))))
    return Declaration(fields=tuple(fields), source=source), tuple(problems)


def sidecar_doc(decl: Declaration, existing: Mapping[str, JsonValue] | None = None,
                dropped: Sequence[str] = ()) -> JsonObject:
    """participants.json: participant_id, the declared fields, and other entries kept as they were."""
    out: JsonObject = {ID_COLUMN: {"Description": ID_DESCRIPTION}}
    for name, entry in (existing or {}).items():
        if name != ID_COLUMN and name not in dropped:
            out[name] = entry
    for f in decl.fields:
        out[f.name] = f.sidecar()
    return out


# ---------------------------------------------------------------- the table (pure)

def parse_participants_tsv(content: str, source: str) -> ParticipantsTable:
    """participants.tsv text -> table; ValueError naming the line when it is not one."""
    lines = [ln.rstrip("\r") for ln in content.split("\n")]
    while lines and not lines[-1]:
        lines.pop()
    if not lines:
        return ParticipantsTable()
    columns = tuple(lines[0].split("\t"))
    if columns[0] != ID_COLUMN:
        raise ValueError(f"{source}:1: the first column must be {ID_COLUMN!r}, found {columns[0]!r}")
    if len(set(columns)) != len(columns):
        raise ValueError(f"{source}:1: a column name is repeated")
    rows: list[tuple[str, ...]] = []
    seen: set[str] = set()
    for n, line in enumerate(lines[1:], start=2):
        cells = tuple(line.split("\t"))
        if len(cells) != len(columns):
            raise ValueError(f"{source}:{n}: {len(cells)} cells for {len(columns)} columns")
        if not _SUBJECT.match(cells[0]):
            raise ValueError(f"{source}:{n}: {cells[0]!r} is not a participant_id (sub-<label>)")
        if cells[0] in seen:
            raise ValueError(f"{source}:{n}: {cells[0]} is listed twice")
        seen.add(cells[0])
        rows.append(tuple(c if c != "" else MISSING for c in cells))
    return ParticipantsTable(columns=columns, rows=tuple(rows))


def participants_tsv_text(table: ParticipantsTable) -> str:
    lines = ["\t".join(table.columns)] + ["\t".join(r) for r in sorted(table.rows)]
    return "".join(line + "\n" for line in lines)


def participant_id(label: str) -> str:
    """`P01` or `sub-P01` -> `sub-P01`; InputError when it is not a BIDS label."""
    bare = label[4:] if label.startswith("sub-") else label
    check_label(bare, "participant")
    return f"sub-{bare}"


def apply_declaration(table: ParticipantsTable, decl: Declaration,
                      previous: Declaration | None = None) -> tuple[ParticipantsTable, tuple[str, ...]]:
    """The table with a column for every declared field, every value checked against the declaration.

    Returns the table and the names of previously declared fields dropped (they had no value).
    InputError naming the participant, field and value when a value entered earlier does not fit.
    """
    dropped: list[str] = []
    for name in previous.names if previous else ():
        if decl.field(name) is None and name in table.columns:
            used = [(pid, v) for pid, v in zip(table.ids(), table.column(name)) if v != MISSING]
            if used:
                raise InputError(f"{decl.source}: field {name!r} is not declared any more, but participants.tsv "
                                 f"has values for it ({used[0][0]}: {used[0][1]!r}); a field in use is never "
                                 f"dropped: declare it again")
            dropped.append(name)
    for f in decl.fields:
        for pid, value in zip(table.ids(), table.column(f.name)):
            try:
                f.check(value)
            except ValueError as exc:
                raise InputError(f"{decl.source}: field {f.name!r}: {pid} has {value!r} in participants.tsv, "
                                 f"which the declaration refuses: it {exc}") from None
    keep = [c for c in table.columns if c not in dropped]
    columns = keep + [f.name for f in decl.fields if f.name not in keep]
    rows = tuple(tuple(dict(zip(table.columns, r)).get(c, MISSING) for c in columns) for r in table.rows)
    return ParticipantsTable(columns=tuple(columns), rows=rows), tuple(dropped)


def with_rows_for(table: ParticipantsTable, ids: Sequence[str]) -> ParticipantsTable:
    """The table with an all-`n/a` row for every id it lacks."""
    missing = sorted(set(ids) - set(table.ids()))
    new = tuple((pid,) + (MISSING,) * (len(table.columns) - 1) for pid in missing)
    return replace(table, rows=tuple(sorted(table.rows + new)))


def parse_assignments(items: Sequence[str]) -> dict[str, str]:
    """`NAME=VALUE` strings -> mapping; InputError for a malformed or repeated one."""
    out: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        name = name.strip()
        if not sep or not name:
            raise InputError(f"--field {item!r}: write NAME=VALUE, e.g. --field group=patient")
        if name in out:
            raise InputError(f"--field {name} is given twice")
        out[name] = value
    return out


def check_values(decl: Declaration, values: Mapping[str, str]) -> dict[str, str]:
    """Each NAME=VALUE checked against the declaration; InputError naming the field and what it takes."""
    out: dict[str, str] = {}
    for name, value in values.items():
        f = decl.field(name)
        if f is None:
            declared = ", ".join(decl.names) or "none"
            raise InputError(f"field {name!r} is not declared in {decl.source} (declared: {declared})"
                             f"{_hint(name, decl.names)}")
        try:
            out[name] = f.check(value)
        except ValueError as exc:
            raise InputError(f"field {name!r} {exc} (declared in {decl.source})") from None
    return out


def set_fields(table: ParticipantsTable, decl: Declaration, participant: str,
               values: Mapping[str, str]) -> ParticipantsTable:
    """The table with `participant`'s fields set (a row is added if needed). Pure; InputError on bad input."""
    pid = participant_id(participant)
    checked = check_values(decl, values)
    table, _ = apply_declaration(table, decl)
    table = with_rows_for(table, [pid])
    rows = []
    for r in table.rows:
        if r[0] == pid:
            cells = dict(zip(table.columns, r))
            cells.update(checked)
            r = tuple(cells[c] for c in table.columns)
        rows.append(r)
    return replace(table, rows=tuple(rows))


# ---------------------------------------------------------------- files (shell)

@dataclass(frozen=True)
class ParticipantsFiles:
    """What the root's participants files say, read leniently (for the study page)."""

    table: ParticipantsTable | None        # None: no participants.tsv, or unreadable
    declaration: Declaration | None        # None: no participants.json, or unreadable
    problems: tuple[tuple[str, str], ...]  # (file name, what is wrong)


def subjects_with_data(root: Path) -> tuple[str, ...]:
    """participant_ids of the root's `sub-*` directories and of `sourcedata/sub-*` (valid labels only)."""
    found: set[str] = set()
    for parent in (Path(root), Path(root) / "sourcedata"):
        if parent.is_dir():
            found.update(d.name for d in parent.iterdir() if d.is_dir() and _SUBJECT.match(d.name))
    return tuple(sorted(found))


def _read_sidecar(root: Path) -> tuple[JsonObject | None, str]:
    path = Path(root) / JSON_NAME
    if not path.exists():
        return None, str(path)
    try:
        return load_object(path), str(path)
    except (OSError, ValueError) as exc:
        raise InputError(f"{path} cannot be read ({exc}); it declares the participant fields: repair it, or "
                         f"remove it and declare them again (cuedpain participants declare FILE)") from None


def _read_table(root: Path) -> ParticipantsTable:
    path = Path(root) / TSV_NAME
    if not path.exists():
        return ParticipantsTable()
    try:
        return parse_participants_tsv(path.read_text(encoding="utf-8"), str(path))
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{path} cannot be read ({exc})") from None
    except ValueError as exc:
        raise InputError(f"{exc}; repair it by hand (it is never overwritten while it cannot be read)") from None


def read_participants(root: Path) -> ParticipantsFiles:
    """Both files, leniently: what cannot be read becomes a problem, not an error."""
    problems: list[tuple[str, str]] = []
    table: ParticipantsTable | None = None
    decl: Declaration | None = None
    try:
        if (Path(root) / TSV_NAME).exists():
            table = _read_table(root)
    except InputError as exc:
        problems.append((TSV_NAME, exc.message))
    try:
        doc, source = _read_sidecar(root)
        if doc is not None:
            decl, more = declaration_from_sidecar(doc, source)
            problems += [(JSON_NAME, m) for m in more]
        elif table is not None:
            problems.append((JSON_NAME, "missing: the columns of participants.tsv are not described (declare them: "
                                        "cuedpain participants declare FILE)"))
    except InputError as exc:
        problems.append((JSON_NAME, exc.message))
    return ParticipantsFiles(table=table, declaration=decl, problems=tuple(problems))


def _declaration(root: Path, fields_file: Path | None) -> tuple[Declaration, Declaration | None, JsonObject | None]:
    """(the declaration to use, the one kept so far, the sidecar as it is)."""
    doc, source = _read_sidecar(root)
    kept = declaration_from_sidecar(doc, source)[0] if doc is not None else None
    if fields_file is not None:
        return parse_declaration(read_yaml(fields_file)), kept, doc
    if kept is None or not kept.fields:
        raise InputError(f"no participant fields are declared in {source}: give the lab's declaration once with "
                         f"--fields FILE (example: protocols/participants.yaml)")
    return kept, kept, doc


def _write(root: Path, table: ParticipantsTable, sidecar: JsonObject, old_sidecar: JsonObject | None) -> None:
    tsv, js = Path(root) / TSV_NAME, Path(root) / JSON_NAME
    if sidecar != old_sidecar:
        write_text(js, dumps(sidecar), owned=OwnedPaths.of([js]))
    write_text(tsv, participants_tsv_text(table), owned=OwnedPaths.of([tsv]))


def declare_fields(root: Path, fields_file: Path) -> Declaration:
    """Keep the lab's declaration in participants.json (and a column per field in participants.tsv)."""
    Path(root).mkdir(parents=True, exist_ok=True)
    with locked(Path(root) / LOCK_PATH):
        decl, kept, doc = _declaration(root, fields_file)
        table, dropped = apply_declaration(_read_table(root), decl, kept)
        table = with_rows_for(table, subjects_with_data(root))
        _write(root, table, sidecar_doc(decl, doc, dropped), doc)
    return decl


def set_participant(root: Path, participant: str, values: Mapping[str, str], *,
                    fields_file: Path | None = None) -> dict[str, str]:
    """Set fields of one participant in the root's participants.tsv; returns the participant's row.

    The values are checked against the declaration kept in participants.json (or the one in
    `fields_file`, which is then kept). Every subject of the root gets a row. Atomic writes,
    one writer at a time. InputError (exit 2) naming the field and what it takes."""
    pid = participant_id(participant)
    Path(root).mkdir(parents=True, exist_ok=True)
    with locked(Path(root) / LOCK_PATH):
        decl, kept, doc = _declaration(root, fields_file)
        table, dropped = apply_declaration(_read_table(root), decl, kept)
        table = with_rows_for(table, subjects_with_data(root))
        table = set_fields(table, decl, pid, values)
        _write(root, table, sidecar_doc(decl, doc, dropped), doc)
    row = table.row(pid)
    assert row is not None
    return row


def list_subject(root: Path, participant: str) -> str | None:
    """Give a participant a row in the root's participants.tsv when that file exists (BIDS then
    requires every subject to be listed). Returns a note when it could not; it never raises,
    because a run's own outputs must be written whatever state the lab's file is in."""
    if not (Path(root) / TSV_NAME).exists():
        return None
    try:
        set_participant(root, participant, {})
    except InputError as exc:
        return f"participants.tsv does not list sub-{participant} yet ({exc.message}); fix it, then run " \
               f"`cuedpain participants set {participant}`"
    except OSError as exc:
        return f"participants.tsv could not be updated with sub-{participant} ({exc})"
    return None


def check_new_values(root: Path, values: Mapping[str, str]) -> dict[str, str]:
    """Values given with a session (`calibrate --field`) checked against the root's declared
    fields before any device is touched; InputError when nothing is declared or a value does not fit."""
    if not values:
        return {}
    files = read_participants(root)
    for name, problem in files.problems:
        raise InputError(f"{Path(root) / name}: {problem}")
    if files.declaration is None:
        raise InputError(f"--field needs the participant fields declared in {Path(root) / JSON_NAME}: run "
                         f"`cuedpain participants declare FIELDS.yaml --data {root}` first")
    return check_values(files.declaration, values)
