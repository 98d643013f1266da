"""`cuedpain visit PLAN --participant ID ...`: a whole visit in the terminal, step by step."""

from __future__ import annotations

import argparse

from experiment.cli import options
from experiment.cli.options import Subparsers


def add_parser(sub: Subparsers) -> None:
    p = sub.add_parser("visit", help="carry out a visit plan step by step (rig check, calibration, checks, runs); "
                                     "resumes at the next step")
    p.add_argument("plan", metavar="PLAN", help="visit plan (YAML, e.g. visits/loggia2014.yaml)")
    p.add_argument("--participant", metavar="ID", required=True)
    p.add_argument("--session", metavar="S", default=None)
    p.add_argument("--rig", metavar="FILE", help="rig file (site hardware) passed to every step")
    p.add_argument("--dry-run", action="store_true", help="every step with simulated devices")
    p.add_argument("--headless", action="store_true", help="every step on a virtual clock, no window (dry runs only)")
    options.data(p)
    p.add_argument("--yes", action="store_true",
                   help="start every step without asking, and pass --yes to each (scripted use; recorded)")


def command(args: argparse.Namespace) -> int:
    """Exit 0 every step done, 2 bad input, 3 stopped or aborted (or a step's own exit code)."""
    from experiment.procedures.visit.procedure import VisitRequest, run_visit

    return run_visit(VisitRequest(plan=options.path(args.plan) or args.plan, participant=args.participant,
                                  session=args.session, rig=options.path(args.rig), data=options.path(args.data),
                                  dry_run=args.dry_run, headless=args.headless, yes=args.yes))
