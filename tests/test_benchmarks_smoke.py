"""The benchmark's arithmetic on synthetic data: summaries, drift, pairing, block order.

Nothing here is timed: these are the pure functions that turn measurements into the
numbers of benchmarks/results, checked against independent computations (scipy's
regression, hand-worked values) so a wrong table cannot come from wrong arithmetic.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from scipy import stats

from benchmarks import analysis
from benchmarks.onsets import same_timeline
from benchmarks.pacing import block_order, summarize_pacing
from benchmarks.report import notes, render, stall_cell
from benchmarks.stalls import Sample, attribute_drops, drops_from_flips, longest_without_steal


def test_summary_of_1_to_100_ms() -> None:
    s = analysis.summarize([k / 1000 for k in range(1, 101)])
    assert s.n == 100
    assert s.median_ms == pytest.approx(50.5)
    assert s.p99_ms == pytest.approx(99.01)   # linear interpolation between the 99th and 100th values
    assert (s.min_ms, s.max_ms) == (pytest.approx(1.0), pytest.approx(100.0))
    assert math.isnan(analysis.summarize([]).median_ms)


def test_error_summary_keeps_the_sign_of_the_median_and_of_the_largest_error() -> None:
    e = analysis.error_summary([-0.012, 0.001, 0.002, 0.003, -0.001])
    assert e.median_ms == pytest.approx(1.0)
    assert e.largest_ms == pytest.approx(-12.0)
    assert e.p99_abs_ms == pytest.approx(np.percentile([12, 1, 2, 3, 1], 99))


def test_drift_recovers_a_known_slope_and_matches_scipy_regression() -> None:
    times_s = np.arange(0, 600, 12.0)                 # ten minutes of onsets
    exact = 0.004 + 0.0165 * times_s / 60             # 16.5 ms per minute
    d = analysis.drift(times_s, exact)
    assert d.slope_ms_per_min == pytest.approx(16.5)
    assert d.slope_se_ms_per_min == pytest.approx(0.0, abs=1e-9)
    assert d.last_minus_first_ms == pytest.approx(16.5 * times_s[-1] / 60)
    assert d.span_min == pytest.approx(times_s[-1] / 60)

    noisy = exact + np.random.default_rng(3).normal(0, 0.004, times_s.size)
    d = analysis.drift(times_s, noisy)
    ref = stats.linregress(times_s / 60, noisy * 1000)
    assert d.slope_ms_per_min == pytest.approx(ref.slope)
    assert d.slope_se_ms_per_min == pytest.approx(ref.stderr)
    assert d.last_minus_first_ms == pytest.approx(1000 * (noisy[-1] - noisy[0]))


def test_drift_refuses_mismatched_lengths_and_is_undefined_for_one_point() -> None:
    with pytest.raises(ValueError, match="3 times but 2 errors"):
        analysis.drift([0, 1, 2], [0, 0])
    assert math.isnan(analysis.drift([5.0], [0.001]).slope_ms_per_min)


def test_ratio_of_magnitudes_and_its_noise_proof_lower_bound() -> None:
    assert analysis.ratio(-300.0, 2.0) == 150.0
    assert analysis.ratio(1.0, 0.0) == math.inf
    assert math.isnan(analysis.ratio(math.nan, 1.0))
    naive = analysis.Drift(120.0, 1.0, 800.0, 6.6)
    flat = analysis.Drift(-0.2, 0.4, 2.0, 6.6)          # a slope within noise of zero
    assert analysis.ratio(naive.slope_ms_per_min, flat.slope_ms_per_min) == pytest.approx(600.0)
    assert analysis.conservative_ratio(naive, flat) == pytest.approx(120.0 / 1.0)


def _onset(i: int, trial: int, t: float, planned_t: float, phase: str = "cue") -> dict:
    return {"kind": "onset", "i": i, "trial": trial, "t": t, "planned_t": planned_t, "planned_onset_s": planned_t - 100,
            "phase": phase}


def test_onset_errors_use_trial_cues_in_plan_order_against_the_runners_plan() -> None:
    records = [_onset(2, 1, 110.006, 110.0, "pain"), _onset(0, 0, 100.02, 100.0, "lead_in"),
               _onset(1, 1, 105.001, 105.0, "anticipation"), {"kind": "pulse", "t": 101.0}]
    times, errors, phases = analysis.onset_errors(records)
    assert times == [5.0, 10.0]
    assert errors == pytest.approx([0.001, 0.006])
    assert phases == ["anticipation", "pain"]


def test_cuff_latencies_pair_each_tagged_command_with_its_events_flip_and_plan() -> None:
    records = [
        _onset(2, 1, 120.004, 120.0),
        {"kind": "cuff_cmd", "i": None, "ok": True, "command": "WDT 1000", "t_write": 90.0, "t_ack": 90.001},
        {"kind": "cuff_cmd", "i": 2, "ok": True, "command": "RATE 30.0", "t_write": 120.0045, "t_ack": 120.0050},
        {"kind": "cuff_cmd", "i": 2, "ok": True, "command": "SET 40.0", "t_write": 120.0052, "t_ack": 120.0060},
        {"kind": "cuff_cmd", "i": 3, "ok": False, "command": "DEFLATE", "t_write": 121.0, "t_ack": None},
    ]
    c = analysis.cuff_latencies(records)
    assert c.commands == ["RATE", "SET"]
    assert c.planned_to_write == pytest.approx([0.0045, 0.0052])
    assert c.flip_to_write == pytest.approx([0.0005, 0.0012])
    assert c.write_to_ack == pytest.approx([0.0005, 0.0008])


def test_frame_drops_are_counted_under_the_phase_on_screen() -> None:
    records = [{"kind": "frame_drop", "t": 99.0, "interval_s": 0.030},
               {"kind": "onset", "t": 100.0, "phase": "lead_in"}, {"kind": "onset", "t": 112.0, "phase": "rating"},
               {"kind": "frame_drop", "t": 112.0, "interval_s": 0.031}, {"kind": "frame_drop", "t": 113.0, "interval_s": 0.195},
               {"kind": "onset", "t": 118.0, "phase": "rest"}, {"kind": "frame_drop", "t": 105.0, "interval_s": 0.025}]
    assert analysis.drops_by_phase(records) == {"before t0": {"n": 1, "longest_ms": 30.0},
                                                "rating": {"n": 2, "longest_ms": 195.0},
                                                "lead_in": {"n": 1, "longest_ms": 25.0}}


def test_pulse_latencies_pair_by_index_and_refuse_a_pulse_that_was_never_written() -> None:
    sent = [1.0, 1.1, 1.2]
    assert analysis.pulse_latencies(sent, [(0, 1.0002), (2, 1.2051)]) == pytest.approx([0.0002, 0.0051])
    with pytest.raises(ValueError, match="pulse 3 was received but only 3 were written"):
        analysis.pulse_latencies(sent, [(3, 1.3)])


def test_marker_times_take_the_first_line_with_each_marker() -> None:
    lines = [(10.5, "[DRY RUN] cuedpain 0.1.0: x (DRY RUN: simulated cuff and scanner)"),
             (12.0, "[DRY RUN] waiting for the scanner: ..."), (13.0, "waiting for the scanner again")]
    got = analysis.marker_times(lines, {"banner": "DRY RUN: simulated", "waiting": "waiting for the scanner",
                                        "never": "t0 fixed"}, start_t=10.0)
    assert got == {"banner": 0.5, "waiting": 2.0, "never": None}


def test_the_comparison_must_drive_the_same_timeline() -> None:
    plan = [{"kind": "plan", "i": 0, "onset_s": 0.0, "duration_s": 12.0},
            {"kind": "plan", "i": 1, "onset_s": 12.0, "duration_s": 8.0}]
    assert same_timeline(plan, [{"i": 0, "onset_s": 0.0, "duration_s": 12.0}, {"i": 1, "onset_s": 12.0, "duration_s": 8.0}])
    assert not same_timeline(plan, [{"i": 0, "onset_s": 0.0, "duration_s": 12.0}, {"i": 1, "onset_s": 12.5, "duration_s": 8.0}])


def test_pacing_blocks_are_balanced_and_intervals_never_span_two_blocks() -> None:
    assert block_order(3) == ["off", "on", "on", "off", "off", "on"]
    frame = 1 / 60
    grid = [k * frame for k in range(61)]
    result = {"block_s": 1.0, "pairs": 1, "display": {"frame_s": frame}, "blocks": [
        {"condition": "off", "flip_times": grid},
        {"condition": "on", "flip_times": [100 + t for t in grid[:30]] + [100 + grid[31] + k * frame for k in range(30)],
         "pulse_latency_s": [0.0001, 0.0003], "pulses_sent": 2,
         "cuff": [{"command": "SET 40.0", "flip_to_write_s": 0.0002, "write_to_ack_s": 0.0004}]},
    ]}
    s = summarize_pacing(result)
    assert s["off"]["intervals"]["max_ms"] == pytest.approx(1000 * frame, abs=1e-3)  # the 100 s gap is no frame
    assert s["on"]["intervals"]["max_ms"] == pytest.approx(2000 * frame, abs=1e-3)  # the one missed frame
    assert s["on"]["over_1_5_frames"] == 1 and s["off"]["over_1_5_frames"] == 0
    assert s["trigger_latency"]["n"] == 2 and s["cuff"]["write_to_ack"]["median_ms"] == pytest.approx(0.4)


def test_pacing_with_lsl_rotates_three_conditions_and_reports_the_hand_over() -> None:
    assert block_order(2, ("off", "on", "lsl")) == ["off", "on", "lsl", "on", "lsl", "off"]
    frame = 1 / 60
    grid = [k * frame for k in range(61)]
    on = {"flip_times": grid, "pulse_latency_s": [0.0001], "pulses_sent": 1,
          "cuff": [{"command": "SET 40.0", "flip_to_write_s": 0.0002, "write_to_ack_s": 0.0004}]}
    result = {"block_s": 1.0, "pairs": 1, "display": {"frame_s": frame}, "blocks": [
        {"condition": "off", "flip_times": grid}, {"condition": "on", **on},
        {"condition": "lsl", **on, "flip_times": grid[:30] + [grid[31] + k * frame for k in range(30)],
         "pulse_latency_s": [0.0002], "lsl_handover_s": [0.00001, 0.00003], "lsl_pushed": {"markers": 5, "pressure": 9}},
    ]}
    s = summarize_pacing(result)
    assert s["lsl"]["over_1_5_frames"] == 1 and s["max_ratio_lsl_on"] == pytest.approx(2.0, abs=1e-3)
    assert s["lsl"]["handover"]["max_ms"] == pytest.approx(0.03) and s["lsl"]["pushed"] == {"markers": 5, "pressure": 9}
    assert s["trigger_latency"]["n"] == 1 and s["lsl"]["trigger_latency"]["n"] == 1   # 'on' and 'lsl' kept apart


def _results(largest_ms: float) -> dict:
    summary = {"n": 3, "median_ms": 0.1, "p99_ms": 0.2, "max_ms": 0.3, "min_ms": 0.0}
    drift = {"slope_ms_per_min": 0.01, "slope_se_ms_per_min": 0.02, "last_minus_first_ms": 0.1, "span_min": 8.0}
    return {"command": "python -m benchmarks.run", "quick": False, "protocol": "protocols/loggia2014.yaml",
            "machine": {"cpu_count": 2, "cpu_model": "x", "platform": "Linux", "python": "3.11",
                        "packages": {"psychopy": "1", "psychtoolbox": "1"}, "date": "today",
                        "load_average_at_start": [1.0, 1.0, 1.0]},
            "load_average_at_end": [1.5, 1.0, 1.0], "wall_s": 600.0,
            "onsets": {"cuedpain": {"errors": {"n": 40, "median_ms": 0.5, "p99_abs_ms": 8.0, "largest_ms": largest_ms},
                                    "per_cue_ms": [[12.0, 0.5, "anticipation"], [38.833, largest_ms, "rating"]],
                                    "drift": drift, "display": {"frame_s": 1 / 60, "refresh_hz": 60.0, "vsync": False}},
                       "naive": {"errors": {"n": 40, "median_ms": 400.0, "p99_abs_ms": 800.0, "largest_ms": 810.0},
                                 "drift": {**drift, "slope_ms_per_min": 100.0}},
                       "drift_ratio_slope": 10000.0, "drift_ratio_last_minus_first": 8000.0,
                       "drift_ratio_slope_conservative": 2500.0,
                       "cuff_latency": {"n": 3, "commands": ["SET"], "planned_to_write": summary,
                                        "flip_to_write": summary, "write_to_ack": summary}}}


def test_the_report_says_when_an_onset_error_exceeds_half_a_frame() -> None:
    assert any(n.startswith("Goal missed") and "9.00 ms" in n and "rating at 38.833 s: -9.00 ms" in n
               for n in notes(_results(-9.0)))
    assert not any(n.startswith("Goal missed") for n in notes(_results(8.0)))
    table = render(_results(8.0))
    assert "| ×10000; ×8000; at least ×2500 |" in table


def test_cuff_latency_counts_from_the_commands_own_plan_and_gc_and_worst_run_are_summarised() -> None:
    records = [
        {"kind": "onset", "i": 3, "t": 10.010, "planned_t": 10.000, "trial": 1, "planned_onset_s": 5.0, "phase": "pain"},
        {"kind": "cuff_cmd", "i": 3, "t_write": 10.0004, "t_ack": 10.0009, "ok": True, "command": "SET 20",
         "planned_t": 10.000},
        {"kind": "onset", "i": 4, "t": 20.008, "planned_t": 20.000, "trial": 1, "planned_onset_s": 15.0, "phase": "deflation"},
        {"kind": "cuff_cmd", "i": 4, "t_write": 20.009, "t_ack": 20.0095, "ok": True, "command": "DEFLATE"},  # old log
        {"kind": "gc", "action": "freeze", "duration_s": 0.03},
        {"kind": "priority", "obtained": True, "nice": -10},
        {"kind": "gc", "action": "collect", "duration_s": 0.002},
        {"kind": "gc", "action": "collect", "duration_s": 0.004},
        {"kind": "frames", "max_interval_s": 0.02, "n": 100, "dropped": 0},
    ]
    cuff = analysis.cuff_latencies(records)
    assert cuff.planned_to_write == [pytest.approx(0.0004), pytest.approx(0.009)]
    assert cuff.flip_to_write == [pytest.approx(-0.0096), pytest.approx(0.001)]
    g = analysis.gc_summary(records)
    assert g["collections"] == 2 and g["duration"]["max_ms"] == pytest.approx(4.0) and g["freeze_s"] == 0.03
    assert g["priority"]["nice"] == -10
    assert analysis.worst_key(records) == (pytest.approx(0.010), pytest.approx(0.02))


def test_dropped_frames_are_attributed_to_steal_to_a_cpu_wait_or_to_neither() -> None:
    """Samples every 5 ms over 10 s: one 10 ms tick of steal at 2.0 s, 8 ms of run-queue wait at
    5.0 s, nothing else; three drops, one in each place and one where nothing happened."""
    samples = [Sample(t=k * 0.005, steal_s=0.01 if k * 0.005 >= 2.0 else 0.0,
                      runq_s=0.008 if k * 0.005 >= 5.0 else 0.0) for k in range(2001)]
    records = [{"kind": "frame_drop", "t": 2.02, "interval_s": 0.035},
               {"kind": "frame_drop", "t": 5.02, "interval_s": 0.030},
               {"kind": "frame_drop", "t": 8.00, "interval_s": 0.030},
               {"kind": "frame_drop", "t": 1.8e9, "interval_s": 0.030},   # on another clock: not attributed
               {"kind": "onset", "t": 1.0}]
    out = attribute_drops(records, samples, n_cpus=2)
    assert (out["n_drops"], out["with_steal"], out["with_runq_wait_only"], out["with_neither"]) == (4, 1, 1, 1)
    assert out["outside_samples"] == 1
    assert [d["steal_ms"] for d in out["drops"]] == [10.0, 0.0, 0.0]
    assert [d["runq_ms"] for d in out["drops"]] == [0.0, 8.0, 0.0]
    # one tick in 10 s of two CPUs; about one window of the 30 ms median in 330 holds it
    assert out["steal_share"] == pytest.approx(0.01 / 10 / 2)
    assert 0 < out["baseline_with_steal"] < 0.02 and out["baseline_window_ms"] == 30.0
    assert attribute_drops(records, [], n_cpus=2)["sampled"] is False
    line = stall_cell(out)
    assert line.startswith("1 / 1 / 1 of 4 (0.1 % stolen;") and line.endswith("; 1 not sampled)")


def test_benchmark_8_reports_each_blocks_stolen_cpu_time_next_to_its_frames() -> None:
    from benchmarks import station

    def block(cond: str, intervals: list[float], steal: float | None) -> dict[str, Any]:
        stalls = ({"sampled": True, "with_steal": 1, "n_drops": 2, "steal_share": steal} if steal is not None
                  else {"sampled": False})
        return {"condition": cond, "follower": "chromium; page", "frames": station.summarize(intervals, 1000 / 60),
                "frames_record": {"dropped": 0}, "load_average_before": [1.0, 1.0, 1.0],
                "stalls": stalls, "longest_without_steal_ms": 18.5 if steal is not None else None}

    off, on = [16.7] * 99 + [30.0], [16.7] * 99 + [20.0]
    r = {"command": "python -m benchmarks.station --pairs 1", "protocol": "protocols/demo.yaml", "wall_s": 120,
         "blocks": [block("off", off, 0.052), block("on", on, None)],
         "off": station.summarize(off, 1000 / 60), "on": station.summarize(on, 1000 / 60),
         "machine": {"cpu_count": 2}, "display": {"display": ":1"}}
    r["p99_ratio"] = r["on"]["p99_ms"] / r["off"]["p99_ms"]
    r["longest_ratio"] = r["on"]["max_ms"] / r["off"]["max_ms"]
    text = station.render(r)
    assert "| CPU time stolen by the host | drops that held steal | longest frame without steal ms |" in text
    assert "| 1.0 / 1.0 / 1.0 | 5.2 % | 1 of 2 | 18.50 |" in text and "| 1.0 / 1.0 / 1.0 | ? | ? | ? |" in text
    assert "Longest frame that held no steal" not in text
    r["longest_without_steal_ratio"] = 1.02
    assert "Longest frame that held no steal by the host (benchmarks/stalls.py), ratio: 1.02." in station.render(r)


def test_drops_and_the_longest_frame_without_steal_come_from_flip_times() -> None:
    flips = [k / 60 for k in range(60)] + [1.0 + 0.03, 1.0 + 0.03 + 1 / 60]   # one 46 ms interval at the end
    drops = drops_from_flips(flips, 1 / 60)
    assert len(drops) == 1 and drops[0]["t"] == pytest.approx(1.03) and drops[0]["interval_s"] == pytest.approx(0.03 + 1 / 60)
    # a 10 ms tick of steal at 1.0 s: the long interval held it; the longest without steal is a plain frame
    samples = [Sample(t=k * 0.005, steal_s=0.01 if k * 0.005 >= 1.0 else 0.0, runq_s=0.0) for k in range(300)]
    assert longest_without_steal(flips, samples) == pytest.approx(1 / 60)
    assert longest_without_steal(flips, []) is None
