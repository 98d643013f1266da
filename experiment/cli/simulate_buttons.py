"""`cuedpain simulate-buttons`: a simulated fORP or Cedrus pad on a pseudo-terminal (rehearsal and tests)."""

from __future__ import annotations

import argparse
from typing import Any


def add_parser(sub: Any) -> None:
    p = sub.add_parser("simulate-buttons", help="serve a simulated button box (fORP with scanner triggers, or a "
                                                "Cedrus pad) on a pseudo-terminal until SIGINT/SIGTERM")
    p.add_argument("--box", choices=["forp", "cedrus"], default="forp", help="wire format (default: forp, ASCII mode)")
    p.add_argument("--tr", metavar="S", type=float, default=None,
                   help="fORP: also send the scanner trigger byte '5' every S seconds on the same line")
    p.add_argument("--press", metavar="BUTTON@SECONDS", action="append", default=[],
                   help="press BUTTON this many seconds after the first trigger (or the start); repeatable. "
                        "Lines of button names on standard input are pressed at once")


def command(args: argparse.Namespace) -> int:
    from experiment.buttons import simbox

    return simbox.command(box=args.box, tr_s=args.tr, press_texts=list(args.press))
