"""`cuedpain ports`: serial ports with USB IDs and a guess (offered by the station too)."""

from __future__ import annotations

import json

from experiment.cli import main
from experiment.station.ports import guess


def test_guesses_are_worded_as_guesses() -> None:
    assert "FTDI USB-serial adapter" in guess(0x0403, 0x6001, "FT232R USB UART")
    assert "latency timer to 1 ms" in guess(0x0403, 0x6001)
    assert "CPAR" in guess(0x0403, 0x6015, "CPAR+ algometer")
    assert "SyncBox" in guess(0x10C4, 0xEA60, "NNL SyncBox")
    assert "Arduino" in guess(0x2341, 0x0043)
    assert guess(None, None, "ttyS0") == "a built-in or virtual serial port"


def test_the_command_lists_ports_as_json(capsys) -> None:
    assert main(["ports", "--json"]) == 0
    ports = json.loads(capsys.readouterr().out)
    assert isinstance(ports, list) and all({"device", "usb_id", "guess"} <= set(p) for p in ports)
