"""What `experiment.station.devices` needs to open a dry run's devices, outside `cuedpain run`.

The comparison runner and the pacing benchmark open the window, the simulated cuff and
the simulated scanner through `experiment.station.devices` so that they get exactly what a dry
run gets; these are the fields of the runner's `Prepared` that those functions read.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any


def dry_run_spec(protocol: Any, *, seed: int | None = None) -> SimpleNamespace:
    """A dry run of `protocol` with the default rig (simulated cuff and scanner, a window)."""
    from experiment.protocol.rig import load_rig
    from experiment.protocol.specs import SIM_CUFF, SimSpec

    return SimpleNamespace(protocol=protocol, rig=load_rig(None), cuff_spec=SIM_CUFF, scanner_spec=SimSpec(),
                           dry_run=True, headless=False, stimuli_dir=protocol.stimuli_dir,
                           seed=protocol.seed if seed is None else seed)
