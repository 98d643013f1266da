"""`cuedpain visit` in the terminal: every step, resumes after a rerun or a SIGKILL, repeats nothing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PLAN = ROOT / "visits" / "demo.yaml"


SHORT = """cuedpain_version: dev
name: short
steps:
  - step: rig_check
  - {step: calibration, ceiling: {value: 50, unit: kPa}, start_kpa: 25, plateau_s: 0.5, rest_s: 0.5}
  - {step: runs, protocol: %s, count: 1}
"""


def _visit(data: Path, *extra: str, plan: Path = PLAN, **kw) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "experiment", "visit", str(plan), "--participant", "T1",
                           "--dry-run", "--headless", "--data", str(data), *extra], capture_output=True, text=True,
                          env=env, timeout=120, cwd=ROOT, **kw)


def _made(data: Path) -> list[str]:
    src = data / "sourcedata"
    return sorted(str(p.relative_to(src)) for pat in ("sub-T1/calibration/*.json", "sub-T1/*/log.jsonl",
                                                      "rig-checks/*.jsonl") for p in src.glob(pat))


def test_a_visit_runs_every_step_and_a_second_time_repeats_none(tmp_path: Path) -> None:
    data = tmp_path / "data"
    first = _visit(data, "--yes")
    assert first.returncode == 0, first.stdout + first.stderr
    assert "visit complete" in first.stdout
    made = _made(data)
    assert len([m for m in made if m.endswith("log.jsonl")]) == 2 and len([m for m in made if "rig-check" in m]) == 1
    assert len([m for m in made if "calibration" in m]) == 3       # calibration, confirmation, scanner check
    again = _visit(data, "--yes")
    assert again.returncode == 0 and "visit complete" in again.stdout and "NEXT" not in again.stdout
    assert _made(data) == made


def test_a_visit_killed_between_steps_resumes_at_the_next_step(tmp_path: Path) -> None:
    data = tmp_path / "data"
    plan = tmp_path / "short.yaml"
    plan.write_text(SHORT % os.path.relpath(ROOT / "protocols" / "demo.yaml", tmp_path))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "experiment", "visit", str(plan), "--participant", "T1",
                             "--dry-run", "--headless", "--data", str(data)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=ROOT)
    assert proc.stdin is not None and proc.stdout is not None
    asked = 0
    deadline = time.monotonic() + 90
    buf = ""
    while asked < 3 and time.monotonic() < deadline:   # answer y to three steps, then kill at the fourth question
        ch = proc.stdout.read(1)
        if not ch:
            break
        buf += ch
        if buf.endswith("anything else stops the visit here: "):
            asked += 1
            if asked < 3:
                proc.stdin.write("y\n")
                proc.stdin.flush()
    assert asked == 3, buf
    os.kill(proc.pid, signal.SIGKILL)   # between steps: the third step was asked about, not started
    proc.wait(10)
    before = _made(data)
    assert len([m for m in before if "calibration" in m]) == 1 and not [m for m in before if m.endswith("log.jsonl")]
    resumed = _visit(data, "--yes", plan=plan)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    nexts = [line for line in resumed.stdout.splitlines() if line.startswith("NEXT: ")]
    assert nexts[0] == "NEXT: Confirmation plateaus (pressure and +-10 %)"
    assert not any("Rig check" in n or n.startswith("NEXT: Calibration") for n in nexts)
    after = _made(data)
    assert set(before) < set(after) and len([m for m in after if "rig-check" in m]) == 1
    assert len([m for m in after if "calibration" in m]) == 2 and len([m for m in after if m.endswith("log.jsonl")]) == 1
