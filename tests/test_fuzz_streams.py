"""Property-based fuzzing of the byte streams coming into the program: cuff and trigger lines.

Whatever a broken, noisy or hostile device sends, the host must neither crash nor move
the cuff: device bytes may make the supervisor trip (and vent) or be ignored, but they
never cause a SET (or RATE, ARM, DEFLATE). Trigger bytes give exactly the pulses their
preset defines, however they are chunked, and no pulse stream breaks the start gate or
the pulse checks. Protocol files are fuzzed in tests/test_protocol.py
(test_mutated_protocols_give_a_protocol_or_one_input_error and
test_arbitrary_text_gives_a_protocol_or_one_input_error), not repeated here.
"""

from __future__ import annotations

import os
import string
import tty
from typing import Any, Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from experiment.clock import RealClock, VirtualClock
from experiment.cuff.line_driver import LineCuff
from experiment.cuff.safety import CuffSupervisor, SafetyLimits
from experiment.cuff.simdevice import SimCuffDevice
from experiment.cuff.simserver import SimServer
from experiment.cuff.transport import LoopbackTransport, SerialTransport
from experiment.scanner.base import Pulse
from experiment.scanner.pulsecheck import PulseMonitor
from experiment.protocol.specs import PRESETS, SerialPreset, parse_preset
from experiment.scanner.serial_source import SerialSource, TriggerDecoder
from experiment.scanner.startgate import StartGate
from tests.cuff_helpers import wait_for

LIMITS = SafetyLimits(ceiling_kpa=30.0, max_stimulus_s=10.0, max_run_inflated_s=60.0)
TARGET_KPA = 20.0
# what a host may send on its own while device bytes arrive: heartbeats, and vents when it trips
UNPROMPTED_COMMANDS = {"PING", "VENT"}

# well-formed and nearly well-formed device lines, so the fuzz reaches the reply matcher,
# the event handlers and the telemetry checks, not only the framing
DEVICE_FRAGMENTS = [
    b"\n", b"\r\n", b"OK ", b"OK PING n=1\n", b"OK PING n=0\n", b"OK VENT\n", b"OK SET tgt=20.0 eta_ms=1\n",
    b"OK STATUS st=HOLD p=20.0 tgt=20.0 max=30.0 hard=100.0 err=0\n", b"OK SIM BUTTON\n",
    b"ERR 22 LATCHED WATCHDOG\n", b"ERR 13 BAD_STATE\n", b"ERR 99\n", b"ERR x y\n",
    b"!EVT BOOT fw=1.0.0\n", b"!EVT ESTOP src=button\n", b"!EVT ESTOP src=host\n", b"!EVT WATCHDOG ms=1\n",
    b"!EVT OVERPRESSURE p=99.0\n", b"!EVT COMPLIANCE p=1.0 tgt=20.0\n", b"!EVT TARGET_REACHED p=20.0\n",
    b"!EVT DEFLATED p=0.0\n", b"!EVT\n", b"!EVT NEW_THING a=b\n", b"!P t=5 p=99.9 tgt=0.0 st=HOLD\n",
    b"!P t=5 p=0.0 tgt=0.0 st=IDLE\n", b"!P t=-1 p=1e9 tgt=nan st=\n", b"!P t=x\n", b"!X\n",
    b"\x00\xff\xfe\x80", b"A" * 300, b"OK " + b"k=v " * 40 + b"\n",
]
PRINTABLE = string.printable.replace("\n", "")
device_chunks = st.lists(
    st.one_of(st.binary(max_size=64), st.sampled_from(DEVICE_FRAGMENTS),
              st.text(alphabet=PRINTABLE, max_size=60).map(lambda s: s.encode() + b"\n")),
    min_size=1, max_size=40)


class JunkLine:
    """A `ByteDevice` between the host and the simulated firmware that adds junk to what the host hears.

    Each time the host sends a command, and each time the device is advanced, the next
    junk chunk goes to the host, so junk lands where the driver waits for a reply, between
    replies and inside telemetry lines. Records what the host sent and the highest true
    pressure the cuff reached after `mark()`.
    """

    def __init__(self, device: SimCuffDevice) -> None:
        self.device = device
        self.vent_log = device.vent_log
        self.from_host = bytearray()
        self._junk: list[bytes] = []
        self._write: Callable[[bytes], None] = lambda data: None
        self._mark = 0
        self.peak_kpa = 0.0

    def attach(self, write: Callable[[bytes], None]) -> None:
        self._write = write
        self.device.attach(write)

    def on_port_open(self, now: float) -> None:
        self.device.on_port_open(now)

    def receive(self, data: bytes, now: float) -> None:
        self.from_host += data
        self._spill()
        self.device.receive(data, now)

    def advance(self, now: float) -> None:
        self.device.advance(now)
        self.peak_kpa = max(self.peak_kpa, self.device.pressure_kpa)
        self._spill()

    def _spill(self) -> None:
        if self._junk:
            self._write(self._junk.pop(0))

    def add_junk(self, chunks: list[bytes]) -> None:
        """Start the junk; what the host sends and the pressure are watched from here."""
        self._mark = len(self.from_host)
        self.peak_kpa = self.device.pressure_kpa
        self._junk.extend(chunks)

    @property
    def junk_left(self) -> int:
        return len(self._junk)

    def commands_since_mark(self) -> list[str]:
        lines = bytes(self.from_host[self._mark:]).split(b"\n")
        return [line.split()[0].decode() for line in lines if line.strip()]

    @property
    def pressure_kpa(self) -> float:
        return self.device.pressure_kpa

    @property
    def state(self) -> str:
        return self.device.state


def _check_host_did_not_move_the_cuff(line: JunkLine, records: list[dict[str, Any]], *, inflated: bool) -> None:
    sent = set(line.commands_since_mark())
    assert sent <= UNPROMPTED_COMMANDS, f"device bytes made the host send {sorted(sent - UNPROMPTED_COMMANDS)}"
    # never above what the host itself commanded before the junk (the regulator does not overshoot)
    assert line.peak_kpa <= (TARGET_KPA if inflated else 0.0) + 0.5
    assert all(r["action"] in ("vent", "stop") for r in records if r["kind"] == "safety")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(junk=device_chunks, inflated=st.booleans())
def test_device_bytes_never_crash_the_host_or_move_the_cuff(junk: list[bytes], inflated: bool) -> None:
    clock = VirtualClock()
    line = JunkLine(SimCuffDevice())
    cuff = LineCuff(LoopbackTransport(line, clock=clock), clock=clock)
    records: list[dict[str, Any]] = []
    sup = CuffSupervisor(cuff, clock=clock, limits=LIMITS, on_record=records.append)
    sup.start()
    if inflated:
        sup.stimulate(TARGET_KPA, 20.0)
        clock.sleep(1.5)
    line.add_junk(junk)      # a receiver exception would surface here: the loopback is synchronous
    clock.sleep(1.0)         # junk, heartbeats, guard checks, and whatever the junk made the host do
    assert line.junk_left == 0
    _check_host_did_not_move_the_cuff(line, records, inflated=inflated)
    sup.close()              # vents whatever state the junk left the host in, and never raises
    line.device.advance(clock.now() + 0.5)   # the dump valve is open: the cuff empties
    assert line.pressure_kpa < 1.0


@pytest.mark.realtime
@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(junk=device_chunks)
def test_device_bytes_on_a_real_serial_line_never_stop_the_reader_or_move_the_cuff(junk: list[bytes]) -> None:
    clock = RealClock()
    line = JunkLine(SimCuffDevice())
    server = SimServer(line, clock=clock)
    transport = SerialTransport(server.path, clock=clock)
    records: list[dict[str, Any]] = []
    sup = CuffSupervisor(LineCuff(transport, clock=clock), clock=clock, limits=LIMITS, on_record=records.append)
    try:
        sup.start()
        sup.stimulate(TARGET_KPA, 20.0)
        assert wait_for(lambda: server.inspect(lambda d: d.pressure_kpa) > 5.0, 2.0)
        server.inspect(lambda d: d.add_junk(junk))
        assert wait_for(lambda: server.inspect(lambda d: d.junk_left) == 0, 2.0)
        # a heartbeat (every 250 ms) must have gone through the junk: the host kept talking
        pings = len([c for c in server.inspect(lambda d: d.commands_since_mark()) if c == "PING"])
        assert wait_for(lambda: len([c for c in server.inspect(lambda d: d.commands_since_mark())
                                     if c == "PING"]) > pings, 1.0)
        assert transport.reader_alive, "device bytes stopped the serial reader thread"
        server.inspect(lambda d: _check_host_did_not_move_the_cuff(d, records, inflated=True))
    finally:
        sup.close()
        vented = wait_for(lambda: server.inspect(lambda d: d.pressure_kpa) < 1.0, 1.0)
        server.close()
    assert vented, f"{line.pressure_kpa:.1f} kPa left after close"


# ---------------------------------------------------------------- trigger line

presets = st.sampled_from([PRESETS["forp"], PRESETS["syncbox"], PRESETS["forp-bitwise"],
                           parse_preset("custom:0x54@9600")])


def _chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    edges = sorted({min(c, len(data)) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in zip(edges, edges[1:])]


def _expected_pulses(preset: SerialPreset, data: bytes) -> int:
    """The preset's definition: each trigger byte, or each byte that sets the bit after one that did not."""
    if preset.trigger_byte is not None:
        return data.count(preset.trigger_byte)
    bits = [bool(b & preset.trigger_mask) for b in data]
    return sum(1 for i, on in enumerate(bits) if on and (i == 0 or not bits[i - 1]))


@settings(max_examples=300, deadline=None)
@given(preset=presets, data=st.binary(max_size=300), cuts=st.lists(st.integers(0, 300), max_size=20))
def test_trigger_bytes_give_exactly_the_preset_s_pulses_however_they_are_chunked(
        preset: SerialPreset, data: bytes, cuts: list[int]) -> None:
    decoder = TriggerDecoder(preset)
    pulses = sum(decoder.feed(chunk) for chunk in _chunked(data, cuts))
    assert pulses == _expected_pulses(preset, data)
    assert 0 <= decoder.other_bytes <= len(data) - pulses


@settings(max_examples=200, deadline=None)
@given(intervals=st.lists(st.one_of(st.floats(0.0, 5.0), st.sampled_from([0.0, 0.002, 0.5, 1.0, 7.5])),
                          max_size=120),
       discard=st.integers(0, 5), silence_s=st.floats(0.0, 30.0))
def test_no_pulse_stream_breaks_the_start_gate_or_the_pulse_checks(intervals: list[float], discard: int,
                                                                   silence_s: float) -> None:
    gate = StartGate(discard)
    monitor = PulseMonitor(0.5, n_expected=40, stop_after_trs=3.0)
    t = 1e9      # a PTB-like time base, where precision is tight
    volumes: list[int] = []
    codes: set[str] = set()
    for i, dt in enumerate(intervals):
        t += dt
        volume = gate.feed(Pulse(i, t, "serial"))
        if volume is not None:
            volumes.append(volume)
            codes |= {w.code for w in monitor.feed(t)}
    late = monitor.check_silence(t + silence_s)
    codes |= {late.code} if late else set()
    assert codes <= {"missed_pulse", "extra_pulse", "per_slice", "scanner_stopped"}
    assert volumes == list(range(len(volumes)))
    assert gate.started == (len(intervals) > discard)
    summary = monitor.summary()
    assert summary.n_pulses == len(volumes)
    # every pulse after the first is an extra one, a regular interval or a gap
    assert summary.n_extra + summary.n_regular_intervals + (1 if volumes else 0) <= len(volumes)


@pytest.mark.realtime
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.binary(min_size=1, max_size=200), cuts=st.lists(st.integers(0, 200), max_size=8))
def test_trigger_bytes_through_a_real_serial_line_give_their_pulses_and_never_stop_the_reader(
        data: bytes, cuts: list[int]) -> None:
    master, slave = os.openpty()
    tty.setraw(slave)
    source = SerialSource(os.ttyname(slave), clock=RealClock(), preset=PRESETS["forp"])
    try:
        source.open()
        for chunk in _chunked(data, cuts):
            os.write(master, chunk)
        got: list[Pulse] = []

        def all_read() -> bool:
            got.extend(source.poll())
            return len(got) + source.other_bytes >= len(data)

        assert wait_for(all_read, 2.0), f"read {len(got)} pulses + {source.other_bytes} other of {len(data)} bytes"
        assert len(got) == data.count(b"5") and source.lost is None
        assert [p.index for p in got] == list(range(len(got)))
        assert all(a.t <= b.t for a, b in zip(got, got[1:]))
    finally:
        source.close()
        os.close(master)
        os.close(slave)
