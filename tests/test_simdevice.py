"""The simulated CUFF/1 firmware, on a hand-moved clock: every command, state, event, fault."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from experiment.cuff.line_codec import MAX_LINE_CHARS, STATES, Reply, parse_device_line
from experiment.cuff.pneumatics import CuffPneumatics
from tests.cuff_helpers import Bench


def test_hello_ping_and_boot() -> None:
    b = Bench()
    b.device.on_port_open(b.t)
    assert b.new_lines() == ["!EVT BOOT fw=1.0.0"]
    assert b.cmd("HELLO").text == "OK HELLO dev=cuedpain-sim fw=1.0.0 proto=1 hard=100.0 sn=SIM-0001"
    assert [b.cmd("ping").fields["n"] for _ in range(3)] == ["1", "2", "3"]


def test_reboot_resets_the_ping_count_vents_and_announces_boot() -> None:
    b = Bench()
    b.armed_at(50)
    b.cmd("SET 20")
    b.run(3.0)
    assert b.device.pressure_kpa > 15
    b.events()
    b.cmd("PING")
    assert b.cmd("SIM REBOOT").ok
    assert [e.name for e in b.events()] == ["BOOT"]
    assert b.device.vent_log[-1] == (3.0, "REBOOT")
    assert b.device.state == "IDLE"
    assert b.cmd("PING").fields["n"] == "1"


def test_set_needs_arm_and_targets_over_the_ceiling_are_refused_not_clamped() -> None:
    b = Bench(hard_limit_kpa=80)
    assert b.cmd("SET 10").text == "ERR 21 NOT_ARMED"
    assert b.cmd("ARM 80.1").text == "ERR 20 OVER_LIMIT hard=80.0"
    assert b.cmd("ARM 0").text == "ERR 11 BAD_ARGUMENT ARM needs a ceiling above 0"
    assert b.cmd("ARM 40").text == "OK ARM max=40.0"
    assert b.cmd("SET 40.1").text == "ERR 20 OVER_LIMIT max=40.0"
    b.run(2.0)
    assert b.device.state == "ARMED" and b.device.pressure_kpa == 0.0


def test_ramp_is_slew_limited_reaches_target_and_holds() -> None:
    b = Bench()
    b.armed_at(50, rate=10)
    reply = b.cmd("SET 30")
    assert reply.fields == {"tgt": "30.0", "eta_ms": "3000"}
    assert b.device.state == "RAMP"
    b.run(1.5)
    assert 12.0 < b.device.pressure_kpa < 15.0      # 10 kPa/s, lagging by rate * tau
    peak = 0.0
    reached_at = None
    for _ in range(300):
        b.run(0.01)
        peak = max(peak, b.device.pressure_kpa)
        if reached_at is None and any(e.name == "TARGET_REACHED" for e in b.events()):
            reached_at = b.t
    assert reached_at is not None and 3.0 <= reached_at <= 3.5
    assert b.device.state == "HOLD"
    assert peak <= 30.0                              # first order never overshoots
    assert abs(b.device.pressure_kpa - 30.0) < 0.05


def test_deflate_ramps_down_and_announces_deflated() -> None:
    b = Bench()
    b.armed_at(50, rate=20)
    b.cmd("SET 20")
    b.run(2.0)
    assert b.cmd("DEFLATE").fields["eta_ms"] in ("999", "1000", "1001", "1002", "1003")
    assert b.device.state == "DEFLATING"
    b.run(0.5)
    assert 5.0 < b.device.pressure_kpa < 15.0        # a ramp, not a dump
    b.run(1.0)
    evs = b.events()
    assert [e.name for e in evs][-1] == "DEFLATED" and float(evs[-1].fields["p"]) < 1.0
    assert b.device.state == "ARMED"
    assert b.device.vent_log == []                   # a deflation is not a vent


def test_deflated_and_status_report_a_pressure_below_one_kpa() -> None:
    """DEFLATED means the reading fell below 1 kPa: its `p`, and a STATUS? right after it, say
    so, although on this noiseless ramp (10 kPa/s, 2-ms steps) the reading that decided it lies
    in 0.98-1.0 kPa, which rounding to the nearest tenth would send as 1.0."""
    b = Bench(pneumatics=CuffPneumatics(noise_kpa=0.0))
    b.armed_at(50, rate=10)
    b.cmd("SET 20")
    b.run(3.0)
    b.cmd("DEFLATE")
    deflated = None
    while deflated is None and b.t < 10:
        b.run(0.002)
        deflated = next((e for e in b.events() if e.name == "DEFLATED"), None)
    assert deflated is not None
    status = b.cmd("STATUS?")
    assert status.fields["st"] == "ARMED"
    assert float(deflated.fields["p"]) < 1.0 and float(status.fields["p"]) < 1.0
    assert deflated.fields["p"] == status.fields["p"] == "0.9"


def test_vent_dumps_at_once_in_every_state_and_never_clears_a_latch() -> None:
    b = Bench()
    b.armed_at(50, rate=50)
    b.cmd("SET 40")
    b.run(1.5)
    assert b.cmd("VENT").text == "OK VENT"
    b.run(0.3)
    assert b.device.pressure_kpa < 1.0 and b.device.state == "ARMED"
    assert b.cmd("ESTOP").ok and b.device.state == "ESTOP"
    assert b.cmd("VENT").ok and b.device.state == "ESTOP"
    b2 = Bench()
    assert b2.cmd("VENT").ok and b2.device.state == "IDLE"


def test_watchdog_vents_and_latches_when_the_host_falls_silent() -> None:
    b = Bench()
    assert b.cmd("WDT 500").text == "OK WDT ms=500"
    b.armed_at(50, rate=50)
    b.cmd("SET 30")
    for _ in range(10):                  # PINGs feed it: 2 s without a trip
        b.run(0.2)
        b.cmd("PING")
    assert b.device.state == "HOLD"
    for _ in range(5):                   # garbage does not feed it
        b.run(0.15)
        assert b.cmd("PONG").code == 10
    assert b.device.state == "FAULT"
    t, reason = b.device.vent_log[-1]
    assert reason == "WATCHDOG" and t == pytest.approx(b.t - 0.75 + 0.5, abs=0.003)
    assert b.cmd("SET 10").text == "ERR 22 LATCHED WATCHDOG"
    assert b.cmd("STATUS?").fields["err"] == "30"


def test_watchdog_is_paused_while_disarmed() -> None:
    b = Bench()
    b.cmd("WDT 200")
    b.run(5.0)
    assert b.device.state == "IDLE"
    b.cmd("ARM 20")
    b.run(0.25)
    assert b.device.state == "FAULT" and b.device.vent_log[-1][1] == "WATCHDOG"


def test_clear_only_below_one_kpa_and_back_to_idle_disarmed() -> None:
    b = Bench()
    b.armed_at(50, rate=50)
    b.cmd("SET 40")
    b.run(1.5)
    b.events()
    assert b.cmd("ESTOP").text == "OK ESTOP"
    assert [(e.name, e.fields) for e in b.events()] == [("ESTOP", {"src": "host"})]
    assert b.cmd("CLEAR").text.startswith("ERR 24 CLEAR_REFUSED p=")
    b.run(0.5)
    assert b.cmd("CLEAR").text == "OK CLEAR"
    status = b.cmd("STATUS?").fields
    assert (status["st"], status["max"], status["err"]) == ("IDLE", "0.0", "0")
    assert b.cmd("SET 5").text == "ERR 21 NOT_ARMED"


def test_maxtime_vents_and_latches_time_limit() -> None:
    b = Bench()
    assert b.cmd("MAXTIME 1500").text == "OK MAXTIME ms=1500"
    b.armed_at(50, rate=50)
    b.cmd("SET 20")
    b.run(1.4)
    assert b.device.state == "HOLD"
    b.run(0.3)
    assert b.device.state == "FAULT" and b.device.vent_log[-1][1] == "TIME_LIMIT"
    assert [e.name for e in b.events()][-1] == "TIME_LIMIT"
    assert b.cmd("STATUS?").fields["err"] == "32"


def test_participant_button_latches_estop_from_the_button() -> None:
    b = Bench()
    b.armed_at(50)
    b.cmd("SET 10")
    b.run(0.5)
    assert b.cmd("SIM BUTTON").ok
    assert [(e.name, e.fields) for e in b.events()] == [("ESTOP", {"src": "button"})]
    assert b.device.state == "ESTOP" and b.device.fault_code == 31


def test_leak_keeps_the_target_out_of_reach_and_trips_compliance() -> None:
    b = Bench()
    b.armed_at(50, rate=10)
    b.cmd("SIM LEAK 20")
    eta_s = int(b.cmd("SET 30").fields["eta_ms"]) / 1000
    b.run(eta_s + 1.9)
    assert b.device.state == "RAMP"
    b.run(0.2)
    evs = b.events()
    assert [e.name for e in evs] == ["COMPLIANCE"] and evs[0].fields["tgt"] == "30.0"
    assert b.device.state == "FAULT" and b.device.fault_code == 34


def test_a_cuff_coming_off_during_hold_trips_compliance() -> None:
    b = Bench()
    b.armed_at(50, rate=50)
    b.cmd("SET 30")
    b.run(1.5)
    assert b.device.state == "HOLD"
    b.cmd("SIM LEAK 500")
    b.run(1.3)
    assert b.device.state == "FAULT" and b.device.vent_log[-1][1] == "COMPLIANCE"


def test_small_leak_is_compensated() -> None:
    b = Bench()
    b.armed_at(50, rate=10)
    b.cmd("SIM LEAK 2")
    b.cmd("SET 20")
    b.run(3.0)
    assert b.device.state == "HOLD"


def test_overpressure_vents_and_latches() -> None:
    b = Bench()
    b.armed_at(30, rate=50)
    b.cmd("SET 20")
    b.run(1.0)
    assert b.cmd("SIM OVERPRESSURE").ok
    b.run(0.01)
    evs = b.events()
    assert evs[-1].name == "OVERPRESSURE" and float(evs[-1].fields["p"]) > 32.0
    assert b.device.state == "FAULT" and b.device.fault_code == 33
    b.run(0.3)
    assert b.device.pressure_kpa < 1.0


def test_silent_device_drops_input_and_output_but_its_watchdog_still_runs() -> None:
    b = Bench()
    b.cmd("WDT 300")
    b.armed_at(50, rate=50)
    b.cmd("SET 20")
    assert b.cmd("SIM SILENT 1000").text == "OK SIM SILENT ms=1000"
    b.send_bytes(b"PING\n")
    b.run(0.5)
    assert b.new_lines() == []
    assert b.device.state == "FAULT" and b.device.vent_log[-1][1] == "WATCHDOG"
    b.run(0.6)
    assert b.cmd("PING").ok


def test_delayed_replies_keep_their_order_and_commands_act_at_once() -> None:
    b = Bench()
    b.armed_at(50, rate=50)
    b.cmd("SET 20")
    b.run(1.0)
    b.events()
    assert b.cmd("SIM DELAY 200").text == "OK SIM DELAY ms=200"
    b.send_bytes(b"PING\nVENT\n")
    assert b.device.vent_log[-1] == (b.t, "VENT")      # acted on arrival
    assert b.new_lines() == []
    b.run(0.2)
    assert b.new_lines() == ["OK PING n=1", "OK VENT"]


def test_real_firmware_answers_sim_commands_with_unknown_command() -> None:
    b = Bench(allow_sim=False)
    assert b.cmd("SIM BUTTON").text == "ERR 10 UNKNOWN_COMMAND SIM"
    assert b.device.state == "IDLE"


def test_framing_overlong_lines_crlf_blank_lines_and_byte_chunks() -> None:
    b = Bench()
    assert b.cmd("PING" + " " * (MAX_LINE_CHARS - 4)).ok
    assert b.cmd("PING" + " " * (MAX_LINE_CHARS - 3)).text == "ERR 12 LINE_TOO_LONG"
    b.send_bytes(b"\n  \r\n")
    assert b.new_lines() == []
    for byte in b"hello\r\n":
        b.send_bytes(bytes([byte]))
    assert b.new_lines()[0].startswith("OK HELLO")


def test_arm_only_when_vented_and_not_ramping() -> None:
    b = Bench()
    b.armed_at(50, rate=50)
    b.cmd("SET 30")
    assert b.cmd("ARM 40").text == "ERR 13 BAD_STATE st=RAMP"
    b.run(1.0)
    b.cmd("VENT")
    assert b.cmd("ARM 40").text.startswith("ERR 13 BAD_STATE not vented")
    b.cmd("ESTOP")
    assert b.cmd("ARM 40").text == "ERR 22 LATCHED ESTOP"
    assert b.cmd("DISARM").text == "ERR 22 LATCHED ESTOP"


def test_stream_sends_telemetry_at_its_rate_until_stopped() -> None:
    b = Bench()
    b.armed_at(50, rate=10)
    assert b.cmd("STREAM 50").text == "OK STREAM hz=50"
    b.cmd("SET 10")
    b.run(1.001)
    samples = b.telemetry()
    assert len(samples) == 50
    assert [s.t_ms for s in samples] == sorted(s.t_ms for s in samples)
    assert samples[-1].state == "RAMP" and samples[-1].target_kpa == 10.0
    assert 5.0 < samples[-1].pressure_kpa < 10.0
    b.cmd("STREAM 0")
    b.run(1.0)
    assert b.telemetry() == []


def test_status_reports_everything() -> None:
    b = Bench(hard_limit_kpa=90)
    b.armed_at(45, rate=50)
    b.cmd("SET 30")
    b.run(1.5)
    f = b.cmd("status?").fields
    assert (f["st"], f["tgt"], f["max"], f["hard"], f["err"]) == ("HOLD", "30.0", "45.0", "90.0", "0")
    assert abs(float(f["p"]) - 30.0) < 0.3


def test_pneumatic_noise_is_reproducible_from_the_seed() -> None:
    a, b = CuffPneumatics(seed=7), CuffPneumatics(seed=7)
    assert [a.read_kpa() for _ in range(5)] == [b.read_kpa() for _ in range(5)]
    assert [a.read_kpa() for _ in range(5)] != [CuffPneumatics(seed=8).read_kpa() for _ in range(5)]


# ---------------------------------------------------------------- fuzzing

def _expected_replies(stream: bytes) -> int:
    """How many replies a stream of complete lines must get (one per non-blank line)."""
    n = 0
    for line in stream.split(b"\n")[:-1]:
        if line.endswith(b"\r"):
            line = line[:-1]
        if len(line) > MAX_LINE_CHARS or line.strip(b" \t"):
            n += 1
    return n


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.binary(max_size=60), st.floats(0.0, 0.3)), max_size=25))
def test_random_bytes_never_crash_never_inflate_and_get_one_reply_per_line(chunks) -> None:
    b = Bench(allow_sim=False)
    b.cmd("ARM 30")               # armed, so only a SET could inflate
    sent = bytearray()
    for data, dt in chunks:
        b.send_bytes(data)
        sent += data
        b.run(dt)
        assert b.device.pressure_kpa <= 30.0 and b.device.state in STATES
    lines = [parse_device_line(x) for x in b.new_lines()]
    replies = [x for x in lines if isinstance(x, Reply)]
    complete = bytes(sent[:sent.rfind(b"\n") + 1]) if b"\n" in sent else b""
    assert len(replies) == _expected_replies(complete)
    if not any(r.ok and r.command == "SET" for r in replies):
        assert b.device.state not in ("RAMP", "HOLD") and b.device.pressure_kpa < 0.5


_numbers = st.one_of(
    st.sampled_from(["0", "0.1", "5", "10.5", "20", "30.0", "45", "60.5", "99.9", "100", "101", "150",
                     "-1", "12.55", "1e3", "nan", "", "x", "--1"]),
    st.integers(0, 7000).map(str))
_words = st.sampled_from(["ARM"] * 3 + ["SET"] * 4 + ["RATE", "DEFLATE", "VENT", "DISARM", "CLEAR", "ESTOP",
                          "STATUS?", "PING", "WDT", "MAXTIME", "STREAM", "SIM LEAK", "SIM BUTTON", "SIM REBOOT",
                          "set", "Arm", "SETT", "SIM", "SIM FOO"])
_lines = st.tuples(_words, _numbers, st.booleans()).map(lambda w: f"{w[0]} {w[1]}" if w[2] else w[0])


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(["5", "20", "45.5", "100"]), st.lists(st.tuples(_lines, st.floats(0.0, 1.5)), max_size=30))
def test_near_valid_commands_never_push_the_cuff_above_any_accepted_ceiling(arm: str, script) -> None:
    b = Bench(hard_limit_kpa=100)
    highest_armed = float(arm)
    assert b.cmd(f"ARM {arm}").ok           # start armed, so that SETs have something to get past
    for line, dt in script:
        reply = b.cmd(line)
        if reply.ok and reply.command == "ARM":
            highest_armed = max(highest_armed, float(reply.fields["max"]))
        for _ in range(int(dt / 0.05) + 1):
            b.run(dt / (int(dt / 0.05) + 1))
            # the firmware decides on a noisy reading: 0.5 kPa of slack over the ceiling
            assert b.device.pressure_kpa <= max(highest_armed, 0.0) + 0.5
            assert b.device.pressure_kpa <= b.device.armed_max_kpa + 1.0 or b.device.state in ("IDLE", "FAULT", "ESTOP", "ARMED")
