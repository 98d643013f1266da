"""The simulated CPAR on a VirtualClock: waveform interpreter, stop conditions, functions."""

from __future__ import annotations

import math

import pytest

from experiment.clock import VirtualClock
from experiment.cuff import cpar_codec as codec
from experiment.cuff.cpar_codec import FIRMWARE_LABBENCH7 as LB7
from experiment.cuff.cpar_codec import FIRMWARE_NOCITECH as NOC
from experiment.cuff.cpar_codec import Packet
from experiment.cuff.cpar_sim import CparSimDevice, make_cpar_sim

TICK = codec.TICK_S


class Host:
    """A test host: frames requests, advances the device in 10 ms steps on a VirtualClock,
    and keeps every packet the device sends with the step time it arrived at (at most
    one step after the device tick that sent it)."""

    def __init__(self, dev: CparSimDevice, clock: VirtualClock, fw: codec.FirmwareTable = NOC) -> None:
        self.dev, self.clock, self.fw = dev, clock, fw
        self.destuffer = codec.Destuffer()
        self.received: list[tuple[float, Packet]] = []
        dev.attach(self._collect)
        dev.on_port_open(clock.now())

    def _collect(self, data: bytes) -> None:
        for frame in self.destuffer.feed(data):
            self.received.append((self.clock.now(), codec.decode_packet(frame)))

    def run_until(self, t: float) -> None:
        """Advance in 10 ms steps so every packet carries the time it was sent."""
        while self.clock.now() < t - 1e-9:
            self.clock.sleep_until(min(t, self.clock.now() + 0.01))
            self.dev.advance(self.clock.now())

    def call(self, pkt: Packet, *, trailing_zero: bool = True) -> Packet:
        mark = len(self.received)
        self.dev.receive(codec.frame_packet(pkt, trailing_zero=trailing_zero), self.clock.now())
        replies = [p for _, p in self.received[mark:] if not p.is_message]
        assert len(replies) == 1, replies
        return replies[0]

    def fn(self, name: str, data: bytes = b"") -> Packet:
        return self.call(codec.request(self.fw, name, data))

    def start(self, program: tuple[codec.Instruction, ...], *, criterion: int = codec.STOP_ON_BUTTON_PRESSED,
              repeat: int = 1) -> float:
        reply = self.call(codec.waveform_request(self.fw, channel=0, repeat=repeat, instructions=program))
        assert reply == Packet(self.fw.functions["SetWaveformProgram"], bytes([codec.WaveformProgram(0, repeat, program).crc]))
        assert self.call(codec.start_request(self.fw, stop_criterion=criterion)).data == b""
        return self.clock.now()

    def kick_every(self, period_s: float, until_s: float) -> None:
        def kick() -> None:
            self.fn("KickWatchdog")
            if self.clock.now() + period_s <= until_s:
                self.clock.call_later(period_s, kick)
        self.clock.call_later(period_s, kick)

    def statuses(self, since: float = -math.inf) -> list[tuple[float, codec.Status]]:
        return [(t, codec.decode_status(self.fw, p.data)) for t, p in self.received
                if p.code == self.fw.messages["status"] and t >= since]

    def events(self) -> list[str]:
        return [codec.decode_event(self.fw, p.data) for _, p in self.received if p.code == self.fw.messages["event"]]

    def event_time(self, name: str) -> float:
        return next(t for t, p in self.received
                    if p.code == self.fw.messages["event"] and codec.decode_event(self.fw, p.data) == name)


@pytest.fixture
def host():
    clock = VirtualClock(100.0)
    return Host(make_cpar_sim(clock), clock)


def test_ramp_timing_hold_and_completion(host):
    rate, target, hold = 20.0, 30.0, 10.0
    host.kick_every(1.0, 200.0)
    t0 = host.start(codec.ramp_hold_program(target, rate, hold_s=hold))
    host.run_until(t0 + 8.0)
    reached = [t for t, s in host.statuses(t0) if abs(s.actual_kpa - target) <= 0.5]
    ramp_s = target / rate
    # waveform at target after ramp_s (+ the STEP tick); first-order lag (tau 0.1 s) closes
    # a 2 kPa ramp lag to 0.5 kPa in 0.14 s
    assert ramp_s <= reached[0] - t0 <= ramp_s + 2 * TICK + 0.2
    assert max(s.actual_kpa for _, s in host.statuses(t0)) <= target + 100 / 255 / 2
    assert host.dev.state == "STIMULATING" and host.dev.pressure_kpa == pytest.approx(target, abs=0.01)
    last = host.statuses()[-1][1]
    assert last.target == (codec.kpa_to_byte(target), 0) and last.state_name == "STIMULATING"
    host.run_until(t0 + ramp_s + hold + 1.0)
    t_stop = host.event_time("WAVEFORMS_COMPLETED")
    assert ramp_s + hold <= t_stop - t0 <= ramp_s + hold + 2 * TICK
    assert host.events()[-2:] == ["WAVEFORMS_COMPLETED", "STOP_STIMULATION"]
    assert host.dev.pressure_kpa == 0.0 and host.dev.vent_log == [(pytest.approx(t_stop, abs=0.011), "STIMULATION_COMPLETED")]
    final = host.statuses()[-1][1]
    assert (final.state_name, final.stop_condition_name, final.actual) == ("IDLE", "STIMULATION_COMPLETED", (0, 0))
    assert final.final[0] == codec.kpa_to_byte(target)


def test_stop_stimulation_dumps_at_once(host):
    host.kick_every(1.0, 100.0)
    t0 = host.start(codec.ramp_hold_program(40.0, 30.0, hold_s=60.0))
    host.run_until(t0 + 3.0)
    assert host.dev.pressure_kpa > 39.0
    assert host.fn("StopStimulation") == Packet(0x13, b"")
    assert host.dev.pressure_kpa == 0.0 and host.dev.state == "IDLE"
    assert host.dev.vent_log == [(t0 + 3.0, "CONTROL_SOFTWARE")]
    assert host.events()[-1] == "STOP_STIMULATION"
    host.run_until(t0 + 3.2)
    assert host.statuses()[-1][1].stop_condition_name == "CONTROL_SOFTWARE"
    host.fn("StopStimulation")                        # a stop while idle is still a vent
    assert [r for _, r in host.dev.vent_log] == ["CONTROL_SOFTWARE", "CONTROL_SOFTWARE"]


@pytest.mark.parametrize("timeout_s", [5.0, 1.0])
def test_watchdog_stops_a_stimulation_without_kicks(timeout_s):
    clock = VirtualClock(0.0)
    host = Host(CparSimDevice(watchdog_timeout_s=timeout_s), clock)
    host.run_until(0.3)
    host.fn("KickWatchdog")
    host.start(codec.ramp_hold_program(30.0, 20.0, hold_s=300.0))
    host.run_until(0.3 + timeout_s + 1.0)
    t_stop = host.event_time("COMM_WATCHDOG_TRIGGERED")
    assert timeout_s < t_stop - 0.3 <= timeout_s + TICK + 0.011
    assert host.dev.state == "IDLE" and host.dev.pressure_kpa == 0.0
    assert host.dev.stop_condition == "COMM_WATCHDOG"
    assert host.dev.vent_log == [(pytest.approx(t_stop, abs=0.011), "COMM_WATCHDOG")]


def test_kicks_every_2_s_keep_the_default_watchdog_quiet(host):
    host.kick_every(2.0, 200.0)
    t0 = host.start(codec.ramp_hold_program(30.0, 20.0, hold_s=300.0))
    host.run_until(t0 + 30.0)
    assert host.dev.state == "STIMULATING" and "COMM_WATCHDOG_TRIGGERED" not in host.events()


def test_stop_button_pressed_stops_on_the_next_tick(host):
    host.kick_every(1.0, 100.0)
    t0 = host.start(codec.ramp_hold_program(30.0, 20.0, hold_s=60.0))
    host.run_until(t0 + 2.0)
    host.dev.press_stop_button()
    host.run_until(t0 + 2.0 + TICK)
    assert host.dev.state == "IDLE" and host.dev.pressure_kpa == 0.0
    assert host.events()[-2:] == ["STOP_BUTTON_PRESSED", "STOP_STIMULATION"]
    status = host.statuses()[-1][1]
    assert status.stop_pressed and status.stop_condition_name == "STOP_BUTTON_PRESSED"
    host.dev.release_stop_button()
    host.run_until(t0 + 2.2)
    assert host.events()[-1] == "STOP_BUTTON_RELEASED" and not host.statuses()[-1][1].stop_pressed


def test_stop_criterion_button_released(host):
    host.kick_every(1.0, 100.0)
    t0 = host.start(codec.ramp_hold_program(30.0, 20.0, hold_s=60.0), criterion=codec.STOP_ON_BUTTON_RELEASED)
    host.run_until(t0 + 2.0)
    host.dev.press_stop_button()
    host.run_until(t0 + 2.5)
    assert host.dev.state == "STIMULATING"
    host.dev.release_stop_button()
    host.run_until(t0 + 2.6)
    assert host.dev.state == "IDLE" and host.dev.stop_condition == "STOP_BUTTON_PRESSED"


def test_emergency_latches_until_released(host):
    host.kick_every(1.0, 100.0)
    t0 = host.start(codec.ramp_hold_program(30.0, 20.0, hold_s=60.0))
    host.run_until(t0 + 1.0)
    host.dev.press_emergency()
    host.run_until(t0 + 1.2)
    assert host.dev.state == "EMERGENCY" and host.dev.pressure_kpa == 0.0
    assert host.events()[-2:] == ["EMERGENCY_ACTIVATED", "STOP_STIMULATION"]
    assert host.dev.stop_condition == "EMERGENCY_STOP_ACTIVATED"
    nack = host.call(codec.start_request(NOC, stop_criterion=1))
    assert nack == codec.nack(codec.ERR_INVALID_CONTENT)
    host.dev.release_emergency()
    host.run_until(t0 + 1.4)
    assert host.dev.state == "IDLE" and host.events()[-1] == "EMERGENCY_DEACTIVATED"
    host.start(codec.ramp_hold_program(30.0, 20.0, hold_s=60.0))
    assert host.dev.state == "STIMULATING"


def test_maximal_time_exceeded_after_10_minutes(host):
    host.kick_every(2.0, 1000.0)
    program = (codec.step(20.0, 700.0),)          # longer than the device allows
    t0 = host.start(program)
    host.run_until(t0 + 599.0)
    assert host.dev.state == "STIMULATING"
    host.run_until(t0 + 601.0)
    t_stop = host.event_time("TIMELIMIT_EXCEEDED")
    assert codec.MAX_STIMULATION_S <= t_stop - t0 <= codec.MAX_STIMULATION_S + TICK
    assert host.dev.stop_condition == "MAXIMAL_TIME_EXCEEDED" and host.dev.pressure_kpa == 0.0


def test_out_of_compliance_when_a_leak_keeps_the_target_out_of_reach(host):
    host.kick_every(1.0, 100.0)
    host.dev.set_leak(100.0)
    t0 = host.start(codec.ramp_hold_program(30.0, 30.0, hold_s=60.0))
    host.run_until(t0 + 6.0)
    assert host.dev.stop_condition == "OUT_OF_COMPLIANCE"
    assert host.events()[-2:] == ["CUFF01_OUT_OF_COMPLIANCE", "STOP_STIMULATION"]
    # the lag first exceeds 10 kPa during the ramp end; the device allows it 2 s
    assert 2.0 <= host.event_time("CUFF01_OUT_OF_COMPLIANCE") - t0 <= 1.0 + 2.0 + TICK


def test_waveform_interpreter_step_dec_nop_and_repeat(host):
    host.kick_every(1.0, 100.0)
    program = (codec.step(20.0, 1.0), codec.dec(10.0, 1.0), codec.nop(0.5))
    t0 = host.start(program, repeat=2)
    host.run_until(t0 + 6.0)
    # expected target per tick, by the documented semantics (8.8 fixed point units)
    step_q8 = math.floor(20 * 2.55 * 256)
    dec_q8 = math.floor(10 * 2.55 / 20 * 256)
    expected: list[int] = []
    for _ in range(2):
        q8 = step_q8
        expected += [q8] * 20
        for j in range(1, 21):
            expected.append(q8 - j * dec_q8)
        expected += [expected[-1]] * 10
    seen = [s.target[0] for _, s in host.statuses(t0) if s.state_name == "STIMULATING"]
    assert seen == [max(0, min(255, round(q / 256))) for q in expected][: len(seen)]
    assert len(seen) == 99                                 # the 100th tick ends the program
    assert host.dev.stop_condition == "STIMULATION_COMPLETED"


def test_functions_nacks_and_trailing_zero(host):
    ident = host.fn("DeviceIdentification")
    assert len(ident.data) == 64 and codec.is_simulator(NOC, codec.decode_identification(NOC, ident.data))
    exact = host.call(codec.request(NOC, "KickWatchdog"), trailing_zero=False)
    quirky = host.call(codec.request(NOC, "KickWatchdog"), trailing_zero=True)
    assert [codec.decode_kick_response(p.data) for p in (exact, quirky)] == [1, 2]
    assert host.call(Packet(0x55, b"")) == codec.nack(codec.ERR_UNKNOWN_FUNCTION)
    bad_instruction = bytes([0, 1, 7, 0, 0, 1, 0])
    assert host.call(Packet(0x10, bad_instruction)) == codec.nack(codec.ERR_INVALID_CONTENT)
    assert host.call(Packet(0x11, b"\x09\x00")) == codec.nack(codec.ERR_INVALID_CONTENT)
    host.start(codec.ramp_hold_program(10.0, 10.0, hold_s=5.0))
    assert host.call(codec.start_request(NOC, stop_criterion=1)) == codec.nack(codec.ERR_INVALID_CONTENT)
    reprogram = codec.waveform_request(NOC, channel=0, repeat=1, instructions=(codec.step(50.0, 1.0),))
    assert host.call(reprogram) == codec.nack(codec.ERR_INVALID_CONTENT)
    host.dev.inject_nack(0x42)
    assert host.fn("KickWatchdog") == codec.nack(0x42)
    assert host.fn("KickWatchdog").code == NOC.functions["KickWatchdog"]   # one NACK only


def test_reboot_resets_the_kick_counter_and_stops(host):
    for _ in range(3):
        host.fn("KickWatchdog")
    host.start(codec.ramp_hold_program(20.0, 20.0, hold_s=5.0))
    host.run_until(host.clock.now() + 0.5)
    host.dev.reboot(host.clock.now())
    assert host.dev.state == "IDLE" and host.dev.pressure_kpa == 0.0 and host.dev.vent_log[-1][1] == "REBOOT"
    assert codec.decode_kick_response(host.fn("KickWatchdog").data) == 1


def test_status_messages_at_20_hz(host):
    host.run_until(host.clock.now() + 2.0)
    times = [t for t, _ in host.statuses()]
    assert len(times) == 40
    counters = [s.update_counter for _, s in host.statuses()]
    assert counters == list(range(counters[0], counters[0] + 40))


def test_second_firmware_table_speaks_its_own_codes():
    clock = VirtualClock(0.0)
    host = Host(CparSimDevice(firmware="labbench7"), clock, fw=LB7)
    ident = host.fn("DeviceIdentification")
    assert len(ident.data) == 6 and codec.is_simulator(LB7, codec.decode_identification(LB7, ident.data))
    assert host.call(Packet(0x08, b"")).code == 0x08                       # kick is 0x08 here
    assert host.call(Packet(0x13, b"")) == codec.nack(codec.ERR_UNKNOWN_FUNCTION)   # Nocitech stop code
    host.start(codec.ramp_hold_program(20.0, 20.0, hold_s=5.0))
    host.run_until(0.5)
    assert all(len(p.data) == 14 for _, p in host.received if p.code == 0x80)
    host.dev.press_stop_button()
    host.run_until(0.6)
    assert host.events()[-2:] == ["STOP_BUTTON_PRESSED", "STOP_STIMULATION"]
    assert host.received[-3][1] == Packet(0x81, bytes([4]))
