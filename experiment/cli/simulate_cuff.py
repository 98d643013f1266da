"""`cuedpain simulate-cuff`: serve a simulated cuff until SIGINT/SIGTERM (rehearsal and tests)."""

from __future__ import annotations

import argparse
from typing import Any


def add_parser(sub: Any) -> None:
    p = sub.add_parser("simulate-cuff", help="serve a simulated cuff on a pseudo-terminal until SIGINT/SIGTERM")
    p.add_argument("--protocol", choices=["line", "cpar"], default="line", help="wire protocol (default: line = CUFF/1)")
    p.add_argument("--hard-limit", metavar="KPA", type=float, default=None, help="simulated firmware limit")
    p.add_argument("--leak", metavar="KPA_S", type=float, default=0.0, help="simulated leak rate")


def command(args: argparse.Namespace) -> int:
    from experiment.cuff import simserver

    return simserver.command(args)
