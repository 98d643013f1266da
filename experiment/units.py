"""Pressure units. Inside the program pressure is always kPa; mmHg only at the edges."""

from __future__ import annotations

MMHG_PER_KPA = 7.50062


def mmhg_to_kpa(pressure_mmhg: float) -> float:
    """Convert mmHg to kPa."""
    return pressure_mmhg / MMHG_PER_KPA


def kpa_to_mmhg(pressure_kpa: float) -> float:
    """Convert kPa to mmHg."""
    return pressure_kpa * MMHG_PER_KPA


def to_kpa(value: float, unit: str) -> float:
    """Convert a pressure given with an explicit unit ('kPa' or 'mmHg') to kPa."""
    u = unit.strip().lower()
    if u == "kpa":
        return float(value)
    if u == "mmhg":
        return mmhg_to_kpa(float(value))
    raise ValueError(f"unknown pressure unit {unit!r}; allowed: 'kPa', 'mmHg'")
