"""The virtual clock fires timers in time order and never moves backwards."""

from __future__ import annotations

from experiment.clock import RealClock, VirtualClock


def test_virtual_timers_fire_in_order_at_their_times() -> None:
    clock = VirtualClock()
    fired: list[tuple[str, float]] = []
    clock.call_at(2.0, lambda: fired.append(("b", clock.now())))
    clock.call_at(1.0, lambda: fired.append(("a", clock.now())))
    h = clock.call_at(1.5, lambda: fired.append(("cancelled", clock.now())))
    clock.cancel(h)
    clock.sleep_until(1.75)
    assert fired == [("a", 1.0)]
    assert clock.now() == 1.75
    clock.sleep(1.0)
    assert fired == [("a", 1.0), ("b", 2.0)]
    assert clock.now() == 2.75


def test_timer_scheduled_by_a_timer_runs_in_the_same_advance() -> None:
    clock = VirtualClock()
    ticks: list[float] = []

    def tick() -> None:
        ticks.append(clock.now())
        if len(ticks) < 5:
            clock.call_later(0.1, tick)

    clock.call_at(0.0, tick)
    clock.sleep_until(10.0)
    assert [round(t, 6) for t in ticks] == [0.0, 0.1, 0.2, 0.3, 0.4]


def test_sleep_until_the_past_does_not_go_back() -> None:
    clock = VirtualClock(start=5.0)
    clock.sleep_until(3.0)
    assert clock.now() == 5.0


def test_real_clock_meets_a_deadline_without_returning_early() -> None:
    clock = RealClock()
    target = clock.now() + 0.01
    clock.sleep_until(target)
    assert clock.now() >= target
