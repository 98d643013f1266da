"""`cuedpain discard RUN_DIR --reason TEXT [--undo] [--by NAME]`: leave a run out of the analysis.

Records the decision next to the run's log (annotations.jsonl, append-only; the log is never
touched) and in the session's BIDS scans.tsv (experiment/outputs/annotations.py). `--undo` takes
a discard back, with its own reason.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from experiment.cli.options import Subparsers


def add_parser(sub: Subparsers) -> None:
    p = sub.add_parser("discard", help="mark a run discarded (with a reason), or take that back with --undo")
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--reason", metavar="TEXT", required=True, help="why (recorded, and shown in scans.tsv)")
    p.add_argument("--undo", action="store_true", help="take a discard back: the run counts again")
    p.add_argument("--by", metavar="NAME", default=None, help="who decides (default: the login name)")


def command(args: argparse.Namespace) -> int:
    """Exit 0 recorded, 2 bad input (no such run, no reason, not discarded for --undo)."""
    from experiment.outputs.annotations import discard_run, restore_run

    act = restore_run if args.undo else discard_run
    outcome = act(Path(args.run_dir), args.reason, by=args.by)
    out = sys.stdout
    if args.undo:
        out.write(f"{outcome.stem}: counts again ({outcome.state.at}, by {outcome.state.by})\n")
    else:
        again = " (it was already discarded; this reason replaces the earlier one)" if outcome.was_discarded else ""
        out.write(f"{outcome.stem}: discarded: {outcome.state.reason}{again}\n")
    out.write(f"recorded in {outcome.annotations}\n")
    out.write(f"scans.tsv: {outcome.scans_tsv}\n" if outcome.scans_tsv else
              "scans.tsv: not written (the run has no BIDS files yet; `cuedpain rebuild RUN_DIR` derives them)\n")
    return 0
