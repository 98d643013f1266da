"""The Nocitech CPAR binary serial protocol: framing, packets, functions, messages, waveforms.

Pure: bytes in, values out; no clock, no I/O. Both the driver (`cpar_driver`) and the
simulator (`cpar_sim`) speak through this module, so they cannot drift apart.

Source: the device maker's open-source driver, github.com/Nocitech/CPAR @5c61c64,
folder `CPAR.Communication/` (Frame, Destuffer, Packet, CRC8CCITT, Functions/*, Messages/*).
A second firmware generation (github.com/karitaojala/CPM-Pressure @40fb99f,
`scripts/CPAR-old/LabBench.CPAR`, "firmware 7.0.0 or higher", marked "in development")
uses other function codes and slightly different layouts; every code and layout
difference lives in a `FirmwareTable`, so a third generation is a third table.

Wire format
* Frame: `FF F1` + stuffed packet + `FF F2`; a data byte `FF` is sent as `FF FF`.
* Packet: `[code u8][length u8][data...]`, multi-byte fields little-endian.
  code < 128 is a function (the response repeats the code), code 0 is a NACK with one
  error byte, code >= 128 is an unsolicited message.
* The maker's host driver (`Packet.ToArray`) sends one extra `0x00` after the data; see
  `FirmwareTable.host_trailing_zero` and docs/cpar.md.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass

DLE = 0xFF
STX = 0xF1
ETX = 0xF2

NACK_CODE = 0x00
NACK_ERRORS = {0x00: "no error", 0x01: "unknown function", 0x02: "invalid content", 0xFF: "dispatch error"}
ERR_UNKNOWN_FUNCTION = 0x01
ERR_INVALID_CONTENT = 0x02

MAX_PRESSURE_KPA = 100.0       # CPARDevice.MAX_PRESSURE: 255 units = 100 kPa
MAX_SUPPLY_KPA = 1000.0        # CPARDevice.MAX_SUPPLY_PRESSURE: 255 units = 1000 kPa
UNITS_PER_KPA = 255.0 / MAX_PRESSURE_KPA
TICK_HZ = 20                   # waveform interpreter update rate
TICK_S = 1.0 / TICK_HZ
MAX_STEPS = 0xFFFF             # u16 tick count of one instruction
MAX_STIMULATION_S = 600.0      # "maximal stimulation time (10min)", CPAR.Runner/MainWindow.cs

# Instruction types (SetWaveformProgram.InstructionType)
NOP, INC, DEC, STEP = 0, 1, 2, 3
INSTRUCTION_NAMES = {NOP: "NOP", INC: "INC", DEC: "DEC", STEP: "STEP"}
INSTRUCTION_BYTES = 5

# Stop criteria (AlgometerStopCriterion) and compressor modes (AlgometerCompressorMode)
STOP_ON_BUTTON_OR_VAS = 0
STOP_ON_BUTTON_PRESSED = 1
STOP_ON_BUTTON_RELEASED = 2
COMPRESSOR_AUTO = 0
COMPRESSOR_MANUAL = 1

# StatusMessage.State and StatusMessage.StopCondition, in enum order
DEVICE_STATES = ("IDLE", "STIMULATING", "EMERGENCY")
STOP_CONDITIONS = (
    "NO_CONDITION", "STOP_BUTTON_PRESSED", "MAXIMAL_VAS_SCORED", "STIMULATION_COMPLETED",
    "MAXIMAL_TIME_EXCEEDED", "VASMETER_DISCONNECTED", "EMERGENCY_STOP_ACTIVATED",
    "CONTROL_SOFTWARE", "OUT_OF_COMPLIANCE", "COMM_WATCHDOG", "12V_POWER_OFF",
)

# Status flag bits (StatusMessage byte 1)
FLAG_VAS_CONNECTED = 0x01
FLAG_VAS_LOW = 0x02
FLAG_POWER_ON = 0x04
FLAG_COMPRESSOR_RUNNING = 0x08
FLAG_START_POSSIBLE = 0x10

# EventID enum order, Nocitech/CPAR CPAR.Communication/EventID.cs
_EVENTS_NOCITECH = (
    "NO_EVENT", "STATUS_UPDATE", "START_STIMULATION", "STOP_STIMULATION",
    "STOP_BUTTON_PRESSED", "STOP_BUTTON_RELEASED", "MAX_VAS_SCORED",
    "VASMETER_DISCONNECTED", "VASMETER_CONNECTED", "EMERGENCY_ACTIVATED",
    "EMERGENCY_DEACTIVATED", "WAVEFORMS_COMPLETED", "TIMELIMIT_EXCEEDED",
    "COMM_WATCHDOG_TRIGGERED", "CUFF01_OUT_OF_COMPLIANCE", "CUFF02_OUT_OF_COMPLIANCE",
    "SUPPLY_PRESSURE_LOW", "COMPRESSOR_STARTED", "COMPRESSOR_STOPPED", "START_COMPRESSOR",
    "STOP_COMPRESSOR", "12V_POWER_OFF", "12V_POWER_ON", "AIR_LEAK",
)
# EventMessage.EventID in karitaojala/CPM-Pressure LabBench.CPAR (no STOP_BUTTON_RELEASED,
# no START/STOP_COMPRESSOR): same names, other numbers.
_EVENTS_LABBENCH7 = (
    "NO_EVENT", "STATUS_UPDATE", "START_STIMULATION", "STOP_STIMULATION",
    "STOP_BUTTON_PRESSED", "MAX_VAS_SCORED", "VASMETER_DISCONNECTED", "VASMETER_CONNECTED",
    "EMERGENCY_ACTIVATED", "EMERGENCY_DEACTIVATED", "WAVEFORMS_COMPLETED",
    "TIMELIMIT_EXCEEDED", "COMM_WATCHDOG_TRIGGERED", "CUFF01_OUT_OF_COMPLIANCE",
    "CUFF02_OUT_OF_COMPLIANCE", "SUPPLY_PRESSURE_LOW", "COMPRESSOR_STARTED",
    "COMPRESSOR_STOPPED", "12V_POWER_OFF", "12V_POWER_ON", "AIR_LEAK",
)


class CparFormatError(ValueError):
    """Bytes that are not a valid CPAR packet or field (the message says which and why)."""


@dataclass(frozen=True)
class FirmwareTable:
    """Every code and layout that differs between CPAR firmware generations."""

    name: str
    source: str
    functions: dict[str, int]       # our function name -> function code
    messages: dict[str, int]        # "status"/"event" -> message code
    identification_layout: str      # key of IDENTIFICATION_LAYOUTS
    identification_length: int
    status_length: int              # 15 (with stop-button byte 14) or 14
    start_request_length: int       # 2: [criterion][compressor mode]; 1: [criterion]
    max_instructions: int           # per SetWaveformProgram request
    max_payload_bytes: int          # largest packet data the length byte can carry
    host_trailing_zero: bool        # the host driver appends one 0x00 after each packet
    events: tuple[str, ...]         # EventID names by number

    def function_name(self, code: int) -> str:
        for name, c in self.functions.items():
            if c == code:
                return name
        return f"function 0x{code:02X}"


FIRMWARE_NOCITECH = FirmwareTable(
    name="nocitech",
    source="github.com/Nocitech/CPAR @5c61c64 CPAR.Communication",
    functions={
        "DeviceIdentification": 0x01,
        "KickWatchdog": 0x02,
        "SetWaveformProgram": 0x10,
        "StartStimulation": 0x11,
        "ForceStartStimulation": 0x12,
        "StopStimulation": 0x13,
    },
    messages={"status": 0x80, "event": 0x81},
    identification_layout="nocitech64",
    identification_length=64,
    status_length=15,
    start_request_length=2,
    # The C# driver allows 256 instructions, but its u8 length byte only carries
    # 2 + 5*50 = 252 bytes, so 50 is the true limit of this packet format.
    max_instructions=50,
    max_payload_bytes=255,
    host_trailing_zero=True,
    events=_EVENTS_NOCITECH,
)

FIRMWARE_LABBENCH7 = FirmwareTable(
    name="labbench7",
    source="github.com/karitaojala/CPM-Pressure @40fb99f scripts/CPAR-old/LabBench.CPAR (Inventors.ECP)",
    functions={
        "DeviceIdentification": 0x01,
        "KickWatchdog": 0x08,
        "SetWaveformProgram": 0x02,
        "StartStimulation": 0x03,
        "ForceStartStimulation": 0x0A,
        "StopStimulation": 0x04,
    },
    messages={"status": 0x80, "event": 0x81},
    identification_layout="labbench6",
    identification_length=6,
    status_length=14,
    start_request_length=1,
    max_instructions=20,            # SetWaveformProgram.MAX_NO_OF_INSTRUCTIONS
    max_payload_bytes=127,          # ECP standard packet: a length byte >= 128 means "extended"
    host_trailing_zero=False,       # Inventors.ECP packet code not in the public copy; not assumed
    events=_EVENTS_LABBENCH7,
)

FIRMWARES: dict[str, FirmwareTable] = {t.name: t for t in (FIRMWARE_NOCITECH, FIRMWARE_LABBENCH7)}


def firmware_table(name: str) -> FirmwareTable:
    """The table called `name`; ValueError naming the known ones otherwise."""
    try:
        return FIRMWARES[name]
    except KeyError:
        raise ValueError(f"unknown CPAR firmware table {name!r}; known: {', '.join(sorted(FIRMWARES))}") from None


# ---------------------------------------------------------------- framing

def encode_frame(packet: bytes) -> bytes:
    """Frame a packet: DLE STX, the packet with every DLE doubled, DLE ETX."""
    return bytes((DLE, STX)) + bytes(packet).replace(b"\xff", b"\xff\xff") + bytes((DLE, ETX))


class Destuffer:
    """The receiver's 4-state machine (Destuffer.cs): bytes in any chunking -> frames.

    WAITING_FOR_DLE -> WAITING_FOR_STX -> RECEIVING_DATA <-> WAITING_FOR_ETX. `DLE STX`
    inside a frame restarts it; `DLE` followed by anything but DLE/STX/ETX drops the
    frame. A frame longer than `max_frame_bytes` is dropped too (bounded memory), and
    counted in `dropped`.
    """

    WAITING_FOR_DLE, WAITING_FOR_STX, RECEIVING_DATA, WAITING_FOR_ETX = range(4)

    def __init__(self, *, max_frame_bytes: int = 1024) -> None:
        self._max = max_frame_bytes
        self.state = self.WAITING_FOR_DLE
        self._buf = bytearray()
        self.dropped = 0

    def reset(self) -> None:
        self.state = self.WAITING_FOR_DLE
        self._buf.clear()

    def feed(self, data: bytes) -> list[bytes]:
        """Consume bytes; return the frames (destuffed packets) they completed."""
        frames: list[bytes] = []
        for b in data:
            s = self.state
            if s == self.WAITING_FOR_DLE:
                if b == DLE:
                    self.state = self.WAITING_FOR_STX
            elif s == self.WAITING_FOR_STX:
                if b == STX:
                    self.state = self.RECEIVING_DATA
                    self._buf.clear()
                elif b != DLE:
                    self.state = self.WAITING_FOR_DLE
            elif s == self.RECEIVING_DATA:
                if b == DLE:
                    self.state = self.WAITING_FOR_ETX
                else:
                    self._append(b)
            else:  # WAITING_FOR_ETX: the byte after a DLE inside a frame
                if b == DLE:
                    self.state = self.RECEIVING_DATA
                    self._append(DLE)
                elif b == ETX:
                    frames.append(bytes(self._buf))
                    self._buf.clear()
                    self.state = self.WAITING_FOR_DLE
                elif b == STX:
                    self._buf.clear()
                    self.state = self.RECEIVING_DATA
                else:
                    self._buf.clear()
                    self.dropped += 1
                    self.state = self.WAITING_FOR_DLE
        return frames

    def _append(self, b: int) -> None:
        if len(self._buf) >= self._max:
            self._buf.clear()
            self.dropped += 1
            self.state = self.WAITING_FOR_DLE
            return
        self._buf.append(b)


# ---------------------------------------------------------------- packets

@dataclass(frozen=True)
class Packet:
    """`[code][length][data]`: a function request/response, a NACK or a message."""

    code: int
    data: bytes = b""

    @property
    def is_nack(self) -> bool:
        return self.code == NACK_CODE

    @property
    def is_message(self) -> bool:
        return self.code >= 128

    def to_bytes(self, *, trailing_zero: bool = False) -> bytes:
        """The packet bytes (unframed); `trailing_zero` reproduces the host quirk."""
        if not 0 <= self.code <= 255:
            raise CparFormatError(f"packet code {self.code} is not a byte")
        if len(self.data) > 255:
            raise CparFormatError(f"packet data of {len(self.data)} bytes does not fit the u8 length field")
        return bytes((self.code, len(self.data))) + bytes(self.data) + (b"\x00" if trailing_zero else b"")


def decode_packet(frame: bytes, *, allow_trailing_zero: bool = False) -> Packet:
    """A destuffed frame -> Packet; CparFormatError when length and size disagree.

    `allow_trailing_zero` accepts one extra 0x00 after the data, which the maker's host
    driver sends (Packet.ToArray allocates length+3 bytes).
    """
    if len(frame) < 2:
        raise CparFormatError(f"frame of {len(frame)} bytes is shorter than [code][length]")
    code, length = frame[0], frame[1]
    size = len(frame) - 2
    if size == length + 1 and allow_trailing_zero and frame[-1] == 0:
        size = length
    if size != length:
        raise CparFormatError(f"packet 0x{code:02X} says {length} data bytes but carries {len(frame) - 2}")
    return Packet(code, bytes(frame[2:2 + length]))


def frame_packet(packet: Packet, *, trailing_zero: bool = False) -> bytes:
    """Packet -> bytes on the wire."""
    return encode_frame(packet.to_bytes(trailing_zero=trailing_zero))


def nack(error: int) -> Packet:
    return Packet(NACK_CODE, bytes((error & 0xFF,)))


def nack_text(packet: Packet) -> str:
    """'0x02 invalid content' for a NACK packet."""
    err = packet.data[0] if packet.data else -1
    return f"0x{err & 0xFF:02X} {NACK_ERRORS.get(err, 'device-specific error')}"


# ---------------------------------------------------------------- CRC

def crc8_ccitt(data: bytes) -> int:
    """CRC-8, polynomial 0x07, init 0, no reflection, no final xor (CRC8CCITT.cs)."""
    crc = 0
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = ((crc << 1) ^ 0x07) & 0xFF if crc & 0x80 else (crc << 1) & 0xFF
    return crc


# ---------------------------------------------------------------- pressure units

def kpa_to_units(pressure_kpa: float) -> float:
    """kPa -> device pressure units (255 per 100 kPa), unrounded."""
    return pressure_kpa * UNITS_PER_KPA


def byte_to_kpa(value: int) -> float:
    """A status-message pressure byte (0..255) -> kPa (0..100)."""
    return MAX_PRESSURE_KPA * value / 255.0


def kpa_to_byte(pressure_kpa: float) -> int:
    """kPa -> nearest status-message pressure byte, clamped to 0..255."""
    return max(0, min(255, int(round(kpa_to_units(pressure_kpa)))))


# ---------------------------------------------------------------- waveform instructions

@dataclass(frozen=True)
class Instruction:
    """One 5-byte waveform instruction `[type][arg lo][arg hi][steps lo][steps hi]`.

    `argument_q8` is the argument in 1/256 pressure units (8.8 fixed point: byte 1 the
    fraction, byte 2 the integer part): per tick for INC/DEC, absolute for STEP.
    `steps` is the number of 20 Hz ticks (1..65535).
    """

    kind: int
    argument_q8: int
    steps: int

    def __post_init__(self) -> None:
        if self.kind not in INSTRUCTION_NAMES:
            raise CparFormatError(f"instruction type {self.kind} unknown (NOP 0, INC 1, DEC 2, STEP 3)")
        if not 0 <= self.argument_q8 <= 0xFFFF:
            raise CparFormatError(f"instruction argument {self.argument_q8}/256 units is out of 0..65535")
        if not 1 <= self.steps <= MAX_STEPS:
            raise CparFormatError(f"instruction steps {self.steps} out of 1..{MAX_STEPS}")

    def to_bytes(self) -> bytes:
        return struct.pack("<BHH", self.kind, self.argument_q8, self.steps)

    @classmethod
    def from_bytes(cls, data: bytes) -> "Instruction":
        kind, arg, steps = struct.unpack("<BHH", data)
        return cls(kind, arg, steps)

    @property
    def duration_s(self) -> float:
        return self.steps * TICK_S

    def describe(self) -> str:
        kpa = self.argument_q8 / 256.0 / UNITS_PER_KPA
        if self.kind in (INC, DEC):
            return f"{INSTRUCTION_NAMES[self.kind]} {kpa * TICK_HZ:.3f} kPa/s for {self.duration_s:.2f} s"
        if self.kind == STEP:
            return f"STEP {kpa:.3f} kPa for {self.duration_s:.2f} s"
        return f"NOP for {self.duration_s:.2f} s"


def _q8(units: float) -> int:
    """Pressure units -> 8.8 fixed point, truncated like the C# `Argument` setter."""
    return max(0, min(0xFFFF, int(math.floor(units * 256.0))))


def _ticks(duration_s: float) -> int:
    return max(1, min(MAX_STEPS, int(duration_s * TICK_HZ)))


def inc(rate_kpa_s: float, duration_s: float) -> Instruction:
    """Raise the target by `rate_kpa_s` for `duration_s` (CreateIncrementInstr)."""
    return Instruction(INC, _q8(kpa_to_units(rate_kpa_s) / TICK_HZ), _ticks(duration_s))


def dec(rate_kpa_s: float, duration_s: float) -> Instruction:
    """Lower the target by `rate_kpa_s` for `duration_s` (CreateDecrementInstr)."""
    return Instruction(DEC, _q8(kpa_to_units(rate_kpa_s) / TICK_HZ), _ticks(duration_s))


def step(pressure_kpa: float, duration_s: float) -> Instruction:
    """Set the target to `pressure_kpa` for `duration_s` (CreateStepInstr)."""
    return Instruction(STEP, _q8(kpa_to_units(pressure_kpa)), _ticks(duration_s))


def nop(duration_s: float) -> Instruction:
    return Instruction(NOP, 0, _ticks(duration_s))


def ramp_hold_program(target_kpa: float, rate_kpa_s: float, *, hold_s: float) -> tuple[Instruction, ...]:
    """Our stimulus as a waveform: INC from 0 (every CPAR stimulation starts vented) to
    `target_kpa` at `rate_kpa_s`, then STEP to the target and hold it for `hold_s`.

    The INC never passes the target: its tick count is rounded down, and the STEP sets
    the exact target (a last jump smaller than one tick's increment, below rate/20 kPa).
    Callers check the target against the ceiling first.
    """
    if not 0.0 <= target_kpa <= MAX_PRESSURE_KPA:
        raise CparFormatError(f"target {target_kpa} kPa outside 0..{MAX_PRESSURE_KPA:g} kPa")
    per_tick_q8 = _q8(kpa_to_units(rate_kpa_s) / TICK_HZ) if rate_kpa_s > 0 else 0
    if per_tick_q8 == 0:
        raise CparFormatError(f"ramp rate {rate_kpa_s} kPa/s is below the device's resolution "
                              f"({MAX_PRESSURE_KPA / 255 * TICK_HZ / 256:.4f} kPa/s)")
    ramp_ticks = min(MAX_STEPS, int(kpa_to_units(target_kpa) * 256 // per_tick_q8))
    ramp = (Instruction(INC, per_tick_q8, ramp_ticks),) if ramp_ticks >= 1 else ()
    return ramp + (step(target_kpa, hold_s),)


def program_duration_s(instructions: tuple[Instruction, ...], repeat: int = 1) -> float:
    return repeat * sum(i.steps for i in instructions) * TICK_S


# ---------------------------------------------------------------- function requests

def request(fw: FirmwareTable, name: str, data: bytes = b"") -> Packet:
    """A function request packet by our function name, code from the firmware table."""
    return Packet(fw.functions[name], bytes(data))


def waveform_request(fw: FirmwareTable, *, channel: int, repeat: int,
                     instructions: tuple[Instruction, ...]) -> Packet:
    """SetWaveformProgram: `[channel 0/1][repeat 1..255][N x 5-byte instruction]`."""
    if channel not in (0, 1):
        raise CparFormatError(f"waveform channel {channel} must be 0 or 1")
    if not 1 <= repeat <= 255:
        raise CparFormatError(f"waveform repeat {repeat} must be 1..255")
    if len(instructions) > fw.max_instructions:
        raise CparFormatError(f"{len(instructions)} instructions; firmware {fw.name} takes at most {fw.max_instructions}")
    body = b"".join(i.to_bytes() for i in instructions)
    data = bytes((channel, repeat)) + body
    if len(data) > fw.max_payload_bytes:
        raise CparFormatError(f"waveform of {len(data)} bytes exceeds {fw.max_payload_bytes} bytes")
    return request(fw, "SetWaveformProgram", data)


@dataclass(frozen=True)
class WaveformProgram:
    channel: int
    repeat: int
    instructions: tuple[Instruction, ...]

    @property
    def crc(self) -> int:
        """What the device answers: CRC-8 of the instruction bytes only."""
        return crc8_ccitt(b"".join(i.to_bytes() for i in self.instructions))


def decode_waveform_request(fw: FirmwareTable, data: bytes) -> WaveformProgram:
    """Device side: SetWaveformProgram request data -> WaveformProgram."""
    if len(data) < 2 or (len(data) - 2) % INSTRUCTION_BYTES:
        raise CparFormatError(f"waveform request of {len(data)} bytes is not 2 + 5*N")
    channel, repeat = data[0], data[1]
    if channel > 1 or repeat < 1:
        raise CparFormatError(f"waveform channel {channel} / repeat {repeat} invalid")
    n = (len(data) - 2) // INSTRUCTION_BYTES
    if n > fw.max_instructions:
        raise CparFormatError(f"{n} instructions; at most {fw.max_instructions}")
    instrs = tuple(Instruction.from_bytes(data[2 + k * 5: 7 + k * 5]) for k in range(n))
    return WaveformProgram(channel, repeat, instrs)


def start_request(fw: FirmwareTable, *, stop_criterion: int, compressor_mode: int = COMPRESSOR_AUTO,
                  force: bool = False) -> Packet:
    """StartStimulation / ForceStartStimulation: `[stopCriterion][compressorMode]`."""
    data = bytes((stop_criterion, compressor_mode))[: fw.start_request_length]
    return request(fw, "ForceStartStimulation" if force else "StartStimulation", data)


def decode_start_request(fw: FirmwareTable, data: bytes) -> tuple[int, int]:
    """Device side: -> (stop criterion, compressor mode)."""
    if len(data) != fw.start_request_length:
        raise CparFormatError(f"start request of {len(data)} bytes, expected {fw.start_request_length}")
    criterion = data[0]
    mode = data[1] if len(data) > 1 else COMPRESSOR_AUTO
    if criterion > STOP_ON_BUTTON_RELEASED or mode > COMPRESSOR_MANUAL:
        raise CparFormatError(f"stop criterion {criterion} / compressor mode {mode} invalid")
    return criterion, mode


def decode_kick_response(data: bytes) -> int:
    """KickWatchdog response: the device's u32 communication counter."""
    if len(data) != 4:
        raise CparFormatError(f"KickWatchdog response of {len(data)} bytes, expected 4")
    counter: int = struct.unpack("<I", data)[0]
    return counter


def encode_kick_response(counter: int) -> bytes:
    return struct.pack("<I", counter & 0xFFFFFFFF)


def decode_waveform_response(data: bytes) -> int:
    if len(data) != 1:
        raise CparFormatError(f"SetWaveformProgram response of {len(data)} bytes, expected 1 (CRC)")
    return data[0]


# ---------------------------------------------------------------- identification

@dataclass(frozen=True)
class Identification:
    """DeviceIdentification response (fields absent in a layout stay 0 / empty)."""

    device_id: int
    serial_number: int
    version: tuple[int, int, int, int]    # major, minor, patch, engineering
    checksum: int = 0
    manufacturer_id: int = 0
    manufacturer: str = ""
    device: str = ""

    @property
    def version_text(self) -> str:
        major, minor, patch, eng = self.version
        return f"{major}.{minor}.{patch}" + (f".r{eng}" if eng else "")


def _text(raw: bytes) -> str:
    return raw.replace(b"\x00", b" ").decode("ascii", errors="replace").strip()


def _pad(text: str, size: int) -> bytes:
    raw = text.encode("ascii")[:size]
    return raw + b"\x00" * (size - len(raw))


def _decode_nocitech64(data: bytes) -> Identification:
    man_id, dev_id, serial, major, minor, patch, eng, checksum = struct.unpack_from("<IHIBBBBH", data, 0)
    return Identification(device_id=dev_id, serial_number=serial, version=(major, minor, patch, eng),
                          checksum=checksum, manufacturer_id=man_id,
                          manufacturer=_text(data[16:40]), device=_text(data[40:64]))


def _encode_nocitech64(ident: Identification) -> bytes:
    head = struct.pack("<IHIBBBBH", ident.manufacturer_id, ident.device_id, ident.serial_number,
                       *ident.version, ident.checksum)
    return head + _pad(ident.manufacturer, 24) + _pad(ident.device, 24)


def _decode_labbench6(data: bytes) -> Identification:
    identity, major, eng, checksum, serial = struct.unpack("<BBBBH", data)
    return Identification(device_id=identity, serial_number=serial, version=(major, 0, 0, eng), checksum=checksum)


def _encode_labbench6(ident: Identification) -> bytes:
    return struct.pack("<BBBBH", ident.device_id, ident.version[0], ident.version[3],
                       ident.checksum & 0xFF, ident.serial_number & 0xFFFF)


# layout name -> (decode, encode, carries name strings); a new layout is a new entry here
IDENTIFICATION_LAYOUTS = {
    "nocitech64": (_decode_nocitech64, _encode_nocitech64, True),
    "labbench6": (_decode_labbench6, _encode_labbench6, False),
}


def decode_identification(fw: FirmwareTable, data: bytes) -> Identification:
    if len(data) != fw.identification_length:
        raise CparFormatError(f"DeviceIdentification response of {len(data)} bytes, "
                              f"expected {fw.identification_length} ({fw.name})")
    return IDENTIFICATION_LAYOUTS[fw.identification_layout][0](data)


def encode_identification(fw: FirmwareTable, ident: Identification) -> bytes:
    return IDENTIFICATION_LAYOUTS[fw.identification_layout][1](ident)


DEVICE_ID_CPAR = 1                      # DeviceID.CPAR

# How our simulator names itself: the manufacturer string where the layout has one,
# else a serial number no shipped unit is assumed to carry.
SIMULATOR_MANUFACTURER = "cuedpain-sim"
SIMULATOR_SERIAL = 0xFFFF
SIMULATOR_IDENTIFICATION = Identification(
    device_id=DEVICE_ID_CPAR, serial_number=SIMULATOR_SERIAL, version=(1, 0, 0, 0),
    manufacturer=SIMULATOR_MANUFACTURER, device="CPAR simulator")


def is_simulator(fw: FirmwareTable, ident: Identification) -> bool:
    """True when the identification is our simulator's (see SIMULATOR_*)."""
    if IDENTIFICATION_LAYOUTS[fw.identification_layout][2]:
        return ident.manufacturer == SIMULATOR_MANUFACTURER
    return ident.serial_number == SIMULATOR_SERIAL


# ---------------------------------------------------------------- messages

@dataclass(frozen=True)
class Status:
    """StatusMessage (0x80); pressures in raw bytes (0..255 = 0..100 kPa)."""

    state: int                      # index into DEVICE_STATES
    flags: int
    update_counter: int             # u16
    stop_condition: int             # index into STOP_CONDITIONS
    vas: int = 0
    final_vas: int = 0
    supply: int = 0                 # 0..255 = 0..1000 kPa
    actual: tuple[int, int] = (0, 0)
    target: tuple[int, int] = (0, 0)
    final: tuple[int, int] = (0, 0)
    stop_pressed: bool = False      # byte 14; absent in 14-byte layouts

    @property
    def state_name(self) -> str:
        return DEVICE_STATES[self.state] if self.state < len(DEVICE_STATES) else f"STATE_{self.state}"

    @property
    def stop_condition_name(self) -> str:
        c = self.stop_condition
        return STOP_CONDITIONS[c] if c < len(STOP_CONDITIONS) else f"STOPCOND_{c}"

    @property
    def actual_kpa(self) -> float:
        return byte_to_kpa(self.actual[0])

    @property
    def target_kpa(self) -> float:
        return byte_to_kpa(self.target[0])


def encode_status(fw: FirmwareTable, s: Status) -> Packet:
    data = struct.pack("<BBHBBBB6B", s.state, s.flags, s.update_counter & 0xFFFF, s.stop_condition,
                       s.vas, s.final_vas, s.supply, *s.actual, *s.target, *s.final)
    data += bytes((1 if s.stop_pressed else 0,))
    return Packet(fw.messages["status"], data[: fw.status_length])


def decode_status(fw: FirmwareTable, data: bytes) -> Status:
    if len(data) != fw.status_length:
        raise CparFormatError(f"StatusMessage of {len(data)} bytes, expected {fw.status_length} ({fw.name})")
    state, flags, counter, stop, vas, fvas, supply, a1, a2, t1, t2, f1, f2 = struct.unpack_from("<BBHBBBB6B", data)
    pressed = bool(data[14]) if len(data) > 14 else False
    return Status(state, flags, counter, stop, vas, fvas, supply, (a1, a2), (t1, t2), (f1, f2), pressed)


def encode_event(fw: FirmwareTable, name: str) -> Packet:
    return Packet(fw.messages["event"], bytes((fw.events.index(name),)))


def decode_event(fw: FirmwareTable, data: bytes) -> str:
    """EventMessage (0x81) -> EventID name (EVENT_<n> for a number the table lacks)."""
    if len(data) != 1:
        raise CparFormatError(f"EventMessage of {len(data)} bytes, expected 1")
    n = data[0]
    return fw.events[n] if n < len(fw.events) else f"EVENT_{n}"
