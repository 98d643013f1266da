"""The `cuedpain` command line: argument parsing, dispatch, exit codes.

Each subcommand lives in the module named for its job and exposes
`command(args: argparse.Namespace) -> int`. This module only parses, dispatches, and
turns `CuedpainError`s into one clear message and their documented exit code.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

from experiment import __version__
from experiment.station.console import ClosedSafeStream
from experiment.errors import EXIT_ABORTED, EXIT_INPUT, CuedpainError

# subcommand -> module that implements command(args)
COMMANDS = {
    "validate": "experiment.procedures.planning",
    "plan": "experiment.procedures.planning",
    "run": "experiment.procedures.run.session",
    "simulate-cuff": "experiment.cuff.simserver",
    "rig-check": "experiment.procedures.rigcheck",
    "report": "experiment.outputs.report",
    "rebuild": "experiment.outputs.rebuild",
    "calibrate": "experiment.procedures.calibration.procedure",
}


class _Parser(argparse.ArgumentParser):
    """argparse that exits with our documented input-error code (2) and no traceback."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        sys.stderr.write(f"cuedpain: error: {message}\n")
        sys.exit(EXIT_INPUT)


def _device_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rig", metavar="FILE", help="rig file (site hardware: ports, trigger source, screen)")
    p.add_argument("--cuff", metavar="SPEC",
                   help="cuff device: sim | line:PORT | cpar:PORT (PORT: device path, COM name or pyserial URL)")
    p.add_argument("--scanner", metavar="SPEC",
                   help="trigger source: sim | keyboard[:KEY] | serial:PORT[:PRESET]")


def _data_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", metavar="DIR", default=None,
                   help="BIDS dataset root (default: data for real sessions, data-dryrun for dry runs; the two "
                        "kinds never share a root)")


def _yes_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--yes", action="store_true",
                   help="confirm the block shown before a real session starts without being asked (scripted use; "
                        "recorded in the log)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="cuedpain", description=__doc__.splitlines()[0],
                     epilog="Exit codes: 0 done, 2 invalid input, 3 run aborted, 4 hardware unavailable or faulty at start.")
    parser.add_argument("--version", action="version", version=f"cuedpain {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    p = sub.add_parser("validate", help="check a protocol file and print a one-screen summary")
    p.add_argument("protocol", metavar="PROTOCOL")
    p.add_argument("--rig", metavar="FILE", help="rig file whose cuff_timing the pre-flight checks count with")

    p = sub.add_parser("plan", help="write the run's timeline (TSV and PNG) and its design efficiency")
    p.add_argument("protocol", metavar="PROTOCOL")
    p.add_argument("--seed", type=int, default=None, help="randomisation seed (default: the protocol's)")
    p.add_argument("--participant", metavar="ID", default=None, help="participant label (cue counterbalancing)")
    p.add_argument("--out", metavar="DIR", required=True, help="output directory")
    p.add_argument("--rig", metavar="FILE", help="rig file whose cuff_timing the pre-flight checks count with")

    p = sub.add_parser("run", help="run a session (use --dry-run to rehearse with simulated devices)")
    p.add_argument("protocol", metavar="PROTOCOL")
    p.add_argument("--participant", metavar="ID", required=True)
    p.add_argument("--session", metavar="S", default=None)
    p.add_argument("--run", metavar="N", default="1", help="run number, or 'next' for the next free one")
    _device_args(p)
    p.add_argument("--dry-run", action="store_true", help="simulated cuff (on a pseudo-terminal) and simulated scanner")
    p.add_argument("--headless", action="store_true", help="no window, virtual clock, as fast as possible (dry runs only)")
    _data_arg(p)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--calibration", metavar="FILE", default=None,
                   help="the calibration to take the pressure from (target: calibrated); needed for one from another "
                        "session or older than the rig's calibration_max_age_h")
    p.add_argument("--pressure-override", metavar="KPA", type=float, default=None,
                   help="override a calibrated pressure (requires --override-reason)")
    p.add_argument("--override-reason", metavar="TEXT", default=None)
    _yes_arg(p)

    p = sub.add_parser("simulate-cuff", help="serve a simulated cuff on a pseudo-terminal (or a loopback TCP port) "
                                             "until SIGINT/SIGTERM")
    p.add_argument("--protocol", choices=["line", "cpar"], default="line", help="wire protocol (default: line = CUFF/1)")
    p.add_argument("--hard-limit", metavar="KPA", type=float, default=None, help="simulated firmware limit")
    p.add_argument("--leak", metavar="KPA_S", type=float, default=0.0, help="simulated leak rate")
    p.add_argument("--socket", metavar="PORT", type=int, nargs="?", const=0, default=None,
                   help="serve on 127.0.0.1:PORT (any free port without PORT) and print socket://127.0.0.1:PORT; "
                        "the default where there are no pseudo-terminals (Windows)")

    p = sub.add_parser("rig-check", help="check the cuff and the trigger line before the participant is in")
    _device_args(p)
    p.add_argument("--pings", type=int, default=200, help="round trips to time (at least 100)")
    p.add_argument("--test-pressure", metavar="KPA", type=float, default=None,
                   help="give a short low test pulse and verify inflation and deflation")
    p.add_argument("--listen", metavar="SECONDS", type=float, default=10.0, help="how long to count pulses")
    p.add_argument("--clear-fault", action="store_true",
                   help="clear a cuff latched in FAULT or ESTOP, on purpose, after checking the cuff and the "
                        "participant (recorded in the rig-check log)")
    p.add_argument("--data", metavar="DIR", default=None,
                   help="dataset root for the rig-check log (default: data, or data-dryrun for --cuff sim)")

    p = sub.add_parser("report", help="write a one-page HTML QC report for a run")
    p.add_argument("run_dir", metavar="RUN_DIR")

    p = sub.add_parser("rebuild", help="derive every output of a run again from its event log")
    p.add_argument("run_dir", metavar="RUN_DIR")

    p = sub.add_parser("calibrate", help="find the participant's pressure for the target pain rating")
    p.add_argument("--participant", metavar="ID", required=True)
    p.add_argument("--session", metavar="S", default=None)
    _device_args(p)
    p.add_argument("--method", choices=["ramp", "staircase"], default="staircase")
    p.add_argument("--target-rating", metavar="R", type=float, default=50.0)
    p.add_argument("--ceiling", metavar="KPA", type=float, default=None, help="maximum pressure for calibration")
    p.add_argument("--dry-run", action="store_true")
    p.add_argument("--headless", action="store_true")
    _data_arg(p)
    p.add_argument("--seed", type=int, default=None)
    _yes_arg(p)
    p.add_argument("--rate", metavar="KPA_S", type=float, default=None,
                   help="inflation rate (default: ramp 1 kPa/s, staircase 30 kPa/s)")
    p.add_argument("--repeats", metavar="N", type=int, default=None, help="ramp: number of ramps (default 3)")
    p.add_argument("--start", metavar="KPA", type=float, default=None, help="staircase: first plateau (default 10)")
    p.add_argument("--step", metavar="KPA", type=float, default=None, help="staircase: step (default 5)")
    p.add_argument("--plateau", metavar="S", type=float, default=None,
                   help="staircase: plateau length from target reached (default 5)")
    p.add_argument("--rest", metavar="S", type=float, default=None, help="rest between stimuli (default 10)")
    p.add_argument("--sim-participant", metavar="SPEC", default=None,
                   help="dry runs: the simulated participant, e.g. p50=35,slope=6,noise=5,stop=button@20")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command with stdout and stderr that survive a closed reader (see
    `ClosedSafeStream`): `cuedpain validate P | head -1` exits 0, and a run whose terminal
    or pipe went away still finishes, vents and derives its outputs."""
    saved = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = ClosedSafeStream(sys.stdout), ClosedSafeStream(sys.stderr)  # type: ignore[assignment]
    try:
        return _main(argv)
    finally:
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        sys.stdout, sys.stderr = saved


def _main(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        module = importlib.import_module(COMMANDS[args.command])
        return int(module.command(args))
    except CuedpainError as exc:
        sys.stderr.write(f"cuedpain {args.command}: {exc.message}\n")
        return exc.exit_code
    except KeyboardInterrupt:
        sys.stderr.write(f"cuedpain {args.command}: interrupted\n")
        return EXIT_ABORTED
    except Exception as exc:  # a bug, not bad input: say so, keep the traceback out of the way
        import tempfile
        import traceback

        with tempfile.NamedTemporaryFile("w", prefix="cuedpain-crash-", suffix=".txt", delete=False) as fh:
            traceback.print_exc(file=fh)
        sys.stderr.write(f"cuedpain {args.command}: internal error: {exc!r}; this is a bug in cuedpain, "
                         f"please report it with {fh.name}\n")
        return EXIT_ABORTED


if __name__ == "__main__":
    sys.exit(main())
