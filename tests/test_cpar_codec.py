"""CPAR codec: framing, destuffing, packets, CRC-8, waveform encoding, messages, tables."""

from __future__ import annotations

import math
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from experiment.cuff import cpar_codec as codec
from experiment.cuff.cpar_codec import FIRMWARE_LABBENCH7 as LB7
from experiment.cuff.cpar_codec import FIRMWARE_NOCITECH as NOC
from experiment.cuff.cpar_codec import CparFormatError, Destuffer, Packet

packets = st.builds(Packet, code=st.integers(0, 255), data=st.binary(max_size=255))
ff_heavy = st.builds(Packet, code=st.sampled_from([0x10, 0xFF, 0xF1]),
                     data=st.lists(st.sampled_from([0xFF, 0xF1, 0xF2, 0x00]), max_size=40).map(bytes))


def _decode_all(stream: bytes, chunks: list[int] | None = None) -> list[Packet]:
    d = Destuffer()
    frames: list[bytes] = []
    cuts = sorted(set(chunks or []))
    start = 0
    for cut in cuts + [len(stream)]:
        frames += d.feed(stream[start:cut])
        start = cut
    return [codec.decode_packet(f) for f in frames]


# ---------------------------------------------------------------- framing

def test_frame_layout_and_stuffing_by_hand():
    # DLE STX, code 0x10, length 2, data FF 01 (FF doubled), DLE ETX
    assert codec.frame_packet(Packet(0x10, b"\xff\x01")) == bytes([0xFF, 0xF1, 0x10, 0x02, 0xFF, 0xFF, 0x01, 0xFF, 0xF2])


@given(packets)
def test_encode_decode_identity(pkt):
    assert _decode_all(codec.frame_packet(pkt)) == [pkt]


@given(st.one_of(packets, ff_heavy))
def test_trailing_zero_quirk_is_accepted_only_when_allowed(pkt):
    frame = Destuffer().feed(codec.frame_packet(pkt, trailing_zero=True))[0]
    assert frame[-1] == 0 and len(frame) == len(pkt.data) + 3
    assert codec.decode_packet(frame, allow_trailing_zero=True) == pkt
    with pytest.raises(CparFormatError, match="says .* data bytes but carries"):
        codec.decode_packet(frame)


@settings(max_examples=200)
@given(st.lists(st.one_of(packets, ff_heavy), min_size=1, max_size=6), st.data())
def test_awkward_chunking_gives_the_same_packets(pkts, data):
    stream = b"".join(codec.frame_packet(p) for p in pkts)
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=len(stream)))
    assert _decode_all(stream, cuts) == pkts
    assert _decode_all(stream, list(range(len(stream)))) == pkts      # one byte at a time


@settings(max_examples=300)
@given(st.binary(max_size=300), packets, packets)
def test_arbitrary_bytes_never_crash_and_the_stream_resynchronises(garbage, first, second):
    d = Destuffer(max_frame_bytes=600)
    junk = d.feed(garbage)
    assert all(isinstance(f, bytes) and len(f) <= 600 for f in junk)
    frames = d.feed(codec.frame_packet(first) + codec.frame_packet(second))
    # a DLE left pending by the garbage may spoil `first`; `second` always arrives intact
    assert codec.decode_packet(frames[-1]) == second


def test_dle_stx_inside_a_frame_restarts_it_and_bad_escape_drops_it():
    d = Destuffer()
    assert d.feed(bytes([0xFF, 0xF1, 0x01, 0x02, 0xFF, 0xF1, 0x02, 0x00, 0xFF, 0xF2])) == [b"\x02\x00"]
    assert d.feed(bytes([0xFF, 0xF1, 0x01, 0xFF, 0x33, 0x00, 0xFF, 0xF2])) == []
    assert d.dropped == 1


def test_destuffer_memory_is_bounded():
    d = Destuffer(max_frame_bytes=16)
    assert d.feed(b"\xff\xf1" + b"\x01" * 100 + b"\xff\xf2") == []
    assert d.dropped == 1
    assert d.feed(codec.frame_packet(Packet(2, b""))) == [b"\x02\x00"]


def test_decode_packet_errors_name_the_problem():
    with pytest.raises(CparFormatError, match="shorter than"):
        codec.decode_packet(b"\x01")
    with pytest.raises(CparFormatError, match="packet 0x11 says 2 data bytes but carries 1"):
        codec.decode_packet(b"\x11\x02\x01")
    with pytest.raises(CparFormatError, match="does not fit the u8 length"):
        Packet(0x10, bytes(256)).to_bytes()


# ---------------------------------------------------------------- CRC-8

@pytest.mark.parametrize("data, crc", [
    (b"123456789", 0xF4),        # catalogue check value of CRC-8/SMBUS (poly 0x07, init 0)
    (b"", 0x00),
    (b"\x01", 0x07),             # one shift of a set bit 0 ... 7 times = the polynomial
    (b"\x80", 0x89),             # by hand: 07 0E 1C 38 70 E0 C7 89
])
def test_crc8_known_vectors(data, crc):
    assert codec.crc8_ccitt(data) == crc


def test_crc8_tells_apart_the_maker_unit_test_inputs():
    assert codec.crc8_ccitt(bytes([1, 2, 4, 5])) != codec.crc8_ccitt(bytes([1, 2, 4, 6]))


# ---------------------------------------------------------------- waveforms

def test_ramp_0_to_40_kpa_at_10_kpa_s_matches_the_documented_formula():
    # docs/cpar.md (from Nocitech/CPAR's SetWaveformProgram): 255 units per 100 kPa; INC argument (255*delta/100)/20
    # per 20 Hz tick, sent as [type][arg_frac*256][arg_int][steps lo][steps hi].
    per_tick_units = (255 * 10 / 100) / 20                       # 1.275
    arg = math.floor(per_tick_units * 256)                        # 8.8 fixed point, truncated
    target_units = 255 * 40 / 100                                  # 102
    ticks = math.floor(target_units * 256 / arg)                   # never past the target
    step_arg = math.floor(target_units * 256)
    hold_ticks = 60 * 20
    expected = bytes([1, arg % 256, arg // 256, ticks % 256, ticks // 256,
                      3, step_arg % 256, step_arg // 256, hold_ticks % 256, hold_ticks // 256])
    program = codec.ramp_hold_program(40.0, 10.0, hold_s=60.0)
    assert b"".join(i.to_bytes() for i in program) == expected
    assert ticks == 80                                             # 4 s, as 40 kPa / 10 kPa/s says
    request = codec.waveform_request(NOC, channel=0, repeat=1, instructions=program)
    assert request.to_bytes() == bytes([0x10, 12, 0, 1]) + expected


@given(st.floats(0.5, 100.0), st.floats(0.1, 100.0))
def test_ramp_never_passes_the_target_and_lasts_target_over_rate(target_kpa, rate_kpa_s):
    program = codec.ramp_hold_program(target_kpa, rate_kpa_s, hold_s=1.0)
    hold = program[-1]
    assert hold.kind == codec.STEP and hold.argument_q8 == math.floor(target_kpa * 2.55 * 256)
    if len(program) == 2:
        ramp = program[0]
        assert ramp.kind == codec.INC
        assert ramp.steps * ramp.argument_q8 <= hold.argument_q8            # INC stops at or below
        assert (ramp.steps + 1) * ramp.argument_q8 > hold.argument_q8       # ...within one tick
        true_rate = ramp.argument_q8 / 256 / 2.55 * 20
        assert true_rate <= rate_kpa_s and rate_kpa_s - true_rate < 100 / 255 * 20 / 256 + 1e-9


def test_instruction_limits_and_description():
    assert codec.Instruction.from_bytes(codec.dec(5.0, 2.0).to_bytes()) == codec.dec(5.0, 2.0)
    assert codec.nop(0.0).steps == 1                     # steps 0 becomes 1, as in the C# setter
    assert codec.step(30.0, 5000.0).steps == 0xFFFF      # u16 tick count caps a single hold
    assert codec.step(40.0, 2.0).describe() == "STEP 40.000 kPa for 2.00 s"
    with pytest.raises(CparFormatError, match="instruction type 9 unknown"):
        codec.Instruction(9, 0, 1)
    with pytest.raises(CparFormatError, match="below the device's resolution"):
        codec.ramp_hold_program(10.0, 0.01, hold_s=1.0)
    with pytest.raises(CparFormatError, match="outside 0..100 kPa"):
        codec.ramp_hold_program(101.0, 10.0, hold_s=1.0)


def test_instruction_count_limit_comes_from_the_table():
    too_many = tuple(codec.nop(1.0) for _ in range(21))
    codec.waveform_request(NOC, channel=1, repeat=1, instructions=too_many)
    with pytest.raises(CparFormatError, match="21 instructions; firmware labbench7 takes at most 20"):
        codec.waveform_request(LB7, channel=1, repeat=1, instructions=too_many)
    # 50 instructions fill the u8 length byte (2 + 250 bytes); 51 would not fit
    assert len(codec.waveform_request(NOC, channel=0, repeat=1,
                                      instructions=too_many * 2 + too_many[:8]).data) == 252


def test_waveform_request_round_trip_and_crc_covers_instructions_only():
    program = codec.ramp_hold_program(30.0, 20.0, hold_s=10.0)
    req = codec.waveform_request(NOC, channel=1, repeat=3, instructions=program)
    decoded = codec.decode_waveform_request(NOC, req.data)
    assert decoded == codec.WaveformProgram(1, 3, program)
    assert decoded.crc == codec.crc8_ccitt(req.data[2:]) != codec.crc8_ccitt(req.data)
    with pytest.raises(CparFormatError, match="not 2 \\+ 5\\*N"):
        codec.decode_waveform_request(NOC, req.data[:-1])


# ---------------------------------------------------------------- functions and messages

def test_function_codes_per_table():
    assert [NOC.functions[n] for n in ("DeviceIdentification", "KickWatchdog", "SetWaveformProgram",
                                       "StartStimulation", "ForceStartStimulation", "StopStimulation")] \
        == [0x01, 0x02, 0x10, 0x11, 0x12, 0x13]
    assert [LB7.functions[n] for n in ("KickWatchdog", "SetWaveformProgram", "StartStimulation",
                                       "StopStimulation", "ForceStartStimulation")] == [0x08, 0x02, 0x03, 0x04, 0x0A]
    assert codec.firmware_table("labbench7") is LB7
    with pytest.raises(ValueError, match="unknown CPAR firmware table 'cparplus'; known: labbench7, nocitech"):
        codec.firmware_table("cparplus")


def test_start_request_layouts():
    assert codec.start_request(NOC, stop_criterion=1).to_bytes() == bytes([0x11, 2, 1, 0])
    assert codec.start_request(NOC, stop_criterion=1, force=True).code == 0x12
    assert codec.start_request(LB7, stop_criterion=1).to_bytes() == bytes([0x03, 1, 1])
    assert codec.decode_start_request(NOC, bytes([2, 1])) == (2, 1)
    with pytest.raises(CparFormatError, match="start request of 1 bytes, expected 2"):
        codec.decode_start_request(NOC, b"\x01")


def test_identification_64_byte_layout_by_offsets():
    raw = bytearray(64)
    struct.pack_into("<I", raw, 0, 0xA1B2C3D4)      # manufacturer id @0
    struct.pack_into("<H", raw, 4, 1)               # device id @4
    struct.pack_into("<I", raw, 6, 1234567)         # serial @6
    raw[10:14] = bytes([3, 2, 1, 0])                # fw major minor patch eng @10..13
    struct.pack_into("<H", raw, 14, 0xBEEF)         # checksum @14
    raw[16:16 + 8] = b"Nocitech"                    # manufacturer @16 (24 B)
    raw[40:40 + 4] = b"CPAR"                        # device @40 (24 B)
    ident = codec.decode_identification(NOC, bytes(raw))
    assert (ident.manufacturer_id, ident.device_id, ident.serial_number, ident.checksum) == (0xA1B2C3D4, 1, 1234567, 0xBEEF)
    assert (ident.manufacturer, ident.device, ident.version_text) == ("Nocitech", "CPAR", "3.2.1")
    assert codec.encode_identification(NOC, ident) == bytes(raw)
    assert not codec.is_simulator(NOC, ident)
    with pytest.raises(CparFormatError, match="6 bytes, expected 64"):
        codec.decode_identification(NOC, bytes(6))


def test_identification_6_byte_layout_and_simulator_marker():
    ident = codec.decode_identification(LB7, bytes([1, 7, 2, 0x5A, 0x39, 0x30]))
    assert (ident.device_id, ident.version_text, ident.checksum, ident.serial_number) == (1, "7.0.0.r2", 0x5A, 0x3039)
    sim = codec.decode_identification(LB7, codec.encode_identification(LB7, codec.SIMULATOR_IDENTIFICATION))
    assert codec.is_simulator(LB7, sim) and not codec.is_simulator(LB7, ident)
    sim64 = codec.decode_identification(NOC, codec.encode_identification(NOC, codec.SIMULATOR_IDENTIFICATION))
    assert codec.is_simulator(NOC, sim64) and sim64.manufacturer == "cuedpain-sim"


def test_status_message_byte_positions():
    raw = bytes([1, 0x15, 0x34, 0x12, 9, 10, 11, 128, 77, 5, 78, 6, 40, 7, 1])
    s = codec.decode_status(NOC, raw)
    assert (s.state_name, s.flags, s.update_counter, s.stop_condition_name) == ("STIMULATING", 0x15, 0x1234, "COMM_WATCHDOG")
    assert (s.vas, s.final_vas, s.supply, s.actual, s.target, s.final, s.stop_pressed) == \
        (10, 11, 128, (77, 5), (78, 6), (40, 7), True)
    assert s.actual_kpa == pytest.approx(77 * 100 / 255) and s.target_kpa == pytest.approx(78 * 100 / 255)
    assert codec.encode_status(NOC, s) == Packet(0x80, raw)
    assert codec.encode_status(LB7, s).data == raw[:14]
    assert codec.decode_status(LB7, raw[:14]).stop_pressed is False
    with pytest.raises(CparFormatError, match="StatusMessage of 14 bytes, expected 15"):
        codec.decode_status(NOC, raw[:14])


@pytest.mark.parametrize("table, number, name", [
    (NOC, 4, "STOP_BUTTON_PRESSED"), (NOC, 9, "EMERGENCY_ACTIVATED"), (NOC, 12, "TIMELIMIT_EXCEEDED"),
    (NOC, 13, "COMM_WATCHDOG_TRIGGERED"), (NOC, 14, "CUFF01_OUT_OF_COMPLIANCE"), (NOC, 23, "AIR_LEAK"),
    (LB7, 4, "STOP_BUTTON_PRESSED"), (LB7, 8, "EMERGENCY_ACTIVATED"), (LB7, 12, "COMM_WATCHDOG_TRIGGERED"),
    (NOC, 99, "EVENT_99"),
])
def test_event_ids_follow_each_tables_enum_order(table, number, name):
    assert codec.decode_event(table, bytes([number])) == name
    if not name.startswith("EVENT_"):
        assert codec.encode_event(table, name) == Packet(0x81, bytes([number]))


def test_kick_counter_and_nack():
    assert codec.decode_kick_response(codec.encode_kick_response(0xDEADBEEF)) == 0xDEADBEEF
    assert codec.nack_text(codec.nack(codec.ERR_INVALID_CONTENT)) == "0x02 invalid content"
    with pytest.raises(CparFormatError, match="KickWatchdog response of 3 bytes, expected 4"):
        codec.decode_kick_response(b"\x00\x00\x00")


def test_pressure_byte_conversion():
    assert codec.byte_to_kpa(255) == 100.0 and codec.kpa_to_byte(100.0) == 255
    assert codec.kpa_to_byte(-3.0) == 0 and codec.kpa_to_byte(150.0) == 255
    assert abs(codec.byte_to_kpa(codec.kpa_to_byte(37.3)) - 37.3) <= 100 / 255 / 2
