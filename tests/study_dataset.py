"""A small study made of real headless dry runs, for tests/test_study.py.

Five participants in two groups, made through the real command line (`main([...])` in this
process for most; `python -m experiment` in subprocesses for the two runs that must be
stopped by a signal, which run meanwhile):

  P01 patient  calibration (simulated p50 24 kPa); runs 1 and 2 completed
  P02 control  calibration (p50 34 kPa); run 1 completed; run 2 with an operator override
  P03 patient  run 1 stopped by SIGTERM early in trial 1 (aborted); calibration (p50 22 kPa)
  P04 control  calibration (p50 36 kPa); run 1 completed, then discarded with a reason
  P05 (no group) run 1 killed with SIGKILL during trial 1 (incomplete, no BIDS files)
  P06 control  session 1: calibration (p50 32 kPa) and run 1 completed

Everything a test checks is read back from the runs' own files, not from here.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from experiment.cli import main

ROOT = Path(__file__).resolve().parents[1]
TASK = "demo"
OVERRIDE_KPA = 22.0
OVERRIDE_REASON = "participant asked for less pressure after run 1"
DISCARD_REASON = "participant fell asleep (eyes closed on the camera)"
GROUPS = {"P01": "patient", "P02": "control", "P03": "patient", "P04": "control", "P06": "control"}
FIELDS = {"P01": {"age": "45", "sex": "F"}, "P02": {"age": "38", "sex": "M"}, "P03": {"age": "51", "sex": "F"},
          "P04": {"age": "29", "sex": "F"}, "P06": {"age": "62", "sex": "M"}}
SIM_P50 = {"P01": 24, "P02": 34, "P03": 22, "P04": 36, "P06": 32}
SESSION = {"P06": "1"}


@dataclass(frozen=True)
class Built:
    root: Path
    calibrated_protocol: Path
    fixed_protocol: Path

    def run_dir(self, participant: str, run: int) -> Path:
        ses = SESSION.get(participant)
        d = self.root / "sourcedata" / f"sub-{participant}"
        if ses:
            return d / f"ses-{ses}" / f"sub-{participant}_ses-{ses}_task-{TASK}_run-{run}"
        return d / f"sub-{participant}_task-{TASK}_run-{run}"


def _protocols(where: Path) -> tuple[Path, Path]:
    """The demo protocol with a calibrated pressure (4 trials), and with a fixed one (6 trials, for the stops)."""
    text = (ROOT / "protocols" / "demo.yaml").read_text()
    text = text.replace("cues:", f"stimuli_dir: {ROOT / 'stimuli'}\n\ncues:", 1)
    text = text.replace("max_cumulative_inflation_per_run_s: 20", "max_cumulative_inflation_per_run_s: 60")
    calibrated = text.replace("target: {value: 20, unit: kPa}", "target: calibrated\n  calibrated_fraction: 0.8")
    calibrated = calibrated.replace("counts: {pain: 2}", "counts: {pain: 4}").replace("n_volumes: 40", "n_volumes: 80")
    fixed = text.replace("counts: {pain: 2}", "counts: {pain: 6}").replace("n_volumes: 40", "n_volumes: 110")
    paths = where / "study-calibrated.yaml", where / "study-fixed.yaml"
    for path, body in zip(paths, (calibrated, fixed)):
        path.write_text(body)
    return paths


def cli(*args: str) -> int:
    """`cuedpain ARGS` in this process, its console output kept out of the test's."""
    with contextlib.redirect_stdout(io.StringIO()):
        return main(list(args))


def _first_trial_started(log: Path) -> bool:
    try:
        lines = log.read_text(encoding="utf-8").split("\n")[:-1]
    except OSError:
        return False
    for line in lines:
        if '"kind":"onset"' in line and json.loads(line).get("trial") == 1:
            return True
    return False


class _Stopped(threading.Thread):
    """`python -m experiment run ...` in a subprocess, sent `signum` once its trial 1 is on screen."""

    def __init__(self, args: list[str], log: Path, signum: int) -> None:
        super().__init__(daemon=True)
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.proc = subprocess.Popen([sys.executable, "-m", "experiment", *args], cwd=ROOT, env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.log, self.signum = log, signum
        self.signalled = False
        self.start()

    def run(self) -> None:
        deadline = time.monotonic() + 120
        while self.proc.poll() is None and time.monotonic() < deadline:
            if _first_trial_started(self.log):
                self.proc.send_signal(self.signum)
                self.signalled = True
                return
            time.sleep(0.002)

    def finish(self) -> tuple[int, str]:
        out, err = self.proc.communicate(timeout=120)
        self.join()
        assert self.signalled, f"the run ended before it could be stopped: {out[-500:]} {err[-500:]}"
        return self.proc.returncode, out + err


def build(root: Path, work: Path) -> Built:
    """Make the study under `root` (see the module docstring)."""
    calibrated, fixed = _protocols(work)
    built = Built(root=root, calibrated_protocol=calibrated, fixed_protocol=fixed)
    common = ["--dry-run", "--headless", "--data", str(root)]
    stops = [_Stopped(["run", str(fixed), "--participant", p, *common, "--run", "1"],
                      built.run_dir(p, 1) / "log.jsonl", s)
             for p, s in (("P03", signal.SIGTERM), ("P05", signal.SIGKILL))]
    for p in ("P01", "P02", "P04", "P03", "P06"):
        ses = ["--session", SESSION[p]] if p in SESSION else []
        assert cli("calibrate", "--participant", p, *ses, *common, "--ceiling", "40",
                   "--sim-participant", f"p50={SIM_P50[p]},slope=4,noise=3") == 0
    for p, run in (("P01", 1), ("P01", 2), ("P02", 1), ("P04", 1), ("P06", 1)):
        ses = ["--session", SESSION[p]] if p in SESSION else []
        assert cli("run", str(calibrated), "--participant", p, *ses, *common, "--run", str(run)) == 0
    assert cli("run", str(calibrated), "--participant", "P02", *common, "--run", "2",
               "--pressure-override", str(OVERRIDE_KPA), "--override-reason", OVERRIDE_REASON) == 0
    code, said = stops[0].finish()
    assert code == 3 and "sigterm" in said.lower(), said[-1000:]
    code, _ = stops[1].finish()
    assert code == -signal.SIGKILL
    assert cli("participants", "declare", str(ROOT / "protocols" / "participants.yaml"), "--data", str(root)) == 0
    for p, group in GROUPS.items():
        fields = [f"--field=group={group}"] + [f"--field={k}={v}" for k, v in FIELDS[p].items()]
        assert cli("participants", "set", p, *fields, "--data", str(root)) == 0
    assert cli("discard", str(built.run_dir("P04", 1)), "--reason", DISCARD_REASON, "--by", "test operator") == 0
    return built
