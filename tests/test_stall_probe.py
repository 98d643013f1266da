"""The benchmark's stall probe reads a real process's scheduler counters (Linux /proc)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from benchmarks.stalls import StallProbe
from experiment.clock import RealClock


@pytest.mark.skipif(not os.path.exists("/proc/self/schedstat"), reason="needs Linux's /proc schedstat")
def test_the_probe_samples_a_running_process_and_stops_when_it_ends() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time\nend = time.time() + 0.6\nwhile time.time() < end: pass"])
    with StallProbe(child.pid, RealClock(), period_s=0.01) as probe:
        child.wait(10)
        probe._thread.join(2)   # the probe ends by itself once the process is gone
        assert not probe._thread.is_alive()
    samples = probe.samples
    assert len(samples) >= 20
    assert all(b.t > a.t and b.steal_s >= a.steal_s and b.runq_s >= a.runq_s for a, b in zip(samples, samples[1:]))
