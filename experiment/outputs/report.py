"""`cuedpain report RUN_DIR`: one self-contained HTML page to check a run in a minute.

Figures are rendered with matplotlib's Agg backend and embedded as base64 PNG, so the
page is a single file with no external references: the planned vs actual timeline,
the onset-error histogram, pulse intervals with missed pulses marked, the cuff pressure
against its target with the modelled phases shaded, dropped frames, then warnings,
safety events and operator actions, and the per-trial summary.
"""

from __future__ import annotations

import argparse
import base64
import html
import io
import sys
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from experiment.outputs.atomic import write_text
from experiment.outputs.derive import RunData, TimingQuality, derive_run, timing_quality
from experiment.outputs.writer import load_run, owned_paths, run_id_of

REPORT_NAME = "report.html"
COLOURS = {"pain_anticipation": "#e69f00", "pain": "#d55e00", "relief_anticipation": "#0072b2",
           "rating": "#009e73"}
_CSS = """body{font-family:system-ui,sans-serif;max-width:1000px;margin:1em auto;color:#222}
h1{font-size:1.4em}h2{font-size:1.1em;margin-top:1.4em;border-bottom:1px solid #ccc}
table{border-collapse:collapse;font-size:.85em}td,th{border:1px solid #ddd;padding:2px 6px;text-align:left}
.ok{background:#e6f4ea;padding:.5em}.bad{background:#fde7e7;padding:.5em}.dry{background:#fff3cd;padding:.5em;
font-weight:bold}img{max-width:100%}"""


def _colour(level: str) -> str:
    return COLOURS.get(level, "#777777")


def _figure(width_in: float = 9.5, height_in: float = 2.8) -> Any:
    from matplotlib.figure import Figure  # no pyplot: no global figure state, Agg only

    return Figure(figsize=(width_in, height_in), dpi=90, layout="constrained")


def _png(fig: Any) -> str:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _mark_stop(ax: Any, data: RunData) -> None:
    if data.status.status != "completed" and data.status.stopped_at_s is not None:
        ax.axvline(data.status.stopped_at_s, color="red", lw=1.5, ls="--", label="run stopped")


def timeline_figure(data: RunData) -> str:
    """Planned (outline) vs actual (filled) phases, one row per phase name."""
    fig = _figure(height_in=3.2)
    ax = fig.add_subplot()
    names: list[str] = []
    for p in data.phases:
        if p.phase not in names:
            names.append(p.phase)
    by_i = {p.i: p for p in data.phases}
    for p in data.phases:
        y = names.index(p.phase)
        colour = _colour(p.bids_trial_type or "")
        start = p.planned_onset_s if p.planned_onset_s is not None else p.plan_onset_s
        ax.broken_barh([(start, p.plan_duration_s)], (y - 0.38, 0.32), facecolors="none", edgecolors=colour)
        if p.onset_s is not None:
            nxt = by_i.get(p.i + 1)
            end = nxt.onset_s if nxt is not None and nxt.onset_s is not None else min(
                p.onset_s + p.plan_duration_s, data.status.stopped_at_s or np.inf)
            ax.broken_barh([(p.onset_s, max(end - p.onset_s, 0.0))], (y + 0.02, 0.36), facecolors=colour)
    _mark_stop(ax, data)
    ax.set_yticks(range(len(names)), names, fontsize=8)
    ax.set_xlabel("seconds from t0 (upper bar: actual, lower outline: planned)")
    return _png(fig)


def onset_error_figure(data: RunData) -> str:
    errors = np.array([p.onset_error_s for p in data.phases if p.onset_error_s is not None]) * 1000
    fig = _figure(width_in=5.5)
    ax = fig.add_subplot()
    if errors.size:
        ax.hist(errors, bins=min(40, max(5, errors.size // 2)), color="#555555")
    frame_s = (data.display or {}).get("frame_s")
    if frame_s:
        for x in (-500 * frame_s, 500 * frame_s):
            ax.axvline(x, color="red", lw=1, ls=":")
    ax.set_xlabel("onset error (ms); dotted: half a frame")
    ax.set_ylabel("phases")
    return _png(fig)


def pulse_figure(data: RunData) -> str:
    """Pulse interval minus TR (ms); red lines where pulses are missing."""
    fig = _figure()
    ax = fig.add_subplot()
    tr = data.tr_s or 0.0
    normal = [(p.onset_s, 1000 * (p.interval_s - tr)) for p in data.pulses
              if p.onset_s is not None and p.interval_s is not None and not p.missed_before]
    if normal:
        x, y = np.array(normal).T
        ax.plot(x, y, ".", ms=3, color="#333333", label="interval - TR")
    for k, p in enumerate(q for q in data.pulses if q.missed_before and q.onset_s is not None):
        ax.axvline(p.onset_s, color="red", lw=2, label="missed pulse(s)" if k == 0 else None)
    ax.axvline(0.0, color="#999999", lw=1)
    _mark_stop(ax, data)
    ax.set_xlabel(f"seconds from t0 (pulses before 0 are discarded); TR {tr} s")
    ax.set_ylabel("interval - TR (ms)")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, loc="upper right")
    return _png(fig)


def pressure_figure(data: RunData) -> str:
    fig = _figure(height_in=3.2)
    ax = fig.add_subplot()
    for e in data.events:
        if e.duration_s:
            ax.axvspan(e.onset_s, e.onset_s + e.duration_s, color=_colour(e.trial_type), alpha=0.18, lw=0)
    from matplotlib.patches import Patch

    levels = sorted({e.trial_type for e in data.events})
    handles = [Patch(color=_colour(lv), alpha=0.3, label=lv) for lv in levels]
    if data.samples and data.t0 is not None:
        t = np.array([s.t - data.t0 for s in data.samples])
        ax.plot(t, [s.pressure_kpa for s in data.samples], color="#222222", lw=1, label="measured")
        ax.step(t, [np.nan if s.target_kpa is None else s.target_kpa for s in data.samples], where="post",
                color="#d55e00", lw=1, ls="--", label="target")
        handles = ax.get_legend_handles_labels()[0] + handles
    if handles:
        ax.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    else:
        ax.text(0.5, 0.5, "no pressure samples", transform=ax.transAxes, ha="center")
    _mark_stop(ax, data)
    ax.set_xlabel("seconds from t0 (shaded: modelled phases, coloured by trial_type)")
    ax.set_ylabel("kPa")
    return _png(fig)


def frames_figure(data: RunData) -> str:
    fig = _figure(height_in=2.4)
    ax = fig.add_subplot()
    drops = [(float(d["t"]) - (data.t0 or 0.0), 1000 * float(d["interval_s"])) for d in data.frame_drops
             if d.get("t") is not None and d.get("interval_s") is not None]
    if drops:
        x, y = np.array(drops).T
        ax.plot(x, y, "v", color="red")
        ax.set_ylabel("frame interval (ms)")
    else:
        ax.text(0.5, 0.5, "no dropped frames logged", transform=ax.transAxes, ha="center")
    frame_s = (data.display or {}).get("frame_s")
    if frame_s:
        ax.axhline(1000 * frame_s, color="#0072b2", lw=1)
    _mark_stop(ax, data)
    ax.set_xlabel("seconds from t0")
    return _png(fig)


def _table(columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    def cell(v: Any) -> str:
        if v is None:
            return "n/a"
        if isinstance(v, float):
            return f"{v:.3f}"
        return html.escape(str(v))
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _records(title: str, records: Sequence[Mapping[str, Any]], *, fields: Sequence[str], t0: float | None) -> str:
    if not records:
        return f"<h2>{html.escape(title)}</h2><p>none</p>"
    rows = [[(float(r["t"]) - t0) if (t0 is not None and r.get("t") is not None) else r.get("t"),
             *[r.get(f) for f in fields]] for r in records]
    return f"<h2>{html.escape(title)} ({len(records)})</h2>" + _table(["s from t0", *fields], rows)


def render_report(data: RunData, *, stem: str) -> str:
    """The HTML page (a pure function of the derived data)."""
    h, st = data.header, data.status
    q: TimingQuality = timing_quality(data)
    esc = html.escape
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>QC {esc(stem)}</title>"
             f"<style>{_CSS}</style></head><body><h1>QC report: {esc(stem)}</h1>"]
    if h.get("dry_run"):
        parts.append("<p class='dry'>DRY RUN: simulated devices; not participant data.</p>")
    parts.append(f"<p class='{'ok' if st.status == 'completed' else 'bad'}'>Run {esc(st.summary())}</p>")
    software = h.get("software") or {}
    facts = [("participant", h.get("participant")), ("session", h.get("session")), ("run", h.get("run")),
             ("task", h.get("task")), ("protocol", h.get("protocol_name") or h.get("protocol_path")),
             ("seed", h.get("seed")), ("started", h.get("start_wall")),
             ("ended", (data.end or {}).get("end_wall")),
             ("software", f"{software.get('name')} {software.get('version')} ({software.get('revision')})"),
             ("onset error", f"median {_ms(q.median_error_ms)}, 95% within {_ms(q.p95_abs_error_ms)}, "
                             f"max {_ms(q.max_abs_error_ms)}"),
             ("pulses", f"{q.volumes_received} of {q.volumes_expected} expected, {q.missed_pulses} missed"),
             ("dropped frames", q.dropped_frames), ("warnings / safety events", f"{q.n_warnings} / {q.n_safety}")]
    parts.append(_table(["", ""], facts))
    parts.append(_confirmed(h))
    if data.notes or st.problems:
        parts.append("<h2>Notes</h2><ul>" + "".join(f"<li>{esc(n)}</li>" for n in (*st.problems, *data.notes))
                     + "</ul>")
    for title, src in (("Planned vs actual timeline", timeline_figure(data)),
                       ("Onset errors", onset_error_figure(data)),
                       ("Scanner pulse intervals", pulse_figure(data)),
                       ("Cuff pressure against target", pressure_figure(data)),
                       ("Dropped frames", frames_figure(data))):
        parts.append(f"<h2>{esc(title)}</h2><img alt='{esc(title)}' src='{src}'>")
    parts.append(_records("Warnings", data.warnings, fields=("code", "message"), t0=data.t0))
    parts.append(_records("Safety events", data.safety, fields=("reason", "action"), t0=data.t0))
    parts.append(_records("Operator actions", data.operator, fields=("action",), t0=data.t0))
    rated = [n for r in data.rating_columns for n in (r.rating, r.response_time)]
    keep = [c for c in ("trial", "trial_type", "status", "target_pressure_kpa", "plateau_pressure_kpa",
                        "target_reached_latency", *rated) if c in data.trials.columns]
    idx = [data.trials.columns.index(c) for c in keep]
    parts.append("<h2>Trials</h2>" + _table(keep, [[r[k] for k in idx] for r in data.trials.rows]))
    parts.append("</body></html>\n")
    return "".join(parts)


def _confirmed(header: Mapping[str, Any]) -> str:
    """What the operator was shown before the run, and how it was confirmed."""
    briefing, confirmation = header.get("briefing"), header.get("confirmation")
    if not isinstance(briefing, Mapping):
        return ""
    rows = [(label, text) for label, text in briefing.get("lines") or ()]
    if isinstance(confirmation, Mapping):
        rows.append(("confirmed", f"{confirmation.get('by')} at {confirmation.get('at')}"))
    return "<h2>Shown to the operator before the run</h2>" + _table(["", ""], rows)


def _ms(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.2f} ms"


def write_report(run_dir: Path) -> Path:
    """Write `report.html` into the run directory (atomically) and return its path."""
    run_dir = Path(run_dir)
    log, pressure = load_run(run_dir)
    rid = run_id_of(log.header)
    data = derive_run(log, pressure)
    return write_text(run_dir / REPORT_NAME, render_report(data, stem=rid.stem), owned=owned_paths(run_dir))


def command(args: argparse.Namespace) -> int:
    path = write_report(Path(args.run_dir))
    sys.stdout.write(f"QC report: {path}\n")
    return 0
