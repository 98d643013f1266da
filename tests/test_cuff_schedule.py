"""Cuff commands on time: a scheduler thread writes them at their planned times whatever the
frame loop is doing, through the supervisor's checks; a queued emergency vent wins."""

from __future__ import annotations

import threading
import time

import pytest

from experiment.clock import RealClock
from experiment.errors import AbortError
from experiment.procedures.run.cuffschedule import CuffScheduler
from tests.test_cuff_safety import Rig


def test_a_command_goes_out_at_its_planned_time_while_the_frame_loop_is_busy() -> None:
    clock = RealClock()
    written: list[tuple[float, float]] = []
    with CuffScheduler(clock) as sch:
        planned = clock.now() + 0.1
        sch.schedule(3, planned, lambda t: written.append((t, clock.now())))
        t_busy = clock.now()
        while clock.now() < t_busy + 0.3:   # a frame loop stuck in its own work (holding the GIL at times)
            sum(range(1000))
        sch.check()
    assert len(written) == 1 and written[0][0] == planned
    assert 0 <= written[0][1] - planned < 0.02       # on time, not when the loop came back (+0.2 s)
    assert sch.handed == {3}


def test_an_error_is_raised_in_the_loop_and_nothing_more_is_sent() -> None:
    clock = RealClock()
    written: list[int] = []

    def refused(t: float) -> None:
        raise AbortError("refused", reason="safety")

    with CuffScheduler(clock) as sch:
        now = clock.now()
        sch.schedule(1, now + 0.01, refused)
        sch.schedule(2, now + 0.05, lambda t: written.append(2))
        time.sleep(0.15)
        with pytest.raises(AbortError, match="refused"):
            sch.check()
    assert written == []


def test_cancel_drops_what_is_queued_and_waits_for_a_command_being_written() -> None:
    clock = RealClock()
    started, release = threading.Event(), threading.Event()
    finished: list[str] = []

    def slow(t: float) -> None:
        started.set()
        release.wait(1.0)
        finished.append("slow")

    with CuffScheduler(clock) as sch:
        now = clock.now()
        sch.schedule(1, now, slow)
        sch.schedule(2, now + 0.2, lambda t: finished.append("late"))
        assert started.wait(2.0)
        threading.Timer(0.05, release.set).start()
        sch.cancel()                       # returns only once `slow` is done
        assert finished == ["slow"]
        time.sleep(0.3)
    assert finished == ["slow"]            # the cancelled one never ran


def test_a_queued_emergency_vent_wins_over_a_scheduled_stimulus() -> None:
    """Headless (virtual clock): the scheduler runs from clock timers; the supervisor refuses
    the scheduled SET because a vent is queued, and no SET reaches the device."""
    rig = Rig()
    with CuffScheduler(rig.clock) as sch:
        t = rig.clock.now() + 1.0
        sch.schedule(5, t, lambda planned_t: rig.sup.stimulate(20.0, 5.0, tag=5, planned_t=planned_t))
        rig.sup.emergency_vent("sigterm")            # queued before the stimulus' time
        rig.clock.sleep_until(t + 0.5)
        with pytest.raises(AbortError):
            sch.check()
    assert not [r for r in rig.kinds("cuff_cmd") if r["command"].startswith("SET")]
    assert rig.vents() and ("sigterm", "vent") in rig.safety()


def test_a_scheduled_stimulus_is_logged_with_its_planned_time_next_to_its_write() -> None:
    rig = Rig()
    with CuffScheduler(rig.clock) as sch:
        t = rig.clock.now() + 1.0
        sch.schedule(5, t, lambda planned_t: rig.sup.stimulate(20.0, 5.0, tag=5, planned_t=planned_t))
        rig.clock.sleep_until(t + 0.1)
        sch.check()
    sets = [r for r in rig.kinds("cuff_cmd") if r["command"].startswith(("SET", "RATE"))]
    assert sets and all(r["planned_t"] == t and r["i"] == 5 for r in sets)
    assert all(r["t_write"] >= t for r in sets)
