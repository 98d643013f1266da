"""Benchmark 5: headless speed, simulated protocol time over wall time.

`cuedpain run PROTOCOL --dry-run --headless` runs as a subprocess (no display: virtual
clock, simulated devices in-process). Wall time is from the subprocess start to its
exit, so it includes Python start-up, imports, pre-flight and deriving every output.
Simulated time is the run's own span on the virtual clock, from t0 to the `end`
record (the protocol's full scan), read from its log.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmarks import analysis
from benchmarks.onsets import PARTICIPANT, cuedpain_argv
from benchmarks.proc import StampedProcess
from experiment.clock import Clock
from experiment.log.eventlog import read_log


def time_headless(protocol: Path, *, repeats: int, env: dict[str, str], clock: Clock, work_dir: Path,
                  timeout_s: float = 300.0) -> list[dict[str, Any]]:
    runs = []
    for k in range(repeats):
        data = work_dir / f"headless-{k}"
        argv = cuedpain_argv(protocol, "--participant", PARTICIPANT, "--dry-run", "--headless", "--data", str(data))
        proc = StampedProcess(argv, clock=clock, env=env, stderr_path=work_dir / f"headless-{k}.stderr")
        code = proc.wait(timeout_s)
        wall_s = clock.now() - proc.start_t
        logs = sorted(data.glob("sourcedata/*/*/log.jsonl"))
        if code != 0 or not logs:
            raise RuntimeError(f"headless run {k} exited {code}: {proc.stderr_tail()}")
        records = read_log(logs[0]).records
        t0 = analysis.first_of_kind(records, "t0")
        end = analysis.first_of_kind(records, "end")
        simulated_s = end["t"] - t0["t"]
        runs.append({"wall_s": round(wall_s, 3), "simulated_s": round(simulated_s, 3),
                     "speed": round(simulated_s / wall_s, 1)})
    return runs


def summarize_headless(runs: list[dict[str, Any]]) -> dict[str, Any]:
    speeds = sorted(r["speed"] for r in runs)
    walls = sorted(r["wall_s"] for r in runs)
    return {"n": len(runs), "runs": runs, "median_speed": speeds[len(speeds) // 2],
            "median_wall_s": walls[len(walls) // 2], "simulated_s": runs[0]["simulated_s"]}
