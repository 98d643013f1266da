"""Realistic synthetic run logs, written through `experiment.log.eventlog.LogFile`.

Follows docs/event-log.md: header, plan records, display and device records, pulses
every TR (with discarded ones before t0), t0, flip onsets with small measured errors,
cuff commands and device events, a re-anchored pain phase, pressure samples from a
simple pneumatic model, ratings, frame statistics, a warning and the end record.
Options cut the run short: `abort_at_s` (an orderly abort with an end record) and
`kill_at_s` (SIGKILL-like: no end record, and a torn last line in both files).

Every number a test checks comes back in `SyntheticRun`, so tests compare derived
values against the truth that produced them, not against hard-coded results.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from experiment.log.eventlog import LogFile
from experiment.outputs.rundir import RunId

#: phases per trial type: (phase, duration_s, cue, cuff, target_kpa, bids_trial_type)
TRIAL_TYPES: dict[str, list[tuple[str, float, str | None, str, float | None, str | None]]] = {
    "pain": [
        ("pain_anticipation", 6.0, "cue_pain", "none", None, "pain_anticipation"),
        ("pain", 10.0, "fixation", "inflate", 40.0, "pain"),
        ("relief_anticipation", 6.0, "cue_relief", "hold", 40.0, "relief_anticipation"),
        ("deflation", 2.0, "fixation", "deflate", None, None),
        ("rating", 6.0, "rating_scale", "none", None, "rating"),
        ("rest", 8.0, "fixation", "none", None, None),
    ],
    "catch": [
        ("pain_anticipation", 6.0, "cue_pain", "none", None, "catch_pain_anticipation"),
        ("rest", 10.0, "fixation", "none", None, None),
    ],
    # two rating phases in one trial: an expectation before the stimulus, a pain rating after it
    "pain_expectation": [
        ("pain_anticipation", 6.0, "cue_pain", "none", None, "pain_anticipation"),
        ("expectation", 5.0, "rating_scale", "none", None, "expectation"),
        ("pain", 10.0, "fixation", "inflate", 40.0, "pain"),
        ("relief_anticipation", 6.0, "cue_relief", "hold", 40.0, "relief_anticipation"),
        ("deflation", 2.0, "fixation", "deflate", None, None),
        ("pain_rating", 6.0, "rating_scale", "none", None, "pain_rating"),
        ("rest", 8.0, "fixation", "none", None, None),
    ],
}
#: phases that show the rating scale (plan `phase_kind: rating`)
RATING_PHASES = frozenset({"rating", "expectation", "pain_rating"})
RATE_KPA_S = 20.0
DEFLATE_KPA_S = 40.0
LEAD_IN_S = 12.0
TAIL_S = 12.0


@dataclass
class SyntheticRun:
    run_dir: Path
    data_root: Path
    rid: RunId
    t0: float
    tr_s: float
    n_volumes: int
    plan: list[dict[str, Any]]
    onset_t: dict[int, float]          # plan index -> flip time written
    planned_t: dict[int, float]        # plan index -> planned (re-anchored) time written
    ratings: dict[int, dict[str, Any]]  # trial -> the trial's last rating record written
    ratings_at: dict[int, dict[str, Any]]  # plan index of the rating phase -> its rating record written
    reanchor_shift_s: float
    pulse_times: list[float]           # every pulse written (including discarded)
    samples: list[dict[str, Any]]      # pressure records written
    end: dict[str, Any] | None
    last_time: float                   # time of the last complete record written
    header: dict[str, Any] = field(default_factory=dict)


def _plan(trials: list[str], targets_kpa: tuple[float, ...], unmodelled: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    plan: list[dict[str, Any]] = []

    def add(trial: int, trial_type: str, phase: str, onset: float, dur: float, cue: str | None,
            cuff: str, target: float | None, bids: str | None) -> None:
        ramp = target / RATE_KPA_S if cuff == "inflate" and target else 0.0
        plan.append({"kind": "plan", "i": len(plan), "trial": trial, "trial_type": trial_type, "phase": phase,
                     "onset_s": round(onset, 6), "duration_s": dur + ramp, "cue": cue, "cuff": cuff,
                     "target_kpa": target, "rate_kpa_s": RATE_KPA_S if cuff == "inflate" else None,
                     "timed_from": "target_reached" if cuff == "inflate" else "onset", "ramp_s": ramp,
                     "bids_trial_type": None if phase in unmodelled else bids,
                     "phase_kind": "rating" if phase in RATING_PHASES else "cue"})

    t = 0.0
    add(0, "lead_in", "lead_in", t, LEAD_IN_S, "fixation", "none", None, None)
    t += LEAD_IN_S
    n_pain = 0
    for n, kind in enumerate(trials, start=1):
        trial_target = targets_kpa[n_pain % len(targets_kpa)]
        n_pain += any(ph[3] == "inflate" for ph in TRIAL_TYPES[kind])
        for phase, dur, cue, cuff, target, bids in TRIAL_TYPES[kind]:
            add(n, kind, phase, t, dur, cue, cuff, trial_target if target is not None else None, bids)
            t += plan[-1]["duration_s"]
    add(0, "tail", "tail", t, TAIL_S, "fixation", "none", None, None)
    return plan


def make_run(data_root: Path, *, participant: str = "01", session: str | None = None, task: str = "cuedpain",
             run: int = 1, trials: tuple[str, ...] = ("pain", "catch", "pain"), tr_s: float = 2.0,
             discard_pulses: int = 4, scanner_discarded: int = 0, seed: int = 7, max_error_s: float = 0.008,
             extra_ramp_s: float = 0.1, pain_targets_kpa: tuple[float, ...] = (40.0,),
             display_simulated: bool = False, dry_run: bool = True,
             missed_volumes: tuple[int, ...] = (), timeout_trials: tuple[int, ...] = (),
             timeout_phases: tuple[tuple[int, str], ...] = (), unmodelled: tuple[str, ...] = (),
             legacy_ratings: bool = False,
             pressure_rate_hz: float = 25.0, pressure_gap: tuple[float, float] | None = None,
             abort_at_s: float | None = None, kill_at_s: float | None = None,
             protocol_text: str = "name: synthetic\n") -> SyntheticRun:
    """Write log.jsonl and pressure.jsonl for one synthetic run under `data_root`.

    Times on the run clock start at 1000 s; the first pulse comes at 1003 s; t0 is pulse
    number `discard_pulses`. `missed_volumes`: stored-volume indices whose pulse is not
    sent. `pain_targets_kpa`: target pressure of successive pain trials (cycled).
    `pressure_gap`: (start, end) in seconds from t0 with no pressure samples.
    `abort_at_s`/`kill_at_s`: seconds from t0 at which the run ends early.
    `timeout_trials`: trials whose every rating times out; `timeout_phases`: (trial, phase)
    ratings that time out. `unmodelled`: phase names written with no bids_trial_type.
    `legacy_ratings`: rating records without `i` and `phase`, as logs had them before.
    Ratings within one trial get different values.
    """
    rng = random.Random(seed)
    rid = RunId(participant, session, task, run)
    run_dir = rid.source_dir(data_root)
    run_dir.mkdir(parents=True)
    (run_dir / "protocol.yaml").write_text(protocol_text, encoding="utf-8")
    (run_dir / "rig.yaml").write_text("screen: {refresh_hz: 60}\n", encoding="utf-8")
    plan = _plan(list(trials), pain_targets_kpa, unmodelled)
    run_len = plan[-1]["onset_s"] + plan[-1]["duration_s"] + len(trials) * extra_ramp_s
    n_volumes = int(math.ceil(run_len / tr_s))
    t_start, t_first_pulse = 1000.0, 1003.0

    timed: list[tuple[float, int, dict[str, Any]]] = []   # (time, order, record)
    order = iter(range(10 ** 9))

    def emit(t: float, rec: dict[str, Any]) -> None:
        timed.append((t, next(order), rec))

    # pulses: discarded ones, then stored volumes (a few us of jitter)
    pulse_times = []
    source_index = 0
    for k in range(discard_pulses + n_volumes):
        t = t_first_pulse + k * tr_s + 1e-5 * ((k * 7) % 3)
        volume = k - discard_pulses if k >= discard_pulses else None
        if volume is not None and volume in missed_volumes:
            continue
        pulse_times.append(t)
        emit(t, {"kind": "pulse", "t": t, "index": source_index, "source": "sim", "volume": volume})
        source_index += 1
    t0 = t_first_pulse + discard_pulses * tr_s + 1e-5 * ((discard_pulses * 7) % 3)
    emit(t0 + 1e-7, {"kind": "t0", "t": t0, "pulse_index": discard_pulses})

    # onsets (non-slip: each planned time is absolute from t0), cuff, ratings
    onset_t: dict[int, float] = {}
    planned_t: dict[int, float] = {}
    ratings: dict[int, dict[str, Any]] = {}
    ratings_at: dict[int, dict[str, Any]] = {}
    pressure_events: list[tuple[float, str, float]] = []   # (time, action, target)
    shift = 0.0
    for ev in plan:
        if ev["phase"] == "pain_anticipation" or ev["trial"] == 0:
            shift = 0.0  # re-anchoring moves only the rest of its own trial
        planned = t0 + ev["onset_s"] + shift
        t = planned + rng.uniform(-max_error_s, max_error_s)
        onset_t[ev["i"]], planned_t[ev["i"]] = t, planned
        emit(t, {"kind": "onset", "t": t, "i": ev["i"], "trial": ev["trial"], "phase": ev["phase"], "cue": ev["cue"],
                 "planned_t": planned, "onset_s": t - t0, "planned_onset_s": planned - t0})
        if ev["cuff"] == "inflate":
            t_w = t + 0.0004
            emit(t_w, {"kind": "cuff_cmd", "t_write": t_w, "t_ack": t_w + 0.004, "command": f"SET {ev['target_kpa']}",
                       "reply": "OK", "ok": True, "i": ev["i"], "purpose": "inflate"})
            reached = t_w + ev["ramp_s"] + extra_ramp_s
            emit(reached, {"kind": "cuff_event", "t": reached, "name": "TARGET_REACHED",
                           "fields": {"p": str(ev["target_kpa"])}})
            emit(reached + 1e-6, {"kind": "reanchor", "t": reached, "i": ev["i"], "shift_s": extra_ramp_s})
            pressure_events.append((t_w, "inflate", ev["target_kpa"]))
            pressure_events.append((reached, "hold", ev["target_kpa"]))
            shift = extra_ramp_s
        elif ev["cuff"] == "deflate":
            t_w = t + 0.0004
            emit(t_w, {"kind": "cuff_cmd", "t_write": t_w, "t_ack": t_w + 0.004, "command": "DEFLATE",
                       "reply": "OK", "ok": True, "i": ev["i"], "purpose": "deflate"})
            emit(t_w + 1.0, {"kind": "cuff_event", "t": t_w + 1.0, "name": "DEFLATED", "fields": {}})
            pressure_events.append((t_w, "deflate", 0.0))
        if ev["phase"] in RATING_PHASES:
            where = {} if legacy_ratings else {"i": ev["i"], "phase": ev["phase"]}
            if ev["trial"] in timeout_trials or (ev["trial"], ev["phase"]) in timeout_phases:
                t_end = t + min(6.0, ev["duration_s"])
                rec = {"kind": "rating", "t_onset": t, "t_response": None, **where, "trial": ev["trial"],
                       "rating": None, "response_time_s": None, "timed_out": True, "moved": True, "t": t_end}
                emit(t_end, rec)
            else:
                rt = 1.5 + rng.uniform(0, 2)
                given = {r["rating"] for r in ratings_at.values() if r["trial"] == ev["trial"]}
                value = float(5 * rng.randint(4, 16))
                while value in given:   # a trial's ratings differ, so a mix-up between them shows
                    value = float(5 * rng.randint(4, 16))
                rec = {"kind": "rating", "t_onset": t, "t_response": t + rt, **where, "trial": ev["trial"],
                       "rating": value, "response_time_s": rt, "timed_out": False, "moved": True, "t": t + rt}
                emit(t + rt - 1e-6, {"kind": "key", "t": t + rt, "key": "3", "role": "response"})
                emit(t + rt, rec)
            ratings[ev["trial"]] = rec
            ratings_at[ev["i"]] = rec
        if ev["phase"] == "rest" and ev["trial"] > 0:
            emit(t + 0.5, {"kind": "frames", "t": t + 0.5, "n": 1800, "dropped": 1 if ev["trial"] == 2 else 0,
                           "max_interval_s": 0.0334 if ev["trial"] == 2 else 0.0170, "p99_interval_s": 0.0168})
            if ev["trial"] == 2:
                emit(t + 0.25, {"kind": "frame_drop", "t": t + 0.25, "interval_s": 0.0334})
    emit(t0 + 5.0, {"kind": "warning", "t": t0 + 5.0, "code": "pulse_jitter",
                    "message": "pulse interval jitter 0.03 ms"})

    end_t = t0 + run_len + 0.05
    end: dict[str, Any] | None = {"kind": "end", "t": end_t, "status": "completed", "reason": "completed",
                                  "message": "", "exit_code": 0, "end_wall": "2025-03-04T10:08:00+01:00"}
    stop_t = None
    if abort_at_s is not None:
        stop_t = t0 + abort_at_s
        emit(stop_t, {"kind": "key", "t": stop_t, "key": "escape", "role": "escape"})
        emit(stop_t + 1e-6, {"kind": "operator", "t": stop_t, "action": "escape"})
        emit(stop_t + 2e-6, {"kind": "safety", "t": stop_t, "reason": "operator escape", "action": "vent"})
        emit(stop_t + 3e-6, {"kind": "cuff_cmd", "t_write": stop_t + 3e-6, "t_ack": stop_t + 0.004, "command": "VENT",
                             "reply": "OK", "ok": True, "i": None, "purpose": "vent"})
        pressure_events.append((stop_t, "deflate", 0.0))
        end = {"kind": "end", "t": stop_t + 0.01, "status": "aborted", "reason": "escape",
               "message": "the operator pressed Escape", "exit_code": 3, "end_wall": "2025-03-04T10:03:00+01:00"}
        end_t = stop_t + 0.01
    if kill_at_s is not None:
        stop_t = t0 + kill_at_s
        end = None
        end_t = stop_t

    last_t = stop_t if kill_at_s is not None else end_t
    kept = [(t, rec) for t, _, rec in sorted(timed, key=lambda x: (x[0], x[1])) if t <= last_t]
    records = [rec for _, rec in kept]
    header = {"stream": "events", "software": {"name": "cuedpain", "version": "0.1.0", "revision": "abc1234"},
              "participant": participant, "session": session, "run": run, "task": task,
              "protocol_name": "synthetic", "seed": seed,
              "dry_run": dry_run, "headless": display_simulated, "clock": "virtual" if display_simulated else
              "psychopy.clock.getTime", "protocol_path": "protocols/synthetic.yaml",
              "protocol_sha256": __import__("hashlib").sha256(protocol_text.encode()).hexdigest(),
              "rig_path": "rig.yaml", "cuff": {"kind": "line", "port": "/dev/pts/9", "simulated": dry_run},
              "scanner": {"kind": "sim", "spec": "sim", "simulated": dry_run}, "tr_s": tr_s, "n_volumes": n_volumes,
              "discard_pulses": discard_pulses, "scanner_discarded": scanner_discarded,
              "start_wall": f"2025-03-04T10:00:{run:02d}+01:00", "platform": "Linux-6.1.0-x86_64-with-glibc2.36",
              "python": "3.11.2", "run_length_s": run_len,
              "packages": {"psychopy": "2024.2.4", "numpy": "2.3.5", "pandas": "3.1.1", "pyserial": "3.5"}}
    log = LogFile(run_dir / "log.jsonl", header, sync=False, threaded=False)
    for rec in plan:
        log.write(rec)
    log.write({"kind": "display", "refresh_hz": 60.0, "frame_s": 1 / 60,
               "resolution": None if display_simulated else [1920, 1080], "fullscreen": not display_simulated,
               "vsync": not display_simulated, "simulated": display_simulated})
    log.write({"kind": "device", "name": "CUFF-SIM", "firmware": "1.0", "hard_limit_kpa": 100.0,
               "simulated": dry_run, "port": "/dev/pts/9"})
    log.write({"kind": "waiting", "t": t_start + 1.0, "what": "scanner"})
    for rec in records:
        log.write(rec)
    if end is not None:
        log.write(end)
    log.close()

    samples = _pressure_samples(t_start + 0.5, end_t, pressure_events, rate_hz=pressure_rate_hz, rng=rng,
                                t0=t0, gap=pressure_gap)
    plog = LogFile(run_dir / "pressure.jsonl", {**header, "stream": "pressure"}, sync=False, threaded=False)
    for s in samples:
        plog.write(s)
    plog.close()
    last_time = max([t for t, _ in kept] + [s["t"] for s in samples[-1:]] + ([] if end is None else [end["t"]]))
    if kill_at_s is not None:  # a record cut in half by the kill
        with open(run_dir / "log.jsonl", "a", encoding="utf-8") as fh:
            fh.write(json.dumps({"seq": 10 ** 6, "kind": "pulse", "t": stop_t + 0.01})[:17])
        with open(run_dir / "pressure.jsonl", "a", encoding="utf-8") as fh:
            fh.write('{"seq": 99999, "kind": "p", "t": 10')
    return SyntheticRun(run_dir=run_dir, data_root=Path(data_root), rid=rid, t0=t0, tr_s=tr_s, n_volumes=n_volumes,
                        plan=plan, onset_t={i: t for i, t in onset_t.items() if stop_t is None or t <= stop_t},
                        planned_t=planned_t,
                        ratings={k: v for k, v in ratings.items() if stop_t is None or v["t"] <= stop_t},
                        ratings_at={k: v for k, v in ratings_at.items() if stop_t is None or v["t"] <= stop_t},
                        reanchor_shift_s=extra_ramp_s, pulse_times=[t for t in pulse_times if t <= last_t],
                        samples=samples, end=end, last_time=last_time, header=header)


def _pressure_samples(t_from: float, t_to: float, events: list[tuple[float, str, float]], *, rate_hz: float,
                      rng: random.Random, t0: float, gap: tuple[float, float] | None) -> list[dict[str, Any]]:
    """Telemetry from a simple cuff: linear ramp up, hold, linear deflation; arrival jitter."""
    events = sorted(events)
    out = []
    k = 0
    p_level, target, state = 0.0, 0.0, "ARMED"
    p_start, t_change, ramp_rate = 0.0, t_from, RATE_KPA_S
    ev_i = 0
    while True:
        t = t_from + k / rate_hz + rng.uniform(0, 0.002)
        if t > t_to:
            break
        while ev_i < len(events) and events[ev_i][0] <= t:
            t_ev, action, tgt = events[ev_i]
            p_start = _pressure_at(t_ev, p_start, t_change, state, target, ramp_rate)
            t_change, ev_i = t_ev, ev_i + 1
            if action == "inflate":
                state, target, ramp_rate = "RAMP", tgt, RATE_KPA_S
            elif action == "hold":
                state, target, p_start = "HOLD", tgt, tgt
            else:
                state, target = "DEFLATING", 0.0
        p_level = _pressure_at(t, p_start, t_change, state, target, ramp_rate)
        if state == "DEFLATING" and p_level <= 0.0:
            state = "ARMED"
        in_gap = gap is not None and t0 + gap[0] <= t < t0 + gap[1]
        if not in_gap:
            out.append({"kind": "p", "t": t, "dev_ms": int((t - t_from) * 1000),
                        "p": round(p_level + rng.uniform(-0.05, 0.05), 3), "tgt": target, "st": state})
        k += 1
    return out


def _pressure_at(t: float, p_start: float, t_change: float, state: str, target: float, ramp_rate: float) -> float:
    if state == "RAMP":
        return min(target, p_start + ramp_rate * (t - t_change))
    if state == "HOLD":
        return target
    if state == "DEFLATING":
        return max(0.0, p_start - DEFLATE_KPA_S * (t - t_change))
    return 0.0


# ---------------------------------------------------------------- BIDS helpers for tests

def add_placeholder_bold(run: SyntheticRun, n_volumes: int | None = None) -> Path:
    """A tiny 4D NIfTI (2x2x2xN, pixdim[4] = TR) where the scanner's image would be."""
    import nibabel as nib
    import numpy as np

    n = run.n_volumes if n_volumes is None else n_volumes
    img = nib.Nifti1Image(np.zeros((2, 2, 2, n), dtype=np.int16), np.eye(4))
    img.header.set_zooms((3.0, 3.0, 3.0, run.tr_s))
    img.header.set_xyzt_units("mm", "sec")
    path = run.rid.func_dir(run.data_root) / f"{run.rid.stem}_bold.nii.gz"
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, str(path))
    return path


def bids_validate(root: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Run the official validator (bids-validator-deno) on `root`: (errors, warnings)."""
    import shutil
    import subprocess
    import sys

    exe = Path(sys.executable).parent / "bids-validator-deno"
    cmd = str(exe) if exe.exists() else shutil.which("bids-validator-deno")
    assert cmd, "bids-validator-deno is not installed (pip install -e '.[test]')"
    proc = subprocess.run([cmd, str(root), "--format", "json"], capture_output=True, text=True, timeout=240)
    try:
        issues = json.loads(proc.stdout)["issues"]["issues"]
    except (ValueError, KeyError) as exc:
        raise AssertionError(f"validator output not understood ({exc}): {proc.stdout[:500]} {proc.stderr[:500]}")
    return ([i for i in issues if i.get("severity") == "error"],
            [i for i in issues if i.get("severity") == "warning"])
