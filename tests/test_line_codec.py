"""CUFF/1 codec: framing, command grammar and ranges, device-line parsing, fuzzing."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from experiment.cuff.line_codec import (ERRORS, FAULT_CODES, MAX_LINE_CHARS, CodecError, Command, EventLine,
                                        LineSplitter, RawLine, Reply, Telemetry, encode_line, floor_kpa,
                                        format_err, format_event, format_kpa, format_ok, format_reading_kpa,
                                        format_telemetry,
                                        parse_command, parse_device_line)


def test_error_table_is_the_documented_one() -> None:
    assert ERRORS == {10: "UNKNOWN_COMMAND", 11: "BAD_ARGUMENT", 12: "LINE_TOO_LONG", 13: "BAD_STATE",
                      20: "OVER_LIMIT", 21: "NOT_ARMED", 22: "LATCHED", 24: "CLEAR_REFUSED", 30: "WATCHDOG",
                      31: "ESTOP", 32: "TIME_LIMIT", 33: "OVERPRESSURE", 34: "COMPLIANCE"}
    assert all(ERRORS[code] == name for name, code in FAULT_CODES.items())


@pytest.mark.parametrize("line, expected", [
    (b"HELLO", Command("HELLO")),
    (b"hello", Command("HELLO")),
    (b"  Ping\t", Command("PING")),
    (b"status?", Command("STATUS?")),
    (b"SET 12.5", Command("SET", 12.5)),
    (b"set 12", Command("SET", 12.0)),
    (b"ARM 97.0", Command("ARM", 97.0)),
    (b"RATE 0.1", Command("RATE", 0.1)),
    (b"RATE 100", Command("RATE", 100.0)),
    (b"WDT 200", Command("WDT", 200)),
    (b"WDT 5000", Command("WDT", 5000)),
    (b"STREAM 0", Command("STREAM", 0)),
    (b"MAXTIME 30000", Command("MAXTIME", 30000)),
    (b"sim leak 2.5", Command("SIM LEAK", 2.5)),
    (b"SIM button", Command("SIM BUTTON")),
])
def test_commands_parse_case_insensitively(line: bytes, expected: Command) -> None:
    assert parse_command(line, allow_sim=True) == expected


@pytest.mark.parametrize("line, code, detail", [
    (b"FLY", 10, "FLY"),
    (b"SIM BUTTON", 10, "SIM"),           # real firmware: no SIM commands
    (b"SET", 11, "takes one argument"),
    (b"SET 1 2", 11, "takes one argument"),
    (b"PING 3", 11, "takes no argument"),
    (b"SET 12.55", 11, "at most one decimal"),
    (b"SET -1", 11, "at most one decimal"),
    (b"SET 1e2", 11, "at most one decimal"),
    (b"SET nan", 11, "at most one decimal"),
    (b"WDT 199", 11, "outside 200-5000"),
    (b"WDT 5001", 11, "outside 200-5000"),
    (b"WDT 1.5", 11, "not an integer"),
    (b"RATE 0.0", 11, "outside 0.1-100"),
    (b"RATE 100.1", 11, "outside 0.1-100"),
    (b"STREAM 101", 11, "outside 0-100"),
    (b"MAXTIME 999", 11, "outside 1000-600000"),
    (b"SET \xb012", 10, "non-ASCII"),
    (b"PING\x00", 10, "control byte"),
])
def test_bad_commands_carry_their_error_code(line: bytes, code: int, detail: str) -> None:
    with pytest.raises(CodecError, match=detail) as info:
        parse_command(line, allow_sim=False)
    assert info.value.code == code


def test_blank_lines_are_not_commands() -> None:
    assert parse_command(b"", allow_sim=False) is None
    assert parse_command(b" \t ", allow_sim=False) is None


def test_splitter_handles_crlf_and_any_chunking() -> None:
    stream = b"PING\r\nSET 10\nHELLO\r\n"
    whole = LineSplitter().feed(stream)
    splitter = LineSplitter()
    bytewise = [line for i in range(len(stream)) for line in splitter.feed(stream[i:i + 1])]
    assert whole == bytewise == [RawLine(b"PING"), RawLine(b"SET 10"), RawLine(b"HELLO")]


def test_splitter_marks_overlong_lines_and_bounds_memory() -> None:
    s = LineSplitter()
    ok80 = b"P" * MAX_LINE_CHARS
    assert s.feed(ok80 + b"\r\n") == [RawLine(ok80)]
    assert s.feed(b"P" * (MAX_LINE_CHARS + 1) + b"\n") == [RawLine(b"", overflow=True)]
    for _ in range(1000):                     # 100 kB without a newline
        assert s.feed(b"x" * 100) == []
    assert len(s._buf) <= MAX_LINE_CHARS + 1
    assert s.feed(b"\nPING\n") == [RawLine(b"", overflow=True), RawLine(b"PING")]


def test_kpa_formatting_has_one_decimal_and_ceilings_round_down() -> None:
    assert format_kpa(12) == "12.0"
    assert format_kpa(12.25) in ("12.2", "12.3")
    assert format_kpa(-0.01) == "0.0"
    assert format_kpa(0.04) == "0.0"
    assert floor_kpa(41.29) == 41.2
    assert floor_kpa(41.3) == 41.3           # 41.3 * 10 is 412.99999999999994 in binary
    with pytest.raises(ValueError, match="finite"):
        format_kpa(float("nan"))


def test_readings_are_rounded_down_so_they_stay_below_a_threshold_they_are_below() -> None:
    assert format_reading_kpa(0.96) == "0.9"          # below 1 kPa stays below 1.0 (nearest would say 1.0)
    assert format_reading_kpa(0.99999999) == "0.9"
    assert format_reading_kpa(1.0) == "1.0" and format_reading_kpa(1.04) == "1.0"
    assert format_reading_kpa(41.3) == "41.3"         # 41.3 * 10 is 412.99999999999994 in binary
    assert format_reading_kpa(0.3) == "0.3" and format_reading_kpa(0.7) == "0.7"
    assert format_reading_kpa(0.0) == "0.0" and format_reading_kpa(-0.0) == "0.0"
    assert format_reading_kpa(-0.04) == "-0.1"         # noise around zero: still below 0.0
    assert format_telemetry(5, 0.96, 20, "DEFLATING") == b"!P t=5 p=0.9 tgt=20.0 st=DEFLATING\n"
    with pytest.raises(ValueError, match="finite"):
        format_reading_kpa(float("inf"))


@settings(max_examples=400, deadline=None)
@given(st.floats(min_value=-10, max_value=1000, allow_nan=False), st.integers(-100, 10000))
def test_a_reported_reading_is_on_the_same_side_of_every_grid_threshold(reading, tenths) -> None:
    """For every T on the 0.1 kPa grid, `x < T` and `x >= T` agree for the reading and for
    what the wire says, so a state decided on the reading never contradicts the number sent."""
    reported = float(format_reading_kpa(reading))
    threshold = tenths / 10
    assert (reported < threshold) == (reading < threshold)
    assert reported <= reading < (round(reported * 10) + 1) / 10


def test_encode_line_refuses_what_the_protocol_forbids() -> None:
    assert encode_line("PING") == b"PING\n"
    with pytest.raises(ValueError, match="longer than 80"):
        encode_line("P" * 81)
    with pytest.raises(ValueError, match="line break"):
        encode_line("PING\nVENT")


def test_device_lines_parse_into_replies_events_and_telemetry() -> None:
    assert parse_device_line("OK HELLO dev=cuedpain-sim fw=1.0.0 proto=1 hard=100.0") == Reply(
        "OK HELLO dev=cuedpain-sim fw=1.0.0 proto=1 hard=100.0", True, command="HELLO",
        fields={"dev": "cuedpain-sim", "fw": "1.0.0", "proto": "1", "hard": "100.0"})
    r = parse_device_line("OK SIM LEAK kpa_s=5.0")
    assert (r.command, r.fields) == ("SIM LEAK", {"kpa_s": "5.0"})
    e = parse_device_line("ERR 20 OVER_LIMIT max=40.0")
    assert (e.ok, e.code, e.name, e.detail) == (False, 20, "OVER_LIMIT", "max=40.0")
    assert parse_device_line("!EVT ESTOP src=button") == EventLine("ESTOP", {"src": "button"})
    assert parse_device_line("!P t=1200 p=-0.1 tgt=30.0 st=RAMP") == Telemetry(1200, -0.1, 30.0, "RAMP")


@pytest.mark.parametrize("text, why", [
    ("", "empty"), ("OK", "without a command"), ("ERR x NAME", "malformed error"),
    ("!P t=1 p=2", "without tgt"), ("!P t=x p=1 tgt=1 st=IDLE", "numbers malformed"),
    ("!EVT", "without a name"), ("!FOO 1", "unknown unsolicited"), ("PING", "not a CUFF/1 line"),
    ("OK PING n", "not key=value"),
])
def test_malformed_device_lines_are_rejected(text: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        parse_device_line(text)


def test_formatters_produce_what_the_parser_reads() -> None:
    assert parse_device_line(format_ok("STATUS", {"st": "HOLD", "p": "30.1"}).decode().strip()).fields == \
        {"st": "HOLD", "p": "30.1"}
    assert parse_device_line(format_event("TARGET_REACHED", {"p": "29.6"}).decode().strip()) == \
        EventLine("TARGET_REACHED", {"p": "29.6"})
    assert parse_device_line(format_telemetry(55, 3.04, 10, "RAMP").decode().strip()) == Telemetry(55, 3.0, 10.0, "RAMP")
    assert format_err(24, "p=3.0") == b"ERR 24 CLEAR_REFUSED p=3.0\n"
    with pytest.raises(ValueError, match="bad CUFF/1 field"):
        format_ok("X", {"k": "two words"})


# ---------------------------------------------------------------- fuzzing

@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=120), st.booleans())
def test_any_bytes_give_a_command_none_or_a_codec_error(data: bytes, allow_sim: bool) -> None:
    try:
        cmd = parse_command(data, allow_sim=allow_sim)
    except CodecError as exc:
        assert exc.code in (10, 11)
        return
    assert cmd is None or cmd.name.isupper()


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=40), max_size=20))
def test_chunking_never_changes_the_lines(chunks: list[bytes]) -> None:
    stream = b"".join(chunks)
    a, b = LineSplitter(), LineSplitter()
    assert [line for c in chunks for line in a.feed(c)] == b.feed(stream)
    assert len(b.feed(b"")) == 0


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=90))
def test_device_line_parser_raises_only_value_error(text: str) -> None:
    try:
        parse_device_line(text)
    except ValueError:
        pass


@settings(max_examples=300, deadline=None)
@given(st.floats(min_value=0.0, max_value=999.9, allow_nan=False))
def test_formatted_pressures_are_valid_command_arguments(value: float) -> None:
    cmd = parse_command(f"SET {format_kpa(value)}".encode(), allow_sim=False)
    assert cmd is not None and abs(cmd.arg - value) <= 0.05 + 1e-9


def test_the_typed_faults_are_cuff1_s_fault_codes_with_their_meanings() -> None:
    from experiment.cuff.base import CuffState, Fault, FaultKind

    assert FAULT_CODES == {k.name: k.value for k in FaultKind}
    assert all(ERRORS[k.value] == k.name for k in FaultKind)
    assert Fault(31).describe(CuffState.ESTOP).startswith("ESTOP (error 31 ESTOP: an emergency stop")
    assert Fault(39).describe(CuffState.FAULT) == "FAULT (error 39 UNKNOWN: a fault this program does not know)"
