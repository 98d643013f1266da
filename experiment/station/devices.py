"""Open the devices of a run from the prepared specs: cuff, display, trigger source.

This is the only place where a run's mode (real, dry run, headless) turns into
concrete devices, so the rest of the runner never asks which mode it is in:
    real      the cuff and trigger line named by --cuff/--scanner or the rig file
    dry run   the simulated CUFF/1 cuff on a pseudo-terminal through the serial driver,
              the simulated scanner writing pulses into a pseudo-terminal read by the
              serial trigger source, a real window
    headless  the same simulated devices on a virtual clock (in-process, no threads),
              a simulated display, and a simulated participant answering ratings
Every device is registered on the caller's ExitStack; the cuff's exit vents.
"""

from __future__ import annotations

from contextlib import ExitStack
from typing import TYPE_CHECKING, Any, Callable, Sequence

from experiment.clock import Clock
from experiment.errors import HardwareError
from experiment.station.rating import RatingScale

if TYPE_CHECKING:
    from experiment.protocol.schedule import PlannedEvent
    from experiment.scanner.base import TriggerSource


def safety_limits(protocol: Any) -> Any:
    from experiment.cuff.safety import SafetyLimits

    s = protocol.safety
    return SafetyLimits(ceiling_kpa=s.max_pressure_kpa, max_stimulus_s=s.max_inflation_per_stimulus_s,
                        max_run_inflated_s=s.max_cumulative_inflation_per_run_s,
                        release_threshold_kpa=s.release_threshold_kpa, release_deadline_s=s.release_deadline_s,
                        overpressure_margin_kpa=s.compliance_margin_kpa)


def open_cuff(prep: Any, *, clock: Clock, stack: ExitStack, on_record: Callable[[dict], None],
              on_sample: Callable[[Any], None]) -> Any:
    """The cuff behind its supervisor, identified, limits checked, armed. Exit 4 on failure."""
    from experiment.cuff.factory import open_cuff as open_raw
    from experiment.cuff.safety import CuffSupervisor

    raw = open_raw(prep.cuff_spec, clock=clock, dry_run=prep.dry_run)
    if not prep.dry_run and raw.info is not None and raw.info.simulated:
        raw.close()
        raise HardwareError(f"the cuff on {raw.info.port} identifies itself as a simulator ({raw.info.name}); a real "
                            "session never uses a simulated cuff. Connect the real cuff, or rehearse with --dry-run")
    supervisor = CuffSupervisor(raw, clock=clock, limits=safety_limits(prep.protocol), on_record=on_record,
                                on_sample=on_sample)
    stack.callback(supervisor.close)
    supervisor.start()
    return supervisor


def make_safe(cuff: Any, reason: str) -> None:
    """Vent now; never raises (the supervisor's close() vents again, disarms and verifies).

    A planned VENT from this thread when the link is healthy; after a trip, or if the
    planned vent fails, the supervisor's guard thread sends it (`emergency_vent`)."""
    if cuff.safety_tripped:
        cuff.emergency_vent(reason)
        return
    try:
        cuff.vent(reason)
    except Exception:  # noqa: BLE001 - the vent must be attempted however the run ended
        cuff.emergency_vent(reason)


def open_display(prep: Any, *, clock: Clock, stack: ExitStack) -> Any:
    from experiment.station.display import SimulatedDisplay, WindowDisplay

    screen = prep.rig.screen
    if prep.headless:
        return SimulatedDisplay(clock, refresh_hz=screen.refresh_hz or 60.0)  # type: ignore[arg-type]
    fullscreen = screen.fullscreen and not prep.dry_run
    try:
        disp = WindowDisplay(clock=clock, cues=prep.protocol.cues, stimuli_dir=prep.stimuli_dir,
                             fullscreen=fullscreen, size=tuple(screen.size or (1024, 768)), screen=screen.index,
                             units=screen.units, refresh_hz=screen.refresh_hz or 60.0, dry_run=prep.dry_run,
                             width_cm=screen.width_cm, distance_cm=screen.distance_cm,
                             rating_scale=rating_scale(prep) if prep.protocol.rating is not None else None)
    except HardwareError:
        raise
    stack.callback(disp.close)
    return disp


def _scanner_plan(prep: Any) -> Any:
    from experiment.scanner.sim_scanner import ScannerPlan

    scan = prep.protocol.scan
    discard = getattr(prep.rig, "discard_pulses", None)
    return ScannerPlan(tr_s=scan.tr_s, n_volumes=scan.n_volumes + 2, prep_scans_no_pulse=scan.scanner_discarded,
                       discard_pulses=scan.discard_pulses if discard is None else discard,
                       jitter_s=0.0002, seed=prep.seed, start_delay_s=1.0)


def open_trigger_source(prep: Any, *, clock: Clock, stack: ExitStack, display: Any) -> TriggerSource:
    from experiment.scanner.factory import open_trigger_source as open_source

    win = getattr(display, "win", None)
    source = open_source(prep.scanner_spec, clock=clock, win=win, dry_run=prep.dry_run, plan=_scanner_plan(prep),
                         default_key=keys(prep).trigger)
    stack.callback(source.close)
    if not prep.dry_run and source.simulated:
        raise HardwareError(f"the trigger source {str(prep.scanner_spec)!r} is simulated; a real run never uses a "
                            "simulated scanner. Use keyboard[:KEY] or serial:PORT[:PRESET], or rehearse with --dry-run")
    return source


def key_reader(prep: Any, *, source: TriggerSource | None, display: Any) -> Callable[[], list[tuple[str, float]]]:
    """Participant and operator keys (not scanner pulses), stamped on the run's clock.

    A run has exactly one KeyboardSource (two would steal keys from each other): the
    trigger source's when it reads the keyboard, else one made here for keys only.
    """
    from experiment.scanner.keyboard_source import KeyboardSource

    if prep.headless:
        return lambda: []
    if source is not None and source.reads_keyboard:
        return source.poll_keys
    keys = KeyboardSource(display.win, clock=display._clock, trigger_keys=(), name="keys")
    keys.open()
    return keys.poll_keys


def keys(prep: Any) -> Any:
    """The protocol's keys with the rig's button-box overrides."""
    from experiment.protocol.rig import effective_keys

    return effective_keys(prep.protocol, prep.rig)


def key_roles(prep: Any) -> dict[str, str]:
    k = keys(prep)
    return {k.escape: "escape", k.stop: "stop", k.left: "response", k.right: "response", k.confirm: "response"}


def rating_scale(prep: Any) -> RatingScale:
    r, k = prep.protocol.rating, keys(prep)
    if r is None:
        return RatingScale(left_key=k.left, right_key=k.right, confirm_key=k.confirm)
    return RatingScale(low=r.min, high=r.max, start=r.start, step=r.step, timeout_s=r.timeout_s,
                       left_key=k.left, right_key=k.right, confirm_key=k.confirm,
                       low_label=r.low_anchor, high_label=r.high_anchor, question=r.question)


def before_stimulus(events: Sequence[PlannedEvent], i: int) -> bool:
    """Whether timeline event `i` comes before its trial's inflation (a rating there is an
    expectation); False in a trial that never inflates."""
    trial = events[i].trial
    mine = [e for e in events if e.trial == trial and trial > 0]
    return (any(e.cuff == "inflate" and e.index > i for e in mine)
            and not any(e.cuff == "inflate" and e.index < i for e in mine))


def scripted_ratings(prep: Any, clock: Clock) -> Callable[[int, RatingScale, float], list[tuple[str, float]]] | None:
    """Headless dry runs: a simulated participant answers every rating phase with key presses,
    an expectation before the trial's stimulus and a pain rating after it."""
    if not prep.headless:
        return None
    from experiment.station.simparticipant import SimulatedParticipant

    participant = SimulatedParticipant(seed=prep.seed)
    pressure = prep.timeline.target_kpa
    events = prep.timeline.events

    def answer(i: int, scale: RatingScale, t_onset: float) -> list[tuple[str, float]]:
        return participant.key_presses(scale, pressure, t_onset, expectation=before_stimulus(events, i))

    return answer


def plan_record(ev: Any) -> dict[str, Any]:
    """A timeline event as a `plan` log record (docs/event-log.md)."""
    return {"i": ev.index, "trial": ev.trial, "trial_type": ev.trial_type, "phase": ev.phase, "onset_s": ev.onset_s,
            "duration_s": ev.duration_s, "cue": ev.cue, "cuff": ev.cuff, "target_kpa": ev.target_kpa,
            "rate_kpa_s": ev.rate_kpa_s, "timed_from": ev.timed_from, "ramp_s": ev.ramp_s,
            "bids_trial_type": ev.bids_trial_type, "phase_kind": ev.kind}
