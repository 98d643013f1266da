"""`cuedpain study [DATA] [--out DIR]`: every participant, run and calibration of a dataset on one page."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from experiment.cli.options import Subparsers

DEFAULT_DATA = Path("data")


def add_parser(sub: Subparsers) -> None:
    p = sub.add_parser("study", help="one page (and TSV tables) with every participant, run and calibration of a "
                                     "dataset: status, QC flags, pressures and ratings by group")
    p.add_argument("data", metavar="DATA", nargs="?", default=None,
                   help=f"BIDS dataset root (default: {DEFAULT_DATA})")
    p.add_argument("--out", metavar="DIR", default=None,
                   help="where to write study.html and the tables (default: DATA/derivatives/cuedpain-study)")


def command(args: argparse.Namespace) -> int:
    """Exit 0 written, 2 DATA is not a directory. What cannot be read is named on the page, not an error."""
    from experiment.study.writer import write_study

    root = Path(args.data) if args.data else DEFAULT_DATA
    outputs = write_study(root, Path(args.out) if args.out else None)
    s = outputs.study
    out = sys.stdout
    out.write(f"study page: {outputs.page}\n")
    out.write(f"{len(s.participants)} participants, {len(s.runs)} runs, {len(s.calibrations)} calibrations; "
              f"{sum(1 for r in s.runs if r.flags and r.counted)} runs with QC flags\n")
    if s.problems:
        out.write(f"{len(s.problems)} thing(s) could not be read; they are listed on the page\n")
    return 0
