"""The serial trigger source through a real pseudo-terminal: timestamps and their
latency, the bit-coded rising edge, exclusive opening, a lost port and a full queue.
The `serial:PORT[:PRESET]` grammar is tested in tests/test_specs.py."""

from __future__ import annotations

import os

import numpy as np
import pytest

from experiment.clock import RealClock
from experiment.errors import DeviceFault, HardwareError
from experiment.protocol.specs import PRESETS, parse_preset
from experiment.scanner.serial_source import SerialSource, TriggerDecoder
from experiment.scanner.sim_scanner import PtyScanner, ScannerPlan


def _collect(source: SerialSource, n: int, clock: RealClock, timeout_s: float = 5.0) -> list:
    """Poll until `n` pulses came or the timeout passed (a condition wait)."""
    got: list = []
    deadline = clock.now() + timeout_s
    while len(got) < n and clock.now() < deadline:
        got.extend(source.poll())
        clock.sleep(0.005)  # RealClock spins (holding the GIL) for the last 2 ms of any sleep
    return got


# -- the decoder (pure) --

def test_bitwise_decoder_counts_rising_edges_only() -> None:
    dec = TriggerDecoder(PRESETS["forp-bitwise"])
    # held trigger repeats at 800 Hz; a button (0x01) with the trigger is one more edge
    assert dec.feed(bytes([0x10, 0x10, 0x10, 0x00, 0x01, 0x11, 0x10, 0x00, 0x10])) == 3
    assert dec.feed(bytes([0x10])) == 0  # still held across reads: no new edge
    assert dec.feed(bytes([0x02, 0x12])) == 1


def test_ascii_decoder_ignores_buttons_and_counts_them() -> None:
    dec = TriggerDecoder(parse_preset("syncbox"))
    assert dec.feed(b"sabsscd") == 3 and dec.other_bytes == 4


# -- through a real pseudo-terminal --

@pytest.mark.realtime
def test_pulses_through_a_pty_are_stamped_on_arrival(pty_pair) -> None:
    master, path, _ = pty_pair
    clock = RealClock()
    source = SerialSource(path, clock=clock, preset=PRESETS["syncbox"])
    source.open()
    plan = ScannerPlan(tr_s=0.01, n_volumes=150, start_delay_s=0.05)
    scanner = PtyScanner(plan, master, clock=clock, payload=b"s")
    try:
        scanner.start()
        assert scanner.done.wait(10) and scanner.error is None
        pulses = _collect(source, plan.n_volumes, clock)
    finally:
        scanner.stop()
        source.close()
    assert [p.index for p in pulses] == list(range(plan.n_volumes))
    assert {p.source for p in pulses} == {"serial"}
    latency = np.array([p.t for p in pulses]) - np.array(scanner.sent)
    print(f"serial pty latency (writer stamp -> logged): median {np.median(latency) * 1e3:.3f} ms, "
          f"p99 {np.percentile(latency, 99) * 1e3:.3f} ms, max {latency.max() * 1e3:.3f} ms, n={len(latency)}")
    assert (latency >= 0).all()  # stamped after the byte was sent, never before
    assert np.median(latency) < 0.002 and latency.max() < 0.05
    assert source.describe()["low_latency"] is False  # a pty refuses low-latency mode; recorded


@pytest.mark.realtime
def test_bitwise_box_on_a_pty_gives_one_pulse_per_rising_edge(pty_pair) -> None:
    master, path, _ = pty_pair
    clock = RealClock()
    source = SerialSource(path, clock=clock, preset=parse_preset("forp-bitwise"))
    source.open()
    plan = ScannerPlan(tr_s=0.02, n_volumes=20, start_delay_s=0.02)
    # the box repeats the held trigger bit, then reports the release, with a button in between
    scanner = PtyScanner(plan, master, clock=clock, payload=bytes([0x10, 0x10, 0x11, 0x01, 0x00]))
    try:
        scanner.start()
        assert scanner.done.wait(5)
        pulses = _collect(source, 20, clock)
        assert source.poll() == []
    finally:
        scanner.stop()
        source.close()
    assert len(pulses) == 20
    assert source.other_bytes == 40  # 0x01 and 0x00 of each pulse


def test_a_port_that_cannot_be_opened_is_a_hardware_error() -> None:
    source = SerialSource("/dev/cuedpain-no-such-port", clock=RealClock(), preset=PRESETS["forp"])
    with pytest.raises(HardwareError, match=r"cannot open trigger port '/dev/cuedpain-no-such-port' "
                                            r"\(forp \(byte 0x35 at 19200 baud\)\): .*No such file"):
        source.open()


def test_the_port_is_opened_exclusively(pty_pair) -> None:
    _, path, _ = pty_pair
    first = SerialSource(path, clock=RealClock(), preset=PRESETS["forp"])
    first.open()
    try:
        with pytest.raises(HardwareError, match=f"cannot open trigger port '{path}'"):
            SerialSource(path, clock=RealClock(), preset=PRESETS["forp"]).open()
    finally:
        first.close()


@pytest.mark.realtime
def test_a_lost_port_is_reported_by_poll_after_the_pulses_read_before(pty_pair) -> None:
    master, path, _ = pty_pair
    clock = RealClock()
    source = SerialSource(path, clock=clock, preset=PRESETS["forp"])
    source.open()
    try:
        os.write(master, b"55")
        assert len(_collect(source, 2, clock)) == 2
        os.close(master)  # the box is unplugged
        deadline = clock.now() + 5
        while source.lost is None and clock.now() < deadline:
            clock.sleep(0.005)
        with pytest.raises(DeviceFault, match=f"trigger port '{path}' lost during the run"):
            source.poll()
    finally:
        source.close()


@pytest.mark.realtime
def test_a_full_queue_is_loud_not_silent(pty_pair) -> None:
    master, path, _ = pty_pair
    clock = RealClock()
    source = SerialSource(path, clock=clock, preset=PRESETS["forp"], capacity=5)
    source.open()
    try:
        os.write(master, b"5" * 12)
        deadline = clock.now() + 5
        while source.dropped < 7 and clock.now() < deadline:
            clock.sleep(0.005)
        assert source.dropped == 7
        with pytest.raises(DeviceFault, match=r"7 item\(s\) dropped because the queue of 5 was full"):
            source.poll()
    finally:
        source.close()
