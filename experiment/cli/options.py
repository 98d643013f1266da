"""Options several commands share, declared once."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import NoReturn, TypeAlias

from experiment.errors import EXIT_INPUT


class Parser(argparse.ArgumentParser):
    """argparse that exits with our documented input-error code (2) and no traceback."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        sys.stderr.write(f"cuedpain: error: {message}\n")
        sys.exit(EXIT_INPUT)


#: what each command's `add_parser` gets: the subcommands of the `cuedpain` parser
Subparsers: TypeAlias = "argparse._SubParsersAction[Parser]"


def cuff_devices(p: argparse.ArgumentParser) -> None:
    """--rig and --cuff: for the commands that stimulate without the scanner (calibration, pressure checks)."""
    p.add_argument("--rig", metavar="FILE", help="rig file (site hardware: ports, trigger source, screen)")
    p.add_argument("--cuff", metavar="SPEC",
                   help="cuff device: sim | sim:gated[:rts|dtr] | line:PORT | cpar:PORT | gated:PORT:rts|dtr|board "
                        "(PORT: device path, COM name or pyserial URL)")


def devices(p: argparse.ArgumentParser) -> None:
    """--rig, --cuff and --scanner: for the commands that follow the scanner too."""
    cuff_devices(p)
    p.add_argument("--scanner", metavar="SPEC",
                   help="trigger source: sim | keyboard[:KEY] | serial:PORT[:PRESET]")


def data(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", metavar="DIR", default=None,
                   help="BIDS dataset root (default: data for real sessions, data-dryrun for dry runs; the two "
                        "kinds never share a root)")


def yes(p: argparse.ArgumentParser) -> None:
    p.add_argument("--yes", action="store_true",
                   help="confirm the block shown before a real session starts without being asked (scripted use; "
                        "recorded in the log)")


def confirmed_by(p: argparse.ArgumentParser) -> None:
    p.add_argument("--confirmed-by", metavar="WHO", default=None,
                   help="with --yes: who confirmed the block instead of this terminal (the operator station passes "
                        "'station': its page showed the block and the operator pressed Start); recorded in the log")


def check_confirmed_by(args: argparse.Namespace) -> str | None:
    """--confirmed-by only with --yes (it says who gave the yes), as plain text."""
    from experiment.errors import InputError

    who = args.confirmed_by
    if who is None:
        return None
    if not args.yes:
        raise InputError("--confirmed-by says who confirmed instead of this terminal: it needs --yes")
    if not (0 < len(who) <= 40 and who.replace("-", "").replace("_", "").isalnum()):
        raise InputError(f"--confirmed-by must be a short name (letters, digits, '-', '_'), got {who!r}")
    return str(who)


def path(value: str | None) -> Path | None:
    """An optional path option as a Path."""
    return None if value is None else Path(value)
