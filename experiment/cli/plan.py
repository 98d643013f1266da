"""`cuedpain plan PROTOCOL --out DIR`: the run's timeline (TSV and PNG) and its design efficiency."""

from __future__ import annotations

import argparse

from experiment.cli.options import Subparsers


def add_parser(sub: Subparsers) -> None:
    p = sub.add_parser("plan", help="write the run's timeline (TSV and PNG) and its design efficiency")
    p.add_argument("protocol", metavar="PROTOCOL")
    p.add_argument("--seed", type=int, default=None, help="randomisation seed (default: the protocol's)")
    p.add_argument("--participant", metavar="ID", default=None, help="participant label (cue counterbalancing)")
    p.add_argument("--out", metavar="DIR", required=True, help="output directory")
    p.add_argument("--rig", metavar="FILE", help="rig file whose cuff_timing the pre-flight checks count with")
    p.add_argument("--search", metavar="N", type=int, default=None,
                   help="try N trial orders (seeds from --seed on) and keep the most efficient for the protocol's "
                        "contrasts (or regressors); reproducible from the seed it reports")


def command(args: argparse.Namespace) -> int:
    from experiment.procedures import planning

    return planning.command(args)
