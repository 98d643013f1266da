"""Measure how much slower than ideal the simulated cuffs ramp and release.

    python scripts/cuff_timing.py

For a few targets P and rates r, prints the time from SET to TARGET_REACHED and from
DEFLATE to DEFLATED, each minus the ideal P / r, for the CUFF/1 simulator (the firmware
on its pneumatic model, stepped directly) and the CPAR simulator (through the driver, on
a virtual clock). The defaults of `experiment.protocol.schedule.CuffTiming` were chosen from this
table (docs/protocol-format.md, "What the inflation checks count"). Takes a few seconds.
"""

from __future__ import annotations

from experiment.clock import VirtualClock
from experiment.cuff.cpar_driver import CparCuff
from experiment.cuff.cpar_sim import CparSimDevice
from experiment.cuff.line_codec import EventLine, parse_device_line
from experiment.cuff.simdevice import STEP_S, SimCuffDevice
from experiment.cuff.transport import LoopbackTransport

TARGETS_KPA = (10, 20, 40, 60, 90)
RATES_KPA_S = (1, 5, 10, 30, 40, 100)
HOLD_S = 2.0


def line_cuff(target_kpa: float, rate_kpa_s: float, seed: int) -> tuple[float, float]:
    """(SET to TARGET_REACHED, DEFLATE to DEFLATED) of the CUFF/1 simulator, in seconds."""
    device = SimCuffDevice(seed=seed, hard_limit_kpa=200.0)
    now = [0.0]
    seen: dict[str, float] = {}

    def write(data: bytes) -> None:
        for text in data.decode("ascii").splitlines():
            line = parse_device_line(text)
            if isinstance(line, EventLine):
                seen.setdefault(line.name, now[0])

    def until(name: str) -> float:
        while name not in seen:
            now[0] = round(now[0] + STEP_S, 6)
            device.advance(now[0])
        return seen[name]

    device.attach(write)
    device.advance(0.0)
    for command in ("ARM 150", f"RATE {rate_kpa_s}", f"SET {target_kpa}"):
        device.receive(f"{command}\n".encode(), 0.0)
    reached = until("TARGET_REACHED")
    t_deflate = reached + HOLD_S
    device.advance(t_deflate)
    now[0] = t_deflate
    device.receive(b"DEFLATE\n", t_deflate)
    return reached, until("DEFLATED") - t_deflate


def cpar_cuff(target_kpa: float, rate_kpa_s: float) -> tuple[float, float]:
    """The same through the CPAR driver and simulator on a virtual clock."""
    clock = VirtualClock(0.0)
    cuff = CparCuff(LoopbackTransport(CparSimDevice(), clock=clock), clock=clock)
    seen: dict[str, float] = {}
    cuff.set_listeners(on_event=lambda ev: seen.setdefault(ev.name, ev.t), on_sample=lambda s: None,
                       on_lost=lambda exc: None)
    cuff.connect()

    def kick() -> None:
        cuff.ping()
        clock.call_later(1.0, kick)

    def until(name: str) -> float:
        while name not in seen:
            clock.sleep(STEP_S)
        return seen[name]

    clock.call_later(1.0, kick)
    cuff.arm(100.0)
    cuff.set_rate(rate_kpa_s)
    cuff.set_max_time(600000)
    t_set = cuff.set_target(target_kpa).t_write
    reached = until("TARGET_REACHED") - t_set
    clock.sleep(HOLD_S)
    t_deflate = cuff.deflate().t_write
    released = until("DEFLATED") - t_deflate
    cuff.close()
    return reached, released


def main() -> None:
    print("excess over P / r, in s (CUFF/1: worst of 5 sensor-noise seeds)")
    print(f"{'P kPa':>6} {'r kPa/s':>8} {'P/r s':>7} | {'CUFF/1 ramp':>11} {'release':>8} | {'CPAR ramp':>9} "
          f"{'release':>8}")
    for target in TARGETS_KPA:
        for rate in RATES_KPA_S:
            if target / rate > 60:
                continue
            ideal = target / rate
            line = [line_cuff(target, rate, seed) for seed in range(5)]
            cpar = cpar_cuff(target, rate)
            print(f"{target:>6} {rate:>8} {ideal:>7.3f} | {max(r for r, _ in line) - ideal:>+11.3f} "
                  f"{max(d for _, d in line) - ideal:>+8.3f} | {cpar[0] - ideal:>+9.3f} {cpar[1] - ideal:>+8.3f}")


if __name__ == "__main__":
    main()
