"""Where a run's pressure comes from: the protocol, the participant's calibration, or
an operator override with a recorded reason; and which calibration a run may use.

Calibration results live in
    <data>/sourcedata/sub-<id>/calibration/sub-<id>_calibration-<n>.json
(written by `cuedpain calibrate`). Each says whether it came from a dry run, the cuff it
was made with, the session, the time, the method and the ceiling. A run of a protocol
whose target is `calibrated` takes the newest one, on these conditions:

* a real run never uses a dry-run calibration (nor one that does not say whether it was);
* a calibration from another session, or older than the rig's `calibration_max_age_h`
  (default 12 h), is used only when the operator names it (`--calibration FILE`);
* a dry run may use any calibration of the participant; the console says which.

Without a usable calibration the run is refused (exit 2) unless the operator overrides
the pressure and says why. Whatever is used goes into the log header, the confirmation
block and provenance.json.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Mapping, TypedDict

from experiment.errors import InputError
from experiment.log.records import LevelPressure, PressureInfo
from experiment.procedures.calibration.fit import FitError, pressure_for
from experiment.protocol.model import Protocol
from experiment.units import kpa_to_mmhg

CALIBRATION_MAX_AGE_H = 12.0      # default of the rig's calibration_max_age_h
_NAME = re.compile(r"^sub-(?P<p>[A-Za-z0-9]+)_calibration-(?P<n>\d+)\.json$")


def calibration_dir(data_root: Path, participant: str) -> Path:
    return Path(data_root) / "sourcedata" / f"sub-{participant}" / "calibration"


@dataclass(frozen=True)
class CalibrationFile:
    """A calibration result as a run sees it."""

    path: Path
    number: int
    participant: str
    session: str | None
    pressure_kpa: float
    dry_run: bool | None             # None: the file does not say (made before this was recorded)
    created: datetime | None
    method: str | None
    target_rating: float | None
    ceiling_kpa: float | None
    device: Mapping[str, Any] | None  # the cuff it was made with (name, firmware, serial, port, ...)
    fit: Mapping[str, Any] | None = None  # the rating curve (MonotoneFit.as_dict): pressures for other ratings

    def age_h(self, now: datetime) -> float | None:
        return None if self.created is None else (now - self.created).total_seconds() / 3600

    def describe(self, now: datetime) -> str:
        """One line for the operator: file, pressure, when, how, with which cuff."""
        age = self.age_h(now)
        when = "at an unknown time" if self.created is None else \
            f"{self.created.isoformat(timespec='minutes')} ({age:.1f} h ago)"
        dev = (self.device or {}).get("name") or "an unknown cuff"
        kind = "DRY RUN" if self.dry_run else ("real" if self.dry_run is False else "dry run or real: unknown")
        ses = f"session {self.session}" if self.session else "no session"
        return (f"{self.path.name}: {self.pressure_kpa:.1f} kPa, {self.method or '?'} method, {ses}, {when}, "
                f"{kind}, with {dev}")


def _number(path: Path) -> int | None:
    m = _NAME.match(path.name)
    return int(m.group("n")) if m else None


def read_calibration(path: Path) -> CalibrationFile:
    """Read one calibration result; InputError naming the file when it cannot be used."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        pressure = float(data["pressure_kpa"])
        if not (math.isfinite(pressure) and pressure > 0):
            raise ValueError(f"pressure_kpa {pressure!r} is not a pressure")
        created = datetime.fromisoformat(data["created"]) if data.get("created") else None
        if created is not None and created.tzinfo is None:
            created = created.astimezone()
        ceiling = data.get("ceiling_kpa")
        target = data.get("target_rating")
        dry = data.get("dry_run")
        return CalibrationFile(
            path=path, number=_number(path) or 0, participant=str(data["participant"]),
            session=data.get("session") or None, pressure_kpa=pressure,
            dry_run=None if dry is None else bool(dry), created=created, method=data.get("method"),
            target_rating=None if target is None else float(target),
            ceiling_kpa=None if ceiling is None else float(ceiling), device=data.get("device"), fit=data.get("fit"))
    except FileNotFoundError:
        raise InputError(f"calibration file {path} not found") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InputError(f"calibration file {path} cannot be used: {exc}") from None


def latest_calibration(data_root: Path, participant: str) -> CalibrationFile | None:
    """The participant's newest calibration result (highest number), or None."""
    d = calibration_dir(data_root, participant)
    if not d.is_dir():
        return None
    numbered = [(n, f) for f in d.iterdir() if (n := _number(f)) is not None
                and _NAME.match(f.name).group("p") == participant]  # type: ignore[union-attr]
    if not numbered:
        return None
    return read_calibration(max(numbered)[1])


def next_calibration_path(data_root: Path, participant: str) -> Path:
    latest = latest_calibration(data_root, participant)
    n = 1 if latest is None else latest.number + 1
    return calibration_dir(data_root, participant) / f"sub-{participant}_calibration-{n}.json"


def _calibrate_hint(participant: str) -> str:
    return (f"calibrate for real: `cuedpain calibrate --participant {participant} --ceiling KPA` (without "
            f"--dry-run), or give --pressure-override KPA --override-reason TEXT")


def check_usable(cal: CalibrationFile, *, participant: str, session: str | None, dry_run: bool, named: bool,
                 max_age_h: float, now: datetime) -> None:
    """Refuse a calibration this run may not use (the rules in the module docstring)."""
    if cal.participant != participant:
        raise InputError(f"calibration file {cal.path} is sub-{cal.participant}'s, not sub-{participant}'s")
    if dry_run:
        return
    if cal.dry_run is None:
        raise InputError(f"calibration file {cal.path} does not say whether it came from a dry run (made by an "
                         f"older cuedpain); a real run never uses it: {_calibrate_hint(participant)}")
    if cal.dry_run:
        raise InputError(f"calibration file {cal.path} was made in a dry run (simulated participant and cuff); a "
                         f"real run never uses it: {_calibrate_hint(participant)}")
    if named:
        return
    if cal.session != session:
        raise InputError(f"the newest calibration of sub-{participant}, {cal.path}, is from "
                         f"{'session ' + cal.session if cal.session else 'no session'}, and this run is "
                         f"{'session ' + session if session else 'without a session'}; a calibration from another "
                         f"session is used only when you name it (--calibration {cal.path}), or calibrate again")
    age = cal.age_h(now)
    if age is None or age > max_age_h:
        how_old = "of unknown age" if age is None else f"{age:.1f} h old"
        raise InputError(f"the newest calibration of sub-{participant}, {cal.path}, is {how_old}, over the limit "
                         f"of {max_age_h:g} h (calibration_max_age_h in the rig file); name it to use it anyway "
                         f"(--calibration {cal.path}), or calibrate again")


def _level(name: str, kpa: float, as_written: str, source: str, *, fraction: float | None = None,
           rating: float | None = None) -> LevelPressure:
    level: LevelPressure = {"pressure_kpa": round(kpa, 3), "pressure_mmhg": round(kpa_to_mmhg(kpa), 1),
                            "as_written": as_written, "source": source}
    if fraction is not None:
        level["fraction"] = fraction
    if rating is not None:
        level["rating"] = rating
    return level


def _calibrated_levels(protocol: Protocol, base_kpa: float, fit: Mapping[str, Any] | None, *,
                       source: str) -> dict[str, LevelPressure]:
    """Each calibrated level's pressure: a fraction of the base pressure, or the fit's pressure
    for a rating (only a calibration has a fit; an override gives one pressure)."""
    out: dict[str, LevelPressure] = {}
    for name, lv in protocol.stimulation.levels.items():
        if lv.kpa is not None:
            continue
        if lv.fraction is not None:
            out[name] = _level(name, base_kpa * lv.fraction, lv.as_written, source, fraction=lv.fraction)
            continue
        assert lv.rating is not None
        if fit is None:
            raise InputError(f"level {name!r} asks for the pressure that gives rating {lv.rating:g}; an override "
                             f"gives one pressure, not a rating curve: name a calibration (--calibration FILE) "
                             f"or calibrate")
        try:
            kpa = pressure_for(fit, lv.rating)
        except FitError as exc:
            raise InputError(f"level {name!r} (rating {lv.rating:g}): {exc}; calibrate with a higher ceiling or "
                             f"target, or change the level") from None
        out[name] = _level(name, kpa, lv.as_written, source, rating=lv.rating)
    return out


def _fixed_levels(protocol: Protocol) -> dict[str, LevelPressure]:
    return {n: _level(n, lv.kpa, lv.as_written, "protocol") for n, lv in protocol.stimulation.levels.items()
            if lv.kpa is not None}


def _summary(levels: Mapping[str, LevelPressure], source: str) -> PressureInfo:
    """The pressure record: every level, and (for one level) its pressure at the top; the
    caller adds the facts of its source."""
    first = next(iter(levels.values()))
    one = len(levels) == 1
    return {"pressure_kpa": first["pressure_kpa"] if one else None,
            "pressure_mmhg": first["pressure_mmhg"] if one else None,
            "source": source, "levels": dict(levels)}


def resolve_pressure(protocol: Protocol, *, data_root: Path, participant: str, session: str | None = None,
                     dry_run: bool = False, calibration_file: Path | None = None,
                     max_age_h: float = CALIBRATION_MAX_AGE_H, now: datetime | None = None,
                     override_kpa: float | None = None, override_reason: str | None = None) -> PressureInfo:
    """The pressures of this run's levels and where they came from (log header, confirmation, provenance).

    Returns {"pressure_kpa": kPa of the one level (None with several), "pressure_mmhg", "source":
    "protocol" | "calibration" | "override", "levels": {level: {pressure_kpa, pressure_mmhg,
    as_written, source, fraction | rating}}, ...} with the calibration's facts or the override's
    reason. Every level is checked against the protocol's ceiling later, by the schedule's
    pre-flight and again by the cuff supervisor.
    """
    now = now or datetime.now().astimezone()
    calibrated = protocol.stimulation.calibrated
    if not calibrated and (calibration_file is not None or override_kpa is not None):
        raise InputError(f"this protocol gives its own pressures ({protocol.stimulation.as_written}); "
                         f"{'--calibration' if calibration_file is not None else '--pressure-override'} applies "
                         f"only to a protocol whose pressure is calibrated")
    if calibration_file is not None and override_kpa is not None:
        raise InputError("--calibration names the calibration the run takes; it cannot go with --pressure-override")
    if not calibrated:
        fixed = _summary(_fixed_levels(protocol), "protocol")
        fixed["as_written"] = protocol.stimulation.as_written
        return fixed
    if override_kpa is not None:
        if not override_reason or not override_reason.strip():
            raise InputError("--pressure-override needs --override-reason \"...\" (the reason is recorded)")
        if not (math.isfinite(override_kpa) and override_kpa > 0):
            raise InputError(f"--pressure-override must be > 0 kPa, got {override_kpa:g}")
        levels = {**_fixed_levels(protocol),
                  **_calibrated_levels(protocol, float(override_kpa), None, source="override")}
        overridden = _summary({n: levels[n] for n in protocol.stimulation.levels}, "override")
        overridden["override_kpa"], overridden["reason"] = float(override_kpa), override_reason.strip()
        return overridden
    cal = read_calibration(calibration_file) if calibration_file is not None else \
        latest_calibration(data_root, participant)
    if cal is None:
        raise InputError(
            f"the protocol takes the pressure from the participant's calibration, but there is none for "
            f"sub-{participant} in {calibration_dir(data_root, participant)}; run `cuedpain calibrate "
            f"--participant {participant}` first, or give --pressure-override KPA --override-reason TEXT")
    check_usable(cal, participant=participant, session=session, dry_run=dry_run,
                 named=calibration_file is not None, max_age_h=max_age_h, now=now)
    levels = {**_fixed_levels(protocol), **_calibrated_levels(protocol, cal.pressure_kpa, cal.fit,
                                                              source="calibration")}
    first = protocol.stimulation.levels[next(iter(protocol.stimulation.levels))]
    return _with_calibration(_summary({n: levels[n] for n in protocol.stimulation.levels}, "calibration"), cal,
                             fraction=first.fraction if len(levels) == 1 else None,
                             named=calibration_file is not None, now=now)


def _with_calibration(info: PressureInfo, cal: CalibrationFile, *, fraction: float | None, named: bool,
                      now: datetime) -> PressureInfo:
    """`info` with the facts of the calibration it came from (in the order the log has always had)."""
    info["calibration_file"], info["calibrated_kpa"] = str(cal.path), cal.pressure_kpa
    info["fraction"], info["named"] = fraction, named
    info["calibration_created"] = None if cal.created is None else cal.created.isoformat(timespec="seconds")
    info["calibration_session"], info["calibration_dry_run"] = cal.session, cal.dry_run
    info["calibration_method"], info["calibration_target_rating"] = cal.method, cal.target_rating
    info["calibration_ceiling_kpa"], info["calibration_cuff"] = cal.ceiling_kpa, cal.device
    info["description"] = cal.describe(now)
    return info


def calibrated_levels_kpa(pressure: PressureInfo, protocol: Protocol) -> dict[str, float]:
    """From a resolved pressure record: the kPa of each level the protocol leaves to calibration."""
    return {n: float(pressure["levels"][n]["pressure_kpa"]) for n, lv in protocol.stimulation.levels.items()
            if lv.calibrated}


class LevelReport(TypedDict):
    """What a new calibration gives one calibrated level of a protocol."""

    as_written: str
    pressure_kpa: float | None   # None: the fit cannot give it
    problem: str | None          # why it has no pressure, or why a run would refuse it


def level_report(protocol: Protocol, fit: Mapping[str, Any], calibrated_kpa: float) -> dict[str, LevelReport]:
    """What a new calibration gives each calibrated level of a protocol (shown by `calibrate
    --protocol`, kept in the result file): its pressure, or why it has none."""
    out: dict[str, LevelReport] = {}
    ceiling = protocol.safety.max_pressure_kpa
    for name, lv in protocol.stimulation.levels.items():
        if lv.kpa is not None:
            continue
        try:
            kpa = calibrated_kpa * lv.fraction if lv.fraction is not None else pressure_for(fit, float(lv.rating or 0))
        except FitError as exc:
            out[name] = {"as_written": lv.as_written, "pressure_kpa": None, "problem": str(exc)}
            continue
        problem = (f"above the protocol's ceiling ({ceiling:g} kPa): a run would refuse it" if kpa > ceiling
                   else None)
        out[name] = {"as_written": lv.as_written, "pressure_kpa": round(kpa, 2), "problem": problem}
    return out
