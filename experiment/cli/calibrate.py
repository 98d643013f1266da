"""`cuedpain calibrate --participant ID --ceiling KPA ...`: the participant's pressure."""

from __future__ import annotations

import argparse

from experiment.cli import options
from experiment.cli.options import Subparsers


def add_parser(sub: Subparsers) -> None:
    p = sub.add_parser("calibrate", help="find the participant's pressure for the target pain rating")
    p.add_argument("--participant", metavar="ID", required=True)
    p.add_argument("--session", metavar="S", default=None)
    options.cuff_devices(p)
    p.add_argument("--method", choices=["ramp", "staircase"], default="staircase")
    p.add_argument("--target-rating", metavar="R", type=float, default=50.0)
    p.add_argument("--ceiling", metavar="KPA", type=float, default=None, help="maximum pressure for calibration")
    p.add_argument("--dry-run", action="store_true")
    p.add_argument("--headless", action="store_true")
    options.data(p)
    p.add_argument("--seed", type=int, default=None)
    options.yes(p)
    options.confirmed_by(p)
    p.add_argument("--rate", metavar="KPA_S", type=float, default=None,
                   help="inflation rate (default: ramp 1 kPa/s, staircase 30 kPa/s)")
    p.add_argument("--repeats", metavar="N", type=int, default=None, help="ramp: number of ramps (default 3)")
    p.add_argument("--start", metavar="KPA", type=float, default=None, help="staircase: first plateau (default 10)")
    p.add_argument("--step", metavar="KPA", type=float, default=None, help="staircase: step (default 5)")
    p.add_argument("--plateau", metavar="S", type=float, default=None,
                   help="staircase: plateau length from target reached (default 5)")
    p.add_argument("--rest", metavar="S", type=float, default=None, help="rest between stimuli (default 10)")
    p.add_argument("--protocol", metavar="PROTOCOL", default=None,
                   help="also report the pressure of every calibrated level of this protocol (kept in the result)")
    p.add_argument("--field", metavar="NAME=VALUE", action="append", default=[],
                   help="a participant field the lab declared (e.g. group=patient), kept in participants.tsv; "
                        "checked before the cuff is touched; repeat for several")
    p.add_argument("--sim-participant", metavar="SPEC", default=None,
                   help="dry runs: the simulated participant, e.g. p50=35,slope=6,noise=5,stop=button@20")


def command(args: argparse.Namespace) -> int:
    """Exit 0 result written, 2 bad input, 3 aborted or no result, 4 hardware at start."""
    from experiment.procedures.calibration.preflight import CalibrationRequest, preflight
    from experiment.procedures.calibration.procedure import Calibration
    from experiment.outputs.participants import parse_assignments

    request = CalibrationRequest(
        participant=args.participant, ceiling_kpa=args.ceiling, session=args.session, method=args.method,
        target_rating=args.target_rating, rig=options.path(args.rig), cuff=args.cuff, dry_run=args.dry_run,
        headless=args.headless, data=options.path(args.data), seed=args.seed, yes=args.yes, rate_kpa_s=args.rate,
        repeats=args.repeats, start_kpa=args.start, step_kpa=args.step, plateau_s=args.plateau, rest_s=args.rest,
        sim_participant=args.sim_participant, protocol=options.path(args.protocol),
        fields=parse_assignments(args.field), confirmed_by=options.check_confirmed_by(args))
    return Calibration(preflight(request)).execute()
