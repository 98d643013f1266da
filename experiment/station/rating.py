"""The visual analogue rating: a pure state machine driven by button-box keys.

Keys move a marker left or right in steps and confirm; the rating ends at confirm or
at the timeout. The display draws `RatingState`; the runner feeds it keys with their
timestamps. No clock reads in here.
"""

from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True)
class RatingScale:
    low: float = 0.0
    high: float = 100.0
    start: float = 50.0
    step: float = 5.0
    timeout_s: float = 6.0
    left_key: str = "1"
    right_key: str = "2"
    confirm_key: str = "3"
    low_label: str = "no pain"
    high_label: str = "worst pain imaginable"
    question: str = "How painful was it?"


@dataclass(frozen=True)
class RatingState:
    scale: RatingScale
    t_onset: float
    value: float
    moved: bool = False
    confirmed: bool = False
    t_response: float | None = None  # time of confirm

    @property
    def response_time_s(self) -> float | None:
        return None if self.t_response is None else self.t_response - self.t_onset


def start_rating(scale: RatingScale, t_onset: float) -> RatingState:
    return RatingState(scale=scale, t_onset=t_onset, value=scale.start)


def press(state: RatingState, key: str, t: float) -> RatingState:
    """Apply one key press; keys after confirm or after the timeout are ignored."""
    s = state.scale
    if state.confirmed or t - state.t_onset > s.timeout_s:
        return state
    if key == s.left_key:
        return replace(state, value=max(s.low, state.value - s.step), moved=True)
    if key == s.right_key:
        return replace(state, value=min(s.high, state.value + s.step), moved=True)
    if key == s.confirm_key:
        return replace(state, confirmed=True, t_response=t)
    return state


def timed_out(state: RatingState, now: float) -> bool:
    return not state.confirmed and now - state.t_onset >= state.scale.timeout_s
