"""The `cuedpain` command line: argument parsing, dispatch, exit codes.

One module per command (`experiment/cli/<command>.py`), each with `add_parser(sub)` that
declares its options and `command(args) -> int` that turns them into a typed request for
the procedure that does the work. This package only parses, dispatches, and turns
`CuedpainError`s into one clear message and their documented exit code. May import
anything; nothing imports it.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import tempfile
import traceback
from types import ModuleType
from typing import NoReturn, Sequence

from experiment import __version__
from experiment.cli.options import Parser
from experiment.errors import EXIT_ABORTED, EXIT_INPUT, CuedpainError
from experiment.station.console import ClosedSafeStream

#: command -> module of this package that implements it (imported only when used: PsychoPy is heavy)
COMMANDS = {
    "validate": "validate", "plan": "plan", "run": "run", "calibrate": "calibrate", "rig-check": "rig_check",
    "simulate-cuff": "simulate_cuff", "simulate-buttons": "simulate_buttons", "report": "report", "rebuild": "rebuild",
    "participants": "participants", "discard": "discard", "study": "study",
    "confirm-pressure": "confirm_pressure", "scanner-check": "scanner_check",
    "visit": "visit", "station": "station", "ports": "ports",
    "timing-test": "timing_test", "simulate-light-sensor": "simulate_light_sensor",
}


def _module(command: str) -> ModuleType:
    return importlib.import_module(f"experiment.cli.{COMMANDS[command]}")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="cuedpain", description=(__doc__ or "").splitlines()[0],
                    epilog="Exit codes: 0 done, 2 invalid input, 3 run aborted, 4 hardware unavailable or faulty "
                           "at start.")
    parser.add_argument("--version", action="version", version=f"cuedpain {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    sub.required = True
    for command in COMMANDS:
        _module(command).add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command with stdout and stderr that survive a closed reader (see
    `ClosedSafeStream`): `cuedpain validate P | head -1` exits 0, and a run whose terminal
    or pipe went away still finishes, vents and derives its outputs."""
    saved = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = ClosedSafeStream(sys.stdout), ClosedSafeStream(sys.stderr)
    try:
        return _main(argv)
    finally:
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        sys.stdout, sys.stderr = saved


def _main(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(_module(args.command).command(args))
    except CuedpainError as exc:
        sys.stderr.write(f"cuedpain {args.command}: {exc.message}\n")
        return exc.exit_code
    except KeyboardInterrupt:
        sys.stderr.write(f"cuedpain {args.command}: interrupted\n")
        return EXIT_ABORTED
    except Exception as exc:  # a bug, not bad input: say so, keep the traceback out of the way
        with tempfile.NamedTemporaryFile("w", prefix="cuedpain-crash-", suffix=".txt", delete=False) as fh:
            traceback.print_exc(file=fh)
        sys.stderr.write(f"cuedpain {args.command}: internal error: {exc!r}; this is a bug in cuedpain, "
                         f"please report it with {fh.name}\n")
        return EXIT_ABORTED
