"""PsychoPy's own scanner emulator (SyncGenerator) as a trigger source, in a real window."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from experiment.clock import psychopy_clock
from experiment.errors import HardwareError, InputError
from experiment.protocol.specs import SimDriver, SimSpec
from experiment.scanner.factory import open_trigger_source
from experiment.scanner.sim_scanner import ScannerPlan
from experiment.scanner.startgate import StartGate, wait_for_t0
from experiment.scanner.syncgen_source import SyncGenSource, load_sync_generator

pytestmark = pytest.mark.display


@pytest.fixture(scope="module")
def window(xdisplay):
    try:
        load_sync_generator()
    except HardwareError as exc:  # a missing dependency must not pass as a skip
        pytest.fail(f"{exc} (it is a test dependency in setup.cfg)")
    from psychopy import visual

    win = visual.Window(size=(200, 150), fullscr=False, title=f"cuedpain-test-syncgen-{os.getpid()}",
                        checkTiming=False)
    win.flip()
    yield win
    win.close()


@pytest.mark.realtime
def test_syncgenerator_pulses_reach_t0_after_its_skipped_and_discarded_volumes(window) -> None:
    clock = psychopy_clock()
    plan = ScannerPlan(tr_s=0.1, n_volumes=8, prep_scans_no_pulse=2, discard_pulses=2)
    source = open_trigger_source(SimSpec(SimDriver.SYNCGEN), clock=clock, win=window, dry_run=True, plan=plan)
    assert isinstance(source, SyncGenSource) and source.reads_keyboard and source.simulated
    opened = clock.now()
    typist = subprocess.Popen(["xdotool", "-"], stdin=subprocess.PIPE, text=True)
    try:
        gate = StartGate(2, scanner_discarded=2)
        seen: list = []
        t0 = wait_for_t0(source, gate, clock=clock, timeout_s=2.0, should_abort=lambda: False,
                         on_status=lambda s: None, on_pulse=lambda p, v: seen.append((p, v)), pump=window.flip)
        typist.communicate(f"windowfocus --sync {int(window.winHandle._window)}\nkey --delay 0 2\n", timeout=5)
        deadline = clock.now() + 3
        keys: list = []
        while (len(seen) < 10 or not keys) and clock.now() < deadline:
            seen += [(p, gate.feed(p)) for p in source.poll()]
            keys += source.poll_keys()
            window.flip()
    finally:
        source.close()
    assert not source.running
    assert [v for _, v in seen] == [None, None, 0, 1, 2, 3, 4, 5, 6, 7]
    assert {p.source for p, _ in seen} == {"syncgenerator"}
    times = np.array([p.t for p, _ in seen])
    # the emulator skips 2 volumes silently, then stamps each key at injection
    assert times[0] - opened == pytest.approx(2 * 0.1, abs=0.05)
    assert t0 == times[2]
    intervals = np.diff(times)  # the emulator's thread can be held up by others: no gap or extra, though
    assert np.median(np.abs(intervals - 0.1)) < 0.01 and ((intervals > 0.05) & (intervals < 0.15)).all()
    assert [k for k, _ in keys] == ["2"]  # a button pressed meanwhile stays a response


def test_syncgenerator_cannot_jitter_or_drop(window) -> None:
    with pytest.raises(InputError, match="SyncGenerator sends one pulse per TR without jitter or drops"):
        SyncGenSource(window, clock=psychopy_clock(), plan=ScannerPlan(tr_s=1.0, n_volumes=5, jitter_s=0.01))


def test_a_missing_emulator_plugin_is_named(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "psychopy_mri_emulator", None)  # as if not installed
    with pytest.raises(HardwareError, match="pip install psychopy-mri-emulator"):
        load_sync_generator()
