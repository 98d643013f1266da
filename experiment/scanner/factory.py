"""`--scanner SPEC` -> an opened trigger source.

Forms (docs/scanner.md):
    keyboard[:KEY][:BACKEND]   KEY default 5; BACKEND ptb (default) or event
    serial:PORT[:PRESET]       PRESET: syncbox | forp | forp-bitwise | NAME@BAUD | custom:BYTE@BAUD
    sim[:DRIVER]               dry runs only. DRIVER: virtual (default with a virtual clock),
                               serial (default with a real clock: a pseudo-terminal on POSIX,
                               a loopback TCP socket elsewhere), pty, socket,
                               keyboard (xdotool key events), syncgen (PsychoPy's SyncGenerator)
A simulated scanner is never a fallback: `sim` outside a dry run is an input error.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from experiment.clock import Clock, VirtualClock
from experiment.errors import InputError
from experiment.scanner.base import TriggerSource
from experiment.scanner.keyboard_source import BACKENDS, KeyboardSource
from experiment.scanner.serial_source import SerialSource, parse_serial_spec
from experiment.scanner.sim_scanner import ScannerPlan, VirtualScanner, has_pty, pty_sim_source, \
    socket_sim_source, xdotool_sim_source
from experiment.scanner.syncgen_source import SyncGenSource

FORMS = ("keyboard[:KEY][:ptb|event]", "serial:PORT[:PRESET]",
         "sim[:virtual|serial|pty|socket|keyboard|syncgen] (dry runs only)")
SIM_DRIVERS = ("virtual", "serial", "pty", "socket", "keyboard", "syncgen")


def resolve_sim_driver(driver: str | None, *, virtual_clock: bool, pty: bool) -> str:
    """The driver a `sim` spec gets (pure): none named -> virtual or serial; serial -> pty or socket."""
    chosen = driver or ("virtual" if virtual_clock else "serial")
    if chosen == "serial":
        return "pty" if pty else "socket"
    return chosen


def _unknown(spec: str, why: str) -> InputError:
    return InputError(f"scanner {spec!r}: {why}; allowed: {' | '.join(FORMS)}")


def make_trigger_source(spec: str, *, clock: Clock, win: Any = None, dry_run: bool,
                        plan: ScannerPlan | None = None) -> TriggerSource:
    """Build (not open) the trigger source named by `spec`."""
    kind, _, rest = (spec or "").strip().partition(":")
    if kind == "keyboard":
        parts = rest.split(":") if rest else []
        if len(parts) > 2 or any(p == "" for p in parts):
            raise _unknown(spec, "a keyboard spec is keyboard, keyboard:KEY or keyboard:KEY:BACKEND")
        key = parts[0] if parts else "5"
        backend = parts[1] if len(parts) == 2 else "ptb"
        if backend not in BACKENDS:
            raise _unknown(spec, f"keyboard backend {backend!r} is not one of {', '.join(BACKENDS)}")
        return KeyboardSource(win, clock=clock, trigger_keys=(key,), backend=backend)
    if kind == "serial":
        port, preset = parse_serial_spec(rest)
        return SerialSource(port, clock=clock, preset=preset)
    if kind == "sim":
        if not dry_run:
            raise InputError(f"scanner {spec!r}: the simulated scanner is only allowed in a dry run (--dry-run); "
                             f"a real run needs keyboard[:KEY] or serial:PORT[:PRESET]")
        if plan is None:
            raise InputError(f"scanner {spec!r}: the simulated scanner needs the protocol's TR and volume count")
        driver = rest or ("virtual" if clock.virtual else "serial")
        if driver not in SIM_DRIVERS:
            raise _unknown(spec, f"simulated scanner driver {driver!r} is not one of {', '.join(SIM_DRIVERS)}")
        if clock.virtual != (driver == "virtual"):
            raise InputError(f"scanner {spec!r}: the '{driver}' simulated scanner "
                             f"{'needs' if driver == 'virtual' else 'cannot run on'} a virtual clock (--headless)")
        driver = resolve_sim_driver(driver, virtual_clock=clock.virtual, pty=has_pty())
        if driver == "virtual":
            if not isinstance(clock, VirtualClock):
                raise InputError(f"scanner {spec!r}: the 'virtual' simulated scanner needs "
                                 f"experiment.clock.VirtualClock")
            return VirtualScanner(plan, clock=clock)
        if driver == "pty":
            return pty_sim_source(plan, clock=clock)
        if driver == "socket":
            return socket_sim_source(plan, clock=clock)
        if win is None:
            raise InputError(f"scanner {spec!r}: the '{driver}' simulated scanner types into the participant window, "
                             f"which this command does not open")
        if driver == "keyboard":
            return xdotool_sim_source(plan, clock=clock, win=win)
        # PsychoPy's emulator keeps its own TR without jitter: the plan's timing jitter does not apply
        return SyncGenSource(win, clock=clock, plan=replace(plan, jitter_s=0.0))
    raise _unknown(spec, "unknown trigger source" if kind else "no trigger source given")


def open_trigger_source(spec: str, *, clock: Clock, win: Any = None, dry_run: bool,
                        plan: ScannerPlan | None = None) -> TriggerSource:
    """Build and open the trigger source named by `spec`; the caller closes it."""
    source = make_trigger_source(spec, clock=clock, win=win, dry_run=dry_run, plan=plan)
    source.open()
    return source
