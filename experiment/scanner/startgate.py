"""Which pulse is time zero, and waiting for it.

Two dummy-volume regimes exist (docs/scanner.md): the scanner may discard preparation
volumes and send no pulse for them (`scanner_discarded`, recorded only: nothing to
skip), or send pulses for volumes the user will discard (`discard_pulses`: skipped
here). Time zero is the pulse of the first stored volume, as BIDS requires (onset 0
is the first volume in the stored file).

`StartGate` is pure: it is fed pulses and says which volume each one is.
`wait_for_t0` is the thin waiting loop around it: it polls the source, hands every
pulse (discarded or not) to `on_pulse` so each is logged, keeps Escape active, and
gives up after a timeout with a message that says what to check.
"""

from __future__ import annotations

from typing import Callable

from experiment.clock import Clock
from experiment.errors import AbortError
from experiment.scanner.base import Pulse, TriggerSource


class StartGate:
    """Counts pulses and fixes t0 at the pulse of the first stored volume."""

    def __init__(self, discard_pulses: int, *, scanner_discarded: int = 0) -> None:
        for name, value in (("discard_pulses", discard_pulses), ("scanner_discarded", scanner_discarded)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be a whole number >= 0, got {value!r}")
        self.discard_pulses = discard_pulses
        self.scanner_discarded = scanner_discarded  # recorded for BIDS; the scanner sent no pulse for these
        self.n_pulses = 0
        self.t0: float | None = None
        self.t0_pulse_index: int | None = None

    @property
    def started(self) -> bool:
        return self.t0 is not None

    @property
    def discarded(self) -> int:
        """Pulses skipped so far (at most `discard_pulses`)."""
        return min(self.n_pulses, self.discard_pulses)

    def feed(self, pulse: Pulse) -> int | None:
        """The 0-based stored-volume index of this pulse; None for a discarded one."""
        position = self.n_pulses
        self.n_pulses += 1
        if position < self.discard_pulses:
            return None
        if position == self.discard_pulses:
            self.t0 = pulse.t
            self.t0_pulse_index = pulse.index
        return position - self.discard_pulses

    def status(self) -> str:
        """What is awaited, for the operator console."""
        if self.started:
            return f"t0 fixed at pulse {self.t0_pulse_index} (after {self.discard_pulses} discarded)"
        if self.n_pulses == 0:
            extra = f" then {self.discard_pulses} to discard" if self.discard_pulses else ""
            return f"waiting for the first scanner pulse{extra}"
        return (f"discarding pulse {self.n_pulses} of {self.discard_pulses}; "
                f"t0 at pulse {self.discard_pulses + 1}")


def wait_for_t0(source: TriggerSource, gate: StartGate, *, clock: Clock, timeout_s: float,
                should_abort: Callable[[], bool], on_status: Callable[[str], None],
                on_pulse: Callable[[Pulse, int | None], None] | None = None,
                pump: Callable[[], None] | None = None, poll_s: float = 0.005) -> float:
    """Poll `source` until `gate` fixes t0; returns t0 (clock time of that pulse).

    Every pulse polled goes to `on_pulse(pulse, volume)` in order, including the ones
    after t0 that arrived in the same poll, so none is lost between waiting and the
    run. `pump` (e.g. a frame flip that keeps the window alive) paces the loop when
    given; otherwise the loop sleeps `poll_s` (pulse times come from the source, so the
    poll interval only delays noticing t0; keep it above RealClock's 2 ms spin, which
    holds the GIL and delays reader threads' timestamps). `timeout_s` is the longest wait for
    the first pulse and for each next one while discarding. Raises AbortError
    (exit 3) on timeout and when `should_abort()` (Escape) is true.
    """
    last_status = gate.status()
    on_status(last_status)
    deadline = clock.now() + timeout_s
    while True:
        if should_abort():
            raise AbortError(f"waiting for the scanner stopped by the operator ({gate.status()})",
                             reason="operator")
        pulses = source.poll()
        for pulse in pulses:
            volume = gate.feed(pulse)
            if on_pulse is not None:
                on_pulse(pulse, volume)
        if pulses:
            deadline = clock.now() + timeout_s
            status = gate.status()
            if status != last_status:
                on_status(status)
                last_status = status
        if gate.t0 is not None:
            return gate.t0
        if clock.now() > deadline:
            if gate.n_pulses == 0:
                raise AbortError(f"first trigger never came within {timeout_s:g} s from {source.name} "
                                 f"— check the trigger cable/box mode", reason="no_trigger")
            raise AbortError(f"trigger pulses stopped after {gate.n_pulses} of {gate.discard_pulses} discarded "
                             f"pulses (none for {timeout_s:g} s) — check the scanner and the trigger line",
                             reason="no_trigger")
        if pump is not None:
            pump()
        else:
            clock.sleep(poll_s)
