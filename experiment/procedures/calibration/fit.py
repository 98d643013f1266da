"""The pressure for a target pain rating, from rated pressures (pure: no clock, no I/O).

Method: isotonic regression of rating on pressure (pool adjacent violators), inverted
by linear interpolation. Why this and not a logistic fit:
* a calibration has 4-10 points, and the staircase stops just past the target, so a
  logistic's upper asymptote and slope are barely constrained by the data; the
  isotonic fit assumes only that pain does not fall as pressure rises;
* the answer is always inside the pressures actually given (never an extrapolation
  to a pressure the participant has not felt);
* it needs no iterative optimiser that can fail to converge.

Inversion: where the fitted curve equals the target on a flat stretch (tied or pooled
points, e.g. the target presses of the ramp method, or a staircase rating of exactly
the target), the answer is the mean pressure of the points there; otherwise it is the
linear interpolation between the last fitted value below the target and the first
above it.

Refusals (`FitError`, with a message for the operator): fewer than two different
pressures; ratings that never reach the target; a target already exceeded at the
lowest pressure; ratings that do not rise with pressure: a rating that falls by more
than `max_reversal` (20 points, four steps of the scale) below one given at a lower
pressure. Rating noise (SD about 5 in the simulated participant) makes small
reversals common, above all near 0 where ratings pile up; a reversal of 20 is about
three SDs of the difference of two ratings. A rank correlation was tried first and
rejected: with 5-8 points, a few noisy ratings near 0 pull Kendall's tau below any
useful threshold while the ratings around the target are in good order. Kendall's
tau-b is still reported.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from scipy.stats import kendalltau

from experiment.log.records import FitFields

METHOD = ("isotonic regression of rating on pressure (pool adjacent violators), "
          "inverted by linear interpolation")
MAX_REVERSAL = 20.0     # a rating may fall at most this far below one at a lower pressure
_EQ = 1e-9


class FitError(ValueError):
    """The ratings cannot give a pressure for the target; the message says why."""


@dataclass(frozen=True)
class MonotoneFit:
    """A monotone rating curve and the pressure it gives for the target rating."""

    pressure_kpa: float
    target_rating: float
    knots_kpa: tuple[float, ...]       # the distinct pressures, ascending
    fitted: tuple[float, ...]          # isotonic rating at each knot (non-decreasing)
    weights: tuple[int, ...]           # points at each knot
    bracket_kpa: tuple[float, float]   # the knots the answer lies between (equal: a flat stretch)
    kendall_tau: float | None          # reported, not a criterion (see the module doc)
    max_reversal: float                # the largest fall of a rating below one at a lower pressure

    def as_dict(self) -> FitFields:
        return {"method": METHOD, "pressure_kpa": self.pressure_kpa, "target_rating": self.target_rating,
                "knots_kpa": list(self.knots_kpa), "fitted_ratings": list(self.fitted),
                "weights": list(self.weights), "bracket_kpa": list(self.bracket_kpa),
                "kendall_tau": self.kendall_tau, "max_reversal": self.max_reversal,
                "max_reversal_allowed": MAX_REVERSAL, "n": sum(self.weights)}


def isotonic(pressures_kpa: Sequence[float], ratings: Sequence[float]
             ) -> tuple[tuple[float, ...], tuple[float, ...], tuple[int, ...]]:
    """Non-decreasing least-squares fit of ratings over pressure: (knots, fitted, weights).

    Points at the same pressure are averaged first (weight = their count).
    """
    by_p: dict[float, list[float]] = {}
    for p, r in zip(pressures_kpa, ratings):
        by_p.setdefault(float(p), []).append(float(r))
    knots = sorted(by_p)
    # blocks of [sum of ratings, weight, number of knots], merged while they decrease
    blocks: list[list[float]] = []
    for p in knots:
        blocks.append([sum(by_p[p]), len(by_p[p]), 1])
        while len(blocks) > 1 and blocks[-2][0] / blocks[-2][1] > blocks[-1][0] / blocks[-1][1]:
            s, w, k = blocks.pop()
            blocks[-1][0] += s
            blocks[-1][1] += w
            blocks[-1][2] += k
    fitted: list[float] = []
    for s, w, k in blocks:
        fitted.extend([s / w] * int(k))
    return tuple(knots), tuple(fitted), tuple(len(by_p[p]) for p in knots)


def invert(knots: Sequence[float], fitted: Sequence[float], weights: Sequence[int], target: float
           ) -> tuple[float, tuple[float, float]]:
    """The pressure where a non-decreasing fit reaches `target`, and its bracket.

    The caller has checked that fitted[0] <= target <= fitted[-1].
    """
    flat = [i for i, f in enumerate(fitted) if abs(f - target) <= _EQ]
    if flat:
        w = sum(weights[i] for i in flat)
        return sum(knots[i] * weights[i] for i in flat) / w, (knots[flat[0]], knots[flat[-1]])
    for i in range(len(fitted) - 1):
        lo, hi = fitted[i], fitted[i + 1]
        if lo < target < hi:
            frac = (target - lo) / (hi - lo)
            return knots[i] + frac * (knots[i + 1] - knots[i]), (knots[i], knots[i + 1])
    raise AssertionError("target outside the fitted range")  # pragma: no cover - checked by the caller


def worst_reversal(points: Sequence[tuple[float, float]]) -> tuple[float, tuple[float, float], tuple[float, float]]:
    """The largest fall of a rating below a rating at a lower pressure: (fall, (p, r) before, (p, r) after)."""
    best = (0.0, points[0], points[0])
    ordered = sorted(points)
    for i, (p_lo, r_lo) in enumerate(ordered):
        for p_hi, r_hi in ordered[i + 1:]:
            if p_hi > p_lo and r_lo - r_hi > best[0]:
                best = (r_lo - r_hi, (p_lo, r_lo), (p_hi, r_hi))
    return best


def fit_pressure_for_rating(pressures_kpa: Sequence[float], ratings: Sequence[float], *,
                            target_rating: float, max_reversal: float = MAX_REVERSAL) -> MonotoneFit:
    """Fit rating against pressure and return the pressure for `target_rating` (see module doc)."""
    if len(pressures_kpa) != len(ratings):
        raise ValueError("pressures and ratings differ in length")
    points = [(float(p), float(r)) for p, r in zip(pressures_kpa, ratings)]
    if any(not (math.isfinite(p) and math.isfinite(r)) for p, r in points):
        raise FitError("a pressure or rating is not a number")
    if len({p for p, _ in points}) < 2:
        if points and all(r >= target_rating for _, r in points):
            raise FitError(f"the lowest pressure ({min(p for p, _ in points):.1f} kPa) was already rated at or "
                           f"above {target_rating:g}; start lower")
        raise FitError(f"needs ratings at two or more different pressures, got {len(points)} point(s)")
    xs, ys = [p for p, _ in points], [r for _, r in points]
    knots, fitted, weights = isotonic(xs, ys)
    if fitted[-1] < target_rating - _EQ:
        top = max(points, key=lambda pr: (pr[1], -pr[0]))
        raise FitError(f"the ratings never reached {target_rating:g} (highest: {top[1]:g} at {top[0]:.1f} kPa, "
                       f"up to {knots[-1]:.1f} kPa)")
    if fitted[0] > target_rating + _EQ:
        raise FitError(f"the lowest pressure ({knots[0]:.1f} kPa) was already rated above {target_rating:g}; "
                       "start lower")
    fall, (p_lo, r_lo), (p_hi, r_hi) = worst_reversal(points)
    if fall > max_reversal:
        raise FitError(f"the ratings do not rise with pressure: {r_lo:g} at {p_lo:.1f} kPa but {r_hi:g} at "
                       f"{p_hi:.1f} kPa (a fall of {fall:g}; at most {max_reversal:g} is taken as noise)")
    tau = float(kendalltau(xs, ys).statistic)
    pressure, bracket = invert(knots, fitted, weights, target_rating)
    return MonotoneFit(pressure_kpa=pressure, target_rating=float(target_rating), knots_kpa=knots,
                       fitted=fitted, weights=weights, bracket_kpa=bracket,
                       kendall_tau=tau if math.isfinite(tau) else None, max_reversal=fall)


def pressure_for(fit: Mapping[str, Any], rating: float) -> float:
    """The pressure a stored fit (`MonotoneFit.as_dict()`, as in a calibration result file) gives
    for another rating, by the same inversion; FitError when the rating is outside the ratings
    the participant gave (never an extrapolation to a pressure they have not felt)."""
    try:
        knots = [float(k) for k in fit["knots_kpa"]]
        fitted = [float(r) for r in fit["fitted_ratings"]]
        weights = [int(w) for w in fit["weights"]]
    except (KeyError, TypeError, ValueError) as exc:
        raise FitError(f"the calibration's fit cannot be read ({exc})") from None
    if not knots or len(knots) != len(fitted) or len(knots) != len(weights):
        raise FitError("the calibration's fit is incomplete")
    if not fitted[0] - _EQ <= rating <= fitted[-1] + _EQ:
        raise FitError(f"rating {rating:g} is outside what the calibration covered (fitted ratings "
                       f"{fitted[0]:.0f} to {fitted[-1]:.0f}, {knots[0]:.1f} to {knots[-1]:.1f} kPa)")
    return invert(knots, fitted, weights, min(max(rating, fitted[0]), fitted[-1]))[0]
