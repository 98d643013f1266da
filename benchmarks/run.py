"""Every benchmark, one command, one results table:

    python -m benchmarks.run [--quick] [--out DIR]        (make bench)

Runs, one after another on the same machine and display (an Xvfb started here when
there is no $DISPLAY): start-up (6), headless speed (5), frame pacing and trigger
latency (4, 2), then the real-time dry run and the relative-wait comparison back to
back (1, 3). Writes DIR/results.json (every number, the machine, the load) and
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from benchmarks import headless, onsets, pacing, report, startup
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


FULL = Config(ROOT / "protocols" / "loggia2014.yaml", ROOT / "protocols" / "loggia2014.yaml",
              startup_repeats=2, headless_repeats=3, pacing_block_s=12.0, pacing_pairs=3)
QUICK = Config(ROOT / "protocols" / "demo.yaml", ROOT / "protocols" / "loggia2014.yaml",
               startup_repeats=0, headless_repeats=1, pacing_block_s=8.0, pacing_pairs=1)


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
        span = _scan_span_s(cfg.protocol)
        _say(f"1+3 real-time dry run of {cfg.protocol.name} (about {span / 60:.1f} min)")
        dry = _run_step(results, "dry_run", lambda: onsets.run_cuedpain(
            cfg.protocol, data_dir=work / "dryrun", env=env, clock=clock, timeout_s=span + 300, work_dir=work))
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
    parser.add_argument("--out", type=Path, default=None,
                        help="results directory (default benchmarks/results, or benchmarks/results/quick)")
    args = parser.parse_args(argv)
    out = args.out or ROOT / "benchmarks" / "results" / ("quick" if args.quick else "")
    command = "python -m benchmarks.run" + (" --quick" if args.quick else "") + (f" --out {args.out}" if args.out else "")
    clock = RealClock()
    _say(f"load average {' / '.join(map(str, load_average()))} on {os.cpu_count()} CPUs")
    results = run_all(QUICK if args.quick else FULL, quick=args.quick, command=command, clock=clock)
    json_path, md_path = write_results(results, out)
    print(md_path.read_text(), flush=True)
    _say(f"wrote {md_path} and {json_path} in {results['wall_s'] / 60:.1f} min")
    return 1 if results.get("errors") else 0


if __name__ == "__main__":
    sys.exit(main())
