"""`cuedpain scanner-check --participant ID [--pressure KPA] ...`: one rated stimulus in the scanner."""

from __future__ import annotations

import argparse

from experiment.cli.confirm_pressure import check_options, run_check
from experiment.cli.options import Subparsers


def add_parser(sub: Subparsers) -> None:
    p = sub.add_parser("scanner-check", help="in the scanner, before the first run: one stimulus at the confirmed "
                                             "pressure (or at --pressure to adjust it), rated; writes it as the "
                                             "newest calibration result")
    check_options(p, plateau_s=5.0)
    p.add_argument("--pressure", metavar="KPA", type=float, default=None,
                   help="adjust: give the check at this pressure instead (within the calibration's ceiling)")


def command(args: argparse.Namespace) -> int:
    """Exit 0 result written, 2 bad input, 3 aborted or not rated, 4 hardware at start."""
    return run_check(args, "scanner_check", args.pressure)
