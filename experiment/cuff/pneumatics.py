"""A simple pneumatic model of a regulated pressure cuff (pure: time moves by `advance`).

What it models, and why each part is there:
* a set point that slews toward the target at the commanded rate (the firmware's ramp);
* first-order settling of the cuff pressure toward the set point (time constant
  `tau_s`), with inflow capped by the pump (`pump_kpa_s`), so the pressure never
  overshoots the target;
* an optional leak (kPa/s) that the regulator fights: a small leak leaves a steady
  error of `leak * tau_s`, a large one (cuff off) keeps the target out of reach, which is
  what COMPLIANCE detection must catch;
* a dump valve (vent) that empties the cuff exponentially (`vent_tau_s`);
* sensor noise from a seeded RNG, so runs are reproducible.
"""

from __future__ import annotations

import math
import random


class CuffPneumatics:
    """Cuff pressure in kPa as a function of commands and elapsed time."""

    def __init__(self, *, seed: int = 0, tau_s: float = 0.15, vent_tau_s: float = 0.05,
                 pump_kpa_s: float = 150.0, noise_kpa: float = 0.05, leak_kpa_s: float = 0.0) -> None:
        self._rng = random.Random(seed)
        self.tau_s = tau_s
        self.vent_tau_s = vent_tau_s
        self.pump_kpa_s = pump_kpa_s
        self.noise_kpa = noise_kpa
        self.leak_kpa_s = leak_kpa_s
        self.pressure_kpa = 0.0      # true pressure in the cuff
        self.setpoint_kpa = 0.0      # the slewing regulator set point
        self.target_kpa = 0.0
        self.rate_kpa_s = 1.0
        self.venting = True          # dump valve open (a vented, idle cuff)

    def regulate(self, target_kpa: float, rate_kpa_s: float) -> None:
        """Close the dump valve and ramp the set point to `target_kpa` at `rate_kpa_s`."""
        if self.venting:
            self.setpoint_kpa = self.pressure_kpa
        self.venting = False
        self.target_kpa = max(0.0, target_kpa)
        self.rate_kpa_s = rate_kpa_s

    def vent(self) -> None:
        """Open the dump valve: the cuff empties at once (exponentially, `vent_tau_s`)."""
        self.venting = True
        self.target_kpa = 0.0
        self.setpoint_kpa = 0.0

    def surge(self, pressure_kpa: float) -> None:
        """Fault injection: the cuff pressure jumps (a stuck valve, a kinked hose)."""
        self.pressure_kpa = max(self.pressure_kpa, pressure_kpa)

    def advance(self, dt_s: float) -> None:
        """Move the model forward by `dt_s` (callers keep steps at a few ms)."""
        if dt_s <= 0:
            return
        if self.venting:
            self.pressure_kpa *= math.exp(-dt_s / self.vent_tau_s)
        else:
            step = self.rate_kpa_s * dt_s
            gap = self.target_kpa - self.setpoint_kpa
            self.setpoint_kpa = self.target_kpa if abs(gap) <= step else self.setpoint_kpa + math.copysign(step, gap)
            flow_kpa_s = min((self.setpoint_kpa - self.pressure_kpa) / self.tau_s, self.pump_kpa_s)
            new = self.pressure_kpa + flow_kpa_s * dt_s
            # first order never crosses its set point
            if (self.pressure_kpa - self.setpoint_kpa) * (new - self.setpoint_kpa) < 0:
                new = self.setpoint_kpa
            self.pressure_kpa = new
        self.pressure_kpa = max(0.0, self.pressure_kpa - self.leak_kpa_s * dt_s)

    def read_kpa(self) -> float:
        """The pressure sensor: true pressure plus Gaussian noise."""
        if self.noise_kpa <= 0:
            return self.pressure_kpa
        return self.pressure_kpa + self._rng.gauss(0.0, self.noise_kpa)
