"""Where a run's pressure comes from: the protocol, the participant's calibration, or
an operator override with a recorded reason.

Calibration results live in
    data/sourcedata/sub-<id>/calibration/sub-<id>_calibration-<n>.json
(written by `cuedpain calibrate`; the newest number wins). A protocol whose target
pressure is `calibrated` cannot run without one, unless the operator overrides the
pressure and says why; the reason goes into the log header and the provenance.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from experiment.errors import InputError

_NAME = re.compile(r"^sub-(?P<p>[A-Za-z0-9]+)_calibration-(?P<n>\d+)\.json$")


def calibration_dir(data_root: Path, participant: str) -> Path:
    return Path(data_root) / "sourcedata" / f"sub-{participant}" / "calibration"


def latest_calibration(data_root: Path, participant: str) -> tuple[Path, dict[str, Any]] | None:
    d = calibration_dir(data_root, participant)
    if not d.is_dir():
        return None
    found = []
    for f in d.iterdir():
        m = _NAME.match(f.name)
        if m and m.group("p") == participant:
            found.append((int(m.group("n")), f))
    if not found:
        return None
    _, path = max(found)
    try:
        data = json.loads(path.read_text())
        float(data["pressure_kpa"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InputError(f"calibration file {path} cannot be used: {exc}") from None
    return path, data


def next_calibration_path(data_root: Path, participant: str) -> Path:
    d = calibration_dir(data_root, participant)
    latest = latest_calibration(data_root, participant) if d.is_dir() else None
    n = 1 if latest is None else int(_NAME.match(latest[0].name).group("n")) + 1  # type: ignore[union-attr]
    return d / f"sub-{participant}_calibration-{n}.json"


def resolve_pressure(protocol: Any, *, data_root: Path, participant: str, override_kpa: float | None,
                     override_reason: str | None) -> dict[str, Any]:
    """The pressure for this run and where it came from (goes into the log header).

    Returns {"pressure_kpa": float|None, "source": "protocol"|"calibration"|"override", ...}.
    The pressure is checked against the protocol's ceiling later, by the schedule's
    pre-flight and again by the cuff supervisor.
    """
    if override_kpa is not None:
        if not override_reason or not override_reason.strip():
            raise InputError("--pressure-override needs --override-reason \"...\" (the reason is recorded)")
        if override_kpa <= 0:
            raise InputError(f"--pressure-override must be > 0 kPa, got {override_kpa:g}")
        return {"pressure_kpa": float(override_kpa), "source": "override", "reason": override_reason.strip()}
    if not protocol.stimulation.calibrated:
        return {"pressure_kpa": None, "source": "protocol"}
    found = latest_calibration(data_root, participant)
    if found is None:
        raise InputError(
            f"the protocol takes the pressure from the participant's calibration, but there is none for "
            f"sub-{participant} in {calibration_dir(data_root, participant)}; run `cuedpain calibrate "
            f"--participant {participant}` first, or give --pressure-override KPA --override-reason TEXT")
    path, data = found
    fraction = getattr(protocol.stimulation, "calibrated_fraction", 1.0) or 1.0
    return {"pressure_kpa": float(data["pressure_kpa"]) * fraction, "source": "calibration",
            "calibration_file": str(path), "calibrated_kpa": float(data["pressure_kpa"]), "fraction": fraction}
