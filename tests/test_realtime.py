"""No stalls: simulated devices of a dry run in processes of their own that die with the run,
garbage collection only where there is room, the priority asked for and logged."""

from __future__ import annotations

import gc
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from experiment.clock import RealClock
from experiment.cuff.factory import open_cuff
from experiment.errors import HardwareError
from experiment.protocol.specs import SIM_CUFF
from experiment.scanner.serial_source import PRESETS, SerialSource
from experiment.scanner.sim_process import ProcessScanner
from experiment.station.realtime import Realtime

REPO = Path(__file__).resolve().parents[1]


def _gone(pid: int, timeout_s: float) -> bool:
    """The process ended (gone, or a zombie nobody reaped) within `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
        except FileNotFoundError:
            return True
        if state in ("Z", "X"):
            return True
        time.sleep(0.05)
    return False


def test_a_dry_runs_cuff_is_served_by_a_child_process_and_its_close_is_checked() -> None:
    cuff = open_cuff(SIM_CUFF, clock=RealClock(), dry_run=True)
    try:
        assert cuff.info is not None and cuff.info.simulated
        assert not [t for t in threading.enumerate() if t.name.startswith("sim-cuff")]   # no server thread here
        cuff.status()
    finally:
        cuff.close()   # SIGTERM, joined, exit code 0 checked (a HardwareError otherwise)


@pytest.mark.parametrize("which", ["cuff", "scanner"])
def test_a_simulated_device_process_dies_with_its_run(which: str) -> None:
    """SIGKILL the 'run' (a Python process that started the device): the device's process
    ends by itself within a second or so, with no one left to tell it."""
    start = {"cuff": "from experiment.cuff.simserver import start_sim_process\n"
                     "child = start_sim_process()\npid = child.proc.pid\n",
             "scanner": "from experiment.clock import RealClock\n"
                        "from experiment.scanner.sim_process import ProcessScanner\n"
                        "child = ProcessScanner([1.0, 2.0], clock=RealClock(), start_delay_s=0.5)\n"
                        "child.start()\npid = child._proc.pid\n"}[which]
    script = textwrap.dedent(start) + "print(pid, flush=True)\nimport time\ntime.sleep(60)\n"
    run = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                           env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        assert run.stdout is not None
        child_pid = int(run.stdout.readline())
        assert not _gone(child_pid, 0.3)          # alive while its run is
        run.send_signal(signal.SIGKILL)
        run.wait(5)
        assert _gone(child_pid, 3.0), f"the simulated {which}'s process outlived its run"
    finally:
        if run.poll() is None:
            run.kill()
            run.wait(5)
        if run.stdout is not None:
            run.stdout.close()


def test_the_scanner_process_writes_pulses_on_plan_into_a_pty_read_by_the_serial_source() -> None:
    clock = RealClock()
    scanner = ProcessScanner([0.0, 0.1, 0.2, 0.3], clock=clock, start_delay_s=0.3)
    source = SerialSource(scanner.port, clock=clock, preset=PRESETS["forp"], name="sim")
    source.open()
    try:
        scanner.start()
        assert scanner.start_t is not None
        deadline = time.monotonic() + 5
        pulses: list[float] = []
        while len(pulses) < 4 and time.monotonic() < deadline:
            pulses += [p.t for p in source.poll()]
            time.sleep(0.01)
        sent = scanner.sent
        assert len(pulses) == len(sent) == 4
        for k, t_sent in enumerate(sent):   # on plan (the child has a core of its own or shares one)
            assert t_sent == pytest.approx(scanner.start_t + 0.1 * k, abs=0.02)
        assert all(0 <= p - s < 0.05 for p, s in zip(pulses, sent))   # sent, then stamped on arrival
        assert scanner.error is None
        scanner.stop()
    finally:
        source.close()
        scanner.close()   # joined; exit code 0 checked


def test_the_scanner_process_sleeps_between_pulses_instead_of_spinning() -> None:
    """Pulses 1 s apart: the child may spin only the last 2 ms before each one. (It once fell
    through its capped 0.1 s wait into the busy-wait and spun most of every interval.)"""
    clock = RealClock()
    scanner = ProcessScanner([0.0, 1.0, 2.0], clock=clock, start_delay_s=0.2)
    try:
        pid = scanner._proc.pid
        scanner.start()
        cpu_before = _cpu_s(pid)
        time.sleep(2.0)
        used_s = _cpu_s(pid) - cpu_before
        assert len(scanner.sent) >= 2
        assert used_s < 0.3, f"the simulated scanner used {used_s:.2f} s of CPU in 2 s"
        scanner.stop()
    finally:
        scanner.close()


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_a_scanner_process_that_died_is_said_at_poll_and_at_close() -> None:
    scanner = ProcessScanner([5.0], clock=RealClock(), start_delay_s=0.1)
    scanner._proc.kill()   # the test's stand-in for a crash of the child
    scanner._proc.join(5)
    assert isinstance(scanner.error, HardwareError)
    with pytest.raises(HardwareError, match="ended with exit code -9"):
        scanner.close()


def test_realtime_freezes_collects_only_with_room_and_restores() -> None:
    records: list[dict[str, object]] = []
    now = [0.0]
    assert gc.isenabled()
    switch_before = sys.getswitchinterval()
    with Realtime(now=lambda: now[0], log=records.append, min_slack_s=0.5, min_interval_s=5.0) as rt:
        assert not gc.isenabled() and gc.get_freeze_count() > 0
        kinds = [r["kind"] for r in records]
        assert kinds == ["gc", "priority"] and records[0]["action"] == "freeze"
        prio = records[1]
        assert isinstance(prio["obtained"], bool) and ("nice" in prio or "message" in prio)
        assert sys.getswitchinterval() == prio["switch_interval_s"] < switch_before   # threads get the lock sooner
        now[0] = 10.0
        rt.idle(0.2)                       # too little room before the next event
        rt.idle(2.0, quiet=False)          # a rating scale on screen
        assert rt.collections == 0
        rt.idle(2.0)
        assert rt.collections == 1 and records[-1]["action"] == "collect"
        assert isinstance(records[-1]["duration_s"], float) and records[-1]["slack_s"] == 2.0
        now[0] = 12.0
        rt.idle(2.0)                       # too soon after the last one
        assert rt.collections == 1
    assert gc.isenabled() and gc.get_freeze_count() == 0 and sys.getswitchinterval() == switch_before
    if prio["obtained"]:
        assert os.nice(0) == prio["nice_before"]   # the priority was put back


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="a niceness per thread is Linux's")
def test_realtime_raises_every_thread_not_only_the_calling_one() -> None:
    """On Linux os.nice changes only the calling thread: a reader thread started before the run
    would stay behind and, holding the interpreter lock while preempted, stall the frame loop."""
    started, stop = threading.Event(), threading.Event()
    ids: list[int] = []

    def reader() -> None:
        ids.append(threading.get_native_id())
        started.set()
        stop.wait(10)

    worker = threading.Thread(target=reader, name="reader-before-the-run", daemon=True)
    worker.start()
    started.wait(5)
    before = os.getpriority(os.PRIO_PROCESS, ids[0])
    records: list[dict[str, object]] = []
    try:
        with Realtime(now=lambda: 0.0, log=records.append):
            prio = records[1]
            if not prio["obtained"]:
                pytest.skip(f"this process may not raise its priority: {prio['message']}")
            assert os.getpriority(os.PRIO_PROCESS, ids[0]) == prio["nice"] < before
            assert isinstance(prio["threads"], int) and prio["threads"] >= 2
        assert os.getpriority(os.PRIO_PROCESS, ids[0]) == before   # put back
    finally:
        stop.set()
        worker.join(5)
