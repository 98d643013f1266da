"""`cuedpain ports`: the serial ports of this computer, with USB IDs and a guess at what each is."""

from __future__ import annotations

import argparse
import json
import sys

from experiment.cli.options import Subparsers


def add_parser(sub: Subparsers) -> None:
    p = sub.add_parser("ports", help="list serial ports with USB vendor/product IDs and a guess at what each is")
    p.add_argument("--json", action="store_true", help="one JSON list instead of a table")


def command(args: argparse.Namespace) -> int:
    """Exit 0 (also when there is no port: it says so)."""
    from experiment.station.ports import list_ports

    ports = list_ports()
    if args.json:
        sys.stdout.write(json.dumps([p.as_dict() for p in ports], indent=1) + "\n")
        return 0
    if not ports:
        sys.stdout.write("no serial ports found (is the adapter plugged in? on Linux, is the user in the 'dialout' "
                         "group?)\n")
        return 0
    for p in ports:
        sys.stdout.write(f"{p.device:<22} {p.usb_id or '-':<10} {p.guess}\n"
                         f"{'':<22} {p.description}{' (serial ' + p.serial_number + ')' if p.serial_number else ''}\n")
    sys.stdout.write("Use the device path in a rig file (cuff: line:PORT or cpar:PORT, scanner: serial:PORT[:PRESET]), "
                     "or line:hwgrep://VID:PID to find an adapter wherever it is plugged in.\n")
    return 0
