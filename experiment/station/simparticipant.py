"""A simulated participant for dry runs: rates pain from the pressure it felt.

The rating model is a noisy logistic function of pressure (seeded), so headless dry
runs and calibration tests exercise the whole rating path with plausible answers.
A rating asked before the trial's stimulus (an expectation) is the model's rating of
the pressure to come with its own, wider noise, so a trial's expectation and pain
rating differ and a mix-up between them shows in the outputs.
It answers through the same key presses a button box would send.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from experiment.station.rating import RatingScale


@dataclass(frozen=True)
class RatingModel:
    """rating = 100 / (1 + exp(-(p - p50) / slope)) + noise, clipped to 0..100."""

    p50_kpa: float = 35.0
    slope_kpa: float = 6.0
    noise_sd: float = 5.0

    def expected(self, pressure_kpa: float) -> float:
        return 100.0 / (1.0 + math.exp(-(pressure_kpa - self.p50_kpa) / self.slope_kpa))

    def pressure_for(self, rating: float) -> float:
        """The inverse: the pressure whose expected rating is `rating` (0 < rating < 100)."""
        return self.p50_kpa - self.slope_kpa * math.log(100.0 / rating - 1.0)


class SimulatedParticipant:
    def __init__(self, *, model: RatingModel = RatingModel(), seed: int = 0,
                 response_delay_s: float = 0.8, key_interval_s: float = 0.15,
                 expectation_noise_sd: float = 15.0) -> None:
        self.model = model
        self._rng = random.Random(seed)
        # expectations draw from their own stream: adding expectation phases to a protocol
        # leaves the pain ratings of the same seed as they were
        self._expectation_rng = random.Random(f"{seed}:expectation")
        self.response_delay_s = response_delay_s
        self.key_interval_s = key_interval_s
        self.expectation_noise_sd = expectation_noise_sd

    def rate(self, pressure_kpa: float | None) -> float:
        if pressure_kpa is None:
            return 0.0
        value = self.model.expected(pressure_kpa) + self._rng.gauss(0.0, self.model.noise_sd)
        return min(100.0, max(0.0, value))

    def expect(self, pressure_kpa: float | None) -> float:
        """The rating expected before the stimulus: the model's value for the pressure to come,
        with expectation noise."""
        if pressure_kpa is None:
            return 0.0
        value = self.model.expected(pressure_kpa) + self._expectation_rng.gauss(0.0, self.expectation_noise_sd)
        return min(100.0, max(0.0, value))

    def key_presses(self, scale: RatingScale, pressure_kpa: float | None, t_onset: float, *,
                    expectation: bool = False) -> list[tuple[str, float]]:
        """The presses (key, time) that move the marker to the felt (or, before the stimulus,
        the expected) rating and confirm."""
        value = self.expect(pressure_kpa) if expectation else self.rate(pressure_kpa)   # 0..100
        wanted = scale.low + (scale.high - scale.low) * value / 100.0                  # on this scale
        steps = round((wanted - scale.start) / scale.step)
        key = scale.right_key if steps > 0 else scale.left_key
        t = t_onset + self.response_delay_s
        presses = []
        for _ in range(abs(steps)):
            presses.append((key, t))
            t += self.key_interval_s
        presses.append((scale.confirm_key, t))
        return presses
