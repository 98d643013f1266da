"""`cuedpain rig-check`: check the cuff and the trigger line before the participant is in.

The cuff: identification, limits and state, command round-trip latency over at least
100 pings, and (only with --test-pressure) a short low test pulse verified by
read-back. The trigger line: listen for a while, count pulses, estimate the TR.
Exit 0 when everything checked is fit, 4 when something is not, 2 for bad input.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from experiment.clock import RealClock
from experiment.errors import EXIT_HARDWARE, EXIT_OK, InputError


def command(args: argparse.Namespace) -> int:
    from experiment.rig import load_rig

    rig = load_rig(Path(args.rig) if args.rig else None)
    cuff_spec = args.cuff or rig.cuff
    scanner_spec = args.scanner or rig.scanner
    if not cuff_spec and not scanner_spec:
        raise InputError("nothing to check: give --cuff SPEC and/or --scanner SPEC, or a --rig file that names them")
    if args.test_pressure is not None and not args.test_pressure > 0:
        raise InputError(f"--test-pressure must be above 0 kPa, got {args.test_pressure:g}")
    ok = True
    if cuff_spec:
        ok &= _check_cuff(cuff_spec, pings=args.pings, test_pressure_kpa=args.test_pressure)
    if scanner_spec:
        ok &= _check_scanner(scanner_spec, listen_s=args.listen)
    print("rig-check: all checked parts are fit" if ok else "rig-check: PROBLEMS found (see above)")
    return EXIT_OK if ok else EXIT_HARDWARE


def _check_cuff(spec: str, *, pings: int, test_pressure_kpa: float | None) -> bool:
    from experiment.cuff.check import run_cuff_check
    from experiment.cuff.factory import open_cuff

    clock = RealClock()
    simulated = spec.strip().lower() == "sim"
    if simulated:
        print("rig-check: checking the SIMULATED cuff (rehearsal only)")
    cuff = open_cuff(spec, clock=clock, dry_run=simulated)
    try:
        report = run_cuff_check(cuff, clock=clock, pings=pings, test_pressure_kpa=test_pressure_kpa)
    finally:
        try:
            cuff.vent()
        finally:
            cuff.close()
    return bool(report["ok"])


def _check_scanner(spec: str, *, listen_s: float) -> bool:
    from experiment.clock import psychopy_clock
    from experiment.scanner.check import run_scanner_check
    from experiment.scanner.factory import make_trigger_source

    if spec.strip().startswith("sim"):
        raise InputError("rig-check listens to a real trigger line; 'sim' has nothing to check")
    if not listen_s > 0:
        raise InputError(f"--listen must be above 0 s, got {listen_s:g}")
    clock = psychopy_clock() if spec.startswith("keyboard") else RealClock()
    source = make_trigger_source(spec, clock=clock, dry_run=False)
    report = run_scanner_check(source, clock=clock, listen_s=listen_s)
    return not report["problems"]
