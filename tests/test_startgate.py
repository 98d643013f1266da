"""Time zero: dummy handling in both regimes, every pulse handed out, timeout and Escape."""

from __future__ import annotations

import pytest

from experiment.clock import VirtualClock
from experiment.errors import AbortError
from experiment.scanner.base import Pulse
from experiment.scanner.sim_scanner import ScannerPlan, VirtualScanner
from experiment.scanner.startgate import StartGate, wait_for_t0


def _pulses(times) -> list[Pulse]:
    return [Pulse(i, t, "sim") for i, t in enumerate(times)]


def test_gate_discards_the_user_pulses_and_numbers_the_stored_volumes() -> None:
    gate = StartGate(3, scanner_discarded=2)
    volumes = [gate.feed(p) for p in _pulses([10.0, 12.0, 14.0, 16.0, 18.0])]
    assert volumes == [None, None, None, 0, 1]
    assert (gate.t0, gate.t0_pulse_index, gate.discarded, gate.scanner_discarded) == (16.0, 3, 3, 2)


def test_gate_without_discards_takes_the_first_pulse() -> None:
    gate = StartGate(0)
    assert gate.feed(Pulse(0, 5.0, "sim")) == 0 and gate.t0 == 5.0 and gate.discarded == 0


@pytest.mark.parametrize("bad", [-1, 1.5, True])
def test_gate_refuses_bad_counts(bad) -> None:
    with pytest.raises(ValueError, match="discard_pulses must be a whole number"):
        StartGate(bad)


def _wait(plan: ScannerPlan, discard: int, *, timeout_s: float = 10.0, abort_at: float | None = None):
    clock = VirtualClock(100.0)
    source = VirtualScanner(plan, clock=clock)
    source.open()
    gate = StartGate(discard, scanner_discarded=plan.prep_scans_no_pulse)
    seen: list[tuple[int, int | None]] = []
    statuses: list[str] = []
    t0 = wait_for_t0(source, gate, clock=clock, timeout_s=timeout_s,
                     should_abort=lambda: abort_at is not None and clock.now() >= abort_at,
                     on_status=statuses.append, on_pulse=lambda p, v: seen.append((p.index, v)), poll_s=0.01)
    return t0, clock, source, gate, seen, statuses


def test_pulses_sent_for_discarded_volumes_are_skipped_and_t0_is_the_first_stored_volume() -> None:
    plan = ScannerPlan(tr_s=2.0, n_volumes=10, discard_pulses=4, start_delay_s=0.5)
    t0, clock, _, gate, seen, statuses = _wait(plan, discard=4)
    assert t0 == pytest.approx(100.0 + 0.5 + plan.first_stored_volume_s())
    assert t0 == pytest.approx(100.5 + 4 * 2.0)
    assert seen == [(0, None), (1, None), (2, None), (3, None), (4, 0)]
    assert gate.discarded == 4
    assert statuses[0] == "waiting for the first scanner pulse then 4 to discard"
    assert statuses[1] == "discarding pulse 1 of 4; t0 at pulse 5"
    assert statuses[-1].startswith("t0 fixed at pulse 4")
    assert clock.now() - t0 < 0.02  # noticed within one poll interval


def test_prep_scans_without_pulses_make_the_first_pulse_t0_and_are_recorded() -> None:
    plan = ScannerPlan(tr_s=1.0, n_volumes=5, prep_scans_no_pulse=3, start_delay_s=0.0)
    t0, _, _, gate, seen, _ = _wait(plan, discard=0)
    assert t0 == pytest.approx(100.0 + 3 * 1.0)  # the scanner spent 3 TR on prep scans, silently
    assert seen == [(0, 0)]
    assert gate.scanner_discarded == 3 and gate.discarded == 0


def test_pulses_polled_together_with_t0_are_all_handed_out() -> None:
    # the source is polled late: the discarded pulse, t0 and two more arrive in one batch
    class Batch:
        name = "batch"
        simulated = True

        def __init__(self) -> None:
            self.batches = [[], _pulses([1.0, 2.0, 3.0, 4.0])]

        def poll(self):
            return self.batches.pop(0) if self.batches else []

    clock = VirtualClock()
    seen: list[tuple[int, int | None]] = []
    t0 = wait_for_t0(Batch(), StartGate(1), clock=clock, timeout_s=5, should_abort=lambda: False,
                     on_status=lambda s: None, on_pulse=lambda p, v: seen.append((p.index, v)))
    assert t0 == 2.0 and seen == [(0, None), (1, 0), (2, 1), (3, 2)]


def test_first_trigger_timeout_aborts_with_what_to_check() -> None:
    plan = ScannerPlan(tr_s=2.0, n_volumes=10, start_delay_s=60.0)  # scanner never starts in time
    with pytest.raises(AbortError, match=r"first trigger never came within 5 s from sim — check the trigger "
                                         r"cable/box mode") as exc:
        _wait(plan, discard=0, timeout_s=5.0)
    assert exc.value.exit_code == 3 and exc.value.reason == "no_trigger"


def test_pulses_stopping_while_discarding_abort() -> None:
    plan = ScannerPlan(tr_s=1.0, n_volumes=0, discard_pulses=2, start_delay_s=0.0)  # only 2 pulses ever
    with pytest.raises(AbortError, match=r"trigger pulses stopped after 2 of 5 discarded pulses"):
        _wait(plan, discard=5, timeout_s=3.0)


def test_escape_while_waiting_aborts() -> None:
    plan = ScannerPlan(tr_s=2.0, n_volumes=10, start_delay_s=30.0)
    with pytest.raises(AbortError, match="waiting for the scanner stopped by the operator") as exc:
        _wait(plan, discard=0, timeout_s=60.0, abort_at=107.0)
    assert exc.value.reason == "operator"


def test_pump_paces_the_loop_instead_of_sleeping() -> None:
    clock = VirtualClock()
    plan = ScannerPlan(tr_s=1.0, n_volumes=3, start_delay_s=0.11)
    source = VirtualScanner(plan, clock=clock)
    source.open()
    frames: list[float] = []

    def flip() -> None:  # stands in for a 60 Hz frame flip
        clock.sleep(1 / 60)
        frames.append(clock.now())

    t0 = wait_for_t0(source, StartGate(0), clock=clock, timeout_s=5, should_abort=lambda: False,
                     on_status=lambda s: None, pump=flip)
    assert t0 == pytest.approx(0.11)  # the pulse's own time, not the flip's
    assert len(frames) == 7  # flips at 1/60 .. 7/60 s; the pulse at 0.11 s is seen after the 7th
    assert clock.now() == pytest.approx(7 / 60)  # no extra sleeps besides the flips
