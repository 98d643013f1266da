"""A typed scanner spec -> a trigger source (built here, opened by the caller or `open_trigger_source`).

The spec was parsed where it entered (`experiment.protocol.specs`); this module does not
read text. What it decides is what the spec leaves to the run:
    keyboard        the key when the spec names none (the protocol's keys.trigger)
    sim             dry runs only; the driver when the spec names none: `virtual` on a
                    virtual clock (--headless), else `serial`, which is a pseudo-terminal
                    where the platform has one (POSIX) and a loopback TCP socket elsewhere
A simulated scanner is never a fallback: `sim` outside a dry run is an input error.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from experiment.buttons.decoders import ButtonDecoder
from experiment.clock import Clock, VirtualClock
from experiment.errors import InputError
from experiment.protocol.specs import KeyboardSpec, ScannerSpec, SerialSpec, SimDriver, SimSpec
from experiment.scanner.base import TriggerSource
from experiment.scanner.keyboard_source import KeyboardSource
from experiment.scanner.serial_source import SerialSource
from experiment.scanner.sim_scanner import ScannerPlan, VirtualScanner, has_pty, pty_sim_source, \
    socket_sim_source, xdotool_sim_source
from experiment.scanner.syncgen_source import SyncGenSource


def resolve_sim_driver(driver: SimDriver | None, *, virtual_clock: bool, pty: bool) -> SimDriver:
    """The driver a `sim` spec gets (pure): none named -> virtual or serial; serial -> pty or socket."""
    chosen = driver or (SimDriver.VIRTUAL if virtual_clock else SimDriver.SERIAL)
    if chosen is SimDriver.SERIAL:
        return SimDriver.PTY if pty else SimDriver.SOCKET
    return chosen


def make_trigger_source(spec: ScannerSpec, *, clock: Clock, win: Any = None, dry_run: bool,
                        plan: ScannerPlan | None = None, default_key: str = "5",
                        buttons: ButtonDecoder | None = None) -> TriggerSource:
    """Build (not open) the trigger source `spec` names.

    `win` is the PsychoPy window (an object of an untyped library, hence Any), or None
    when the command opens none; `default_key` is the trigger key of a `keyboard` spec
    that names none. `buttons`: the line also carries a button box's bytes (a serial
    spec, or a simulated scanner on a pty or socket, which then has a simulated fORP).
    """
    if buttons is not None and not (isinstance(spec, SerialSpec) or (
            isinstance(spec, SimSpec) and not clock.virtual
            and spec.driver in (None, SimDriver.SERIAL, SimDriver.PTY, SimDriver.SOCKET))):
        raise InputError(f"scanner {spec.text!r}: only a serial line (or a simulated scanner on a pty or socket) "
                         "can carry the button box too")
    if isinstance(spec, KeyboardSpec):
        return KeyboardSource(win, clock=clock, trigger_keys=(spec.key or default_key,), backend=spec.backend.value)
    if isinstance(spec, SerialSpec):
        return SerialSource(spec.port, clock=clock, preset=spec.preset, buttons=buttons)
    return _simulated(spec, clock=clock, win=win, dry_run=dry_run, plan=plan, buttons=buttons)


def _simulated(spec: SimSpec, *, clock: Clock, win: Any, dry_run: bool, plan: ScannerPlan | None,
               buttons: ButtonDecoder | None = None) -> TriggerSource:
    if not dry_run:
        raise InputError(f"scanner {spec.text!r}: the simulated scanner is only allowed in a dry run (--dry-run); "
                         f"a real run needs keyboard[:KEY] or serial:PORT[:PRESET]")
    if plan is None:
        raise InputError(f"scanner {spec.text!r}: the simulated scanner needs the protocol's TR and volume count")
    named = spec.driver or (SimDriver.VIRTUAL if clock.virtual else SimDriver.SERIAL)
    if clock.virtual != (named is SimDriver.VIRTUAL):
        raise InputError(f"scanner {spec.text!r}: the '{named.value}' simulated scanner "
                         f"{'needs' if named is SimDriver.VIRTUAL else 'cannot run on'} a virtual clock (--headless)")
    driver = resolve_sim_driver(named, virtual_clock=clock.virtual, pty=has_pty())
    if driver is SimDriver.VIRTUAL:
        if not isinstance(clock, VirtualClock):
            raise InputError(f"scanner {spec.text!r}: the 'virtual' simulated scanner needs "
                             f"experiment.clock.VirtualClock")
        return VirtualScanner(plan, clock=clock)
    if driver is SimDriver.PTY:
        return pty_sim_source(plan, clock=clock, buttons=buttons)
    if driver is SimDriver.SOCKET:
        return socket_sim_source(plan, clock=clock, buttons=buttons)
    if win is None:
        raise InputError(f"scanner {spec.text!r}: the '{driver.value}' simulated scanner types into the participant "
                         f"window, which this command does not open")
    if driver is SimDriver.KEYBOARD:
        return xdotool_sim_source(plan, clock=clock, win=win)
    # PsychoPy's emulator keeps its own TR without jitter: the plan's timing jitter does not apply
    return SyncGenSource(win, clock=clock, plan=replace(plan, jitter_s=0.0))


def open_trigger_source(spec: ScannerSpec, *, clock: Clock, win: Any = None, dry_run: bool,
                        plan: ScannerPlan | None = None, default_key: str = "5",
                        buttons: ButtonDecoder | None = None) -> TriggerSource:
    """Build and open the trigger source `spec` names; the caller closes it."""
    source = make_trigger_source(spec, clock=clock, win=win, dry_run=dry_run, plan=plan, default_key=default_key,
                                 buttons=buttons)
    source.open()
    return source
