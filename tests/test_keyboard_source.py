"""Keyboard triggers through real X key events (XTEST, typed by xdotool) into a real
PsychoPy window under Xvfb, with both backends; button-box keys stay responses."""

from __future__ import annotations

import os
import shutil
import subprocess

import numpy as np
import pytest

from experiment.clock import VirtualClock, psychopy_clock
from experiment.errors import InputError
from experiment.protocol.specs import SimDriver, SimSpec
from experiment.scanner.factory import open_trigger_source
from experiment.scanner.keyboard_source import KeyboardSource
from experiment.scanner.sim_scanner import DrivenSource, ScannerPlan, XdotoolScanner

pytestmark = pytest.mark.display


@pytest.fixture(scope="module")
def window(xdisplay):
    if shutil.which("xdotool") is None:
        pytest.fail("xdotool is not installed (apt-get install xdotool)")
    from psychopy import visual

    win = visual.Window(size=(200, 150), fullscr=False, title=f"cuedpain-test-keyboard-{os.getpid()}",
                        checkTiming=False)
    win.flip()
    yield win
    win.close()


class Typist:
    """A persistent `xdotool -` that types keys into the focused window."""

    def __init__(self, win, clock) -> None:
        self.clock = clock
        self.proc = subprocess.Popen(["xdotool", "-"], stdin=subprocess.PIPE, text=True, bufsize=1)
        self.send(f"windowfocus --sync {int(win.winHandle._window)}")

    def send(self, line: str) -> float:
        t = self.clock.now()
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        return t

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(5)


def _drain(source: KeyboardSource, clock, n_pulses: int, n_keys: int, win=None, timeout_s: float = 3.0):
    pulses, keys = [], []
    deadline = clock.now() + timeout_s
    while (len(pulses) < n_pulses or len(keys) < n_keys) and clock.now() < deadline:
        pulses += source.poll()
        keys += source.poll_keys()
        if win is not None:
            win.flip()
        clock.sleep(0.005)
    return pulses, keys


def test_keys_are_split_into_pulses_and_responses_in_order() -> None:
    typed = [("5", 1.0), ("1", 1.1), ("5", 2.0), ("escape", 2.2), ("t", 2.3)]
    batches = [typed[:2], [], typed[2:]]
    source = KeyboardSource(clock=VirtualClock(), trigger_keys=("5",), reader=lambda: batches.pop(0) if batches else [])
    source.open()
    first = source.poll()
    assert [(p.index, p.t, p.source) for p in first] == [(0, 1.0, "keyboard")]
    source.poll()
    assert [(p.index, p.t) for p in source.poll()] == [(1, 2.0)]
    assert source.poll_keys() == [("1", 1.1), ("escape", 2.2), ("t", 2.3)]


@pytest.mark.realtime
def test_ptb_backend_stamps_each_x_key_event_and_keeps_buttons_as_responses(window) -> None:
    clock = psychopy_clock()
    source = KeyboardSource(window, clock=clock, trigger_keys=("5",), backend="ptb")
    source.open()
    typist = Typist(window, clock)
    try:
        sent_5 = [typist.send("key --delay 0 5")]
        for key in ("1", "2"):
            typist.send(f"key --delay 0 {key}")
        clock.sleep(0.04)
        sent_5.append(typist.send("key --delay 0 5"))
        for key in ("3", "4", "t"):
            typist.send(f"key --delay 0 {key}")
        clock.sleep(0.1)  # nobody polls meanwhile: the stamps must still be the events' own
        pulses, keys = _drain(source, clock, 2, 5)
    finally:
        typist.close()
        source.close()
    assert [p.index for p in pulses] == [0, 1]
    assert [k for k, _ in keys] == ["1", "2", "3", "4", "t"]
    lag = np.array([p.t for p in pulses]) - np.array(sent_5)
    print(f"ptb key stamp - xdotool send: {np.round(lag * 1e3, 3)} ms")
    assert ((lag > 0) & (lag < 0.05)).all()  # stamped on arrival, not when polled 0.1 s later
    assert pulses[1].t - pulses[0].t == pytest.approx(sent_5[1] - sent_5[0], abs=0.02)
    assert all(t1 < t2 for (_, t1), (_, t2) in zip(keys, keys[1:]))


@pytest.mark.realtime
def test_event_backend_reads_keys_typed_into_the_focused_window(window) -> None:
    clock = psychopy_clock()
    source = KeyboardSource(window, clock=clock, trigger_keys=("t",), backend="event")
    source.open()
    typist = Typist(window, clock)
    try:
        sends = [typist.send(f"key --delay 0 {key}") for key in ("t", "1", "t", "4")]
        pulses, keys = _drain(source, clock, 2, 2, win=window)
    finally:
        typist.close()
        source.close()
    assert [p.index for p in pulses] == [0, 1] and [k for k, _ in keys] == ["1", "4"]
    lag = np.array([p.t for p in pulses]) - np.array([sends[0], sends[2]])
    # stamped when pyglet dispatched the event: late by up to one poll (5 ms) plus a flip
    assert ((lag > 0) & (lag < 0.1)).all(), lag


@pytest.mark.realtime
def test_simulated_scanner_types_pulses_at_planned_times(window) -> None:
    clock = psychopy_clock()
    plan = ScannerPlan(tr_s=0.05, n_volumes=40, dropped=(7,), start_delay_s=0.1)
    source = open_trigger_source(SimSpec(SimDriver.KEYBOARD), clock=clock, win=window, dry_run=True, plan=plan)
    assert isinstance(source, DrivenSource) and isinstance(source.driver, XdotoolScanner) and source.reads_keyboard
    try:
        assert source.driver.done.wait(10) and source.driver.error is None
        pulses, _ = _drain(source.source, clock, 39, 0)
        sent = list(source.driver.sent)
        start_t = source.driver.start_t
    finally:
        source.close()
    # on a mismatch, say when each key came and each pulse was typed (relative to the driver's
    # start), so a stray or doubled key can be told from a lost one
    assert len(pulses) == 39, (f"{len(pulses)} pulses read for {len(sent)} typed; read at "
                               f"{[round(p.t - start_t, 4) for p in pulses]}, typed at "
                               f"{[round(t - start_t, 4) for t in sent]}")
    lag = np.array([p.t for p in pulses]) - np.array(sent)
    print(f"xdotool typing latency (pipe write -> PTB key stamp): median {np.median(lag) * 1e3:.3f} ms, "
          f"p99 {np.percentile(lag, 99) * 1e3:.3f} ms, max {lag.max() * 1e3:.3f} ms, n={len(lag)}")
    assert np.median(lag) < 0.005 and (lag > 0).all()
    late = np.array(sent) - (start_t + plan.pulse_times_s())
    # the driver kept the plan (a busy 2-core machine may delay a single pulse)
    assert np.median(late) < 0.001 and late.min() >= 0 and late.max() < 0.05


def test_a_run_clock_on_another_time_base_is_refused(window) -> None:
    source = KeyboardSource(window, clock=VirtualClock(), trigger_keys=("5",), backend="ptb")
    with pytest.raises(InputError, match=r"keyboard trigger times are on psychopy.clock.getTime but the run clock "
                                         r"\(virtual\) differs"):
        source.open()
