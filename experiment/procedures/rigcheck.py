"""`cuedpain rig-check`: check the cuff and the trigger line before the participant is in.

The cuff: identification, limits and state (a cuff latched in FAULT or ESTOP is unfit
and its fault is explained; `--clear-fault` clears it on purpose), command round-trip
latency over at least 100 pings, and (only with --test-pressure) a short low test pulse
verified by read-back. The trigger line: listen for a while, count pulses, estimate the TR.
Every check is logged in `<data>/sourcedata/rig-checks/rig-check-<time>.jsonl`, so a
cleared fault is on record next to the runs. Exit 0 when everything checked is fit, 4
when something is not, 2 for bad input.
"""

from __future__ import annotations

import argparse
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from experiment import __version__
from experiment.clock import RealClock
from experiment.outputs.dataset import claim_root, default_root
from experiment.errors import EXIT_HARDWARE, EXIT_OK, InputError
from experiment.log.eventlog import LogFile
from experiment.log.records import RigCheckRecord
from experiment.station.runinfo import check_writable, software_revision
from experiment.protocol.specs import CuffSpec, KeyboardSpec, ScannerSpec, parse_cuff_spec, parse_scanner_spec

Record = Callable[[RigCheckRecord], object]


def log_dir(data_root: Path) -> Path:
    """Where rig-check logs go."""
    return Path(data_root) / "sourcedata" / "rig-checks"


def command(args: argparse.Namespace) -> int:
    from experiment.protocol.rig import load_rig

    rig = load_rig(Path(args.rig) if args.rig else None)
    cuff_spec = rig.cuff if args.cuff is None else parse_cuff_spec(args.cuff, what="--cuff")
    scanner_spec = rig.scanner if args.scanner is None else parse_scanner_spec(args.scanner, what="--scanner")
    if cuff_spec is None and scanner_spec is None:
        raise InputError("nothing to check: give --cuff SPEC and/or --scanner SPEC, or a --rig file that names them")
    if args.test_pressure is not None and not args.test_pressure > 0:
        raise InputError(f"--test-pressure must be above 0 kPa, got {args.test_pressure:g}")
    if args.test_pressure is not None and cuff_spec is not None and cuff_spec.gated:
        raise InputError(f"--test-pressure: the cuff {cuff_spec} is a gated inflator whose pressure is set on its "
                         "panel; a test pulse at a chosen pressure is not possible (leave --test-pressure out)")
    if args.clear_fault and cuff_spec is None:
        raise InputError("--clear-fault clears a latched cuff: give --cuff SPEC or a --rig file that names it")
    if scanner_spec is not None and scanner_spec.simulated:
        raise InputError("rig-check listens to a real trigger line; 'sim' has nothing to check")
    if scanner_spec is not None and not args.listen > 0:
        raise InputError(f"--listen must be above 0 s, got {args.listen:g}")
    simulated = cuff_spec is not None and cuff_spec.simulated
    data_root = Path(args.data) if args.data else default_root(dry_run=simulated)
    check_writable(data_root)
    claim_root(data_root, dry_run=simulated)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    log_dir(data_root).mkdir(parents=True, exist_ok=True)
    log = LogFile(log_dir(data_root) / f"rig-check-{stamp}-{os.getpid()}.jsonl", {
        "purpose": "rig-check", "software": {"name": "cuedpain", "version": __version__,
                                             "revision": software_revision()},
        "dry_run": simulated, "cuff_spec": None if cuff_spec is None else str(cuff_spec),
        "scanner_spec": None if scanner_spec is None else str(scanner_spec),
        "rig_path": str(rig.path) if rig.path else None,
        "start_wall": datetime.now().astimezone().isoformat(timespec="seconds")}, threaded=False)
    ok = True
    try:
        if cuff_spec is not None:
            ok &= _check_cuff(cuff_spec, pings=args.pings, test_pressure_kpa=args.test_pressure,
                              clear_fault=args.clear_fault, record=log.write)
        if scanner_spec is not None:
            ok &= _check_scanner(scanner_spec, listen_s=args.listen, record=log.write)
        log.write({"kind": "end", "ok": ok})
    finally:
        log.close()
    print("rig-check: all checked parts are fit" if ok else "rig-check: PROBLEMS found (see above)")
    print(f"rig-check: log {log.path}")
    return EXIT_OK if ok else EXIT_HARDWARE


def _check_cuff(spec: CuffSpec, *, pings: int, test_pressure_kpa: float | None, clear_fault: bool,
                record: Record) -> bool:
    from experiment.cuff.check import run_cuff_check
    from experiment.cuff.factory import open_cuff

    clock = RealClock()
    simulated = spec.simulated
    if simulated:
        print("rig-check: checking the SIMULATED cuff (rehearsal only)")
    cuff = open_cuff(spec, clock=clock, dry_run=simulated)
    try:
        report = run_cuff_check(cuff, clock=clock, pings=pings, test_pressure_kpa=test_pressure_kpa,
                                clear_fault=clear_fault, record=record)
    finally:
        try:
            cuff.vent()
        finally:
            cuff.close()
    return bool(report["ok"])


def _check_scanner(spec: ScannerSpec, *, listen_s: float, record: Record) -> bool:
    from experiment.clock import psychopy_clock
    from experiment.scanner.check import run_scanner_check
    from experiment.scanner.factory import make_trigger_source

    clock = psychopy_clock() if isinstance(spec, KeyboardSpec) else RealClock()
    source = make_trigger_source(spec, clock=clock, dry_run=False)
    report = run_scanner_check(source, clock=clock, listen_s=listen_s)
    record({"kind": "scanner_check", "spec": str(spec), **report})
    return not report["problems"]
