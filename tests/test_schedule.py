"""The schedule: deterministic, constrained, counterbalanced, and refused when unsafe."""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import math
import os
import random
import subprocess
import sys

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from experiment.errors import InputError
from experiment.protocol.model import ChoiceDuration, TruncExpDuration, UniformDuration, load_protocol
from experiment.protocol.cuff_timing import CuffTiming
from experiment.protocol.schedule import (COLUMNS, _draws_ms, _trial_order, build_schedule, check_timeline,
                                 choose_cue_mapping, phase_of, worst_case)
from tests.protocol_samples import DELETE, DEMO, LOGGIA, ROOT, edited, load_dict, protocol_from

DEMO_P = load_protocol(DEMO)
LOGGIA_P = load_protocol(LOGGIA)
LOGGIA_D = load_dict(LOGGIA)


def with_catch(**changes):
    """Loggia with catch trials on (two trial types, so order matters)."""
    return protocol_from(edited(LOGGIA_D, **{"trials.counts.catch_no_pain": 4, "trials.max_run_length": 2,
                                             "scan.n_volumes": 400, **changes}))


def rows(tsv: str) -> list[dict[str, str]]:
    head, *lines = tsv.splitlines()
    return [dict(zip(head.split("\t"), line.split("\t"))) for line in lines]


# ---------------------------------------------------------------- determinism


def test_same_inputs_give_identical_bytes_even_in_another_process():
    a = build_schedule(LOGGIA_P, seed=11, participant="P07").to_tsv()
    b = build_schedule(load_protocol(LOGGIA), seed=11, participant="P07").to_tsv()
    assert a == b
    code = ("import hashlib, sys\n"
            "from experiment.protocol.model import load_protocol\n"
            "from experiment.protocol.schedule import build_schedule\n"
            f"t = build_schedule(load_protocol({str(LOGGIA)!r}), seed=11, participant='P07').to_tsv()\n"
            "sys.stdout.write(hashlib.sha256(t.encode()).hexdigest())\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True,
                         env={**os.environ, "PYTHONHASHSEED": "12345"}, timeout=60)
    assert out.stdout == hashlib.sha256(a.encode()).hexdigest()


def test_different_seeds_give_different_orders_and_jitter():
    p = with_catch()
    tsvs = {build_schedule(p, seed=s).to_tsv() for s in range(5)}
    orders = {build_schedule(p, seed=s).trial_order for s in range(5)}
    assert len(tsvs) == 5 and len(orders) > 1
    assert build_schedule(p).seed == 2014  # the protocol's seed by default


def test_timeline_tiles_the_run_and_columns_are_documented():
    t = build_schedule(LOGGIA_P, seed=3, participant="P01")
    assert tuple(rows(t.to_tsv())[0]) == COLUMNS
    end = 0.0
    for i, e in enumerate(t.events):
        assert e.index == i and e.onset_s == pytest.approx(end, abs=1e-9) and e.duration_s > 0
        end = e.end_s
    assert t.run_length_s == pytest.approx(end)
    assert t.n_volumes_needed == math.ceil(t.run_length_s / 2.0)
    assert t.events[0].phase == "lead_in" and t.events[0].duration_s == 12.0 and t.events[0].trial == 0
    assert t.events[-1].phase == "tail" and t.events[-1].duration_s == 20.0
    assert [e.trial for e in t.events if e.phase == "pain_anticipation"] == list(range(1, 9))
    # durations are on the protocol's grids
    for e in t.events:
        if e.phase in ("pain_anticipation", "relief_anticipation"):
            assert 4 <= e.duration_s <= 8 and (e.duration_s * 2).is_integer()
        if e.phase == "rest":
            assert 15 <= e.duration_s <= 25
        if e.phase == "rating":
            assert e.kind == "rating" and e.bids_trial_type == "rating"


def test_target_reached_adds_the_predicted_ramp():
    t = build_schedule(DEMO_P)
    pain = [e for e in t.events if e.phase == "pain"]
    assert all(e.ramp_s == 0.5 and e.duration_s == 3.5 and e.rate_kpa_s == 40 and e.target_kpa == 20 for e in pain)
    assert all(e.cuff == "inflate" and e.timed_from == "target_reached" for e in pain)
    hold = [e for e in t.events if e.phase == "relief_anticipation"]
    assert all(e.target_kpa == 20 and e.ramp_s == 0 and e.rate_kpa_s is None for e in hold)
    assert all(e.target_kpa == 0.0 for e in t.events if e.cuff in ("none", "deflate"))
    # timed from onset: the ramp is reported but not added
    p = protocol_from(edited(load_dict(DEMO), **{"trial_types.pain.phases[1].timed_from": "onset"}))
    onset = [e for e in build_schedule(p).events if e.phase == "pain"]
    assert all(e.duration_s == 3.0 and e.ramp_s == 0.5 for e in onset)


def test_inflation_summary():
    t = build_schedule(DEMO_P)
    assert t.inflation_intervals() == [(4.5, 10.0), (19.0, 24.5)]
    assert t.inflated_s == 11.0


def test_phase_of():
    t = build_schedule(DEMO_P)
    assert phase_of(DEMO_P, t.events[0]) is None
    ph = phase_of(DEMO_P, t.events[5])
    assert ph.name == t.events[5].phase == "rating" and ph.kind == "rating"


# ---------------------------------------------------------------- random draws


def _rng(seed=0):
    return random.Random(seed)


def test_uniform_draws_cover_the_grid_evenly():
    draws = _draws_ms(UniformDuration(4.0, 8.0, 0.5), 9000, _rng())
    counts = collections.Counter(draws)
    assert sorted(counts) == list(range(4000, 8001, 500))
    assert all(800 < c < 1200 for c in counts.values())  # 1000 expected each


def test_choice_is_a_shuffled_deck():
    d = ChoiceDuration((2.0, 3.0, 5.0))
    for seed in range(20):
        six = _draws_ms(d, 6, _rng(seed))
        assert sorted(six) == [2000, 2000, 3000, 3000, 5000, 5000]
        seven = collections.Counter(_draws_ms(d, 7, _rng(seed)))
        assert sorted(seven.values()) == [2, 2, 3]
    firsts = {tuple(_draws_ms(d, 3, _rng(seed))) for seed in range(50)}
    assert len(firsts) == 6  # every order of the deck occurs


def test_truncexp_has_the_requested_mean_within_bounds():
    d = TruncExpDuration(mean_s=5.0, min_s=3.0, max_s=12.0, step_s=0.001)
    draws = _draws_ms(d, 20000, _rng())
    assert min(draws) >= 3000 and max(draws) <= 12000
    assert sum(draws) / len(draws) / 1000 == pytest.approx(5.0, abs=0.05)
    coarse = _draws_ms(TruncExpDuration(5.0, 3.0, 12.0, 0.5), 2000, _rng())
    assert all((x - 3000) % 500 == 0 and 3000 <= x <= 12000 for x in coarse)
    c = collections.Counter(coarse)
    assert c[3500] > c[5000] > c[7000] > c[10000]  # exponential: decreasing away from min


# ---------------------------------------------------------------- trial order


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(0, 12), min_size=1, max_size=4), st.integers(1, 4), st.integers(0, 2**32))
def test_trial_order_respects_max_run_length(counts, limit, seed):
    named = {f"t{i}": c for i, c in enumerate(counts)}
    total = sum(counts)
    most = max(counts)
    if total == 0 or most > limit * (total - most + 1):
        return  # the protocol checker refuses these (tested in test_protocol)
    order = _trial_order(named, limit, _rng(seed))
    assert collections.Counter(order) == collections.Counter({k: v for k, v in named.items() if v})
    run = 1
    for a, b in zip(order, order[1:]):
        run = run + 1 if a == b else 1
        assert run <= limit


def test_unconstrained_order_is_uniform():
    counts = collections.Counter(tuple(_trial_order({"a": 2, "b": 2}, None, _rng(s))) for s in range(1200))
    assert len(counts) == 6 and all(150 < c < 250 for c in counts.values())  # 200 expected each


def test_protocol_max_run_length_is_kept():
    p = with_catch()
    for seed in range(30):
        order = build_schedule(p, seed=seed).trial_order
        assert collections.Counter(order) == {"pain": 8, "catch_no_pain": 4}
        assert all(not (order[i] == order[i + 1] == order[i + 2]) for i in range(len(order) - 2))


# ---------------------------------------------------------------- counterbalancing


def test_participant_number_alternates_mappings():
    p = protocol_from(edited(LOGGIA_D, **{"cue_mapping.select": "participant_number"}))
    assert [choose_cue_mapping(p, f"P{n:02d}")[0] for n in (1, 2, 3, 4, 10)] == [0, 1, 0, 1, 1]
    assert choose_cue_mapping(p, None) == (0, {"pain_cue": "orange_triangle", "relief_cue": "blue_circle"})
    with pytest.raises(InputError, match=r"participant 'abc' does not end in a number, which "
                                         r"cue_mapping\.select: participant_number needs"):
        build_schedule(p, participant="abc")


def test_participant_hash_uses_every_mapping_and_only_changes_cues():
    by_label = {f"S{n}": choose_cue_mapping(LOGGIA_P, f"S{n}")[0] for n in range(40)}
    assert set(by_label.values()) == {0, 1}
    assert all(choose_cue_mapping(LOGGIA_P, k)[0] == v for k, v in by_label.items())  # stable
    zero = next(k for k, v in by_label.items() if v == 0)
    one = next(k for k, v in by_label.items() if v == 1)
    a, b = build_schedule(LOGGIA_P, participant=zero), build_schedule(LOGGIA_P, participant=one)
    ra, rb = rows(a.to_tsv()), rows(b.to_tsv())
    swap = {"orange_triangle": "blue_circle", "blue_circle": "orange_triangle", "fixation": "fixation"}
    for x, y in zip(ra, rb):
        assert {k: v for k, v in x.items() if k != "cue"} == {k: v for k, v in y.items() if k != "cue"}
        assert swap[x["cue"]] == y["cue"]
    assert a.cue_mapping == {"pain_cue": "orange_triangle", "relief_cue": "blue_circle"}
    assert b.cue_mapping_index == 1 and b.participant == one


def test_no_mapping_and_bad_labels():
    t = build_schedule(DEMO_P, participant="P01")
    assert t.cue_mapping == {} and t.cue_mapping_index is None
    with pytest.raises(InputError, match=r"participant 'P-01' is not a valid BIDS label"):
        build_schedule(DEMO_P, participant="P-01")
    for bad in (-1, True, 1.5):
        with pytest.raises(InputError, match=r"seed must be a whole number >= 0"):
            build_schedule(DEMO_P, seed=bad)


# ---------------------------------------------------------------- pressure


def test_calibrated_pressure_placeholder_and_override():
    d = edited(load_dict(DEMO), **{"stimulation.target": "calibrated", "stimulation.calibrated_fraction": 0.9})
    p = protocol_from(d)
    t = build_schedule(p)
    assert t.target_kpa is None
    pain = [r for r in rows(t.to_tsv()) if r["phase"] in ("pain", "relief_anticipation")]
    assert {r["target_kpa"] for r in pain} == {"calibrated"}
    assert {r["ramp_s"] for r in pain if r["phase"] == "pain"} == {"0.750"}  # ceiling 30 kPa / 40 kPa/s
    assert worst_case(p).ramp_s == 0.75
    t25 = build_schedule(p, pressure_kpa=25.0)
    assert t25.target_kpa == 25.0 and {e.ramp_s for e in t25.events if e.cuff == "inflate"} == {0.625}
    with pytest.raises(InputError, match=r"^<test>:\d+:\d+: safety\.max_pressure: the participant's pressure "
                                         r"for level 'target', 31 kPa, is above safety\.max_pressure \(30 kPa\)$"):
        build_schedule(p, pressure_kpa=31.0)
    with pytest.raises(InputError, match=r"calibrated pressure of level 'target' must be a number of kPa > 0, got -1"):
        build_schedule(p, pressure_kpa=-1)


def test_explicit_target_refuses_a_calibrated_pressure():
    with pytest.raises(InputError, match=r"stimulation\.target: the protocol gives its pressures \(20 kPa\); "
                                         r"one calibrated pressure applies only to target: calibrated"):
        build_schedule(DEMO_P, pressure_kpa=20.0)


# ---------------------------------------------------------------- pre-flight refusals


IDEAL = CuffTiming(ramp_margin_s=0.0, ramp_margin_fraction=0.0, release_margin_s=0.0, onset_slack_s=0.0)


def test_worst_case_uses_the_deck_exactly():
    wc = worst_case(DEMO_P)
    # 2 + 3 tail + 2 x (3 + 3.5 + 2 + 1 + 4) + the deck [2, 3] dealt twice = 5
    assert wc.run_length_s == 37.0
    # SET to DEFLATE: pain 3 s after a ramp of up to 20 / 40 x 1.1 + 1 = 1.55 s, relief 2 s, slack 0.05 s = 6.6 s;
    # per stimulus plus the release, also up to 1.55 s; per run 2 x 6.6 s
    assert (wc.ramp_s, wc.device_ramp_s, wc.release_s) == (0.5, 1.55, 1.55)
    assert (wc.inflation_per_stimulus_s, wc.inflation_per_run_s, wc.deflated_between_s) == (8.15, 13.2, 9.0)
    # an ideal cuff: the ramp as planned, the release at the commanded rate
    ideal = worst_case(DEMO_P, timing=IDEAL)
    assert (ideal.inflation_per_stimulus_s, ideal.inflation_per_run_s) == (6.0, 11.0)
    # per level: (planned ramp, ramp counted, release counted)
    assert wc.levels == {"target": (0.5, 1.55, 1.55)} and ideal.levels == {"target": (0.5, 0.5, 0.5)}
    assert dataclasses.replace(ideal, inflation_per_stimulus_s=0, inflation_per_run_s=0, device_ramp_s=0,
                               release_s=0, levels={}) == \
        dataclasses.replace(wc, inflation_per_stimulus_s=0, inflation_per_run_s=0, device_ramp_s=0, release_s=0,
                            levels={})


def test_cuff_timing_model():
    t = CuffTiming()
    assert (t.ramp_margin_s, t.ramp_margin_fraction, t.release_margin_s, t.onset_slack_s) == (1.0, 0.1, 1.0, 0.05)
    assert t.ramp_ms(40, 30) == 2467 and t.release_ms(40, 30) == 2467 and t.slack_ms == 50  # 1.333 x 1.1 + 1
    assert t.ramp_ms(20, 40) == 1550                                                          # no float crumbs
    assert CuffTiming(ramp_margin_s=0.5, release_margin_s=0.2).release_ms(20, 40) == 750
    for bad in (-0.1, math.nan, math.inf, True, "1"):
        with pytest.raises(ValueError, match=r"CuffTiming\.ramp_margin_s must be a number >= 0"):
            CuffTiming(ramp_margin_s=bad)


def test_the_timing_model_changes_the_checks_never_the_timeline():
    slow = CuffTiming(ramp_margin_s=2.0, ramp_margin_fraction=0.5)
    assert build_schedule(DEMO_P, timing=slow).to_tsv() == build_schedule(DEMO_P).to_tsv() \
        == build_schedule(DEMO_P, timing=IDEAL).to_tsv()
    assert worst_case(DEMO_P, timing=slow).run_length_s == worst_case(DEMO_P).run_length_s


def test_calibrated_target_is_modelled_at_the_ceiling():
    p = protocol_from(edited(load_dict(DEMO), **{"stimulation.target": "calibrated"}))
    wc = worst_case(p)                       # ceiling 30 kPa at 40 kPa/s: 0.75 x 1.1 + 1
    assert (wc.ramp_s, wc.device_ramp_s, wc.release_s) == (0.75, 1.825, 1.825)
    assert wc.inflation_per_stimulus_s == 3 + 1.825 + 2 + 0.05 + 1.825
    lower = worst_case(p, pressure_kpa=10.0)  # 0.25 x 1.1 + 1
    assert (lower.device_ramp_s, lower.release_s) == (1.275, 1.275)


@pytest.mark.parametrize("changes,message", [
    ({"scan.n_volumes": 36},
     r"^<test>:\d+:\d+: scan\.n_volumes: the run can last up to 37 s \(every jittered duration at its longest\) but "
     r"36 volumes x 1 s = 36 s are declared; declare at least 37 volumes or shorten the protocol$"),
    ({"safety.max_inflation_per_stimulus_s": 8.149},
     r"^<test>:\d+:\d+: trial_types\.pain\.phases\[1\]: the cuff can hold air 8\.15 s \(phases pain to "
     r"relief_anticipation at their longest, the ramp counted as up to 1\.55 s, not 0\.5 s, since pain waits for the "
     r"target; SET to DEFLATE up to 6\.6 s plus up to 1\.55 s to release\), over "
     r"safety\.max_inflation_per_stimulus_s \(8\.149 s\)$"),
    ({"safety.max_inflation_per_stimulus_s": 6.5, "trial_types.pain.phases[1].timed_from": "onset"},
     r"^<test>:\d+:\d+: trial_types\.pain\.phases\[1\]: the cuff can hold air 6\.6 s \(phases pain to "
     r"relief_anticipation at their longest, SET to DEFLATE up to 5\.05 s plus up to 1\.55 s to release\), over "
     r"safety\.max_inflation_per_stimulus_s \(6\.5 s\)$"),
    ({"safety.max_cumulative_inflation_per_run_s": 13.199},
     r"^<test>:\d+:\d+: safety\.max_cumulative_inflation_per_run_s: the cuff can be inflated 13\.2 s in one run "
     r"\(every stimulus at its longest from SET to DEFLATE, the ramp counted as up to 1\.55 s where a phase waits "
     r"for it\), over this limit \(13\.199 s\); use fewer or shorter stimuli$"),
    ({"safety.min_deflated_between_s": 9.5},
     r"^<test>:\d+:\d+: safety\.min_deflated_between_s: two stimuli can come 9 s apart \(deflate to next inflate, "
     r"every duration in between at its shortest\), under this minimum \(9\.5 s\)"),
])
def test_preflight_refuses(changes, message):
    p = protocol_from(edited(load_dict(DEMO), **changes))
    with pytest.raises(InputError, match=message):
        build_schedule(p)


def test_deflated_gap_across_trial_types():
    # pain followed by a trial type whose cue-to-inflation time is short
    d = edited(load_dict(DEMO), **{"safety.min_deflated_between_s": 8, "scan.n_volumes": 80})
    quick = edited(d["trial_types"]["pain"], **{"phases[5]": DELETE, "phases[4]": DELETE})
    d["trial_types"]["quick"] = quick
    d["trials"]["counts"]["quick"] = 1
    with pytest.raises(InputError, match=r"two stimuli can come 3 s apart"):
        build_schedule(protocol_from(d))  # quick -> pain: quick's deflation 1 s + pain's anticipation 2 s


def test_check_timeline_refuses_broken_timelines():
    t = build_schedule(DEMO_P)
    ev = list(t.events)

    def broken(i, **kw):
        e = list(ev)
        e[i] = dataclasses.replace(e[i], **kw)
        return dataclasses.replace(t, events=tuple(e))

    with pytest.raises(InputError, match=r"timeline event 3 \(relief_anticipation, trial 1\) at 7\.000 s overlaps "
                                         r"the previous one \(which ends at 8\.000 s\)"):
        check_timeline(broken(3, onset_s=7.0), DEMO_P)
    with pytest.raises(InputError, match=r"timeline event 3 .* leaves a gap after the previous one"):
        check_timeline(broken(3, onset_s=8.5), DEMO_P)
    with pytest.raises(InputError, match=r"timeline event 4 \(deflation, trial 1\) has duration 0 s"):
        check_timeline(broken(4, duration_s=0.0), DEMO_P)
    with pytest.raises(InputError, match=r"timeline event 2 targets 35 kPa, above 30 kPa"):
        check_timeline(broken(2, target_kpa=35.0), DEMO_P)
    with pytest.raises(InputError, match=r"the run lasts 45\.5 s, longer than the declared scan \(40 s\)"):
        check_timeline(broken(13, duration_s=13.0), DEMO_P)
    with pytest.raises(InputError, match=r"safety\.max_inflation_per_stimulus_s: the stimulus at 4\.500 s can hold "
                                         r"air 15\.150 s \(planned SET to DEFLATE 12\.500 s, up to 13\.600 s with a "
                                         r"slower cuff, plus up to 1\.550 s to release\), over this limit$"):
        longer = list(ev)
        longer[2] = dataclasses.replace(ev[2], duration_s=10.5)
        shift = 7.0
        longer[3:] = [dataclasses.replace(e, onset_s=round(e.onset_s + shift, 3)) for e in ev[3:]]
        longer[-1] = dataclasses.replace(longer[-1], duration_s=0.5)
        check_timeline(dataclasses.replace(t, events=tuple(longer)), DEMO_P)
    check_timeline(t, DEMO_P)  # the original passes


# ---------------------------------------------------------------- property: built timelines keep every limit

durations = st.one_of(
    st.integers(1, 20).map(lambda x: x / 2),
    st.tuples(st.integers(1, 10), st.integers(0, 10)).map(
        lambda t: {"dist": "uniform", "min": t[0], "max": t[0] + t[1], "step": 1}),
    st.lists(st.integers(1, 20), min_size=1, max_size=4).map(lambda v: {"dist": "choice", "values": v}),
)


timings = st.builds(CuffTiming, ramp_margin_s=st.sampled_from([0.0, 0.3, 1.0, 2.5]),
                    ramp_margin_fraction=st.sampled_from([0.0, 0.1, 0.25]),
                    release_margin_s=st.sampled_from([0.0, 0.4, 1.0]), onset_slack_s=st.sampled_from([0.0, 0.05]))


@settings(max_examples=150, deadline=None)
@given(st.lists(durations, min_size=6, max_size=6), st.integers(1, 6), st.integers(150, 600),
       st.integers(5, 60), st.integers(0, 30), st.integers(0, 1000), timings,
       st.sampled_from(["onset", "target_reached"]), st.sampled_from([2, 10, 30, 100]), st.integers(20, 150))
def test_built_timelines_keep_every_limit(durs, count, n_volumes, max_stim, min_gap, seed, timing, timed_from, rate,
                                          max_run):
    """Whatever passes pre-flight keeps the modelled inflation (a cuff as slow as `timing`
    allows: the waited-for ramp stretched, SET and DEFLATE off by the slack, then the
    release) under the per-stimulus and per-run limits; modelled here independently."""
    d = load_dict(DEMO)
    changes = {f"trial_types.pain.phases[{i}].duration": v for i, v in enumerate(durs)}
    changes["trial_types.pain.phases[4].duration"] = max(4, durs[4]) if isinstance(durs[4], float) else 4
    changes.update({"trials.counts.pain": count, "scan.n_volumes": n_volumes,
                    "safety.max_inflation_per_stimulus_s": max_stim, "safety.min_deflated_between_s": min_gap,
                    "safety.max_cumulative_inflation_per_run_s": max_run,
                    "trial_types.pain.phases[1].timed_from": timed_from, "stimulation.rate_kpa_s": rate})
    p = protocol_from(edited(d, **changes))
    try:
        t = build_schedule(p, seed=seed, timing=timing)
    except InputError as exc:
        assert exc.message.startswith("<test>:") and "\n" not in exc.message
        event(f"refused: {exc.message.split(': ')[1]}")
        return
    event("built")
    s = p.safety
    assert t.run_length_s <= n_volumes * 1.0
    spans = t.inflation_intervals()
    assert len(spans) == count
    assert all(b2 - e1 >= min_gap - 1e-9 for (_, e1), (b2, _) in zip(spans, spans[1:]))
    total = 0.0
    for inflate, deflate in t.stimuli():
        ideal_s = inflate.target_kpa / inflate.rate_kpa_s
        slow_s = ideal_s * (1 + timing.ramp_margin_fraction)
        held = deflate.onset_s - inflate.onset_s + timing.onset_slack_s
        if inflate.timed_from == "target_reached":
            held += slow_s + timing.ramp_margin_s - inflate.ramp_s
        release = slow_s + timing.release_margin_s
        assert held + release <= s.max_inflation_per_stimulus_s + 1e-9
        total += held
    assert total <= max_run + 1e-9
