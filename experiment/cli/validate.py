"""`cuedpain validate PROTOCOL [--rig FILE]`: check a protocol and print a one-screen summary."""

from __future__ import annotations

import argparse

from experiment.cli.options import Subparsers


def add_parser(sub: Subparsers) -> None:
    p = sub.add_parser("validate", help="check a protocol file and print a one-screen summary")
    p.add_argument("protocol", metavar="PROTOCOL")
    p.add_argument("--rig", metavar="FILE", help="rig file whose cuff_timing the pre-flight checks count with")


def command(args: argparse.Namespace) -> int:
    from experiment.procedures import planning

    return planning.command(args)
