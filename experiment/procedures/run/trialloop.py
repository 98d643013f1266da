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
from typing import Any, Callable, Protocol, Sequence

from experiment.clock import Clock
from experiment.cuff.base import EventKind, StopSource
from experiment.errors import AbortError
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


class Display(Protocol):
    frame_s: float

    def show(self, cue: str | None) -> None: ...
    def show_rating(self, state: RatingState | None) -> None: ...
    def show_message(self, text: str | None) -> None: ...
    def predict_next_flip(self) -> float: ...
    def flip(self) -> float: ...


@dataclass
class LoopHooks:
    """What the loop calls out to, every frame. All are cheap and never block long."""

    poll_pulses: Callable[[], None]                 # read, log and check pulses
    poll_keys: Callable[[], list[tuple[str, float]]]  # participant/operator keys since last call
    check_safety: Callable[[float], None]           # raises AbortError/DeviceFault when tripped
    stimulate: Callable[[int, float, float], None]  # (event index, target kPa, rate kPa/s)
    deflate: Callable[[int], None]                  # (event index)
    status: Callable[[int, str, float | None], None]  # console: (trial, phase, next event in s)
    vent: Callable[[str], None]                     # vent now (participant stop key); never raises
    # headless dry runs: (plan index of the rating phase, scale, scale onset) -> simulated key presses
    scripted_keys: Callable[[int, RatingScale, float], list[tuple[str, float]]] | None = None


@dataclass
class LoopResult:
    completed: bool
    last_event: int | None
    stimulation_stopped: str | None = None


@dataclass
class TrialLoop:
    """Runs a timeline from t0 to its end on a display, calling the hooks."""

    timeline: Sequence[Any]            # PlannedEvent-like records
    t0: float
    run_end_s: float
    clock: Clock
    display: Display
    hooks: LoopHooks
    log: Callable[[dict[str, Any]], None]
    rating_scale: RatingScale
    key_roles: dict[str, str]          # key -> "escape" | "stop" | "response"
    on_participant_stop: str = "end"   # "end" | "continue_without_stimulation"
    device_events: "queue.SimpleQueue[Any]" = field(default_factory=queue.SimpleQueue)
    _stim_off: str | None = field(default=None, init=False)  # why stimulation stopped, if it did

    def run(self) -> LoopResult:
        tl = self.timeline
        n = len(tl)
        planned = [self.t0 + ev.onset_s for ev in tl]
        tracker = PhaseTracker(n)
        half = self.display.frame_s / 2
        end_t = self.t0 + self.run_end_s
        waiting_reach: int | None = None   # index of a pain phase awaiting TARGET_REACHED
        rating: RatingState | None = None
        rating_event: int | None = None
        rating_logged = False
        scripted: list[tuple[str, float]] = []

        def finish_rating(now: float) -> None:
            """Log the rating once, with the plan index `i` of the phase that showed the scale
            (a trial may have several rating phases; `trial` alone cannot tell them apart)."""
            nonlocal rating, rating_logged
            if rating is not None and not rating_logged:
                ev = self.timeline[rating_event] if rating_event is not None else None
                self.log({"kind": "rating", "t_onset": rating.t_onset, "t_response": rating.t_response,
                          "i": rating_event, "trial": ev.trial if ev is not None else None,
                          "phase": ev.phase if ev is not None else None,
                          "rating": rating.value if rating.confirmed else None,
                          "response_time_s": rating.response_time_s, "timed_out": not rating.confirmed,
                          "moved": rating.moved, "t": now})
                rating_logged = True

        while True:
            now = self.clock.now()
            self.hooks.poll_pulses()
            # device events (from the cuff's reader thread, via the supervisor)
            while True:
                try:
                    ev = self.device_events.get_nowait()
                except queue.Empty:
                    break
                if ev.kind is EventKind.TARGET_REACHED and waiting_reach is not None:
                    self._reanchor(waiting_reach, ev.t, planned)
                    waiting_reach = None
                elif ev.kind is EventKind.ESTOP and ev.source is StopSource.BUTTON:
                    self.participant_stop("button", ev.t)
            self.hooks.check_safety(now)
            for key, t_key in self.hooks.poll_keys() + self._due_scripted(scripted, now):
                role = self.key_roles.get(key, "response")
                if role == "escape":
                    self.log({"kind": "key", "t": t_key, "key": key, "role": "escape"})
                    raise AbortError("the operator pressed Escape", reason="escape")
                if role == "stop":
                    self.log({"kind": "key", "t": t_key, "key": key, "role": "stop"})
                    self.participant_stop("key", t_key)
                    continue
                self.log({"kind": "key", "t": t_key, "key": key, "role": "response"})
                if rating is not None:
                    rating = press(rating, key, t_key)
            if self._stim_off is not None:
                waiting_reach = None  # no stimulation: nothing will reach a target
            if rating is not None and (rating.confirmed or timed_out(rating, now)):
                finish_rating(now)
            # which events belong to the next flip
            t_next = self.display.predict_next_flip()
            due: list[int] = []
            i = tracker.started
            while i < n and waiting_reach is None and planned[i] - half <= t_next:
                due.append(i)
                if tl[i].timed_from == "target_reached" and tl[i].cuff == "inflate" and self._stim_off is None:
                    waiting_reach = i
                i += 1
            if due:
                if rating is not None:  # any new phase ends the rating phase
                    finish_rating(now)
                    rating = None
                self.display.show(tl[due[-1]].cue)
                if tl[due[-1]].kind == "rating":
                    rating_event = due[-1]
                    rating = start_rating(self.rating_scale, t_next)  # t_onset becomes the flip time
                    rating_logged = False
            self.display.show_rating(rating)
            t_flip = self.display.flip()
            for i in due:
                tracker.start(i)
                ev = tl[i]
                self.log({"kind": "onset", "t": t_flip, "i": i, "trial": ev.trial, "phase": ev.phase,
                          "cue": ev.cue, "planned_t": planned[i], "onset_s": t_flip - self.t0,
                          "planned_onset_s": ev.onset_s})
                if self._stim_off is None:
                    if ev.cuff == "inflate" and ev.target_kpa is not None:
                        self.hooks.stimulate(i, ev.target_kpa, ev.rate_kpa_s)
                    elif ev.cuff == "deflate":
                        self.hooks.deflate(i)
                elif ev.cuff in ("inflate", "deflate"):
                    self.log({"kind": "warning", "t": t_flip, "code": "stimulation_off",
                              "message": f"cuff command for event {i} skipped: stimulation stopped ({self._stim_off})"})
            if due and rating is not None and rating_event == due[-1]:
                rating = replace(rating, t_onset=t_flip)  # the scale appeared at this flip
                if self.hooks.scripted_keys is not None:
                    scripted = self.hooks.scripted_keys(rating_event, self.rating_scale, t_flip)
            if due and tl[due[0]].trial != (tl[due[0] - 1].trial if due[0] > 0 else None):
                self.log({"kind": "frames", **self.display.stats.summary(t_flip)})  # once per trial
            for t_drop, interval in self.display.stats.take_drops():
                self.log({"kind": "frame_drop", "t": t_drop, "interval_s": interval})
            cur = tracker.current
            if cur is not None:
                nxt = planned[cur + 1] - t_flip if cur + 1 < n else end_t - t_flip
                self.hooks.status(tl[cur].trial, tl[cur].phase, nxt)
            if tracker.started == n and t_flip >= end_t - half:
                finish_rating(t_flip)
                return LoopResult(completed=True, last_event=tracker.current, stimulation_stopped=self._stim_off)

    def participant_stop(self, source: str, t: float) -> None:
        """The participant asked to stop (stop key or the device's button).

        The cuff is vented at once (the device's button has already vented it); then
        the protocol's choice is applied: end the run, or go on showing cues without
        stimulation.
        """
        if source == "key":
            self.hooks.vent("participant stop key")
        if self.on_participant_stop == "end":
            raise AbortError(f"the participant pressed the stop {'key' if source == 'key' else 'button'}",
                             reason=f"participant_stop_{source}")
        if self._stim_off is None:
            self._stim_off = f"participant stop ({source})"
            self.log({"kind": "safety", "t": t, "reason": f"participant_stop_{source}",
                      "action": "stimulation off, run continues"})

    def _due_scripted(self, scripted: list[tuple[str, float]], now: float) -> list[tuple[str, float]]:
        due = [k for k in scripted if k[1] <= now]
        del scripted[:len(due)]
        return due

    def _reanchor(self, i_pain: int, t_reached: float, planned: list[float]) -> None:
        """Move the phases after a target-reached pain phase by the ramp's real length."""
        tl = self.timeline
        ev = tl[i_pain]
        shift = t_reached - (planned[i_pain] + (ev.ramp_s or 0.0))
        trial = ev.trial
        j = i_pain + 1
        last_of_trial = j
        while last_of_trial + 1 < len(tl) and tl[last_of_trial + 1].trial == trial:
            last_of_trial += 1
        limit = planned[last_of_trial + 1] if last_of_trial + 1 < len(tl) else None
        clamped = False
        while j < len(tl) and tl[j].trial == trial:
            new = planned[j] + shift
            if limit is not None and new > limit - 0.1:
                new, clamped = limit - 0.1, True
            planned[j] = new
            j += 1
        self.log({"kind": "reanchor", "t": t_reached, "i": i_pain, "shift_s": shift})
        if clamped:
            self.log({"kind": "warning", "t": t_reached, "code": "reanchor_clamped",
                      "message": f"trial {trial}: the ramp took {shift:+.2f} s longer than planned; its later "
                                 "phases were shortened so the next trial starts on plan"})
