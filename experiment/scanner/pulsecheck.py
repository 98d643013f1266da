"""Live and end-of-run checks of scanner pulses (pure: times in, warnings and figures out).

`PulseMonitor` is fed the clock time of every pulse from t0 on. Each interval is
classified against the nominal TR:

* regular   0.5 TR <= interval <= 1.5 TR: one volume; enters the TR mean/SD;
* gap       interval > 1.5 TR: round(interval / TR) - 1 pulses were missed;
* short     interval < 0.5 TR: an extra pulse (same volume); several in a row mean
            the trigger box sends one pulse per slice.

Regular and gap intervals are measured from the last pulse that started a volume, so
an extra pulse does not distort the next interval.

Each pulse gets a volume index (the previous one plus round(interval / TR), so a
missed pulse does not shift the later ones) and the straight line
`t = intercept + slope * volume` is fitted with running co-moments over all pulses
but the short ones. `slope / TR - 1` is the drift between the stimulus computer's
clock and the scanner's, in parts per million. The largest residual needs the points
again, so times and volume indices are kept in arrays allocated once (`capacity`);
memory does not grow per pulse and a 2-hour session at TR 0.4 s (18,000 pulses) is
O(1) per pulse.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
import numpy as np


@dataclass(frozen=True)
class PulseWarning:
    """Something the operator must see (console) and the log must keep."""

    code: str      # missed_pulse, extra_pulse, per_slice, scanner_stopped
    message: str
    t: float       # clock time the condition was detected


@dataclass(frozen=True)
class PulseSummary:
    """End-of-run quality figures (docs/scanner.md explains each)."""

    n_pulses: int              # pulses fed (from t0 on)
    n_expected: int | None     # stored volumes the protocol expects
    n_volumes_seen: int        # volumes spanned by the pulses: last volume index + 1
    n_missed: int              # pulses inferred missing from gaps > 1.5 TR
    n_extra: int               # pulses closer than 0.5 TR to the previous one
    n_short_of_expected: int | None  # n_expected - n_volumes_seen (negative: more than expected)
    tr_nominal_s: float
    tr_mean_s: float | None    # mean of the regular intervals
    tr_sd_s: float | None      # their standard deviation
    n_regular_intervals: int
    fit_slope_s: float | None  # TR as measured on the host clock (line fit)
    drift_ppm: float | None    # (fit_slope_s / tr_nominal_s - 1) * 1e6
    max_residual_s: float | None  # largest |t - fit| over the points kept
    n_residual_points: int     # points the residual was computed over (all unless capacity was exceeded)
    per_slice: bool            # pulses arrived at slice rate
    stopped: bool              # a scanner_stopped warning was given

    def as_dict(self) -> dict[str, float | int | bool | None]:
        return asdict(self)


class PulseMonitor:
    """Checks each pulse as it arrives and summarises the run.

    Parameters: `tr_s` nominal TR; `n_expected` stored volumes expected (None: unknown);
    `stop_after_trs` silence (in TRs) that means the scanner stopped; `slice_repeats`
    consecutive short intervals that mean per-slice mode; `capacity` points kept for
    the residual (default: twice the expected count plus a margin).
    """

    GAP_FACTOR = 1.5
    SHORT_FACTOR = 0.5

    def __init__(self, tr_s: float, *, n_expected: int | None = None, stop_after_trs: float = 3.0,
                 slice_repeats: int = 3, capacity: int | None = None) -> None:
        if not (tr_s > 0 and math.isfinite(tr_s)):
            raise ValueError(f"tr_s must be a positive number of seconds, got {tr_s!r}")
        if stop_after_trs <= self.GAP_FACTOR:
            raise ValueError(f"stop_after_trs must exceed {self.GAP_FACTOR}, got {stop_after_trs}")
        self.tr_s = float(tr_s)
        self.n_expected = n_expected
        self.stop_after_trs = float(stop_after_trs)
        self.slice_repeats = int(slice_repeats)
        if capacity is None:
            capacity = 2 * (n_expected or 0) + 1024
        self._t_kept = np.empty(capacity, dtype=np.float64)
        self._k_kept = np.empty(capacity, dtype=np.int64)
        self._n_kept = 0
        self.n_pulses = 0
        self.n_missed = 0
        self.n_extra = 0
        self._t_first: float | None = None
        self._t_last: float | None = None     # last pulse of any kind
        self._t_volume: float | None = None   # last pulse that started a volume
        self._k_last = -1
        self._short_run = 0
        self.per_slice = False
        self.stopped = False
        self._silence_reported = False
        # Welford over regular intervals
        self._n_int = 0
        self._int_mean = 0.0
        self._int_m2 = 0.0
        # running co-moments of (volume, t - t_first) for the line fit
        self._n_fit = 0
        self._k_mean = 0.0
        self._t_mean = 0.0
        self._c_kt = 0.0
        self._m2_k = 0.0

    def feed(self, t: float) -> list[PulseWarning]:
        """Take one pulse time; returns the warnings it raises (often none)."""
        warnings: list[PulseWarning] = []
        self.n_pulses += 1
        self._silence_reported = False
        if self._t_first is None:
            self._t_first = self._t_last = self._t_volume = t
            self._k_last = 0
            self._add_point(0, t)
            return warnings
        assert self._t_last is not None and self._t_volume is not None
        interval = t - self._t_last
        self._t_last = t
        if interval < self.SHORT_FACTOR * self.tr_s:
            self.n_extra += 1
            self._short_run += 1
            if self._short_run >= self.slice_repeats and not self.per_slice:
                self.per_slice = True
                warnings.append(PulseWarning(
                    "per_slice", f"pulses arrive every {interval * 1000:.1f} ms, far faster than the TR of "
                    f"{self.tr_s:.3f} s: the trigger box is sending one pulse per slice; set it to one pulse "
                    f"per volume", t))
            elif not self.per_slice:
                warnings.append(PulseWarning(
                    "extra_pulse", f"pulse {interval * 1000:.1f} ms after the previous one (TR {self.tr_s:.3f} s): "
                    f"an extra pulse", t))
            return warnings
        self._short_run = 0
        interval = t - self._t_volume  # from the last volume's pulse, not from an extra one
        self._t_volume = t
        ratio = interval / self.tr_s
        steps = max(1, round(ratio))
        if ratio > self.GAP_FACTOR:
            missed = steps - 1
            self.n_missed += missed
            warnings.append(PulseWarning(
                "missed_pulse", f"{interval:.3f} s since the previous pulse ({ratio:.2f} TR): "
                f"{missed} pulse(s) missed before volume {self._k_last + steps}", t))
        else:
            self._n_int += 1
            d = interval - self._int_mean
            self._int_mean += d / self._n_int
            self._int_m2 += d * (interval - self._int_mean)
        self._k_last += steps
        self._add_point(self._k_last, t)
        return warnings

    def _add_point(self, k: int, t: float) -> None:
        assert self._t_first is not None
        y = t - self._t_first  # centred: PTB times are ~1e9 s, squares would lose digits
        self._n_fit += 1
        dk = k - self._k_mean
        self._k_mean += dk / self._n_fit
        self._t_mean += (y - self._t_mean) / self._n_fit
        self._c_kt += dk * (y - self._t_mean)
        self._m2_k += dk * (k - self._k_mean)
        if self._n_kept < len(self._t_kept):
            self._t_kept[self._n_kept] = y
            self._k_kept[self._n_kept] = k
            self._n_kept += 1

    def check_silence(self, now: float) -> PulseWarning | None:
        """Warn once per silence when no pulse came for `stop_after_trs` TRs.

        Silence after all expected volumes is the scanner finishing, not a fault.
        """
        if self._t_last is None or self._silence_reported:
            return None
        if self.n_expected is not None and self._k_last + 1 >= self.n_expected:
            return None
        silent_s = now - self._t_last
        if silent_s <= self.stop_after_trs * self.tr_s:
            return None
        self._silence_reported = True
        self.stopped = True
        seen = self._k_last + 1
        of = f" of {self.n_expected}" if self.n_expected is not None else ""
        return PulseWarning("scanner_stopped", f"no pulse for {silent_s:.1f} s ({silent_s / self.tr_s:.1f} TR) "
                            f"after {seen}{of} volumes: the scanner has stopped", now)

    def _fit(self) -> tuple[float | None, float | None]:
        if self._n_fit < 2 or self._m2_k <= 0:
            return None, None
        slope = self._c_kt / self._m2_k
        return slope, self._t_mean - slope * self._k_mean

    def summary(self) -> PulseSummary:
        slope, intercept = self._fit()
        max_res = None
        if slope is not None and intercept is not None and self._n_kept:
            n = self._n_kept
            res = self._t_kept[:n] - (intercept + slope * self._k_kept[:n])
            max_res = float(np.max(np.abs(res)))
        seen = self._k_last + 1 if self._t_first is not None else 0
        sd = math.sqrt(self._int_m2 / (self._n_int - 1)) if self._n_int > 1 else None
        return PulseSummary(
            n_pulses=self.n_pulses, n_expected=self.n_expected, n_volumes_seen=seen,
            n_missed=self.n_missed, n_extra=self.n_extra,
            n_short_of_expected=None if self.n_expected is None else self.n_expected - seen,
            tr_nominal_s=self.tr_s, tr_mean_s=self._int_mean if self._n_int else None, tr_sd_s=sd,
            n_regular_intervals=self._n_int, fit_slope_s=slope,
            drift_ppm=None if slope is None else (slope / self.tr_s - 1.0) * 1e6,
            max_residual_s=max_res, n_residual_points=self._n_kept,
            per_slice=self.per_slice, stopped=self.stopped)
