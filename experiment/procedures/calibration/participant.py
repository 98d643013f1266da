"""The simulated participant of calibration dry runs: it feels the cuff and answers with keys.

It answers through the paths a real participant's answers take (key presses with
times, read by the same loop, logged and interpreted by the same code; the cuff's stop
button through the cuff itself):
* It feels the measured pressure of every telemetry sample (`feel`).
* During a ramp it presses the confirm key, after `reaction_s`, when its felt rating
  first reaches `detection_rating` and again when it reaches the target. Its felt
  rating is the model's expected rating at the pressure shifted by one draw per ramp
  and level: a person's running impression of a rising pressure is smooth, not new
  noise every sample (iid noise per sample would make the first crossing a minimum
  over hundreds of draws and bias every press low). The shift's SD is the rating
  noise turned into pressure at the target (noise_sd / the curve's slope there), so
  at the target the ramp is as noisy as a plateau's rating; rating noise added near 0
  instead, where the curve is flat, would make detection presses at any pressure.
* After a plateau it rates the highest pressure it felt with rating-scale key presses
  (`SimulatedParticipant.key_presses`, as in a headless run).
* With a stop rule (`stop=button@KPA` or `stop=key@KPA`) it presses the cuff's stop
  button (the simulated device's `SIM BUTTON`, which the device reports as a button
  ESTOP like a real press) or the stop key once the pressure reaches KPA.

`feel` is called from the cuff's reader thread in real time, the other methods from the
calibration loop; a lock keeps them apart.
"""

from __future__ import annotations

import random
import threading
from dataclasses import asdict, dataclass

from experiment.errors import InputError
from experiment.station.rating import RatingScale
from experiment.station.simparticipant import RatingModel, SimulatedParticipant

SPEC_GRAMMAR = "p50=KPA,slope=KPA,noise=SD,reaction=S,detection=RATING,stop=button@KPA|key@KPA"


@dataclass(frozen=True)
class SimSpec:
    """The simulated participant: its rating model and how it behaves."""

    model: RatingModel = RatingModel()
    detection_rating: float = 5.0      # felt rating at which it calls the pressure painful
    reaction_s: float = 0.4            # from a felt crossing to its key press
    stop_with: str | None = None       # "button" | "key" | None
    stop_at_kpa: float | None = None

    def as_dict(self) -> dict[str, object]:
        return {**asdict(self.model), "detection_rating": self.detection_rating, "reaction_s": self.reaction_s,
                "stop_with": self.stop_with, "stop_at_kpa": self.stop_at_kpa}


def parse_sim_spec(text: str | None) -> SimSpec:
    """`p50=30,slope=5,noise=5,stop=button@20` -> SimSpec (every key optional). InputError if bad."""
    if text is None or not text.strip():
        return SimSpec()
    values: dict[str, str] = {}
    for part in text.split(","):
        key, sep, value = part.strip().partition("=")
        if not sep or not value.strip():
            raise InputError(f"--sim-participant {text!r}: {part.strip()!r} is not KEY=VALUE; use {SPEC_GRAMMAR}")
        if key in values:
            raise InputError(f"--sim-participant {text!r}: {key!r} is given twice")
        values[key.strip()] = value.strip()
    unknown = set(values) - {"p50", "slope", "noise", "reaction", "detection", "stop"}
    if unknown:
        raise InputError(f"--sim-participant {text!r}: unknown key(s) {', '.join(sorted(unknown))}; "
                         f"use {SPEC_GRAMMAR}")

    def number(key: str, default: float, low: float, high: float) -> float:
        if key not in values:
            return default
        try:
            x = float(values[key])
        except ValueError:
            raise InputError(f"--sim-participant: {key}={values[key]!r} is not a number") from None
        if not low <= x <= high:
            raise InputError(f"--sim-participant: {key} must be {low:g}-{high:g}, got {x:g}")
        return x

    base = RatingModel()
    model = RatingModel(p50_kpa=number("p50", base.p50_kpa, 1.0, 200.0),
                        slope_kpa=number("slope", base.slope_kpa, 0.5, 50.0),
                        noise_sd=number("noise", base.noise_sd, 0.0, 50.0))
    stop_with = stop_at = None
    if "stop" in values:
        how, at, kpa = values["stop"].partition("@")
        if how not in ("button", "key") or not at:
            raise InputError(f"--sim-participant: stop={values['stop']!r}; use stop=button@KPA or stop=key@KPA")
        stop_with = how
        values["stop_kpa"] = kpa
        stop_at = number("stop_kpa", 0.0, 0.5, 200.0)
    return SimSpec(model=model, detection_rating=number("detection", 5.0, 0.5, 99.0),
                   reaction_s=number("reaction", 0.4, 0.0, 5.0), stop_with=stop_with, stop_at_kpa=stop_at)


@dataclass
class _RampLevels:
    detection_shift_kpa: float
    target_shift_kpa: float
    target_rating: float
    detected: bool = False
    targeted: bool = False


class CalibrationParticipant:
    """See the module docstring. Keys come out as (key, time) through `due_keys`."""

    def __init__(self, spec: SimSpec, *, seed: int, confirm_key: str, stop_key: str) -> None:
        self.spec = spec
        self._rater = SimulatedParticipant(model=spec.model, seed=seed)
        self._rng = random.Random(f"{seed}:ramp")
        self._confirm_key = confirm_key
        self._stop_key = stop_key
        self._lock = threading.Lock()
        self._keys: list[tuple[str, float]] = []
        self._button_t: float | None = None
        self._stopped = False
        self._ramp: _RampLevels | None = None
        self._last_press_t = float("-inf")
        self.peak_kpa = 0.0

    def begin_ramp(self, target_rating: float) -> None:
        m = self.spec.model
        slope_at_target = target_rating * (100.0 - target_rating) / (100.0 * m.slope_kpa)   # rating per kPa
        sd_kpa = m.noise_sd / slope_at_target
        with self._lock:
            self.peak_kpa = 0.0
            self._ramp = _RampLevels(self._rng.gauss(0.0, sd_kpa), self._rng.gauss(0.0, sd_kpa), target_rating)

    def begin_plateau(self) -> None:
        with self._lock:
            self.peak_kpa = 0.0
            self._ramp = None

    def end_stimulus(self) -> None:
        with self._lock:
            self._ramp = None

    def feel(self, t: float, pressure_kpa: float) -> None:
        """One pressure sample (any thread)."""
        with self._lock:
            self.peak_kpa = max(self.peak_kpa, pressure_kpa)
            spec = self.spec
            if spec.stop_at_kpa is not None and not self._stopped and pressure_kpa >= spec.stop_at_kpa:
                self._stopped = True
                t_stop = t + spec.reaction_s
                if spec.stop_with == "button":
                    self._button_t = t_stop
                else:
                    self._keys.append((self._stop_key, t_stop))
            ramp = self._ramp
            if ramp is None:
                return
            felt = spec.model.expected
            if not ramp.detected and felt(pressure_kpa + ramp.detection_shift_kpa) >= spec.detection_rating:
                ramp.detected = True
                self._press(t + spec.reaction_s)
            if (ramp.detected and not ramp.targeted
                    and felt(pressure_kpa + ramp.target_shift_kpa) >= ramp.target_rating):
                ramp.targeted = True
                self._press(t + spec.reaction_s)

    def _press(self, t: float) -> None:
        t = max(t, self._last_press_t + 0.25)   # two presses are never simultaneous
        self._last_press_t = t
        self._keys.append((self._confirm_key, t))

    def answer_rating(self, scale: RatingScale, t_onset: float) -> None:
        """Rate the highest pressure felt since the plateau began, as key presses."""
        with self._lock:
            presses = self._rater.key_presses(scale, self.peak_kpa, t_onset)
            self._keys.extend(presses)

    def due_keys(self, now: float) -> list[tuple[str, float]]:
        with self._lock:
            self._keys.sort(key=lambda k: k[1])
            due = [k for k in self._keys if k[1] <= now]
            del self._keys[:len(due)]
            return due

    def button_due(self, now: float) -> bool:
        """True once, when the stop button press is due."""
        with self._lock:
            if self._button_t is not None and self._button_t <= now:
                self._button_t = None
                return True
            return False
