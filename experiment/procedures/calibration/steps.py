"""The two calibration procedures as pure decisions (no clock, no I/O).

What the next stimulus is, given what happened so far; the worst-case stimulus times
the safety limits are set from; pressures read off the measured trace; the rated
points the fit gets. The shell (experiment/procedures/calibration/procedure.py) carries the stimuli out.

ramp       The cuff rises from 0 toward the ceiling at `rate_kpa_s` (1 kPa/s: Lindskou
           2017, Taylor 2026). The participant presses the confirm key when the pressure
           first becomes painful (detection) and again when the pain reaches the target
           rating; the second press ends the ramp (the cuff vents at once, like the stop
           button of cuff algometry), and so does reaching the ceiling. Repeated
           `repeats` times, `rest_s` apart. A ramp that reaches the ceiling without the
           target press ends the procedure: the target lies above the ceiling.
staircase  Plateaus of `plateau_s` (counted from the target being reached) at start,
           start + step, ... with the last step clipped to the ceiling; after each one
           the cuff vents and the participant rates it on the 0-100 scale; `rest_s`
           between. Stops after the first rating at or above the target, or after the
           plateau at the ceiling. A plateau whose rating timed out is given again once;
           a second miss in a row ends the procedure.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass
from typing import Literal, Sequence, Union

from typing_extensions import NotRequired, TypedDict

from experiment.errors import InputError
from experiment.protocol.cuff_timing import CuffTiming

# A stimulus's time limit = its longest ramp + plateau + this margin (the supervisor's
# compliance margin of 2 s plus frames and replies). The device's MAXTIME must hold it.
STIMULUS_MARGIN_S = 5.0
DEVICE_MAX_STIMULUS_S = 595.0   # CUFF/1 MAXTIME is at most 600 s; the supervisor adds 0.5 s
DETECTION_RATING = 0.0          # what the fit counts a detection press as (pain begins here)
RESOLUTION_KPA = 0.1            # CUFF/1 pressures have one decimal


@dataclass(frozen=True)
class RampSettings:
    rate_kpa_s: float = 1.0
    repeats: int = 3
    rest_s: float = 10.0


@dataclass(frozen=True)
class StaircaseSettings:
    start_kpa: float = 10.0
    step_kpa: float = 5.0
    rate_kpa_s: float = 30.0
    plateau_s: float = 5.0
    rest_s: float = 10.0
    max_missed: int = 1


Settings = Union[RampSettings, StaircaseSettings]


@dataclass(frozen=True)
class Ramp:
    index: int             # 1-based
    ceiling_kpa: float     # where the ramp ends if nobody presses
    rate_kpa_s: float


@dataclass(frozen=True)
class Plateau:
    index: int
    pressure_kpa: float
    rate_kpa_s: float
    hold_s: float


@dataclass(frozen=True)
class Done:
    reason: str            # repeats_done | target_reached | ceiling_reached | no_rating
    message: str
    fit: bool              # whether the data go to the fit (False: no result is possible)


@dataclass(frozen=True)
class RampOutcome:
    index: int
    ended: str                       # target_press | ceiling
    detection_kpa: float | None
    target_kpa: float | None
    t_start: float
    t_detection: float | None
    t_target: float | None


@dataclass(frozen=True)
class PlateauOutcome:
    index: int
    target_kpa: float                # commanded
    pressure_kpa: float              # measured mean over the hold
    rating: float | None             # None: timed out
    t_start: float
    t_onset: float                   # the rating scale appeared
    t_response: float | None


Outcome = Union[RampOutcome, PlateauOutcome]


def check_settings(settings: Settings, *, ceiling_kpa: float, timing: CuffTiming = CuffTiming()) -> None:
    """InputError naming the first option that cannot work with this ceiling."""
    if not (settings.rate_kpa_s >= 0.1 and settings.rate_kpa_s <= 100.0):
        raise InputError(f"--rate must be 0.1-100 kPa/s, got {settings.rate_kpa_s:g}")
    if not (math.isfinite(settings.rest_s) and 0 <= settings.rest_s <= 600):
        raise InputError(f"--rest must be 0-600 s, got {settings.rest_s:g}")
    if isinstance(settings, RampSettings):
        if not 1 <= settings.repeats <= 10:
            raise InputError(f"--repeats must be 1-10, got {settings.repeats}")
    else:
        if not (math.isfinite(settings.start_kpa) and 0 < settings.start_kpa <= ceiling_kpa):
            raise InputError(f"--start must be above 0 and at most the ceiling {ceiling_kpa:g} kPa, "
                             f"got {settings.start_kpa:g}")
        if not (math.isfinite(settings.step_kpa) and settings.step_kpa >= 0.5):
            raise InputError(f"--step must be at least 0.5 kPa, got {settings.step_kpa:g}")
        if not (math.isfinite(settings.plateau_s) and 0.2 <= settings.plateau_s <= 60):
            raise InputError(f"--plateau must be 0.2-60 s, got {settings.plateau_s:g}")
    one_s, _ = inflation_limits_s(settings, ceiling_kpa=ceiling_kpa, timing=timing)
    if one_s > DEVICE_MAX_STIMULUS_S:
        raise InputError(f"one stimulus could last {one_s:.0f} s (to {ceiling_kpa:g} kPa at "
                         f"{settings.rate_kpa_s:g} kPa/s), more than the cuff's limit of "
                         f"{DEVICE_MAX_STIMULUS_S:g} s; use a faster --rate or a lower --ceiling")


def top_kpa(ceiling_kpa: float) -> float:
    """The highest pressure the procedures command: the ceiling rounded down to the cuff's 0.1 kPa."""
    return round(math.floor(ceiling_kpa / RESOLUTION_KPA + 1e-9) * RESOLUTION_KPA, 1)


def plateau_pressures(settings: StaircaseSettings, *, ceiling_kpa: float) -> list[float]:
    """Every plateau pressure the staircase may give, lowest first: start, start + step, ...
    below the ceiling, then the ceiling itself (`top_kpa`)."""
    top = top_kpa(ceiling_kpa)
    out: list[float] = []
    k = 0
    while (p := round(settings.start_kpa + k * settings.step_kpa, 1)) < top:
        out.append(p)
        k += 1
    return out + [top]


def inflation_limits_s(settings: Settings, *, ceiling_kpa: float,
                       timing: CuffTiming = CuffTiming()) -> tuple[float, float]:
    """(longest single stimulus, longest total inflation) of the whole procedure: the rise to
    the ceiling counted with the rig's slower real cuff (`cuff_timing`), so the host's time
    limit does not stop a ramp that a real cuff is still inflating, plus a fixed margin."""
    rise_s = timing.ramp_ms(ceiling_kpa, settings.rate_kpa_s) / 1000
    if isinstance(settings, RampSettings):
        one = rise_s + STIMULUS_MARGIN_S
        return one, one * settings.repeats
    one = rise_s + settings.plateau_s + STIMULUS_MARGIN_S
    n = len(plateau_pressures(settings, ceiling_kpa=ceiling_kpa)) * (1 + settings.max_missed)
    return one, one * n


def next_ramp(settings: RampSettings, *, ceiling_kpa: float, done: Sequence[RampOutcome]) -> Ramp | Done:
    if done and done[-1].ended == "ceiling":
        last = done[-1]
        return Done("ceiling_reached", f"ramp {last.index} reached the ceiling {ceiling_kpa:g} kPa before the "
                    "target press: the target lies above the ceiling", fit=False)
    if len(done) >= settings.repeats:
        return Done("repeats_done", f"{len(done)} ramp(s) done", fit=True)
    return Ramp(index=len(done) + 1, ceiling_kpa=top_kpa(ceiling_kpa), rate_kpa_s=settings.rate_kpa_s)


def next_plateau(settings: StaircaseSettings, *, ceiling_kpa: float, target_rating: float,
                 done: Sequence[PlateauOutcome]) -> Plateau | Done:
    def plateau(pressure_kpa: float) -> Plateau:
        return Plateau(index=len(done) + 1, pressure_kpa=pressure_kpa, rate_kpa_s=settings.rate_kpa_s,
                       hold_s=settings.plateau_s)

    steps = plateau_pressures(settings, ceiling_kpa=ceiling_kpa)
    if not done:
        return plateau(steps[0])
    last = done[-1]
    if last.rating is None:
        missed = 0
        for o in reversed(done):
            if o.rating is not None:
                break
            missed += 1
        if missed > settings.max_missed:
            return Done("no_rating", f"{missed} ratings in a row timed out (last at {last.target_kpa:g} kPa)",
                        fit=False)
        return plateau(last.target_kpa)
    if last.rating >= target_rating:
        return Done("target_reached", f"rated {last.rating:g} at {last.target_kpa:g} kPa", fit=True)
    higher = [p for p in steps if p > last.target_kpa + 1e-9]
    if not higher:
        return Done("ceiling_reached", f"the ceiling {ceiling_kpa:g} kPa was rated {last.rating:g}", fit=True)
    return plateau(higher[0])


def pressure_at(samples: Sequence[tuple[float, float]], t: float) -> float | None:
    """The measured pressure at time `t`, linearly interpolated between the samples
    (time, kPa; ascending) around it; the nearest end sample outside them."""
    if not samples:
        return None
    times = [s[0] for s in samples]
    i = bisect.bisect_right(times, t)
    if i == 0:
        return samples[0][1]
    if i == len(samples):
        return samples[-1][1]
    (t0, p0), (t1, p1) = samples[i - 1], samples[i]
    return p0 if t1 <= t0 else p0 + (p1 - p0) * (t - t0) / (t1 - t0)


def mean_pressure(samples: Sequence[tuple[float, float]], t_from: float, t_to: float) -> float | None:
    """Mean measured pressure over [t_from, t_to] (None when no sample falls in it)."""
    inside = [p for t, p in samples if t_from <= t <= t_to]
    return sum(inside) / len(inside) if inside else None


class StimulusPoint(TypedDict):
    """One rated point of a calibration (the result file's `stimuli`)."""

    index: int                           # stimulus index
    kind: Literal["detection", "target", "plateau"]
    pressure_kpa: float                  # measured
    rating: float | None                 # None: timed out (a plateau), not fitted
    t: float | None                      # the press, or the rating's response
    t_start: float                       # SET written
    target_kpa: NotRequired[float]       # a plateau's commanded pressure
    t_rating_onset: NotRequired[float]   # a plateau's rating scale appeared


def stimulus_records(outcomes: Sequence[Outcome], *, target_rating: float) -> list[StimulusPoint]:
    """The rated points of a calibration, as the result file lists them (and the fit reads them).

    A ramp gives a `detection` point (counted as rating DETECTION_RATING: where pain
    begins) and a `target` point (rated `target_rating` by the press itself); a
    plateau gives one `plateau` point with its rating (None: timed out, not fitted).
    """
    out: list[StimulusPoint] = []
    for o in outcomes:
        if isinstance(o, RampOutcome):
            if o.detection_kpa is not None:
                out.append({"index": o.index, "kind": "detection", "pressure_kpa": o.detection_kpa,
                            "rating": DETECTION_RATING, "t": o.t_detection, "t_start": o.t_start})
            if o.target_kpa is not None:
                out.append({"index": o.index, "kind": "target", "pressure_kpa": o.target_kpa,
                            "rating": float(target_rating), "t": o.t_target, "t_start": o.t_start})
        else:
            out.append({"index": o.index, "kind": "plateau", "pressure_kpa": o.pressure_kpa,
                        "target_kpa": o.target_kpa, "rating": o.rating, "t": o.t_response,
                        "t_start": o.t_start, "t_rating_onset": o.t_onset})
    return out


def fit_points(records: Sequence[StimulusPoint]) -> tuple[list[float], list[float]]:
    """(pressures, ratings) of the records that carry a rating."""
    rated = [(r["pressure_kpa"], r["rating"]) for r in records if r["rating"] is not None]
    return [p for p, _ in rated], [rating for _, rating in rated]
