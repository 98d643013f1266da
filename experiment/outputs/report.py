"""`cuedpain report RUN_DIR`: one self-contained HTML page to check a run at a glance.

At the top a verdict: "good to analyse", or the list of what to look at (an ending that
was not a completion, cues more than half a frame off, missed pulses, dropped frames,
warnings, safety events, ratings that timed out). Then one figure per question, each
titled with it: did each trial follow its plan (one row per trial, planned outline and
actual bars), did each cue appear when planned (the onset errors of the trials' cues,
the same set as the summary: the lead-in is left out), did the scanner send every pulse
on time, did the cuff follow its target (phases shaded by trial type, each its own
colour, the ceiling drawn), were frames dropped (a plot only when there were; otherwise
the frame figures in a sentence). Then warnings, safety events, operator actions and the
per-trial table. Figures are rendered with matplotlib's Agg backend and embedded as
base64 PNG: the page is one file with no external references.
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
from experiment.outputs.bids import not_measured_text
from experiment.outputs.derive import RunData, TimingQuality, derive_run, timing_quality
from experiment.outputs.writer import load_run, owned_paths, run_id_of

REPORT_NAME = "report.html"
COLOURS = {"pain_anticipation": "#e69f00", "pain": "#d55e00", "relief_anticipation": "#0072b2",
           "rating": "#009e73"}
PALETTE = ("#cc79a7", "#56b4e9", "#f0e442", "#999933", "#882255", "#44aa99", "#332288", "#aa4499")  # other types
_CSS = """body{font-family:system-ui,sans-serif;max-width:1000px;margin:1em auto;color:#222}
h1{font-size:1.4em}h2{font-size:1.1em;margin-top:1.4em;border-bottom:1px solid #ccc}
table{border-collapse:collapse;font-size:.85em}td,th{border:1px solid #ddd;padding:2px 6px;text-align:left}
.ok{background:#e6f4ea;padding:.5em}.bad{background:#fde7e7;padding:.5em}.dry{background:#fff3cd;padding:.5em;
font-weight:bold}img{max-width:100%}.verdict{font-size:1.15em;padding:.6em;border-radius:4px}
.verdict.good{background:#dff3e4;border-left:6px solid #1a7f37}.verdict.look{background:#fff0d6;border-left:6px solid #c77700}
.verdict ul{margin:.3em 0}.caption{color:#555;font-size:.85em;margin-top:0}"""


def _colour(level: str, others: Sequence[str] = ()) -> str:
    """A trial type's colour: the paradigm's four fixed ones, then a palette in the order `others` lists types."""
    if level in COLOURS:
        return COLOURS[level]
    rest = [t for t in others if t not in COLOURS]
    return PALETTE[rest.index(level) % len(PALETTE)] if level in rest else "#777777"


def _types(data: RunData) -> list[str]:
    """Every bids trial type of the run, in order of first appearance."""
    seen: list[str] = []
    for t in [p.bids_trial_type for p in data.phases] + [e.trial_type for e in data.events]:
        if t and t not in seen:
            seen.append(t)
    return seen


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
    """One row per trial, from its planned start: planned phases outlined, actual phases filled."""
    trials = sorted({p.trial for p in data.phases if p.trial > 0})
    by_i = {p.i: p for p in data.phases}
    types = _types(data)
    fig = _figure(height_in=min(1.2 + 0.32 * max(len(trials), 1), 14.0))
    ax = fig.add_subplot()
    longest = 0.0
    for row, trial in enumerate(trials):
        phases = [p for p in data.phases if p.trial == trial]
        start = phases[0].plan_onset_s
        for p in phases:
            colour = _colour(p.bids_trial_type or "", types) if p.bids_trial_type else "#bbbbbb"
            planned = (p.planned_onset_s if p.planned_onset_s is not None else p.plan_onset_s) - start
            ax.broken_barh([(planned, p.plan_duration_s)], (row - 0.42, 0.3), facecolors="none", edgecolors=colour,
                           linewidth=1.0)
            longest = max(longest, planned + p.plan_duration_s)
            if p.onset_s is not None:
                nxt = by_i.get(p.i + 1)
                end = nxt.onset_s if nxt is not None and nxt.onset_s is not None else min(
                    p.onset_s + p.plan_duration_s, data.status.stopped_at_s or np.inf)
                ax.broken_barh([(p.onset_s - start, max(end - p.onset_s, 0.0))], (row - 0.08, 0.48),
                               facecolors=colour, hatch="//" if p.kind == "rating" else None, edgecolor="white",
                               linewidth=0)
    from matplotlib.patches import Patch

    handles = [Patch(color=_colour(t, types), label=t) for t in types]
    handles.append(Patch(facecolor="#999999", hatch="//", edgecolor="white", label="rating scale on screen"))
    ax.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    ax.set_yticks(range(len(trials)), [f"trial {t}" for t in trials], fontsize=8)
    ax.set_ylim(len(trials) - 0.5, -0.6)
    ax.set_xlim(0, longest * 1.02 if longest else 1)
    ax.set_xlabel("seconds from the trial's planned start (outline: planned; filled: on screen)")
    if not trials:
        ax.text(0.5, 0.5, "no trial reached the screen", transform=ax.transAxes, ha="center")
    return _png(fig)


def onset_errors_ms(data: RunData) -> np.ndarray:
    """The onset errors the summary counts: the trials' cues (the lead-in and tail left out, as in
    `timing_quality`: the lead-in's first flip can only come after t0 is known)."""
    return np.array([p.onset_error_s for p in data.phases if p.onset_error_s is not None and p.trial > 0],
                    dtype=float) * 1000


def onset_error_figure(data: RunData) -> str:
    errors = onset_errors_ms(data)
    fig = _figure(width_in=6.5)
    ax = fig.add_subplot()
    frame_s = (data.display or {}).get("frame_s")
    half = 500 * float(frame_s) if frame_s else None
    if errors.size:
        lo, hi = min(errors.min(), -(half or 1)), max(errors.max(), half or 1)
        ax.hist(errors, bins=np.linspace(lo - 0.5, hi + 0.5, 41), color="#555555")
    else:
        ax.text(0.5, 0.5, "no cue of a trial reached the screen", transform=ax.transAxes, ha="center")
    if half:
        for x in (-half, half):
            ax.axvline(x, color="red", lw=1, ls=":")
        outside = int(np.sum(np.abs(errors) > half))
        ax.set_title(f"{errors.size} cues; {outside} more than half a frame ({half:.1f} ms) off", fontsize=9)
    ax.set_xlabel("onset error (ms): flip minus plan; dotted: half a frame")
    ax.set_ylabel("cues")
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
    types = _types(data)
    for e in data.events:
        if e.duration_s and e.trial_type != "rating":
            ax.axvspan(e.onset_s, e.onset_s + e.duration_s, color=_colour(e.trial_type, types), alpha=0.3, lw=0)
    from matplotlib.patches import Patch

    shaded = [t for t in types if t != "rating"]
    handles = [Patch(color=_colour(t, types), alpha=0.4, label=t) for t in shaded]
    ceiling = ((data.header.get("briefing") or {}).get("ceiling_kpa") if isinstance(data.header.get("briefing"), Mapping)
               else None)
    if ceiling:
        ax.axhline(float(ceiling), color="#b00020", lw=1, ls=":", label=f"ceiling {float(ceiling):g} kPa")
    if data.samples and data.t0 is not None:
        t = np.array([s.t - data.t0 for s in data.samples])
        ax.plot(t, [s.pressure_kpa for s in data.samples], color="#222222", lw=1, label="measured")
        ax.step(t, [np.nan if s.target_kpa is None else s.target_kpa for s in data.samples], where="post",
                color="#d55e00", lw=1, ls="--", label="commanded")
    handles = ax.get_legend_handles_labels()[0] + handles
    if not data.samples:
        unmeasured = not_measured_text(data.header) is not None
        ax.text(0.5, 0.5, "not measured: the pressure was set on the inflator's panel" if unmeasured
                else "no pressure samples", transform=ax.transAxes, ha="center")
    ax.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    _mark_stop(ax, data)
    ax.set_xlabel("seconds from t0 (shaded: the phases of events.tsv, coloured by trial_type)")
    ax.set_ylabel("kPa")
    return _png(fig)


def frames_sentence(data: RunData) -> str:
    """The run's frame figures in words (from its last `frames` record)."""
    last = data.frames[-1] if data.frames else None
    if last is None:
        return "no frame statistics in the log"
    p99, longest = last.get("p99_interval_s"), last.get("max_interval_s")

    def ms(x: Any) -> str:
        return "n/a" if x is None else f"{1000 * float(x):.1f} ms"

    return f"{last.get('n')} frame intervals, p99 {ms(p99)}, longest {ms(longest)}"


def frames_figure(data: RunData) -> str | None:
    """The dropped frames over the run (None when there were none: nothing to plot)."""
    drops = [(float(d["t"]) - (data.t0 or 0.0), 1000 * float(d["interval_s"])) for d in data.frame_drops
             if d.get("t") is not None and d.get("interval_s") is not None]
    if not drops:
        return None
    fig = _figure(height_in=2.4)
    ax = fig.add_subplot()
    x, y = np.array(drops).T
    ax.vlines(x, 0, y, color="red", lw=1.5)
    ax.plot(x, y, "v", color="red")
    frame_s = (data.display or {}).get("frame_s")
    if frame_s:
        ax.axhline(1000 * frame_s, color="#0072b2", lw=1, label="one frame")
        ax.axhline(1500 * frame_s, color="#0072b2", lw=1, ls=":", label="dropped above this")
        ax.legend(fontsize=7, loc="upper right")
    ax.set_ylim(0, max(y.max() * 1.15, 2000 * (frame_s or 0.0)))
    _mark_stop(ax, data)
    ax.set_xlabel("seconds from t0")
    ax.set_ylabel("frame interval (ms)")
    return _png(fig)


def verdict(data: RunData, q: TimingQuality) -> list[str]:
    """What to look at before analysing this run (empty: good to analyse). Pure."""
    items = []
    st = data.status
    if st.status != "completed":
        items.append(f"the run did not complete: {st.summary()}")
    frame_s = (data.display or {}).get("frame_s")
    errors = onset_errors_ms(data)
    if frame_s and errors.size:
        off = int(np.sum(np.abs(errors) > 500 * float(frame_s)))
        if off:
            items.append(f"{off} of {errors.size} cues more than half a frame from plan (largest "
                         f"{q.max_abs_error_ms:.1f} ms): see the onset errors")
    if q.missed_pulses:
        items.append(f"{q.missed_pulses} missed scanner pulse(s): see the pulse intervals")
    if q.volumes_expected is not None and q.volumes_received < q.volumes_expected and st.status == "completed":
        items.append(f"{q.volumes_received} of {q.volumes_expected} volumes' pulses received")
    if q.dropped_frames:
        items.append(f"{q.dropped_frames} dropped frame(s): see when, below")
    if data.safety:
        items.append(f"{len(data.safety)} safety event(s): " + ", ".join(sorted({str(r.get('reason')) for r in data.safety})))
    if data.warnings:
        items.append(f"{len(data.warnings)} warning(s): " + ", ".join(sorted({str(r.get('code')) for r in data.warnings})))
    missed = [r for r in data.ratings if r.timed_out]
    if missed:
        items.append(f"{len(missed)} rating(s) timed out (trials {', '.join(str(r.trial) for r in missed)})")
    return items


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
    look = verdict(data, q)
    if look:
        parts.append("<div class='verdict look'><b>Look at this before analysing:</b><ul>"
                     + "".join(f"<li>{esc(item)}</li>" for item in look) + "</ul></div>")
    else:
        parts.append("<div class='verdict good'><b>Good to analyse:</b> completed, every cue within half a frame, "
                     "every pulse, no dropped frames, no warnings or safety events.</div>")
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
    for title, src, caption in (
            ("Did each trial follow its plan?", timeline_figure(data),
             "One row per trial from its planned start: outlines are planned, filled bars are what was on screen."),
            ("Did each cue appear when planned?", onset_error_figure(data),
             "The trials' cues (the lead-in is left out, as in the summary above)."),
            ("Did the scanner send every pulse on time?", pulse_figure(data),
             "Interval between stored-volume pulses minus the TR; red lines: missed pulses."),
            ("Did the cuff follow its target?", pressure_figure(data),
             "Measured and commanded pressure with the ceiling; phases shaded by trial type.")):
        parts.append(f"<h2>{esc(title)}</h2><p class='caption'>{esc(caption)}</p><img alt='{esc(title)}' src='{src}'>")
    drops = frames_figure(data)
    parts.append("<h2>Were frames dropped?</h2>")
    if drops is None:
        parts.append(f"<p>No dropped frames ({esc(frames_sentence(data))}).</p>")
    else:
        parts.append(f"<p class='caption'>{esc(frames_sentence(data))}; each red line is one dropped frame.</p>"
                     f"<img alt='dropped frames' src='{drops}'>")
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
