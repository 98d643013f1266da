"""CparCuff against the CPAR simulator: over real pseudo-terminals (SimServer), and over
the in-process loopback on a VirtualClock for the slow or lossy cases."""

from __future__ import annotations

import threading

import pytest

from experiment.clock import RealClock, VirtualClock
from experiment.cuff import cpar_codec as codec
from experiment.cuff.base import (CommandRefused, CuffState, DeviceEvent, DeviceRestarted, EventKind, PressureSample,
                                  StopSource)
from experiment.cuff.cpar_driver import CparCuff
from experiment.cuff.cpar_sim import CparSimDevice
from experiment.cuff.simserver import SimServer, SimServerProcess
from experiment.cuff.transport import LoopbackTransport
from experiment.errors import DeviceFault, HardwareError

WAIT_S = 5.0


class Recorder:
    """Collects events, samples and lost-port reports from the driver's reader thread."""

    def __init__(self) -> None:
        self.events: list[DeviceEvent] = []
        self.samples: list[PressureSample] = []
        self.lost: list[BaseException] = []
        self.cond = threading.Condition()

    def attach(self, cuff: CparCuff) -> None:
        cuff.set_listeners(on_event=self._add(self.events), on_sample=self._add(self.samples),
                           on_lost=self._add(self.lost))

    def _add(self, into: list):
        def add(item) -> None:
            with self.cond:
                into.append(item)
                self.cond.notify_all()
        return add

    def wait_event(self, name: str, timeout_s: float = WAIT_S, **fields: str) -> DeviceEvent:
        def found():
            return next((e for e in self.events if e.name == name
                         and all(e.fields.get(k) == v for k, v in fields.items())), None)
        with self.cond:
            assert self.cond.wait_for(lambda: found() is not None, timeout_s), \
                f"no {name} {fields} within {timeout_s} s; events: {[(e.name, e.fields) for e in self.events]}"
            return found()

    def names(self) -> list[str]:
        with self.cond:
            return [e.name for e in self.events]


class Kicker:
    """The heartbeat a supervisor would run: KickWatchdog every `period_s` from a thread."""

    def __init__(self, cuff: CparCuff, period_s: float = 0.25) -> None:
        self.cuff, self.period_s = cuff, period_s
        self.stop_flag = threading.Event()
        self.last_kick_t = 0.0
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop_flag.is_set():
            self.last_kick_t = self.cuff.ping().t_ack
            self.stop_flag.wait(self.period_s)

    def stop(self) -> None:
        self.stop_flag.set()
        self.thread.join(2.0)


@pytest.fixture
def clock():
    return RealClock()


@pytest.fixture
def served(clock):
    """The CPAR simulator (1 s device watchdog, to keep tests short) on a real pty."""
    server = SimServer(CparSimDevice(watchdog_timeout_s=1.0), clock=clock)
    yield server
    server.close()


@pytest.fixture
def rec():
    return Recorder()


@pytest.fixture
def cuff(served, clock, rec):
    c = CparCuff(served.path, clock=clock)
    rec.attach(c)
    c.connect()
    yield c
    c.close()


def _device(served: SimServer) -> CparSimDevice:
    return served.device  # type: ignore[return-value]


# ---------------------------------------------------------------- over a real pty

def test_connect_identifies_the_simulator_and_sends_the_maker_byte_stream(cuff, served):
    info = cuff.info
    assert (info.kind, info.simulated, info.hard_limit_kpa, info.firmware) == ("cpar", True, 100.0, "1.0.0")
    assert info.name == "cuedpain-sim CPAR simulator" and info.port == served.path
    first = b"".join(chunk for _, chunk in served.rx_log)[:7]
    assert first == bytes([0xFF, 0xF1, 0x01, 0x00, 0x00, 0xFF, 0xF2])   # with Packet.ToArray's trailing 0x00


@pytest.mark.realtime
def test_ramp_to_target_reached_then_vent(cuff, rec, served, clock):
    dev = _device(served)
    kicker = Kicker(cuff)
    try:
        cuff.arm(50.0)
        cuff.set_rate(20.0)
        result = cuff.set_target(30.0)
        assert result.target_kpa == 30.0 and result.eta_s == round((30 / 20 + 0.05) * 1000) / 1000
        reached = rec.wait_event("TARGET_REACHED")
        dt = reached.t - result.t_write
        # 1.5 s of ramp at 20 kPa/s, then the cuff's first-order lag (tau 0.1 s) and a tick
        assert 1.5 <= dt <= 1.5 + 0.4, dt
        assert abs(float(reached.fields["p"]) - 30.0) <= 0.5 and abs(reached.pressure_kpa - 30.0) <= 0.5
        status = cuff.status()
        assert (status.state, status.target_kpa, status.armed_max_kpa) == (CuffState.HOLD, 30.0, 50.0)
        t_vent = clock.now()
        vent = cuff.vent()
        rec.wait_event("DEFLATED")
        assert served.inspect(lambda d: d.pressure_kpa) == 0.0
        assert dev.vent_log[-1][1] == "CONTROL_SOFTWARE" and t_vent <= dev.vent_log[-1][0] <= vent.t_ack
        assert cuff.status().state is CuffState.ARMED
    finally:
        kicker.stop()
    with rec.cond:
        samples = [s for s in rec.samples if result.t_write <= s.t <= t_vent]
    rate_hz = (len(samples) - 1) / (samples[-1].t - samples[0].t)
    assert 17.0 <= rate_hz <= 23.0                                     # status at 20 Hz
    steps = {b.device_ms - a.device_ms for a, b in zip(samples, samples[1:])}
    assert steps <= {50, 100}                                          # 20 Hz ticks, none lost twice
    assert max(s.pressure_kpa for s in samples) <= 30.0 + 100 / 255


@pytest.mark.realtime
def test_silent_host_trips_the_device_watchdog_and_the_driver_reports_it(cuff, rec, served):
    kicker = Kicker(cuff)
    cuff.arm(50.0)
    cuff.set_rate(40.0)
    cuff.set_target(20.0)
    rec.wait_event("TARGET_REACHED")
    kicker.stop()                                     # the host falls silent
    watchdog = rec.wait_event("WATCHDOG", timeout_s=3.0)
    silent_s = watchdog.t - kicker.last_kick_t
    assert 1.0 < silent_s <= 1.0 + 0.2, silent_s     # the simulator's 1 s watchdog, 50 ms ticks
    rec.wait_event("DEFLATED")
    assert served.inspect(lambda d: (d.stop_condition, d.pressure_kpa)) == ("COMM_WATCHDOG", 0.0)
    status = cuff.status()
    assert (status.state, status.error_code) == (CuffState.FAULT, 30)
    with pytest.raises(DeviceFault, match=r"SET 20.0 refused \(LATCHED\): latched FAULT .*nothing was sent"):
        cuff.set_target(20.0)
    cuff.clear()
    assert cuff.status().state is CuffState.IDLE


@pytest.mark.realtime
def test_participant_stop_button_is_an_estop(cuff, rec, served):
    dev = _device(served)
    kicker = Kicker(cuff)
    try:
        cuff.arm(50.0)
        cuff.set_rate(20.0)
        cuff.set_target(25.0)
        dev.press_stop_button()
        estop = rec.wait_event("ESTOP", src="button")
        assert (estop.kind, estop.source) == (EventKind.ESTOP, StopSource.BUTTON)
        rec.wait_event("DEFLATED")
        assert (cuff.status().state, cuff.status().error_code) == (CuffState.ESTOP, 31)
        assert dev.vent_log[-1][1] == "STOP_BUTTON_PRESSED"
        assert rec.names().count("ESTOP") == 1          # event and status stop condition: once
    finally:
        kicker.stop()


def test_host_side_refusals_send_nothing(cuff, served):
    before = len(served.rx_log)
    with pytest.raises(CommandRefused, match=r"ARM 120.0 refused \(OVER_LIMIT\).*0..100 kPa") as refused:
        cuff.arm(120.0)
    assert (refused.value.error, refused.value.ack.sent) == ("OVER_LIMIT", False)
    with pytest.raises(DeviceFault, match=r"SET 30.0 refused \(NOT_ARMED\)"):
        cuff.set_target(30.0)
    cuff.arm(40.0)
    with pytest.raises(DeviceFault, match=r"SET 45.0 refused \(OVER_LIMIT\): target outside 0..40 kPa.*nothing was sent"):
        cuff.set_target(45.0)
    with pytest.raises(DeviceFault, match=r"SET 30.0 refused \(BAD_STATE\): no ramp rate set"):
        cuff.set_target(30.0)
    with pytest.raises(DeviceFault, match=r"RATE 500 refused \(BAD_ARGUMENT\)"):
        cuff.set_rate(500)
    assert not cuff.set_rate(1.0).sent
    assert cuff.set_max_time(5000).max_ms == 5000
    # 1 kPa/s is 32.64/256 units per tick, truncated to 32: the ramp runs at 0.98 kPa/s
    with pytest.raises(DeviceFault, match=r"the ramp takes 30.60 s, longer than the stimulus time limit 5.00 s"):
        cuff.set_target(30.0)
    assert len(served.rx_log) == before


def test_a_nack_is_a_device_fault_naming_the_function(cuff, served):
    cuff.arm(40.0)
    cuff.set_rate(10.0)
    _device(served).inject_nack(codec.ERR_INVALID_CONTENT)
    with pytest.raises(CommandRefused, match=r"SetWaveformProgram refused by the device: NACK 0x02 invalid content") \
            as refused:
        cuff.set_target(20.0)
    assert (refused.value.code, refused.value.ack.command, refused.value.ack.sent) == (2, "SetWaveformProgram", True)
    assert cuff.status().target_kpa == 0.0


def test_device_restart_is_detected_by_the_kick_counter(cuff, served, clock):
    cuff.ping()
    cuff.ping()
    served.inspect(lambda d: d.reboot(clock.now()))
    with pytest.raises(DeviceRestarted, match=r"device restarted: watchdog counter went from 3 to 1"):
        cuff.ping()


def test_pulled_cable_is_reported_and_every_later_call_fails(cuff, rec, served):
    served.pull_cable()
    with rec.cond:
        assert rec.cond.wait_for(lambda: rec.lost, WAIT_S)
    assert "lost" in str(rec.lost[0])
    with pytest.raises(DeviceFault, match=r"cpar: port .* lost .*KickWatchdog not sent"):
        cuff.ping()


def test_a_second_opener_is_refused(cuff, served, clock):
    with pytest.raises(HardwareError, match=r"cannot open cuff port"):
        CparCuff(served.path, clock=clock).connect()


def test_silent_port_fails_connect_with_a_clear_message(pty_pair, clock):
    _master, path, _slave = pty_pair                 # nobody answers on the master
    cuff = CparCuff(path, clock=clock, reply_timeout_s=0.1, identify_tries=2)
    t0 = clock.now()
    with pytest.raises(HardwareError, match=r"no reply to DeviceIdentification within 100 ms on .* \(2 tries\); "
                                            r"is it a CPAR at 38400 baud"):
        cuff.connect()
    assert 0.2 <= clock.now() - t0 < 1.0


def test_missing_port_and_unknown_table_are_hardware_errors(clock):
    with pytest.raises(HardwareError, match=r"cannot open cuff port /dev/no-such-cpar"):
        CparCuff("/dev/no-such-cpar", clock=clock).connect()
    with pytest.raises(HardwareError, match=r"unknown CPAR firmware table 'v9'; known: labbench7, nocitech"):
        CparCuff("/dev/no-such-cpar", clock=clock, firmware="v9")


def test_wrong_firmware_table_says_so(served, clock):
    cuff = CparCuff(served.path, clock=clock, firmware="labbench7")
    with pytest.raises(HardwareError, match=r"DeviceIdentification response of 64 bytes, expected 6 \(labbench7\); "
                                            r"another firmware generation\? known tables: labbench7, nocitech"):
        cuff.connect()


@pytest.mark.realtime
def test_second_firmware_table_end_to_end(clock):
    server = SimServer(CparSimDevice(firmware="labbench7"), clock=clock)
    cuff = CparCuff(server.path, clock=clock, firmware="labbench7")
    rec = Recorder()
    rec.attach(cuff)
    try:
        info = cuff.connect()
        assert info.simulated and info.name == f"CPAR serial {codec.SIMULATOR_SERIAL}"
        assert server.rx_log[0][1] == bytes([0xFF, 0xF1, 0x01, 0x00, 0xFF, 0xF2])   # no trailing zero here
        cuff.arm(30.0)
        cuff.set_rate(50.0)
        cuff.set_target(10.0)
        rec.wait_event("TARGET_REACHED")
        cuff.deflate()
        rec.wait_event("DEFLATED")
        assert server.device.vent_log[-1][1] == "CONTROL_SOFTWARE"
    finally:
        cuff.close()
        server.close()


@pytest.mark.realtime
def test_simulate_cuff_protocol_cpar_serves_the_driver(clock):
    server = SimServerProcess(["--protocol", "cpar"])       # `cuedpain simulate-cuff` in a child
    cuff = CparCuff(server.path, clock=clock)
    rec = Recorder()
    rec.attach(cuff)
    try:
        assert cuff.connect().simulated
        kicker = Kicker(cuff)
        try:
            cuff.arm(30.0)
            cuff.set_rate(30.0)
            cuff.set_target(15.0)
            rec.wait_event("TARGET_REACHED")
            cuff.vent()
            rec.wait_event("DEFLATED")
        finally:
            kicker.stop()
    finally:
        cuff.close()
        assert server.close() == 0


# ---------------------------------------------------------------- loopback on a VirtualClock

class DropEvents:
    """A link that loses every EventMessage (messages are unacknowledged and may be lost)."""

    def __init__(self, device: CparSimDevice) -> None:
        self.device = device

    def attach(self, write):
        def filtered(data: bytes) -> None:       # the simulator writes whole frames
            for frame in codec.Destuffer().feed(data):
                if frame[0] != 0x81:
                    write(codec.encode_frame(frame))
        self.device.attach(filtered)

    def __getattr__(self, name):
        return getattr(self.device, name)


def _loopback(device) -> tuple[CparCuff, Recorder, VirtualClock]:
    vclock = VirtualClock(0.0)
    cuff = CparCuff(LoopbackTransport(device, clock=vclock), clock=vclock)
    rec = Recorder()
    rec.attach(cuff)
    cuff.connect()
    return cuff, rec, vclock


def _kick_on(vclock: VirtualClock, cuff: CparCuff, period_s: float = 1.0) -> None:
    def kick() -> None:
        cuff.ping()
        vclock.call_later(period_s, kick)
    vclock.call_later(period_s, kick)


def test_hold_is_bounded_by_max_time_and_its_end_is_a_time_limit():
    cuff, rec, vclock = _loopback(CparSimDevice())
    _kick_on(vclock, cuff)
    cuff.arm(50.0)
    cuff.set_rate(20.0)
    cuff.set_max_time(3000)
    result = cuff.set_target(20.0)
    assert result.hold_s + result.eta_s <= 3.0 + 1e-9
    vclock.sleep(4.0)
    limit = next(e for e in rec.events if e.name == "TIME_LIMIT")
    assert limit.fields["src"] == "waveform_end" and 2.9 <= limit.t - result.t_write <= 3.0
    assert rec.names().count("TIME_LIMIT") == 1
    assert (cuff.status().state, cuff.status().error_code) == (CuffState.FAULT, 32)


def test_a_lost_event_message_is_recovered_from_the_status_stop_condition():
    device = CparSimDevice()
    cuff, rec, vclock = _loopback(DropEvents(device))
    _kick_on(vclock, cuff)
    cuff.arm(50.0)
    cuff.set_rate(20.0)
    cuff.set_target(20.0)
    vclock.sleep(2.0)
    device.press_emergency()
    vclock.sleep(0.2)
    estop = next(e for e in rec.events if e.name == "ESTOP")
    assert estop.fields == {"src": "emergency", "stop": "EMERGENCY_STOP_ACTIVATED"}
    assert "CPAR_EMERGENCY_ACTIVATED" not in rec.names() and cuff.status().state is CuffState.ESTOP
    with pytest.raises(DeviceFault, match=r"CLEAR refused \(CLEAR_REFUSED\): the CPAR's emergency stop is active"):
        cuff.clear()


def test_a_stimulation_shorter_than_one_status_period_is_still_seen_to_stop():
    device = CparSimDevice()
    cuff, rec, vclock = _loopback(DropEvents(device))
    cuff.arm(50.0)
    cuff.set_rate(20.0)
    cuff.set_target(20.0)
    device.press_stop_button()                  # stops on the next tick: no status says STIMULATING
    vclock.sleep(0.2)
    assert [(e.name, e.fields.get("src")) for e in rec.events] == [("ESTOP", "button"), ("DEFLATED", None)]
    status = cuff.status()
    assert (status.state, status.target_kpa) == (CuffState.ESTOP, 0.0)


def test_estop_latches_and_reports_src_host():
    cuff, rec, vclock = _loopback(CparSimDevice())
    cuff.arm(50.0)
    result = cuff.estop()
    assert rec.events[-1] == DeviceEvent(t=result.t_ack, kind=EventKind.ESTOP, name="ESTOP", fields={"src": "host"},
                                          source=StopSource.HOST)
    assert cuff.status().state is CuffState.ESTOP
    with pytest.raises(DeviceFault, match=r"ARM 50 refused \(LATCHED\)"):
        cuff.arm(50)
    cuff.clear()
    assert cuff.status().state is CuffState.IDLE


# ---------------------------------------------------------------- under the supervisor (the run's view)

def _supervised(device: CparSimDevice, **limits: float):
    from experiment.cuff.safety import CuffSupervisor, SafetyLimits

    vclock = VirtualClock(0.0)
    records: list[dict] = []
    cuff = CparCuff(LoopbackTransport(device, clock=vclock), clock=vclock)
    sup = CuffSupervisor(cuff, clock=vclock, on_record=records.append,
                         limits=SafetyLimits(ceiling_kpa=50.0, max_stimulus_s=20.0, max_run_inflated_s=60.0,
                                             planned_rates_kpa_s=(10.0,), **limits))
    return sup, records, vclock


def test_the_supervisor_runs_a_stimulus_on_the_cpar_with_typed_values_only():
    sup, records, vclock = _supervised(CparSimDevice())
    info = sup.start()
    assert info.limits.watchdog_ms is None and 10.0 in info.limits.rate_kpa_s
    ramp = sup.stimulate(20.0, 10.0, tag=3)
    assert ramp.target_kpa == 20.0 and ramp.eta_s == pytest.approx(2.05, abs=0.06) and ramp.hold_s > 15.0
    vclock.sleep(3.0)
    assert sup.last_pressure_kpa == pytest.approx(20.0, abs=0.5)
    sup.deflate(tag=4)
    vclock.sleep(1.0)
    sup.close()
    assert sup.safety_tripped is None and not [r for r in records if r["kind"] == "warning"]
    events = [r["name"] for r in records if r["kind"] == "cuff_event"]
    assert "TARGET_REACHED" in events and "DEFLATED" in events
    sent = [(r["command"], r["ok"]) for r in records if r["kind"] == "cuff_cmd"]
    assert ("ARM 50.0", True) in sent and ("SET 20.0", True) in sent


def test_the_supervisor_hears_the_cpar_stop_button_and_a_restart():
    device = CparSimDevice()
    sup, records, vclock = _supervised(device)
    sup.start()
    sup.stimulate(20.0, 10.0)
    vclock.sleep(1.0)
    device.press_stop_button()
    vclock.sleep(0.3)
    assert sup.participant_stop_t is not None and sup.safety_tripped is None
    device.reboot(vclock.now())
    vclock.sleep(1.0)                           # the next heartbeat sees the kick counter go down
    assert sup.safety_tripped == "device_reboot"
    sup.close()
