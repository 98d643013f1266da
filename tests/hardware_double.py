"""A device double that identifies itself as hardware, for tests of real-run paths.

The shipped simulator always names itself `cuedpain-sim` (a run without `--dry-run`
refuses it, exit 4), and nothing shipped can change that. Tests that drive the real-run
code paths (`cuedpain run` without `--dry-run`, `rig-check`, a real `calibrate`) need a
cuff that a real run accepts: this is the simulated CUFF/1 firmware under another name,
with `allow_sim` kept on so that the tests can still inject faults. It lives in tests/
and is never installed. It stands in for a real board, which cannot be attached here.
"""

from __future__ import annotations

from experiment.cuff.gate_sim import SimGateBoard
from experiment.cuff.simdevice import SimCuffDevice

BENCH_NAME = "benchcuff"        # not a cuedpain-sim name: the host calls it hardware
BENCH_SERIAL = "BC-0042"


class BenchCuff(SimCuffDevice):
    """The simulated firmware, identifying as the bench board `benchcuff` (serial BC-0042)."""

    name = BENCH_NAME
    serial = BENCH_SERIAL


class BenchGate(SimGateBoard):
    """The simulated gate board (GATE/1), identifying as the bench board `benchgate` (serial BG-0042)."""

    name = "benchgate"
    serial = "BG-0042"
