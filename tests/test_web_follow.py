"""Following a step's logs as they grow, and the live view computed from them (pure)."""

from __future__ import annotations

import json
from pathlib import Path

from experiment.web.follow import StepRecords, Tail, live_view, tr_estimate_s, trace_points


def test_a_tail_returns_complete_new_lines_only(tmp_path: Path) -> None:
    f = tmp_path / "log.jsonl"
    tail = Tail(f)
    assert tail.read() == []                                   # not there yet
    f.write_text('{"kind":"header"}\n{"kind":"pla')
    assert tail.read() == [{"kind": "header"}]
    with open(f, "a") as fh:
        fh.write('n","i":0}\n')
    assert tail.read() == [{"kind": "plan", "i": 0}]
    assert tail.read() == []


def _run(records: list[dict], samples: list[dict] | None = None) -> StepRecords:
    step = StepRecords()
    step.add([{"kind": "header", "task": "t", "n_volumes": 10, "tr_s": 2.0, "briefing": {"ceiling_kpa": 50.0}},
              *records], samples or [])
    return step


PLAN = [{"kind": "plan", "i": 0, "trial": 0, "phase": "lead_in", "onset_s": 0.0},
        {"kind": "plan", "i": 1, "trial": 1, "phase": "cue", "onset_s": 4.0},
        {"kind": "plan", "i": 2, "trial": 1, "phase": "pain", "onset_s": 6.0},
        {"kind": "plan", "i": 3, "trial": 1, "phase": "relief", "onset_s": 9.0},
        {"kind": "plan", "i": 4, "trial": 2, "phase": "cue", "onset_s": 12.0}]


def test_the_live_view_of_a_run() -> None:
    pulses = [{"kind": "pulse", "t": 100.0 + 2.0 * k, "volume": k} for k in range(4)]
    step = _run([*PLAN, {"kind": "waiting", "t": 99.0}, {"kind": "pulse", "t": 98.0, "volume": None},
                 {"kind": "t0", "t": 100.0}, *pulses,
                 {"kind": "onset", "t": 104.0, "i": 1, "trial": 1, "phase": "cue"},
                 {"kind": "onset", "t": 106.0, "i": 2, "trial": 1, "phase": "pain"},
                 {"kind": "reanchor", "t": 106.5, "i": 2, "shift_s": 0.5},
                 {"kind": "frame_drop", "t": 106.2, "interval_s": 0.05},
                 {"kind": "warning", "t": 107.0, "code": "missed_pulse", "message": "gap"}])
    v = live_view(step, now_t=107.0)
    assert (v["trial"], v["n_trials"], v["phase"]) == (1, 2, "pain")
    assert v["next_in_s"] == 2.5                    # relief at 9 s, moved 0.5 s by the re-anchor
    assert (v["pulses"], v["pulses_discarded"], v["pulses_expected"]) == (4, 1, 10)
    assert v["tr_est_s"] == 2.0 and v["dropped_frames"] == 1 and v["ceiling_kpa"] == 50.0
    assert v["warnings"] == [{"kind": "warning", "code": "missed_pulse", "message": "gap", "at_s": 7.0}]
    assert v["phase_label"] == "pain" and v["end"] is None


def test_waiting_instructions_and_the_end() -> None:
    step = _run([*PLAN, {"kind": "instructions", "t": 1.0, "page": 1, "n_pages": 2, "text": "x"}])
    assert live_view(step, now_t=2.0)["phase_label"] == "instructions on screen (page 1 of 2)"
    step.add([{"kind": "instructions_turned", "page": 1}, {"kind": "instructions_turned", "page": 2},
              {"kind": "waiting", "t": 3.0}], [])
    assert live_view(step, now_t=3.0)["phase_label"] == "waiting for the scanner"
    step.add([{"kind": "end", "t": 4.0, "status": "aborted", "reason": "sigint", "exit_code": 3}], [])
    v = live_view(step, now_t=4.0)
    assert v["end"]["status"] == "aborted" and v["phase_label"] == "ended: aborted"


def test_a_calibration_view_and_the_trace() -> None:
    step = StepRecords()
    step.add([{"kind": "header", "purpose": "calibration", "ceiling_kpa": 60},
              {"kind": "stimulus", "t": 5.0, "index": 2, "target_kpa": 35.0},
              {"kind": "rating", "index": 1, "target_kpa": 30.0, "rating": 40}],
             [{"kind": "p", "t": 5.0, "p": 1.0, "tgt": 35.0}, {"kind": "p", "t": 5.04, "p": 2.5, "tgt": 35.0}])
    v = live_view(step, now_t=5.1)
    assert v["phase_label"] == "stimulus 2 at 35.0 kPa: stimulus on" and v["ceiling_kpa"] == 60
    assert trace_points(step.samples, 5.0) == [[0.0, 1.0, 35.0], [0.04, 2.5, 35.0]]
    assert tr_estimate_s([0.0]) is None
    assert json.dumps(v)


def test_the_cached_live_view_is_the_live_view() -> None:
    """LiveViews recomputes over the records only when they grew; in between only the clock moves."""
    from experiment.web.follow import LiveViews

    step = _run([*PLAN, {"kind": "t0", "t": 100.0}])
    views = LiveViews()
    for now in (100.5, 103.0, 105.9):
        assert views.view(step, now_t=now) == live_view(step, now_t=now)
    step.add([{"kind": "onset", "t": 104.0, "i": 1, "trial": 1, "phase": "cue"},
              {"kind": "reanchor", "t": 104.5, "i": 1, "shift_s": 0.5}], [])
    assert views.view(step, now_t=106.0) == live_view(step, now_t=106.0)
    assert views.view(step, now_t=106.0)["next_in_s"] == 0.5 and views.view(step, now_t=None)["next_in_s"] is None
