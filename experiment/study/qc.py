"""A run's QC figures and flags (pure): timing, pulses, TR, stimulation, inflation time.

The figures come from the project's own derivation (`experiment.outputs.derive`:
`timing_quality`, the events and ratings) and pulse checker
(`experiment.scanner.pulsecheck.PulseMonitor`, as the runner uses it live); this module
only adds the inflation time of each stimulus, counted as the cuff interlock counts it
(inflate command written to deflate or vent written), and turns figures into flags with
the thresholds below.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

from experiment.outputs.derive import INFLATED_CUFF, EventRow, RunData, timing_quality
from experiment.scanner.pulsecheck import PulseMonitor
from experiment.study.model import Flag, Limits, Rating, Stimulus, Timing

#: a cue more than this many frames from its planned time is flagged (the runner aims within half a frame)
ONSET_ERROR_FRAMES = 1.0
#: refresh assumed when the log has no display record
DEFAULT_FRAME_MS = 1000.0 / 60.0
#: measured TR further than this fraction from the protocol's TR (0.1 %: 0.5 s over 240 volumes of 2 s)
TR_TOLERANCE = 0.001
#: measured vs commanded pressure: the protocol's compliance margin, or this when unknown (kPa)
DEFAULT_MARGIN_KPA = 2.0


def _num(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def timing_of(data: RunData, *, tr_sidecar_s: float | None) -> Timing:
    """Timing, pulse and TR figures of a run."""
    q = timing_quality(data)
    frame_s = _num((data.display or {}).get("frame_s"))
    extra = 0
    tr_measured = None
    if data.tr_s:
        monitor = PulseMonitor(data.tr_s, n_expected=q.volumes_expected, capacity=len(data.pulses) + 16)
        for p in data.pulses:
            if p.onset_s is not None and p.onset_s >= -1e-6:
                monitor.feed(p.t)
        summary = monitor.summary()
        extra, tr_measured = summary.n_extra, summary.tr_mean_s
    return Timing(
        n_onsets=q.n_onsets, onset_error_median_ms=q.median_error_ms, onset_error_p95_ms=q.p95_abs_error_ms,
        onset_error_max_ms=q.max_abs_error_ms, frame_ms=frame_s * 1000 if frame_s else None,
        dropped_frames=q.dropped_frames, volumes_expected=q.volumes_expected, volumes_received=q.volumes_received,
        missed_pulses=q.missed_pulses, extra_pulses=extra, tr_s=data.tr_s, tr_measured_s=tr_measured,
        tr_sidecar_s=tr_sidecar_s, safety=tuple(str(s.get("reason") or "?") for s in data.safety),
        warnings=tuple(str(w.get("code") or "?") for w in data.warnings))


def inflation_times(data: RunData, cuff_commands: Iterable[Mapping[str, object]]) -> dict[int, float | None]:
    """trial -> seconds from its inflate command's write to the next deflate or vent write (None: none logged).

    `cuff_commands`: the log's `cuff_cmd` records (RunData does not keep them)."""
    inflate_i = {p.i: p.trial for p in data.phases if p.cuff == "inflate"}
    commands = sorted((c for c in cuff_commands if c.get("ok") is not False),
                      key=lambda c: _num(c.get("t_write")) or 0.0)
    out: dict[int, float | None] = {}
    start: tuple[int, float] | None = None
    for c in commands:
        t = _num(c.get("t_write"))
        purpose = str(c.get("purpose") or "")
        if t is None:
            continue
        i = c.get("i")
        if purpose == "stimulate" and isinstance(i, int) and i in inflate_i:
            if start is None or start[0] != inflate_i[i]:
                start = (inflate_i[i], t)
            else:
                start = (start[0], t)       # the SET after its RATE: the stimulus starts at the SET
            out.setdefault(inflate_i[i], None)
        elif start is not None and (purpose == "deflate" or purpose.startswith("vent")):
            out[start[0]] = t - start[1]
            start = None
    return out


@dataclass(frozen=True)
class PressureRow:
    """The pressure columns of one events.tsv row."""

    trial: int
    cuff: str
    target_kpa: float | None
    measured_kpa: float | None
    peak_kpa: float | None

    @classmethod
    def of(cls, e: EventRow) -> "PressureRow":
        return cls(trial=e.trial, cuff=e.cuff, target_kpa=e.target_pressure_kpa,
                   measured_kpa=e.measured_pressure_kpa, peak_kpa=e.peak_pressure_kpa)


def stimuli_of(data: RunData, events: Sequence[PressureRow],
               cuff_commands: Iterable[Mapping[str, object]]) -> tuple[Stimulus, ...]:
    """Every inflated trial: target, measured (from `events`, the run's events.tsv rows) and inflation time."""
    inflated = inflation_times(data, cuff_commands)
    trial_type = {p.trial: p.trial_type for p in data.phases if p.trial > 0}
    targets: dict[int, float] = {}
    for p in data.phases:
        if p.cuff in INFLATED_CUFF and p.target_kpa is not None:
            targets[p.trial] = max(targets.get(p.trial, 0.0), p.target_kpa)
    out = []
    given = set(inflated) | {e.trial for e in events if e.cuff in INFLATED_CUFF}   # stimuli that were started
    for trial in sorted(given):
        mine = [e for e in events if e.trial == trial and e.cuff in INFLATED_CUFF]
        measured = [e.measured_kpa for e in mine if e.measured_kpa is not None]
        deviations = [abs(e.measured_kpa - e.target_kpa) for e in mine
                      if e.measured_kpa is not None and e.target_kpa is not None]
        peaks = [e.peak_kpa for e in mine if e.peak_kpa is not None]
        out.append(Stimulus(trial=trial, trial_type=trial_type.get(trial, ""), target_kpa=targets.get(trial),
                            measured_kpa=sum(measured) / len(measured) if measured else None,
                            deviation_kpa=max(deviations) if deviations else None,
                            peak_kpa=max(peaks) if peaks else None, inflated_s=inflated.get(trial)))
    return tuple(out)


def ratings_of(data: RunData) -> tuple[Rating, ...]:
    """Every answered rating of the run with its trial's type and its phase."""
    trial_type = {p.trial: p.trial_type for p in data.phases if p.trial > 0}
    return tuple(Rating(trial=r.trial, trial_type=trial_type.get(r.trial, ""), phase=r.phase or "rating",
                        rating=r.rating) for r in data.ratings if r.rating is not None)


def _ms(x: float) -> str:
    return f"{x:.1f} ms"


def _codes(codes: Sequence[str]) -> str:
    counts: dict[str, int] = {}
    for c in codes:
        counts[c] = counts.get(c, 0) + 1
    return ", ".join(f"{c}" + (f" x{n}" if n > 1 else "") for c, n in counts.items())


def run_flags(timing: Timing | None, stimuli: Sequence[Stimulus], limits: Limits, *, status: str,
              log_cut: bool, bids_problem: str | None) -> tuple[Flag, ...]:
    """The run's QC flags, each with the figure and the threshold it crossed."""
    flags: list[Flag] = []
    if log_cut:
        flags.append(Flag("log_cut", "the log's last line was cut off (killed while writing)"))
    if bids_problem:
        flags.append(Flag("bids_outputs", bids_problem))
    if timing is not None:
        frame = timing.frame_ms or DEFAULT_FRAME_MS
        if timing.onset_error_max_ms is not None and timing.onset_error_max_ms > ONSET_ERROR_FRAMES * frame:
            flags.append(Flag("onset_error", f"a cue {_ms(timing.onset_error_max_ms)} off its planned time "
                                             f"(limit {ONSET_ERROR_FRAMES:g} frame, {_ms(frame)})"))
        if timing.dropped_frames:
            flags.append(Flag("dropped_frames", f"{timing.dropped_frames} dropped frame(s)"))
        if timing.missed_pulses:
            flags.append(Flag("missed_pulses", f"{timing.missed_pulses} scanner pulse(s) missing (gaps over 1.5 TR)"))
        if timing.extra_pulses:
            flags.append(Flag("extra_pulses", f"{timing.extra_pulses} extra pulse(s) (closer than 0.5 TR)"))
        if status == "completed" and timing.volumes_expected is not None and \
                timing.volumes_received + timing.missed_pulses < timing.volumes_expected:
            flags.append(Flag("short_of_volumes", f"{timing.volumes_received} of {timing.volumes_expected} volumes' "
                                                  f"pulses received"))
        if timing.tr_s and timing.tr_measured_s is not None and \
                abs(timing.tr_measured_s - timing.tr_s) > TR_TOLERANCE * timing.tr_s:
            flags.append(Flag("tr_mismatch", f"measured TR {timing.tr_measured_s:.4f} s, protocol TR {timing.tr_s:g} s "
                                             f"(tolerance {TR_TOLERANCE:.1%})"))
        if timing.tr_s and timing.tr_sidecar_s is not None and abs(timing.tr_sidecar_s - timing.tr_s) > 1e-9:
            flags.append(Flag("tr_sidecar", f"protocol TR {timing.tr_s:g} s, but the task sidecar says "
                                            f"RepetitionTime {timing.tr_sidecar_s:g} s"))
        if timing.safety:
            flags.append(Flag("safety", f"safety event(s): {_codes(timing.safety)}"))
        if timing.warnings:
            flags.append(Flag("warnings", f"warning(s): {_codes(timing.warnings)}"))
    margin = limits.margin_kpa if limits.margin_kpa is not None else DEFAULT_MARGIN_KPA
    off = [s for s in stimuli if s.deviation_kpa is not None and s.deviation_kpa > margin]
    if off:
        worst = max(off, key=lambda s: s.deviation_kpa or 0.0)
        flags.append(Flag("pressure_deviation", f"{len(off)} stimulus(es) held off target by more than {margin:g} kPa "
                                                f"(trial {worst.trial}: {worst.deviation_kpa:.2f} kPa)"))
    if status == "completed":
        unheld = [s.trial for s in stimuli if s.target_kpa is not None and s.measured_kpa is None]
        if unheld:
            flags.append(Flag("pressure_not_held", f"no measured pressure at target in trial(s) "
                                                   f"{', '.join(map(str, unheld))}"))
    times = [s.inflated_s for s in stimuli if s.inflated_s is not None]
    if limits.stimulus_s is not None and times and max(times) > limits.stimulus_s:
        flags.append(Flag("inflation_limit", f"a stimulus inflated {max(times):.2f} s (limit {limits.stimulus_s:g} s)"))
    if limits.run_s is not None and sum(times) > limits.run_s:
        flags.append(Flag("inflation_limit", f"inflated {sum(times):.2f} s in the run (limit {limits.run_s:g} s)"))
    return tuple(flags)
