"""`cuedpain rebuild RUN_DIR`: derive every output of a run again from its log."""

from __future__ import annotations

import argparse

from experiment.cli.options import Subparsers


def add_parser(sub: Subparsers) -> None:
    p = sub.add_parser("rebuild", help="derive every output of a run again from its event log")
    p.add_argument("run_dir", metavar="RUN_DIR")


def command(args: argparse.Namespace) -> int:
    from experiment.outputs import rebuild

    return rebuild.command(args)
