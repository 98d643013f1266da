"""Cuff commands on time: a scheduler thread writes them at their planned times whatever the
frame loop is doing, through the supervisor's checks; a queued emergency vent wins."""

from __future__ import annotations

import os
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from experiment.clock import RealClock
from experiment.errors import AbortError
from experiment.procedures.run.cuffschedule import CuffScheduler
from experiment.station.realtime import Realtime
from tests.test_cuff_safety import Rig

DEMO = Path(__file__).resolve().parents[1] / "protocols" / "demo.yaml"


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


def _headless_run(tmp_path: Path, protocol: Path) -> tuple[list[dict[str, Any]], dict[int, dict[str, Any]]]:
    from experiment.cli import main
    from experiment.log.eventlog import read_log

    data = tmp_path / "data"
    assert main(["run", str(protocol), "--participant", "P1", "--dry-run", "--headless", "--data", str(data)]) == 0
    log = read_log(next(data.glob("sourcedata/sub-P1/*/log.jsonl")))
    onsets = {r["i"]: r for r in log.of_kind("onset")}
    return list(log.records), onsets


def test_a_runs_cuff_commands_are_written_at_their_planned_times_not_their_flips(tmp_path: Path) -> None:
    records, onsets = _headless_run(tmp_path, DEMO)
    plans = {r["i"]: r for r in records if r.get("kind") == "plan"}
    timed = [r for r in records if r.get("kind") == "cuff_cmd" and r.get("i") is not None
             and r["command"].split()[0] in ("SET", "DEFLATE")]
    assert len(timed) == 4 and all(plans[r["i"]]["cuff_at"] == "planned" for r in timed)
    for r in timed:
        onset = onsets[r["i"]]
        assert r["planned_t"] == pytest.approx(onset["planned_t"])      # the phase's plan (re-anchored)
        assert 0 <= r["t_write"] - r["planned_t"] < 0.001                # at the plan on a virtual clock...
    assert any(onsets[r["i"]]["t"] - r["t_write"] > 0.001 for r in timed)   # ...not at the flip after it


def test_cuff_at_flip_keeps_a_command_on_its_phases_flip(tmp_path: Path) -> None:
    text = DEMO.read_text().replace("cuff: deflate, duration: 1}", "cuff: deflate, cuff_at: flip, duration: 1}")
    assert "cuff_at: flip" in text
    protocol = tmp_path / "protocols" / "demo_flip.yaml"     # its stimuli are in ../stimuli, as in the repository
    protocol.parent.mkdir()
    protocol.write_text(text)
    shutil.copytree(DEMO.parents[1] / "stimuli", tmp_path / "stimuli")
    records, onsets = _headless_run(tmp_path, protocol)
    deflates = [r for r in records if r.get("kind") == "cuff_cmd" and str(r["command"]).startswith("DEFLATE")
                and r.get("i") is not None]
    assert deflates and all(r["t_write"] >= onsets[r["i"]]["t"] for r in deflates)   # after its flip
    assert all(r["planned_t"] == pytest.approx(onsets[r["i"]]["planned_t"]) for r in deflates)


def test_a_prepare_step_runs_on_the_schedulers_thread_before_the_commands() -> None:
    clock = RealClock()
    order: list[tuple[str, str]] = []
    with CuffScheduler(clock) as sch:
        now = clock.now()
        sch.schedule(1, now + 0.05, lambda t: order.append(("set", threading.current_thread().name)))
        sch.prepare(lambda: order.append(("rate", threading.current_thread().name)))
        time.sleep(0.15)
        sch.check()
    assert order == [("rate", "cuff-scheduler"), ("set", "cuff-scheduler")]


def test_the_ramp_rate_is_preset_while_idle_and_never_during_a_stimulus() -> None:
    from experiment.errors import InputError

    rig = Rig()
    assert rig.sup.preset_rate(5.0, for_event=2) is True
    rates = [r for r in rig.kinds("cuff_cmd") if r["command"].startswith("RATE")]
    assert len(rates) == 1 and rates[0]["i"] is None and rates[0]["purpose"] == "preset rate for event 2"
    assert rig.sup.preset_rate(5.0) is True                        # already set: nothing sent
    rig.sup.stimulate(20.0, 5.0, tag=2, planned_t=rig.clock.now())
    assert len([r for r in rig.kinds("cuff_cmd") if r["command"].startswith("RATE")]) == 1   # SET alone
    assert rig.sup.preset_rate(10.0) is False                      # a ramp in progress keeps its rate
    assert len([r for r in rig.kinds("cuff_cmd") if r["command"].startswith("RATE")]) == 1
    with pytest.raises(InputError, match="ramp rate"):
        rig.sup.preset_rate(-3.0)


def test_a_runs_inflations_get_their_rate_ahead_and_their_set_on_time(tmp_path: Path) -> None:
    records, onsets = _headless_run(tmp_path, DEMO)
    cmds = [r for r in records if r.get("kind") == "cuff_cmd"]
    sets = [r for r in cmds if str(r["command"]).startswith("SET") and r.get("i") is not None]
    assert sets and not [r for r in cmds if str(r["command"]).startswith("RATE") and r.get("i") is not None]
    first_set = sets[0]
    rate = next(r for r in cmds if str(r["command"]).startswith("RATE"))
    assert rate["purpose"] == f"preset rate for event {first_set['i']}"
    assert rate["t_write"] < first_set["planned_t"] <= first_set["t_write"] < first_set["planned_t"] + 0.001


@pytest.mark.skipif(not hasattr(os, "sched_setscheduler"), reason="real-time policies are POSIX")
def test_in_a_real_time_run_the_scheduler_thread_alone_asks_for_a_real_time_policy() -> None:
    """It sleeps until a command is due, then must run at once: SCHED_FIFO for that thread only
    (when the process may), logged either way; the frame loop's thread keeps the normal policy."""
    clock = RealClock()
    records: list[dict[str, Any]] = []
    policies: list[int] = []
    with Realtime(now=clock.now, log=records.append) as rt:
        with CuffScheduler(clock, on_start=lambda: rt.promote_thread("cuff-scheduler")) as sch:
            sch.prepare(lambda: policies.append(os.sched_getscheduler(0)))
            time.sleep(0.1)
            sch.check()
    mine = [r for r in records if r["kind"] == "priority" and r.get("thread") == "cuff-scheduler"]
    assert len(mine) == 1 and mine[0]["asked"] == "SCHED_FIFO 1"
    assert policies == [os.SCHED_FIFO if mine[0]["obtained"] else os.SCHED_OTHER]
    if not mine[0]["obtained"]:
        assert "not raised" in mine[0]["message"]
    assert os.sched_getscheduler(0) == os.SCHED_OTHER
