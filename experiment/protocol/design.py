"""Design efficiency of a timeline: can the GLM tell the protocol's regressors apart?

Public API:
    design_efficiency(timeline, *, regressors=(), contrasts={}) -> Efficiency
    Efficiency.report() -> str; Efficiency.score (what `plan --search` maximises)
    R_LIMIT = 0.7, VIF_LIMIT = 5.0

The events of each `bids_trial_type` become a boxcar convolved with the Glover HRF by
nilearn's `make_first_level_design_matrix` (cosine drift, 128 s high-pass, frame times
0, TR, ..., (n_volumes - 1) x TR); nilearn is the established implementation. Reported
for every task regressor of the protocol: the Pearson correlations between them and each
one's variance inflation factor VIF = 1 / (1 - R^2), where R^2 comes from regressing it on
every other column of the design (other task regressors, drifts, constant); for each
contrast the protocol declares (`design: contrasts:`), its efficiency 1 / (c' (X'X)^-1 c)
over the whole design X.

Warning thresholds (documented in docs/protocol-format.md): |r| > 0.7 between two task
regressors, or a VIF > 5 for one of them. A common rule of thumb; above it the estimates
are hard to separate and the jitter should be wider.
"""

from __future__ import annotations

import warnings
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Mapping, Sequence

import numpy as np

from experiment.protocol.schedule import Timeline

if TYPE_CHECKING:
    import pandas as pd  # untyped library (setup.cfg): its values are Any, typed at this module's edge

R_LIMIT = 0.7
VIF_LIMIT = 5.0
HIGH_PASS_HZ = 1 / 128


@dataclass(frozen=True)
class Efficiency:
    regressors: tuple[str, ...]                 # every task regressor in the design
    correlations: dict[tuple[str, str], float]  # pairs of task regressors (a < b in design order)
    vifs: dict[str, float]
    key: tuple[str, ...]                        # the regressors warned about (all of the protocol's)
    warnings: tuple[str, ...]
    contrasts: dict[str, float] = field(default_factory=dict)   # declared contrast -> efficiency

    @property
    def score(self) -> float:
        """Higher is better: the worst declared contrast's efficiency, or else 1 / the largest VIF."""
        if self.contrasts:
            return min(self.contrasts.values())
        worst = max((self.vifs[r] for r in self.key if r in self.vifs), default=1.0)
        return 0.0 if not math.isfinite(worst) else 1.0 / worst

    def report(self) -> str:
        lines = ["design efficiency (Glover HRF, cosine drift 1/128 Hz):"]
        lines.append("  VIF: " + ", ".join(f"{r} {self.vifs[r]:.2f}" for r in self.regressors))
        for (a, b), r in self.correlations.items():
            if a in self.key and b in self.key:
                lines.append(f"  r({a}, {b}) = {r:+.2f}")
        for name, e in self.contrasts.items():
            lines.append(f"  contrast {name}: efficiency {e:.3g}")
        if self.warnings:
            lines += [f"  WARNING: {w}" for w in self.warnings]
        else:
            lines.append(f"  ok: every |r| <= {R_LIMIT:g} and VIF <= {VIF_LIMIT:g} for {', '.join(self.key)}")
        return "\n".join(lines)


def _design(timeline: Timeline) -> pd.DataFrame:
    import pandas as pd
    from nilearn.glm.first_level import make_first_level_design_matrix  # local: nilearn is slow to import

    rows = [(e.onset_s, e.duration_s, e.bids_trial_type) for e in timeline.events if e.bids_trial_type]
    events = pd.DataFrame(rows, columns=["onset", "duration", "trial_type"])
    frame_times = np.arange(timeline.n_volumes) * timeline.tr_s
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # nilearn warns about things that do not apply here
        return make_first_level_design_matrix(frame_times, events, hrf_model="glover", drift_model="cosine",
                                              high_pass=HIGH_PASS_HZ)


def _vif(x: np.ndarray, j: int) -> float:
    others = np.delete(x, j, axis=1)
    y = x[:, j]
    beta, *_ = np.linalg.lstsq(others, y, rcond=None)
    resid = y - others @ beta
    total = np.sum((y - y.mean()) ** 2)
    if total == 0:
        return float("inf")
    r2 = 1 - np.sum(resid ** 2) / total
    return float("inf") if r2 >= 1 else float(1 / (1 - r2))


def _contrast_efficiency(x: np.ndarray, cols: list[str], weights: Mapping[str, float]) -> float:
    c = np.zeros(len(cols))
    for name, w in weights.items():
        c[cols.index(name)] = w
    value = float(c @ np.linalg.pinv(x.T @ x) @ c)
    return float("inf") if value <= 0 else 1.0 / value


def design_efficiency(timeline: Timeline, *, regressors: Sequence[str] = (),
                      contrasts: Mapping[str, Mapping[str, float]] | None = None) -> Efficiency:
    """Correlations and VIFs of the HRF-convolved task regressors of one timeline, and the
    efficiency of the declared contrasts. `regressors`: the protocol's modelled trial types
    (one missing from this timeline is named); by default those the timeline has."""
    dm = _design(timeline)
    task = [e for e in dict.fromkeys(ev.bids_trial_type for ev in timeline.events) if e]
    x = dm.to_numpy()
    cols = [str(c) for c in dm.columns]
    vifs = {name: _vif(x, cols.index(name)) for name in task}
    corr = np.corrcoef(x[:, [cols.index(n) for n in task]], rowvar=False) if len(task) > 1 else np.ones((1, 1))
    correlations = {(a, b): float(corr[i, j]) for i, a in enumerate(task) for j, b in enumerate(task) if i < j}
    key = tuple(dict.fromkeys([*(r for r in regressors if r in task), *task]))
    notes = []
    for (a, b), r in correlations.items():
        if abs(r) > R_LIMIT:
            notes.append(f"{a} and {b} correlate (r = {r:+.2f}, limit |r| <= {R_LIMIT:g}): widen the jitter "
                         f"of the phases between them")
    for name in task:
        if vifs[name] > VIF_LIMIT:
            notes.append(f"{name} has VIF {vifs[name]:.1f} (limit {VIF_LIMIT:g}): its estimate is confounded "
                         f"with the other regressors; widen the jitter")
    missing = [r for r in regressors if r not in task]
    if missing:
        notes.append(f"no events of {', '.join(missing)} in this timeline, so it cannot be estimated")
    efficiencies = {}
    for name, weights in (contrasts or {}).items():
        absent = [r for r in weights if r not in cols]
        if absent:
            notes.append(f"contrast {name}: no events of {', '.join(absent)} in this timeline")
            continue
        efficiencies[name] = _contrast_efficiency(x, cols, weights)
    return Efficiency(regressors=tuple(task), correlations=correlations, vifs=vifs, key=key,
                      warnings=tuple(notes), contrasts=efficiencies)
