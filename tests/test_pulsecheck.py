"""Pulse checks on synthetic pulse times: missed, extra and per-slice pulses, a stopped
scanner, the 18,000-pulse session (drift estimate, bounded memory), and rig-check."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from experiment.clock import VirtualClock
from experiment.scanner.check import assess_pulses, run_scanner_check
from experiment.scanner.pulsecheck import PulseMonitor
from experiment.scanner.sim_scanner import ScannerPlan, VirtualScanner

PTB_EPOCH = 1.795e9  # PTB GetSecs is seconds since 1970: sums of squares would lose digits


def _feed_all(mon: PulseMonitor, times) -> list:
    out = []
    for t in times:
        out.extend(mon.feed(float(t)))
    return out


def test_regular_pulses_give_no_warning_and_exact_tr() -> None:
    tr = 2.0
    mon = PulseMonitor(tr, n_expected=50)
    warnings = _feed_all(mon, PTB_EPOCH + np.arange(50) * tr)
    assert warnings == []
    s = mon.summary()
    assert (s.n_pulses, s.n_volumes_seen, s.n_missed, s.n_extra, s.n_short_of_expected) == (50, 50, 0, 0, 0)
    assert s.tr_mean_s == pytest.approx(tr, abs=1e-6)
    assert s.tr_sd_s == pytest.approx(0.0, abs=1e-6)
    assert abs(s.drift_ppm) < 0.01 and s.max_residual_s < 1e-6


def test_missed_pulses_are_counted_and_do_not_shift_later_volumes() -> None:
    tr = 1.0
    times = [t for k, t in enumerate(100 + np.arange(20) * tr) if k not in (5, 11, 12)]
    mon = PulseMonitor(tr, n_expected=20)
    warnings = _feed_all(mon, times)
    assert [w.code for w in warnings] == ["missed_pulse", "missed_pulse"]
    assert "1 pulse(s) missed before volume 6" in warnings[0].message
    assert "2 pulse(s) missed before volume 13" in warnings[1].message
    s = mon.summary()
    assert (s.n_pulses, s.n_missed, s.n_volumes_seen, s.n_short_of_expected) == (17, 3, 20, 0)
    # volume indices kept their place: the line still fits exactly
    assert abs(s.drift_ppm) < 0.01 and s.max_residual_s < 1e-9
    assert s.tr_mean_s == pytest.approx(1.0)


def test_an_isolated_extra_pulse_is_flagged_but_not_per_slice() -> None:
    mon = PulseMonitor(2.0, n_expected=10)
    times = [0.0, 2.0, 2.9, 4.0, 6.0]  # 4.0 is 1.1 s after the extra pulse but one TR after volume 1
    warnings = _feed_all(mon, times)
    assert [w.code for w in warnings] == ["extra_pulse"]
    s = mon.summary()
    assert s.n_extra == 1 and not s.per_slice and s.n_volumes_seen == 4
    assert s.tr_mean_s == pytest.approx(2.0) and s.tr_sd_s == pytest.approx(0.0, abs=1e-12)


def test_pulses_at_slice_rate_are_reported_once_as_per_slice_mode() -> None:
    plan = ScannerPlan(tr_s=2.0, n_volumes=4, slices_per_volume=36)
    mon = PulseMonitor(2.0, n_expected=4)
    warnings = _feed_all(mon, plan.pulse_times_s())
    codes = [w.code for w in warnings]
    assert codes.count("per_slice") == 1
    assert codes[:3] == ["extra_pulse", "extra_pulse", "per_slice"]  # two extras, then the mode is named
    assert "one pulse per slice" in warnings[2].message
    assert mon.summary().per_slice


def test_silence_after_a_few_trs_means_the_scanner_stopped() -> None:
    mon = PulseMonitor(1.0, n_expected=100, stop_after_trs=3)
    _feed_all(mon, np.arange(10) * 1.0)
    assert mon.check_silence(9.0 + 2.9) is None
    w = mon.check_silence(9.0 + 3.1)
    assert w is not None and w.code == "scanner_stopped"
    assert "after 10 of 100 volumes" in w.message
    assert mon.check_silence(9.0 + 10) is None  # said once per silence
    mon.feed(20.0)
    assert mon.check_silence(20.0 + 3.5) is not None  # a new silence is reported again
    assert mon.summary().stopped


def test_silence_after_the_last_expected_volume_is_not_a_stop() -> None:
    mon = PulseMonitor(1.0, n_expected=10)
    _feed_all(mon, np.arange(10) * 1.0)
    assert mon.check_silence(100.0) is None
    assert not mon.summary().stopped


def test_18000_pulse_session_estimates_a_50_ppm_drift() -> None:
    tr, n, ppm = 0.4, 18_000, 50.0
    rng = np.random.default_rng(7)
    k = np.arange(n)
    times = PTB_EPOCH + k * tr * (1 + ppm * 1e-6) + rng.normal(0, 1e-4, n)
    times[9_000] += 0.002  # one late pulse: the largest residual
    mon = PulseMonitor(tr, n_expected=n)
    warnings = _feed_all(mon, times)
    assert warnings == []
    s = mon.summary()
    assert s.n_pulses == n and s.n_volumes_seen == n and s.n_residual_points == n
    assert s.drift_ppm == pytest.approx(ppm, abs=0.05)
    assert s.fit_slope_s == pytest.approx(tr * (1 + ppm * 1e-6), rel=1e-8)
    assert s.max_residual_s == pytest.approx(0.002, abs=0.0005)
    assert s.tr_sd_s == pytest.approx(np.sqrt(2) * 1e-4, rel=0.1)


def _peak_bytes_feeding(n: int) -> int:
    times = (np.arange(n) * 0.4).tolist()
    mon = PulseMonitor(0.4, n_expected=18_000)
    tracemalloc.start()
    tracemalloc.reset_peak()
    before = tracemalloc.get_traced_memory()[0]
    for t in times:
        mon.feed(t)
    peak = tracemalloc.get_traced_memory()[1] - before
    tracemalloc.stop()
    return peak


def test_memory_does_not_grow_with_the_number_of_pulses() -> None:
    small, large = _peak_bytes_feeding(1_000), _peak_bytes_feeding(18_000)
    # a list of 17,000 more pulses would cost > 500 kB; allow a few kB of noise
    assert large - small < 8_000, (small, large)


def test_capacity_limits_the_points_kept_for_the_residual() -> None:
    mon = PulseMonitor(1.0, capacity=100)
    _feed_all(mon, np.arange(500) * 1.0)
    s = mon.summary()
    assert s.n_residual_points == 100 and s.n_volumes_seen == 500
    assert abs(s.drift_ppm) < 0.01  # the fit itself used every pulse


def test_bad_tr_is_refused() -> None:
    with pytest.raises(ValueError, match="tr_s must be a positive"):
        PulseMonitor(0.0)


# -- rig-check --

def test_assess_estimates_tr_and_missing_pulses() -> None:
    times = [t for i, t in enumerate(np.arange(30) * 0.8) if i != 10]
    r = assess_pulses(times, listen_s=25, expected_tr_s=0.8)
    assert r["tr_median_s"] == pytest.approx(0.8) and r["n_missed"] == 1
    assert r["problems"] == ["1 pulse(s) missing (1 gap(s) longer than 1.5 TR)"]


def test_assess_flags_per_slice_mode_against_the_expected_tr() -> None:
    times = ScannerPlan(tr_s=2.0, n_volumes=3, slices_per_volume=30).pulse_times_s().tolist()
    r = assess_pulses(times, listen_s=6, expected_tr_s=2.0)
    assert r["per_slice"] and "one pulse per slice" in r["problems"][0]


def test_assess_says_what_to_check_when_nothing_came() -> None:
    r = assess_pulses([], listen_s=10)
    assert r["n_pulses"] == 0 and "check that the scanner is running" in r["problems"][0]


def test_rig_check_listens_to_a_source_on_the_injected_clock() -> None:
    clock = VirtualClock()
    plan = ScannerPlan(tr_s=1.5, n_volumes=100, jitter_s=0.0005, seed=3, start_delay_s=0.2)
    lines: list[str] = []
    r = run_scanner_check(VirtualScanner(plan, clock=clock), clock=clock, listen_s=10.0, out=lines.append,
                          expected_tr_s=1.5)
    assert r["n_pulses"] == 7  # pulses at 0.2, 1.7, ... 9.2 s
    assert r["tr_median_s"] == pytest.approx(1.5, abs=0.002) and r["ok"]
    assert lines[-1] == "trigger line OK" and "7 pulses" in lines[1]
