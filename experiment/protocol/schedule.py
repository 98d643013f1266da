"""Protocol + seed + participant -> the run's timeline, and the checks that refuse it. Pure.

Public API:
    build_schedule(protocol, *, seed=None, participant=None, pressure_kpa=None, levels_kpa=None,
                   timing=CuffTiming()) -> Timeline
    worst_case(protocol, *, pressure_kpa=None, levels_kpa=None, timing=CuffTiming()) -> WorstCase
                                                               limits over every jitter draw
    levels_kpa_of(protocol, *, pressure_kpa=None, levels_kpa=None) -> {level: kPa or None}
    volumes_for(run_length_s, tr_s) -> int                    volumes that cover a run
    check_timeline(timeline, protocol, *, timing=CuffTiming()) -> None   pre-flight checks of one timeline
    choose_cue_mapping(protocol, participant) -> (index, mapping)
    phase_of(protocol, event) -> Phase | None                  the protocol phase an event came from
    Timeline, PlannedEvent (fields as in docs/architecture.md "The timeline", plus `kind`), WorstCase
    CuffTiming                                                 how much slower than ideal a real cuff is

Determinism: the same protocol, seed, participant and pressures give the same Timeline and
byte-identical `to_tsv()`. Randomness comes only from `random.Random(...).random()` (its
sequence is guaranteed stable across Python versions); shuffles and draws are built on it
here. Each stream is seeded from SHA-256 of (seed, purpose), so trial order and every
phase's jitter are independent; the participant label only chooses the cue mapping.
All times are whole milliseconds inside; seconds at the edges.

Pre-flight: `build_schedule` first checks the protocol's worst case (every duration at its
longest or shortest, whichever is worse for the check: run length vs the declared scan,
inflation per stimulus and per run, deflated time between stimuli), then checks the
timeline it built. Either refusal is an InputError naming the file and the field.

The inflation checks count what the interlocks count, with a cuff slower than ideal
(`CuffTiming`): per run, SET to DEFLATE of every stimulus (the host supervisor's count),
the ramp stretched where a phase waits for TARGET_REACHED; per stimulus, that plus the
release after DEFLATE, which the device's own time limit (time at 1 kPa or more) also counts.
The timeline itself (onsets, `ramp_s`) keeps the ideal prediction target / rate.
"""

from __future__ import annotations

import hashlib
import math
import random
import re
from dataclasses import dataclass, field, fields
from typing import Iterable, Iterator, Mapping, TypeVar

from experiment.protocol.cuff_timing import CuffTiming
from experiment.errors import InputError
from experiment.protocol.identifiers import check_label
from experiment.protocol.model import (FIXATION, ChoiceDuration, Duration, FixedDuration, Phase, Protocol,
                                 TrialType, TruncExpDuration, UniformDuration, to_ms)

T = TypeVar("T")
COLUMNS = ("index", "trial", "trial_type", "phase", "onset_s", "duration_s", "cue", "cuff", "target_kpa",
           "rate_kpa_s", "timed_from", "ramp_s", "bids_trial_type", "kind", "level", "scale")


def volumes_for(run_length_s: float, tr_s: float) -> int:
    """Volumes needed to cover a run (a whole number of TRs, at least the run)."""
    return math.ceil(round(run_length_s / tr_s, 6))


@dataclass(frozen=True)
class PlannedEvent:
    """One phase of one trial (or the lead-in / tail), planned relative to t0."""

    index: int                    # 0-based position in the timeline
    trial: int                    # 1-based; 0 for lead_in and tail
    trial_type: str | None        # None for lead_in and tail
    phase: str
    onset_s: float
    duration_s: float             # ramp_s included when timed_from == target_reached
    cue: str | None               # the cue drawn (after cue mapping); None = blank screen
    cuff: str                     # none | inflate | hold | deflate (command at phase start)
    target_kpa: float | None      # inflate/hold: the target (None: calibrated, not yet known); else 0.0
    rate_kpa_s: float | None      # inflate phases only
    timed_from: str               # onset | target_reached
    ramp_s: float                 # inflate phases: predicted ramp time target / rate; else 0.0
    bids_trial_type: str | None
    kind: str = "cue"             # cue | rating (the phase's kind; lead_in and tail: cue)
    level: str | None = None      # inflate/hold: the pressure level (stimulation.levels)
    scale: str | None = None      # rating phases: the rating scale shown
    cuff_at: str = "planned"      # planned | flip: when the cuff command goes out

    @property
    def end_s(self) -> float:
        return round(self.onset_s + self.duration_s, 3)

    def as_dict(self) -> dict[str, object]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True)
class Timeline:
    """The run at a glance: every event, and what the schedule was built from."""

    events: tuple[PlannedEvent, ...]
    run_length_s: float
    n_volumes_needed: int
    n_volumes: int                    # declared in the protocol
    tr_s: float
    seed: int
    participant: str | None
    cue_mapping: dict[str, str]       # role -> cue name ({} without counterbalancing)
    cue_mapping_index: int | None     # which of protocol.cue_mapping.mappings (None without one)
    trial_order: tuple[str, ...]
    level_kpa: dict[str, float | None]  # pressure of every level (None: calibrated and not given)

    @property
    def target_kpa(self) -> float | None:
        """The pressure of a protocol with one level (None: calibrated and not given, or several levels)."""
        return next(iter(self.level_kpa.values())) if len(self.level_kpa) == 1 else None

    def to_tsv(self) -> str:
        """Tab-separated, one row per event, 'n/a' for empty cells; a calibrated target not yet
        known shows as 'calibrated'."""
        lines = ["\t".join(COLUMNS)]
        for e in self.events:
            row = []
            for name in COLUMNS:
                v = getattr(e, name)
                if v is None:
                    v = "calibrated" if name == "target_kpa" and e.cuff in ("inflate", "hold") else "n/a"
                elif isinstance(v, float):
                    v = f"{v:.3f}"
                row.append(str(v))
            lines.append("\t".join(row))
        return "\n".join(lines) + "\n"

    def stimuli(self) -> list[tuple[PlannedEvent, PlannedEvent]]:
        """(inflate event, deflate event) of every stimulus, in order."""
        out, start = [], None
        for e in self.events:
            if e.cuff == "inflate":
                start = e
            elif e.cuff == "deflate" and start is not None:
                out.append((start, e))
                start = None
        return out

    def inflation_intervals(self) -> list[tuple[float, float]]:
        """(inflate onset, deflate onset) of every stimulus, in seconds from t0."""
        return [(a.onset_s, b.onset_s) for a, b in self.stimuli()]

    @property
    def inflated_s(self) -> float:
        return round(sum(b - a for a, b in self.inflation_intervals()), 3)




@dataclass(frozen=True)
class WorstCase:
    """Limits of a protocol over every possible draw of its jitter.

    The inflation figures are modelled with a `CuffTiming` (see the module doc); the run
    length and the deflated time between stimuli are the plan's.
    """

    run_length_s: float               # every duration at its longest
    inflation_per_stimulus_s: float   # longest single stimulus: SET to DEFLATE, then the release
    inflation_per_run_s: float        # longest total SET to DEFLATE in one run (the host's count)
    deflated_between_s: float | None  # shortest deflated time between two stimuli (None: one stimulus)
    ramp_s: float                     # predicted ramp of the highest level (the ceiling if calibrated)
    device_ramp_s: float              # the longest the cuff may take for that ramp (CuffTiming)
    release_s: float                  # the longest the cuff may take to release from that pressure
    levels: dict[str, tuple[float, float, float]] = field(default_factory=dict)  # level -> (ramp, device ramp, release) s


# ---------------------------------------------------------------- randomness


def _rng(seed: int, purpose: str) -> random.Random:
    digest = hashlib.sha256(f"cuedpain/{seed}/{purpose}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def _index(rng: random.Random, n: int) -> int:
    return min(int(rng.random() * n), n - 1)


def _shuffled(rng: random.Random, items: list[T]) -> list[T]:
    out = list(items)
    for i in range(len(out) - 1, 0, -1):
        j = _index(rng, i + 1)
        out[i], out[j] = out[j], out[i]
    return out


def _truncexp_scale(width: float, mean: float) -> float:
    """Scale s of an exponential truncated to [0, width] whose mean is `mean` (0 < mean < width/2)."""
    def truncated_mean(s: float) -> float:
        ratio = width / s
        return s if ratio > 700 else s - width / math.expm1(ratio)

    lo, hi = width * 1e-6, width * 1e6
    for _ in range(200):
        mid = math.sqrt(lo * hi)
        if truncated_mean(mid) < mean:
            lo = mid
        else:
            hi = mid
    return math.sqrt(lo * hi)


def _draws_ms(d: Duration, n: int, rng: random.Random) -> list[int]:
    """n durations (ms) from one phase's distribution, in trial order."""
    if isinstance(d, FixedDuration):
        return [to_ms(d.value_s)] * n
    if isinstance(d, ChoiceDuration):
        deck: list[int] = []
        while len(deck) < n:
            deck += _shuffled(rng, [to_ms(v) for v in d.values_s])
        return deck[:n]
    lo, hi, step = to_ms(d.min_s), to_ms(d.max_s), to_ms(d.step_s)
    k = (hi - lo) // step
    if isinstance(d, UniformDuration):
        return [lo + step * _index(rng, k + 1) for _ in range(n)]
    assert isinstance(d, TruncExpDuration)
    width = (hi - lo) / 1000
    scale = _truncexp_scale(width, d.mean_s - d.min_s)
    out = []
    for _ in range(n):
        e = -scale * math.log1p(-rng.random() * -math.expm1(-width / scale))
        out.append(lo + step * min(k, int(math.floor(e * 1000 / step + 0.5))))
    return out


def _worst_total_ms(d: Duration, n: int, *, longest: bool) -> int:
    """The largest (or smallest) possible sum of n draws."""
    if isinstance(d, ChoiceDuration):
        values = sorted((to_ms(v) for v in d.values_s), reverse=longest)
        full, rest = divmod(n, len(values))
        return full * sum(values) + sum(values[:rest])
    return n * (to_ms(d.max_s) if longest else to_ms(d.min_s))


# ---------------------------------------------------------------- trial order


def _can_finish(remaining: dict[str, int], last: str | None, run: int, limit: int) -> bool:
    """Whether the remaining trials can follow a run of `run` x `last` with at most `limit` in a row."""
    total = sum(remaining.values())
    for name, c in remaining.items():
        others = total - c
        room = (limit - run) + limit * others if name == last else limit * (others + 1)
        if c > room:
            return False
    return True


def _trial_order(counts: dict[str, int], limit: int | None, rng: random.Random) -> list[str]:
    """A random order of the trials (uniform over orders when there is no limit)."""
    remaining = dict(counts)
    order: list[str] = []
    last, run = None, 0
    for _ in range(sum(counts.values())):
        candidates = []
        for name, c in remaining.items():
            if c == 0:
                continue
            new_run = run + 1 if name == last else 1
            if limit is not None:
                after = dict(remaining, **{name: c - 1})
                if new_run > limit or not _can_finish(after, name, new_run, limit):
                    continue
            candidates.append(name)
        if not candidates:  # pragma: no cover - the feasibility check makes this unreachable
            raise RuntimeError(f"trial order: dead end after {order}")
        x = rng.random() * sum(remaining[n] for n in candidates)
        for name in candidates:
            x -= remaining[name]
            if x < 0:
                break
        run = run + 1 if name == last else 1
        last = name
        remaining[name] -= 1
        order.append(name)
    return order


# ---------------------------------------------------------------- cue mapping and pressure


def choose_cue_mapping(protocol: Protocol, participant: str | None) -> tuple[int | None, dict[str, str]]:
    """Which cue mapping a participant gets; mapping 0 when no participant is given."""
    m = protocol.cue_mapping
    if participant is not None:
        check_label(participant, "participant")
    if m is None:
        return None, {}
    if participant is None:
        return 0, dict(m.mappings[0])
    k = len(m.mappings)
    if m.select == "participant_hash":
        index = int.from_bytes(hashlib.sha256(participant.encode()).digest()[:8], "big") % k
    elif m.select == "table":
        if participant not in m.assignments:
            raise InputError(f"sub-{participant} is not in the counterbalancing table {m.table} "
                             f"(cue_mapping.table); add a row for them (participant_id, mapping)")
        index = m.assignments[participant]
    else:
        digits = re.search(r"(\d+)$", participant)
        if digits is None:
            raise InputError(f"participant {participant!r} does not end in a number, which "
                             f"cue_mapping.select: participant_number needs (e.g. 'P07')")
        index = (int(digits.group(1)) - 1) % k
    return index, dict(m.mappings[index])


def levels_kpa_of(protocol: Protocol, *, pressure_kpa: float | None = None,
                  levels_kpa: Mapping[str, float] | None = None) -> dict[str, float | None]:
    """The pressure of every level: fixed by the protocol, or given for the calibrated ones
    (`levels_kpa`; `pressure_kpa` is the shorthand for a protocol with one calibrated level).
    A calibrated level not given stays None (the ceiling stands in for its timing)."""
    st, where, ceiling = protocol.stimulation, protocol.where, protocol.safety.max_pressure_kpa
    given = dict(levels_kpa or {})
    if pressure_kpa is not None:
        calibrated = [n for n, lv in st.levels.items() if lv.calibrated]
        if len(st.levels) != 1 or not calibrated:
            raise where.error(("stimulation", "target"), f"the protocol gives its pressures ({st.as_written}); "
                                                         f"one calibrated pressure applies only to target: calibrated")
        given[calibrated[0]] = pressure_kpa
    out: dict[str, float | None] = {}
    for name, lv in st.levels.items():
        value = given.pop(name, None)
        if lv.kpa is not None:
            if value is not None:
                raise where.error(("stimulation", "levels", name), f"level {name!r} is fixed by the protocol "
                                                                   f"({lv.as_written}); it takes no calibrated pressure")
            out[name] = lv.kpa
            continue
        if value is not None:
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                raise InputError(f"calibrated pressure of level {name!r} must be a number of kPa > 0, got {value!r}")
            value = round(value, 3)
            if value > ceiling:
                raise where.error(("safety", "max_pressure"), f"the participant's pressure for level {name!r}, "
                                                              f"{value:g} kPa, is above safety.max_pressure "
                                                              f"({ceiling:g} kPa)")
        out[name] = value
    if given:
        raise InputError(f"no pressure level named {', '.join(given)}; levels: {', '.join(st.levels)}")
    return out


def _stimulus_kpa(protocol: Protocol, level_kpa: float | None) -> float:
    """The pressure a stimulus reaches; the ceiling for a calibrated level not yet known."""
    return protocol.safety.max_pressure_kpa if level_kpa is None else level_kpa


def _ramp_ms(protocol: Protocol, level_kpa: float | None) -> int:
    """Predicted ramp time; the ceiling stands in for a calibrated level not yet known."""
    return to_ms(_stimulus_kpa(protocol, level_kpa) / protocol.stimulation.rate_kpa_s)


# ---------------------------------------------------------------- worst case over the jitter


def _stimulus_spans(tt: TrialType) -> list[tuple[int, int]]:
    """(inflate phase index, deflate phase index) of each stimulus in a trial type."""
    spans, start = [], None
    for i, p in enumerate(tt.phases):
        if p.cuff == "inflate":
            start = i
        elif p.cuff == "deflate" and start is not None:
            spans.append((start, i))
            start = None
    return spans


def _phase_bound_ms(p: Phase, ramp_ms: int, *, longest: bool) -> int:
    base = to_ms(p.duration.max_s if longest else p.duration.min_s)
    return base + (ramp_ms if p.timed_from == "target_reached" else 0)


def _set_to_deflate_ms(phases: Iterable[Phase], device_ramp_ms: int, timing: CuffTiming) -> int:
    """Longest SET to DEFLATE of one stimulus (its phases from inflate to before deflate): a
    phase timed from target_reached waits for the device's real ramp, not the predicted one."""
    return sum(_phase_bound_ms(p, device_ramp_ms, longest=True) for p in phases) + timing.slack_ms


@dataclass(frozen=True)
class _LevelTiming:
    """One level's ramp as planned (`ramp`), as a slow cuff may take it (`device_ramp`), and its release (ms)."""

    ramp: int
    device_ramp: int
    release: int


def _level_timings(protocol: Protocol, kpa: Mapping[str, float | None], timing: CuffTiming) -> dict[str, _LevelTiming]:
    rate = protocol.stimulation.rate_kpa_s
    return {name: _LevelTiming(_ramp_ms(protocol, p), timing.ramp_ms(_stimulus_kpa(protocol, p), rate),
                               timing.release_ms(_stimulus_kpa(protocol, p), rate)) for name, p in kpa.items()}


def _span_level(tt: TrialType, a: int) -> str:
    level = tt.phases[a].level
    assert level is not None, "every inflate phase names its level (the protocol loader resolves it)"
    return level


def worst_case(protocol: Protocol, *, pressure_kpa: float | None = None, levels_kpa: Mapping[str, float] | None = None,
               timing: CuffTiming = CuffTiming()) -> WorstCase:
    """Run length and cuff exposure at their worst over every possible jitter draw; each stimulus
    at its own level's pressure (the ceiling for a calibrated level not given)."""
    lt = _level_timings(protocol, levels_kpa_of(protocol, pressure_kpa=pressure_kpa, levels_kpa=levels_kpa), timing)
    shortest_ramp = min(t.ramp for t in lt.values())    # for the gaps: the shortest is the worst
    counts = protocol.trials.counts
    used = [tt for name, tt in protocol.trial_types.items() if counts[name] > 0]
    run_ms = to_ms(protocol.scan.lead_in_s) + to_ms(protocol.scan.tail_s)
    per_stim, per_run, gaps = 0, 0, []
    for tt in used:
        n = counts[tt.name]
        spans = _stimulus_spans(tt)
        longest_ramp = max((lt[_span_level(tt, a)].ramp for a, _ in spans), default=0)
        for p in tt.phases:
            run_ms += _worst_total_ms(p.duration, n, longest=True)
            run_ms += n * longest_ramp if p.timed_from == "target_reached" else 0
        for a, b in spans:
            t = lt[_span_level(tt, a)]
            longest = _set_to_deflate_ms(tt.phases[a:b], t.device_ramp, timing)
            per_stim = max(per_stim, longest + t.release)
            per_run += n * longest
        for (_, b), (a2, _) in zip(spans, spans[1:]):
            gaps.append(sum(_phase_bound_ms(p, shortest_ramp, longest=False) for p in tt.phases[b:a2]))
    heads = {tt.name: sum(_phase_bound_ms(p, shortest_ramp, longest=False)
                          for p in tt.phases[:_stimulus_spans(tt)[0][0]]) for tt in used if tt.inflates}
    tails = {tt.name: sum(_phase_bound_ms(p, shortest_ramp, longest=False)
                          for p in tt.phases[_stimulus_spans(tt)[-1][1]:]) for tt in used if tt.inflates}
    for before, tail in tails.items():
        for after, head in heads.items():
            if before != after or counts[before] > 1:
                gaps.append(tail + head)
    top = max(lt.values(), key=lambda t: t.ramp)
    return WorstCase(run_length_s=run_ms / 1000, inflation_per_stimulus_s=per_stim / 1000,
                     inflation_per_run_s=per_run / 1000, deflated_between_s=min(gaps) / 1000 if gaps else None,
                     ramp_s=top.ramp / 1000, device_ramp_s=top.device_ramp / 1000, release_s=top.release / 1000,
                     levels={name: (t.ramp / 1000, t.device_ramp / 1000, t.release / 1000) for name, t in lt.items()})


def _check_worst_case(protocol: Protocol, wc: WorstCase, timing: CuffTiming) -> None:
    s, scan, where = protocol.safety, protocol.scan, protocol.where
    if to_ms(wc.run_length_s) > to_ms(scan.duration_s):
        need = volumes_for(wc.run_length_s, scan.tr_s)
        raise where.error(("scan", "n_volumes"),
                          f"the run can last up to {wc.run_length_s:g} s (every jittered duration at its longest) "
                          f"but {scan.n_volumes} volumes x {scan.tr_s:g} s = {scan.duration_s:g} s are declared; "
                          f"declare at least {need} volumes or shorten the protocol")
    used = [tt for name, tt in protocol.trial_types.items() if protocol.trials.counts[name] > 0]
    limit_ms = to_ms(s.max_inflation_per_stimulus_s)
    for tt in used:
        for a, b in _stimulus_spans(tt):
            ramp_s, device_ramp_s, release_s = wc.levels[_span_level(tt, a)]
            phases, release = tt.phases[a:b], to_ms(release_s)
            held = _set_to_deflate_ms(phases, to_ms(device_ramp_s), timing)
            if held + release > limit_ms:
                waits = phases[0].timed_from == "target_reached"
                ramp = (f"the ramp counted as up to {device_ramp_s:g} s, not {ramp_s:g} s, since "
                        f"{phases[0].name} waits for the target; " if waits else "")
                raise where.error(("trial_types", tt.name, "phases", a),
                                  f"the cuff can hold air {(held + release) / 1000:g} s (phases {phases[0].name} to "
                                  f"{phases[-1].name} at their longest, {ramp}SET to DEFLATE up to {held / 1000:g} s "
                                  f"plus up to {release_s:g} s to release), over "
                                  f"safety.max_inflation_per_stimulus_s ({s.max_inflation_per_stimulus_s:g} s)")
    if to_ms(wc.inflation_per_run_s) > to_ms(s.max_cumulative_inflation_per_run_s):
        waits = any(p.timed_from == "target_reached" for tt in used for p in tt.phases)
        ramp = f", the ramp counted as up to {wc.device_ramp_s:g} s where a phase waits for it" if waits else ""
        raise where.error(("safety", "max_cumulative_inflation_per_run_s"),
                          f"the cuff can be inflated {wc.inflation_per_run_s:g} s in one run (every stimulus at its "
                          f"longest from SET to DEFLATE{ramp}), over this limit "
                          f"({s.max_cumulative_inflation_per_run_s:g} s); use fewer or shorter stimuli")
    if wc.deflated_between_s is not None and wc.deflated_between_s < s.min_deflated_between_s:
        raise where.error(("safety", "min_deflated_between_s"),
                          f"two stimuli can come {wc.deflated_between_s:g} s apart (deflate to next inflate, every "
                          f"duration in between at its shortest), under this minimum "
                          f"({s.min_deflated_between_s:g} s); lengthen the rest or anticipation phases")


# ---------------------------------------------------------------- the timeline and its checks


def _modelled_ms(inflate: PlannedEvent, planned_ms: int, protocol: Protocol,
                 timing: CuffTiming) -> tuple[int, int]:
    """(SET to DEFLATE, release) of one planned stimulus with a cuff as slow as `timing` allows."""
    stim_kpa = _stimulus_kpa(protocol, inflate.target_kpa)   # the ceiling for a calibrated level not given
    rate = inflate.rate_kpa_s or protocol.stimulation.rate_kpa_s
    stretch = 0
    if inflate.timed_from == "target_reached":
        stretch = max(0, timing.ramp_ms(stim_kpa, rate) - to_ms(inflate.ramp_s))
    return planned_ms + stretch + timing.slack_ms, timing.release_ms(stim_kpa, rate)


def check_timeline(timeline: Timeline, protocol: Protocol, *, timing: CuffTiming = CuffTiming()) -> None:
    """Refuse a timeline that overlaps, has gaps or empty phases, outlasts the scan, or breaks a
    safety limit (inflation counted as in `worst_case`, with `timing`). `build_schedule` runs
    it; a runner that changes a plan can run it again."""
    s, where = protocol.safety, protocol.where
    t_ms = 0
    for e in timeline.events:
        if to_ms(e.duration_s) <= 0:
            raise InputError(f"{where.file}: timeline event {e.index} ({e.phase}, trial {e.trial}) has "
                             f"duration {e.duration_s:g} s; every phase must last > 0 s")
        if to_ms(e.onset_s) != t_ms:
            what = "overlaps the previous one" if to_ms(e.onset_s) < t_ms else "leaves a gap after the previous one"
            raise InputError(f"{where.file}: timeline event {e.index} ({e.phase}, trial {e.trial}) at "
                             f"{e.onset_s:.3f} s {what} (which ends at {t_ms / 1000:.3f} s)")
        if e.target_kpa is not None and e.target_kpa > s.max_pressure_kpa:
            raise where.error(("safety", "max_pressure"), f"timeline event {e.index} targets {e.target_kpa:g} kPa, "
                                                          f"above {s.max_pressure_kpa:g} kPa")
        t_ms += to_ms(e.duration_s)
    if t_ms > to_ms(protocol.scan.duration_s):
        raise where.error(("scan", "n_volumes"), f"the run lasts {t_ms / 1000:g} s, longer than the declared scan "
                                                 f"({protocol.scan.duration_s:g} s)")
    run_ms = 0
    for inflate, deflate in timeline.stimuli():
        a, planned = inflate.onset_s, to_ms(deflate.onset_s - inflate.onset_s)
        held, release = _modelled_ms(inflate, planned, protocol, timing)
        run_ms += held
        if held + release > to_ms(s.max_inflation_per_stimulus_s):
            raise where.error(("safety", "max_inflation_per_stimulus_s"),
                              f"the stimulus at {a:.3f} s can hold air {(held + release) / 1000:.3f} s (planned "
                              f"SET to DEFLATE {planned / 1000:.3f} s, up to {held / 1000:.3f} s with a slower "
                              f"cuff, plus up to {release / 1000:.3f} s to release), over this limit")
    if run_ms > to_ms(s.max_cumulative_inflation_per_run_s):
        raise where.error(("safety", "max_cumulative_inflation_per_run_s"),
                          f"the cuff can be inflated {run_ms / 1000:g} s in this run (planned {timeline.inflated_s:g} "
                          f"s, SET to DEFLATE with a slower cuff), over this limit")
    intervals = timeline.inflation_intervals()
    for (_, end), (start, _) in zip(intervals, intervals[1:]):
        if to_ms(start - end) < to_ms(s.min_deflated_between_s):
            raise where.error(("safety", "min_deflated_between_s"),
                              f"only {start - end:.3f} s deflated between the stimuli ending at {end:.3f} s and "
                              f"starting at {start:.3f} s")


def _fixation_event(index: int, t_ms: int, dur_ms: int, phase: str) -> PlannedEvent:
    return PlannedEvent(index=index, onset_s=t_ms / 1000, duration_s=dur_ms / 1000, trial=0, trial_type=None,
                        phase=phase, cue=FIXATION, cuff="none", target_kpa=0.0, rate_kpa_s=None, timed_from="onset",
                        ramp_s=0.0, bids_trial_type=None)


def build_schedule(protocol: Protocol, *, seed: int | None = None, participant: str | None = None,
                   pressure_kpa: float | None = None, levels_kpa: Mapping[str, float] | None = None,
                   timing: CuffTiming = CuffTiming()) -> Timeline:
    """The run's timeline: pure and deterministic in (protocol, seed, participant, pressures).

    seed: None uses protocol.trials.seed. participant: chooses the cue mapping only.
    levels_kpa: the participant's pressure for each calibrated level (a fraction of the
    calibrated pressure, or the calibration fit's pressure for a rating;
    experiment.procedures.calibration.results resolves them); pressure_kpa is the shorthand for
    a protocol with one calibrated level; refused for a level the protocol fixes. timing: how
    slow the rig's cuff may be (the rig file's `cuff_timing`); it changes the safety checks
    only, never the timeline. Raises InputError when a pre-flight check fails.
    """
    if seed is None:
        seed = protocol.trials.seed
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise InputError(f"seed must be a whole number >= 0, got {seed!r}")
    kpa = levels_kpa_of(protocol, pressure_kpa=pressure_kpa, levels_kpa=levels_kpa)
    _check_worst_case(protocol, worst_case(protocol, levels_kpa={n: p for n, p in kpa.items() if p is not None
                                                                 and protocol.stimulation.levels[n].calibrated},
                                           timing=timing), timing)
    mapping_index, mapping = choose_cue_mapping(protocol, participant)
    order = _trial_order(protocol.trials.counts, protocol.trials.max_run_length, _rng(seed, "order"))
    draws: dict[tuple[str, int], Iterator[int]] = {}
    for name, tt in protocol.trial_types.items():
        n = protocol.trials.counts[name]
        for j, p in enumerate(tt.phases):
            draws[(name, j)] = iter(_draws_ms(p.duration, n, _rng(seed, f"duration/{name}/{p.name}")))
    events: list[PlannedEvent] = []
    lead_ms, tail_ms = to_ms(protocol.scan.lead_in_s), to_ms(protocol.scan.tail_s)
    if lead_ms:
        events.append(_fixation_event(0, 0, lead_ms, "lead_in"))
    t = lead_ms
    for trial, name in enumerate(order, start=1):
        t = _trial_events(protocol, trial, name, t, draws, mapping, kpa, events)
    if tail_ms:
        events.append(_fixation_event(len(events), t, tail_ms, "tail"))
        t += tail_ms
    scan = protocol.scan
    timeline = Timeline(events=tuple(events), run_length_s=t / 1000,
                        n_volumes_needed=volumes_for(t / 1000, scan.tr_s), n_volumes=scan.n_volumes,
                        tr_s=scan.tr_s, seed=seed, participant=participant, cue_mapping=mapping,
                        cue_mapping_index=mapping_index, trial_order=tuple(order), level_kpa=kpa)
    check_timeline(timeline, protocol, timing=timing)
    return timeline


def _trial_events(protocol: Protocol, trial: int, name: str, t: int, draws: Mapping[tuple[str, int], Iterator[int]],
                  mapping: Mapping[str, str], kpa: Mapping[str, float | None], events: list[PlannedEvent]) -> int:
    """Append one trial's events from `t` (ms); returns where the trial ends."""
    rate = protocol.stimulation.rate_kpa_s
    level: str | None = None     # the level of the stimulus under way (inflate ... deflate)
    for j, p in enumerate(protocol.trial_types[name].phases):
        dur = next(draws[(name, j)])
        if p.cuff == "inflate":
            level = p.level
        ramp = _ramp_ms(protocol, kpa[level]) if p.cuff == "inflate" and level is not None else 0
        if p.timed_from == "target_reached":
            dur += ramp
        held = p.cuff in ("inflate", "hold") and level is not None
        events.append(PlannedEvent(
            index=len(events), onset_s=t / 1000, duration_s=dur / 1000, trial=trial, trial_type=name, phase=p.name,
            cue=mapping.get(p.cue, p.cue) if p.cue is not None else None, cuff=p.cuff,
            target_kpa=kpa[level] if held and level is not None else 0.0,
            rate_kpa_s=rate if p.cuff == "inflate" else None, timed_from=p.timed_from, ramp_s=ramp / 1000,
            bids_trial_type=p.bids_trial_type, kind=p.kind, level=level if held else None, scale=p.scale,
            cuff_at=p.cuff_at))
        if p.cuff == "deflate":
            level = None
        t += dur
    return t


def phase_of(protocol: Protocol, event: PlannedEvent) -> Phase | None:
    """The protocol phase an event came from (None for lead_in and tail)."""
    if event.trial_type is None:
        return None
    return next(p for p in protocol.trial_types[event.trial_type].phases if p.name == event.phase)
