"""`cuedpain confirm-pressure --participant ID ...`: confirmation plateaus after the calibration."""

from __future__ import annotations

import argparse

from experiment.cli import options
from experiment.cli.options import Subparsers


def check_options(p: argparse.ArgumentParser, *, plateau_s: float) -> None:
    """The options both pressure checks share."""
    p.add_argument("--participant", metavar="ID", required=True)
    p.add_argument("--session", metavar="S", default=None)
    p.add_argument("--calibration", metavar="FILE", default=None,
                   help="start from this calibration result instead of the participant's newest")
    options.cuff_devices(p)
    p.add_argument("--plateau", metavar="S", type=float, default=plateau_s,
                   help=f"plateau length from target reached (default {plateau_s:g})")
    p.add_argument("--rest", metavar="S", type=float, default=10.0, help="rest between plateaus (default 10)")
    p.add_argument("--dry-run", action="store_true")
    p.add_argument("--headless", action="store_true")
    options.data(p)
    p.add_argument("--seed", type=int, default=None)
    options.yes(p)
    options.confirmed_by(p)
    p.add_argument("--sim-participant", metavar="SPEC", default=None, help="dry runs: the simulated participant")
    p.add_argument("--instruction", metavar="TEXT", action="append", default=None,
                   help="an instruction page the participant reads before the first plateau (repeat for several)")


def add_parser(sub: Subparsers) -> None:
    p = sub.add_parser("confirm-pressure", help="confirmation plateaus at the calibrated pressure and +-10 %, rated; "
                                                "writes the confirmed pressure as the newest calibration result")
    check_options(p, plateau_s=5.0)


def run_check(args: argparse.Namespace, kind: str, pressure_kpa: float | None = None) -> int:
    """Build the request, check it, run it (shared with scanner-check)."""
    from experiment.procedures.pressurecheck.preflight import PressureCheckRequest, preflight
    from experiment.procedures.pressurecheck.procedure import run_check as run

    request = PressureCheckRequest(
        kind=kind, participant=args.participant, session=args.session, pressure_kpa=pressure_kpa,
        calibration=options.path(args.calibration), plateau_s=args.plateau, rest_s=args.rest,
        rig=options.path(args.rig), cuff=args.cuff, dry_run=args.dry_run, headless=args.headless,
        data=options.path(args.data), seed=args.seed, yes=args.yes, confirmed_by=options.check_confirmed_by(args),
        sim_participant=args.sim_participant, instructions=tuple(args.instruction or ()))
    return run(preflight(request))


def command(args: argparse.Namespace) -> int:
    """Exit 0 result written, 2 bad input, 3 aborted or nothing rated, 4 hardware at start."""
    return run_check(args, "confirmation")
