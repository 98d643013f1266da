"""Benchmark 9 (run on its own): the gated cuff's gate latency, `python -m benchmarks.gate [--cycles N]`.

The simulated GATE/1 gate board served on a pseudo-terminal (`SimServer`), the gated driver
through the real serial transport, the supervisor on a real clock with its heartbeat and
guard threads. Each cycle: a stimulus (gate on), a short hold, then an emergency vent from
another thread, as a signal handler asks for it (`emergency_vent`), and a new supervisor for
the next cycle. Measured on the run's clock:

* gate on: the driver's write -> the acknowledgement back (`t_ack - t_write` of GATE ON);
* host -> board: the driver's write -> the bytes arriving at the board (the server's receipt);
* emergency vent: the `emergency_vent` call -> the gate-off byte arriving at the board
  (what a SIGTERM/SIGHUP costs; the run's requirement is under 100 ms).

Prints medians, 99th percentiles and extremes (ms). A benchmark, not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import threading

from benchmarks import analysis
from experiment.clock import RealClock
from experiment.cuff import gate_codec as codec
from experiment.cuff.gate_sim import SimGateBoard
from experiment.cuff.gated_driver import GatedCuff, board_transport
from experiment.cuff.safety import CuffSupervisor, SafetyLimits
from experiment.cuff.simserver import SimServer

PANEL_KPA = 20.0
LIMITS = SafetyLimits(ceiling_kpa=30.0, max_stimulus_s=10.0, max_run_inflated_s=3600.0, panel_kpa=PANEL_KPA)


def _arrival(server: SimServer, clock: RealClock, byte: bytes, after: float, timeout_s: float = 1.0) -> float | None:
    """When `byte` first arrived at the board after `after` (the server stamps on `clock`), from its receipt log."""
    done = threading.Event()
    deadline = after + timeout_s
    while clock.now() < deadline:
        hits = [t for t, data in list(server.rx_log) if t >= after and byte in data]
        if hits:
            return hits[0]
        done.wait(0.0005)
    return None


def measure(cycles: int) -> dict[str, analysis.Summary]:
    clock = RealClock()
    server = SimServer(SimGateBoard(panel_kpa=PANEL_KPA), clock=clock)
    on_ack: list[float] = []
    to_board: list[float] = []
    vent: list[float] = []
    try:
        cuff = GatedCuff(transport=board_transport(server.path, clock=clock), clock=clock)
        cuff.connect()
        for _ in range(cycles):
            sup = CuffSupervisor(cuff, clock=clock, limits=LIMITS, close_cuff=False)
            sup.start()
            ack = sup.stimulate(PANEL_KPA, 40.0)
            on_ack.append(ack.t_ack - ack.t_write)
            arrived = _arrival(server, clock, codec.GATE_ON, ack.t_write)
            if arrived is not None:
                to_board.append(arrived - ack.t_write)
            clock.sleep(0.03)
            t_call = clock.now()
            threading.Thread(target=sup.emergency_vent, args=("benchmark",)).start()
            off = _arrival(server, clock, codec.GATE_OFF, t_call)
            if off is not None:
                vent.append(off - t_call)
            sup.close("benchmark")
        cuff.close()
    finally:
        server.close()
    return {"gate_on_ack": analysis.summarize(on_ack), "host_to_board": analysis.summarize(to_board),
            "emergency_vent_to_board": analysis.summarize(vent)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cycles", type=int, default=200)
    args = p.parse_args()
    results = measure(args.cycles)
    print(json.dumps({k: v.as_dict() for k, v in results.items()}, indent=2))


if __name__ == "__main__":
    main()
