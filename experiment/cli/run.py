"""`cuedpain run PROTOCOL --participant ID ...`: one run on the Station."""

from __future__ import annotations

import argparse
from pathlib import Path

from experiment.cli import options
from experiment.cli.options import Subparsers


def add_parser(sub: Subparsers) -> None:
    p = sub.add_parser("run", help="run a session (use --dry-run to rehearse with simulated devices)")
    p.add_argument("protocol", metavar="PROTOCOL")
    p.add_argument("--participant", metavar="ID", required=True)
    p.add_argument("--session", metavar="S", default=None)
    p.add_argument("--run", metavar="N", default="1", help="run number, or 'next' for the next free one")
    options.devices(p)
    p.add_argument("--buttons", metavar="SPEC", default=None,
                   help="button box on a serial line: serial:PORT[:forp|cedrus|custom][@BAUD] (the same PORT as "
                        "--scanner serial:PORT: one line carries both), or sim in a dry run (docs/buttons.md)")
    p.add_argument("--lsl", action="store_true", default=None,
                   help="publish markers and the pressure trace as Lab Streaming Layer streams (docs/lsl.md)")
    p.add_argument("--dry-run", action="store_true", help="simulated cuff (on a pseudo-terminal) and simulated scanner")
    p.add_argument("--headless", action="store_true", help="no window, virtual clock, as fast as possible (dry runs only)")
    options.data(p)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--calibration", metavar="FILE", default=None,
                   help="the calibration to take the pressure from (target: calibrated); needed for one from another "
                        "session or older than the rig's calibration_max_age_h")
    p.add_argument("--pressure-override", metavar="KPA", type=float, default=None,
                   help="stand in for the participant's calibrated pressure when there is no usable calibration; the protocol's levels (e.g. 0.8 x calibrated) apply to it and the confirmation shows the result (requires --override-reason)")
    p.add_argument("--override-reason", metavar="TEXT", default=None)
    p.add_argument("--panel-pressure", metavar="KPA", type=float, default=None,
                   help="a gated inflator (gated:PORT:GATE): the pressure set on its front panel, in kPa (instead of "
                        "the rig's cuff_panel_pressure); the run's target must equal it")
    options.yes(p)
    options.confirmed_by(p)
    p.add_argument("--instruction", metavar="TEXT", action="append", default=None,
                   help="an instruction page shown before waiting for the scanner, instead of the protocol's "
                        "instructions (repeat for several pages; a visit plan passes its run step's pages)")


def command(args: argparse.Namespace) -> int:
    """Exit 0 completed, 2 bad input, 3 aborted, 4 hardware at start."""
    from experiment.procedures.run.preflight import RunRequest, preflight
    from experiment.procedures.run.procedure import run

    request = RunRequest(protocol=Path(args.protocol), participant=args.participant, session=args.session,
                         run=str(args.run), rig=options.path(args.rig), cuff=args.cuff, scanner=args.scanner,
                         buttons=args.buttons, lsl=args.lsl,
                         dry_run=args.dry_run, headless=args.headless, data=options.path(args.data), seed=args.seed,
                         calibration=options.path(args.calibration), pressure_override_kpa=args.pressure_override,
                         override_reason=args.override_reason, panel_kpa=args.panel_pressure, yes=args.yes,
                         confirmed_by=options.check_confirmed_by(args),
                         instructions=None if args.instruction is None else tuple(args.instruction))
    return run(preflight(request))
