"""What `experiment.station.devices` needs to open a dry run's devices, outside `cuedpain run`.

The comparison runner and the pacing benchmark open the window, the simulated cuff and
the simulated scanner through `experiment.station.devices` so that they get exactly what a
dry run gets: `dry_run_spec` gives the protocol and a dry run's `StationSpec` (the default
rig: simulated cuff and scanner, a window), built as the run's pre-flight builds it.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any


def dry_run_spec(protocol: Any, *, seed: int | None = None) -> SimpleNamespace:
    """`.protocol`, `.rig` (the default rig), `.station` (a dry run's StationSpec), `.seed`, `.stim_kpa`
    (a pressure to inflate to), `.rate_kpa_s`."""
    from experiment.protocol.rig import load_rig
    from experiment.protocol.schedule import build_schedule
    from experiment.protocol.specs import SIM_CUFF, SimSpec
    from experiment.scanner.sim_scanner import ScannerPlan
    from experiment.station.devices import safety_limits
    from experiment.station.station import CuffNeed, Mode, StationSpec, TriggerNeed, WindowSpec

    seed = protocol.seed if seed is None else seed
    rig, scan = load_rig(None), protocol.scan
    rates = tuple(ev.rate_kpa_s for ev in build_schedule(protocol, seed=seed).events if ev.rate_kpa_s)
    plan = ScannerPlan(tr_s=scan.tr_s, n_volumes=scan.n_volumes + 2, prep_scans_no_pulse=scan.scanner_discarded,
                       discard_pulses=scan.discard_pulses, jitter_s=0.0002, seed=seed)
    station = StationSpec(mode=Mode.DRY_RUN, keys=protocol.keys,
                          window=WindowSpec(screen=rig.screen, cues=protocol.cues, stimuli_dir=protocol.stimuli_dir),
                          cuff=CuffNeed(SIM_CUFF, safety_limits(protocol.safety, rates_kpa_s=rates)),
                          trigger=TriggerNeed(SimSpec(), plan, default_key=protocol.keys.trigger), assume_yes=True)
    fixed = protocol.stimulation.fixed_kpa
    stim_kpa = min(fixed.values()) if fixed else protocol.safety.max_pressure_kpa / 2
    return SimpleNamespace(protocol=protocol, rig=rig, station=station, seed=seed, stim_kpa=stim_kpa,
                           rate_kpa_s=protocol.stimulation.rate_kpa_s)
