"""`cuedpain report RUN_DIR`: the run's one-page QC report."""

from __future__ import annotations

import argparse

from experiment.cli.options import Subparsers


def add_parser(sub: Subparsers) -> None:
    p = sub.add_parser("report", help="write a one-page HTML QC report for a run")
    p.add_argument("run_dir", metavar="RUN_DIR")


def command(args: argparse.Namespace) -> int:
    from experiment.outputs import report

    return report.command(args)
