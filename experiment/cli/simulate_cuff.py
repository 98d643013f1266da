"""`cuedpain simulate-cuff`: serve a simulated cuff until SIGINT/SIGTERM (rehearsal and tests)."""

from __future__ import annotations

import argparse

from experiment.cli.options import Subparsers


def add_parser(sub: Subparsers) -> None:
    p = sub.add_parser("simulate-cuff", help="serve a simulated cuff on a pseudo-terminal (or a loopback TCP port) "
                                             "until SIGINT/SIGTERM")
    p.add_argument("--protocol", choices=["line", "cpar", "gated"], default="line",
                   help="wire protocol (default: line = CUFF/1; gated: the GATE/1 gate board, its inflator's panel "
                        "at 20 kPa)")
    p.add_argument("--panel", metavar="KPA", type=float, default=None,
                   help="gated: the simulated inflator's panel setting (default 20 kPa)")
    p.add_argument("--no-sensor", action="store_true",
                   help="gated: a board without a pressure sensor (standing in for a relay: no read-back)")
    p.add_argument("--hard-limit", metavar="KPA", type=float, default=None, help="simulated firmware limit")
    p.add_argument("--leak", metavar="KPA_S", type=float, default=0.0, help="simulated leak rate")
    p.add_argument("--socket", metavar="PORT", type=int, nargs="?", const=0, default=None,
                   help="serve on 127.0.0.1:PORT (any free port without PORT) and print socket://127.0.0.1:PORT; "
                        "the default where there are no pseudo-terminals (Windows)")
    p.add_argument("--seed", type=int, default=0, help="the simulated pneumatics' noise seed")
    p.add_argument("--parent-pid", metavar="PID", type=int, default=None,
                   help="stop serving when process PID is no longer this one's parent (a dry run's cuff "
                        "dies with its run)")


def command(args: argparse.Namespace) -> int:
    from experiment.cuff import simserver

    return simserver.command(args)
