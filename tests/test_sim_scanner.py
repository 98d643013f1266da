"""The simulated scanner: the pure plan, pulses through a real pty and through a loopback
socket into SerialSource, the headless VirtualScanner (a full 18,000-pulse session), and
the factory (which builds from typed specs; the grammar is tests/test_specs.py)."""

from __future__ import annotations

import socket

import numpy as np
import pytest

from experiment.clock import RealClock, VirtualClock
from experiment.errors import InputError
from experiment.protocol.specs import SimDriver, SimSpec, parse_scanner_spec
from experiment.scanner.factory import make_trigger_source, open_trigger_source, resolve_sim_driver
from experiment.scanner.pulsecheck import PulseMonitor
from experiment.scanner.serial_source import PRESETS, SerialSource
from experiment.scanner.sim_process import ProcessScanner
from experiment.scanner.sim_scanner import (DrivenSource, LoopbackListener, PtyScanner, ScannerPlan, SocketScanner,
                                            VirtualScanner)
from experiment.scanner.startgate import StartGate, wait_for_t0


# -- the plan (pure) --

def test_plan_puts_prep_scans_before_the_first_pulse_and_counts_discarded_pulses() -> None:
    plan = ScannerPlan(tr_s=2.0, n_volumes=3, prep_scans_no_pulse=2, discard_pulses=1)
    assert plan.pulse_times_s().tolist() == [4.0, 6.0, 8.0, 10.0]
    assert plan.first_stored_volume_s() == 6.0 and plan.n_pulsed_volumes == 4


def test_plan_drops_the_listed_pulses() -> None:
    plan = ScannerPlan(tr_s=1.0, n_volumes=6, dropped=(4, 1, 1))
    assert plan.dropped == (1, 4)
    assert plan.pulse_times_s().tolist() == [0.0, 2.0, 3.0, 5.0]
    assert len(plan.sent_pulse_times_s()) == 6


def test_plan_per_slice_pulses_spread_over_the_tr() -> None:
    plan = ScannerPlan(tr_s=2.0, n_volumes=2, slices_per_volume=4)
    assert plan.pulse_times_s().tolist() == [0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5]


def test_plan_jitter_is_seeded_and_bounded() -> None:
    a = ScannerPlan(tr_s=1.0, n_volumes=500, jitter_s=0.002, seed=11).pulse_times_s()
    b = ScannerPlan(tr_s=1.0, n_volumes=500, jitter_s=0.002, seed=11).pulse_times_s()
    c = ScannerPlan(tr_s=1.0, n_volumes=500, jitter_s=0.002, seed=12).pulse_times_s()
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    dev = a - np.arange(500)
    assert 0.0015 < dev.std() < 0.0025 and np.all(np.diff(a) > 0)


@pytest.mark.parametrize("kwargs, message", [
    ({"tr_s": 0.0, "n_volumes": 1}, "TR must be > 0"),
    ({"tr_s": 1.0, "n_volumes": -1}, "n_volumes must be a whole number"),
    ({"tr_s": 1.0, "n_volumes": 1, "slices_per_volume": 0}, "slices_per_volume must be >= 1"),
])
def test_plan_refuses_nonsense(kwargs, message) -> None:
    with pytest.raises(InputError, match=message):
        ScannerPlan(**kwargs)


# -- drivers --

@pytest.mark.realtime
def test_pty_scanner_with_dummies_jitter_and_drops_reaches_t0_and_the_monitor(pty_pair) -> None:
    master, path, _ = pty_pair
    clock = RealClock()
    # TR 100 ms: a pulse stamped 50 ms late on a loaded machine is still not an "extra" one
    plan = ScannerPlan(tr_s=0.1, n_volumes=30, prep_scans_no_pulse=2, discard_pulses=3, jitter_s=0.001,
                       dropped=(12,), seed=5, start_delay_s=0.05)
    source = SerialSource(path, clock=clock, preset=PRESETS["forp"])
    source.open()
    scanner = PtyScanner(plan, master, clock=clock)
    try:
        scanner.start()
        gate = StartGate(3, scanner_discarded=2)
        t0 = wait_for_t0(source, gate, clock=clock, timeout_s=3.0, should_abort=lambda: False,
                         on_status=lambda s: None, poll_s=0.005)
        monitor = PulseMonitor(plan.tr_s, n_expected=plan.n_volumes)
        monitor.feed(t0)
        assert scanner.done.wait(5) and scanner.error is None
        deadline = clock.now() + 2
        warnings = []
        while monitor.n_pulses < len(plan.pulse_times_s()) - 3 and clock.now() < deadline:
            for p in source.poll():
                warnings += monitor.feed(p.t)
            clock.sleep(0.005)
    finally:
        scanner.stop()
        source.close()
    # t0 is the 4th pulse sent (3 discarded; the 2 prep scans sent none), stamped on arrival
    assert gate.t0_pulse_index == 3
    assert scanner.start_t is not None
    assert scanner.sent[3] == pytest.approx(scanner.start_t + plan.first_stored_volume_s(), abs=0.01)
    assert 0 <= t0 - scanner.sent[3] < 0.05  # stamped on arrival (tens of µs when the GIL is free)
    assert [w.code for w in warnings] == ["missed_pulse"]  # pulse 12 = stored volume 9
    s = monitor.summary()
    assert (s.n_pulses, s.n_missed, s.n_volumes_seen) == (29, 1, 30)
    assert s.tr_mean_s == pytest.approx(0.1, abs=0.001)


def _collect(source, n: int, clock: RealClock, timeout_s: float = 5.0) -> list:
    """Poll until `n` pulses came or the timeout passed."""
    got: list = []
    deadline = clock.now() + timeout_s
    while len(got) < n and clock.now() < deadline:
        got.extend(source.poll())
        clock.sleep(0.005)
    return got


@pytest.mark.realtime
def test_socket_scanner_delivers_the_plan_to_a_serial_source_through_a_socket_url() -> None:
    clock = RealClock()
    plan = ScannerPlan(tr_s=0.01, n_volumes=150, prep_scans_no_pulse=1, discard_pulses=2, jitter_s=0.0005,
                       dropped=(40,), seed=3, start_delay_s=0.05)
    link = LoopbackListener()
    source = SerialSource(link.url, clock=clock, preset=PRESETS["forp"])
    source.open()  # pyserial's socket:// connects; the listener's backlog holds it until accept()
    scanner = SocketScanner(plan, link.accept(), clock=clock)
    try:
        scanner.start()
        assert scanner.done.wait(10) and scanner.error is None
        pulses = _collect(source, len(plan.pulse_times_s()), clock)
        clock.sleep(0.3)
        assert source.poll() == [] and source.lost is None  # the line stays up after the plan's last pulse
    finally:
        scanner.stop()
        source.close()
        link.close()
    assert link.url.startswith("socket://127.0.0.1:") and source.port == link.url
    assert [p.index for p in pulses] == list(range(len(plan.pulse_times_s())))  # 152 sent, 1 dropped
    assert scanner.start_t is not None
    planned = scanner.start_t + plan.pulse_times_s()
    stamps = np.array([p.t for p in pulses])
    latency = stamps - np.array(scanner.sent)
    print(f"serial socket:// latency (writer stamp -> logged): median {np.median(latency) * 1e3:.3f} ms, "
          f"p99 {np.percentile(latency, 99) * 1e3:.3f} ms, max {latency.max() * 1e3:.3f} ms, n={len(latency)}")
    assert (latency >= 0).all()  # stamped after the byte was sent, never before
    assert np.median(latency) < 0.002 and latency.max() < 0.05
    assert np.median(np.abs(stamps - planned)) < 0.002 and np.abs(stamps - planned).max() < 0.05


@pytest.mark.realtime
def test_sim_socket_reaches_t0_through_the_factory_and_leaves_nothing_listening() -> None:
    clock = RealClock()
    plan = ScannerPlan(tr_s=0.03, n_volumes=12, prep_scans_no_pulse=2, discard_pulses=3, start_delay_s=0.05)
    source = open_trigger_source(spec("sim:socket"), clock=clock, dry_run=True, plan=plan)
    assert isinstance(source, DrivenSource) and isinstance(source.driver, SocketScanner)
    assert isinstance(source.source, SerialSource) and source.source.port.startswith("socket://127.0.0.1:")
    port = int(source.source.port.rsplit(":", 1)[1])
    try:
        gate = StartGate(3, scanner_discarded=2)
        seen: list = []
        t0 = wait_for_t0(source, gate, clock=clock, timeout_s=3.0, should_abort=lambda: False,
                         on_status=lambda s: None, on_pulse=lambda p, v: seen.append(p))
        assert source.driver.done.wait(5) and source.driver.error is None
        seen += _collect(source, 15 - len(seen), clock)
    finally:
        source.close()
    assert gate.t0_pulse_index == 3
    assert [p.index for p in seen] == list(range(15)) and {p.source for p in seen} == {"sim"}
    assert source.driver.start_t is not None
    assert 0 <= t0 - (source.driver.start_t + plan.first_stored_volume_s()) < 0.05
    with pytest.raises(OSError):  # nothing listens any more
        socket.create_connection(("127.0.0.1", port), timeout=1).close()


def test_virtual_scanner_runs_a_2_hour_session_at_tr_0_4_with_bounded_timers() -> None:
    clock = VirtualClock()
    plan = ScannerPlan(tr_s=0.4, n_volumes=18_000, discard_pulses=2, jitter_s=0.0002, seed=1, start_delay_s=1.0)
    source = VirtualScanner(plan, clock=clock)
    source.open()
    gate = StartGate(2)
    t0 = wait_for_t0(source, gate, clock=clock, timeout_s=5, should_abort=lambda: False, on_status=lambda s: None)
    monitor = PulseMonitor(0.4, n_expected=18_000)
    monitor.feed(t0)
    pending_timers = []
    while clock.now() < t0 + 18_000 * 0.4 + 2:
        clock.sleep(1.0)  # the runner's frame loop, one second at a time
        for p in source.poll():
            assert gate.feed(p) is not None
            monitor.feed(p.t)
        pending_timers.append(len(clock._timers))
    s = monitor.summary()
    assert s.n_pulses == 18_000 and s.n_missed == 0 and s.n_extra == 0
    assert abs(s.drift_ppm) < 1.0
    assert max(pending_timers) <= 1  # one timer at a time, not 18,000 queued


# -- factory --

def spec(text: str):
    return parse_scanner_spec(text, what="--scanner")


def test_sim_is_refused_outside_a_dry_run() -> None:
    with pytest.raises(InputError, match=r"scanner 'sim': the simulated scanner is only allowed in a dry run"):
        make_trigger_source(SimSpec(), clock=VirtualClock(), dry_run=False, plan=ScannerPlan(tr_s=1, n_volumes=1))


def test_sim_needs_a_plan_and_the_right_clock() -> None:
    with pytest.raises(InputError, match="needs the protocol's TR and volume count"):
        make_trigger_source(spec("sim"), clock=VirtualClock(), dry_run=True)
    for driver in ("serial", "pty", "socket"):
        with pytest.raises(InputError, match=f"the '{driver}' simulated scanner cannot run on a virtual clock"):
            make_trigger_source(spec(f"sim:{driver}"), clock=VirtualClock(), dry_run=True,
                                plan=ScannerPlan(tr_s=1, n_volumes=1))
    with pytest.raises(InputError, match="the 'virtual' simulated scanner needs a virtual clock"):
        make_trigger_source(spec("sim:virtual"), clock=RealClock(), dry_run=True, plan=ScannerPlan(tr_s=1, n_volumes=1))
    with pytest.raises(InputError, match="the 'syncgen' simulated scanner types into the participant window"):
        make_trigger_source(spec("sim:syncgen"), clock=RealClock(), dry_run=True, plan=ScannerPlan(tr_s=1, n_volumes=1))


@pytest.mark.parametrize("driver, virtual_clock, pty, expected", [
    (None, True, True, SimDriver.VIRTUAL),
    (None, False, True, SimDriver.PTY),          # POSIX
    (None, False, False, SimDriver.SOCKET),      # Windows: no pseudo-terminals
    (SimDriver.SERIAL, False, True, SimDriver.PTY),
    (SimDriver.SERIAL, False, False, SimDriver.SOCKET),
    (SimDriver.SOCKET, False, True, SimDriver.SOCKET),
    (SimDriver.PTY, False, False, SimDriver.PTY),   # asked for: refused later by pty_sim_source, never swapped
    (SimDriver.KEYBOARD, False, True, SimDriver.KEYBOARD),
])
def test_the_default_simulated_scanner_is_a_pty_on_posix_and_a_socket_elsewhere(driver, virtual_clock, pty,
                                                                               expected) -> None:
    assert resolve_sim_driver(driver, virtual_clock=virtual_clock, pty=pty) is expected


def test_factory_builds_each_real_source_with_its_settings() -> None:
    kb = make_trigger_source(spec("keyboard:t:event"), clock=VirtualClock(), dry_run=False)
    assert (kb.name, kb.trigger_keys, kb.backend, kb.reads_keyboard) == ("keyboard", frozenset({"t"}), "event", True)
    default = make_trigger_source(spec("keyboard"), clock=VirtualClock(), dry_run=False, default_key="t")
    assert default.trigger_keys == frozenset({"t"})  # the protocol's keys.trigger when the spec names no key
    ser = make_trigger_source(spec("serial:/dev/ttyUSB0:syncbox"), clock=VirtualClock(), dry_run=False)
    assert (ser.port, ser.preset.baud, ser.simulated, ser.reads_keyboard) == ("/dev/ttyUSB0", 57600, False, False)
    assert ser.poll_keys() == []
    virtual = make_trigger_source(spec("sim"), clock=VirtualClock(), dry_run=True,
                                  plan=ScannerPlan(tr_s=1, n_volumes=1))
    assert isinstance(virtual, VirtualScanner) and virtual.simulated and not virtual.reads_keyboard


@pytest.mark.realtime
def test_sim_with_a_real_clock_goes_through_a_pty_and_the_serial_reader() -> None:
    clock = RealClock()
    plan = ScannerPlan(tr_s=0.03, n_volumes=10, start_delay_s=0.02)
    source = open_trigger_source(SimSpec(), clock=clock, dry_run=True, plan=plan)
    assert isinstance(source, DrivenSource) and isinstance(source.source, SerialSource)
    assert isinstance(source.driver, ProcessScanner) and not source.reads_keyboard   # pulses from a child process
    try:
        assert source.driver.done.wait(5)
        got: list = []
        deadline = clock.now() + 2
        while len(got) < 10 and clock.now() < deadline:
            got += source.poll()
            clock.sleep(0.005)
    finally:
        source.close()
    assert [p.index for p in got] == list(range(10)) and {p.source for p in got} == {"sim"}
    assert source.simulated
