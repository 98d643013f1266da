"""The CUFF/1 driver over real pseudo-terminals (and the loopback), and `open_cuff`."""

from __future__ import annotations

import statistics
import threading
from typing import Callable

import pytest

from experiment.clock import RealClock, VirtualClock
from experiment.cuff.base import CuffState, DeviceEvent, EventKind, PressureSample, StopSource
from experiment.cuff.factory import open_cuff
from experiment.cuff.line_codec import EventLine, Reply
from experiment.cuff.line_driver import CommandError, LineCuff, event_from_line, status_from_reply
from experiment.cuff.simdevice import SimCuffDevice
from experiment.cuff.simserver import SimServer
from experiment.cuff.transport import LoopbackTransport, SerialTransport
from experiment.errors import DeviceFault, HardwareError, InputError
from experiment.protocol.specs import SIM_CUFF, CuffKind, CuffSpec
from tests.cuff_helpers import wait_for
from tests.hardware_double import BENCH_NAME, BENCH_SERIAL, BenchCuff


class ScriptedBoard:
    """A minimal ByteDevice for what the simulator will not do: other protocols, slow boots.

    It answers HELLO with `hello` once `boot_s` after the port opened, and announces BOOT
    then, like a board whose bootloader swallows the first bytes after a reset on open.
    """

    def __init__(self, hello: str, *, boot_s: float = 0.0, boot_event: bool = True) -> None:
        self.hello, self.boot_s, self.boot_event = hello, boot_s, boot_event
        self.vent_log: list[tuple[float, str]] = []
        self._write: Callable[[bytes], None] = lambda b: None
        self._booted_at: float | None = None
        self._announced = False
        self.hellos_heard = 0

    def attach(self, write: Callable[[bytes], None]) -> None:
        self._write = write

    def on_port_open(self, now: float) -> None:
        self._booted_at, self._announced = now + self.boot_s, False

    def receive(self, data: bytes, now: float) -> None:
        for _ in range(data.count(b"\n")):
            self.hellos_heard += 1
            if self._booted_at is not None and now >= self._booted_at:
                self._write(self.hello.encode() + b"\n")

    def advance(self, now: float) -> None:
        if self._booted_at is not None and now >= self._booted_at and not self._announced:
            self._announced = True
            if self.boot_event:
                self._write(b"!EVT BOOT fw=0.1\n")

    pressure_kpa = 0.0
    state = "IDLE"


@pytest.fixture
def clock() -> RealClock:
    return RealClock()


@pytest.fixture
def server(clock: RealClock):
    srv = SimServer(SimCuffDevice(), clock=clock)
    yield srv
    srv.close()


@pytest.fixture
def cuff(server: SimServer, clock: RealClock):
    c = LineCuff(SerialTransport(server.path, clock=clock), clock=clock)
    c.connect()
    yield c
    c.close()


def test_connect_identifies_a_simulated_cuff_by_its_name(cuff: LineCuff, server: SimServer) -> None:
    info = cuff.info
    assert info is not None
    assert (info.kind, info.port, info.name, info.firmware, info.hard_limit_kpa, info.simulated, info.serial) == \
        ("line", server.path, "cuedpain-sim", "1.0.0", 100.0, True, "SIM-0001")
    assert server.opens == 1


def test_a_device_with_another_name_is_not_called_simulated(clock: RealClock) -> None:
    srv = SimServer(BenchCuff(hard_limit_kpa=60), clock=clock)
    c = LineCuff(SerialTransport(srv.path, clock=clock), clock=clock, on_close=[srv.close])
    try:
        info = c.connect()
        assert (info.name, info.simulated, info.hard_limit_kpa, info.serial) == \
            (BENCH_NAME, False, 60.0, BENCH_SERIAL)
    finally:
        c.close()
    assert not srv.alive                    # handed-over resources close with the cuff


def test_a_board_that_resets_on_open_is_identified_after_its_boot(clock: RealClock) -> None:
    board = ScriptedBoard("OK HELLO dev=slowboard fw=0.1 proto=1 hard=50.0", boot_s=0.8)
    srv = SimServer(board, clock=clock)
    c = LineCuff(SerialTransport(srv.path, clock=clock), clock=clock, hello_timeout_s=0.3)
    try:
        t0 = clock.now()
        info = c.connect()
        assert info.name == "slowboard"
        assert 0.8 <= clock.now() - t0 < 1.5
        assert board.hellos_heard >= 2      # the first HELLO went into the bootloader
    finally:
        c.close()
        srv.close()


def test_another_protocol_version_is_a_hardware_error(clock: RealClock) -> None:
    srv = SimServer(ScriptedBoard("OK HELLO dev=x fw=2.0 proto=2 hard=50.0"), clock=clock)
    c = LineCuff(SerialTransport(srv.path, clock=clock), clock=clock)
    try:
        with pytest.raises(HardwareError, match="speaks CUFF/2; this program speaks CUFF/1"):
            c.connect()
    finally:
        c.close()
        srv.close()


def test_a_mute_device_is_a_hardware_error_naming_the_port(clock: RealClock) -> None:
    srv = SimServer(ScriptedBoard("", boot_s=99), clock=clock)
    c = LineCuff(SerialTransport(srv.path, clock=clock), clock=clock, boot_wait_s=0.6, hello_timeout_s=0.2)
    try:
        with pytest.raises(HardwareError, match=f"cuff on {srv.path} did not identify itself within 0.6 s"):
            c.connect()
    finally:
        c.close()
        srv.close()


def test_the_port_is_opened_exclusively(cuff: LineCuff, server: SimServer, clock: RealClock) -> None:
    other = SerialTransport(server.path, clock=clock)
    with pytest.raises(HardwareError, match=f"cannot open cuff port {server.path}: .*exclusively lock"):
        other.open(lambda d, t: None, lambda e: None)


def test_an_error_reply_raises_with_its_code(cuff: LineCuff) -> None:
    cuff.arm(40)
    with pytest.raises(CommandError, match=r"refused 'SET 40.1': ERR 20 OVER_LIMIT max=40.0") as info:
        cuff.set_target(40.1)
    assert (info.value.code, info.value.error) == (20, "OVER_LIMIT")
    assert info.value.ack.t_ack >= info.value.ack.t_write


def test_no_reply_is_a_fault_and_a_late_reply_is_never_taken_for_the_next(cuff: LineCuff) -> None:
    n0 = cuff.ping().count
    cuff.command("SIM DELAY 300")
    with pytest.raises(DeviceFault, match=r"no reply within 100 ms to 'PING'"):
        cuff.command("PING", timeout_s=0.1)
    # the late "OK PING" arrives first; it must not stand in for this reply
    assert cuff.command("SIM DELAY 0", timeout_s=1.0).reply == "OK SIM DELAY ms=0"
    assert cuff.ping().count == n0 + 2


def test_a_silent_device_times_out(cuff: LineCuff) -> None:
    cuff.command("SIM SILENT 400")
    with pytest.raises(DeviceFault, match="no reply within 200 ms to 'STATUS[?]'"):
        cuff.command("STATUS?", timeout_s=0.2)
    # replies lost in the silence never come: the driver recovers once they are stale
    assert wait_for(lambda: _answers(cuff), 3.0)


def _answers(cuff: LineCuff) -> bool:
    try:
        cuff.command("PING", timeout_s=0.1)
        return True
    except DeviceFault:
        return False


def test_unsolicited_lines_go_to_listeners_and_never_replace_replies(cuff: LineCuff) -> None:
    events: list[DeviceEvent] = []
    samples: list[PressureSample] = []
    cuff.set_listeners(on_event=events.append, on_sample=samples.append)
    cuff.stream(100)
    cuff.arm(50)
    cuff.set_rate(50)
    cuff.set_target(20)
    counts = [cuff.ping().count for _ in range(150)]
    assert counts == list(range(counts[0], counts[0] + 150))
    assert wait_for(lambda: any(e.name == "TARGET_REACHED" for e in events), 2.0)
    assert len(samples) > 20
    assert all(a.t <= b.t and a.device_ms < b.device_ms for a, b in zip(samples, samples[1:]))
    cuff.command("SIM BUTTON")
    assert wait_for(lambda: events[-1].name == "ESTOP", 1.0)
    assert events[-1].fields == {"src": "button"}
    assert cuff.status().state is CuffState.ESTOP


def test_vent_goes_out_while_another_command_waits_for_its_reply(cuff: LineCuff, server: SimServer,
                                                                  clock: RealClock) -> None:
    cuff.arm(50)
    cuff.command("SIM DELAY 400")
    results: dict[str, object] = {}
    slow = threading.Thread(target=lambda: results.update(ping=cuff.command("PING", timeout_s=2.0)))
    slow.start()
    assert wait_for(lambda: any(b"PING" in d for _, d in server.rx_log[-2:]), 1.0)
    t_call = clock.now()
    ventres: dict[str, object] = {}
    vthread = threading.Thread(target=lambda: ventres.update(vent=cuff.command("VENT", timeout_s=2.0)))
    vthread.start()
    assert wait_for(lambda: len(server.device.vent_log) == 1, 1.0)
    assert server.device.vent_log[0][0] - t_call < 0.05
    assert "ping" not in results                 # the PING was still outstanding
    slow.join(3)
    vthread.join(3)
    assert results["ping"].reply.startswith("OK PING")
    assert ventres["vent"].reply == "OK VENT"


def test_a_pulled_cable_is_reported_and_later_commands_fail(cuff: LineCuff, server: SimServer) -> None:
    lost: list[BaseException] = []
    cuff.set_listeners(on_lost=lost.append)
    server.pull_cable()
    assert wait_for(lambda: bool(lost), 2.0)
    assert isinstance(lost[0], DeviceFault) and "connection lost" in str(lost[0])
    with pytest.raises(DeviceFault, match="connection lost"):
        cuff.ping()


@pytest.mark.realtime
def test_ping_round_trip_over_a_pty(cuff: LineCuff, clock: RealClock) -> None:
    rtt_ms = []
    for _ in range(300):
        t0 = clock.now()
        rtt_ms.append((cuff.ping().t_ack - t0) * 1000)
    rtt_ms.sort()
    median, p99 = statistics.median(rtt_ms), rtt_ms[int(0.99 * len(rtt_ms)) - 1]
    print(f"\nCUFF/1 PING round trip over a pty (300): median {median:.3f} ms, p99 {p99:.3f} ms, max {rtt_ms[-1]:.3f} ms")
    assert median < 5.0 and p99 < 20.0


def test_loopback_on_a_virtual_clock_runs_the_same_driver() -> None:
    clock = VirtualClock()
    device = SimCuffDevice()
    c = LineCuff(LoopbackTransport(device, clock=clock), clock=clock)
    events: list[DeviceEvent] = []
    c.set_listeners(on_event=events.append)
    assert c.connect().simulated
    c.arm(40)
    c.set_rate(10)
    c.set_target(30)
    clock.sleep(3.5)
    assert [e.name for e in events] == ["BOOT", "TARGET_REACHED"]
    assert 3.0 <= events[-1].t <= 3.5
    c.command("SIM DELAY 250")
    t0 = clock.now()
    assert c.ping().t_ack - t0 == pytest.approx(0.25, abs=0.003)   # waiting moved virtual time
    with pytest.raises(TypeError, match="VirtualClock"):
        LoopbackTransport(device, clock=RealClock())  # type: ignore[arg-type]


# ---------------------------------------------------------------- open_cuff: no silent fallback

def test_a_port_that_cannot_open_is_a_hardware_error_never_a_simulation(clock: RealClock) -> None:
    with pytest.raises(HardwareError, match="cannot open cuff port /dev/does-not-exist: .*No such file"):
        open_cuff(CuffSpec(CuffKind.LINE, "/dev/does-not-exist"), clock=clock, dry_run=True)
    with pytest.raises(HardwareError, match="cannot open cuff port socket://127.0.0.1:9: .*"):
        open_cuff(CuffSpec(CuffKind.LINE, "socket://127.0.0.1:9"), clock=clock, dry_run=False)


def test_sim_is_only_for_dry_runs_and_says_it_is_simulated(clock: RealClock) -> None:
    with pytest.raises(InputError, match="allowed only with --dry-run"):
        open_cuff(SIM_CUFF, clock=clock, dry_run=False)
    cuff = open_cuff(SIM_CUFF, clock=clock, dry_run=True)
    try:
        assert cuff.info.simulated and cuff.info.port.startswith("/dev/pts/")
        assert cuff.status().state is CuffState.IDLE
    finally:
        cuff.close()
    headless = open_cuff(SIM_CUFF, clock=VirtualClock(), dry_run=True)
    assert headless.info.simulated and headless.info.port == "sim:loopback"
    headless.close()


def test_line_spec_opens_a_served_device(server: SimServer, clock: RealClock) -> None:
    cuff = open_cuff(CuffSpec(CuffKind.LINE, server.path), clock=clock, dry_run=False)
    try:
        assert cuff.info.port == server.path and cuff.ping().reply.startswith("OK PING n=")
    finally:
        cuff.close()


# ---------------------------------------------------------------- translation into the typed interface

def test_replies_events_and_status_become_typed_values(cuff: LineCuff) -> None:
    assert cuff.set_watchdog(800).timeout_ms == 800
    assert cuff.set_max_time(20500).max_ms == 20500
    armed = cuff.arm(41.27)
    assert (armed.command, armed.reply, armed.ceiling_kpa) == ("ARM 41.2", "OK ARM max=41.2", 41.2)
    assert cuff.set_rate(20).rate_kpa_s == 20.0
    ramp = cuff.set_target(10)
    assert ramp.target_kpa == 10.0 and ramp.eta_s == pytest.approx(0.5, abs=0.01) and ramp.hold_s is None
    assert cuff.stream(25).rate_hz == 25
    status = cuff.status()
    assert status.state in (CuffState.RAMP, CuffState.HOLD) and status.state.armed and not status.state.latched
    assert (status.armed_max_kpa, status.fault, status.error_code) == (41.2, None, 0)
    assert cuff.info is not None and cuff.info.limits.rate_kpa_s.hi == 100.0
    assert cuff.info.limits.watchdog_ms is not None and 200 in cuff.info.limits.watchdog_ms


def test_malformed_values_are_left_out_never_raised_in_the_reader() -> None:
    ev = event_from_line(EventLine("ESTOP", {"src": "button"}), 1.0)
    assert (ev.kind, ev.source, ev.name, ev.fields) == (EventKind.ESTOP, StopSource.BUTTON, "ESTOP", {"src": "button"})
    odd = event_from_line(EventLine("TARGET_REACHED", {"p": "nan"}), 2.0)
    assert odd.kind is EventKind.TARGET_REACHED and odd.pressure_kpa is None and odd.fields == {"p": "nan"}
    assert event_from_line(EventLine("NEW_THING", {"a": "b"}), 3.0).kind is EventKind.OTHER
    assert event_from_line(EventLine("ESTOP", {"src": "elbow"}), 4.0).source is None
    latched = status_from_reply(Reply("", True, "STATUS", {"st": "FAULT", "p": "0.0", "tgt": "0.0", "max": "0.0",
                                                             "hard": "100.0", "err": "30"}))
    assert latched.state.latched and latched.fault is not None and latched.fault.name == "WATCHDOG"
    with pytest.raises(ValueError):
        status_from_reply(Reply("", True, "STATUS", {"st": "HOVER", "p": "0.0", "tgt": "0.0", "max": "0.0",
                                                      "hard": "100.0", "err": "0"}))


def test_real_firmware_refuses_the_simulated_stop_button() -> None:
    vclock = VirtualClock()
    real = LineCuff(LoopbackTransport(SimCuffDevice(allow_sim=False), clock=vclock), clock=vclock)
    real.connect()
    with pytest.raises(CommandError, match="ERR 10 UNKNOWN_COMMAND"):
        real.sim_stop_button()
