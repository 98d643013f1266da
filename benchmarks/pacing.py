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


def block_order(pairs: int) -> list[str]:
    """off,on | on,off | off,on ... (balanced over pairs)."""
    order: list[str] = []
    for k in range(pairs):
        order += ["off", "on"] if k % 2 == 0 else ["on", "off"]
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
              log_dir: Path) -> dict[str, Any]:
    """One block with the run's background work; returns flips, pulse latencies, cuff timings."""
    import experiment.station.devices as devices
    from experiment.scanner.sim_scanner import ScannerPlan, pty_sim_source

    cuff_timing: list[dict[str, Any]] = []
    received: list[tuple[int, float]] = []
    with ExitStack() as stack:
        header = {"benchmark": "pacing", "block_seed": seed}
        log = LogFile(log_dir / f"log-{seed}.jsonl", {**header, "stream": "events"})
        stack.callback(log.close)
        plog = LogFile(log_dir / f"pressure-{seed}.jsonl", {**header, "stream": "pressure"})
        stack.callback(plog.close)

        def sample(s: Any) -> None:
            plog.write({"kind": "p", "t": s.t, "dev_ms": s.device_ms, "p": s.pressure_kpa, "tgt": s.target_kpa,
                        "st": s.state})

        st = spec.station
        cuff = devices.open_cuff(st.cuff, mode=st.mode, clock=clock, stack=stack, on_record=log.write,
                                 on_sample=sample)
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
                result = cuff.stimulate(spec.stim_kpa, spec.rate_kpa_s, tag=k)
            else:
                result = cuff.deflate(tag=k)
            cuff_timing.append({"command": result.command, "flip_to_write_s": result.t_write - t_flip,
                                "write_to_ack_s": result.t_ack - result.t_write})

        try:
            flips = _frame_loop(display, clock, cues=cues, duration_s=duration_s, on_frame=poll, on_change=change)
        finally:
            devices.make_safe(cuff, "end of pacing block")
        sent = list(source.driver.sent)
    return {"flips": flips, "pulse_latency_s": pulse_latencies(sent, received), "pulses_sent": len(sent),
            "cuff": cuff_timing}


def run(protocol_path: Path, *, block_s: float, pairs: int) -> dict[str, Any]:
    import experiment.station.devices as devices
    from experiment.protocol.model import load_protocol

    protocol = load_protocol(protocol_path)
    spec = dry_run_spec(protocol)
    clock = psychopy_clock()
    cues = list(protocol.cues)
    blocks = []
    with ExitStack() as stack, tempfile.TemporaryDirectory(prefix="cuedpain-pacing-") as tmp:
        display = devices.open_display(spec.station.window, mode=spec.station.mode, clock=clock, stack=stack)
        for n, condition in enumerate(block_order(pairs)):
            if condition == "on":
                block = _on_block(display, spec, clock, cues=cues, duration_s=block_s, seed=n, log_dir=Path(tmp))
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
    args = parser.parse_args(argv)
    result = run(args.protocol, block_s=args.block_s, pairs=args.pairs)
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
    for cond in ("off", "on"):
        iv = [x for b in result["blocks"] if b["condition"] == cond for x in analysis.intervals(b["flip_times"])]
        out[cond] = {"intervals": analysis.summarize(iv).as_dict(),
                     "over_1_5_frames": analysis.count_over(iv, 1.5 * frame_s)}
    out["p99_ratio_on_off"] = analysis.ratio(out["on"]["intervals"]["p99_ms"], out["off"]["intervals"]["p99_ms"])
    out["max_ratio_on_off"] = analysis.ratio(out["on"]["intervals"]["max_ms"], out["off"]["intervals"]["max_ms"])
    on_blocks = [b for b in result["blocks"] if b["condition"] == "on"]
    cuff = [c for b in on_blocks for c in b["cuff"]]
    out["cuff"] = {"flip_to_write": analysis.summarize(c["flip_to_write_s"] for c in cuff).as_dict(),
                   "write_to_ack": analysis.summarize(c["write_to_ack_s"] for c in cuff).as_dict()}
    latencies = [x for b in on_blocks for x in b["pulse_latency_s"]]
    out["trigger_latency"] = {**analysis.summarize(latencies).as_dict(),
                              "pulses_sent": sum(b["pulses_sent"] for b in on_blocks)}
    return out
