"""CuffSupervisor: one fault-injection test (at least) per interlock.

Logic runs on a virtual clock through the in-process loopback (fast, deterministic);
what depends on real time and real processes (heartbeat thread, SIGKILL, vent latency,
a pulled cable) runs over real pseudo-terminals.
"""

from __future__ import annotations

import os
import signal
import statistics
import subprocess
import sys
import dataclasses
import threading
from typing import Any

import pytest

from experiment.clock import RealClock, VirtualClock
from experiment.cuff import safety
from experiment.cuff.base import ArmAck, DeviceEvent, PingAck
from experiment.cuff.factory import open_cuff
from experiment.cuff.line_driver import LineCuff
from experiment.cuff.pneumatics import CuffPneumatics
from experiment.cuff.safety import CuffSupervisor, SafetyLimits
from experiment.cuff.simdevice import SimCuffDevice
from experiment.cuff.simserver import SimServer
from experiment.cuff.transport import LoopbackTransport, SerialTransport
from experiment.protocol.specs import CuffKind, CuffSpec
from experiment.errors import AbortError, DeviceFault, HardwareError, InputError
from tests.cuff_helpers import wait_for

LIMITS = SafetyLimits(ceiling_kpa=40.0, max_stimulus_s=10.0, max_run_inflated_s=60.0)


class Rig:
    """Supervisor + driver + simulated firmware on one virtual clock."""

    def __init__(self, limits: SafetyLimits = LIMITS, *, start: bool = True, **device_options: Any) -> None:
        self.clock = VirtualClock()
        self.device = SimCuffDevice(**device_options)
        self.cuff = LineCuff(LoopbackTransport(self.device, clock=self.clock), clock=self.clock)
        self.records: list[dict[str, Any]] = []
        self.samples: list[Any] = []
        self.sup = CuffSupervisor(self.cuff, clock=self.clock, limits=limits, on_record=self.records.append,
                                  on_sample=self.samples.append)
        if start:
            self.sup.start()

    def kinds(self, kind: str) -> list[dict[str, Any]]:
        return [r for r in self.records if r["kind"] == kind]

    def safety(self) -> list[tuple[str, str]]:
        return [(r["reason"], r["action"]) for r in self.kinds("safety")]

    def vents(self) -> list[str]:
        return [reason for _, reason in self.device.vent_log]

    def sleep(self, s: float) -> None:
        self.clock.sleep(s)


# ---------------------------------------------------------------- 1. ceilings

def test_protocol_max_above_the_hard_limit_is_refused_at_start() -> None:
    rig = Rig(SafetyLimits(ceiling_kpa=70, max_stimulus_s=10, max_run_inflated_s=60), start=False,
              hard_limit_kpa=60)
    with pytest.raises(HardwareError, match="maximum pressure 70 kPa exceeds the hard limit 60 kPa of the cuff"):
        rig.sup.start()
    assert rig.device.state == "IDLE" and rig.device.armed_max_kpa == 0.0


def test_the_device_is_armed_with_the_ceiling_and_its_own_limits_are_set() -> None:
    rig = Rig(SafetyLimits(ceiling_kpa=41.27, max_stimulus_s=20, max_run_inflated_s=60, watchdog_ms=800))
    assert rig.device.armed_max_kpa == 41.2          # rounded down, never up
    assert rig.device.watchdog_ms == 800
    sent = [r["command"] for r in rig.kinds("cuff_cmd")]
    assert sent == ["STATUS?", "WDT 800", "MAXTIME 20500", "ARM 41.2", "STREAM 25"]


def test_a_target_over_the_ceiling_is_refused_before_anything_is_sent() -> None:
    clock = RealClock()
    server = SimServer(SimCuffDevice(), clock=clock)
    sup = CuffSupervisor(open_cuff(CuffSpec(CuffKind.LINE, server.path), clock=clock, dry_run=False), clock=clock,
                         limits=LIMITS)
    try:
        sup.start()
        seen = len(server.rx_log)
        with pytest.raises(InputError, match="target 40.1 kPa is above the ceiling 40 kPa; refused, nothing was sent"):
            sup.stimulate(40.1, 10.0)
        with pytest.raises(InputError, match="ramp rate must be 0.1-100 kPa/s"):
            sup.stimulate(20, 150.0)
        sup.cuff.ping()                      # a fence: everything sent before it has arrived
        after = b"".join(data for _, data in server.rx_log[seen:])
        assert b"SET" not in after and b"RATE" not in after
        assert server.device.state == "ARMED" and server.device.pressure_kpa == 0.0
    finally:
        sup.close()
        server.close()


# ---------------------------------------------------------------- 2. time limits

def test_the_host_ends_a_stimulus_at_its_time_limit() -> None:
    rig = Rig(SafetyLimits(ceiling_kpa=40, max_stimulus_s=3.0, max_run_inflated_s=60))
    rig.sup.stimulate(20, 10, tag=4)
    rig.sleep(2.9)
    assert rig.sup.safety_tripped is None and rig.device.state == "HOLD"
    rig.sleep(0.2)
    assert rig.sup.safety_tripped == "stimulus_time_limit"
    t_vent, reason = rig.device.vent_log[-1]
    assert reason == "VENT" and 3.0 <= t_vent <= 3.03
    assert rig.device.state == "ARMED"               # the host acted before the device's MAXTIME (3.5 s)
    with pytest.raises(AbortError, match="stimulate refused: safety interlock"):
        rig.sup.stimulate(20, 10)


def test_the_device_time_limit_is_a_backstop_the_host_hears() -> None:
    rig = Rig()
    rig.cuff.command("MAXTIME 1000")                 # as if the firmware enforced a shorter limit
    rig.sup.stimulate(20, 50)
    rig.sleep(1.2)
    assert rig.sup.safety_tripped == "device_time_limit"
    assert rig.vents()[:2] == ["TIME_LIMIT", "VENT"]
    assert "TIME_LIMIT" in [r["name"] for r in rig.kinds("cuff_event")]


def test_the_run_cumulative_inflated_time_is_limited() -> None:
    rig = Rig(SafetyLimits(ceiling_kpa=40, max_stimulus_s=5, max_run_inflated_s=5))
    rig.sup.stimulate(20, 20)
    rig.sleep(3.0)
    rig.sup.deflate()
    rig.sleep(3.0)
    assert rig.sup.run_inflated_s == pytest.approx(3.0, abs=0.01)
    rig.sup.stimulate(20, 20)
    rig.sleep(1.9)
    assert rig.sup.safety_tripped is None
    rig.sleep(0.2)
    assert rig.sup.safety_tripped == "run_time_limit"
    assert rig.device.vent_log[-1][1] == "VENT"


# ---------------------------------------------------------------- 3. heartbeat

def test_the_heartbeat_keeps_the_watchdog_fed_on_a_virtual_clock() -> None:
    rig = Rig(SafetyLimits(ceiling_kpa=40, max_stimulus_s=30, max_run_inflated_s=60, watchdog_ms=400))
    rig.sup.stimulate(10, 10)
    rig.sleep(10.0)
    assert rig.device.state == "HOLD"
    assert rig.sup.heartbeats == pytest.approx(100, abs=2)     # every WDT/4
    assert not [r for r in rig.kinds("cuff_cmd") if r["command"] == "PING"]  # counted, not logged


@pytest.mark.realtime
def test_the_heartbeat_thread_feeds_the_watchdog_while_the_main_thread_is_blocked() -> None:
    clock = RealClock()
    server = SimServer(SimCuffDevice(), clock=clock)
    limits = SafetyLimits(ceiling_kpa=40, max_stimulus_s=30, max_run_inflated_s=60, watchdog_ms=300)
    with CuffSupervisor(open_cuff(CuffSpec(CuffKind.LINE, server.path), clock=clock, dry_run=False), clock=clock,
                        limits=limits) as sup:
        sup.stimulate(10, 50)
        threading.Event().wait(1.5)      # a render loop stuck for 5 watchdog periods
        assert server.device.state == "HOLD"
        assert sup.heartbeats >= 12
    server.close()


@pytest.mark.realtime
def test_sigkill_of_the_controlling_process_vents_by_watchdog() -> None:
    clock = RealClock()
    server = SimServer(SimCuffDevice(), clock=clock)
    script = (
        "import sys, threading\n"
        "from experiment.clock import RealClock\n"
        "from experiment.cuff.factory import open_cuff\n"
        "from experiment.protocol.specs import CuffKind, CuffSpec\n"
        "from experiment.cuff.safety import CuffSupervisor, SafetyLimits\n"
        "clock = RealClock()\n"
        "cuff = open_cuff(CuffSpec(CuffKind.LINE, sys.argv[1]), clock=clock, dry_run=False)\n"
        "sup = CuffSupervisor(cuff, clock=clock,\n"
        "    limits=SafetyLimits(ceiling_kpa=40, max_stimulus_s=60, max_run_inflated_s=120, watchdog_ms=500))\n"
        "sup.start()\n"
        "sup.stimulate(30, 50)\n"
        "print('INFLATING', flush=True)\n"
        "threading.Event().wait()\n")
    proc = subprocess.Popen([sys.executable, "-c", script, server.path], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "INFLATING"
        assert wait_for(lambda: server.device.state == "HOLD", 5.0)
        threading.Event().wait(0.3)           # a few heartbeats in HOLD
        t_kill = clock.now()
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(5)
        assert wait_for(lambda: server.device.state == "FAULT", 2.0)
        t_vent, reason = server.device.vent_log[-1]
        assert reason == "WATCHDOG" and server.device.fault_code == 30
        print(f"\nSIGKILL -> watchdog vent after {1000 * (t_vent - t_kill):.0f} ms (WDT 500 ms)")
        # the heartbeat ran until the kill (else the vent would come earlier), and the
        # watchdog vented within its 500 ms after it
        assert 0.3 <= t_vent - t_kill <= 0.52
        assert wait_for(lambda: server.device.pressure_kpa < 1.0, 1.0)
    finally:
        proc.kill()
        proc.stdout.close()
        server.close()


# ---------------------------------------------------------------- 4. vent on every exit path

def test_normal_exit_vents_disarms_and_verifies_the_release() -> None:
    rig = Rig()
    with rig.sup:
        rig.sup.stimulate(30, 30)
        rig.sleep(2.0)
    assert rig.device.state == "IDLE" and rig.device.pressure_kpa < LIMITS.release_threshold_kpa
    close_cmds = [r["command"] for r in rig.kinds("cuff_cmd") if r["purpose"].startswith(("close", "vent: close"))]
    assert close_cmds == ["VENT", "STATUS?", "DISARM", "STATUS?", "STREAM 0"]
    assert not rig.kinds("warning")


@pytest.mark.parametrize("exc", [RuntimeError("boom"), KeyboardInterrupt()])
def test_an_exception_anywhere_vents(exc: BaseException) -> None:
    rig = Rig()
    with pytest.raises(type(exc)):
        with rig.sup:
            rig.sup.stimulate(30, 30)
            rig.sleep(1.5)
            raise exc
    vent = [r for r in rig.kinds("cuff_cmd") if r["command"] == "VENT"][-1]
    assert vent["purpose"] == f"vent: close: exception: {type(exc).__name__}: {exc}"
    assert rig.device.vent_log[-2][1] == "VENT" and rig.device.pressure_kpa < LIMITS.release_threshold_kpa


@pytest.mark.realtime
def test_emergency_vent_from_a_signal_handler_reaches_the_wire_within_100_ms_during_an_outstanding_command() -> None:
    clock = RealClock()
    server = SimServer(SimCuffDevice(), clock=clock)
    cuff = open_cuff(CuffSpec(CuffKind.LINE, server.path), clock=clock, dry_run=False, reply_timeout_s=2.0)
    sup = CuffSupervisor(cuff, clock=clock, limits=LIMITS)
    old = signal.signal(signal.SIGUSR1, lambda signum, frame: sup.emergency_vent("sigusr1"))
    latencies_ms: list[float] = []
    try:
        sup.start()
        sup.stimulate(20, 50)
        for _ in range(20):
            cuff.command("SIM DELAY 150")       # replies come 150 ms late: commands stay outstanding
            n_vents, seen = len(server.device.vent_log), len(server.rx_log)
            t_signal: list[float] = []

            def fire() -> None:
                wait_for(lambda: any(b"PING" in d for _, d in server.rx_log[seen:]), 2.0)
                t_signal.append(clock.now())
                os.kill(os.getpid(), signal.SIGUSR1)

            shooter = threading.Thread(target=fire)
            shooter.start()
            reply = cuff.command("PING")        # the main thread blocks here, like a stuck frame
            shooter.join()
            assert reply.reply.startswith("OK PING")
            assert wait_for(lambda: len(server.device.vent_log) > n_vents, 1.0)
            t_vent, reason = server.device.vent_log[n_vents]
            assert reason == "VENT"
            latencies_ms.append((t_vent - t_signal[0]) * 1000)
            cuff.command("SIM DELAY 0")
        print(f"\nVENT latency from signal to device, 20 trials: median {statistics.median(latencies_ms):.2f} ms, "
              f"max {max(latencies_ms):.2f} ms")
        assert max(latencies_ms) < 100.0
        assert sup.safety_tripped == "sigusr1"
    finally:
        signal.signal(signal.SIGUSR1, old)
        sup.close()
        server.close()


def test_emergency_vent_outside_a_run_is_harmless() -> None:
    rig = Rig(start=False)
    rig.sup.emergency_vent("early")              # not started: nothing armed, nothing queued to fail
    rig.sleep(0.1)
    rig.sup.start()
    rig.sup.close()
    rig.sup.emergency_vent("late")
    rig.sleep(0.1)
    assert rig.device.state == "IDLE"


def test_no_stimulus_goes_out_while_an_emergency_vent_is_queued() -> None:
    rig = Rig()
    rig.sup.emergency_vent("sigterm")            # a signal handler's request, not yet sent by the guard
    with pytest.raises(AbortError, match=r"refused: (an emergency vent is under way|safety interlock) \(sigterm\)"):
        rig.sup.stimulate(20, 20)
    rig.sleep(0.1)
    assert not [c for c in rig.kinds("cuff_cmd") if c["command"].startswith("SET")]
    assert rig.device.state != "INFLATING" and rig.device.pressure_kpa < 1


def test_a_stimulus_that_crosses_a_vent_on_its_way_out_is_vented_again() -> None:
    """The stop arrives after the stimulus was allowed but before its SET is written, and the
    guard's VENT reaches the wire first: the SET must be followed by another VENT."""
    rig = Rig()
    original = rig.sup._ramp

    def crossed(*args: Any) -> Any:
        rig.sup.emergency_vent("sigterm")
        rig.sleep(0.05)                          # the guard sends its VENT now, before the SET
        assert rig.sup.safety_tripped == "sigterm"
        return original(*args)

    rig.sup._ramp = crossed                      # type: ignore[method-assign]  # picks the moment only
    with pytest.raises(AbortError):
        rig.sup.stimulate(20, 20)
    sent = [c["command"].split()[0] for c in rig.kinds("cuff_cmd")]
    last_set = max(i for i, c in enumerate(sent) if c == "SET")
    assert "VENT" in sent[:last_set] and sent[-1] == "VENT" and last_set < len(sent) - 1, sent
    rig.sleep(1.0)
    assert rig.device.pressure_kpa < 1


# ---------------------------------------------------------------- 5. cable, silence, error replies

@pytest.mark.realtime
def test_a_pulled_cable_trips_and_is_never_taken_as_deflated() -> None:
    clock = RealClock()
    server = SimServer(SimCuffDevice(), clock=clock)
    records: list[dict[str, Any]] = []
    limits = SafetyLimits(ceiling_kpa=40, max_stimulus_s=30, max_run_inflated_s=60, watchdog_ms=400)
    sup = CuffSupervisor(open_cuff(CuffSpec(CuffKind.LINE, server.path), clock=clock, dry_run=False), clock=clock,
                         limits=limits, on_record=records.append)
    sup.start()
    sup.stimulate(30, 20)
    assert wait_for(lambda: (sup.last_pressure_kpa or 0) > 10, 2.0)
    server.pull_cable()
    assert wait_for(lambda: sup.safety_tripped == "connection_lost", 2.0)
    assert "connection lost" in sup.trip_message and "check the cuff" in sup.trip_message
    with pytest.raises(AbortError, match="connection_lost"):
        sup.stimulate(20, 10)
    sup.close()
    warning = [r for r in records if r["kind"] == "warning"][-1]
    assert warning["code"] == "cuff_state_unknown" and "last known" in warning["message"]
    # the device, still powered, vents by its own watchdog
    assert wait_for(lambda: server.device.state == "FAULT", 1.0)
    assert server.device.vent_log[-1][1] == "WATCHDOG"
    server.close()


def test_a_silent_device_trips_no_reply_and_its_watchdog_vents() -> None:
    rig = Rig(SafetyLimits(ceiling_kpa=40, max_stimulus_s=30, max_run_inflated_s=60, watchdog_ms=600))
    rig.sup.stimulate(20, 20)
    rig.sleep(1.5)
    rig.cuff.command("SIM SILENT 3000")
    rig.sleep(1.0)
    assert rig.sup.safety_tripped == "no_reply"
    assert "no reply within 500 ms to 'PING'" in rig.sup.trip_message
    rig.sleep(1.0)
    assert rig.device.state == "FAULT" and "WATCHDOG" in rig.vents()


def test_an_error_reply_trips_with_the_device_s_words() -> None:
    rig = Rig()
    rig.cuff.command("ARM 10")                   # the device now disagrees with the host's ceiling
    with pytest.raises(DeviceFault, match="ERR 20 OVER_LIMIT max=10.0"):
        rig.sup.stimulate(20, 10, tag=7)
    rig.sleep(0.05)
    assert rig.sup.safety_tripped == "error_reply"
    failed = [r for r in rig.kinds("cuff_cmd") if not r["ok"]]
    assert failed[0]["command"] == "SET 20.0" and failed[0]["i"] == 7 and failed[0]["reply"].startswith("ERR 20")
    assert rig.vents()[-1] == "VENT"


def test_a_device_reboot_trips() -> None:
    rig = Rig()
    rig.cuff.command("SIM REBOOT")
    rig.sleep(0.05)
    assert rig.sup.safety_tripped == "device_reboot"


# ---------------------------------------------------------------- 6. read-back

def test_device_overpressure_event_vents() -> None:
    rig = Rig()
    rig.sup.stimulate(20, 40)
    rig.sleep(1.0)
    rig.cuff.command("SIM OVERPRESSURE")
    rig.sleep(0.05)
    assert rig.sup.safety_tripped == "device_overpressure"
    assert rig.vents() == ["OVERPRESSURE", "VENT"]
    assert ("device_overpressure", "vent") in rig.safety()


def test_host_read_back_vents_above_ceiling_plus_margin() -> None:
    rig = Rig()
    rig.cuff.command("ARM 60")                   # firmware now allows more than the protocol
    rig.cuff.command("RATE 20")
    rig.cuff.command("SET 50")                   # ... and something asked for it
    rig.sleep(3.0)
    assert rig.sup.safety_tripped == "host_overpressure"
    assert rig.vents() == ["VENT"]
    assert max(s.pressure_kpa for s in rig.samples) < 43.0


def test_device_compliance_event_vents() -> None:
    rig = Rig(SafetyLimits(ceiling_kpa=40, max_stimulus_s=30, max_run_inflated_s=60, compliance_margin_s=5))
    rig.cuff.command("SIM LEAK 20")
    rig.sup.stimulate(30, 10)
    rig.sleep(5.5)
    assert rig.sup.safety_tripped == "device_compliance"
    assert rig.vents()[:2] == ["COMPLIANCE", "VENT"]


def test_host_compliance_check_vents_when_the_target_is_not_reached() -> None:
    rig = Rig(SafetyLimits(ceiling_kpa=40, max_stimulus_s=30, max_run_inflated_s=60, compliance_margin_s=0.5))
    rig.cuff.command("SIM LEAK 20")
    eta_s = rig.sup.stimulate(30, 10).eta_s
    rig.sleep(eta_s + 0.45)
    assert rig.sup.safety_tripped is None
    rig.sleep(0.1)
    assert rig.sup.safety_tripped == "host_compliance"
    assert rig.vents() == ["VENT"] and rig.device.state == "ARMED"


def test_a_normal_deflation_is_verified_without_a_trip() -> None:
    rig = Rig()
    rig.sup.stimulate(30, 20)
    rig.sleep(2.0)
    rig.sup.deflate()
    rig.sleep(10.0)
    assert rig.sup.safety_tripped is None and rig.sup.target_kpa == 0.0


class StuckValve(CuffPneumatics):
    """Fault injection in the physics: the exhaust is blocked, the cuff keeps its air."""

    def vent(self) -> None:
        self.venting = False

    def regulate(self, target_kpa: float, rate_kpa_s: float) -> None:
        if target_kpa > self.target_kpa:
            super().regulate(target_kpa, rate_kpa_s)


def test_a_deflation_that_does_not_release_trips_and_vents() -> None:
    rig = Rig(pneumatics=StuckValve())
    rig.sup.stimulate(20, 20)
    rig.sleep(2.0)
    eta_s = rig.sup.deflate().eta_s
    rig.sleep(eta_s + 1.9)
    assert rig.sup.safety_tripped is None
    rig.sleep(0.2)
    assert rig.sup.safety_tripped == "release_not_verified"
    assert "did not fall below 2 kPa" in rig.sup.trip_message
    rig.sup.close()
    assert [r["code"] for r in rig.kinds("warning")] == ["cuff_release_not_verified"]


# ---------------------------------------------------------------- participant stop, identity

def test_the_participant_button_vents_reports_a_participant_stop_and_blocks_stimulation() -> None:
    rig = Rig()
    heard: list[DeviceEvent] = []
    rig.sup.add_event_listener(heard.append)
    rig.sup.stimulate(25, 25)
    rig.sleep(1.5)
    rig.cuff.command("SIM BUTTON")
    rig.sleep(0.05)
    assert rig.sup.participant_stop_t is not None
    assert rig.sup.safety_tripped is None        # the protocol decides: end, or go on without stimulation
    assert ("participant_stop_button", "vent") in rig.safety()
    assert rig.vents() == ["ESTOP", "VENT"]
    assert [(e.name, e.fields) for e in heard if e.name == "ESTOP"] == [("ESTOP", {"src": "button"})]
    with pytest.raises(AbortError, match="the participant pressed the stop button"):
        rig.sup.stimulate(25, 25)


def test_limits_are_checked() -> None:
    with pytest.raises(InputError, match="watchdog_ms must be 200-5000, got 100"):
        SafetyLimits(ceiling_kpa=40, max_stimulus_s=10, max_run_inflated_s=60, watchdog_ms=100).check()
    with pytest.raises(InputError, match="beyond the device's MAXTIME range"):
        SafetyLimits(ceiling_kpa=40, max_stimulus_s=700, max_run_inflated_s=900).check()


# ---------------------------------------------------------------- the device's limits, before a run

def test_planned_rates_the_device_does_not_accept_are_refused_at_start() -> None:
    rig = Rig(dataclasses.replace(LIMITS, planned_rates_kpa_s=(10.0, 150.0)), start=False)
    with pytest.raises(HardwareError, match=r"the ramp rate 150 kPa/s is outside the 0.1-100 kPa/s the cuff on "):
        rig.sup.start()
    assert not rig.kinds("cuff_cmd") and rig.device.state == "IDLE"
    assert safety.device_problems(dataclasses.replace(LIMITS, planned_rates_kpa_s=(10.0,)), rig.cuff.info) == []


class ArmsHigher(LineCuff):
    """A driver whose device says it armed above the ceiling it was sent."""

    def arm(self, ceiling_kpa: float) -> ArmAck:
        return dataclasses.replace(super().arm(ceiling_kpa), ceiling_kpa=ceiling_kpa + 20)


def test_a_device_that_arms_above_the_ceiling_is_refused_and_left_vented() -> None:
    clock = VirtualClock()
    device = SimCuffDevice()
    sup = CuffSupervisor(ArmsHigher(LoopbackTransport(device, clock=clock), clock=clock), clock=clock, limits=LIMITS)
    with pytest.raises(HardwareError, match="armed with 60 kPa, above the ceiling 40 kPa it was sent"):
        sup.start()
    assert device.vent_log[-1][1] == "VENT" and device.pressure_kpa == 0.0
    sup.close()


# ---------------------------------------------------------------- threads are joined, or said not to stop

def test_the_guards_report_a_thread_that_does_not_stop() -> None:
    release, entered = threading.Event(), threading.Event()

    def stuck_heartbeat() -> None:
        entered.set()
        release.wait(5.0)

    guards = safety._Guards(RealClock(), period_s=0.01, heartbeat=stuck_heartbeat, service=lambda: None)
    guards.start()
    try:
        assert entered.wait(2.0)
        assert guards.stop(0.05) == ["cuff-heartbeat"]
    finally:
        release.set()
    assert guards.stop(2.0) == []


class StuckPing(LineCuff):
    """A driver whose PING hangs (a wedged USB stack) once `stuck` is set."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.stuck, self.entered, self.release = threading.Event(), threading.Event(), threading.Event()

    def ping(self) -> PingAck:
        if self.stuck.is_set():
            self.entered.set()
            self.release.wait(5.0)
        return super().ping()


@pytest.mark.realtime
def test_a_supervisor_thread_that_does_not_stop_at_close_is_logged(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(safety, "THREAD_JOIN_S", 0.1)
    clock = RealClock()
    server = SimServer(SimCuffDevice(), clock=clock)
    cuff = StuckPing(SerialTransport(server.path, clock=clock), clock=clock)
    records: list[dict[str, Any]] = []
    sup = CuffSupervisor(cuff, clock=clock, limits=LIMITS, on_record=records.append)
    try:
        sup.start()
        cuff.stuck.set()
        assert cuff.entered.wait(2.0)
        sup.close()
        warnings = [r for r in records if r["kind"] == "warning"]
        assert [w["code"] for w in warnings] == ["cuff_thread_not_stopped"]
        assert "cuff-heartbeat did not stop within 0.1 s" in warnings[0]["message"]
        assert server.device.state == "IDLE"              # the close sequence ran all the same
    finally:
        cuff.release.set()
        server.close()


def test_a_failing_pressure_listener_is_said_once_and_the_interlocks_go_on() -> None:
    """The pressure recording runs in the reader thread's callback: its failure must not stop the
    read-back checks, and must not be silent (a recording that fails unsaid loses data)."""
    clock = VirtualClock()
    device = SimCuffDevice()
    records: list[dict[str, Any]] = []

    def failing(sample: Any) -> None:
        raise ValueError("state enum is not JSON")

    cuff = LineCuff(LoopbackTransport(device, clock=clock), clock=clock)
    sup = CuffSupervisor(cuff, clock=clock, limits=LIMITS, on_record=records.append, on_sample=failing)
    sup.start()
    cuff.command("ARM 60")                       # firmware now allows more than the protocol
    cuff.command("RATE 20")
    cuff.command("SET 50")                       # ... and something asked for it
    clock.sleep(3.0)
    assert sup.safety_tripped == "host_overpressure"     # the read-back check went on
    failed = [r for r in records if r["kind"] == "warning" and r["code"] == "cuff_listener_failed"]
    assert len(failed) == 1 and "ValueError: state enum is not JSON" in failed[0]["message"]
    sup.close()
