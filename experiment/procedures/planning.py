"""The `validate` and `plan` commands: check a protocol, show its run, write its timeline.

Public API:
    command(args) -> int                        dispatched by experiment.cli for validate and plan
    summary(protocol, timeline, worst) -> str   the one-screen summary (pure)
    write_plan(protocol, timeline, out_dir) -> PlanFiles     timeline.tsv + timeline.png
    render_png(protocol, timeline, path)        the run at a glance (matplotlib, Agg)

`validate PROTOCOL` exits 0 when the protocol is valid and its schedule passes the
pre-flight checks (with the protocol's seed, and the cuff timing of `--rig FILE` if given),
2 otherwise. `plan` writes DIR/timeline.tsv
and DIR/timeline.png and prints the design efficiency. An existing timeline.tsv is never
overwritten with a different timeline (exit 2: choose another --out); when it is identical
it is left as it is and the picture is drawn again.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
from dataclasses import dataclass
from pathlib import Path

from experiment.errors import InputError
from experiment.protocol.model import Protocol, load_protocol
from experiment.protocol.cuff_timing import CuffTiming
from experiment.protocol.rig import check_rig_for_protocol, load_rig
from experiment.protocol.schedule import Timeline, WorstCase, build_schedule, volumes_for, worst_case
from experiment.units import kpa_to_mmhg

DEFLATE_DRAW_S = 0.5   # the picture draws a deflation as a 0.5 s fall (not a prediction)


def _pressure(kpa: float) -> str:
    return f"{round(kpa, 2):g} kPa ({kpa_to_mmhg(kpa):.0f} mmHg)"


def summary(protocol: Protocol, timeline: Timeline, worst: WorstCase) -> str:
    """One screen: trials, run length, volumes, pressures, cuff exposure, cue mapping."""
    p, s, scan = protocol, protocol.safety, protocol.scan
    counts = ", ".join(f"{n} {c}" + (" [catch]" if p.trial_types[n].catch else "") for n, c in p.trials.counts.items())
    limit = p.trials.max_run_length
    runs = f"at most {limit} of a type in a row" if limit else "no limit on trials of a type in a row"
    levels = p.stimulation.levels
    shown = [f"{n} " if len(levels) > 1 else "" for n in levels]
    target = "; ".join(f"{label}{_pressure(lv.kpa) if lv.kpa is not None else lv.as_written + ' (at run time)'}"
                       for label, lv in zip(shown, levels.values()))
    if p.stimulation.calibrated:
        target += "; calibrated levels are planned with the ceiling for timing"
    fixed = [lv.kpa for lv in levels.values() if lv.kpa is not None]
    top = s.max_pressure_kpa if p.stimulation.calibrated else max(fixed)
    prange = f"0 to {'at most ' if p.stimulation.calibrated else ''}{_pressure(top)}"
    inflated = timeline.inflated_s
    lines = [
        f"{p.metadata.name} (task {p.metadata.task}, version pin {p.version_pin})",
        f"trials per run: {p.trials.n_trials} ({counts}); order seed {timeline.seed}, {runs}",
        f"run length: {timeline.run_length_s:g} s with seed {timeline.seed}; worst case {worst.run_length_s:g} s",
        f"volumes: {timeline.n_volumes_needed} needed (worst case "
        f"{volumes_for(worst.run_length_s, scan.tr_s)}), {scan.n_volumes} declared x TR {scan.tr_s:g} s = "
        f"{scan.duration_s:g} s; {scan.discard_pulses} pulses discarded before t0",
        f"pressure: {prange}; {'levels' if len(levels) > 1 else 'target'} {target}; ramp "
        f"{p.stimulation.rate_kpa_s:g} kPa/s "
        f"({worst.ramp_s:g} s); ceiling {_pressure(s.max_pressure_kpa)}",
        f"cuff inflated: {inflated:g} s = {100 * inflated / timeline.run_length_s:.1f}% of the run "
        f"(worst case {worst.inflation_per_run_s:g} s, limit {s.max_cumulative_inflation_per_run_s:g} s); "
        f"per stimulus at most {worst.inflation_per_stimulus_s:g} s (limit {s.max_inflation_per_stimulus_s:g} s)",
        f"worst cases counted with a slower cuff: ramp up to {worst.device_ramp_s:g} s, release up to "
        f"{worst.release_s:g} s after DEFLATE (rig file: cuff_timing)",
    ]
    if worst.deflated_between_s is not None:
        lines.append(f"deflated between stimuli: at least {worst.deflated_between_s:g} s "
                     f"(minimum {s.min_deflated_between_s:g} s)")
    if p.cue_mapping is not None:
        chosen = ", ".join(f"{r} = {c}" for r, c in timeline.cue_mapping.items())
        who = f"participant {timeline.participant}" if timeline.participant else "no participant given"
        lines.append(f"cue mapping: {len(p.cue_mapping.mappings)} mappings by {p.cue_mapping.select}; "
                     f"{who}: mapping {timeline.cue_mapping_index} ({chosen})")
    if p.scales:
        lines.append("rating scales: " + "; ".join(f"{n}: '{r.question}' {r.min} ({r.low_anchor}) to {r.max} "
                                                   f"({r.high_anchor})" for n, r in p.scales.items()))
    lines.append("paradigm checks: " + (", ".join(p.checks) if p.checks else "none asked for (the safety and "
                                                                              "timing rules always apply)"))
    if any(p.trial_types[n].catch and c > 0 for n, c in p.trials.counts.items()):
        lines.append("note: catch trials are on; they depart from the verified design")
    return "\n".join(lines)


# ---------------------------------------------------------------- the picture


def _cue_rgb(protocol: Protocol, name: str | None) -> tuple[float, float, float]:
    """A colour standing for a cue: its fill colour, or an image's mean opaque colour."""
    from matplotlib.colors import to_rgb

    if name is None:
        return (0.0, 0.0, 0.0)
    cue = protocol.cues[name]
    if cue.color:
        return to_rgb(cue.color)
    import numpy as np
    from PIL import Image

    assert cue.image_path is not None   # a cue without a colour is an image
    with Image.open(cue.image_path) as im:
        rgba = np.asarray(im.convert("RGBA"), dtype=float) / 255
    opaque = rgba[..., 3] > 0.5
    if not opaque.any():
        return (0.5, 0.5, 0.5)
    r, g, b = (float(x) for x in rgba[opaque][:, :3].mean(axis=0))
    return (r, g, b)


def render_png(protocol: Protocol, timeline: Timeline, path: Path) -> None:
    """Cues as coloured spans, the planned pressure, the scan's volumes, on one time axis."""
    from matplotlib.figure import Figure  # the Agg canvas, no pyplot state
    from matplotlib.patches import Patch

    end = max(timeline.run_length_s, timeline.n_volumes * timeline.tr_s)
    fig = Figure(figsize=(14, 4.6), dpi=100, layout="constrained")
    ax_cue, ax_p, ax_vol = fig.subplots(3, 1, sharex=True, height_ratios=[1.1, 2.2, 0.35])
    ax_cue.set_facecolor("#3a3a3a")
    roles = {cue: role for role, cue in timeline.cue_mapping.items()}
    seen: dict[str, tuple[float, float, float]] = {}
    for e in timeline.events:
        label = f"{e.cue} ({roles[e.cue]})" if e.cue in roles else (e.cue or "blank")
        rgb = seen.setdefault(label, _cue_rgb(protocol, e.cue))
        ax_cue.broken_barh([(e.onset_s, e.duration_s)], (0.1, 0.8), facecolors=[rgb], edgecolors="#202020",
                           linewidth=0.4)
        if e.kind == "rating":   # the rating scale is on screen: hatched, and marked above the cue row
            ax_cue.broken_barh([(e.onset_s, e.duration_s)], (0.1, 0.8), facecolors="none", edgecolors="#009e73",
                               hatch="///", linewidth=1.2)
            ax_cue.text(e.onset_s + e.duration_s / 2, 0.5, "rating", ha="center", va="center", fontsize=8,
                        color="#006b4f", fontweight="bold", bbox={"facecolor": "white", "edgecolor": "none", "pad": 1})
    for trial_start in (e.onset_s for e in timeline.events if e.trial and e.index and
                        timeline.events[e.index - 1].trial != e.trial):
        ax_cue.axvline(trial_start, color="#bbbbbb", linewidth=0.6)
    ax_cue.set_yticks([])
    ax_cue.set_ylabel("cue", rotation=0, ha="right", va="center")
    rating = [Patch(facecolor="white", edgecolor="#009e73", hatch="///", label="rating scale on screen")] \
        if any(e.kind == "rating" for e in timeline.events) else []
    ax_cue.legend(handles=[Patch(facecolor=c, edgecolor="#202020", label=n) for n, c in seen.items()] + rating,
                  loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8, frameon=False)
    title = (f"{protocol.metadata.name} - seed {timeline.seed}"
             + (f", participant {timeline.participant}" if timeline.participant else "")
             + f" - {timeline.run_length_s:g} s, {len(timeline.trial_order)} trials")
    ax_cue.set_title(title, fontsize=10, loc="left")

    target = timeline.target_kpa
    drawn = protocol.safety.max_pressure_kpa if target is None else target
    t, pkpa = [0.0], [0.0]
    for e in timeline.events:
        if e.cuff == "inflate":
            t += [e.onset_s, e.onset_s + e.ramp_s]
            pkpa += [0.0, drawn]
        elif e.cuff == "deflate":
            t += [e.onset_s, e.onset_s + DEFLATE_DRAW_S]
            pkpa += [drawn, 0.0]
    t.append(timeline.run_length_s)
    pkpa.append(0.0)
    ax_p.plot(t, pkpa, color="#c0392b", linewidth=1.4,
              label="planned pressure" + (" (calibrated: ceiling drawn)" if target is None else ""))
    ax_p.axhline(protocol.safety.max_pressure_kpa, color="black", linestyle="--", linewidth=0.8,
                 label=f"ceiling {protocol.safety.max_pressure_kpa:g} kPa")
    ax_p.set_ylim(0, protocol.safety.max_pressure_kpa * 1.15)
    ax_p.set_ylabel("kPa")
    ax_p.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8, frameon=False)

    vols = [i * timeline.tr_s for i in range(timeline.n_volumes)]
    ax_vol.vlines(vols, 0, 1, color="#2c3e50", linewidth=0.5)
    if timeline.run_length_s < end:
        ax_vol.axvspan(timeline.run_length_s, end, color="#dddddd")
    ax_vol.set_yticks([])
    ax_vol.set_ylabel("volumes", rotation=0, ha="right", va="center")
    ax_vol.set_xlim(0, end)
    ax_vol.set_xlabel(f"time from t0 (s); {timeline.n_volumes} volumes x TR {timeline.tr_s:g} s")
    fig.savefig(path)


# ---------------------------------------------------------------- files and commands


@dataclass(frozen=True)
class PlanFiles:
    tsv: Path
    png: Path
    tsv_unchanged: bool


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_plan(protocol: Protocol, timeline: Timeline, out_dir: Path) -> PlanFiles:
    """Write timeline.tsv (never replacing a different one) and timeline.png."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"{out_dir}: cannot create the output directory ({exc.strerror or exc})") from None
    if not out_dir.is_dir():
        raise InputError(f"{out_dir}: not a directory")
    tsv, png = out_dir / "timeline.tsv", out_dir / "timeline.png"
    text = timeline.to_tsv()
    unchanged = False
    if tsv.exists():
        try:
            unchanged = tsv.read_text(encoding="utf-8") == text
        except (OSError, UnicodeDecodeError):
            unchanged = False
        if not unchanged:
            raise InputError(f"{tsv} exists and holds a different timeline; refusing to overwrite it "
                             f"(choose another --out directory, or delete the file)")
    try:
        if not unchanged:
            _write_atomic(tsv, text)
        render_png(protocol, timeline, png)
    except OSError as exc:
        raise InputError(f"{out_dir}: cannot write the plan ({exc.strerror or exc})") from None
    return PlanFiles(tsv=tsv, png=png, tsv_unchanged=unchanged)


def modelled(protocol: Protocol) -> tuple[str, ...]:
    """The protocol's task regressors: every bids_trial_type of a trial type that is run."""
    return tuple(dict.fromkeys(ph.bids_trial_type for name, tt in protocol.trial_types.items()
                               if protocol.trials.counts[name] > 0 for ph in tt.phases if ph.bids_trial_type))


@dataclass(frozen=True)
class Search:
    """The best of several trial orders (seeds) for the protocol's design, and the gain over chance."""

    seed: int
    score: float
    median_score: float
    n: int
    first_seed: int

    def report(self) -> str:
        gain = (self.score / self.median_score - 1) * 100 if self.median_score > 0 else math.inf
        return (f"searched {self.n} orders (seeds {self.first_seed} to {self.first_seed + self.n - 1}): the best is "
                f"seed {self.seed} (score {self.score:.4g}; median of the orders tried {self.median_score:.4g}, "
                f"{gain:+.1f}%); run it with --seed {self.seed}")


def search_orders(protocol: Protocol, *, first_seed: int, n: int, participant: str | None,
                  timing: CuffTiming) -> Search:
    """Try `n` seeds (trial order and jitter) and keep the most efficient design: the worst declared
    contrast's efficiency, or 1 / the largest VIF without contrasts. Reproducible: a seed is the order."""
    from experiment.protocol.design import design_efficiency  # local: nilearn takes seconds to import

    if not 1 <= n <= 10_000:
        raise InputError(f"--search must be from 1 to 10000 orders, got {n}")
    scores = []
    for seed in range(first_seed, first_seed + n):
        timeline = build_schedule(protocol, seed=seed, participant=participant, timing=timing)
        eff = design_efficiency(timeline, regressors=modelled(protocol), contrasts=protocol.contrasts)
        scores.append((eff.score, -seed))
    best, neg_seed = max(scores)
    return Search(seed=-neg_seed, score=best, median_score=statistics.median(s for s, _ in scores), n=n,
                  first_seed=first_seed)


def command(args: argparse.Namespace) -> int:
    """`cuedpain validate PROTOCOL [--rig FILE]` and
    `cuedpain plan PROTOCOL [--seed N] [--participant ID] [--rig FILE] [--search N] --out DIR`.

    The rig file's `cuff_timing` (default: `CuffTiming()`) is what the inflation checks count with.
    """
    protocol = load_protocol(args.protocol)
    rig_path = getattr(args, "rig", None)
    rig = load_rig(rig_path)
    if rig_path is not None:
        check_rig_for_protocol(protocol, rig)    # as a run would: screen facts for deg/cm cues, one level on a gated cuff
    timing = rig.cuff_timing
    if args.command == "validate":
        timeline = build_schedule(protocol, timing=timing)
        print(f"{args.protocol}: valid")
        print(summary(protocol, timeline, worst_case(protocol, timing=timing)))
        return 0
    seed = args.seed if args.seed is not None else protocol.seed
    search = None
    if getattr(args, "search", None):
        search = search_orders(protocol, first_seed=seed, n=args.search, participant=args.participant, timing=timing)
        seed = search.seed
    timeline = build_schedule(protocol, seed=seed, participant=args.participant, timing=timing)
    files = write_plan(protocol, timeline, Path(args.out))
    from experiment.protocol.design import design_efficiency  # local: nilearn takes seconds to import

    print(summary(protocol, timeline, worst_case(protocol, timing=timing)))
    print(f"kept {files.tsv} (it already holds this timeline)" if files.tsv_unchanged else f"wrote {files.tsv}")
    print(f"wrote {files.png}")
    if search is not None:
        print(search.report())
    print(design_efficiency(timeline, regressors=modelled(protocol), contrasts=protocol.contrasts).report())
    return 0
