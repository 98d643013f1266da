"""The frame loop of a run: cues on their flips, cuff commands at their times.

Every planned onset is absolute: `t0 + onset_s` from the timeline, never a wait
relative to the previous event, so timing errors cannot accumulate. A visual change
is drawn for the first flip whose predicted time is at or after its planned time
minus half a frame, and its logged onset is that flip's time.

A pain phase timed "from target reached" holds the phases after it (in its trial)
until the cuff reports TARGET_REACHED, then moves them by the difference between the
measured and the predicted ramp (a `reanchor` record). The trial's last phase (rest)
keeps its planned end, so the next trial starts on plan and nothing drifts.

Phases move through an explicit state machine (`PhaseTracker`): a phase cannot start
before the one before it, and cannot start twice; a skipped step raises.
"""

from __future__ import annotations

import queue
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Callable, Mapping, Sequence

from experiment.clock import Clock
from experiment.cuff.base import DeviceEvent, EventKind, StopSource
from experiment.errors import AbortError
from experiment.log.records import RunRecord
from experiment.procedures.run.cuffschedule import HORIZON_S, CuffScheduler
from experiment.protocol.schedule import PlannedEvent
from experiment.station.devices import Display
from experiment.station.rating import RatingScale, RatingState, press, start_rating, timed_out


class PhaseOrderError(RuntimeError):
    """A phase was started out of order (a bug in the loop, never user input)."""


class PhaseTracker:
    """pending -> started -> done for each timeline event, strictly in order."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.started = 0  # events [0, started) have started

    def start(self, i: int) -> None:
        if i != self.started:
            what = "was already started" if i < self.started else f"would skip event {self.started}"
            raise PhaseOrderError(f"timeline event {i} {what}")
        self.started += 1

    @property
    def current(self) -> int | None:
        return self.started - 1 if self.started else None


Log = Callable[[RunRecord], None]
Keys = list[tuple[str, float]]


@dataclass
class LoopHooks:
    """What the loop calls out to, every frame. All are cheap and never block long."""

    poll_pulses: Callable[[], None]                 # read, log and check pulses
    poll_keys: Callable[[], Keys]                   # participant/operator keys since last call
    check_safety: Callable[[float], None]           # raises AbortError/DeviceFault when tripped
    stimulate: Callable[[int, float, float, float], None]  # (event index, target kPa, rate kPa/s, planned time)
    deflate: Callable[[int, float], None]           # (event index, planned time)
    status: Callable[[int, str, float | None], None]  # console: (trial, phase, next event in s)
    vent: Callable[[str], None]                     # vent now (participant stop key); never raises
    # headless dry runs: (plan index of the rating phase, scale, scale onset) -> simulated key presses
    scripted_keys: Callable[[int, RatingScale, float], Keys] | None = None
    # real-time runs: (time to the next event in s, nothing moves on screen) after each flip;
    # garbage is collected there when there is room (experiment.station.realtime)
    idle: Callable[[float, bool], None] | None = None
    # (event index, rate kPa/s): set an inflation's ramp rate ahead of its SET if the cuff is idle
    preset_rate: Callable[[int, float], None] | None = None


@dataclass
class LoopResult:
    completed: bool
    last_event: int | None
    stimulation_stopped: str | None = None


@dataclass
class _Rating:
    """The rating scale on screen, the phase that showed it, and whether it is logged."""

    state: RatingState
    i: int
    logged: bool = False


@dataclass
class _LoopState:
    """What changes from frame to frame."""

    planned: list[float]                            # absolute planned onsets (re-anchored in place)
    tracker: PhaseTracker
    waiting_reach: int | None = None                # an inflate phase awaiting TARGET_REACHED
    rating: _Rating | None = None
    scripted: Keys = field(default_factory=list)    # the simulated participant's pending presses
    stim_off: str | None = None                     # why stimulation stopped, if it did


@dataclass
class TrialLoop:
    """Runs a timeline from t0 to its end on a display, calling the hooks."""

    timeline: Sequence[PlannedEvent]
    t0: float
    run_end_s: float
    clock: Clock
    display: Display
    hooks: LoopHooks
    log: Log
    rating_scales: Mapping[str, RatingScale]   # scale name -> scale (a rating phase names its scale)
    key_roles: dict[str, str]          # key -> "escape" | "stop" | "response"
    on_participant_stop: str = "end"   # "end" | "continue_without_stimulation"
    device_events: "queue.SimpleQueue[DeviceEvent]" = field(default_factory=queue.SimpleQueue)
    scheduler: CuffScheduler | None = None   # cuff commands at their planned times (cuff_at: planned)
    _s: _LoopState = field(init=False)

    def __post_init__(self) -> None:
        self._s = _LoopState(planned=[self.t0 + ev.onset_s for ev in self.timeline],
                             tracker=PhaseTracker(len(self.timeline)))

    @property
    def end_t(self) -> float:
        return self.t0 + self.run_end_s

    def run(self) -> LoopResult:
        """Frames until every phase has started and the run's end has come."""
        while True:
            t_flip = self._frame()
            s = self._s
            if s.tracker.started == len(self.timeline) and t_flip >= self.end_t - self.display.frame_s / 2:
                self._finish_rating(t_flip)
                return LoopResult(completed=True, last_event=s.tracker.current, stimulation_stopped=s.stim_off)

    def _frame(self) -> float:
        """One frame: inputs, the phases due at the next flip, the flip, what follows it."""
        now = self.clock.now()
        self.hooks.poll_pulses()
        self._take_device_events()
        if self.scheduler is not None:   # a command's own failure first: it is the cause of any trip it made
            self.scheduler.check()
        self.hooks.check_safety(now)
        self._take_keys(now)
        if self._s.stim_off is not None:
            self._s.waiting_reach = None   # no stimulation: nothing will reach a target
        self._hand_over(now)
        r = self._s.rating
        if r is not None and (r.state.confirmed or timed_out(r.state, now)):
            self._finish_rating(now)
        t_next = self.display.predict_next_flip()
        due = self._due(t_next)
        self._prepare(due, t_next, now)
        t_flip = self.display.flip()
        self._started(due, t_flip)
        self._after_flip(due, t_flip)
        return t_flip

    # ------------------------------------------------------------ inputs

    def _take_device_events(self) -> None:
        """Events from the cuff's reader thread (via the supervisor)."""
        while True:
            try:
                ev = self.device_events.get_nowait()
            except queue.Empty:
                return
            if ev.kind is EventKind.TARGET_REACHED and self._s.waiting_reach is not None:
                self._reanchor(self._s.waiting_reach, ev.t)
                self._s.waiting_reach = None
            elif ev.kind is EventKind.ESTOP and ev.source is StopSource.BUTTON:
                self.participant_stop("button", ev.t)

    def _take_keys(self, now: float) -> None:
        """Keys by role: Escape ends the run, the stop key stops stimulation, others move the scale."""
        for key, t_key in self.hooks.poll_keys() + self._due_scripted(now):
            role = self.key_roles.get(key, "response")
            self.log({"kind": "key", "t": t_key, "key": key, "role": role})
            if role == "escape":
                raise AbortError("the operator pressed Escape", reason="escape")
            if role == "stop":
                self.participant_stop("key", t_key)
            elif self._s.rating is not None:
                self._s.rating.state = press(self._s.rating.state, key, t_key)

    def _due_scripted(self, now: float) -> Keys:
        scripted = self._s.scripted
        due = [k for k in scripted if k[1] <= now]
        del scripted[:len(due)]
        return due

    # ------------------------------------------------------------ phases

    def _due(self, t_next: float) -> list[int]:
        """The phases whose planned onset belongs to the next flip (none past an unreached target)."""
        s, tl = self._s, self.timeline
        half = self.display.frame_s / 2
        due: list[int] = []
        i = s.tracker.started
        while i < len(tl) and s.waiting_reach is None and s.planned[i] - half <= t_next:
            due.append(i)
            if tl[i].timed_from == "target_reached" and tl[i].cuff == "inflate" and s.stim_off is None:
                s.waiting_reach = i
            i += 1
        return due

    def _prepare(self, due: list[int], t_next: float, now: float) -> None:
        """What the next flip shows: the last due phase's cue, and a new rating scale if it asks."""
        s = self._s
        if due:
            if s.rating is not None:   # any new phase ends the rating phase
                self._finish_rating(now)
                s.rating = None
            last = self.timeline[due[-1]]
            self.display.show(last.cue)
            if last.kind == "rating":  # t_onset becomes the flip time after the flip
                s.rating = _Rating(start_rating(self._scale_of(last), t_next), due[-1])
        self.display.show_rating(None if s.rating is None else s.rating.state)

    def _started(self, due: list[int], t_flip: float) -> None:
        """Each due phase started at this flip: its onset record, then its cuff command."""
        s = self._s
        for i in due:
            s.tracker.start(i)
            ev = self.timeline[i]
            self.log({"kind": "onset", "t": t_flip, "i": i, "trial": ev.trial, "phase": ev.phase, "cue": ev.cue,
                      "planned_t": s.planned[i], "onset_s": t_flip - self.t0, "planned_onset_s": ev.onset_s})
            self._command_cuff(i, ev, t_flip)

    def _hand_over(self, now: float) -> None:
        """Give the scheduler the cuff commands due within its horizon whose time is fixed."""
        s, tl, sch = self._s, self.timeline, self.scheduler
        if sch is None or s.stim_off is not None or s.waiting_reach is not None:
            return
        for j in range(s.tracker.started, len(tl)):
            ev = tl[j]
            if s.planned[j] - now > HORIZON_S:
                return
            if ev.cuff in ("inflate", "deflate") and ev.cuff_at == "planned" and j not in sch.handed:
                preset = self.hooks.preset_rate
                if ev.cuff == "inflate" and ev.rate_kpa_s is not None and preset is not None:
                    sch.prepare(partial(self._scheduled_preset, j, preset, ev.rate_kpa_s))
                sch.schedule(j, s.planned[j], partial(self._scheduled_command, j))
            if ev.cuff == "inflate" and ev.timed_from == "target_reached":
                return   # the phases after it move when the target is reached

    def _scheduled_command(self, i: int, planned_t: float) -> None:
        """The scheduler's thread: one phase's cuff command at its planned time.

        A participant's stop (the device's button) that the frame loop has not taken yet makes
        the supervisor refuse the command: that is a skipped command, as in the loop, not an
        error; the loop applies the protocol's `on_participant_stop` when it takes the event."""
        ev = self.timeline[i]
        try:
            if ev.cuff == "inflate" and ev.target_kpa is not None and ev.rate_kpa_s is not None:
                self.hooks.stimulate(i, ev.target_kpa, ev.rate_kpa_s, planned_t)
            elif ev.cuff == "deflate":
                self.hooks.deflate(i, planned_t)
        except AbortError as exc:
            if not (exc.reason or "").startswith("participant_stop"):
                raise
            self.log({"kind": "warning", "t": planned_t, "code": "stimulation_off",
                      "message": f"cuff command for event {i} skipped: stimulation stopped ({exc.message})"})

    def _scheduled_preset(self, i: int, preset: Callable[[int, float], None], rate_kpa_s: float) -> None:
        """The scheduler's thread, at hand-over: the ramp rate of inflation `i`, ahead of its SET.
        A participant's stop refuses it (nothing to prepare for); the SET then does not go either."""
        try:
            preset(i, rate_kpa_s)
        except AbortError as exc:
            if not (exc.reason or "").startswith("participant_stop"):
                raise

    def _command_cuff(self, i: int, ev: PlannedEvent, t_flip: float) -> None:
        if ev.cuff not in ("inflate", "deflate"):
            return
        sch = self.scheduler
        if sch is not None and i in sch.handed and (i in sch.written or self._s.stim_off is None):
            return   # written at its planned time by the scheduler (or being written)
        if self._s.stim_off is not None:
            self.log({"kind": "warning", "t": t_flip, "code": "stimulation_off",
                      "message": f"cuff command for event {i} skipped: stimulation stopped ({self._s.stim_off})"})
        elif ev.cuff == "inflate" and ev.target_kpa is not None and ev.rate_kpa_s is not None:
            self.hooks.stimulate(i, ev.target_kpa, ev.rate_kpa_s, self._s.planned[i])
        elif ev.cuff == "deflate":
            self.hooks.deflate(i, self._s.planned[i])

    def _after_flip(self, due: list[int], t_flip: float) -> None:
        """The scale's onset, frame statistics once per trial, dropped frames, the console."""
        s, tl = self._s, self.timeline
        if due and s.rating is not None and s.rating.i == due[-1]:
            s.rating.state = replace(s.rating.state, t_onset=t_flip)   # the scale appeared at this flip
            if self.hooks.scripted_keys is not None:
                s.scripted = self.hooks.scripted_keys(s.rating.i, s.rating.state.scale, t_flip)
        if due and tl[due[0]].trial != (tl[due[0] - 1].trial if due[0] > 0 else None):
            self.log({"kind": "frames", **self.display.stats.summary(t_flip)})
        for t_drop, interval in self.display.stats.take_drops():
            self.log({"kind": "frame_drop", "t": t_drop, "interval_s": interval})
        cur = s.tracker.current
        if cur is not None:
            nxt = s.planned[cur + 1] - t_flip if cur + 1 < len(tl) else self.end_t - t_flip
            self.hooks.status(tl[cur].trial, tl[cur].phase, nxt)
            if self.hooks.idle is not None and not due and s.waiting_reach is None:
                self.hooks.idle(nxt, s.rating is None)

    def _scale_of(self, ev: PlannedEvent) -> RatingScale:
        if ev.scale is not None:
            return self.rating_scales[ev.scale]
        assert len(self.rating_scales) == 1, "a rating phase names its scale when there are several"
        return next(iter(self.rating_scales.values()))

    def _finish_rating(self, now: float) -> None:
        """Log the rating once, with the plan index `i` of the phase that showed the scale
        (a trial may have several rating phases; `trial` alone cannot tell them apart)."""
        r = self._s.rating
        if r is None or r.logged:
            return
        ev, st = self.timeline[r.i], r.state
        self.log({"kind": "rating", "t_onset": st.t_onset, "t_response": st.t_response, "i": r.i,
                  "trial": ev.trial, "phase": ev.phase, "scale": ev.scale,
                  "rating": st.value if st.confirmed else None,
                  "response_time_s": st.response_time_s, "timed_out": not st.confirmed, "moved": st.moved,
                  "t": now})
        r.logged = True

    # ------------------------------------------------------------ the participant, the ramp

    def participant_stop(self, source: str, t: float) -> None:
        """The participant asked to stop (stop key or the device's button).

        The cuff is vented at once (the device's button has already vented it); then
        the protocol's choice is applied: end the run, or go on showing cues without
        stimulation.
        """
        if self.scheduler is not None:
            self.scheduler.cancel()   # nothing scheduled may follow the vent
        if source == "key":
            self.hooks.vent("participant stop key")
        if self.on_participant_stop == "end":
            raise AbortError(f"the participant pressed the stop {'key' if source == 'key' else 'button'}",
                             reason=f"participant_stop_{source}")
        if self._s.stim_off is None:
            self._s.stim_off = f"participant stop ({source})"
            self.log({"kind": "safety", "t": t, "reason": f"participant_stop_{source}",
                      "action": "stimulation off, run continues"})

    def _reanchor(self, i_pain: int, t_reached: float) -> None:
        """Move the phases after a target-reached pain phase by the ramp's real length."""
        tl, planned = self.timeline, self._s.planned
        ev = tl[i_pain]
        shift = t_reached - (planned[i_pain] + (ev.ramp_s or 0.0))
        trial = ev.trial
        last_of_trial = i_pain + 1
        while last_of_trial + 1 < len(tl) and tl[last_of_trial + 1].trial == trial:
            last_of_trial += 1
        limit = planned[last_of_trial + 1] if last_of_trial + 1 < len(tl) else None
        clamped = False
        for j in range(i_pain + 1, len(tl)):
            if tl[j].trial != trial:
                break
            new = planned[j] + shift
            if limit is not None and new > limit - 0.1:
                new, clamped = limit - 0.1, True
            planned[j] = new
        self.log({"kind": "reanchor", "t": t_reached, "i": i_pain, "shift_s": shift})
        if clamped:
            self.log({"kind": "warning", "t": t_reached, "code": "reanchor_clamped",
                      "message": f"trial {trial}: the ramp took {shift:+.2f} s longer than planned; its later "
                                 "phases were shortened so the next trial starts on plan"})
