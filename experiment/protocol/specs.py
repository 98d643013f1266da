"""Device specs: the one grammar of `--cuff`/`--scanner` and the rig file's `cuff:`/`scanner:` (pure).

A spec is parsed once, where it enters (the command line or the rig file), into a typed
frozen value; devices are built from that value, never from text. `str(spec)` (also
`spec.text`) is the canonical text, and `parse(str(spec)) == spec` for every spec.

    cuff      sim | sim:gated[:GATE] | line:PORT | cpar:PORT | gated:PORT:GATE
                                         GATE rts | dtr (a relay on that modem line) | board
                                         (a GATE/1 gate board, docs/gate-board.md); sim:gated is the
                                         simulated gate board (dry runs only), sim:gated:rts|dtr the
                                         same board without its sensor, standing in for a relay
    scanner   keyboard[:KEY[:BACKEND]]   KEY a PsychoPy key name (default: the protocol's
                                         keys.trigger); BACKEND ptb (default) | event
              serial:PORT[:PRESET]       PRESET syncbox | forp (default) | forp-bitwise |
                                         NAME@BAUD | custom:BYTE@BAUD (BYTE 0xNN or one character)
              sim[:DRIVER]               dry runs only. DRIVER virtual | serial | pty | socket |
                                         keyboard | syncgen (none: virtual on a virtual clock,
                                         else serial = pty on POSIX, socket elsewhere)

PORT is a device path, a COM name or a pyserial URL (`socket://host:port`,
`rfc2217://host:port`, `hwgrep://REGEXP`) and may contain ':'. In `serial:PORT:PRESET`
the part after the last ':' is a preset only when it is a plain word (a letter, then
letters, digits, '_' or '-', optionally `@BAUD`), so `serial:socket://host:7000` keeps its
port number while `serial:/dev/ttyUSB0:syncbx` is a typo, refused. A port that itself
ends in `:WORD` is written with its preset (`serial:hwgrep://FTDI:FT232R:forp`); that is
why the canonical text of a serial spec always names its preset.

Bad text is an InputError reading `WHAT: PROBLEM; allowed: FORMS` on one line, where WHAT
is the option (`--scanner`) or the rig file's field with its position
(`rig.yaml:2:10: scanner`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum
from types import MappingProxyType
from typing import ClassVar, Mapping, TypeVar, Union

from experiment.errors import InputError

CUFF_FORMS = "sim | sim:gated[:rts|dtr] | line:PORT | cpar:PORT | gated:PORT:rts|dtr|board"
PORT_FORMS = "a device path, a COM name or a pyserial URL (socket://host:port, rfc2217://host:port, hwgrep://...)"
PRESET_FORMS = "syncbox | forp | forp-bitwise | NAME@BAUD | custom:BYTE@BAUD (BYTE: 0xNN or one character)"
KEYBOARD_FORMS = "keyboard | keyboard:KEY | keyboard:KEY:BACKEND (KEY a PsychoPy key name such as 5 or t; " \
                 "BACKEND ptb or event)"
STANDARD_BAUDS = (1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200, 230400, 460800, 921600)
CUSTOM = "custom"
DEFAULT_PRESET = "forp"

_KEY = re.compile(r"[a-z0-9_]{1,20}")                         # as the protocol's KeyName
_WORD_TAIL = re.compile(r"[A-Za-z][A-Za-z0-9_-]*(?:@[^:]*)?")  # a preset after the last ':'
_CUSTOM_TAIL = re.compile(r"(?P<port>.+):(?P<preset>custom(?::[^:]*)?)")
_NAMED = re.compile(r"(?P<name>[A-Za-z][A-Za-z0-9_-]*)(?:@(?P<baud>.*))?")
_CUSTOM_BODY = re.compile(r"custom:(?P<byte>[^@]*)@(?P<baud>[^@]*)")


# ---------------------------------------------------------------- kinds


class CuffKind(Enum):
    SIM = "sim"
    LINE = "line"     # CUFF/1 text protocol
    CPAR = "cpar"     # Nocitech CPAR binary protocol
    GATED = "gated"   # a panel-set inflator switched by a gate (docs/gate-board.md)


class Gate(Enum):
    """How a gated inflator is switched."""

    RTS = "rts"       # a relay on the port's RTS line
    DTR = "dtr"       # a relay on the port's DTR line
    BOARD = "board"   # a GATE/1 gate board on the port


class ScannerKind(Enum):
    KEYBOARD = "keyboard"
    SERIAL = "serial"
    SIM = "sim"


class KeyBackend(Enum):
    PTB = "ptb"       # Psychtoolbox HID queue: each key stamped at its event
    EVENT = "event"   # psychopy.event's pyglet buffer: stamped at dispatch


class SimDriver(Enum):
    VIRTUAL = "virtual"    # timers on the virtual clock (headless)
    SERIAL = "serial"      # into SerialSource by this platform's transport: pty on POSIX, socket elsewhere
    PTY = "pty"            # a pseudo-terminal (POSIX)
    SOCKET = "socket"      # a loopback TCP socket, read through pyserial's socket://
    KEYBOARD = "keyboard"  # xdotool key events into the participant window
    SYNCGEN = "syncgen"    # PsychoPy's SyncGenerator


SIM_FORMS = f"sim[:{'|'.join(d.value for d in SimDriver)}]"
SCANNER_FORMS = f"keyboard[:KEY[:ptb|event]] | serial:PORT[:PRESET] | {SIM_FORMS}"

_E = TypeVar("_E", bound=Enum)


def _member(enum: type[_E], text: str) -> _E | None:
    return next((m for m in enum if m.value == text), None)


def _names(enum: type[Enum]) -> str:
    return ", ".join(str(m.value) for m in enum)


# ---------------------------------------------------------------- problems (shared by the parser and the invariants)


def _port_problem(port: str) -> str | None:
    if not port:
        return "needs a port"
    if port != port.strip():
        return f"the port {port!r} has spaces around it"
    if any(ord(c) < 32 or ord(c) == 127 for c in port):
        return f"the port {port!r} contains a control character"
    return None


def _serial_port_problem(port: str) -> str | None:
    problem = _port_problem(port)
    if problem is not None:
        return problem
    named = _NAMED.fullmatch(port)
    if port == CUSTOM or port.startswith(CUSTOM + ":") or (named is not None and named["name"] in _TABLE):
        return f"{port!r} is a trigger preset, not a port (name the port first: serial:PORT:{port})"
    if port.endswith(":" + CUSTOM):
        return f"the port {port!r} ends in ':custom', which reads as a custom preset"
    return None


# ---------------------------------------------------------------- serial trigger presets

# name -> (baud, trigger byte, trigger bit); sources in docs/scanner.md
_TABLE: Mapping[str, tuple[int, int | None, int | None]] = MappingProxyType({
    "syncbox": (57600, ord("s"), None),        # NordicNeuroLab SyncBox
    "forp": (19200, ord("5"), None),           # Current Designs fORP, ASCII mode
    "forp-bitwise": (19200, None, 0x10),       # fORP bit-coded bytes: rising edge of bit 0x10
})


def _preset_problem(name: str, baud: int, byte: int | None, mask: int | None) -> str | None:
    if baud not in STANDARD_BAUDS:
        return f"baud rate {baud} is not a standard rate"
    if name == CUSTOM:
        if byte is None or mask is not None or not 0 <= byte <= 0xFF:
            return "a custom preset is one trigger byte (0x00-0xff) and no bit mask"
        return None
    if name not in _TABLE:
        return f"unknown trigger preset {name!r}"
    if (byte, mask) != _TABLE[name][1:]:
        return f"preset {name!r} has its own trigger byte or bit"
    return None


@dataclass(frozen=True)
class SerialPreset:
    """How one kind of trigger box signals a pulse: one byte value, or a bit's rising edge."""

    name: str                         # a named preset (syncbox, forp, forp-bitwise) or 'custom'
    baud: int
    trigger_byte: int | None = None   # ASCII boxes: this byte is a pulse
    trigger_mask: int | None = None   # bit-coded boxes: a byte with this bit set after one without it

    def __post_init__(self) -> None:
        problem = _preset_problem(self.name, self.baud, self.trigger_byte, self.trigger_mask)
        if problem is not None:
            raise ValueError(f"SerialPreset: {problem}")

    @property
    def text(self) -> str:
        """`forp`, `forp@115200`, `custom:0x54@9600`: parses back to this preset."""
        if self.name == CUSTOM:
            return f"{CUSTOM}:0x{self.trigger_byte:02x}@{self.baud}"
        return self.name if self.baud == _TABLE[self.name][0] else f"{self.name}@{self.baud}"

    def describe(self) -> str:
        what = (f"byte 0x{self.trigger_byte:02x}" if self.trigger_byte is not None
                else f"rising edge of bit 0x{self.trigger_mask:02x}")
        return f"{self.name} ({what} at {self.baud} baud)"

    def __str__(self) -> str:
        return self.text


PRESETS: Mapping[str, SerialPreset] = MappingProxyType(
    {name: SerialPreset(name, baud, byte, mask) for name, (baud, byte, mask) in _TABLE.items()})


# ---------------------------------------------------------------- specs


@dataclass(frozen=True)
class CuffSpec:
    """A cuff device: a simulator (dry runs only), or a driver on a port. `gate` says how a
    gated inflator is switched (`gated:PORT:GATE`); `sim` with a gate is the simulated gate
    board (`sim:gated`), without its sensor for RTS or DTR (`sim:gated:rts`: a relay has no
    read-back, and a pseudo-terminal no modem lines)."""

    kind: CuffKind
    port: str | None = None   # None for sim
    gate: Gate | None = None  # gated only, and sim:gated (BOARD)

    def __post_init__(self) -> None:
        if (self.kind is CuffKind.SIM) != (self.port is None):
            raise ValueError(f"CuffSpec: {self.kind.value} {'takes no' if self.port else 'needs a'} port")
        problem = None if self.port is None else _port_problem(self.port)
        if problem is not None:
            raise ValueError(f"CuffSpec: {problem}")
        if self.kind is CuffKind.GATED and self.gate is None:
            raise ValueError("CuffSpec: gated needs its gate (rts, dtr or board)")
        if self.gate is not None and self.kind not in (CuffKind.GATED, CuffKind.SIM):
            raise ValueError(f"CuffSpec: {self.kind.value} takes no gate")

    @property
    def simulated(self) -> bool:
        return self.kind is CuffKind.SIM

    @property
    def gated(self) -> bool:
        """A panel-set inflator behind a gate (real or simulated): its pressure is the panel's."""
        return self.gate is not None

    @property
    def text(self) -> str:
        if self.kind is CuffKind.SIM:
            if self.gate is None:
                return "sim"
            return "sim:gated" + ("" if self.gate is Gate.BOARD else f":{self.gate.value}")
        return f"{self.kind.value}:{self.port}" + (f":{self.gate.value}" if self.gate is not None else "")

    def __str__(self) -> str:
        return self.text


SIM_CUFF = CuffSpec(CuffKind.SIM)
SIM_GATED = CuffSpec(CuffKind.SIM, gate=Gate.BOARD)


@dataclass(frozen=True)
class KeyboardSpec:
    """A trigger box that types a key; other keys are the participant's."""

    key: str | None = None                 # None: the protocol's keys.trigger
    backend: KeyBackend = KeyBackend.PTB
    kind: ClassVar[ScannerKind] = ScannerKind.KEYBOARD
    simulated: ClassVar[bool] = False

    def __post_init__(self) -> None:
        if self.key is not None and not _KEY.fullmatch(self.key):
            raise ValueError(f"KeyboardSpec: {self.key!r} is not a PsychoPy key name")
        if self.key is None and self.backend is not KeyBackend.PTB:
            raise ValueError("KeyboardSpec: a backend other than ptb needs the key (keyboard:KEY:BACKEND)")

    @property
    def text(self) -> str:
        if self.key is None:
            return "keyboard"
        return f"keyboard:{self.key}" + ("" if self.backend is KeyBackend.PTB else f":{self.backend.value}")

    def __str__(self) -> str:
        return self.text


@dataclass(frozen=True)
class SerialSpec:
    """A trigger box on a serial port (or a pyserial URL), with its preset resolved."""

    port: str
    preset: SerialPreset = PRESETS[DEFAULT_PRESET]
    kind: ClassVar[ScannerKind] = ScannerKind.SERIAL
    simulated: ClassVar[bool] = False

    def __post_init__(self) -> None:
        problem = _serial_port_problem(self.port)
        if problem is not None:
            raise ValueError(f"SerialSpec: {problem}")

    @property
    def text(self) -> str:
        """Always with the preset, so a port ending in ':WORD' stays a port."""
        return f"serial:{self.port}:{self.preset.text}"

    def __str__(self) -> str:
        return self.text


@dataclass(frozen=True)
class SimSpec:
    """The simulated scanner (dry runs only); which driver delivers its pulses."""

    driver: SimDriver | None = None   # None: virtual on a virtual clock, else serial
    kind: ClassVar[ScannerKind] = ScannerKind.SIM
    simulated: ClassVar[bool] = True

    @property
    def text(self) -> str:
        return "sim" if self.driver is None else f"sim:{self.driver.value}"

    def __str__(self) -> str:
        return self.text


ScannerSpec = Union[KeyboardSpec, SerialSpec, SimSpec]


# ---------------------------------------------------------------- the parser


class _Refused(Exception):
    """One grammar rule's refusal: what is wrong, and the forms allowed there."""

    def __init__(self, problem: str, allowed: str) -> None:
        super().__init__(problem)
        self.problem = problem
        self.allowed = allowed


def parse_cuff_spec(text: str, *, what: str) -> CuffSpec:
    """`sim`, `sim:gated`, `line:PORT`, `cpar:PORT`, `gated:PORT:GATE` -> CuffSpec; an InputError names
    `what` (option or rig field)."""
    try:
        return _cuff(text)
    except _Refused as r:
        raise InputError(f"{what}: {r.problem}; allowed: {r.allowed}") from None


def parse_scanner_spec(text: str, *, what: str) -> ScannerSpec:
    """`keyboard[:KEY[:BACKEND]]`, `serial:PORT[:PRESET]`, `sim[:DRIVER]` -> ScannerSpec (see the module doc)."""
    try:
        return _scanner(text)
    except _Refused as r:
        raise InputError(f"{what}: {r.problem}; allowed: {r.allowed}") from None


def parse_preset(text: str, *, what: str = "trigger preset") -> SerialPreset:
    """`syncbox`, `forp@115200`, `custom:0x54@9600` ... -> SerialPreset."""
    try:
        return _preset(text, text)
    except _Refused as r:
        raise InputError(f"{what}: {r.problem}; allowed: {r.allowed}") from None


def _lowercase_hint(enum: type[Enum], kind: str) -> str:
    return " (kinds are lowercase)" if kind != kind.lower() and _member(enum, kind.lower()) is not None else ""


def _cuff(text: str) -> CuffSpec:
    spec = text.strip()
    if not spec:
        raise _Refused("no cuff given", CUFF_FORMS)
    kind_text, sep, port = spec.partition(":")
    kind = _member(CuffKind, kind_text)
    if kind is None:
        raise _Refused(f"unknown cuff kind {kind_text!r} in {spec!r}{_lowercase_hint(CuffKind, kind_text)}",
                       CUFF_FORMS)
    if kind is CuffKind.SIM:
        head, colon, gate_text = port.partition(":")
        gate = _member(Gate, gate_text) if colon else Gate.BOARD
        if sep and head == CuffKind.GATED.value and gate is not None:
            return CuffSpec(CuffKind.SIM, gate=gate)
        if sep:
            raise _Refused(f"'sim' takes no port (the simulated gate board is sim:gated[:rts|dtr]), got {spec!r}",
                           CUFF_FORMS)
        return SIM_CUFF
    if kind is CuffKind.GATED:
        return _gated(spec, port)
    problem = _port_problem(port)
    if problem is not None:
        raise _Refused(f"{kind.value!r} needs a port, got {spec!r}" if not port else f"{problem}, in {spec!r}",
                       f"{kind.value}:PORT with PORT {PORT_FORMS}, e.g. {kind.value}:/dev/ttyUSB0 or "
                       f"{kind.value}:COM3")
    return CuffSpec(kind, port)


def _gated(spec: str, rest: str) -> CuffSpec:
    allowed = (f"gated:PORT:GATE with GATE {_names(Gate)} (rts, dtr: a relay on that line of the port; board: "
               f"a GATE/1 gate board) and PORT {PORT_FORMS}, e.g. gated:/dev/ttyUSB0:rts")
    port, sep, last = rest.rpartition(":")
    gate = _member(Gate, last) if sep else None
    if gate is None:
        raise _Refused(f"{spec!r} does not say how the gate is wired (it ends in ':rts', ':dtr' or ':board')",
                       allowed)
    problem = _port_problem(port)
    if problem is not None:
        raise _Refused(f"'gated' needs a port, got {spec!r}" if not port else f"{problem}, in {spec!r}", allowed)
    return CuffSpec(CuffKind.GATED, port, gate)


def _scanner(text: str) -> ScannerSpec:
    spec = text.strip()
    if not spec:
        raise _Refused("no trigger source given", SCANNER_FORMS)
    kind_text, sep, rest = spec.partition(":")
    kind = _member(ScannerKind, kind_text)
    if kind is ScannerKind.KEYBOARD:
        return _keyboard(spec, rest if sep else None)
    if kind is ScannerKind.SERIAL:
        return _serial(spec, rest)
    if kind is ScannerKind.SIM:
        return _sim(spec, rest if sep else None)
    raise _Refused(f"unknown trigger source {kind_text!r} in {spec!r}{_lowercase_hint(ScannerKind, kind_text)}",
                   SCANNER_FORMS)


def _keyboard(spec: str, rest: str | None) -> KeyboardSpec:
    if rest is None:
        return KeyboardSpec()
    parts = rest.split(":")
    if len(parts) > 2:
        raise _Refused(f"{spec!r} has too many parts", KEYBOARD_FORMS)
    key = parts[0]
    if len(parts) == 1 and _member(KeyBackend, key) is not None:
        raise _Refused(f"{key!r} is a keyboard backend, not a key: name the key first, e.g. keyboard:5:{key}",
                       KEYBOARD_FORMS)
    if not key:
        raise _Refused(f"{spec!r} names no key", KEYBOARD_FORMS)
    if not _KEY.fullmatch(key):
        raise _Refused(f"keyboard trigger key {key!r} is not a PsychoPy key name (lowercase letters, digits, '_')",
                       KEYBOARD_FORMS)
    if len(parts) == 1:
        return KeyboardSpec(key)
    backend = _member(KeyBackend, parts[1])
    if backend is None:
        raise _Refused(f"keyboard backend {parts[1]!r} is not one of {_names(KeyBackend)}", KEYBOARD_FORMS)
    return KeyboardSpec(key, backend)


def _serial(spec: str, rest: str) -> SerialSpec:
    allowed = f"serial:PORT or serial:PORT:PRESET with PORT {PORT_FORMS} and PRESET {PRESET_FORMS}"
    custom = _CUSTOM_TAIL.fullmatch(rest)
    head, sep, last = rest.rpartition(":")
    if custom is not None:
        port, preset_text = custom["port"], custom["preset"]
    elif sep and _WORD_TAIL.fullmatch(last):
        port, preset_text = head, last
    else:
        port, preset_text = rest, None
    problem = _serial_port_problem(port)
    if problem is not None:
        raise _Refused(f"'serial' {problem}, got {spec!r}" if not port else f"{problem}, in {spec!r}", allowed)
    return SerialSpec(port, PRESETS[DEFAULT_PRESET] if preset_text is None else _preset(preset_text, spec))


def _baud(text: str, spec: str) -> int:
    allowed = ", ".join(map(str, STANDARD_BAUDS))
    if not text.isdigit():
        raise _Refused(f"baud rate {text!r} is not a number, in {spec!r}", allowed)
    baud = int(text)
    if baud not in STANDARD_BAUDS:
        raise _Refused(f"baud rate {baud} is not a standard rate, in {spec!r}", allowed)
    return baud


def _trigger_byte(text: str, spec: str) -> int:
    if re.fullmatch(r"0x[0-9a-fA-F]+", text):
        value = int(text, 16)
    elif len(text) == 1 and not text.isspace() and text not in ":@":
        value = ord(text)
    else:
        raise _Refused(f"trigger byte {text!r} is neither 0xNN nor one character, in {spec!r}", PRESET_FORMS)
    if value > 0xFF:
        raise _Refused(f"trigger byte {text!r} is more than one byte (0x00-0xff), in {spec!r}", PRESET_FORMS)
    return value


def _preset(text: str, spec: str) -> SerialPreset:
    if text == CUSTOM or text.startswith(CUSTOM + ":"):
        body = _CUSTOM_BODY.fullmatch(text)
        if body is None:
            raise _Refused(f"a custom trigger preset is custom:BYTE@BAUD, got {text!r} in {spec!r}", PRESET_FORMS)
        return SerialPreset(CUSTOM, _baud(body["baud"], spec), trigger_byte=_trigger_byte(body["byte"], spec))
    named = _NAMED.fullmatch(text)
    if named is None or named["name"] not in _TABLE:
        raise _Refused(f"unknown trigger preset {text if named is None else named['name']!r} in {spec!r}",
                       PRESET_FORMS)
    preset = PRESETS[named["name"]]
    if named["baud"] is None:
        return preset
    return SerialPreset(preset.name, _baud(named["baud"], spec), preset.trigger_byte, preset.trigger_mask)


def _sim(spec: str, rest: str | None) -> SimSpec:
    if rest is None:
        return SimSpec()
    driver = _member(SimDriver, rest)
    if driver is None:
        raise _Refused(f"simulated scanner driver {rest!r} is not one of {_names(SimDriver)}",
                       f"{SIM_FORMS} (dry runs only)")
    return SimSpec(driver)


# ---------------------------------------------------------------- button boxes (--buttons, the rig's `buttons:`)

class ButtonPresetName(Enum):
    """How a button box on a serial line says which button: docs/buttons.md."""

    FORP = "forp"         # Current Designs fORP, ASCII mode: one byte per press ('1'-'4', '6'-'9'; '5' is the trigger)
    CEDRUS = "cedrus"     # Cedrus RB-series XID: 6-byte packets 'k', key info, 4-byte timer
    CUSTOM = "custom"     # the rig file's `button_map` (byte -> button name)


BUTTON_BAUDS: Mapping[ButtonPresetName, int] = MappingProxyType({
    ButtonPresetName.FORP: 19200, ButtonPresetName.CEDRUS: 115200, ButtonPresetName.CUSTOM: 19200})
BUTTON_PRESET_FORMS = "forp | cedrus | custom (the rig file's button_map), each optionally @BAUD"
BUTTONS_FORMS = f"serial:PORT[:PRESET] with PRESET {BUTTON_PRESET_FORMS} | sim (dry runs: the simulated " \
                "participant presses fORP buttons on the simulated scanner's line)"


@dataclass(frozen=True)
class SerialButtonSpec:
    """A button box on a serial port (or a pyserial URL); the same port as a serial trigger
    spec means one line carries both (one reader splits the bytes)."""

    port: str
    preset: ButtonPresetName = ButtonPresetName.FORP
    baud: int = BUTTON_BAUDS[ButtonPresetName.FORP]
    simulated: ClassVar[bool] = False

    def __post_init__(self) -> None:
        problem = _port_problem(self.port) or (None if self.baud in STANDARD_BAUDS else
                                               f"baud rate {self.baud} is not a standard rate")
        if problem is not None:
            raise ValueError(f"SerialButtonSpec: {problem}")

    @property
    def text(self) -> str:
        """Always with the preset, so a port ending in ':WORD' stays a port."""
        baud = "" if self.baud == BUTTON_BAUDS[self.preset] else f"@{self.baud}"
        return f"serial:{self.port}:{self.preset.value}{baud}"

    def __str__(self) -> str:
        return self.text


@dataclass(frozen=True)
class SimButtonSpec:
    """Dry runs: the simulated participant presses fORP buttons on the simulated scanner's line."""

    simulated: ClassVar[bool] = True
    text: ClassVar[str] = "sim"

    def __str__(self) -> str:
        return self.text


ButtonSpec = Union[SerialButtonSpec, SimButtonSpec]


def parse_buttons_spec(text: str, *, what: str) -> ButtonSpec:
    """`serial:PORT[:PRESET[@BAUD]]`, `sim` -> ButtonSpec; an InputError names `what` (option or rig field)."""
    try:
        return _buttons(text)
    except _Refused as r:
        raise InputError(f"{what}: {r.problem}; allowed: {r.allowed}") from None


def _buttons(text: str) -> ButtonSpec:
    spec = text.strip()
    if spec == "sim":
        return SimButtonSpec()
    kind, sep, rest = spec.partition(":")
    if kind != "serial" or not sep:
        raise _Refused(f"unknown button box {spec!r}" if spec else "no button box given", BUTTONS_FORMS)
    head, sep, last = rest.rpartition(":")
    port, preset_text = (head, last) if sep and _WORD_TAIL.fullmatch(last) else (rest, None)
    problem = _port_problem(port)
    if problem is not None:
        raise _Refused(f"'serial' {problem}, got {spec!r}" if not port else f"{problem}, in {spec!r}", BUTTONS_FORMS)
    if preset_text is None:
        return SerialButtonSpec(port)
    named = _NAMED.fullmatch(preset_text)
    preset = None if named is None else _member(ButtonPresetName, named["name"])
    if named is None or preset is None:
        raise _Refused(f"unknown button preset {preset_text!r} in {spec!r}", BUTTON_PRESET_FORMS)
    baud = BUTTON_BAUDS[preset] if named["baud"] is None else _baud(named["baud"], spec)
    return SerialButtonSpec(port, preset, baud)
