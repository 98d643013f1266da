"""Serving simulators on pseudo-terminals, `cuedpain simulate-cuff`, and the cuff rig check."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import serial

from experiment.cli import main
from experiment.clock import RealClock, VirtualClock
from experiment.cuff.base import CuffState
from experiment.cuff.check import latency_advice, latency_timer_path, percentile, run_cuff_check
from experiment.cuff.factory import open_cuff
from experiment.cuff.simdevice import SimCuffDevice
from experiment.cuff.simserver import SimServer, SimServerProcess, make_device, start_sim_server
from experiment.protocol.specs import SIM_CUFF, CuffKind, CuffSpec
from experiment.errors import InputError
from tests.cuff_helpers import wait_for

CUEDPAIN = str(Path(sys.executable).parent / "cuedpain")


def _readline(port: serial.Serial) -> bytes:
    line = port.readline()
    assert line.endswith(b"\n"), f"no complete line, got {line!r}"
    return line


def test_every_port_open_is_seen_and_announced_with_boot() -> None:
    server = start_sim_server(SimCuffDevice, RealClock())
    try:
        for n in (1, 2):
            with serial.Serial(server.path, 115200, timeout=2) as port:
                assert _readline(port) == b"!EVT BOOT fw=1.0.0\n"
                assert server.opens == n
            assert wait_for(lambda: not server._connected, 1.0)
    finally:
        server.close()


def test_output_while_nobody_listens_is_dropped_not_buffered() -> None:
    server = start_sim_server(SimCuffDevice, RealClock())
    try:
        with serial.Serial(server.path, 115200, timeout=2) as port:
            _readline(port)
            port.write(b"STREAM 100\n")
            assert _readline(port) == b"OK STREAM hz=100\n"
        assert wait_for(lambda: not server._connected, 1.0)
        t_closed = server.device._now
        assert wait_for(lambda: server.device._now > t_closed + 0.2, 1.0)   # 20 samples' worth, unheard
        with serial.Serial(server.path, 115200, timeout=2) as port:
            assert _readline(port) == b"!EVT BOOT fw=1.0.0\n"
            assert _readline(port).startswith(b"!P t=")
    finally:
        server.close()


def test_a_pulled_cable_fails_the_host_and_the_device_runs_on() -> None:
    server = start_sim_server(SimCuffDevice, RealClock())
    try:
        port = serial.Serial(server.path, 115200, timeout=1)
        _readline(port)
        server.pull_cable()
        with pytest.raises(serial.SerialException):
            for _ in range(50):
                port.read(1)
        port.close()
        t = server.inspect(lambda d: d._now)
        assert wait_for(lambda: server.inspect(lambda d: d._now) > t + 0.05, 1.0)
        assert server.alive
    finally:
        server.close()


@pytest.mark.realtime
def test_simulate_cuff_command_prints_the_path_first_and_serves_until_sigterm() -> None:
    proc = subprocess.Popen([CUEDPAIN, "simulate-cuff", "--hard-limit", "80"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        path = proc.stdout.readline().strip()
        assert path.startswith("/dev/pts/")
        clock = RealClock()
        cuff = open_cuff(CuffSpec(CuffKind.LINE, path), clock=clock, dry_run=False)
        try:
            assert cuff.info.simulated and cuff.info.hard_limit_kpa == 80.0
            assert cuff.status().state is CuffState.IDLE
        finally:
            cuff.close()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
        err = proc.stderr.read()
        assert f"use --cuff line:{path}" in err and "stopped after 1 connection(s), 0 vent(s)" in err
    finally:
        proc.kill()
        proc.stdout.close()
        proc.stderr.close()


@pytest.mark.realtime
def test_sim_server_process_api_and_sigint() -> None:
    sim = SimServerProcess(["--leak", "0"])
    clock = RealClock()
    cuff = open_cuff(CuffSpec(CuffKind.LINE, sim.path), clock=clock, dry_run=False)
    assert cuff.ping().reply == "OK PING n=1"
    cuff.close()
    sim.proc.send_signal(signal.SIGINT)
    assert sim.proc.wait(10) == 0
    assert sim.close() == 0


@pytest.mark.realtime
def test_simulate_cuff_serves_the_cpar_simulator_too() -> None:
    sim = SimServerProcess(["--protocol", "cpar"])
    try:
        assert sim.path.startswith("/dev/pts/")
    finally:
        assert sim.close() == 0


def test_simulate_cuff_rejects_bad_options(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["simulate-cuff", "--leak", "-1"]) == 2
    assert "simulate-cuff: --leak must be 0 or more kPa/s, got -1.0" in capsys.readouterr().err
    with pytest.raises(InputError, match="apply to --protocol line only"):
        make_device("cpar", clock=RealClock(), hard_limit_kpa=50)
    with pytest.raises(InputError, match="unknown protocol 'medoc'"):
        make_device("medoc", clock=RealClock())


# ---------------------------------------------------------------- rig check (cuff half)

def test_rig_check_identifies_times_round_trips_and_gives_a_test_pulse() -> None:
    clock = RealClock()
    cuff = open_cuff(SIM_CUFF, clock=clock, dry_run=True)
    lines: list[str] = []
    try:
        report = run_cuff_check(cuff, clock=clock, pings=120, test_pressure_kpa=8, out=lines.append)
    finally:
        cuff.close()
    assert lines[0].startswith("cuff: cuedpain-sim (SIMULATED), firmware 1.0.0, serial SIM-0001, on /dev/pts/")
    assert re.fullmatch(r"state IDLE, pressure -?0\.\d kPa, armed max 0 kPa, error code 0", lines[1])
    assert lines[2].startswith("round trip over 120 pings: median ")
    ping = report["ping"]
    assert ping["n"] == 120 and 0 < ping["median_ms"] <= ping["p99_ms"] <= ping["max_ms"]
    pulse = report["test_pulse"]
    assert pulse["ok"] and pulse["reached"] and pulse["released"] and report["ok"]
    assert 8.0 - 0.5 <= pulse["peak_kpa"] <= 8.5
    assert 1.6 <= pulse["t_reach_s"] <= 2.5          # 8 kPa at 5 kPa/s
    assert lines[-1].startswith("test pulse OK: reached in ")


def test_rig_check_reports_a_leaking_cuff_and_vents_it() -> None:
    clock = VirtualClock()
    cuff = open_cuff(SIM_CUFF, clock=clock, dry_run=True, sim_options={"leak_kpa_s": 30.0})
    lines: list[str] = []
    report = run_cuff_check(cuff, clock=clock, pings=100, test_pressure_kpa=10, out=lines.append)
    pulse = report["test_pulse"]
    assert not report["ok"] and not pulse["reached"]
    assert pulse["tripped"] in ("host_compliance", "device_compliance")
    assert lines[-1].startswith("test pulse FAILED: ")
    assert "COMPLIANCE" in lines[-1] or "not reached" in lines[-1]
    assert cuff.status().pressure_kpa < 2.0          # vented: below the release threshold
    cuff.close()


def test_rig_check_refuses_too_few_pings_and_a_high_test_pressure() -> None:
    clock = VirtualClock()
    cuff = open_cuff(SIM_CUFF, clock=clock, dry_run=True)
    with pytest.raises(InputError, match="--pings must be at least 100, got 99"):
        run_cuff_check(cuff, clock=clock, pings=99, out=lambda s: None)
    with pytest.raises(InputError, match="--test-pressure must be above 0 and at most 20 kPa"):
        run_cuff_check(cuff, clock=clock, pings=100, test_pressure_kpa=25, out=lambda s: None)
    assert cuff.status().state is CuffState.IDLE
    cuff.close()


def test_latency_advice_names_the_fix_for_the_platform(tmp_path: Path) -> None:
    assert latency_advice("/dev/ttyUSB0", 1.0, 3.0) is None
    linux = latency_advice("/dev/ttyUSB0", 16.0, 17.0, platform="linux")
    assert "echo 1 | sudo tee /sys/bus/usb-serial/devices/ttyUSB0/latency_timer" in linux
    assert "Latency Timer: 1 ms" in latency_advice("COM5", 15.0, 31.0, platform="win32")
    assert "lower its latency timer" in latency_advice("/dev/ttyACM0", 9.0, 12.0, platform="linux")
    link = tmp_path / "usb-FTDI-cuff-if00-port0"
    link.symlink_to("/dev/ttyUSB3")
    assert latency_timer_path(str(link)) == Path("/sys/bus/usb-serial/devices/ttyUSB3/latency_timer")
    assert latency_timer_path("socket://10.0.0.2:5000") is None


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(100, 0, -1)]
    assert (percentile(values, 50), percentile(values, 99), percentile(values, 100)) == (50.0, 99.0, 100.0)
    assert percentile([3.0], 99) == 3.0


def test_a_server_can_be_closed_twice_and_frees_its_port() -> None:
    server = SimServer(SimCuffDevice(), clock=RealClock())
    path = server.path
    server.close()
    server.close()
    assert not server.alive
    with pytest.raises(serial.SerialException):
        serial.Serial(path, timeout=0.1)


@pytest.mark.realtime
def test_a_host_that_stops_reading_cannot_stall_the_device() -> None:
    server = start_sim_server(SimCuffDevice, RealClock())
    try:
        with serial.Serial(server.path, 115200, timeout=2) as port:
            _readline(port)
            # ~40 kB of replies nobody reads: the pty (about 20 kB) fills up
            port.write(b"WDT 1000\nARM 40\n" + b"PING\n" * 3000)
            assert wait_for(lambda: server.device.state == "FAULT", 4.0)
            assert server.device.vent_log[-1][1] == "WATCHDOG"
    finally:
        server.close()
