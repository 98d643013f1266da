"""Options several commands share, declared once."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def devices(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rig", metavar="FILE", help="rig file (site hardware: ports, trigger source, screen)")
    p.add_argument("--cuff", metavar="SPEC",
                   help="cuff device: sim | line:PORT | cpar:PORT (PORT: device path, COM name or pyserial URL)")
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


def path(value: Any) -> Path | None:
    """An optional path option as a Path."""
    return None if value is None else Path(value)
