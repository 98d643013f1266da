"""The cuff half of `rig-check`: identify, limits and state, round-trip latency, test pulse.

`run_cuff_check` prints a short report through `out` and returns the same facts as a
dict for the caller (experiment/procedures/rigcheck.py) to log or test. The optional test pulse
runs under a `CuffSupervisor`, so every interlock of a real run guards it.
"""

from __future__ import annotations

import math
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from experiment.clock import Clock
from experiment.cuff.base import Cuff, CuffStatus, DeviceInfo, Fault, PressureSample
from experiment.cuff.safety import CuffSupervisor, SafetyLimits
from experiment.log.records import CuffCheckRecord, RigCheckRecord
from experiment.errors import AbortError, DeviceFault, InputError

MIN_PINGS = 100
MAX_TEST_KPA = 20.0             # "a short low test pulse"
TEST_RATE_KPA_S = 5.0
TEST_HOLD_S = 1.0
SLOW_MEDIAN_MS = 4.0            # above these, suggest lowering the USB-serial latency timer
SLOW_P99_MS = 10.0
POLL_S = 0.02


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0-100) of a non-empty list."""
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def latency_timer_path(port: str) -> Path | None:
    """Linux sysfs latency timer of a USB-serial adapter (`ttyUSBn`), or None."""
    name = Path(os.path.realpath(port)).name if port.startswith("/") else port
    if not name.startswith("ttyUSB"):
        return None
    return Path("/sys/bus/usb-serial/devices") / name / "latency_timer"


def latency_advice(port: str, median_ms: float, p99_ms: float, *, platform: str = sys.platform) -> str | None:
    """What to do about a slow round trip, or None when it is fast enough."""
    if median_ms <= SLOW_MEDIAN_MS and p99_ms <= SLOW_P99_MS:
        return None
    head = (f"round trip median {median_ms:.1f} ms, p99 {p99_ms:.1f} ms is slow for a cuff link; "
            "USB-serial adapters (FTDI) hold data up to their latency timer (16 ms by default).")
    path = latency_timer_path(port)
    if path is not None:
        current = ""
        try:
            current = f" (now {path.read_text().strip()} ms)"
        except OSError:
            pass
        return (f"{head} Lower it to 1-2 ms{current}: `echo 1 | sudo tee {path}`; it resets on replug, "
                "so add a udev rule to make it stick.")
    if platform.startswith("win") or port.upper().startswith("COM"):
        return (f"{head} In Device Manager: Ports > {port} > Port Settings > Advanced > Latency Timer: 1 ms.")
    return f"{head} If the cuff is on a USB-serial adapter, lower its latency timer to 1-2 ms."


def run_cuff_check(cuff: Cuff, *, clock: Clock, pings: int = 200, test_pressure_kpa: float | None = None,
                   clear_fault: bool = False, out: Callable[[str], None] = print,
                   record: Callable[[RigCheckRecord], object] = lambda rec: None) -> CuffCheckRecord:
    """Check a cuff before the participant is in; returns the facts printed (the `cuff_check` record).

    A cuff latched in FAULT or ESTOP is unfit (a run refuses it) unless `clear_fault`:
    then CLEAR is sent on purpose and recorded (`clear_fault` record) with what it cleared.
    """
    if pings < MIN_PINGS:
        raise InputError(f"rig-check: --pings must be at least {MIN_PINGS}, got {pings}")
    info = cuff.info or cuff.connect()
    out(f"cuff: {info.identity()}; hard limit {info.hard_limit_kpa:g} kPa")
    status = cuff.status()
    pressure = "not measured" if status.pressure_kpa is None else f"{status.pressure_kpa:.1f} kPa"
    out(f"state {status.state.value}, pressure {pressure}, armed max {status.armed_max_kpa:g} kPa, "
        f"error code {status.error_code}")
    status, latched = _latch(cuff, status, clear_fault=clear_fault, out=out, record=record)
    ping, advice = _round_trips(cuff, info, clock=clock, pings=pings, out=out)
    report: CuffCheckRecord = {"kind": "cuff_check", "device": asdict(info), "status": status.record(), "ping": ping, "latency_advice": advice,
                         "test_pulse": None, "latched": latched, "ok": latched is None}
    if test_pressure_kpa is not None and latched is not None:
        out("test pulse skipped: the cuff is latched")
    elif test_pressure_kpa is not None:
        pulse = _test_pulse(cuff, clock=clock, target_kpa=test_pressure_kpa, out=out)
        report["test_pulse"], report["ok"] = pulse.record(), pulse.ok
    record(report)
    return report


def _latch(cuff: Cuff, status: CuffStatus, *, clear_fault: bool, out: Callable[[str], None],
           record: Callable[[RigCheckRecord], object]) -> tuple[CuffStatus, str | None]:
    """A latched cuff: cleared on purpose (`clear_fault`) or reported. Returns the status
    after, and what is still latched (None: nothing)."""
    if not status.state.latched:
        if clear_fault:
            out("no fault to clear: the cuff is not latched")
        return status, None
    what = (status.fault or Fault(0)).describe(status.state)
    if not clear_fault:
        out(f"PROBLEM: the cuff is latched in {what}. A run or a calibration will not start until it is "
            "cleared. Check the cuff and the participant, then clear it on purpose: "
            "`cuedpain rig-check --clear-fault` (with the same --cuff or --rig)")
        return status, what
    out(f"the cuff is latched in {what}; clearing it on purpose (--clear-fault)")
    result = cuff.clear()
    after = cuff.status()
    record({"kind": "clear_fault", "t": result.t_ack, "state": status.state.value, "error_code": status.error_code,
            "meaning": what, "reply": result.reply, "state_after": after.state.value})
    out(f"cleared: state now {after.state.value}")
    return after, None


def _round_trips(cuff: Cuff, info: DeviceInfo, *, clock: Clock, pings: int,
                 out: Callable[[str], None]) -> tuple[dict[str, object], str | None]:
    """`pings` PINGs timed from the call to the reply's arrival, and the latency advice."""
    rtt_ms: list[float] = []
    for _ in range(pings):
        t_before = clock.now()
        result = cuff.ping()
        rtt_ms.append((result.t_ack - t_before) * 1000)
    median_ms, p99_ms = percentile(rtt_ms, 50), percentile(rtt_ms, 99)
    out(f"round trip over {pings} pings: median {median_ms:.2f} ms, p99 {p99_ms:.2f} ms, max {max(rtt_ms):.2f} ms")
    advice = latency_advice(info.port, median_ms, p99_ms)
    if advice:
        out(advice)
    return {"n": pings, "median_ms": median_ms, "p99_ms": p99_ms, "max_ms": max(rtt_ms)}, advice


@dataclass
class _Pulse:
    """What the test pulse found."""

    target_kpa: float
    reached: bool = False
    released: bool = False
    t_reach_s: float | None = None
    t_release_s: float | None = None
    error: str | None = None
    peak_kpa: float = 0.0
    tripped: str | None = None

    @property
    def ok(self) -> bool:
        return self.reached and self.released and self.tripped is None

    def record(self) -> dict[str, object]:
        """As in the `cuff_check` record: timings and error only where there are some."""
        rec: dict[str, object] = {"target_kpa": self.target_kpa, "reached": self.reached,
                                  "released": self.released, "ok": self.ok}
        optional: dict[str, object] = {"t_reach_s": self.t_reach_s, "t_release_s": self.t_release_s,
                                       "error": self.error}
        rec.update({k: v for k, v in optional.items() if v is not None})
        rec.update(peak_kpa=self.peak_kpa, tripped=self.tripped)
        return rec


def _test_pulse(cuff: Cuff, *, clock: Clock, target_kpa: float, out: Callable[[str], None]) -> _Pulse:
    """Inflate to a low pressure, hold 1 s, deflate; verify both by read-back."""
    info = cuff.info
    assert info is not None
    if not (0 < target_kpa <= MAX_TEST_KPA):
        raise InputError(f"rig-check: --test-pressure must be above 0 and at most {MAX_TEST_KPA:g} kPa "
                         f"(a low test pulse), got {target_kpa:g}")
    if target_kpa > info.hard_limit_kpa:
        raise InputError(f"rig-check: --test-pressure {target_kpa:g} kPa is above the cuff's hard limit "
                         f"{info.hard_limit_kpa:g} kPa")
    ramp_s = target_kpa / TEST_RATE_KPA_S
    limits = SafetyLimits(ceiling_kpa=target_kpa, max_stimulus_s=ramp_s + TEST_HOLD_S + 5.0,
                          max_run_inflated_s=ramp_s + TEST_HOLD_S + 10.0, planned_rates_kpa_s=(TEST_RATE_KPA_S,))
    pulse = _Pulse(target_kpa)

    def on_sample(sample: PressureSample) -> None:
        pulse.peak_kpa = max(pulse.peak_kpa, sample.pressure_kpa)

    sup = CuffSupervisor(cuff, clock=clock, limits=limits, on_sample=on_sample, close_cuff=False)
    out(f"test pulse: {target_kpa:g} kPa at {TEST_RATE_KPA_S:g} kPa/s, hold {TEST_HOLD_S:g} s")
    try:
        with sup:
            _inflate_hold_release(sup, pulse, clock=clock, ramp_s=ramp_s)
    except (AbortError, DeviceFault) as exc:
        pulse.error = exc.message
    pulse.tripped = sup.safety_tripped
    if pulse.ok:
        out(f"test pulse OK: reached in {pulse.t_reach_s or 0.0:.2f} s (peak {pulse.peak_kpa:.1f} kPa), "
            f"released in {pulse.t_release_s or 0.0:.2f} s")
    else:
        why = pulse.error or sup.trip_message or ("target not reached" if not pulse.reached
                                                  else "release not verified")
        out(f"test pulse FAILED: {why}")
    return pulse


def _inflate_hold_release(sup: CuffSupervisor, pulse: _Pulse, *, clock: Clock, ramp_s: float) -> None:
    limits = sup.limits
    t0 = clock.now()
    sup.stimulate(pulse.target_kpa, TEST_RATE_KPA_S)
    reached = _poll(clock, lambda: _reached(sup, pulse.target_kpa) or sup.safety_tripped is not None,
                    ramp_s + limits.compliance_margin_s + 1.0)
    if not reached or sup.safety_tripped is not None:
        return
    pulse.reached, pulse.t_reach_s = True, clock.now() - t0
    clock.sleep(TEST_HOLD_S)
    sup.check()
    t1 = clock.now()
    sup.deflate()
    pulse.released = _poll(clock, lambda: (sup.last_pressure_kpa or 0.0) < limits.release_threshold_kpa
                           and clock.now() - t1 > 0.05, ramp_s + limits.release_deadline_s)
    pulse.t_release_s = clock.now() - t1


def _reached(sup: CuffSupervisor, target_kpa: float) -> bool:
    p = sup.last_pressure_kpa
    return p is not None and abs(p - target_kpa) <= sup.limits.reach_tolerance_kpa


def _poll(clock: Clock, predicate: Callable[[], bool], timeout_s: float) -> bool:
    """Poll a device-driven condition on the run's clock (works on real and virtual clocks)."""
    deadline = clock.now() + timeout_s
    while not predicate():
        if clock.now() >= deadline:
            return False
        clock.sleep(POLL_S)
    return True
