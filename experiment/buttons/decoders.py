"""Button-box bytes -> button presses (pure; docs/buttons.md).

Two wire formats:

* a **byte map** (fORP in ASCII mode, or the rig file's `button_map`): each press is one
  byte, and the map names its button. The fORP preset follows Current Designs' 932 manual
  (modes "HHSC-2x4-C"/"HID KEY 12345": right-hand buttons '1'-'4', left-hand '6'-'9', the
  scanner trigger '5'; https://www.curdes.com/technical/932usemodes/).
* **Cedrus XID** (RB-series pads in XID mode): every key event is a 6-byte packet, `k`, a
  key-info byte (bits 0-3 the port, bit 4 set on press and clear on release, bits 5-7 the
  key number, 0 meaning key 8), then the pad's 4-byte little-endian reaction timer in ms
  (Cedrus' XID command reference, https://cedrus.com/support/xid/commands.htm; Cedrus' pyxid2
  reads it the same way). A press of key K (1-8) on port 0 is button `K`; on another port,
  `pPORT_K`. Releases are decoded and not presses.

A decoder never raises on input: what matches nothing comes back as `unmatched` bytes, which
the reader logs and otherwise ignores.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Mapping, Protocol

from experiment.protocol.specs import ButtonPresetName

FORP_BUTTONS: Mapping[int, str] = MappingProxyType({ord(c): c for c in "12346789"})
XID_PACKET = 6
XID_START = ord("k")


@dataclass(frozen=True)
class Decoded:
    """One button press as the wire said it: the button's name, its bytes, the box's own timer."""

    button: str
    raw: bytes
    device_ms: int | None = None    # the box's reaction timer (XID), not the run's clock


@dataclass
class Fed:
    """What one `feed` call made of its bytes."""

    presses: list[Decoded] = field(default_factory=list)
    unmatched: bytearray = field(default_factory=bytearray)
    releases: int = 0


@dataclass(frozen=True)
class ButtonPress:
    """A button press on a serial line, stamped on the run's clock when its last byte was read."""

    button: str
    t: float
    raw: bytes
    device_ms: int | None = None    # the box's own timer (Cedrus XID), for the record only


@dataclass(frozen=True)
class Unmatched:
    """Bytes that were neither a trigger nor a button since the last poll (logged, then ignored)."""

    t: float           # when the first of them arrived
    n: int             # how many
    head: bytes        # the first UNMATCHED_HEAD of them


UNMATCHED_HEAD = 32


class ButtonDecoder(Protocol):
    """Byte-at-a-time decoding, so one reader can hand each byte to the trigger decoder first."""

    @property
    def name(self) -> str: ...

    @property
    def mid_packet(self) -> bool:
        """True while a multi-byte packet is half read (its next bytes are not triggers)."""

    def feed_byte(self, b: int, out: Fed) -> None: ...


class ByteMapDecoder:
    """One byte, one press: `mapping` byte -> button name."""

    mid_packet = False

    def __init__(self, mapping: Mapping[int, str], *, name: str = "forp") -> None:
        self.mapping = dict(mapping)
        self.name = name

    def feed_byte(self, b: int, out: Fed) -> None:
        button = self.mapping.get(b)
        if button is None:
            out.unmatched.append(b)
        else:
            out.presses.append(Decoded(button, bytes((b,))))


class XidDecoder:
    """Cedrus XID key packets; resynchronises on the next `k` after a broken packet."""

    name = "cedrus"

    def __init__(self) -> None:
        self._packet = bytearray()

    @property
    def mid_packet(self) -> bool:
        return bool(self._packet)

    def feed_byte(self, b: int, out: Fed) -> None:
        if not self._packet:
            if b == XID_START:
                self._packet.append(b)
            else:
                out.unmatched.append(b)
            return
        self._packet.append(b)
        if len(self._packet) < XID_PACKET:
            return
        packet, self._packet = bytes(self._packet), bytearray()
        info = packet[1]
        port, pressed, key = info & 0x0F, bool(info & 0x10), (info >> 5) or 8   # key bits 0 are key 8, as pyxid2 reads them
        (timer_ms,) = struct.unpack("<I", packet[2:6])
        if pressed:
            out.presses.append(Decoded(str(key) if port == 0 else f"p{port}_{key}", packet, timer_ms))
        else:
            out.releases += 1


def xid_packet(key: int, *, pressed: bool = True, port: int = 0, timer_ms: int = 0) -> bytes:
    """The packet a Cedrus pad sends for one event of key 1-8 (simulators and tests)."""
    return bytes((XID_START, (key & 0x07) << 5 | (0x10 if pressed else 0) | (port & 0x0F))) + \
        struct.pack("<I", timer_ms & 0xFFFFFFFF)


def make_decoder(preset: ButtonPresetName, byte_map: Mapping[int, str] | None = None) -> ButtonDecoder:
    """The decoder of a preset; `custom` needs the rig file's byte map."""
    if preset is ButtonPresetName.CEDRUS:
        return XidDecoder()
    if preset is ButtonPresetName.CUSTOM:
        if not byte_map:
            raise ValueError("a custom button box needs a byte map")
        return ByteMapDecoder(byte_map, name="custom")
    return ByteMapDecoder(FORP_BUTTONS, name="forp")


def forp_byte(button: str) -> bytes:
    """The byte a fORP in ASCII mode sends for `button` (simulators); ValueError for no such button."""
    for b, name in FORP_BUTTONS.items():
        if name == button:
            return bytes((b,))
    raise ValueError(f"a fORP has no button {button!r} (buttons: {', '.join(FORP_BUTTONS.values())})")


class ButtonSource(Protocol):
    """What a session asks of a button box's reader (a `SerialSource` with a button decoder,
    or a simulated scanner's line with its simulated box)."""

    def poll_buttons(self) -> list[ButtonPress]:
        """Presses since the last call, oldest first. Never blocks."""

    def take_unmatched(self) -> Unmatched | None:
        """Bytes that matched nothing since the last call (None: none)."""
