"""The pressure checks as pure decisions: which plateaus to give and what to keep.

confirmation   plateaus at 0.9 x, 1.0 x and 1.1 x the calibrated pressure, lowest first
               (clipped to the ceiling, on the cuff's 0.1 kPa grid, each pressure once),
               each rated. The pressure whose rating is nearest the target is kept; on a
               tie, the one nearest the calibrated pressure. "confirmed" when that is the
               calibrated pressure, "adjusted" otherwise.
scanner_check  one plateau at the confirmed pressure, or at the pressure the operator gives
               to adjust it (within the ceiling); its rating is recorded. "confirmed" when
               the pressure is the one it checked, "adjusted" when the operator changed it.
A check whose ratings all timed out keeps nothing (no result file; the step is done again).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

from experiment.procedures.calibration.steps import top_kpa

CONFIRMATION_FACTORS = (0.9, 1.0, 1.1)
KINDS = ("confirmation", "scanner_check")


@dataclass(frozen=True)
class Rated:
    """One plateau as given: commanded and measured pressure, and its rating (None: timed out)."""

    target_kpa: float
    pressure_kpa: float
    rating: float | None


@dataclass(frozen=True)
class Decision:
    pressure_kpa: float
    decision: str          # confirmed | adjusted
    rule: str              # how it was chosen, in words (result file, log, console)


def _grid(kpa: float) -> float:
    return round(math.floor(kpa * 10 + 1e-9) / 10, 1)


def check_pressures(kind: str, *, from_kpa: float, ceiling_kpa: float, adjust_kpa: float | None = None) -> tuple[float, ...]:
    """The plateaus of a check, lowest first, each at most the ceiling."""
    top = top_kpa(ceiling_kpa)
    if kind == "scanner_check":
        return (min(_grid(adjust_kpa if adjust_kpa is not None else from_kpa), top),)
    out: list[float] = []
    for f in CONFIRMATION_FACTORS:
        p = min(_grid(from_kpa * f), top)
        if p > 0 and p not in out:
            out.append(p)
    return tuple(sorted(out))


def decide(kind: str, rated: Sequence[Rated], *, from_kpa: float, target_rating: float) -> Decision | None:
    """What the check keeps (None: no rating was given)."""
    answered = [r for r in rated if r.rating is not None]
    if not answered:
        return None
    if kind == "scanner_check":
        p = rated[0].target_kpa
        same = abs(p - _grid(from_kpa)) < 0.05
        rule = f"checked at {p:g} kPa, rated {answered[0].rating:g}" + ("" if same else
                                                                       f" (adjusted from {from_kpa:g} kPa)")
        return Decision(p, "confirmed" if same else "adjusted", rule)
    best = min(answered, key=lambda r: (abs((r.rating or 0.0) - target_rating), abs(r.target_kpa - from_kpa)))
    same = abs(best.target_kpa - _grid(from_kpa)) < 0.05
    ratings = ", ".join(f"{r.target_kpa:g} kPa: {'timed out' if r.rating is None else f'{r.rating:g}'}"
                        for r in rated)
    rule = (f"rated nearest the target {target_rating:g} at {best.target_kpa:g} kPa ({ratings})")
    return Decision(best.target_kpa, "confirmed" if same else "adjusted", rule)
