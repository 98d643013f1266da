"""The comparison runner: cuedpain's timeline driven by per-phase relative waits.

This is how many lab scripts run an fMRI task: wait for the scanner's first (stored)
pulse as PsychoPy's `launchScan` does, then for each phase draw, flip, and wait the
phase's duration with `psychopy.core.wait`. Each wait starts at the previous flip, and
the next flip lands on the first frame after the wait, so every phase ends late by up
to a frame and the lateness adds up over a run. PsychoPy's own documentation describes
exactly this ("Non-slip timing for imaging", docs/source/general/timing/nonSlipTiming.rst
in psychopy/psychopy: relative timing overshoots "some fraction of one screen refresh
period" per trial, so "after 100 stimulus presentations your stimulus and scanner will
be de-synchronised by 1 second"); Builder routines whose duration is not a constant
(e.g. a jittered `$duration` from a conditions file) are not "non-slip safe" and are timed
this way too (psychopy/experiment/routines/_base.py, `getMaxTime`).

What is the same as a cuedpain dry run, so that the drift ratio compares only the
scheduling method:
* the timeline: `experiment.protocol.schedule.build_schedule(protocol, seed, participant)`;
* the window: `experiment.station.devices.open_display` (a `WindowDisplay`; under Xvfb it has no
  vertical sync, so each flip waits for the next point of a fixed 60 Hz grid, as a
  monitor's refresh would);
* the cuff: the simulated CUFF/1 cuff on a pseudo-terminal behind the same
  `CuffSupervisor` (25 Hz telemetry, heartbeat thread); inflate/deflate commands are
  sent right after the phase's flip and their replies awaited, as a script would;
* the scanner: the same simulated scanner writing into a pseudo-terminal read by the
  serial trigger source; the protocol's dummy pulses are skipped, and t0 is the stamp of
  the first stored volume's pulse, as in cuedpain.

What it does as `launchScan` does (psychopy/psychopy-mri-emulator, `launchScan`): it
polls for the pulse without drawing (every 1 ms here), then flips once when the pulse is
seen (launchScan blanks the screen on the first pulse), then starts the phase loop.

What it leaves out: no event log is written during the run (onsets are kept in memory
and written at the end, as PsychoPy's ExperimentHandler does), rating phases show their
cue without a scale, and the tail phase is not waited out (its onset is the last one
measured). If anything, this favours the comparison runner.

    python -m benchmarks.naive_runner PROTOCOL --participant ID --out FILE.json [--seed N]
"""

from __future__ import annotations

import argparse
import sys
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from benchmarks.dryrun_spec import dry_run_spec
from experiment.clock import Clock, psychopy_clock
from experiment.log.eventlog import encode_record

STYLE = "per-phase psychopy.core.wait(duration) after each flip, started on the first stored pulse"
TRIGGER_POLL_S = 0.001


def wait_first_pulse(source: Any, gate: Any, *, clock: Clock, timeout_s: float) -> float:
    """launchScan's wait: poll (no drawing) until the first stored volume's pulse; its stamp."""
    from psychopy import core

    deadline = clock.now() + timeout_s
    while gate.t0 is None:
        for pulse in source.poll():
            gate.feed(pulse)
        if clock.now() > deadline:
            raise RuntimeError(f"no scanner pulse within {timeout_s:g} s")
        core.wait(TRIGGER_POLL_S, hogCPUperiod=0)
    return gate.t0


def run(protocol_path: Path, *, participant: str, seed: int | None = None) -> dict[str, Any]:
    """Drive the timeline with relative waits; return the plan and the onsets (seconds, run clock)."""
    from psychopy import core

    import experiment.station.devices as devices
    from experiment.protocol.model import load_protocol
    from experiment.scanner.startgate import StartGate
    from experiment.protocol.schedule import build_schedule

    protocol = load_protocol(protocol_path)
    seed = protocol.seed if seed is None else seed
    timeline = build_schedule(protocol, seed=seed, participant=participant)
    spec = dry_run_spec(protocol, seed=seed)
    clock = psychopy_clock()
    onsets: list[dict[str, Any]] = []
    with ExitStack() as stack:
        st = spec.station
        cuff = devices.open_cuff(st.cuff, mode=st.mode, clock=clock, stack=stack, on_record=lambda record: None,
                                 on_sample=lambda sample: None)  # no log during the run (module doc)
        display = devices.open_display(st.window, mode=st.mode, clock=clock, stack=stack)
        source = devices.open_trigger(st.trigger, mode=st.mode, clock=clock, stack=stack, display=display)
        try:
            display.show(protocol.fixation_cue.name)
            display.flip()
            gate = StartGate(protocol.scan.discard_pulses, scanner_discarded=protocol.scan.scanner_discarded)
            t0 = wait_first_pulse(source, gate, clock=clock, timeout_s=protocol.scan.first_trigger_timeout_s)
            display.flip()                      # launchScan: "blank the screen on first sync pulse"
            events = timeline.events
            for k, ev in enumerate(events):
                display.show(ev.cue)
                t_flip = display.flip()
                onsets.append({"i": ev.index, "trial": ev.trial, "phase": ev.phase, "t": t_flip,
                               "planned_t": t0 + ev.onset_s, "planned_onset_s": ev.onset_s})
                if ev.cuff == "inflate" and ev.target_kpa:
                    cuff.stimulate(ev.target_kpa, ev.rate_kpa_s, tag=ev.index)
                elif ev.cuff == "deflate":
                    cuff.deflate(tag=ev.index)
                if k + 1 < len(events):
                    core.wait(ev.duration_s)    # the relative wait under test
        finally:
            devices.make_safe(cuff, "end of comparison run")
        info = display.info()
    return {"style": STYLE, "protocol": str(protocol_path), "participant": participant, "seed": seed,
            "clock": clock.name, "t0": t0, "display": info,
            "plan": [{"i": ev.index, "onset_s": ev.onset_s, "duration_s": ev.duration_s} for ev in timeline.events],
            "onsets": onsets}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.naive_runner", description=__doc__.split("\n")[0])
    parser.add_argument("protocol", type=Path)
    parser.add_argument("--participant", required=True)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--out", type=Path, required=True, help="JSON file for the measured onsets")
    args = parser.parse_args(argv)
    result = run(args.protocol, participant=args.participant, seed=args.seed)
    args.out.write_text(encode_record(result))  # numpy numbers become plain JSON numbers
    print(f"naive runner: {len(result['onsets'])} onsets written to {args.out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
