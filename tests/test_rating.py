"""The rating scale's state machine and the simulated participant's answers."""

from __future__ import annotations

import pytest

from experiment.station.rating import RatingScale, press, start_rating, timed_out
from experiment.station.simparticipant import RatingModel, SimulatedParticipant


def test_keys_move_clamp_and_confirm() -> None:
    scale = RatingScale(start=50, step=10, timeout_s=6)
    s = start_rating(scale, t_onset=100.0)
    for t in (100.5, 100.6, 100.7, 100.8, 100.9, 101.0):
        s = press(s, "2", t)
    assert s.value == 100  # clamped at the top
    s = press(s, "1", 101.1)
    s = press(s, "3", 101.5)
    assert s.confirmed and s.value == 90
    assert s.response_time_s == pytest.approx(1.5)
    assert press(s, "1", 101.6) == s  # nothing moves after confirm


def test_timeout_ignores_late_keys() -> None:
    s = start_rating(RatingScale(timeout_s=2.0), t_onset=0.0)
    assert not timed_out(s, 1.9) and timed_out(s, 2.0)
    assert press(s, "3", 2.5) == s


def test_simulated_participant_reaches_its_felt_rating_by_keys() -> None:
    scale = RatingScale(start=50, step=5)
    p = SimulatedParticipant(model=RatingModel(noise_sd=0.0), seed=1)
    presses = p.key_presses(scale, pressure_kpa=45.0, t_onset=0.0)
    s = start_rating(scale, 0.0)
    for key, t in presses:
        s = press(s, key, t)
    assert s.confirmed
    assert abs(s.value - RatingModel().expected(45.0)) <= scale.step / 2
    assert RatingModel().pressure_for(RatingModel().expected(40.0)) == pytest.approx(40.0)


def test_expectations_are_seeded_and_leave_the_pain_ratings_as_they_were() -> None:
    plain, with_expectations = SimulatedParticipant(seed=3), SimulatedParticipant(seed=3)
    felt = [plain.rate(40.0) for _ in range(5)]
    expected, felt_too = [], []
    for _ in range(5):
        expected.append(with_expectations.expect(40.0))
        felt_too.append(with_expectations.rate(40.0))
    assert felt_too == felt                     # an expectation phase does not shift the pain ratings
    again = SimulatedParticipant(seed=3)
    assert [again.expect(40.0) for _ in range(5)] == expected != felt   # the same seed, the same answers
    assert all(0.0 <= v <= 100.0 for v in expected)
