"""`open_cuff(spec, ...)`: a connected cuff from a `CuffSpec` (`sim`, `sim:gated`, `line:PORT`, `cpar:PORT`
or `gated:PORT:GATE`).

The spec was parsed where it entered (`experiment.protocol.specs`); this module reads no text.

PORT is a device path, a COM name or a pyserial URL (`socket://host:port`,
`hwgrep://regexp`). A port that cannot be opened, or a device that does not identify
itself, is a HardwareError naming the port and the reason: there is never a quiet
switch to simulation. `sim` is allowed only for dry runs; it serves the simulated
CUFF/1 firmware on a pseudo-terminal, or on a loopback TCP port (`sim_link="socket"`, the
default where there are no pseudo-terminals), and drives it through the real serial
driver, from a child process of its own (`cuedpain simulate-cuff --parent-pid`), so its
byte pump never holds the run's interpreter lock (on a virtual clock, where threads and
real ports make no sense, through an in-process loopback instead). Either way the device
names itself `cuedpain-sim`, so `info.simulated` is True and every output says so.
`sim:gated` does the same with the simulated GATE/1 gate board (`cuedpain-sim-gate`), its
panel set to `panel_kpa`;
`sim:gated:rts` and `sim:gated:dtr` the same board without its sensor, standing in for a
relay (no read-back; a pseudo-terminal has no modem lines to switch a relay with).
"""

from __future__ import annotations

from typing import TypedDict

import serial

from experiment.clock import Clock, VirtualClock
from experiment.cuff.base import Cuff
from experiment.cuff.line_driver import LineCuff
from experiment.cuff.simdevice import SimCuffDevice
from experiment.cuff.simserver import SimLink, default_sim_link, start_sim_gate_process, start_sim_process
from experiment.cuff.transport import LoopbackTransport, SerialTransport
from experiment.errors import HardwareError, InputError
from experiment.protocol.specs import CuffKind, CuffSpec, Gate


class SimOptions(TypedDict, total=False):
    """How the simulated cuff of `sim` behaves (keywords of `SimCuffDevice`)."""

    hard_limit_kpa: float
    leak_kpa_s: float
    seed: int


def open_cuff(spec: CuffSpec, *, clock: Clock, dry_run: bool, reply_timeout_s: float = 0.5,
              sim_options: SimOptions | None = None, sim_link: SimLink | None = None,
              panel_kpa: float | None = None) -> Cuff:
    """Open, identify and return the cuff `spec` names (see the module docstring).

    `sim_options` go to `SimCuffDevice` (hard_limit_kpa, leak_kpa_s, seed); `sim_link` says
    where a simulated cuff is served on a real clock ("pty" or "socket"; default: a pty on
    POSIX, a TCP port elsewhere); `panel_kpa` is the panel setting of the simulated gate board's
    inflator (`sim:gated`; default 20 kPa).
    """
    if spec.simulated:
        if not dry_run:
            raise InputError(f"--cuff {spec} is a simulated cuff: it is allowed only with --dry-run")
        link = sim_link or default_sim_link()
        if spec.gated:
            return _open_sim_gate(clock=clock, reply_timeout_s=reply_timeout_s, link=link,
                                  panel_kpa=20.0 if panel_kpa is None else panel_kpa, sensor=spec.gate is Gate.BOARD)
        return _open_sim(clock=clock, reply_timeout_s=reply_timeout_s, sim_options=sim_options or {}, link=link)
    port = spec.port
    assert port is not None  # every kind but sim has a port (CuffSpec checks)
    cuff: Cuff
    if spec.kind is CuffKind.LINE:
        cuff = LineCuff(SerialTransport(port, clock=clock), clock=clock, reply_timeout_s=reply_timeout_s)
    elif spec.kind is CuffKind.GATED:
        from experiment.cuff.gated_driver import GatedCuff, ModemLines, board_transport
        if spec.gate is Gate.BOARD:
            cuff = GatedCuff(transport=board_transport(port, clock=clock), clock=clock, reply_timeout_s=reply_timeout_s)
        else:
            assert spec.gate is not None
            cuff = GatedCuff(lines=ModemLines(port, spec.gate.value), clock=clock)
    else:
        from experiment.cuff.cpar_driver import CparCuff  # only when a CPAR is asked for
        cuff = CparCuff(port, clock=clock, reply_timeout_s=reply_timeout_s)
    _connect(cuff, port)
    return cuff


def _open_sim(*, clock: Clock, reply_timeout_s: float, sim_options: SimOptions, link: SimLink) -> Cuff:
    if isinstance(clock, VirtualClock):
        device = SimCuffDevice(**sim_options)
        cuff = LineCuff(LoopbackTransport(device, clock=clock, port="sim:loopback"),
                        clock=clock, reply_timeout_s=reply_timeout_s)
        _connect(cuff, "sim:loopback")
        return cuff
    child = start_sim_process(link=link, **sim_options)
    try:
        cuff = LineCuff(SerialTransport(child.path, clock=clock), clock=clock, reply_timeout_s=reply_timeout_s,
                        on_close=[child.close_checked])
    except BaseException:
        child.close()
        raise
    _connect(cuff, child.path)
    return cuff


def _open_sim_gate(*, clock: Clock, reply_timeout_s: float, link: SimLink, panel_kpa: float, sensor: bool) -> Cuff:
    from experiment.cuff.gate_sim import SimGateBoard
    from experiment.cuff.gated_driver import GatedCuff, board_transport

    if isinstance(clock, VirtualClock):
        board = SimGateBoard(panel_kpa=panel_kpa, sensor=sensor)
        cuff = GatedCuff(transport=LoopbackTransport(board, clock=clock, port="sim:loopback"), clock=clock,
                         reply_timeout_s=reply_timeout_s)
        _connect(cuff, "sim:loopback")
        return cuff
    child = start_sim_gate_process(link=link, panel_kpa=panel_kpa, sensor=sensor)
    try:
        cuff = GatedCuff(transport=board_transport(child.path, clock=clock), clock=clock,
                         reply_timeout_s=reply_timeout_s, on_close=[child.close_checked])
    except BaseException:
        child.close()
        raise
    _connect(cuff, child.path)
    return cuff


def _connect(cuff: Cuff, port: str) -> None:
    try:
        cuff.connect()
    except HardwareError:
        _close_quietly(cuff)
        raise
    except (serial.SerialException, OSError, ValueError) as exc:
        _close_quietly(cuff)
        raise HardwareError(f"cannot open cuff port {port}: {exc}") from exc


def _close_quietly(cuff: Cuff) -> None:
    try:
        cuff.close()
    except Exception:  # noqa: BLE001 - the open error is the one to report
        pass
