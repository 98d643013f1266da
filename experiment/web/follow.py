"""Following a step from its append-only logs: new lines as they are written, and the live view.

`Tail` reads the complete lines appended to a JSONL file since the last call (a torn last
line waits for its newline). `live_view(...)` is pure: from the records read so far it
computes what the operator's live view shows: trial n of N, the phase and the time to the
next planned event, pulses received and expected with the TR estimated from them,
dropped frames, warnings and safety events, and how the step ended.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

Record = dict[str, Any]


@dataclass
class Tail:
    """Complete new JSON lines of a growing file (the file may not exist yet)."""

    path: Path
    offset: int = 0
    _partial: bytes = b""

    def read(self, max_bytes: int = 4_000_000) -> list[Record]:
        try:
            with open(self.path, "rb") as fh:
                fh.seek(self.offset)
                chunk = fh.read(max_bytes)
        except OSError:
            return []
        self.offset += len(chunk)
        data = self._partial + chunk
        lines = data.split(b"\n")
        self._partial = lines.pop()
        out: list[Record] = []
        for line in lines:
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if isinstance(rec, dict):
                out.append(rec)
        return out


@dataclass
class StepRecords:
    """Everything read so far from one step's two logs."""

    header: Record | None = None
    records: list[Record] = field(default_factory=list)
    samples: list[Record] = field(default_factory=list)     # `p` records of the pressure log

    def add(self, events: Sequence[Record], pressure: Sequence[Record]) -> None:
        for rec in events:
            if rec.get("kind") == "header":
                self.header = rec
            else:
                self.records.append(rec)
        self.samples.extend(r for r in pressure if r.get("kind") == "p")

    @property
    def last_t(self) -> float | None:
        """The latest time on the step's clock seen in either log."""
        ts = [float(r["t"]) for r in (self.records[-1:] + self.samples[-1:]) if isinstance(r.get("t"), (int, float))]
        return max(ts) if ts else None


def _num(x: Any) -> float | None:
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) else None


def tr_estimate_s(pulse_times: Sequence[float]) -> float | None:
    """The median interval of the last 30 stored-volume pulses (None: fewer than 2)."""
    recent = list(pulse_times)[-31:]
    gaps = [b - a for a, b in zip(recent, recent[1:])]
    return statistics.median(gaps) if gaps else None


def _planned(records: Sequence[Record]) -> list[tuple[float, int, int, str]]:
    """(planned onset from t0, plan index, trial, phase), with the shifts of `reanchor` records applied."""
    plans = {int(r["i"]): r for r in records if r.get("kind") == "plan" and isinstance(r.get("i"), int)}
    shift: dict[int, float] = {}
    for r in records:
        if r.get("kind") == "reanchor" and isinstance(r.get("i"), int):
            i, s = int(r["i"]), float(r.get("shift_s") or 0.0)
            trial = plans.get(i, {}).get("trial")
            for j, p in plans.items():
                if j > i and p.get("trial") == trial:
                    shift[j] = shift.get(j, 0.0) + s
    return sorted((float(p["onset_s"]) + shift.get(i, 0.0), i, int(p.get("trial") or 0), str(p.get("phase")))
                  for i, p in plans.items() if isinstance(p.get("onset_s"), (int, float)))


def _events(records: Sequence[Record], t0: float | None, kinds: tuple[str, ...]) -> list[Record]:
    out = []
    for r in records:
        if r.get("kind") in kinds:
            t = _num(r.get("t"))
            out.append({"kind": r.get("kind"), "code": r.get("code") or r.get("reason"),
                        "message": r.get("message") or r.get("action") or "",
                        "at_s": None if t is None or t0 is None else round(t - t0, 1)})
    return out


def live_view(step: StepRecords, *, now_t: float | None) -> dict[str, Any]:
    """The live view of a step (`now_t`: the best estimate of now on the step's clock). Pure."""
    h, records = step.header or {}, step.records
    purpose = str(h.get("purpose") or ("run" if "task" in h else "step"))
    t0 = next((_num(r.get("t")) for r in records if r.get("kind") == "t0"), None)
    end = next((r for r in reversed(records) if r.get("kind") == "end"), None)
    view: dict[str, Any] = {"purpose": purpose, "dry_run": h.get("dry_run"), "t0": t0,
                            "ceiling_kpa": _ceiling(h), "end": None if end is None else
                            {k: end.get(k) for k in ("status", "reason", "message", "exit_code", "result", "ok")},
                            "warnings": _events(records, t0, ("warning", "safety")),
                            "operator": [r.get("action") for r in records if r.get("kind") == "operator"]}
    pages = [r for r in records if r.get("kind") == "instructions"]
    turned = {r.get("page") for r in records if r.get("kind") == "instructions_turned"}
    showing = next((r for r in pages if r.get("page") not in turned), None)
    view["instructions"] = None if showing is None else f"page {showing.get('page')} of {showing.get('n_pages')}"
    if purpose == "run":
        view.update(_run_view(h, records, t0, now_t))
    elif purpose in ("calibration", "confirmation", "scanner_check"):
        view.update(_stimulus_view(records))
    view["phase_label"] = _phase_label(view, records, end)
    return view


def _ceiling(h: Mapping[str, Any]) -> float | None:
    briefing = h.get("briefing") or {}
    return _num(h.get("ceiling_kpa")) or (_num(briefing.get("ceiling_kpa")) if isinstance(briefing, dict) else None)


def _run_view(h: Mapping[str, Any], records: Sequence[Record], t0: float | None, now_t: float | None) -> dict[str, Any]:
    planned = _planned(records)
    n_trials = max((trial for _, _, trial, _ in planned), default=0)
    onsets = [r for r in records if r.get("kind") == "onset"]
    last = onsets[-1] if onsets else None
    stored = [float(r["t"]) for r in records if r.get("kind") == "pulse" and r.get("volume") is not None
              and isinstance(r.get("t"), (int, float))]
    discarded = sum(1 for r in records if r.get("kind") == "pulse" and r.get("volume") is None)
    frames = [r for r in records if r.get("kind") == "frames"]
    return {"trial": int(last.get("trial") or 0) if last else 0, "n_trials": n_trials,
            "phase": None if last is None else last.get("phase"),
            **clock_fields([on for on, _, _, _ in planned], t0, now_t),
            "waiting": any(r.get("kind") == "waiting" for r in records) and t0 is None,
            "pulses": len(stored), "pulses_discarded": discarded, "pulses_expected": h.get("n_volumes"),
            "tr_s": h.get("tr_s"), "tr_est_s": None if (tr := tr_estimate_s(stored)) is None else round(tr, 4),
            "dropped_frames": sum(1 for r in records if r.get("kind") == "frame_drop"),
            "frames": None if not frames else {k: frames[-1].get(k) for k in ("n", "dropped", "p99_interval_s",
                                                                                "max_interval_s")},
            "run_length_s": h.get("run_length_s"), "participant": h.get("participant"), "run": h.get("run"),
            "task": h.get("task")}


def clock_fields(onsets: Sequence[float], t0: float | None, now_t: float | None) -> dict[str, Any]:
    """The fields of a run's view that change with the clock alone: the time to the next planned onset
    (`onsets`: planned, from t0, sorted) and the time since t0. Pure."""
    if t0 is None or now_t is None:
        return {"next_in_s": None, "elapsed_s": None}
    elapsed = now_t - t0
    upcoming = next((on for on in onsets if on > elapsed + 1e-3), None)
    return {"next_in_s": None if upcoming is None else round(upcoming - elapsed, 1), "elapsed_s": round(elapsed, 1)}


class LiveViews:
    """`live_view(step, now_t=...)` for a step followed as it grows, recomputed over all its records only
    when records were added: in between (most polls: the pressure log grows, the event log does not)
    only `clock_fields` change. Gives what `live_view` gives."""

    def __init__(self) -> None:
        self._key: tuple[int, int, int] | None = None
        self._base: dict[str, Any] = {}
        self._onsets: list[float] = []

    def view(self, step: StepRecords, *, now_t: float | None) -> dict[str, Any]:
        key = (id(step), id(step.header), len(step.records))
        if key != self._key:
            self._key = key
            self._base = live_view(step, now_t=None)
            self._onsets = ([on for on, _, _, _ in _planned(step.records)] if self._base["purpose"] == "run"
                            else [])
        view = dict(self._base)
        if view["purpose"] == "run":
            view.update(clock_fields(self._onsets, view["t0"], now_t))
        return view


def _stimulus_view(records: Sequence[Record]) -> dict[str, Any]:
    stimuli = [r for r in records if r.get("kind") == "stimulus"]
    ratings = [r for r in records if r.get("kind") == "rating"]
    ended = {r.get("index") for r in records if r.get("kind") == "stimulus_end"}
    last = stimuli[-1] if stimuli else None
    return {"stimulus": None if last is None else last.get("index"),
            "stimulus_target_kpa": None if last is None else last.get("target_kpa"),
            "stimulus_on": last is not None and last.get("index") not in ended,
            "ratings": [{"index": r.get("index"), "target_kpa": r.get("target_kpa"), "rating": r.get("rating")}
                        for r in ratings],
            "decision": next((r for r in reversed(records) if r.get("kind") in ("decision", "fit")), None)}


def _phase_label(view: Mapping[str, Any], records: Sequence[Record], end: Record | None) -> str:
    if end is not None:
        return f"ended: {end.get('status', 'ok' if end.get('ok') else 'problems')}"
    if view.get("instructions"):
        return f"instructions on screen ({view['instructions']})"
    if view.get("purpose") == "run":
        if view.get("t0") is None:
            return "waiting for the scanner" if view.get("waiting") else "starting"
        return str(view.get("phase") or "-")
    if view.get("stimulus") is not None:
        on = "stimulus on" if view.get("stimulus_on") else "rating or rest"
        return f"stimulus {view['stimulus']} at {view.get('stimulus_target_kpa')} kPa: {on}"
    return "starting"


def trace_points(samples: Sequence[Record], origin: float) -> list[list[float | None]]:
    """Pressure samples as [seconds from origin, measured kPa, commanded kPa] rows for the chart."""
    out: list[list[float | None]] = []
    for s in samples:
        t = _num(s.get("t"))
        if t is None:
            continue
        out.append([round(t - origin, 3), _num(s.get("p")), _num(s.get("tgt"))])
    return out
