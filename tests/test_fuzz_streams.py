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

from experiment.buttons.decoders import FORP_BUTTONS, make_decoder, xid_packet
from experiment.clock import RealClock, VirtualClock
from experiment.cuff.line_driver import LineCuff
from experiment.cuff.safety import CuffSupervisor, SafetyLimits
from experiment.cuff.simdevice import SimCuffDevice
from experiment.cuff.simserver import SimServer
from experiment.cuff.transport import LoopbackTransport, SerialTransport
from experiment.scanner.base import Pulse
from experiment.scanner.pulsecheck import PulseMonitor
from experiment.protocol.specs import PRESETS, ButtonPresetName, SerialPreset, parse_preset
from experiment.scanner.serial_source import LineSplitter, SerialSource, TriggerDecoder
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


# ---------------------------------------------------------------- button boxes (docs/buttons.md)

XID_FRAGMENTS = [xid_packet(k, pressed=p, port=port, timer_ms=ms) for k in (1, 3, 7, 8) for p in (True, False)
                 for port in (0, 2) for ms in (0, 0x35353535)]
button_bytes = st.lists(st.one_of(st.binary(max_size=40), st.sampled_from(XID_FRAGMENTS),
                                  st.sampled_from([b"1", b"2", b"3", b"4", b"5", b"6", b"k", b"9"])),
                        max_size=30).map(b"".join)
boxes = st.sampled_from([ButtonPresetName.FORP, ButtonPresetName.CEDRUS, ButtonPresetName.CUSTOM])


def _splitter(box: ButtonPresetName, with_trigger: bool) -> LineSplitter:
    return LineSplitter(TriggerDecoder(PRESETS["forp"]) if with_trigger else None,
                        make_decoder(box, {ord("a"): "1", 0xFF: "2"}))


@settings(max_examples=300, deadline=None)
@given(box=boxes, with_trigger=st.booleans(), data=button_bytes, cuts=st.lists(st.integers(0, 400), max_size=20))
def test_button_bytes_give_the_same_presses_however_they_are_chunked_and_never_raise(
        box: ButtonPresetName, with_trigger: bool, data: bytes, cuts: list[int]) -> None:
    whole_pulses, whole = _splitter(box, with_trigger).feed(data)
    split = _splitter(box, with_trigger)
    pulses, presses, unmatched = 0, [], bytearray()
    for chunk in _chunked(data, cuts):
        n, fed = split.feed(chunk)
        pulses, presses, unmatched = pulses + n, presses + fed.presses, unmatched + fed.unmatched
    assert (pulses, presses, unmatched) == (whole_pulses, whole.presses, whole.unmatched)
    names = set(FORP_BUTTONS.values()) if box is ButtonPresetName.FORP else {"1", "2"}
    assert all(p.button in names or (box is ButtonPresetName.CEDRUS and p.button[0] in "0123456789p")
               for p in presses)
    # every byte is accounted for: a pulse, part of a press, unmatched, or an XID release / half packet
    assert pulses + sum(len(p.raw) for p in presses) + len(unmatched) <= len(data)
    if box is not ButtonPresetName.CEDRUS and not with_trigger:
        assert len(presses) + len(unmatched) == len(data)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(box=boxes, data=button_bytes, cuts=st.lists(st.integers(0, 400), max_size=10))
def test_button_bytes_never_move_the_cuff_in_a_run(box: ButtonPresetName, data: bytes, cuts: list[int]) -> None:
    """Fuzzed presses reach a headless trial loop as keys, a frame at a time: the cuff is commanded
    exactly as planned (or not at all after a stop), never by a press; a run ends only in order."""
    from experiment.errors import AbortError
    from experiment.procedures.run.trialloop import LoopHooks, TrialLoop
    from experiment.protocol.schedule import build_schedule
    from experiment.station.display import SimulatedDisplay
    from tests.protocol_samples import DELETE, edited, load_dict, protocol_from

    # the pain phase timed from its onset: this loop has no cuff to report the target reached
    protocol = protocol_from(edited(load_dict(), **{"trial_types.pain.phases[1].timed_from": DELETE}))
    timeline = build_schedule(protocol, seed=1)
    clock = VirtualClock(start=1000.0)
    display = SimulatedDisplay(clock, refresh_hz=60.0)
    split = _splitter(box, True)
    chunks = _chunked(data, cuts)
    commands: list[tuple[str, int]] = []
    vents: list[str] = []

    def poll_keys() -> list[tuple[str, float]]:
        if not chunks:
            return []
        _, fed = split.feed(chunks.pop(0))
        return [(p.button, clock.now()) for p in fed.presses]

    hooks = LoopHooks(poll_pulses=lambda: None, poll_keys=poll_keys, check_safety=lambda now: None,
                      stimulate=lambda i, kpa, rate, planned_t: commands.append(("inflate", i)),
                      deflate=lambda i, planned_t: commands.append(("deflate", i)), status=lambda *a: None,
                      vent=vents.append)
    keys = protocol.keys
    loop = TrialLoop(timeline=timeline.events, t0=clock.now(), run_end_s=timeline.run_length_s, clock=clock,
                     display=display, hooks=hooks, log=lambda rec: None,
                     rating_scales={n: _scale(keys) for n in protocol.scales},
                     key_roles={keys.escape: "escape", keys.stop: "stop", keys.left: "response",
                                keys.right: "response", keys.confirm: "response"})
    try:
        loop.run()
        stopped = False
    except AbortError as exc:
        assert exc.reason == "participant_stop_key"     # the only way a box's press ends a run: its stop key
        stopped = True
    planned = [(e.cuff, e.index) for e in timeline.events if e.cuff in ("inflate", "deflate")]
    assert commands == planned[:len(commands)] and (stopped or commands == planned)
    assert vents == (["participant stop key"] if stopped else [])


def _scale(keys: Any) -> Any:
    from experiment.station.rating import RatingScale

    return RatingScale(left_key=keys.left, right_key=keys.right, confirm_key=keys.confirm)


def test_button_bytes_through_a_real_serial_line_never_stop_the_shared_reader() -> None:
    master, slave = os.openpty()
    tty.setraw(slave)
    source = SerialSource(os.ttyname(slave), clock=RealClock(), preset=PRESETS["forp"],
                          buttons=make_decoder(ButtonPresetName.CEDRUS))
    data = bytes(range(256)) * 4 + b"".join(XID_FRAGMENTS) + b"5"
    try:
        source.open()
        for i in range(0, len(data), 37):
            os.write(master, data[i:i + 37])
        pulses: list[Pulse] = []
        presses: list[Any] = []
        n_unmatched = [0]

        def done() -> bool:
            pulses.extend(source.poll())
            presses.extend(source.poll_buttons())
            u = source.take_unmatched()
            n_unmatched[0] += 0 if u is None else u.n
            return bool(pulses) and pulses[-1].index >= 4 and len(presses) >= 16
        assert wait_for(done, 3.0) and source.lost is None
        assert sum(1 for p in presses if p.device_ms == 0x35353535) >= 8 and n_unmatched[0] > 0
    finally:
        source.close()
        os.close(master)
        os.close(slave)
