"""Benchmarks 2 and 4: frame pacing with a run's background work on and off, and trigger
timestamp latency while the render loop runs. Runs in a process of its own:

    python -m benchmarks.pacing PROTOCOL --block-s 15 --pairs 3 --out FILE.json

A/B design. One window (`experiment.station.devices.open_display`, as in a dry run) draws the
protocol's cues, changing cue every 2 s, for blocks of `block_s` seconds in a balanced
order (off, on | on, off | off, on ...), so a change of machine load during the benchmark
falls on both conditions alike. The first 0.5 s of each block is a warm-up that is not
measured. The frame loop is the same in both conditions; only the background differs:

* on: what a run adds to the frame loop. The event log and the pressure log are written
  (`LogFile`: writer thread, fsync per batch); the simulated cuff behind the
  `CuffSupervisor` streams telemetry at 25 Hz into the pressure log and gets its
  heartbeat; at each cue change the cuff is sent inflate or deflate right after the flip
  (as the trial loop does) and an `onset` record is logged; a simulated scanner writes a
  pulse into a pseudo-terminal every 100 ms (jittered by a seeded SD of 20 ms, so pulses
  are not locked to frames) and the serial trigger source's reader thread stamps it; the
  loop polls the pulses every frame and logs each one.
* off: the window and the cue changes only.
* lsl (with `--lsl`): "on", and every record and pressure sample also handed to the Lab
  Streaming Layer publisher (`experiment.log.lsl.LslPublisher`, as `run --lsl` does): the
  loop's cost is a queue put per record (timed), its thread pushes to two outlets. LSL stays
  on this machine (LSLAPICFG is set to docs/lsl_api.cfg unless already set).

Benchmark 2 is the pulses of the "on" blocks: the writer's stamp (taken just before
`os.write`, same clock) against the reader thread's stamp. Benchmark 4 is the frame
intervals (differences of consecutive flip times) per condition.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Callable

from benchmarks.analysis import pulse_latencies
from benchmarks.dryrun_spec import dry_run_spec
from experiment.clock import Clock, psychopy_clock
from experiment.log.eventlog import LogFile, encode_record

CUE_CHANGE_S = 2.0
WARMUP_S = 0.5
PULSE_PERIOD_S = 0.1
PULSE_JITTER_S = 0.02


def block_order(pairs: int, conditions: tuple[str, ...] = ("off", "on")) -> list[str]:
    """off,on | on,off | off,on ... (balanced over pairs); with three conditions, each round
    rotated by one (off,on,lsl | on,lsl,off | lsl,off,on ...)."""
    order: list[str] = []
    n = len(conditions)
    for k in range(pairs):
        if n == 2:
            order += list(conditions) if k % 2 == 0 else list(reversed(conditions))
        else:
            order += [conditions[(k + j) % n] for j in range(n)]
    return order


def _frame_loop(display: Any, clock: Clock, *, cues: list[str], duration_s: float,
                on_frame: Callable[[], None] | None = None,
                on_change: Callable[[int, float], None] | None = None) -> list[float]:
    """Flip for `warm-up + duration_s`; returns the flip times after the warm-up."""
    start = clock.now()
    end = start + WARMUP_S + duration_s
    next_change = start
    k = 0
    flips: list[float] = []
    while True:
        if on_frame is not None:
            on_frame()
        changing = clock.now() >= next_change
        if changing:
            display.show(cues[k % len(cues)])
        t = display.flip()
        if changing:
            if on_change is not None:
                on_change(k, t)
            k += 1
            next_change += CUE_CHANGE_S
        if t >= start + WARMUP_S:
            flips.append(t)
        if t >= end:
            return flips


def _on_block(display: Any, spec: Any, clock: Clock, *, cues: list[str], duration_s: float, seed: int,
              log_dir: Path, lsl: bool = False) -> dict[str, Any]:
    """One block with the run's background work (and LSL publishing, with `lsl`); returns flips,
    pulse latencies, cuff timings, and with `lsl` the time each record's hand-over took."""
    import experiment.station.devices as devices
    from experiment.scanner.sim_scanner import ScannerPlan, pty_sim_source

    protocol = spec.protocol
    cuff_timing: list[dict[str, Any]] = []
    received: list[tuple[int, float]] = []
    with ExitStack() as stack:
        header = {"benchmark": "pacing", "block_seed": seed}
        events = LogFile(log_dir / f"log-{seed}.jsonl", {**header, "stream": "events"})
        stack.callback(events.close)
        plog = LogFile(log_dir / f"pressure-{seed}.jsonl", {**header, "stream": "pressure"})
        stack.callback(plog.close)
        handover_s: list[float] = []
        publisher = _publisher(clock, events.write, seed) if lsl else None
        if publisher is not None:
            stack.callback(publisher.close)

        def write(rec: dict[str, Any]) -> None:
            events.write(rec)
            if publisher is not None:      # as Station.record hands each record to its listeners
                t = clock.now()
                publisher.observe(rec)
                handover_s.append(clock.now() - t)

        def sample(s: Any) -> None:
            plog.write({"kind": "p", "t": s.t, "dev_ms": s.device_ms, "p": s.pressure_kpa, "tgt": s.target_kpa,
                        "st": s.state.value})
            if publisher is not None:
                publisher.observe_sample(s)

        log = _Log(write, events.check)
        cuff = devices.open_cuff(_cuff_need(protocol), mode=_dry_run_mode(), clock=clock, stack=stack,
                                 on_record=write, on_sample=sample)
        plan = ScannerPlan(tr_s=PULSE_PERIOD_S, n_volumes=int((WARMUP_S + duration_s + 5) / PULSE_PERIOD_S),
                           jitter_s=PULSE_JITTER_S, seed=seed, start_delay_s=0.1)
        source = pty_sim_source(plan, clock=clock)
        source.open()
        stack.callback(source.close)

        def poll() -> None:
            log.check()
            for p in source.poll():
                received.append((p.index, p.t))
                log.write({"kind": "pulse", "t": p.t, "index": p.index, "source": p.source, "volume": p.index})

        def change(k: int, t_flip: float) -> None:
            log.write({"kind": "onset", "t": t_flip, "i": k, "trial": k, "phase": "bench", "cue": None,
                       "planned_t": t_flip, "onset_s": 0.0, "planned_onset_s": 0.0})
            if k % 2 == 0:
                target_kpa = min(protocol.stimulation.fixed_kpa.values(), default=protocol.safety.max_pressure_kpa / 2)
                result = cuff.stimulate(target_kpa, protocol.stimulation.rate_kpa_s, tag=k)
            else:
                result = cuff.deflate(tag=k)
            cuff_timing.append({"command": result.command, "flip_to_write_s": result.t_write - t_flip,
                                "write_to_ack_s": result.t_ack - result.t_write})

        try:
            flips = _frame_loop(display, clock, cues=cues, duration_s=duration_s, on_frame=poll, on_change=change)
        finally:
            devices.make_safe(cuff, "end of pacing block")
        sent = list(source.driver.sent)
    out = {"flips": flips, "pulse_latency_s": pulse_latencies(sent, received), "pulses_sent": len(sent),
           "cuff": cuff_timing}
    if publisher is not None:
        out["lsl_handover_s"] = handover_s
        out["lsl_pushed"] = dict(publisher.pushed)
    return out


def _dry_run_mode() -> Any:
    from experiment.station.station import Mode

    return Mode.DRY_RUN


def _cuff_need(protocol: Any) -> Any:
    """The simulated cuff under the protocol's interlocks, as a dry run opens it."""
    import experiment.station.devices as devices
    from experiment.protocol.specs import SIM_CUFF
    from experiment.station.station import CuffNeed

    rate = protocol.stimulation.rate_kpa_s
    return CuffNeed(SIM_CUFF, devices.safety_limits(protocol.safety, rates_kpa_s=(rate,)))


def _window(spec: Any) -> Any:
    """The dry run's window (the default rig's screen, not full-screen) for the protocol's cues."""
    from experiment.station.station import WindowSpec

    return WindowSpec(screen=spec.rig.screen, cues=spec.protocol.cues, stimuli_dir=spec.protocol.stimuli_dir)


class _Log:
    """The benchmark's event log as the frame loop sees it: write (with the LSL hand-over) and check."""

    def __init__(self, write: Callable[[dict[str, Any]], None], check: Callable[[], None]) -> None:
        self.write = write
        self.check = check


def _publisher(clock: Clock, log: Callable[[dict[str, Any]], None], seed: int) -> Any:
    import os

    os.environ.setdefault("LSLAPICFG", str(Path(__file__).resolve().parents[1] / "docs" / "lsl_api.cfg"))
    from experiment.log.lsl import LslPublisher, StreamMeta

    meta = StreamMeta(participant="BENCH", session=None, run=seed + 1, task="pacing", protocol_name="benchmark",
                      protocol_sha256="", dry_run=True)
    return LslPublisher(meta, clock=clock, pressure_hz=25.0, log=log)


def run(protocol_path: Path, *, block_s: float, pairs: int, lsl: bool = False) -> dict[str, Any]:
    import experiment.station.devices as devices
    from experiment.protocol.model import load_protocol

    protocol = load_protocol(protocol_path)
    spec = dry_run_spec(protocol)
    clock = psychopy_clock()
    cues = list(protocol.cues)
    blocks = []
    with ExitStack() as stack, tempfile.TemporaryDirectory(prefix="cuedpain-pacing-") as tmp:
        display = devices.open_display(_window(spec), mode=_dry_run_mode(), clock=clock, stack=stack)
        for n, condition in enumerate(block_order(pairs, ("off", "on", "lsl") if lsl else ("off", "on"))):
            if condition in ("on", "lsl"):
                block = _on_block(display, spec, clock, cues=cues, duration_s=block_s, seed=n, log_dir=Path(tmp),
                                  lsl=condition == "lsl")
            else:
                block = {"flips": _frame_loop(display, clock, cues=cues, duration_s=block_s)}
            flips = block.pop("flips")
            blocks.append({"condition": condition, "flip_times": flips, **block})
        info = display.info()
    return {"protocol": str(protocol_path), "block_s": block_s, "pairs": pairs, "display": info,
            "clock": clock.name, "blocks": blocks}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.pacing", description=__doc__.split("\n")[0])
    parser.add_argument("protocol", type=Path)
    parser.add_argument("--block-s", type=float, default=15.0)
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--lsl", action="store_true", help="a third condition: 'on' with LSL publishing")
    args = parser.parse_args(argv)
    result = run(args.protocol, block_s=args.block_s, pairs=args.pairs, lsl=args.lsl)
    args.out.write_text(encode_record(result))
    print(f"pacing: {len(result['blocks'])} blocks written to {args.out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())


def summarize_pacing(result: dict[str, Any]) -> dict[str, Any]:
    """Frame intervals per condition (within blocks), pulse and cuff latencies of the 'on' blocks (pure)."""
    from benchmarks import analysis

    frame_s = result["display"]["frame_s"]
    out: dict[str, Any] = {"block_s": result["block_s"], "pairs": result["pairs"],
                           "order": [b["condition"] for b in result["blocks"]]}
    conditions = [c for c in ("off", "on", "lsl") if any(b["condition"] == c for b in result["blocks"])]
    for cond in conditions:
        iv = [x for b in result["blocks"] if b["condition"] == cond for x in analysis.intervals(b["flip_times"])]
        out[cond] = {"intervals": analysis.summarize(iv).as_dict(),
                     "over_1_5_frames": analysis.count_over(iv, 1.5 * frame_s)}
    out["p99_ratio_on_off"] = analysis.ratio(out["on"]["intervals"]["p99_ms"], out["off"]["intervals"]["p99_ms"])
    out["max_ratio_on_off"] = analysis.ratio(out["on"]["intervals"]["max_ms"], out["off"]["intervals"]["max_ms"])
    if "lsl" in conditions:
        lsl_blocks = [b for b in result["blocks"] if b["condition"] == "lsl"]
        out["p99_ratio_lsl_on"] = analysis.ratio(out["lsl"]["intervals"]["p99_ms"], out["on"]["intervals"]["p99_ms"])
        out["max_ratio_lsl_on"] = analysis.ratio(out["lsl"]["intervals"]["max_ms"], out["on"]["intervals"]["max_ms"])
        out["lsl"]["handover"] = analysis.summarize(x for b in lsl_blocks for x in b["lsl_handover_s"]).as_dict()
        out["lsl"]["pushed"] = {k: sum(b["lsl_pushed"][k] for b in lsl_blocks) for k in ("markers", "pressure")}
        out["lsl"]["trigger_latency"] = analysis.summarize(x for b in lsl_blocks for x in b["pulse_latency_s"]).as_dict()
    on_blocks = [b for b in result["blocks"] if b["condition"] == "on"]
    cuff = [c for b in on_blocks for c in b["cuff"]]
    out["cuff"] = {"flip_to_write": analysis.summarize(c["flip_to_write_s"] for c in cuff).as_dict(),
                   "write_to_ack": analysis.summarize(c["write_to_ack_s"] for c in cuff).as_dict()}
    latencies = [x for b in on_blocks for x in b["pulse_latency_s"]]
    out["trigger_latency"] = {**analysis.summarize(latencies).as_dict(),
                              "pulses_sent": sum(b["pulses_sent"] for b in on_blocks)}
    return out
