"""The study page: one self-contained HTML file (pure: a function of the study, its tables and plots).

No external references: the CSS is inline, the plots are data: URIs, there is no script, and
links only jump within the page, so it opens on an offline stimulus computer and prints as
it shows. Status is written out in words (colour only underlines it).
"""

from __future__ import annotations

import html
import math
from typing import Mapping, Sequence

from experiment import __version__
from experiment.study.aggregate import Cell, StudyTable, StudyTables
from experiment.study.model import Study
from experiment.study.qc import DEFAULT_MARGIN_KPA, ONSET_ERROR_FRAMES, TR_TOLERANCE

CSS = """body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;max-width:1200px;margin:1em auto;color:#222;
padding:0 1em}h1{font-size:1.45em}h2{font-size:1.15em;margin-top:1.6em;border-bottom:1px solid #bbb}
h3{font-size:1em;margin-bottom:.3em}table{border-collapse:collapse;font-size:.8em;margin:.4em 0}
td,th{border:1px solid #ccc;padding:2px 5px;text-align:left;vertical-align:top}th{background:#f2f2f2}
td.num{text-align:right;font-variant-numeric:tabular-nums}.meta{color:#444}
.dry{background:#fff3cd;padding:.5em;font-weight:bold;border:1px solid #e0c060}
.ok{background:#e6f4ea;padding:.4em}.warn{background:#fde7e7;padding:.4em}
tr.aborted td,tr.incomplete td,tr.unreadable td{background:#fdecea}tr.discarded td{background:#eeeeee;color:#555}
.badge{font-weight:bold}nav a{margin-right:.8em}img{max-width:100%;border:1px solid #eee}
.note{font-size:.85em;color:#444}.nw{white-space:nowrap}ul.flags{margin:0;padding-left:1.1em}
@media print{body{max-width:none;margin:0}nav{display:none}tr{break-inside:avoid}h2{break-after:avoid}
img{break-inside:avoid;border:none}}"""

SECTIONS = (("problems", "What could not be read"), ("overview", "Participants and sessions"),
            ("runs", "Runs and QC flags"), ("calibrations", "Calibrated pressures by group"),
            ("ratings", "Ratings by trial type and group"), ("inflation", "Inflation times and limits"),
            ("timing", "Timing"), ("plans", "Missing from visit plans"), ("fields", "Participant fields"),
            ("files", "Tables"))


def cell_text(value: Cell, decimals: int = 3) -> str:
    """A value as the tables write it: n/a for missing, fixed decimals for floats."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.{decimals}f}"
    return str(value)


def html_table(table: StudyTable, columns: Sequence[str] | None = None, *, row_class: str | None = None,
               limit: int | None = None) -> str:
    """The table (or some of its columns) as HTML; `row_class` names a column whose value classes the row."""
    names = list(columns or table.names)
    idx = [table.names.index(c) for c in names]
    cols = [table.columns[k] for k in idx]
    head = "".join(f"<th title='{html.escape(c.description)}'>{html.escape(c.name)}</th>" for c in cols)
    body = []
    rows = table.rows if limit is None else table.rows[:limit]
    for r in rows:
        cls = ""
        if row_class is not None:
            word = str(r[table.names.index(row_class)] or "").split(" ")[0]
            cls = f" class='{html.escape(word)}'"
        tds = []
        for c, k in zip(cols, idx):
            v = r[k]
            num = isinstance(v, (int, float)) and not isinstance(v, bool)
            tds.append(f"<td{' class=num' if num else ''}>{html.escape(cell_text(v, c.decimals))}</td>")
        body.append(f"<tr{cls}>{''.join(tds)}</tr>")
    more = ""
    if limit is not None and len(table.rows) > limit:
        more = f"<p class='note'>{len(table.rows) - limit} more rows in {table.name}.tsv</p>"
    if not table.rows:
        return "<p>none</p>"
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>{more}"


def _figure(src: str, alt: str) -> str:
    return f"<img alt='{html.escape(alt)}' src='{src}'>"


def _counts(study: Study) -> str:
    runs = study.runs
    n = {k: sum(1 for r in runs if r.status == k and not r.discard.discarded)
         for k in ("completed", "aborted", "incomplete", "unreadable")}
    discarded = sum(1 for r in runs if r.discard.discarded)
    groups = ", ".join(f"{g}: {sum(1 for p in study.participants if p.group == g)}" for g in study.groups)
    parts = [f"{n[k]} {k}" for k in n if n[k] or k == "completed"]
    return (f"{len(study.participants)} participants ({groups or 'none'}); {len(runs)} runs: "
            f"{', '.join(parts)}, {discarded} discarded; {len(study.attempts)} attempts stopped before the first "
            f"volume; {sum(1 for c in study.calibrations if c.status == 'result')} calibrations with a result")


def _runs_section(study: Study, t: StudyTables) -> str:
    flagged = [r for r in study.runs if r.flags and r.counted]
    frame = "one frame"
    summary = (f"<p class='{'warn' if flagged else 'ok'}'>{len(flagged)} of "
               f"{sum(1 for r in study.runs if r.counted)} runs that count have QC flags.</p>")
    legend = ("<p class='note'>Flags: <b>onset_error</b> a cue more than "
              f"{ONSET_ERROR_FRAMES:g} frame off its planned time ({frame}); <b>dropped_frames</b>; "
              "<b>missed_pulses</b> gaps over 1.5 TR; <b>extra_pulses</b> closer than 0.5 TR; <b>short_of_volumes</b> "
              f"a completed run with fewer pulses than volumes; <b>tr_mismatch</b> measured TR more than "
              f"{TR_TOLERANCE:.1%} off the protocol's; <b>tr_sidecar</b> the task sidecar's RepetitionTime differs; "
              "<b>pressure_deviation</b> measured pressure while holding further from the commanded one than the "
              f"protocol's compliance margin (default {DEFAULT_MARGIN_KPA:g} kPa); <b>pressure_not_held</b>; "
              "<b>inflation_limit</b> over the protocol's per-stimulus or per-run limit; <b>safety</b> and "
              "<b>warnings</b> records in the log; <b>log_cut</b>; <b>bids_outputs</b> events files missing or "
              "from another log. Discarded runs are grey and count nowhere else.</p>")
    return summary + _runs_html(study) + legend


def _num(x: float | None, decimals: int) -> str:
    return cell_text(x, decimals)


def _runs_html(study: Study) -> str:
    """The runs, compact: status in words with its reason, the QC figures, the flags as a list."""
    esc = html.escape
    head = ("<tr><th>participant</th><th>group</th><th>session</th><th>task</th><th>run</th><th>status</th>"
            "<th>pressure (kPa)</th><th title='largest |onset error|'>onset error max (ms)</th>"
            "<th>dropped frames</th><th title='received / expected; missed; extra'>pulses</th>"
            "<th>TR measured (s)</th><th title='largest |measured - commanded| while holding'>pressure off target "
            "(kPa)</th><th>QC flags</th></tr>")
    rows = []
    for r in study.runs:
        t = r.timing
        if r.discard.discarded:
            status = (f"<span class='badge'>DISCARDED</span>: {esc(r.discard.reason or '')} "
                      f"<span class='note'>(by {esc(r.discard.by or '?')}, {esc(r.discard.at or '?')}; run "
                      f"{esc(r.status)})</span>")
            cls = "discarded"
        elif r.status == "completed":
            status, cls = "completed", "completed"
        else:
            detail = r.status_text
            for lead in (f"{r.status}: ", f"{r.status} "):   # the summary starts with the status: said once
                if detail.startswith(lead):
                    detail = detail[len(lead):]
            status = f"<span class='badge'>{esc(r.status.upper())}</span> {esc(detail)}"
            cls = r.status
        pressure = esc(r.pressure_text) if r.pressure_levels else "n/a"
        if r.pressure_source:
            pressure += f" ({esc(r.pressure_source)}" + (f": {esc(r.pressure_note)}" if r.pressure_source == "override"
                                                         and r.pressure_note else "") + ")"
        pulses = "n/a" if t is None else (f"<span class='nw'>{t.volumes_received}/{_num(t.volumes_expected, 0)}"
                                          f"</span>, {t.missed_pulses}&nbsp;missed, {t.extra_pulses}&nbsp;extra")
        devs = [s.deviation_kpa for s in r.stimuli if s.deviation_kpa is not None]
        flags = ("<ul class='flags'>" + "".join(f"<li><b>{esc(f.code)}</b>: {esc(f.text)}</li>" for f in r.flags)
                 + "</ul>") if r.flags else "none"
        cells = [esc(r.participant), esc(study.group_of(r.participant)), esc(r.session or "n/a"), esc(r.task),
                 esc(_num(r.run, 0)), status, pressure,
                 _num(t.onset_error_max_ms if t else None, 2), _num(t.dropped_frames if t else None, 0), pulses,
                 _num(t.tr_measured_s if t else None, 4), _num(max(devs) if devs else None, 2), flags]
        rows.append(f"<tr class='{cls}'>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    if not rows:
        return "<p>No runs yet.</p>"
    return f"<table><thead>{head}</thead><tbody>{''.join(rows)}</tbody></table>"


def render_page(study: Study, tables: StudyTables, figures: Mapping[str, str], files: Sequence[str]) -> str:
    """The whole page. `figures`: name -> data URI (calibration, ratings, inflation, timing)."""
    esc = html.escape
    p = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>Study: {esc(study.root)}</title>"
         f"<style>{CSS}</style></head><body>",
         f"<h1>Study: {esc(study.root)}</h1>",
         f"<p class='meta'>Read {esc(study.read_at)} by cuedpain {esc(__version__)} from the BIDS files and run logs "
         f"(nothing was changed). {esc(_counts(study))}.</p>"]
    if study.holds_dry_runs:
        p.append("<p class='dry'>DRY RUNS: this dataset root holds rehearsals with simulated devices and a simulated "
                 "participant; not participant data.</p>")
    p.append("<nav>" + "".join(f"<a href='#{k}'>{esc(v)}</a>" for k, v in SECTIONS) + "</nav>")

    p.append(f"<h2 id='problems'>What could not be read ({len(study.problems)})</h2>")
    p.append(html_table(tables.problems) if study.problems else "<p class='ok'>Everything was read.</p>")

    p.append("<h2 id='overview'>Participants and sessions</h2>")
    p.append(html_table(tables.overview))

    p.append("<h2 id='runs'>Runs and QC flags</h2>" + _runs_section(study, tables))

    p.append("<h2 id='calibrations'>Calibrated pressures by group</h2>")
    p.append(_figure(figures["calibration"], "calibrated pressure by group; pressure of each run"))
    p.append("<h3>By group</h3>" + html_table(tables.calibration_groups) +
             f"<p class='note'>{esc(tables.calibration_groups.note)}</p>")
    overrides = [r for r in study.runs if r.pressure_source == "override"]
    if overrides:
        p.append("<h3>Operator overrides</h3><ul>" + "".join(
            f"<li>{esc(r.stem)}: {esc(r.pressure_text)} kPa, reason: {esc(r.pressure_note or 'none')}</li>"
            for r in overrides) + "</ul>")
    p.append("<h3>Every calibration</h3>" + html_table(tables.calibrations, [
        "participant", "group", "session", "calibration", "status", "detail", "pressure_kpa", "method",
        "target_rating", "ceiling_kpa", "created"]))

    p.append("<h2 id='ratings'>Ratings by trial type and group</h2>")
    p.append(_figure(figures["ratings"], "mean rating per participant by trial type and group"))
    p.append(html_table(tables.ratings_groups) + f"<p class='note'>{esc(tables.ratings_groups.note)}</p>")

    p.append("<h2 id='inflation'>Inflation times against the protocol's limits</h2>")
    p.append(_figure(figures["inflation"], "inflation time as a percentage of the protocol's limits"))
    p.append(html_table(tables.runs, ["participant", "group", "session", "task", "run", "status", "stimuli",
                                      "longest_stimulus_s", "stimulus_limit_s", "inflated_total_s", "run_limit_s",
                                      "max_deviation_kpa"], row_class="status"))
    p.append(f"<p class='note'>Every stimulus (commanded and measured pressure, inflation time): "
             f"{esc(tables.stimuli.name)}.tsv ({len(tables.stimuli.rows)} rows).</p>")

    p.append("<h2 id='timing'>Timing</h2>")
    p.append(_figure(figures["timing"], "largest onset error per run by group"))

    p.append("<h2 id='plans'>Missing from visit plans</h2>")
    p.append(f"<p>{esc(tables.missing.note)}</p>")
    if study.plans.plans:
        p.append(html_table(tables.missing))

    p.append("<h2 id='fields'>Participant fields</h2>")
    if study.declaration is None:
        p.append("<p>No fields are declared (participants.json): `cuedpain participants declare FILE`.</p>")
    else:
        p.append("<ul>" + "".join(f"<li><b>{esc(f.name)}</b>: {esc(f.description)} ({esc(f.allowed())})</li>"
                                  for f in study.declaration.fields) + "</ul>")

    p.append("<h2 id='files'>Tables</h2><p>Written next to this page, tab-separated, n/a for missing:</p><ul>" +
             "".join(f"<li>{esc(f)}</li>" for f in files) + "</ul>")
    p.append("</body></html>\n")
    return "".join(p)
