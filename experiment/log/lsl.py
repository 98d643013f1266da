"""Lab Streaming Layer outlets fed from the run's log (docs/lsl.md).

Physiology recorded on other machines (skin conductance, heart rate, EEG) is aligned with a run
through LSL: this module publishes two streams while a run is logged,

* `cuedpain-markers` (type `Markers`, one string channel, irregular rate): one JSON object per
  cue onset, cuff command, its acknowledgement, cuff event, rating, scanner pulse, t0, button,
  key and the end, with the log record's fields;
* `cuedpain-pressure` (type `Pressure`, channels `pressure` and `target` in kPa, at the cuff's
  sample rate): every pressure sample of the cuff.

Every sample is stamped with its time on the run's clock mapped to LSL's clock
(`pylsl.local_clock`): `t_lsl = t + offset_s`, the offset measured when the outlets open and again
when they close (both in the log's `lsl` records, so a drift of the run's clock against LSL's
shows). The frame loop only puts each record on a queue (`observe`); one thread formats and
pushes, so publishing costs the loop a queue put per record (benchmarks/pacing.py measures it).
A failure to push is logged once as a warning and publishing stops; the run goes on.

pylsl is imported only here, and only when a run asks for LSL.
"""

from __future__ import annotations

import json
import queue
import threading
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from experiment.clock import Clock
from experiment.log.records import LslCounts, RunRecord

MARKER_STREAM = "cuedpain-markers"
PRESSURE_STREAM = "cuedpain-pressure"
MARKER_KINDS = frozenset({"onset", "cuff_cmd", "cuff_event", "rating", "pulse", "t0", "button", "key", "end"})
PRESSURE_CHANNELS = (("pressure", "kPa"), ("target", "kPa"))



def markers_of(rec: Mapping[str, Any]) -> list[tuple[float, str]]:
    """A log record -> its markers, (time on the run's clock, JSON text) (pure).

    A cuff command gives two: `cuff_cmd` when it was written and `cuff_ack` when the device
    answered (a command with no answer gives the first only); a rating is stamped when it was
    confirmed (when it was logged, if it timed out)."""
    kind = rec.get("kind")
    if kind not in MARKER_KINDS:
        return []
    fields = {k: v for k, v in rec.items() if k != "seq"}
    if kind == "cuff_cmd":
        out = []
        if rec.get("t_write") is not None:
            out.append((float(rec["t_write"]), _text({**fields, "kind": "cuff_cmd"})))
        if rec.get("t_ack") is not None:
            out.append((float(rec["t_ack"]), _text({**fields, "kind": "cuff_ack"})))
        return out
    if kind == "rating":
        t = rec.get("t_response") if rec.get("t_response") is not None else rec.get("t")
        return [] if t is None else [(float(t), _text(fields))]
    t = rec.get("t")
    return [] if t is None else [(float(t), _text(fields))]


def _text(fields: Mapping[str, Any]) -> str:
    return json.dumps(fields, separators=(",", ":"), default=str, allow_nan=False)


def measure_offset(clock: Clock, local_clock: Callable[[], float], *, tries: int = 25) -> tuple[float, float]:
    """(LSL time - run time, uncertainty): the reading bracketed most tightly by two run-clock reads."""
    best: tuple[float, float] | None = None
    for _ in range(tries):
        a = clock.now()
        lsl = local_clock()
        b = clock.now()
        width = b - a
        if best is None or width < best[1]:
            best = (lsl - (a + b) / 2, width)
    assert best is not None
    return best[0], best[1] / 2


@dataclass(frozen=True)
class StreamMeta:
    """Who and what a run's streams are about (their `desc`)."""

    participant: str
    session: str | None
    run: int
    task: str
    protocol_name: str
    protocol_sha256: str
    dry_run: bool

    @property
    def source_id(self) -> str:
        ses = f"_ses-{self.session}" if self.session else ""
        return f"cuedpain_sub-{self.participant}{ses}_task-{self.task}_run-{self.run}"


class LslPublisher:
    """The two outlets and the thread that feeds them; `observe` and `observe_sample` from any thread."""

    def __init__(self, meta: StreamMeta, *, clock: Clock, pressure_hz: float,
                 log: Callable[[RunRecord], None]) -> None:
        import pylsl  # local: only a run with --lsl loads liblsl

        self._pylsl = pylsl
        self.meta = meta
        self._clock = clock
        self._log = log
        self._queue: queue.SimpleQueue[tuple[str, Any] | None] = queue.SimpleQueue()
        self.pressure_hz = pressure_hz
        self.offset_s, self.offset_uncertainty_s = measure_offset(clock, pylsl.local_clock)
        self.markers = pylsl.StreamOutlet(self._info(MARKER_STREAM, "Markers", 1, pylsl.IRREGULAR_RATE,
                                                     pylsl.cf_string, "markers"))
        self.pressure = pylsl.StreamOutlet(self._info(PRESSURE_STREAM, "Pressure", len(PRESSURE_CHANNELS),
                                                      pressure_hz, pylsl.cf_float32, "pressure"))
        self.markers_name, self.pressure_name = MARKER_STREAM, PRESSURE_STREAM
        self.pushed: LslCounts = {"markers": 0, "pressure": 0}
        self.failed: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="lsl-publisher", daemon=True)
        self._thread.start()
        log({"kind": "lsl", "t": clock.now(), "event": "open", "offset_s": self.offset_s,
             "offset_uncertainty_s": self.offset_uncertainty_s, "streams": [MARKER_STREAM, PRESSURE_STREAM],
             "source_id": meta.source_id, "pressure_hz": float(pressure_hz), "liblsl": int(pylsl.library_version())})

    def _info(self, name: str, kind: str, channels: int, rate: float, fmt: int, suffix: str) -> Any:
        info = self._pylsl.StreamInfo(name, kind, channels, rate, fmt, f"{self.meta.source_id}_{suffix}")
        desc = info.desc()
        for key, value in (("participant", self.meta.participant), ("session", self.meta.session or ""),
                           ("run", str(self.meta.run)), ("task", self.meta.task),
                           ("protocol", self.meta.protocol_name), ("protocol_sha256", self.meta.protocol_sha256),
                           ("dry_run", "true" if self.meta.dry_run else "false"),
                           ("clock", f"{self._clock.name} + offset_s"), ("offset_s", repr(self.offset_s))):
            desc.append_child_value(key, value)
        desc.append_child_value("software", "cuedpain")
        if kind == "Pressure":
            chans = desc.append_child("channels")
            for label, unit in PRESSURE_CHANNELS:
                ch = chans.append_child("channel")
                ch.append_child_value("label", label)
                ch.append_child_value("unit", unit)
                ch.append_child_value("type", "Pressure")
        return info

    # ------------------------------------------------------------ any thread: a queue put, nothing else

    def observe(self, rec: Mapping[str, object]) -> None:
        if rec.get("kind") in MARKER_KINDS:
            self._queue.put(("record", rec))

    def observe_sample(self, sample: Any) -> None:
        """A cuff `PressureSample` (its reader thread)."""
        self._queue.put(("sample", (sample.t, sample.pressure_kpa, sample.target_kpa)))

    # ------------------------------------------------------------ the publisher's thread

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            if self.failed is not None:
                continue     # drain, so close() returns
            try:
                self._push(*item)
            except Exception as exc:  # noqa: BLE001 - LSL must never stop a run: said once, then off
                self.failed = exc
                self._log({"kind": "warning", "t": self._clock.now(), "code": "lsl_failed",
                           "message": f"Lab Streaming Layer publishing stopped: {exc!r}; the run goes on and "
                                      "everything is in its log"})

    def _push(self, what: str, payload: Any) -> None:
        if what == "record":
            for t, text in markers_of(payload):
                self.markers.push_sample([text], t + self.offset_s)
                self.pushed["markers"] += 1
        else:
            t, p, tgt = payload
            self.pressure.push_sample([p, tgt], t + self.offset_s)
            self.pushed["pressure"] += 1

    def close(self) -> None:
        """Push what is queued, log the offset again and the counts, then close the outlets."""
        self._queue.put(None)
        self._thread.join(5.0)
        offset, uncertainty = measure_offset(self._clock, self._pylsl.local_clock)
        self._log({"kind": "lsl", "t": self._clock.now(), "event": "close", "offset_s": offset,
                   "offset_uncertainty_s": uncertainty, "pushed": LslCounts(**self.pushed),
                   "offset_change_s": offset - self.offset_s})
        del self.markers, self.pressure   # pylsl destroys an outlet when it is collected
