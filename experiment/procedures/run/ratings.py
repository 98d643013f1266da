"""A run's rating scales, and the simulated participant's answers in headless dry runs."""

from __future__ import annotations

from typing import Callable, Sequence

from experiment.protocol.model import Keys, Protocol, Rating
from experiment.protocol.schedule import PlannedEvent, Timeline
from experiment.station.rating import RatingScale
from experiment.station.simparticipant import SimulatedParticipant

ScriptedKeys = Callable[[int, RatingScale, float], list[tuple[str, float]]]
"""(plan index, scale, the scale's onset) -> the simulated participant's key presses."""


def rating_scale(r: Rating, keys: Keys) -> RatingScale:
    """The scale a rating phase shows, moved by the run's response keys."""
    return RatingScale(low=r.min, high=r.max, start=r.start, step=r.step, timeout_s=r.timeout_s,
                       left_key=keys.left, right_key=keys.right, confirm_key=keys.confirm,
                       low_label=r.low_anchor, high_label=r.high_anchor, question=r.question)


def rating_scales(protocol: Protocol, keys: Keys) -> dict[str, RatingScale]:
    """Every scale the run can show, by name (the window lays their texts out before time zero)."""
    return {name: rating_scale(r, keys) for name, r in protocol.scales.items()}


def before_stimulus(events: Sequence[PlannedEvent], i: int) -> bool:
    """Whether timeline event `i` comes before its trial's inflation (a rating there is an
    expectation); False in a trial that never inflates."""
    trial = events[i].trial
    mine = [e for e in events if e.trial == trial and trial > 0]
    return (any(e.cuff == "inflate" and e.index > i for e in mine)
            and not any(e.cuff == "inflate" and e.index < i for e in mine))


def trial_pressure_kpa(events: Sequence[PlannedEvent], i: int) -> float | None:
    """The pressure of event `i`'s trial's stimulus (what a simulated participant feels or expects)."""
    trial = events[i].trial
    return next((e.target_kpa for e in events if e.trial == trial and trial > 0 and e.cuff == "inflate"), None)


def scripted_ratings(timeline: Timeline, *, seed: int) -> ScriptedKeys:
    """Headless dry runs: a simulated participant answers every rating phase with key presses,
    an expectation before the trial's stimulus and a pain rating after it, each on its scale."""
    participant = SimulatedParticipant(seed=seed)
    events = timeline.events

    def answer(i: int, scale: RatingScale, t_onset: float) -> list[tuple[str, float]]:
        return participant.key_presses(scale, trial_pressure_kpa(events, i), t_onset,
                                       expectation=before_stimulus(events, i))

    return answer
