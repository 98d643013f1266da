"""The serial ports of this computer and a guess at what is on each (`cuedpain ports`, the station).

`guess` is pure: from the USB vendor and product IDs and the texts the port reports, a
short phrase for the operator. It is a guess, worded as one: many cuffs and trigger
boxes sit behind the same USB-serial chips, so a chip's vendor says "a USB-serial
adapter", not which device is behind it. `list_ports` asks pyserial.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

# chip vendors whose adapters carry lab devices (VID -> maker); the product says little more
_CHIPS = {0x0403: "FTDI", 0x10C4: "Silicon Labs CP210x", 0x067B: "Prolific", 0x1A86: "WCH CH340"}
_BOARDS = {0x2341: "Arduino", 0x2A03: "Arduino", 0x16C0: "Teensy (PJRC)", 0x239A: "Adafruit", 0x2E8A: "Raspberry Pi Pico"}
_WORDS = (("cpar", "Nocitech CPAR cuff algometer (cpar:PORT)"),
          ("nocitech", "Nocitech CPAR cuff algometer (cpar:PORT)"),
          ("syncbox", "trigger box (NordicNeuroLab SyncBox: serial:PORT:syncbox)"),
          ("fiu", "trigger box (Current Designs fORP: serial:PORT:forp)"),
          ("forp", "trigger box (Current Designs fORP: serial:PORT:forp)"),
          ("current designs", "trigger box (Current Designs fORP: serial:PORT:forp)"),
          ("cuff", "pressure cuff (line:PORT)"))


@dataclass(frozen=True)
class PortInfo:
    device: str
    vid: int | None
    pid: int | None
    description: str
    manufacturer: str
    product: str
    serial_number: str
    guess: str

    @property
    def usb_id(self) -> str:
        return "" if self.vid is None or self.pid is None else f"{self.vid:04x}:{self.pid:04x}"

    def as_dict(self) -> dict[str, object]:
        return {**asdict(self), "usb_id": self.usb_id}


def guess(vid: int | None, pid: int | None, *texts: str) -> str:
    """What the port probably is, for the operator (never used to choose a device)."""
    words = " ".join(t for t in texts if t).lower()
    for word, what in _WORDS:
        if word in words:
            return f"probably a {what}"
    if vid in _BOARDS:
        return f"{_BOARDS[vid]} board: a lab-built CUFF/1 cuff or trigger converter? (line:PORT or serial:PORT)"
    if vid in _CHIPS:
        hint = "; set its latency timer to 1 ms" if vid == 0x0403 else ""
        return (f"{_CHIPS[vid]} USB-serial adapter: a cuff (line:PORT, cpar:PORT) or a trigger box "
                f"(serial:PORT) behind it{hint}")
    if vid is not None:
        return "a USB serial device of unknown kind"
    if "bluetooth" in words:
        return "a Bluetooth serial port (not a cuff or trigger line)"
    return "a built-in or virtual serial port"


def list_ports() -> list[PortInfo]:
    """Every serial port pyserial finds, sorted by device name."""
    from serial.tools import list_ports as lp

    out = []
    for p in lp.comports():
        texts = (p.description or "", p.manufacturer or "", p.product or "")
        out.append(PortInfo(device=p.device, vid=p.vid, pid=p.pid, description=p.description or "",
                            manufacturer=p.manufacturer or "", product=p.product or "",
                            serial_number=p.serial_number or "", guess=guess(p.vid, p.pid, *texts)))
    return sorted(out, key=lambda p: p.device)
