"""CUFF/1, the project's line protocol: split, parse and format lines (pure).

Both ends use this module: the simulated firmware parses commands and formats
replies, events and telemetry; the host driver formats commands and parses what the
device sends. Nothing here reads a clock or touches a port. The protocol itself is
documented for firmware writers in docs/cuff-protocol.md.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Mapping, Union

PROTOCOL_VERSION = 1
BAUDRATE = 115200
MAX_LINE_CHARS = 80          # without the terminator
SIM_NAME_PREFIX = "cuedpain-sim"   # HELLO dev= of every simulator; real firmware must not use it

STATES = ("IDLE", "ARMED", "RAMP", "HOLD", "DEFLATING", "FAULT", "ESTOP")
ARMED_STATES = frozenset({"ARMED", "RAMP", "HOLD", "DEFLATING"})
LATCHED_STATES = frozenset({"FAULT", "ESTOP"})

ERRORS: dict[int, str] = {
    10: "UNKNOWN_COMMAND", 11: "BAD_ARGUMENT", 12: "LINE_TOO_LONG", 13: "BAD_STATE",
    20: "OVER_LIMIT", 21: "NOT_ARMED", 22: "LATCHED", 24: "CLEAR_REFUSED",
    30: "WATCHDOG", 31: "ESTOP", 32: "TIME_LIMIT", 33: "OVERPRESSURE", 34: "COMPLIANCE",
}
# the latching faults: event name -> fault code (STATUS err=, detail of ERR 22)
FAULT_CODES: dict[str, int] = {"WATCHDOG": 30, "ESTOP": 31, "TIME_LIMIT": 32,
                               "OVERPRESSURE": 33, "COMPLIANCE": 34}

# argument kinds and their ranges (inclusive); numbers are plain decimals, no sign
WDT_MS = (200, 5000)
RATE_KPA_S = (0.1, 100.0)
STREAM_HZ = (0, 100)
MAXTIME_MS = (1000, 600000)
SIM_LEAK_KPA_S = (0.0, 1000.0)
SIM_MS = (0, 60000)

# command -> its argument kind (None: no argument); SIM commands are two words
COMMANDS: dict[str, str | None] = {
    "HELLO": None, "PING": None, "WDT": "wdt_ms", "ARM": "kpa", "DISARM": None,
    "RATE": "rate_kpa_s", "SET": "kpa", "DEFLATE": None, "VENT": None,
    "MAXTIME": "maxtime_ms", "STATUS?": None, "STREAM": "hz", "ESTOP": None, "CLEAR": None,
}
SIM_COMMANDS: dict[str, str | None] = {
    "SIM BUTTON": None, "SIM LEAK": "leak_kpa_s", "SIM SILENT": "sim_ms",
    "SIM DELAY": "sim_ms", "SIM OVERPRESSURE": None, "SIM REBOOT": None,
}

_DECIMAL_1 = re.compile(r"^[0-9]{1,4}(\.[0-9])?$")      # kPa and kPa/s: at most one decimal
_INTEGER = re.compile(r"^[0-9]{1,7}$")
_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class CodecError(ValueError):
    """A line that is not a valid command; carries the CUFF/1 error to reply with."""

    def __init__(self, code: int, detail: str = "") -> None:
        super().__init__(f"ERR {code} {ERRORS[code]}" + (f" {detail}" if detail else ""))
        self.code = code
        self.detail = detail


# ---------------------------------------------------------------- framing


@dataclass(frozen=True)
class RawLine:
    """One received line without its terminator; `overflow` when it was too long
    (its bytes are then dropped up to the next newline)."""

    data: bytes
    overflow: bool = False


class LineSplitter:
    """Cuts a byte stream into lines at `\\n` (a `\\r` before it is dropped).

    Holds at most `max_chars` bytes of an unfinished line, so a stream without
    newlines cannot grow memory; such a line comes out once, marked `overflow`.
    """

    def __init__(self, max_chars: int = MAX_LINE_CHARS) -> None:
        self._max = max_chars
        self._buf = bytearray()
        self._overflow = False

    def feed(self, data: bytes) -> list[RawLine]:
        *complete, tail = data.split(b"\n")
        lines = [self._finish(chunk) for chunk in complete]
        self._append(tail)
        return lines

    def _append(self, chunk: bytes) -> None:
        if self._overflow:
            return
        self._buf += chunk
        # one byte of slack: a trailing '\r' of a line of exactly max chars
        if len(self._buf) > self._max + 1:
            self._overflow = True
            self._buf.clear()

    def _finish(self, chunk: bytes) -> RawLine:
        self._append(chunk)
        data = bytes(self._buf)
        if data.endswith(b"\r"):
            data = data[:-1]
        overflow = self._overflow or len(data) > self._max
        self._buf.clear()
        self._overflow = False
        return RawLine(b"" if overflow else data, overflow)


def encode_line(text: str) -> bytes:
    """A line as bytes on the wire: ASCII, at most 80 characters, `\\n` appended."""
    if "\n" in text or "\r" in text:
        raise ValueError(f"a CUFF/1 line cannot contain a line break: {text!r}")
    if len(text) > MAX_LINE_CHARS:
        raise ValueError(f"CUFF/1 line longer than {MAX_LINE_CHARS} characters: {text!r}")
    return text.encode("ascii") + b"\n"


def decode_line(data: bytes) -> str:
    """Printable ASCII only; anything else is not a CUFF/1 line (ERR 10)."""
    if any(b < 0x20 or b > 0x7E for b in data if b != 0x09):
        raise CodecError(10, "non-ASCII or control byte")
    return data.decode("ascii")


# ---------------------------------------------------------------- numbers


def format_kpa(value_kpa: float) -> str:
    """A set value (target, ceiling, rate) in kPa with exactly one decimal (CUFF/1 allows at
    most one), rounded to the nearest. Measured pressures use `format_reading_kpa`."""
    if not math.isfinite(value_kpa):
        raise ValueError(f"pressure must be a finite number, got {value_kpa!r}")
    text = f"{round(value_kpa, 1):.1f}"
    return "0.0" if text == "-0.0" else text


def format_reading_kpa(value_kpa: float) -> str:
    """A measured pressure in kPa, rounded down (floor) to one decimal: 0.96 -> "0.9".

    Every threshold the device decides on is on the 0.1 kPa grid and reads "below T"
    (x < T) or "T or more" (x >= T); floor keeps a reading on the same side of each, so a
    reported pressure always agrees with the state it decided (`DEFLATED p=0.9`, never
    `p=1.0`). Rounding to the nearest would move 0.96 across 1.0. Exact in binary: the
    result r satisfies float(r) <= value < float(r) + 0.1 as Python compares them.
    """
    if not math.isfinite(value_kpa):
        raise ValueError(f"pressure must be a finite number, got {value_kpa!r}")
    tenths = math.floor(value_kpa * 10.0)
    while tenths / 10 > value_kpa:          # value * 10 can round up to the next whole number
        tenths -= 1
    while (tenths + 1) / 10 <= value_kpa:
        tenths += 1
    return f"{tenths / 10:.1f}"


def floor_kpa(value_kpa: float) -> float:
    """Round down to the 0.1 kPa grid (a ceiling sent to a device never grows)."""
    return math.floor(round(value_kpa * 10.0, 6)) / 10.0


def _decimal(text: str, lo: float, hi: float) -> float:
    if not _DECIMAL_1.match(text):
        raise CodecError(11, f"{text!r} is not a number with at most one decimal")
    value = float(text)
    if not lo <= value <= hi:
        raise CodecError(11, f"{text} outside {lo:g}-{hi:g}")
    return value


def _integer(text: str, lo: int, hi: int) -> int:
    if not _INTEGER.match(text):
        raise CodecError(11, f"{text!r} is not an integer")
    value = int(text)
    if not lo <= value <= hi:
        raise CodecError(11, f"{text} outside {lo}-{hi}")
    return value


def _parse_arg(kind: str, text: str) -> float | int:
    if kind == "kpa":
        return _decimal(text, 0.0, 9999.9)
    if kind == "rate_kpa_s":
        return _decimal(text, *RATE_KPA_S)
    if kind == "leak_kpa_s":
        return _decimal(text, *SIM_LEAK_KPA_S)
    if kind == "wdt_ms":
        return _integer(text, *WDT_MS)
    if kind == "maxtime_ms":
        return _integer(text, *MAXTIME_MS)
    if kind == "hz":
        return _integer(text, *STREAM_HZ)
    if kind == "sim_ms":
        return _integer(text, *SIM_MS)
    raise AssertionError(kind)  # pragma: no cover - table and parser disagree


# ---------------------------------------------------------------- commands (device side)


@dataclass(frozen=True)
class Command:
    """A validated command: canonical upper-case name and its one argument, if any."""

    name: str                  # e.g. "SET", "STATUS?", "SIM LEAK"
    arg: float | int | None = None

    @property
    def value(self) -> float:
        """The argument of a command that takes one (`parse_command` guarantees it is there)."""
        if self.arg is None:
            raise ValueError(f"{self.name} takes no argument")
        return self.arg


def parse_command(data: bytes, *, allow_sim: bool) -> Command | None:
    """One received line -> `Command`; None for a blank line (ignored, no reply).

    Raises `CodecError` with the error code to reply with. Case-insensitive;
    tokens are separated by spaces or tabs.
    """
    tokens = decode_line(data).split()
    if not tokens:
        return None
    word = tokens[0].upper()
    table = COMMANDS
    if word == "SIM":
        if not allow_sim or len(tokens) < 2:
            raise CodecError(10, word)
        word = f"SIM {tokens[1].upper()}"
        tokens = [word] + tokens[2:]
        table = SIM_COMMANDS
    if word not in table:
        raise CodecError(10, word[:20])
    kind = table[word]
    args = tokens[1:]
    if kind is None:
        if args:
            raise CodecError(11, f"{word} takes no argument")
        return Command(word)
    if len(args) != 1:
        raise CodecError(11, f"{word} takes one argument")
    return Command(word, _parse_arg(kind, args[0]))


def format_command(name: str, arg: str | None = None) -> bytes:
    """A host command line (`arg` already formatted, e.g. by `format_kpa`)."""
    return encode_line(name if arg is None else f"{name} {arg}")


# ---------------------------------------------------------------- device lines (host side)


def _fields_text(fields: Mapping[str, object]) -> str:
    parts = []
    for key, value in fields.items():
        text = str(value)
        if not _KEY.match(key) or not text or any(c.isspace() for c in text):
            raise ValueError(f"bad CUFF/1 field {key}={text!r}")
        parts.append(f"{key}={text}")
    return " ".join(parts)


def format_ok(command: str, fields: Mapping[str, object] | None = None) -> bytes:
    text = f"OK {command}"
    if fields:
        text += " " + _fields_text(fields)
    return encode_line(text)


def format_err(code: int, detail: str = "") -> bytes:
    text = f"ERR {code} {ERRORS[code]}" + (f" {detail}" if detail else "")
    return encode_line(text[:MAX_LINE_CHARS])


def format_event(name: str, fields: Mapping[str, object] | None = None) -> bytes:
    text = f"!EVT {name}"
    if fields:
        text += " " + _fields_text(fields)
    return encode_line(text)


def format_telemetry(t_ms: int, pressure_kpa: float, target_kpa: float, state: str) -> bytes:
    """`!P` line: the measured `pressure_kpa` rounded down, the set `target_kpa` to the nearest."""
    return encode_line(f"!P t={int(t_ms)} p={format_reading_kpa(pressure_kpa)} "
                       f"tgt={format_kpa(target_kpa)} st={state}")


@dataclass(frozen=True)
class Reply:
    """`OK <CMD> k=v...` (ok, command, fields) or `ERR <code> <NAME> [detail]`."""

    text: str
    ok: bool
    command: str = ""          # OK: the command it answers ("SIM LEAK" for two words)
    fields: dict[str, str] = field(default_factory=dict)
    code: int = 0              # ERR: the error code
    name: str = ""             # ERR: the error name
    detail: str = ""


@dataclass(frozen=True)
class EventLine:
    name: str
    fields: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Telemetry:
    t_ms: int
    pressure_kpa: float
    target_kpa: float
    state: str


DeviceLine = Union[Reply, EventLine, Telemetry]

_SIGNED = re.compile(r"^-?[0-9]+(\.[0-9]+)?$")


def _parse_fields(tokens: list[str], where: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for tok in tokens:
        key, sep, value = tok.partition("=")
        if not sep or not _KEY.match(key) or not value:
            raise ValueError(f"{where}: {tok!r} is not key=value")
        out[key] = value
    return out


def parse_device_line(text: str) -> DeviceLine:
    """A line from the device -> `Reply`, `EventLine` or `Telemetry`.

    Raises ValueError for anything else (the driver counts and logs such lines; they
    never stand in for a reply).
    """
    tokens = text.split()
    if not tokens:
        raise ValueError("empty line")
    head = tokens[0]
    if head == "!EVT":
        if len(tokens) < 2 or not _KEY.match(tokens[1]):
            raise ValueError(f"event without a name: {text!r}")
        return EventLine(tokens[1].upper(), _parse_fields(tokens[2:], "event"))
    if head == "!P":
        fields = _parse_fields(tokens[1:], "telemetry")
        try:
            t_ms, p, tgt, st = fields["t"], fields["p"], fields["tgt"], fields["st"]
        except KeyError as exc:
            raise ValueError(f"telemetry without {exc.args[0]}=: {text!r}") from None
        if not (_INTEGER.match(t_ms) and _SIGNED.match(p) and _SIGNED.match(tgt)):
            raise ValueError(f"telemetry numbers malformed: {text!r}")
        return Telemetry(int(t_ms), float(p), float(tgt), st.upper())
    if head.startswith("!"):
        raise ValueError(f"unknown unsolicited line: {text!r}")
    if head == "OK":
        if len(tokens) < 2:
            raise ValueError("OK without a command")
        words, rest = [tokens[1].upper()], tokens[2:]
        if words[0] == "SIM" and rest:          # SIM commands are two words
            words.append(rest.pop(0).upper())
        return Reply(text, True, command=" ".join(words), fields=_parse_fields(rest, "reply"))
    if head == "ERR":
        if len(tokens) < 3 or not tokens[1].isdigit():
            raise ValueError(f"malformed error reply: {text!r}")
        return Reply(text, False, code=int(tokens[1]), name=tokens[2].upper(),
                     detail=" ".join(tokens[3:]))
    raise ValueError(f"not a CUFF/1 line: {text!r}")


def reply_command(name: str) -> str:
    """The command word an OK reply names for a sent command (`STATUS?` -> `STATUS`)."""
    return name.upper().rstrip("?")
