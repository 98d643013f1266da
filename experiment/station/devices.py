"""Open a Station's devices for its mode: the one place where a mode becomes devices.

    real      the cuff and trigger line the specs name; a real window; a device that
              says it is simulated is refused (exit 4)
    dry run   the simulated CUFF/1 cuff (or, for `sim:gated`, the simulated gate board with its
              panel at the run's pressure) served on a pseudo-terminal and driven through
              the serial driver, the simulated scanner writing into a pseudo-terminal
              read by the serial trigger source, a real window marked DRY RUN
    headless  the same simulated devices on a virtual clock (in-process, no threads) and
              a simulated display
Every device is registered on the Station's ExitStack; the cuff's closing vents.
"""

from __future__ import annotations

from contextlib import ExitStack
from typing import TYPE_CHECKING, Callable, Literal, Protocol

from experiment.clock import Clock, VirtualClock
from experiment.errors import HardwareError
from experiment.protocol.model import Safety
from experiment.log.records import DisplayInfo, SessionRecord, SupervisorRecord
from experiment.station.display import FrameStats
from experiment.station.rating import RatingState

if TYPE_CHECKING:
    from experiment.buttons.decoders import ButtonDecoder, ButtonSource
    from experiment.cuff.base import PressureSample
    from experiment.cuff.safety import CuffSupervisor, SafetyLimits
    from experiment.protocol.specs import ButtonSpec, ScannerSpec
    from experiment.scanner.base import TriggerSource
    from experiment.station.station import ButtonNeed, CuffNeed, Mode, TriggerNeed, WindowSpec

KeyReader = Callable[[], list[tuple[str, float]]]
"""Participant and operator keys since the last call: (key name, time on the run's clock)."""


class Display(Protocol):
    """What a procedure draws with: a PsychoPy window or the headless simulated display."""

    frame_s: float
    refresh_hz: float
    simulated: bool
    stats: FrameStats

    def show(self, cue: str | None) -> None: ...
    def show_rating(self, state: RatingState | None) -> None: ...
    def show_message(self, text: str | None) -> None: ...
    def predict_next_flip(self) -> float: ...
    def flip(self) -> float: ...
    def info(self) -> DisplayInfo: ...
    def close(self) -> None: ...


def safety_limits(safety: Safety, *, rates_kpa_s: tuple[float, ...] = (), panel_kpa: float | None = None,
                  needs_readback: bool = False) -> SafetyLimits:
    """The supervisor's interlock settings from a protocol's (or a calibration's) safety section;
    `rates_kpa_s`, the ramp rates the session will command, are checked against the device at start;
    `panel_kpa` is a gated inflator's panel setting (the only target it may be sent); `needs_readback`:
    the session waits for the target to be reached, so the device must measure its pressure."""
    from experiment.cuff.safety import SafetyLimits

    return SafetyLimits(ceiling_kpa=safety.max_pressure_kpa, max_stimulus_s=safety.max_inflation_per_stimulus_s,
                        max_run_inflated_s=safety.max_cumulative_inflation_per_run_s,
                        release_threshold_kpa=safety.release_threshold_kpa,
                        release_deadline_s=safety.release_deadline_s,
                        overpressure_margin_kpa=safety.compliance_margin_kpa,
                        planned_rates_kpa_s=tuple(sorted(set(rates_kpa_s))), panel_kpa=panel_kpa,
                        needs_readback=needs_readback)


def open_cuff(need: CuffNeed, *, mode: Mode, clock: Clock, stack: ExitStack,
              on_record: Callable[[SupervisorRecord], None],
              on_sample: Callable[[PressureSample], None], sim_link: str = "auto") -> CuffSupervisor:
    """The cuff behind its supervisor: identified, real unless rehearsing, limits checked, armed."""
    from experiment.cuff.factory import open_cuff as open_raw
    from experiment.cuff.safety import CuffSupervisor

    link: Literal["pty", "socket"] | None = "pty" if sim_link == "pty" else "socket" if sim_link == "socket" else None
    raw = open_raw(need.spec, clock=clock, dry_run=mode.simulated, sim_link=link, panel_kpa=need.limits.panel_kpa)
    if not mode.simulated and raw.info is not None and raw.info.simulated:
        raw.close()
        raise HardwareError(f"the cuff on {raw.info.port} identifies itself as a simulator ({raw.info.name}); a real "
                            "session never uses a simulated cuff. Connect the real cuff, or rehearse with --dry-run")
    supervisor = CuffSupervisor(raw, clock=clock, limits=need.limits, on_record=on_record, on_sample=on_sample)
    stack.callback(supervisor.close)
    supervisor.start()
    return supervisor


def make_safe(cuff: CuffSupervisor, reason: str) -> None:
    """Vent now; never raises (the supervisor's close() vents again, disarms and verifies).

    A planned VENT from this thread when the link is healthy; after a trip, or if the
    planned vent fails, the supervisor's guard thread sends it (`emergency_vent`)."""
    if cuff.safety_tripped:
        cuff.emergency_vent(reason)
        return
    try:
        cuff.vent(reason)
    except Exception:  # noqa: BLE001 - the vent must be attempted however the session ended
        cuff.emergency_vent(reason)


def open_display(window: WindowSpec, *, mode: Mode, clock: Clock, stack: ExitStack) -> Display:
    """The participant's screen: a PsychoPy window, or the simulated display of a headless session."""
    from experiment.station.display import SimulatedDisplay, WindowDisplay
    from experiment.station.station import Mode

    screen = window.screen
    if mode is Mode.HEADLESS:
        assert isinstance(clock, VirtualClock)
        return SimulatedDisplay(clock, refresh_hz=screen.refresh_hz or 60.0)
    display = WindowDisplay(clock=clock, cues=window.cues, stimuli_dir=window.stimuli_dir,
                            fullscreen=screen.fullscreen and mode is Mode.REAL,
                            size=screen.size or (1024, 768), screen=screen.index, units=screen.units,
                            refresh_hz=screen.refresh_hz or 60.0, dry_run=mode.simulated,
                            width_cm=screen.width_cm, distance_cm=screen.distance_cm,
                            rating_scales=window.rating_scales,
                            light_patch=(screen.light_patch, screen.light_patch_px))
    stack.callback(display.close)
    return display


def open_trigger(need: TriggerNeed, *, mode: Mode, clock: Clock, stack: ExitStack,
                 display: Display, sim_link: str = "auto", buttons: ButtonDecoder | None = None) -> TriggerSource:
    """The trigger source; a simulated one only in a rehearsal (on the rig's `sim_link`).
    `buttons`: the same line carries the button box (one reader splits the bytes)."""
    from experiment.scanner.factory import open_trigger_source

    spec = trigger_spec_for(need.spec, mode=mode, sim_link=sim_link)
    source = open_trigger_source(spec, clock=clock, win=getattr(display, "win", None),
                                 dry_run=mode.simulated, plan=need.plan, default_key=need.default_key,
                                 buttons=buttons)
    stack.callback(source.close)
    if not mode.simulated and source.simulated:
        raise HardwareError(f"the trigger source {str(need.spec)!r} is simulated; a real run never uses a "
                            "simulated scanner. Use keyboard[:KEY] or serial:PORT[:PRESET], or rehearse with --dry-run")
    return source


def trigger_spec_for(spec: ScannerSpec, *, mode: Mode, sim_link: str) -> ScannerSpec:
    """The spec a trigger source is opened with: a simulated scanner with no driver named goes
    over the rig's `sim_link` in a real-time dry run."""
    from experiment.protocol.specs import SimDriver, SimSpec
    from experiment.station.station import Mode

    if isinstance(spec, SimSpec) and spec.driver is None and sim_link != "auto" and mode is not Mode.HEADLESS:
        return SimSpec(SimDriver.PTY if sim_link == "pty" else SimDriver.SOCKET)
    return spec


def key_reader(*, mode: Mode, trigger: TriggerSource | None, display: Display, clock: Clock) -> KeyReader:
    """Participant and operator keys (not scanner pulses), stamped on the session's clock.

    A session has exactly one keyboard reader (two would steal keys from each other): the
    trigger source's when it reads the keyboard, else one made here for keys only. A
    headless session has no keyboard: its simulated participant answers through the procedure.
    """
    from experiment.scanner.keyboard_source import KeyboardSource
    from experiment.station.station import Mode

    if mode is Mode.HEADLESS:
        return lambda: []
    if trigger is not None and trigger.reads_keyboard:
        return trigger.poll_keys
    keys = KeyboardSource(getattr(display, "win", None), clock=clock, trigger_keys=(), name="keys")
    keys.open()
    return keys.poll_keys


# ---------------------------------------------------------------- button boxes (docs/buttons.md)


def button_decoder(need: ButtonNeed) -> ButtonDecoder:
    """The decoder of a button box's wire format (a simulated box speaks fORP)."""
    from experiment.buttons.decoders import make_decoder
    from experiment.protocol.specs import ButtonPresetName, SerialButtonSpec

    preset = need.spec.preset if isinstance(need.spec, SerialButtonSpec) else ButtonPresetName.FORP
    return make_decoder(preset, need.byte_map)


def shares_line(buttons: ButtonSpec, trigger: ScannerSpec | None) -> bool:
    """Whether the button box is on the trigger's line: then one reader owns the port and splits its bytes."""
    from experiment.protocol.specs import SerialButtonSpec, SerialSpec

    if not isinstance(buttons, SerialButtonSpec):
        return True    # the simulated box is always on the simulated scanner's line
    return isinstance(trigger, SerialSpec) and trigger.port == buttons.port


def line_buttons(trigger: TriggerSource) -> ButtonSource:
    """The button side of a trigger source whose line carries the box too."""
    from experiment.scanner.serial_source import SerialSource
    from experiment.scanner.sim_scanner import DrivenSource

    if isinstance(trigger, (SerialSource, DrivenSource)):
        return trigger
    raise HardwareError(f"the trigger source {trigger.name!r} cannot carry a button box")


def open_buttons(need: ButtonNeed, decoder: ButtonDecoder, *, mode: Mode, clock: Clock,
                 stack: ExitStack) -> ButtonSource:
    """A button box on its own serial line, read by its own thread."""
    from experiment.protocol.specs import SerialButtonSpec
    from experiment.scanner.serial_source import SerialSource

    spec = need.spec
    if not isinstance(spec, SerialButtonSpec):
        raise HardwareError("the simulated button box needs the simulated scanner on a pty or socket "
                            "(--scanner sim in a real-time dry run)")
    source = SerialSource(spec.port, clock=clock, preset=None, buttons=decoder, baud=spec.baud, name="buttons")
    source.open()
    stack.callback(source.close)
    return source


def with_buttons(keys: KeyReader, buttons: ButtonSource, *, record: Callable[[SessionRecord], None]) -> KeyReader:
    """The keyboard's keys and the box's presses (as key names), oldest first; each press is logged
    as a `button` record, bytes that matched nothing as one `unmatched_bytes` record per poll."""

    def read() -> list[tuple[str, float]]:
        out = keys()
        for p in buttons.poll_buttons():
            record({"kind": "button", "t": p.t, "button": p.button, "raw": p.raw.hex(), "device_ms": p.device_ms})
            out.append((p.button, p.t))
        u = buttons.take_unmatched()
        if u is not None:
            record({"kind": "unmatched_bytes", "t": u.t, "n": u.n, "head": u.head.hex()})
        out.sort(key=lambda k: k[1])
        return out

    return read
