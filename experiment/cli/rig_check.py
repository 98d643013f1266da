"""`cuedpain rig-check`: the cuff and the trigger line, before the participant is in."""

from __future__ import annotations

import argparse

from experiment.cli import options
from experiment.cli.options import Subparsers


def add_parser(sub: Subparsers) -> None:
    p = sub.add_parser("rig-check", help="check the cuff and the trigger line before the participant is in")
    options.devices(p)
    p.add_argument("--pings", type=int, default=200, help="round trips to time (at least 100)")
    p.add_argument("--test-pressure", metavar="KPA", type=float, default=None,
                   help="give a short low test pulse and verify inflation and deflation")
    p.add_argument("--listen", metavar="SECONDS", type=float, default=10.0, help="how long to count pulses")
    p.add_argument("--clear-fault", action="store_true",
                   help="clear a cuff latched in FAULT or ESTOP, on purpose, after checking the cuff and the "
                        "participant (recorded in the rig-check log)")
    p.add_argument("--data", metavar="DIR", default=None,
                   help="dataset root for the rig-check log (default: data, or data-dryrun for --cuff sim)")


def command(args: argparse.Namespace) -> int:
    from experiment.procedures import rigcheck

    return rigcheck.command(args)
