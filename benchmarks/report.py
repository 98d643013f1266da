"""results dict -> results.md (a markdown table, the command, the machine, the caveats). Pure."""

from __future__ import annotations

import math
from typing import Any


def _num(x: Any, digits: int = 2) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    if isinstance(x, float) and math.isinf(x):
        return "inf"
    return f"{x:.{digits}f}"


def _mpm(s: dict[str, Any]) -> str:
    """median / p99 / max of a Summary dict, in ms."""
    return f"{_num(s['median_ms'])} / {_num(s['p99_ms'])} / {_num(s['max_ms'])} ms"


def _errors(e: dict[str, Any]) -> str:
    return f"{_num(e['median_ms'])} / {_num(e['p99_abs_ms'])} / {_num(e['largest_ms'])} ms"


def _drift(d: dict[str, Any]) -> str:
    return (f"{_num(d['slope_ms_per_min'], 3)} ± {_num(d['slope_se_ms_per_min'], 3)} ms/min; "
            f"{_num(d['last_minus_first_ms'])} ms over {_num(d['span_min'], 1)} min")


def table_rows(r: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(benchmark number, what, statistic, value) for every measured number."""
    rows: list[tuple[str, str, str, str]] = []
    on = r.get("onsets")
    if on:
        c, n = on["cuedpain"], on["naive"]
        rows += [
            ("1", f"Onset error, cuedpain (flip − planned; {c['errors']['n']} cues)",
             "median / p99 of abs / largest", _errors(c["errors"])),
            ("1", "Drift, cuedpain", "slope ± SE; last − first", _drift(c["drift"])),
            ("1", f"Onset error, relative waits ({n['errors']['n']} cues)",
             "median / p99 of abs / largest", _errors(n["errors"])),
            ("1", "Drift, relative waits", "slope ± SE; last − first", _drift(n["drift"])),
            ("1", "Drift ratio, relative waits / cuedpain", "slope; last − first; lower bound: slope / (cuedpain abs slope + 2 SE)",
             f"×{_num(on['drift_ratio_slope'], 0)}; ×{_num(on['drift_ratio_last_minus_first'], 0)}; "
             f"at least ×{_num(on['drift_ratio_slope_conservative'], 0)}"),
        ]
        f = c.get("frames") or {}
        if f:
            rows.append(("1", "Frames during the dry run (runner's own `frames` record)",
                         "p99 / longest; over 1.5 frames",
                         f"{_num(1000 * f['p99_interval_s'])} / {_num(1000 * f['max_interval_s'])} ms; "
                         f"{f['dropped']} of {f['n']}"))
    g = (on or {}).get("gc")
    if g:
        dur = g.get("duration") or {}
        prio = g.get("priority") or {}
        rows.append(("1", "Garbage collections in quiet phases (dry run); priority",
                     "count; median / max duration; nice obtained",
                     f"{g['collections']}; {_num(dur.get('median_ms'))} / {_num(dur.get('max_ms'))} ms; "
                     + (f"nice {prio.get('nice')}" if prio.get("obtained") else "not raised")))
    dr = r.get("dry_runs")
    if dr and dr["n"] > 1:
        worst = dr["runs"][dr["worst"] - 1]
        rows.append(("1", f"Worst of {dr['n']} full-length dry runs (run {dr['worst']}; benchmarks 1 and 3 are "
                          "from it)", "largest onset error; longest frame; onsets over half a frame",
                     f"{_num(worst['largest_onset_error_ms'])} ms; {_num(worst['longest_frame_ms'])} ms; "
                     f"{worst['over_half_frame']}"))
    if dr and any((run.get("stalls") or {}).get("sampled") for run in dr["runs"]):
        rows.append(("1", "Dropped frames and the host, per dry run (benchmarks/stalls.py)",
                     "drops with hypervisor steal / with the frame loop waiting for a CPU / neither; "
                     "share of CPU time stolen; share of random windows as long with steal",
                     "; ".join(stall_cell(run.get("stalls") or {}) for run in dr["runs"])))
    t = r.get("trigger_latency")
    if t:
        rows.append(("2", f"Trigger stamp latency, pty, render loop on ({t['n']} pulses)", "median / p99 / max",
                     _mpm(t)))
    if on:
        cl = on["cuff_latency"]
        rows += [
            ("3", f"Cuff planned time → write (dry run; {cl['n']} commands: {', '.join(cl['commands'])})",
             "median / p99 / max", _mpm(cl["planned_to_write"])),
            ("3", "Cuff flip → write (dry run)", "median / p99 / max", _mpm(cl["flip_to_write"])),
            ("3", "Cuff write → acknowledgement (dry run)", "median / p99 / max", _mpm(cl["write_to_ack"])),
        ]
    fp = r.get("frame_pacing")
    if fp:
        pc = fp.get("cuff")
        if pc:
            rows.append(("3", f"Cuff write → acknowledgement (pacing 'on' blocks; {pc['write_to_ack']['n']} commands)",
                         "median / p99 / max", _mpm(pc["write_to_ack"])))
        for cond in ("off", "on"):
            s = fp[cond]
            rows.append(("4", f"Frame interval, background {cond} ({s['intervals']['n']} frames)",
                         "median / p99 / max; over 1.5 frames",
                         f"{_mpm(s['intervals'])}; {s['over_1_5_frames']}"))
        rows.append(("4", "Frame interval on / off", "p99 ratio; longest ratio",
                     f"×{_num(fp['p99_ratio_on_off'])}; ×{_num(fp['max_ratio_on_off'])}"))
        if "lsl" in fp:
            s = fp["lsl"]
            rows.append(("4", f"Frame interval, background on + LSL ({s['intervals']['n']} frames; "
                              f"{s['pushed']['markers']} markers, {s['pushed']['pressure']} samples pushed)",
                         "median / p99 / max; over 1.5 frames", f"{_mpm(s['intervals'])}; {s['over_1_5_frames']}"))
            rows.append(("4", "Frame interval on + LSL / on", "p99 ratio; longest ratio",
                         f"×{_num(fp['p99_ratio_lsl_on'])}; ×{_num(fp['max_ratio_lsl_on'])}"))
            rows.append(("4", f"LSL hand-over in the frame loop ({s['handover']['n']} records)",
                         "median / p99 / max", _mpm(s["handover"])))
    h = r.get("headless")
    if h:
        rows.append(("5", f"Headless speed ({r['headless_protocol']}, median of {h['n']})",
                     "simulated / wall time",
                     f"×{_num(h['median_speed'], 0)} ({_num(h['simulated_s'], 0)} s in {_num(h['median_wall_s'])} s)"))
    s = r.get("startup")
    if s and "waiting_s" in s:
        w = s["waiting_s"]
        rows.append(("6", f"Start-up: command → \"waiting for the scanner\" ({s['n']} run{'s' * (s['n'] != 1)})",
                     "median (min–max)", f"{_num(w['median'])} s ({_num(w['min'])}–{_num(w['max'])} s)"))
        for mark, label in (("banner_s", "command → banner (imports, input checked)"),
                            ("devices_open_s", "command → devices open, log started")):
            if mark in s:
                rows.append(("6", f"Start-up: {label}", "median", f"{_num(s[mark]['median'])} s"))
    return rows


def timing_test_rows(r: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """Benchmark 8: the timing test's figures (simulated light sensor)."""
    tt = r.get("timing_test")
    if not tt:
        return []
    f = tt["figures"]
    fr, on, light = f["frames"], f["onsets"], f["light"]
    iv = fr["interval"]
    return [
        ("10", f"timing-test: refresh (rig 60 Hz; {f['refresh']['vsync'] and 'vsync' or 'no vsync'})",
         "measured", f"{_num(f['refresh']['measured_hz'])} Hz"),
        ("10", f"timing-test: frame interval ({fr['n_intervals']} frames, {tt['duration_s']:g} s of cues)",
         "median / p99 / max; over 1.5 frames",
         f"{_num(iv['median_ms'])} / {_num(iv['p99_ms'])} / {_num(iv['max_ms'])} ms; {fr['dropped']}"),
        ("10", f"timing-test: cue onset error ({on['n']} cue changes)", "median / largest abs",
         f"{_num(on['error']['median_ms'])} / {_num(on['largest_abs_ms'])} ms"),
        ("10", f"timing-test: flip → pixels in the X server (simulated sensor; {light['seen']} of "
              f"{light['flashes']} flashes)", "median / SD / max",
         f"{_num(light['lag']['median_ms'])} / {_num(light['lag']['sd_ms'])} / {_num(light['lag']['max_ms'])} ms"),
    ]


def notes(r: dict[str, Any]) -> list[str]:
    """What the numbers do not show, or goals they miss (stated, not hidden)."""
    out = []
    on = r.get("onsets")
    frame_ms = None
    if on and on["cuedpain"].get("display"):
        d = on["cuedpain"]["display"]
        frame_ms = 1000 * d["frame_s"]
        if not d.get("vsync"):
            out.append(f"The display had no vertical sync (Xvfb): flips are paced in software on a "
                       f"{d['refresh_hz']:g} Hz grid, so these are the runner's scheduling errors, not photon "
                       "times. On a real monitor add its fixed lag (about 5-7 ms on Linux/Windows in Bridges et al. "
                       "2020) and measure it with a photodiode.")
    if on and frame_ms:
        half = frame_ms / 2
        largest = abs(on["cuedpain"]["errors"]["largest_ms"])
        if largest > half:
            over = [c for c in on["cuedpain"].get("per_cue_ms", []) if abs(c[1]) > half]
            which = "; ".join(f"{c[2] + ' ' if len(c) > 2 else ''}at {c[0]:g} s: {c[1]:+.2f} ms" for c in over)
            out.append(f"Goal missed: cuedpain's largest onset error ({largest:.2f} ms) is over half a frame "
                       f"({half:.2f} ms). A change is put on the first flip at or after its time minus half a "
                       "frame, so only a flip that itself came late (a frame the machine did not deliver on "
                       f"time) can exceed that bound. Over the bound: {which or '?'}.")
        else:
            out.append(f"Every cuedpain onset error is within half a frame (±{half:.2f} ms), the bound the "
                       "runner's flip choice guarantees when flips are on time.")
    drops = on["cuedpain"].get("drops_by_phase") if on else None
    if drops:
        parts = ", ".join(f"{phase} {d['n']} (longest {d['longest_ms']:.0f} ms)" for phase, d in drops.items())
        out.append(f"Dry-run frames over 1.5 frames, by the phase on screen: {parts}.")
    loads = [la[0] for la in (r.get("load_average_before") or {}).values()] + [r["load_average_at_end"][0]]
    if r.get("machine", {}).get("cpu_count"):
        busy = max(loads) >= 1.0
        out.append(f"1-minute load average {min(loads):g}-{max(loads):g} on {r['machine']['cpu_count']} CPUs, "
                   "sampled before each benchmark and at the end"
                   + ("; other work was running on this shared machine, and absolute times move with it: "
                      "compare the ratios, measured in the same run." if busy else
                      "; the machine was otherwise quiet (it is shared: absolute times move with its load)."))
    wall = r.get("wall_s")
    if wall and wall > 15 * 60 and not r.get("quick"):
        out.append(f"The full benchmark took {wall / 60:.1f} min, over the 15 min aimed at: benchmark 1 is two "
                   "real-time runs of the whole protocol back to back (the dry run lasts the scan's declared "
                   "volumes, the comparison runner until the tail's onset).")
    out.append("Serial latencies are over pseudo-terminals: a USB-serial adapter adds its own latency "
               "timer (FTDI default 16 ms; set it to 1 ms, see docs/scanner.md).")
    return out


def stall_cell(st: dict[str, Any]) -> str:
    if not st.get("sampled"):
        return "not sampled"
    base = st.get("baseline_with_steal")
    return (f"{st['with_steal']} / {st['with_runq_wait_only']} / {st['with_neither']} of {st['n_drops']} "
            f"({100 * st['steal_share']:.1f} % stolen; {'?' if base is None else f'{100 * base:.0f} %'}"
            + (f"; {st['outside_samples']} not sampled" if st.get("outside_samples") else "") + ")")


def render(r: dict[str, Any]) -> str:
    m = r["machine"]
    lines = [
        "# cuedpain benchmark results" + (" (quick)" if r.get("quick") else ""),
        "",
        f"Command: `{r['command']}`  ",
        f"Protocol (benchmarks 1, 3, 6): `{r.get('protocol')}`; headless: `{r.get('headless_protocol')}`  ",
        f"Machine: {m['cpu_count']} CPUs ({m.get('cpu_model') or '?'}), {m['platform']}, Python {m['python']}, "
        f"PsychoPy {m['packages']['psychopy']}, psychtoolbox {m['packages']['psychtoolbox']}; "
        f"display {r.get('display', {}).get('kind', '?')}  ",
        f"Date: {m['date']}; revision {m.get('revision') or '?'}; load average at start "
        f"{' / '.join(str(x) for x in m['load_average_at_start'])}; total {(r.get('wall_s') or 0) / 60:.1f} min",
        "",
        "| # | measured | statistic | value |",
        "|---|---|---|---|",
    ]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |"
              for row in table_rows(r) + timing_test_rows(r)]
    lines += ["", "Notes:", ""] + [f"* {n}" for n in notes(r)]
    lines += ["", "What each number means and how it is measured: benchmarks/README.md.", ""]
    return "\n".join(lines)
