"""Benchmark 10: `cuedpain timing-test` on the benchmark's display, with the simulated light sensor.

The same figures a lab gets on its own screen (docs/light-sensor.md): refresh rate, the
frame-interval distribution and dropped frames while the protocol's cues are drawn at its
pace, cue onset errors, and the lag from flip to "light". Here the display is Xvfb and the
sensor is `cuedpain simulate-light-sensor` (it watches the patch's pixels in the X server
from a process of its own), so the lag is flip timestamp -> pixels in the X server, not
photons: a check of the measuring chain and of the numbers' plumbing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

CORNER = "top_left"


def run_timing_test(protocol: Path, *, env: dict[str, str], work_dir: Path, duration_s: float) -> dict[str, Any]:
    """Run the timing test with the simulated sensor; its JSON document (figures and verdict)."""
    rig = work_dir / "timing-rig.yaml"
    rig.write_text(f"screen:\n  light_patch: {CORNER}\n  refresh_hz: 60\n")
    data = work_dir / "timing-data"
    sensor = subprocess.Popen([sys.executable, "-m", "experiment", "simulate-light-sensor", "--corner", CORNER,
                               "--parent-pid", str(os.getpid())], stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, text=True, env=env)
    try:
        assert sensor.stdout is not None
        port = sensor.stdout.readline().strip()
        if not port:
            raise RuntimeError("simulate-light-sensor printed no port")
        done = subprocess.run([sys.executable, "-m", "experiment", "timing-test", str(protocol), "--rig", str(rig),
                               "--sensor", port, "--duration", str(duration_s), "--data", str(data)],
                              capture_output=True, text=True, env=env, timeout=duration_s + 120)
    finally:
        sensor.terminate()
        sensor.wait(10)
        if sensor.stdout is not None:
            sensor.stdout.close()
    if done.returncode not in (0, 4):
        raise RuntimeError(f"timing-test exited {done.returncode}: {done.stderr[-500:]}")
    files = sorted((data / "sourcedata" / "timing-tests").glob("timing-test-*.json"))
    if not files:
        raise RuntimeError("timing-test wrote no figures")
    doc: dict[str, Any] = json.loads(files[-1].read_text())
    return {"duration_s": duration_s, "exit_code": done.returncode, "fit": doc["fit"], "figures": doc["figures"],
            "verdict": doc["verdict"]}
