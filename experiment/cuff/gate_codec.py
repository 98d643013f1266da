"""GATE/1, the gate board's wire protocol: command bytes, reply and report lines (pure).

The gate board switches a cuff inflator whose pressure is set on its own front panel
(docs/gate-board.md). The host sends single bytes; the board answers every byte with one
line and sends unsolicited lines of its own (boot, fault, sensor samples). Both ends use
this module: the simulated board (gate_sim.py) parses bytes and formats lines, the driver
(gated_driver.py) formats bytes and parses lines. No clock, no port.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Union

PROTOCOL_VERSION = 1
BAUDRATE = 115200
MAX_LINE_CHARS = 120

# host -> board: one byte each
IDENTIFY = b"?"
GATE_ON = b"1"
GATE_OFF = b"0"
KEEPALIVE = b"."
STATUS = b"s"
CLEAR = b"c"
COMMANDS = frozenset({IDENTIFY, GATE_ON, GATE_OFF, KEEPALIVE, STATUS, CLEAR})
UNKNOWN_TAG = "!"          # the reply tag of a byte the board does not know (it turns the gate off)

ERRORS: dict[int, str] = {10: "UNKNOWN", 22: "LATCHED", 30: "WATCHDOG", 32: "TIME_LIMIT", 33: "OVERPRESSURE"}
FAULTS = {30: "WATCHDOG", 32: "TIME_LIMIT", 33: "OVERPRESSURE"}   # latching faults: gate off until `c`

_KEY_VALUE = re.compile(r"^[a-z_]+=[!-~]*$")
_NUMBER = re.compile(r"^-?[0-9]{1,7}(\.[0-9]{1,3})?$")


@dataclass(frozen=True)
class Reply:
    """`>C ok k=v ...` or `>C err CODE NAME k=v ...`: the answer to the command byte C."""

    tag: str                       # the command byte as a character, or '!' for an unknown byte
    ok: bool
    code: int | None = None        # err only
    name: str | None = None        # err only
    fields: dict[str, str] = field(default_factory=dict)
    text: str = ""


@dataclass(frozen=True)
class Report:
    """An unsolicited line: `!B` boot, `!F` fault, `!P` sensor sample; `fields` as sent."""

    what: str                      # "B", "F" or "P"
    fields: dict[str, str] = field(default_factory=dict)
    text: str = ""


BoardLine = Union[Reply, Report]


def _fields(words: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for w in words:
        if not _KEY_VALUE.match(w):
            raise ValueError(f"not a key=value field: {w!r}")
        k, _, v = w.partition("=")
        out[k] = v
    return out


def parse_board_line(text: str) -> BoardLine:
    """One line from the board (without its newline) -> Reply or Report; ValueError when malformed."""
    if len(text) > MAX_LINE_CHARS or not text.isascii() or not text.isprintable():
        raise ValueError("too long or not printable ASCII")
    words = text.split(" ")
    head = words[0]
    if len(head) == 2 and head[0] == ">" and (head[1].encode() in COMMANDS or head[1] == UNKNOWN_TAG):
        if len(words) >= 2 and words[1] == "ok":
            return Reply(head[1], True, fields=_fields(words[2:]), text=text)
        if len(words) >= 4 and words[1] == "err" and words[2].isdigit() and len(words[2]) <= 3:
            return Reply(head[1], False, int(words[2]), words[3], _fields(words[4:]), text)
        raise ValueError("a reply is '>C ok ...' or '>C err CODE NAME ...'")
    if head in ("!B", "!F", "!P"):
        return Report(head[1], _fields(words[1:]), text)
    raise ValueError(f"unknown line head {head[:8]!r}")


def number(fields: dict[str, str], key: str) -> float | None:
    """A finite decimal from a field, or None (absent, '-' for not measured, or malformed)."""
    text = fields.get(key)
    return float(text) if text is not None and _NUMBER.match(text) else None


def integer(fields: dict[str, str], key: str) -> int | None:
    text = fields.get(key)
    return int(text) if text is not None and text.isdigit() and len(text) <= 9 else None


def format_fields(fields: dict[str, object]) -> str:
    return "".join(f" {k}={v}" for k, v in fields.items())


def format_ok(tag: str, fields: dict[str, object] | None = None) -> bytes:
    return f">{tag} ok{format_fields(fields or {})}\n".encode("ascii")


def format_err(tag: str, code: int, fields: dict[str, object] | None = None) -> bytes:
    return f">{tag} err {code} {ERRORS[code]}{format_fields(fields or {})}\n".encode("ascii")


def format_report(what: str, fields: dict[str, object]) -> bytes:
    return f"!{what}{format_fields(fields)}\n".encode("ascii")


def format_reading(pressure_kpa: float | None) -> str:
    """A sensor reading on the wire: one decimal, rounded down (never under-reports a threshold
    crossing the board decided on); '-' when there is no sensor."""
    if pressure_kpa is None:
        return "-"
    return f"{int(max(0.0, pressure_kpa) * 10) / 10:.1f}"
