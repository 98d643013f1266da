"""The study page's plots: matplotlib (Agg, no pyplot state), embedded as base64 PNG.

Readable in print: every axis labelled with its unit; groups differ by marker shape and
fill as well as by colour (Okabe-Ito), so nothing is told by colour alone; every point is
one participant, run or stimulus, with the group's median drawn as a bar and its count
under its name.
"""

from __future__ import annotations

import base64
import io
import statistics
from typing import TYPE_CHECKING, Sequence

from experiment.study.aggregate import newest_calibrations, participant_ratings
from experiment.study.model import Study

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

#: per group, in order: marker, face colour ("none": open), edge colour
GROUP_STYLES = (("o", "#0072b2", "#0072b2"), ("s", "none", "#d55e00"), ("^", "#009e73", "#009e73"),
                ("D", "none", "#cc79a7"), ("v", "#e69f00", "#e69f00"), ("P", "none", "#56b4e9"))
DPI = 90


def _figure(width_in: float = 9.5, height_in: float = 3.2) -> "Figure":
    from matplotlib.figure import Figure

    return Figure(figsize=(width_in, height_in), dpi=DPI, layout="constrained")


def png_data_uri(fig: "Figure") -> str:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _offsets(n: int, width: float = 0.5) -> list[float]:
    """Spread n points across a group's slot, deterministically (no random jitter)."""
    if n <= 1:
        return [0.0] * n
    step = min(width / (n - 1), 0.08)
    return [(k - (n - 1) / 2) * step for k in range(n)]


def _strip(ax: "Axes", groups: Sequence[str], values: dict[str, list[float]], *, unit_label: str) -> None:
    """One column of points per group, its median as a black bar, n under the group's name."""
    for k, g in enumerate(groups):
        ys = sorted(values.get(g, []))
        marker, face, edge = GROUP_STYLES[k % len(GROUP_STYLES)]
        if ys:
            ax.scatter([k + o for o in _offsets(len(ys))], ys, marker=marker, facecolors=face, edgecolors=edge,
                       s=30, linewidths=1.2, zorder=3)
            med = statistics.median(ys)
            ax.plot([k - 0.3, k + 0.3], [med, med], color="black", lw=2, zorder=4)
    ax.set_xticks(range(len(groups)), [f"{g}\n(n={len(values.get(g, []))})" for g in groups])
    ax.set_xlim(-0.6, len(groups) - 0.4)
    ax.set_ylabel(unit_label)
    ax.grid(axis="y", color="#dddddd", lw=0.6)


def _empty(ax: "Axes", what: str) -> None:
    ax.text(0.5, 0.5, what, transform=ax.transAxes, ha="center", va="center")
    ax.set_xticks([])
    ax.set_yticks([])


def calibration_figure(study: Study) -> str:
    """Newest calibrated pressure per participant, and the pressure each run gave (marker: its source)."""
    fig = _figure()
    left, right = fig.subplots(1, 2)
    groups = study.groups
    newest = newest_calibrations(study)
    by_group: dict[str, list[float]] = {}
    for p, v in newest.items():
        by_group.setdefault(study.group_of(p), []).append(v)
    if newest:
        _strip(left, groups, by_group, unit_label="calibrated pressure (kPa)")
        left.set_title("Newest calibration per participant (bar: median)", fontsize=9)
    else:
        _empty(left, "no calibration results")
    runs = [r for r in study.runs if r.pressure_levels and r.counted]
    if runs:
        sources = (("calibration", "o", "from the calibration"), ("protocol", "s", "fixed by the protocol"),
                   ("override", "x", "operator override"))
        for source, marker, label in sources:
            pts = [(groups.index(study.group_of(r.participant)), kpa) for r in runs
                   if (r.pressure_source or "protocol") == source for _, kpa in r.pressure_levels]
            if pts:
                offs = _offsets(len(pts))
                xs, ys = [x + o for (x, _), o in zip(pts, offs)], [y for _, y in pts]
                if marker == "x":     # an unfilled marker: its colour is its face colour
                    right.scatter(xs, ys, marker=marker, color="black", s=36, linewidths=1.2, label=label, zorder=3)
                else:
                    right.scatter(xs, ys, marker=marker, facecolors="none", edgecolors="black", s=36,
                                  linewidths=1.2, label=label, zorder=3)
        right.set_xticks(range(len(groups)), list(groups))
        right.set_xlim(-0.6, len(groups) - 0.4)
        right.set_ylabel("pressure given in the run (kPa)")
        right.set_title("Pressure of each run (marker: where it came from)", fontsize=9)
        right.legend(fontsize=7, loc="best")
        right.grid(axis="y", color="#dddddd", lw=0.6)
    else:
        _empty(right, "no runs with a pressure")
    return png_data_uri(fig)


def ratings_figure(study: Study) -> str:
    """Each participant's mean rating per trial type and rating phase, by group."""
    per = participant_ratings(study)
    keys = sorted({(tt, ph) for (_, tt, ph) in per})
    if not keys:
        fig = _figure(height_in=2.0)
        _empty(fig.add_subplot(), "no ratings in the runs that count")
        return png_data_uri(fig)
    fig = _figure(width_in=min(9.5, 3.4 * len(keys) + 1.0))
    axes = fig.subplots(1, len(keys), sharey=True, squeeze=False)[0]
    for ax, (tt, ph) in zip(axes, keys):
        values: dict[str, list[float]] = {}
        for (p, t, f), xs in per.items():
            if t == tt and f == ph and xs:
                values.setdefault(study.group_of(p), []).append(sum(xs) / len(xs))
        _strip(ax, study.groups, values, unit_label="mean rating (scale units)")
        ax.set_title(f"{tt} trials, '{ph}' rating", fontsize=9)
    for ax in axes[1:]:
        ax.set_ylabel("")
    return png_data_uri(fig)


def inflation_figure(study: Study) -> str:
    """Inflation time as a percentage of the protocol's limits: per stimulus, and per run."""
    fig = _figure()
    left, right = fig.subplots(1, 2, sharey=True)
    groups = study.groups
    per_stimulus: dict[str, list[float]] = {}
    per_run: dict[str, list[float]] = {}
    for r in study.runs:
        if not r.counted:
            continue
        g = study.group_of(r.participant)
        times = [s.inflated_s for s in r.stimuli if s.inflated_s is not None]
        if r.limits.stimulus_s:
            per_stimulus.setdefault(g, []).extend(100 * t / r.limits.stimulus_s for t in times)
        if r.limits.run_s and times:
            per_run.setdefault(g, []).append(100 * sum(times) / r.limits.run_s)
    for ax, values, title, what in ((left, per_stimulus, "Each stimulus against the per-stimulus limit", "stimuli"),
                                    (right, per_run, "Each run's total against the per-run limit", "runs")):
        if any(values.values()):
            _strip(ax, groups, values, unit_label="inflation time (% of the protocol's limit)")
            ax.axhline(100, color="black", ls="--", lw=1)
            ax.text(len(groups) - 0.45, 100, "limit", va="bottom", ha="right", fontsize=8)
            ax.set_ylim(0, max(110.0, max(max(v) for v in values.values() if v) * 1.1))
            ax.set_title(title, fontsize=9)
        else:
            _empty(ax, f"no {what} with a known limit")
    right.set_ylabel("")
    return png_data_uri(fig)


def timing_figure(study: Study) -> str:
    """Each run's largest onset error against one frame, by group."""
    fig = _figure(height_in=2.8)
    ax = fig.add_subplot()
    values: dict[str, list[float]] = {}
    frames = set()
    for r in study.runs:
        if r.counted and r.timing is not None and r.timing.onset_error_max_ms is not None:
            values.setdefault(study.group_of(r.participant), []).append(r.timing.onset_error_max_ms)
            if r.timing.frame_ms:
                frames.add(round(r.timing.frame_ms, 3))
    if not values:
        _empty(ax, "no onsets in the runs that count")
        return png_data_uri(fig)
    _strip(ax, study.groups, values, unit_label="largest |onset error| in the run (ms)")
    for f in sorted(frames):
        ax.axhline(f, color="black", ls="--", lw=1)
        ax.text(len(study.groups) - 0.45, f, f"1 frame ({f:.1f} ms)", va="bottom", ha="right", fontsize=8)
    ax.set_ylim(0, max([*frames, *(max(v) for v in values.values())]) * 1.2)
    ax.set_title("Timing: largest cue onset error per run (dashed: one frame, the flag's limit)", fontsize=9)
    return png_data_uri(fig)
