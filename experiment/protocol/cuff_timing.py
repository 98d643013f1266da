"""How much slower than ideal a real cuff inflates and releases: the model pre-flight counts with.

Pure. A site's rig file may override the margins (`cuff_timing`, read by `CUFF_TIMING`);
the schedule's inflation checks (`experiment.protocol.schedule`) use it so that a
protocol an interlock would abort mid-run is refused before it starts.
"""

from __future__ import annotations

import math
from dataclasses import fields

from experiment.protocol.schema import Number, Record, record, spec


@record
class CuffTiming:
    """How much slower than ideal a real cuff inflates and releases (pre-flight checks only).

    A ramp to P kPa at r kPa/s counts as up to (P / r) x (1 + ramp_margin_fraction) +
    ramp_margin_s; the release after DEFLATE (down at the same rate, then the dump valve
    below 1 kPa) as up to (P / r) x (1 + ramp_margin_fraction) + release_margin_s. SET and
    DEFLATE go out on the flips that show their phases, so SET to DEFLATE may run
    onset_slack_s longer than planned. A rig file may override these (`cuff_timing`).

    Defaults: about twice what the simulators do (scripts/cuff_timing.py, targets 10-90 kPa).
    The CUFF/1 simulator (first-order lag 0.15 s, TARGET_REACHED within 0.5 kPa) reaches its
    target at most 0.06 s (5 kPa/s), 0.17 s (10), 0.32 s (30), 0.37 s (40) and 0.51 s
    (100 kPa/s) after target / rate, and falls below 1 kPa at most 0.40 s after
    pressure / rate. The CPAR simulator reaches its target at most 0.30 s late, 0.7 s late
    at 1 kPa/s over 60 kPa (its rate is truncated to the device's resolution), and dumps in
    0.05 s. A real cuff (more volume, a pump under load) is slower: 1 s, plus 10 % for a
    rate it does not quite keep.
    """

    ramp_margin_s: float = spec(Number("a ramp to P kPa at r kPa/s counts as up to P / r x (1 + "
                                       "ramp_margin_fraction) + this", unit="seconds", minimum=0.0, maximum=30.0),
                                default=1.0)
    ramp_margin_fraction: float = spec(Number("how much slower than its commanded rate the cuff may ramp (0.1: "
                                              "10 %)", minimum=0.0, maximum=1.0), default=0.1)
    release_margin_s: float = spec(Number("the release after DEFLATE counts as up to P / r x (1 + "
                                          "ramp_margin_fraction) + this", unit="seconds", minimum=0.0, maximum=30.0),
                                   default=1.0)
    onset_slack_s: float = spec(Number("SET to DEFLATE may run this much longer than planned (commands go out on "
                                       "frame flips)", unit="seconds", minimum=0.0, maximum=1.0), default=0.05)

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise ValueError(f"CuffTiming.{f.name} must be a number >= 0, got {v!r}")

    def ramp_ms(self, pressure_kpa: float, rate_kpa_s: float) -> int:
        """Longest time the cuff may take from 0 to `pressure_kpa` (whole ms, rounded up)."""
        return _ceil_ms(pressure_kpa / rate_kpa_s * (1 + self.ramp_margin_fraction) + self.ramp_margin_s)

    def release_ms(self, pressure_kpa: float, rate_kpa_s: float) -> int:
        """Longest time from DEFLATE at `pressure_kpa` to below 1 kPa (whole ms, rounded up)."""
        return _ceil_ms(pressure_kpa / rate_kpa_s * (1 + self.ramp_margin_fraction) + self.release_margin_s)

    @property
    def slack_ms(self) -> int:
        return _ceil_ms(self.onset_slack_s)


CUFF_TIMING = Record(CuffTiming, "how much slower than ideal this rig's cuff is; the pre-flight inflation checks "
                                 "count with it (docs/protocol-format.md, Pre-flight checks)")


def _ceil_ms(seconds: float) -> int:
    return math.ceil(round(seconds * 1000.0, 6))
