"""Benchmark 1 (onset accuracy and drift, cuedpain vs relative waits) and benchmark 3 (cuff
command latency), both from real-time dry runs in a window.

1. `cuedpain run PROTOCOL --participant BENCH --dry-run` runs in real time with the
   simulated scanner and cuff; its stdout lines are stamped (a start-up sample for
   benchmark 6) and its `log.jsonl` is read afterwards. Per cue (`onset` records, trial
   > 0): flip time minus the runner's planned time.
2. Right after it, on the same machine and display, `benchmarks.naive_runner` drives the
   same timeline (checked identical to the run's `plan` records) with per-phase
   `core.wait`; its onsets are measured against the absolute plan t0 + onset.
3. Benchmark 3 from the same `log.jsonl`: every cuff command tagged with a plan index,
   against that event's planned time and flip, and its acknowledgement.
4. While the dry run goes on, `benchmarks.stalls.StallProbe` samples the hypervisor's steal
   time and the run's frame-loop thread's run-queue wait; each run's brief says how many
   dropped frames held either (benchmarks/stalls.py).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from benchmarks import analysis
from benchmarks.proc import StampedProcess
from benchmarks.stalls import StallProbe, attribute_drops
from experiment.clock import Clock, psychopy_clock
from experiment.log.eventlog import read_log

PARTICIPANT = "BENCH"
STARTUP_MARKERS = {"banner_s": "DRY RUN: simulated cuff and scanner", "devices_open_s": "writing to ",
                   "waiting_s": "waiting for the scanner"}


def cuedpain_argv(protocol: Path, *extra: str) -> list[str]:
    """The run command, as an operator types it (`cuedpain` is `python -m experiment`)."""
    return [sys.executable, "-m", "experiment", "run", str(protocol), *extra]


def run_cuedpain(protocol: Path, *, data_dir: Path, env: dict[str, str], clock: Clock, timeout_s: float,
                 work_dir: Path) -> dict[str, Any]:
    """The real-time dry run; its log records, start-up marks and exit code."""
    argv = cuedpain_argv(protocol, "--participant", PARTICIPANT, "--dry-run", "--data", str(data_dir))
    proc = StampedProcess(argv, clock=clock, env=env, stderr_path=work_dir / "cuedpain-dryrun.stderr")
    with StallProbe(proc.proc.pid, psychopy_clock()) as probe:   # stamped on the run's own clock
        code = proc.wait(timeout_s)
    wall_s = clock.now() - proc.start_t
    logs = sorted(data_dir.glob("sourcedata/*/*/log.jsonl"))
    if code != 0 or not logs:
        raise RuntimeError(f"the dry run exited {code}: {proc.stderr_tail()}")
    log = read_log(logs[0])
    return {"exit_code": code, "wall_s": wall_s,
            "startup": analysis.marker_times(proc.lines, STARTUP_MARKERS, start_t=proc.start_t),
            "records": log.records, "stall_samples": probe.samples}


def run_naive(protocol: Path, *, env: dict[str, str], clock: Clock, timeout_s: float, work_dir: Path) -> dict[str, Any]:
    out = work_dir / "naive.json"
    argv = [sys.executable, "-m", "benchmarks.naive_runner", str(protocol), "--participant", PARTICIPANT,
            "--out", str(out)]
    proc = StampedProcess(argv, clock=clock, env=env, stderr_path=work_dir / "naive.stderr")
    code = proc.wait(timeout_s)
    if code != 0 or not out.exists():
        raise RuntimeError(f"the comparison runner exited {code}: {proc.stderr_tail()}")
    return json.loads(out.read_text())


def same_timeline(records: list[dict[str, Any]], naive_plan: list[dict[str, Any]]) -> bool:
    """The naive runner drove exactly the run's timeline (indices, onsets, durations)."""
    ours = [(r["i"], r["onset_s"], r["duration_s"]) for r in records if r.get("kind") == "plan"]
    theirs = [(p["i"], p["onset_s"], p["duration_s"]) for p in naive_plan]
    return ours == theirs


def per_cue(times_s: list[float], errors_s: list[float], phases: list[str]) -> list[list[Any]]:
    """[planned onset s, error ms, phase] per cue, for results.json."""
    return [[round(t, 3), round(e * 1000, 3), ph] for t, e, ph in zip(times_s, errors_s, phases)]


def analyse(dry: dict[str, Any], naive: dict[str, Any]) -> dict[str, Any]:
    """Benchmark 1 and 3 numbers from the two runs (pure)."""
    records = dry["records"]
    if not same_timeline(records, naive["plan"]):
        raise RuntimeError("the comparison runner's timeline differs from the dry run's plan: not comparable")
    t_ours, e_ours, ph_ours = analysis.onset_errors(records)
    t_naive, e_naive, ph_naive = analysis.onset_errors([{"kind": "onset", **o} for o in naive["onsets"]])
    d_ours, d_naive = analysis.drift(t_ours, e_ours), analysis.drift(t_naive, e_naive)
    frames = analysis.first_of_kind(reversed(records), "frames")
    cuff = analysis.cuff_latencies(records)
    return {
        "cuedpain": {"errors": analysis.error_summary(e_ours).as_dict(), "drift": d_ours.as_dict(),
                     "per_cue_ms": per_cue(t_ours, e_ours, ph_ours),
                     "frames": frames, "drops_by_phase": analysis.drops_by_phase(records),
                     "display": analysis.first_of_kind(records, "display"),
                     "reanchored": sum(1 for r in records if r.get("kind") == "reanchor")},
        "naive": {"style": naive["style"], "errors": analysis.error_summary(e_naive).as_dict(),
                  "drift": d_naive.as_dict(),
                  "per_cue_ms": per_cue(t_naive, e_naive, ph_naive)},
        "drift_ratio_slope": analysis.ratio(d_naive.slope_ms_per_min, d_ours.slope_ms_per_min),
        "drift_ratio_slope_conservative": analysis.conservative_ratio(d_naive, d_ours),
        "drift_ratio_last_minus_first": analysis.ratio(d_naive.last_minus_first_ms, d_ours.last_minus_first_ms),
        "cuff_latency": {"commands": sorted(set(cuff.commands)), "n": len(cuff.commands),
                         "planned_to_write": analysis.summarize(cuff.planned_to_write).as_dict(),
                         "flip_to_write": analysis.summarize(cuff.flip_to_write).as_dict(),
                         "write_to_ack": analysis.summarize(cuff.write_to_ack).as_dict()},
        "gc": analysis.gc_summary(records),
    }


def brief(dry: dict[str, Any]) -> dict[str, Any]:
    """One dry run in a line of figures (for `--repeat`: every run, and which was the worst)."""
    records = dry["records"]
    _, errors, _ = analysis.onset_errors(records)
    frames = analysis.first_of_kind(reversed(records), "frames") or {}
    cuff = analysis.cuff_latencies(records)
    largest, longest = analysis.worst_key(records)
    return {"largest_onset_error_ms": round(largest * 1000, 3), "longest_frame_ms": round(longest * 1000, 3),
            "frames_over_1_5": frames.get("dropped"), "n_frames": frames.get("n"),
            "over_half_frame": sum(1 for e in errors if abs(e) > (1 / 120)),
            "cuff_planned_to_write_p99_ms": analysis.summarize(cuff.planned_to_write).as_dict().get("p99_ms"),
            "gc": analysis.gc_summary(records),
            "stalls": attribute_drops(records, dry.get("stall_samples", []), n_cpus=os.cpu_count() or 1)}
