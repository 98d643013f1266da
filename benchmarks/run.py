"""Every benchmark, one command, one results table:

    python -m benchmarks.run [--quick] [--out DIR]        (make bench)

Runs, one after another on the same machine and display (an Xvfb started here when
there is no $DISPLAY): start-up (6), headless speed (5), frame pacing and trigger
latency (4, 2), the timing test with the simulated light sensor (10), then the real-time
dry run (`--repeat N`: N of them, the worst analysed) and the relative-wait comparison
back to back (1, 3). Writes DIR/results.json (every number, the machine, the load) and
DIR/results.md (the table). The full run takes about 18 minutes because benchmark 1 is
two real-time runs of protocols/loggia2014.yaml; `--quick` uses protocols/demo.yaml and
shorter blocks (about 2 minutes) and writes to benchmarks/results/quick by default.
What each number means: benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import traceback
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

from benchmarks import analysis, headless, onsets, pacing, report, startup, timingtest
from benchmarks.machine import ROOT, load_average, machine_info
from benchmarks.proc import StampedProcess, virtual_display
from experiment.clock import Clock, RealClock
from experiment.log.eventlog import encode_record
from experiment.protocol.model import load_protocol


@dataclass(frozen=True)
class Config:
    protocol: Path            # benchmarks 1, 3, 6
    headless_protocol: Path   # benchmark 5
    startup_repeats: int      # extra start-up runs (the dry run adds one more sample)
    headless_repeats: int
    pacing_block_s: float
    pacing_pairs: int
    timing_test_s: float = 60.0   # benchmark 10: timing-test duration
    dry_run_repeats: int = 1  # full-length dry runs; the worst is analysed (--repeat)


FULL = Config(ROOT / "protocols" / "loggia2014.yaml", ROOT / "protocols" / "loggia2014.yaml",
              startup_repeats=2, headless_repeats=3, pacing_block_s=12.0, pacing_pairs=3)
QUICK = Config(ROOT / "protocols" / "demo.yaml", ROOT / "protocols" / "loggia2014.yaml",
               startup_repeats=0, headless_repeats=1, pacing_block_s=8.0, pacing_pairs=1, timing_test_s=10.0)


def _say(text: str) -> None:
    print(f"[bench] {text}", flush=True)


def _run_step(results: dict[str, Any], name: str, fn: Callable[[], Any]) -> Any:
    """Run one benchmark; a failure is recorded in the results and the others still run."""
    results.setdefault("load_average_before", {})[name] = load_average()
    try:
        return fn()
    except Exception as exc:  # noqa: BLE001 - one failed benchmark must not lose the others
        results.setdefault("errors", {})[name] = f"{exc!r}"
        _say(f"{name} FAILED: {exc!r}")
        traceback.print_exc()
        return None


def _scan_span_s(protocol_path: Path) -> float:
    """Real time a dry run of the protocol waits and runs (for the timeouts)."""
    scan = load_protocol(protocol_path).scan
    return (scan.n_volumes + scan.discard_pulses + 2) * scan.tr_s


def _pacing(cfg: Config, env: dict[str, str], clock: Clock, work: Path) -> dict[str, Any]:
    out = work / "pacing.json"
    argv = [sys.executable, "-m", "benchmarks.pacing", str(cfg.protocol), "--block-s", str(cfg.pacing_block_s),
            "--pairs", str(cfg.pacing_pairs), "--out", str(out), "--lsl"]
    proc = StampedProcess(argv, clock=clock, env=env, stderr_path=work / "pacing.stderr")
    code = proc.wait(3 * cfg.pacing_pairs * (cfg.pacing_block_s + 20) + 60)
    if code != 0:
        raise RuntimeError(f"the pacing benchmark exited {code}: {proc.stderr_tail()}")
    return pacing.summarize_pacing(json.loads(out.read_text()))


def run_all(cfg: Config, *, quick: bool, command: str, clock: Clock) -> dict[str, Any]:
    results: dict[str, Any] = {"command": command, "quick": quick, "machine": machine_info(),
                               "protocol": str(cfg.protocol.relative_to(ROOT)),
                               "headless_protocol": str(cfg.headless_protocol.relative_to(ROOT))}
    start = clock.now()
    with tempfile.TemporaryDirectory(prefix="cuedpain-bench-") as tmp, virtual_display(clock) as display:
        work = Path(tmp)
        env = {**os.environ, "DISPLAY": display["display"]}
        results["display"] = display
        startups: list[dict[str, Any]] = []
        if cfg.startup_repeats:
            _say(f"6 start-up: {cfg.startup_repeats} dry runs stopped at 'waiting for the scanner'")
            startups += _run_step(results, "startup", lambda: startup.time_startups(
                cfg.protocol, repeats=cfg.startup_repeats, env=env, clock=clock, work_dir=work)) or []
        _say(f"5 headless: {cfg.headless_repeats} x {cfg.headless_protocol.name}")
        runs = _run_step(results, "headless", lambda: headless.time_headless(
            cfg.headless_protocol, repeats=cfg.headless_repeats, env=env, clock=clock, work_dir=work))
        if runs:
            results["headless"] = headless.summarize_headless(runs)
        _say(f"4+2 frame pacing A/B/C (off, on, on+LSL) and trigger latency: {3 * cfg.pacing_pairs} blocks of "
             f"{cfg.pacing_block_s:g} s")
        fp = _run_step(results, "frame_pacing", lambda: _pacing(cfg, env, clock, work))
        if fp:
            results["trigger_latency"] = fp.pop("trigger_latency")
            results["frame_pacing"] = fp
        _say(f"10 timing-test with the simulated light sensor: {cfg.timing_test_s:g} s of {cfg.protocol.name}")
        tt = _run_step(results, "timing_test", lambda: timingtest.run_timing_test(
            cfg.protocol, env=env, work_dir=work, duration_s=cfg.timing_test_s))
        if tt:
            results["timing_test"] = tt
        span = _scan_span_s(cfg.protocol)
        _say(f"1+3 real-time dry run of {cfg.protocol.name} (about {span / 60:.1f} min)")
        dries = []
        for k in range(cfg.dry_run_repeats):
            if cfg.dry_run_repeats > 1:
                _say(f"1+3 dry run {k + 1} of {cfg.dry_run_repeats}")
            one = _run_step(results, f"dry_run_{k + 1}" if k else "dry_run", lambda: onsets.run_cuedpain(
                cfg.protocol, data_dir=work / f"dryrun{k}", env=env, clock=clock, timeout_s=span + 300,
                work_dir=work))
            if one:
                dries.append(one)
        dry = max(dries, key=lambda d: analysis.worst_key(d["records"])) if dries else None
        if dries:
            results["dry_runs"] = {"n": len(dries), "worst": dries.index(dry) + 1 if dry else None,
                                   "runs": [onsets.brief(d) for d in dries]}
        if dry:
            startups.append({**dry["startup"], "exit_code": dry["exit_code"], "from": "the dry run"})
            results["dry_run_wall_s"] = round(dry["wall_s"], 1)
            _say("1 comparison runner (relative waits) on the same timeline, up to the tail's onset")
            naive = _run_step(results, "naive_runner", lambda: onsets.run_naive(
                cfg.protocol, env=env, clock=clock, timeout_s=span + 300, work_dir=work))
            if naive:
                results["onsets"] = _run_step(results, "onsets_analysis", lambda: onsets.analyse(dry, naive))
        if startups:
            results["startup"] = startup.summarize_startups(startups)
    results["load_average_at_end"] = load_average()
    results["wall_s"] = round(clock.now() - start, 1)
    return results


def write_results(results: dict[str, Any], out: Path) -> tuple[Path, Path]:
    out.mkdir(parents=True, exist_ok=True)
    as_json = json.loads(encode_record(results))  # NaN/inf -> null, numpy -> plain numbers
    json_path, md_path = out / "results.json", out / "results.md"
    json_path.write_text(json.dumps(as_json, indent=1) + "\n")
    md_path.write_text(report.render(results))
    return json_path, md_path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="demo protocol and short blocks (about 2 minutes)")
    parser.add_argument("--repeat", metavar="N", type=int, default=1,
                        help="full-length real-time dry runs (benchmarks 1 and 3 report the worst; default 1)")
    parser.add_argument("--out", type=Path, default=None,
                        help="results directory (default benchmarks/results, or benchmarks/results/quick)")
    args = parser.parse_args(argv)
    out = args.out or ROOT / "benchmarks" / "results" / ("quick" if args.quick else "")
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    command = ("python -m benchmarks.run" + (" --quick" if args.quick else "")
               + (f" --repeat {args.repeat}" if args.repeat > 1 else "") + (f" --out {args.out}" if args.out else ""))
    clock = RealClock()
    _say(f"load average {' / '.join(map(str, load_average()))} on {os.cpu_count()} CPUs")
    cfg = replace(QUICK if args.quick else FULL, dry_run_repeats=args.repeat)
    results = run_all(cfg, quick=args.quick, command=command, clock=clock)
    json_path, md_path = write_results(results, out)
    print(md_path.read_text(), flush=True)
    _say(f"wrote {md_path} and {json_path} in {results['wall_s'] / 60:.1f} min")
    return 1 if results.get("errors") else 0


if __name__ == "__main__":
    sys.exit(main())
