"""Simulators served on a loopback TCP port (`socket://127.0.0.1:PORT`, for stimulus computers
without pseudo-terminals), driven by the real drivers through pyserial's socket:// handler."""

from __future__ import annotations

import socket
import threading
from typing import Any

import pytest
import serial

from experiment.clock import RealClock
from experiment.cuff.base import CuffState, DeviceEvent, EventKind, StopSource
from experiment.cuff.cpar_driver import CparCuff
from experiment.cuff.cpar_sim import CparSimDevice
from experiment.cuff.factory import open_cuff
from experiment.cuff.line_driver import LineCuff
from experiment.cuff.safety import CuffSupervisor, SafetyLimits
from experiment.cuff.simdevice import SimCuffDevice
from experiment.cuff.simserver import SimServer, SimServerProcess, start_sim_server
from experiment.cuff.transport import SerialTransport
from experiment.protocol.specs import SIM_CUFF, parse_cuff_spec
from tests.cuff_helpers import wait_for

WAIT_S = 5.0


def _readline(port: serial.SerialBase) -> bytes:
    line = port.readline()
    assert line.endswith(b"\n"), f"no complete line, got {line!r}"
    return line


class Events:
    """Device events from a driver's reader thread."""

    def __init__(self) -> None:
        self.items: list[DeviceEvent] = []
        self.lost: list[BaseException] = []

    def attach(self, cuff: Any) -> None:
        cuff.set_listeners(on_event=self.items.append, on_lost=self.lost.append)

    def wait(self, kind: EventKind, timeout_s: float = WAIT_S) -> DeviceEvent:
        assert wait_for(lambda: any(e.kind is kind for e in self.items), timeout_s), \
            f"no {kind.name} within {timeout_s} s: {[e.name for e in self.items]}"
        return next(e for e in self.items if e.kind is kind)


@pytest.fixture
def clock() -> RealClock:
    return RealClock()


# ---------------------------------------------------------------- the endpoint


def test_a_tcp_port_is_served_like_a_serial_port() -> None:
    server = start_sim_server(SimCuffDevice, RealClock(), link="socket")
    try:
        assert server.path.startswith("socket://127.0.0.1:")
        for n in (1, 2):
            with serial.serial_for_url(server.path, timeout=2) as port:
                assert _readline(port) == b"!EVT BOOT fw=1.0.0\n"
                port.write(b"PING\n")
                assert _readline(port) == f"OK PING n={n}\n".encode()   # the same device, still running
                assert server.opens == n
            assert wait_for(lambda: not server._connected, 1.0)
    finally:
        server.close()


def test_one_host_at_a_time_and_a_pulled_cable_fails_the_host() -> None:
    server = SimServer(SimCuffDevice(), clock=RealClock(), link="socket")
    try:
        port = serial.serial_for_url(server.path, timeout=1)
        _readline(port)
        second = serial.serial_for_url(server.path, timeout=1)    # connects, then is closed by the server
        with pytest.raises(serial.SerialException, match="socket disconnected"):
            for _ in range(50):
                second.read(1)
        second.close()
        port.write(b"PING\n")
        assert _readline(port) == b"OK PING n=1\n"                 # the first host is undisturbed
        server.pull_cable()
        with pytest.raises(serial.SerialException):
            for _ in range(50):
                port.read(1)
        port.close()
        t = server.inspect(lambda d: d._now)                        # type: ignore[attr-defined]
        assert wait_for(lambda: server.inspect(lambda d: d._now) > t + 0.05, 1.0)  # type: ignore[attr-defined]
        with pytest.raises(serial.SerialException):                 # nothing listens any more
            serial.serial_for_url(server.path, timeout=0.5)
    finally:
        server.close()


def test_a_fixed_tcp_port_and_a_busy_one() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        free = probe.getsockname()[1]
    server = SimServer(SimCuffDevice(), clock=RealClock(), link="socket", tcp_port=free)
    try:
        assert server.path == f"socket://127.0.0.1:{free}"
        from experiment.errors import HardwareError
        with pytest.raises(HardwareError, match=f"cannot serve the simulated cuff on 127.0.0.1:{free}"):
            SimServer(SimCuffDevice(), clock=RealClock(), link="socket", tcp_port=free)
    finally:
        server.close()


# ---------------------------------------------------------------- the drivers through socket://


@pytest.mark.realtime
def test_line_cuff_over_a_socket_stimulates_vents_and_its_watchdog_fires_on_a_silent_host(clock: RealClock) -> None:
    server = SimServer(SimCuffDevice(), clock=clock, link="socket")
    cuff = LineCuff(SerialTransport(server.path, clock=clock), clock=clock)
    events = Events()
    events.attach(cuff)
    try:
        info = cuff.connect()
        assert info.simulated and info.port == server.path
        cuff.set_watchdog(1000)
        cuff.arm(40)
        cuff.set_rate(50)
        ramp = cuff.set_target(20)
        assert ramp.eta_s is not None and ramp.eta_s <= 0.5
        reached = events.wait(EventKind.TARGET_REACHED)
        assert reached.pressure_kpa is not None and abs(reached.pressure_kpa - 20.0) <= 0.5
        cuff.vent()
        assert wait_for(lambda: server.device.pressure_kpa < 1.0, 1.0)
        assert server.device.vent_log[-1][1] == "VENT"
        cuff.set_target(15)
        events.wait(EventKind.TARGET_REACHED)
        # the host falls silent: nothing more is sent, the device's watchdog vents
        watchdog = events.wait(EventKind.WATCHDOG, timeout_s=3.0)
        assert watchdog.limit_ms == 1000 and server.device.vent_log[-1][1] == "WATCHDOG"
        status = cuff.status()
        assert status.state is CuffState.FAULT and status.fault is not None and status.fault.name == "WATCHDOG"
    finally:
        cuff.close()
        server.close()


@pytest.mark.realtime
def test_the_supervisor_over_a_socket_heartbeats_stimulates_and_closes(clock: RealClock) -> None:
    cuff = open_cuff(SIM_CUFF, clock=clock, dry_run=True, sim_link="socket")
    assert cuff.info is not None and cuff.info.port.startswith("socket://127.0.0.1:")
    records: list[dict[str, Any]] = []
    limits = SafetyLimits(ceiling_kpa=40, max_stimulus_s=10, max_run_inflated_s=60, watchdog_ms=300)
    with CuffSupervisor(cuff, clock=clock, limits=limits, on_record=records.append) as sup:
        sup.stimulate(20, 50)
        threading.Event().wait(1.5)                # five watchdog periods: the heartbeat keeps it fed
        assert sup.safety_tripped is None and sup.last_pressure_kpa is not None
        assert abs(sup.last_pressure_kpa - 20.0) <= 1.0
        sup.vent("done")
    assert sup.heartbeats >= 12 and not [r for r in records if r["kind"] in ("safety", "warning")]


@pytest.mark.realtime
def test_cpar_cuff_over_a_socket_stimulates_vents_and_its_watchdog_fires_on_a_silent_host(clock: RealClock) -> None:
    server = SimServer(CparSimDevice(watchdog_timeout_s=1.0), clock=clock, link="socket")
    cuff = CparCuff(server.path, clock=clock)
    events = Events()
    events.attach(cuff)
    stop_kicking = threading.Event()
    try:
        assert cuff.connect().simulated
        kicker = threading.Thread(target=lambda: [cuff.ping() for _ in iter(lambda: stop_kicking.wait(0.25), True)],
                                  daemon=True)
        kicker.start()
        cuff.arm(50.0)
        cuff.set_rate(40.0)
        cuff.set_target(20.0)
        events.wait(EventKind.TARGET_REACHED)
        cuff.vent()
        events.wait(EventKind.DEFLATED)
        assert server.inspect(lambda d: d.pressure_kpa) == 0.0
        events.items.clear()
        cuff.set_target(20.0)
        events.wait(EventKind.TARGET_REACHED)
        stop_kicking.set()                          # the host falls silent
        kicker.join(2.0)
        events.wait(EventKind.WATCHDOG, timeout_s=3.0)
        status = cuff.status()
        assert status.state is CuffState.FAULT and status.error_code == 30
    finally:
        stop_kicking.set()
        cuff.close()
        server.close()


@pytest.mark.realtime
def test_simulate_cuff_socket_prints_the_url_and_serves_both_protocols(clock: RealClock) -> None:
    sim = SimServerProcess(["--socket"])
    try:
        assert sim.path.startswith("socket://127.0.0.1:")
        cuff = open_cuff(parse_cuff_spec(f"line:{sim.path}", what="--cuff"), clock=clock, dry_run=False)
        try:
            assert cuff.info is not None and cuff.info.simulated
            assert cuff.ping().reply == "OK PING n=1"
        finally:
            cuff.close()
    finally:
        assert sim.close() == 0
    cpar = SimServerProcess(["--protocol", "cpar", "--socket", "0"])
    try:
        cuff = CparCuff(cpar.path, clock=clock)
        try:
            assert cuff.connect().simulated
            cuff.estop()
            assert cuff.status().state is CuffState.ESTOP
        finally:
            cuff.close()
    finally:
        assert cpar.close() == 0


def test_simulate_cuff_refuses_a_bad_tcp_port(capsys: pytest.CaptureFixture[str]) -> None:
    from experiment.cli import main

    assert main(["simulate-cuff", "--socket", "70000"]) == 2
    assert "--socket PORT must be 0-65535" in capsys.readouterr().err


def test_stop_sources_survive_the_socket(clock: RealClock) -> None:
    server = SimServer(SimCuffDevice(), clock=clock, link="socket")
    cuff = LineCuff(SerialTransport(server.path, clock=clock), clock=clock)
    events = Events()
    events.attach(cuff)
    try:
        cuff.connect()
        cuff.sim_stop_button()
        assert events.wait(EventKind.ESTOP).source is StopSource.BUTTON
    finally:
        cuff.close()
        server.close()
