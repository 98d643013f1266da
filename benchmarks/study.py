"""Benchmark 7: `cuedpain study` on a dataset of 60 participants x 4 runs.

    python -m benchmarks.study [--participants 60] [--runs 4] [--workers 2] [--protocol FILE]
                               [--data DIR] [--repeats 3] [--out DIR]

Builds the dataset from real headless dry runs (unless `--data DIR` already holds one made
with the same settings): per participant a calibration (simulated participant, patients
more sensitive than controls) and `--runs` runs of protocols/loggia2014.yaml with
`target: calibrated` (fraction 0.8), in `--workers` processes that each call the command
line in-process (no start-up per run). Every 20th participant's run 2 has an operator
override; every 15th participant's last run is discarded; everyone gets a group, an age and
a sex. Then times `cuedpain study DATA --out DIR` as a subprocess (Python start-up and
imports included: what the user waits for), `--repeats` times, and reports the median,
plus where the time goes in one in-process call (read, tables, plots, page). Writes
DIR/study.json and DIR/study.md (default benchmarks/results/). Not part of the test suite.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from benchmarks.machine import ROOT, load_average, machine_info

DEFAULT_PROTOCOL = ROOT / "protocols" / "loggia2014.yaml"
MARKER = ".benchmark-study.json"


def _say(text: str) -> None:
    print(f"[bench study] {text}", flush=True)


def calibrated_protocol(source: Path, where: Path) -> Path:
    """The protocol with `target: calibrated` (0.8 of the participant's pressure), stimuli found from anywhere."""
    text = source.read_text()
    lines = []
    for line in text.splitlines():
        if line.strip().startswith("target: {value:"):
            indent = line[: len(line) - len(line.lstrip())]
            lines += [f"{indent}target: calibrated", f"{indent}calibrated_fraction: 0.8"]
        elif line.startswith("stimuli_dir:"):
            continue
        else:
            lines.append(line)
    out = where / f"{source.stem}-calibrated.yaml"
    out.write_text(f"stimuli_dir: {ROOT / 'stimuli'}\n" + "\n".join(lines) + "\n")
    return out


def participant_label(k: int) -> str:
    return f"S{k + 1:03d}"


def group_of(k: int) -> str:
    return "patient" if k % 2 == 0 else "control"


def _cli(args: list[str]) -> int:
    from experiment.cli import main

    with contextlib.redirect_stdout(io.StringIO()):
        return main(args)


def make_participant(k: int, data: str, protocol: str, runs: int) -> tuple[str, float]:
    """One participant's calibration and runs, in this (worker) process; returns (label, seconds)."""
    started = time.perf_counter()
    p = participant_label(k)
    p50 = (20 + (k * 7) % 8) if group_of(k) == "patient" else (30 + (k * 5) % 8)
    common = ["--participant", p, "--dry-run", "--headless", "--data", data]
    code = _cli(["calibrate", *common, "--ceiling", "40", "--sim-participant", f"p50={p50},slope=4,noise=4",
                 "--seed", str(k)])
    if code != 0:
        raise RuntimeError(f"calibration of {p} exited {code}")
    for run in range(1, runs + 1):
        extra = ["--pressure-override", "25", "--override-reason", "participant asked for less"] \
            if (k % 20 == 0 and run == 2) else []
        code = _cli(["run", protocol, *common, "--run", str(run), "--seed", str(k * 10 + run), *extra])
        if code != 0:
            raise RuntimeError(f"run {run} of {p} exited {code}")
    return p, time.perf_counter() - started


def build(data: Path, *, participants: int, runs: int, protocol: Path, workers: int) -> dict[str, Any]:
    """Make the dataset; returns how long it took."""
    from experiment.outputs.annotations import discard_run
    from experiment.outputs.participants import declare_fields, set_participant

    started = time.perf_counter()
    data.mkdir(parents=True, exist_ok=True)
    with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
        futures = [pool.submit(make_participant, k, str(data), str(protocol), runs) for k in range(participants)]
        for n, f in enumerate(futures, start=1):
            label, took = f.result()
            if n % 10 == 0 or n == participants:
                _say(f"{n}/{participants} participants made ({label}: {took:.1f} s)")
    declare_fields(data, ROOT / "protocols" / "participants.yaml")
    for k in range(participants):
        set_participant(data, participant_label(k), {"group": group_of(k), "age": str(20 + (k * 13) % 50),
                                                     "sex": "F" if k % 3 else "M"})
    task = next(data.glob("task-*_bold.json")).name[len("task-"):-len("_bold.json")]
    for k in range(0, participants, 15):
        p = participant_label(k)
        discard_run(data / "sourcedata" / f"sub-{p}" / f"sub-{p}_task-{task}_run-{runs}", "head motion (benchmark)",
                    by="benchmark")
    return {"build_s": round(time.perf_counter() - started, 1), "workers": workers}


def time_command(data: Path, out: Path, repeats: int) -> list[float]:
    """Wall time of `python -m experiment study DATA --out OUT`, each a fresh process."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    walls = []
    for k in range(repeats):
        if out.exists():
            shutil.rmtree(out)
        t = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "experiment", "study", str(data), "--out", str(out)], cwd=ROOT,
                              env=env, capture_output=True, text=True, timeout=600)
        walls.append(time.perf_counter() - t)
        if proc.returncode != 0:
            raise RuntimeError(f"cuedpain study exited {proc.returncode}: {proc.stderr[-2000:]}")
        _say(f"cuedpain study, repeat {k + 1}: {walls[-1]:.2f} s")
    return walls


def breakdown(data: Path, out: Path) -> dict[str, float]:
    """Where one in-process call spends its time."""
    from experiment.study import figures
    from experiment.study.aggregate import study_tables
    from experiment.study.page import render_page
    from experiment.study.reader import read_study

    t0 = time.perf_counter()
    study = read_study(data)
    t1 = time.perf_counter()
    tables = study_tables(study)
    t2 = time.perf_counter()
    plots = {"calibration": figures.calibration_figure(study), "ratings": figures.ratings_figure(study),
             "inflation": figures.inflation_figure(study), "timing": figures.timing_figure(study)}
    t3 = time.perf_counter()
    page = render_page(study, tables, plots, [])
    t4 = time.perf_counter()
    return {"read_s": round(t1 - t0, 3), "tables_s": round(t2 - t1, 3), "plots_s": round(t3 - t2, 3),
            "page_s": round(t4 - t3, 3), "page_bytes": len(page.encode("utf-8")), "runs": len(study.runs),
            "participants": len(study.participants), "calibrations": len(study.calibrations),
            "problems": len(study.problems)}


def render_md(result: dict[str, Any]) -> str:
    s, b = result["settings"], result["breakdown"]
    walls = ", ".join(f"{w:.2f}" for w in result["command_wall_s"])
    return (f"# Benchmark 7: `cuedpain study`\n\n"
            f"Command: `{result['command']}`\n\n"
            f"Dataset: {b['participants']} participants x {s['runs']} runs of `{s['protocol']}` (`target: calibrated`) "
            f"= {b['runs']} runs, {b['calibrations']} calibrations, all real headless dry runs; built in "
            f"{result['build']['build_s'] if result['build'] else '?'} s with {result['build_workers']} worker "
            f"processes.\n\n"
            f"| measured | value |\n|---|---|\n"
            f"| `cuedpain study DATA --out DIR`, wall time, median of {len(result['command_wall_s'])} (fresh process "
            f"each: start-up and imports included) | **{result['median_wall_s']:.2f} s** ({walls}) |\n"
            f"| in one process: reading the dataset ({b['runs']} run logs, events files, calibrations) | "
            f"{b['read_s']:.2f} s |\n"
            f"| in one process: the tables | {b['tables_s']:.2f} s |\n"
            f"| in one process: the four plots | {b['plots_s']:.2f} s |\n"
            f"| in one process: the page | {b['page_s']:.2f} s ({b['page_bytes'] / 1e6:.2f} MB) |\n\n"
            f"Machine: {result['machine']['cpu_count']} CPUs ({result['machine']['cpu_model']}), Python "
            f"{result['machine']['python']}, revision {result['machine']['revision']}, load average before timing "
            f"{result['load_average_before']}. {result['machine']['date']}.\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.study", description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--participants", type=int, default=60)
    ap.add_argument("--runs", type=int, default=4)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--protocol", type=Path, default=DEFAULT_PROTOCOL)
    ap.add_argument("--data", type=Path, default=None, help="dataset root to build into, or reuse when already built")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = ap.parse_args(argv)
    settings = {"participants": args.participants, "runs": args.runs,
                "protocol": str(args.protocol.resolve().relative_to(ROOT)) if args.protocol.resolve().is_relative_to(ROOT)
                else str(args.protocol)}
    work = Path(tempfile.mkdtemp(prefix="cuedpain-bench-study-"))
    data = args.data or work / "data"
    built = None
    marker = data / MARKER
    kept = json.loads(marker.read_text()) if marker.is_file() else None
    if isinstance(kept, dict) and kept.get("settings") == settings:
        built = kept.get("build")
        _say(f"reusing the dataset in {data} (built in {built['build_s'] if built else '?'} s)")
    else:
        if data.exists() and any(data.iterdir()):
            raise SystemExit(f"{data} is not empty and was not built by this benchmark with these settings")
        protocol = calibrated_protocol(args.protocol.resolve(), work)
        _say(f"building {args.participants} participants x {args.runs} runs in {data} ({args.workers} workers)")
        built = build(data, participants=args.participants, runs=args.runs, protocol=protocol, workers=args.workers)
        marker.write_text(json.dumps({"settings": settings, "build": built}))
        _say(f"built in {built['build_s']} s")
    load = load_average()
    out = work / "study-out"
    walls = time_command(data, out, args.repeats)
    result = {"settings": settings, "build": built, "build_workers": (built or {}).get("workers", args.workers),
              "command": f"python -m experiment study DATA --out DIR",
              "command_wall_s": [round(w, 3) for w in walls], "median_wall_s": round(statistics.median(walls), 3),
              "breakdown": breakdown(data, work / "breakdown"), "load_average_before": load,
              "machine": machine_info()}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "study.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "study.md").write_text(render_md(result))
    _say(f"median {result['median_wall_s']:.2f} s; results in {args.out / 'study.md'}")
    if args.data is None:
        shutil.rmtree(work, ignore_errors=True)
    else:
        shutil.rmtree(out, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
