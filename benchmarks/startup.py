"""Benchmark 6: from the command to "waiting for the scanner".

`cuedpain run PROTOCOL --dry-run` is started as a subprocess; each stdout line is stamped
on arrival (`StampedProcess`). Three marks are kept, each from the subprocess start:
the banner (Python and the runner imported, input checked), "writing to" (cuff,
window and trigger line opened, log started) and "waiting for the scanner". The run is
then stopped with SIGTERM, which the runner handles as an operator stop (vent, `end`
record, outputs, exit 3); the exit code is recorded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmarks import analysis
from benchmarks.onsets import PARTICIPANT, STARTUP_MARKERS, cuedpain_argv
from benchmarks.proc import StampedProcess
from experiment.clock import Clock


def time_startups(protocol: Path, *, repeats: int, env: dict[str, str], clock: Clock, work_dir: Path,
                  timeout_s: float = 180.0) -> list[dict[str, Any]]:
    runs = []
    for k in range(repeats):
        argv = cuedpain_argv(protocol, "--participant", PARTICIPANT, "--dry-run",
                             "--data", str(work_dir / f"startup-{k}"))
        proc = StampedProcess(argv, clock=clock, env=env, stderr_path=work_dir / f"startup-{k}.stderr")
        seen = proc.wait_for_line(STARTUP_MARKERS["waiting_s"], timeout_s)
        proc.terminate()
        code = proc.wait(timeout_s)
        if seen is None:
            raise RuntimeError(f"start-up run {k} never said it was waiting for the scanner (exit {code}): "
                               f"{proc.stderr_tail()}")
        runs.append({**analysis.marker_times(proc.lines, STARTUP_MARKERS, start_t=proc.start_t),
                     "exit_code": code})
    return runs


def summarize_startups(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Median and range of each mark over the runs, in seconds."""
    rounded = [{k: round(v, 3) if isinstance(v, float) else v for k, v in r.items()} for r in runs]
    out: dict[str, Any] = {"n": len(runs), "runs": rounded}
    for mark in STARTUP_MARKERS:
        values = sorted(r[mark] for r in runs if r.get(mark) is not None)
        if values:
            s = analysis.summarize(values)
            out[mark] = {"median": round(s.median_ms / 1000, 3), "min": round(s.min_ms / 1000, 3),
                         "max": round(s.max_ms / 1000, 3)}
    return out
