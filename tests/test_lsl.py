"""Lab Streaming Layer outlets (docs/lsl.md): the pure marker mapping, and a short real-time dry run
whose markers and pressure trace a pylsl inlet in this test receives, stamped as the log says.

LSL stays on this machine: LSLAPICFG names docs/lsl_api.cfg (machine resolve scope, no IPv6,
127.0.0.1 as the only known peer) before pylsl is imported here or in the run's process, so no
packet leaves loopback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
os.environ["LSLAPICFG"] = str(ROOT / "docs" / "lsl_api.cfg")     # before pylsl is loaded

from experiment.clock import RealClock  # noqa: E402
from experiment.log.lsl import MARKER_KINDS, markers_of, measure_offset  # noqa: E402
from tests.protocol_samples import edited, load_dict  # noqa: E402


def test_markers_of_a_record() -> None:
    cmd = {"seq": 7, "kind": "cuff_cmd", "t_write": 10.0, "t_ack": 10.004, "command": "SET", "ok": True, "i": 3}
    (t1, m1), (t2, m2) = markers_of(cmd)
    assert (t1, t2) == (10.0, 10.004)
    assert json.loads(m1)["kind"] == "cuff_cmd" and json.loads(m2)["kind"] == "cuff_ack"
    assert "seq" not in json.loads(m1) and json.loads(m2)["i"] == 3
    assert [t for t, _ in markers_of({**cmd, "t_ack": None})] == [10.0]     # no answer: no ack marker
    rating = {"kind": "rating", "t_onset": 1.0, "t_response": 2.5, "t": 3.0, "rating": 40}
    assert markers_of(rating)[0][0] == 2.5
    assert markers_of({**rating, "t_response": None})[0][0] == 3.0      # timed out: when it was logged
    assert markers_of({"kind": "plan", "i": 0}) == [] and markers_of({"kind": "frames", "t": 1.0}) == []
    assert {"onset", "cuff_cmd", "rating", "pulse"} <= MARKER_KINDS


def test_the_offset_is_read_between_two_clock_reads() -> None:
    ticks = iter([1.0, 1.5, 1.2, 1.2001, 2.0, 3.0])     # the second read is bracketed most tightly
    offset, half_width = measure_offset(RealClock(lambda: next(ticks)), lambda: 50.0, tries=3)
    assert offset == pytest.approx(50.0 - 1.20005) and half_width == pytest.approx(0.00005)


def _protocol(tmp_path: Path) -> Path:
    """One short trial; three instruction pages (a dry run turns each after 1 s, and its scanner
    starts after them) give the inlets time to connect before the first marker."""
    d = edited(load_dict(), **{
        "trials.counts": {"pain": 1}, "scan.tr_s": 0.5, "scan.n_volumes": 12, "scan.lead_in_s": 0.5,
        "scan.tail_s": 0.5, "rating.timeout_s": 2,
        "trial_types.pain.phases": [
            {"name": "pain_anticipation", "cue": "pain_cue", "duration": 0.5, "bids_trial_type": "pain_anticipation"},
            {"name": "pain", "cue": "fixation", "cuff": "inflate", "duration": 1, "bids_trial_type": "pain"},
            {"name": "deflation", "cue": "relief_cue", "cuff": "deflate", "duration": 0.5},
            {"name": "rating", "kind": "rating", "cue": "fixation", "duration": 2, "bids_trial_type": "rating"},
            {"name": "rest", "cue": "fixation", "duration": 0.5}]})
    d.pop("checks", None)
    d["instructions"] = ["one", "two", "three"]
    (tmp_path / "protocols").mkdir()
    (tmp_path / "stimuli").symlink_to(ROOT / "stimuli")
    path = tmp_path / "protocols" / "lsl.yaml"
    path.write_text(yaml.safe_dump(d, sort_keys=False))
    return path


@pytest.mark.realtime
@pytest.mark.display
def test_an_inlet_receives_the_markers_and_pressure_of_a_dry_run_stamped_as_logged(xdisplay, tmp_path) -> None:
    import pylsl

    data = tmp_path / "data"
    run = subprocess.Popen([sys.executable, "-m", "experiment", "run", str(_protocol(tmp_path)), "--participant",
                            "L01", "--session", "1", "--dry-run", "--lsl", "--data", str(data)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                           env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        source = "cuedpain_sub-L01_ses-1_task-demo_run-1"
        found = []
        deadline = time.monotonic() + 30
        while len(found) < 2 and time.monotonic() < deadline and run.poll() is None:
            found = [s for s in pylsl.resolve_byprop("type", "Markers", 1, 1.0) + pylsl.resolve_byprop(
                "type", "Pressure", 1, 1.0) if s.source_id().startswith(source)]
        assert len(found) == 2, f"streams not found; run: {run.poll()}"
        inlets = {s.type(): pylsl.StreamInlet(s, max_buflen=60) for s in found}
        for inlet in inlets.values():
            inlet.open_stream(5.0)
        info = inlets["Markers"].info(5.0)
        received: dict[str, tuple[list, list]] = {k: ([], []) for k in inlets}
        while run.poll() is None:
            for kind, inlet in inlets.items():
                samples, stamps = inlet.pull_chunk(timeout=0.05)
                received[kind][0].extend(samples)
                received[kind][1].extend(stamps)
        time.sleep(0.5)
        for kind, inlet in inlets.items():
            samples, stamps = inlet.pull_chunk(timeout=0.5)
            received[kind][0].extend(samples)
            received[kind][1].extend(stamps)
        assert run.wait(30) == 0, run.stderr.read() if run.stderr else ""
    finally:
        if run.poll() is None:
            run.kill()
    run_dir = data / "sourcedata" / "sub-L01" / "ses-1" / "sub-L01_ses-1_task-demo_run-1"
    log = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    opened = next(r for r in log if r["kind"] == "lsl" and r["event"] == "open")
    closed = next(r for r in log if r["kind"] == "lsl" and r["event"] == "close")
    offset = opened["offset_s"]
    assert log[0]["lsl"] is True and abs(closed["offset_change_s"]) < 0.002
    assert "streams" in dict(map(tuple, log[0]["briefing"]["lines"]))     # the operator was told
    from tests.test_log_records import record_problems
    assert record_problems(log[0], log[1:]) == []      # the lsl records are the typed ones

    # the stream's metadata names the run
    desc = info.desc()
    assert [desc.child_value(k) for k in ("participant", "session", "run", "protocol")] == \
        ["L01", "1", "1", "cuedpain demo"]

    # every marker of the log after the outlets opened, in order, stamped within 2 ms of its logged time
    after = [r for r in log if r["seq"] > opened["seq"]]
    expected = [m for r in after for m in markers_of(r)]
    texts = [s[0] for s in received["Markers"][0]]
    got = dict(zip(texts, received["Markers"][1]))
    kinds = {json.loads(t)["kind"] for t in texts}
    assert {"onset", "cuff_cmd", "cuff_ack", "rating", "pulse", "t0", "end"} <= kinds
    assert texts == [text for _, text in expected]
    assert all(abs(got[text] - (t + offset)) < 0.002 for t, text in expected)

    # every pressure sample of pressure.jsonl from the first the inlet got (it connects a few samples
    # after the outlet opens, when the trace has begun), each stamped within 2 ms of its logged time
    samples = [json.loads(line) for line in (run_dir / "pressure.jsonl").read_text().splitlines()[1:]]
    values, stamps = received["Pressure"]
    expected_p = [s for s in samples if s["t"] + offset >= stamps[0] - 0.002]
    assert len(values) == len(expected_p) > 100
    assert all(abs(ts - (s["t"] + offset)) < 0.002 for ts, s in zip(stamps, expected_p))
    assert all(abs(v[0] - s["p"]) < 1e-3 and abs(v[1] - s["tgt"]) < 1e-3 for v, s in zip(values, expected_p))
    assert max(v[0] for v in values) > 15.0      # the stimulus is in the trace
    assert inlets["Pressure"].info().nominal_srate() == pytest.approx(25.0)
