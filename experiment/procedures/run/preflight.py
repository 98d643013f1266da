"""A run's pre-flight: every input checked, nothing touched; the result is a typed `RunPlan`.

Identifiers, protocol, rig, dataset root, run number, device specs, where the pressure
comes from, the schedule with its safety checks, the stimulus files, a terminal to confirm
on and a display: a problem is one InputError (exit 2) or, for a missing display, a
HardwareError (exit 4), before any device is opened.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from experiment.cuff.safety import PANEL_TOLERANCE_KPA
from experiment.errors import HardwareError, InputError
from experiment.log.records import PressureInfo
from experiment.outputs.dataset import check_root, default_root
from experiment.outputs.rundir import RunId, resolve_run
from experiment.procedures.calibration.results import calibrated_levels_kpa, resolve_pressure
from experiment.procedures.run.ratings import rating_scales
from experiment.protocol.model import Protocol, load_protocol
from experiment.protocol.rig import Rig, check_rig_for_protocol, effective_keys, load_rig
from experiment.protocol.schedule import Timeline, build_schedule
from experiment.protocol.rig import byte_of
from experiment.protocol.specs import (SIM_CUFF, ButtonPresetName, CuffKind, CuffSpec, Gate, ScannerSpec,
                                       SerialButtonSpec, SerialSpec, SimDriver, SimSpec, parse_buttons_spec,
                                       parse_cuff_spec,
                                       parse_scanner_spec)
from experiment.scanner.sim_scanner import ScannerPlan
from experiment.station.devices import safety_limits
from experiment.station.runinfo import check_writable
from experiment.station.station import ButtonNeed, CuffNeed, Mode, StationSpec, TriggerNeed, WindowSpec
from experiment.station.surroundings import check_can_confirm, check_display


INSTRUCTION_PAGE_DRY_RUN_S = 1.0   # a dry run turns each instruction page after this; its scanner starts after them


@dataclass(frozen=True)
class RunRequest:
    """What the operator asked for (the command line, or a visit step)."""

    protocol: Path
    participant: str
    session: str | None = None
    run: str = "1"                      # a number, or 'next'
    rig: Path | None = None
    cuff: str | None = None
    scanner: str | None = None
    buttons: str | None = None          # --buttons: a serial button box (docs/buttons.md)
    lsl: bool | None = None             # --lsl; None: the rig's `lsl`
    dry_run: bool = False
    headless: bool = False
    data: Path | None = None
    seed: int | None = None
    calibration: Path | None = None
    pressure_override_kpa: float | None = None
    override_reason: str | None = None
    panel_kpa: float | None = None      # a gated inflator's panel setting (else the rig's cuff_panel_pressure)
    yes: bool = False
    confirmed_by: str | None = None     # with yes: who confirmed instead of the terminal ('station')
    instructions: tuple[str, ...] | None = None   # pages instead of the protocol's (a visit step's)


@dataclass(frozen=True)
class RunPlan:
    """Everything known good before a device is touched."""

    protocol: Protocol
    protocol_path: Path
    rig: Rig
    rig_path: Path | None
    timeline: Timeline
    run_id: RunId
    take_next: bool                     # --run next: a number taken meanwhile moves this run on
    data_root: Path
    mode: Mode
    seed: int
    cuff_spec: CuffSpec
    scanner_spec: ScannerSpec
    pressure: PressureInfo              # the pressure and where it came from (log header, briefing)
    assume_yes: bool
    panel_kpa: float | None = None      # a gated inflator: the panel setting the target equals (checked)
    confirmed_by: str | None = None
    instructions: tuple[str, ...] = ()  # pages shown before waiting for the scanner
    buttons: ButtonNeed | None = None   # a serial button box besides the keyboard
    lsl: bool = False                   # publish Lab Streaming Layer streams (docs/lsl.md)

    @property
    def dry_run(self) -> bool:
        return self.mode.simulated

    @property
    def discard_pulses(self) -> int:
        """Pulses skipped before t0: the rig's count for this scanner, else the protocol's."""
        rig = self.rig.discard_pulses
        return rig if rig is not None else self.protocol.scan.discard_pulses

    @property
    def rates_kpa_s(self) -> tuple[float, ...]:
        """The ramp rates the run will command (the cuff must accept them: checked at start)."""
        return tuple({e.rate_kpa_s for e in self.timeline.events if e.rate_kpa_s is not None})

    @property
    def needs_readback(self) -> bool:
        """A phase is timed from the moment the target is reached: the cuff must measure its pressure."""
        return any(e.timed_from == "target_reached" and e.cuff == "inflate" for e in self.timeline.events)

    def station_spec(self) -> StationSpec:
        """What the run needs from the Station."""
        p, scan = self.protocol, self.protocol.scan
        keys = effective_keys(p, self.rig, scanner=self.scanner_spec)
        window = WindowSpec(screen=self.rig.screen, cues=p.cues, stimuli_dir=p.stimuli_dir,
                            rating_scales=tuple(rating_scales(p, keys).values()))
        plan = ScannerPlan(tr_s=scan.tr_s, n_volumes=scan.n_volumes + 2, prep_scans_no_pulse=scan.scanner_discarded,
                           discard_pulses=self.discard_pulses, jitter_s=0.0002, seed=self.seed,
                           start_delay_s=1.0 + INSTRUCTION_PAGE_DRY_RUN_S * len(self.instructions))
        return StationSpec(mode=self.mode, keys=keys, window=window,
                           cuff=CuffNeed(self.cuff_spec, safety_limits(p.safety, rates_kpa_s=self.rates_kpa_s,
                                                                       panel_kpa=self.panel_kpa,
                                                                       needs_readback=self.needs_readback)),
                           trigger=TriggerNeed(self.scanner_spec, plan, default_key=keys.trigger),
                           assume_yes=self.assume_yes, sim_link=self.rig.sim_link, confirmed_by=self.confirmed_by,
                           buttons=self.buttons)


def mode_of(*, dry_run: bool, headless: bool) -> Mode:
    """The mode of a session; --headless needs --dry-run."""
    if headless and not dry_run:
        raise InputError("--headless runs on a virtual clock with simulated devices: it needs --dry-run")
    return Mode.HEADLESS if headless else (Mode.DRY_RUN if dry_run else Mode.REAL)


def _device_specs(req: RunRequest, rig: Rig) -> tuple[CuffSpec, ScannerSpec]:
    """The cuff and trigger specs, parsed once; simulation only in a dry run, never instead of a device."""
    cli_cuff = None if req.cuff is None else parse_cuff_spec(req.cuff, what="--cuff")
    cli_scanner = None if req.scanner is None else parse_scanner_spec(req.scanner, what="--scanner")
    if req.dry_run:
        if cli_cuff is not None and not cli_cuff.simulated:
            raise InputError(f"--dry-run uses the simulated cuff; remove --cuff {cli_cuff} or drop --dry-run")
        # a rig with a gated inflator rehearses with the simulated gate board, under the same rules
        # (without its sensor for a relay, which has no read-back)
        rig_gate = None if rig.cuff is None else rig.cuff.gate
        return cli_cuff or (SIM_CUFF if rig_gate is None else CuffSpec(CuffKind.SIM, gate=rig_gate)), \
            cli_scanner or SimSpec()
    cuff, scanner = cli_cuff or rig.cuff, cli_scanner or rig.scanner
    if cuff is None:
        raise InputError("no cuff given: use --cuff line:PORT or cpar:PORT, a rig file, or --dry-run")
    if scanner is None:
        raise InputError("no trigger source given: use --scanner keyboard|serial:PORT, a rig file, or --dry-run")
    for what, spec in (("--cuff", cuff), ("--scanner", scanner)):
        if spec.simulated:
            where = what if spec in (cli_cuff, cli_scanner) else f"{rig.label}: {what[2:]}"
            raise InputError(f"{where} {spec} is only allowed with --dry-run; a real run never uses simulation")
    return cuff, scanner


def _buttons(req: RunRequest, rig: Rig, scanner: ScannerSpec, mode: Mode) -> ButtonNeed | None:
    """The button box: --buttons, else the rig's (a dry run takes only --buttons, as for the scanner);
    a shared line's baud rate, a custom box's byte map, `sim` only in a real-time dry run with `--scanner sim`."""
    spec = (parse_buttons_spec(req.buttons, what="--buttons") if req.buttons is not None
            else None if req.dry_run else rig.buttons)
    if spec is None:
        return None
    what = "--buttons" if req.buttons is not None else f"{rig.label}: buttons"
    if mode is Mode.HEADLESS:
        raise InputError(f"{what} {spec}: a headless run has no button box (its simulated participant answers "
                         "directly); drop --headless to rehearse with one")
    if not isinstance(spec, SerialButtonSpec):
        if not req.dry_run:
            raise InputError(f"{what} sim is only allowed with --dry-run; a real run never uses simulation")
        if not isinstance(scanner, SimSpec) or scanner.driver not in (None, SimDriver.SERIAL, SimDriver.PTY,
                                                                      SimDriver.SOCKET):
            raise InputError(f"{what} sim presses fORP buttons on the simulated scanner's line: it needs --scanner "
                             f"sim (or sim:pty, sim:socket), not {scanner}")
        return ButtonNeed(spec)
    if isinstance(scanner, SerialSpec) and scanner.port == spec.port and scanner.preset.baud != spec.baud:
        raise InputError(f"{what} {spec} shares the port {spec.port} with --scanner {scanner}, but at {spec.baud} "
                         f"baud against {scanner.preset.baud}: one line has one baud rate (add @BAUD to one of them)")
    byte_map = None
    if spec.preset is ButtonPresetName.CUSTOM:
        if rig.button_map is None:
            raise InputError(f"{what} {spec}: a custom button box needs the rig file's button_map (byte -> button "
                             f"name); {rig.label} has none")
        byte_map = {byte_of(k): v for k, v in rig.button_map.items()}
    return ButtonNeed(spec, byte_map)


def _check_lsl(mode: Mode, *, from_rig: bool, rig: Rig) -> None:
    """LSL streams need real time and pylsl (with its bundled liblsl)."""
    import importlib.util

    what = f"{rig.label}: lsl" if from_rig else "--lsl"
    if mode is Mode.HEADLESS:
        raise InputError(f"{what}: a headless run is on a virtual clock; Lab Streaming Layer streams need real time "
                         "(drop --headless)")
    if importlib.util.find_spec("pylsl") is None:
        raise HardwareError(f"{what}: the pylsl package is not installed (pip install pylsl; it bundles liblsl)")


def preflight(req: RunRequest) -> RunPlan:
    """Check all input; touches no device. InputError (exit 2), HardwareError for no display (exit 4)."""
    mode = mode_of(dry_run=req.dry_run, headless=req.headless)
    protocol = load_protocol(req.protocol)
    rig = load_rig(req.rig)
    check_rig_for_protocol(protocol, rig)
    data_root = req.data if req.data is not None else default_root(dry_run=req.dry_run)
    check_writable(data_root)
    check_root(data_root, dry_run=req.dry_run)
    run_id = resolve_run(data_root, participant=req.participant, session=req.session, task=protocol.task,
                         run=req.run)
    cuff_spec, scanner_spec = _device_specs(req, rig)
    effective_keys(protocol, rig, scanner=scanner_spec)     # every key its own role, before any device
    buttons = _buttons(req, rig, scanner_spec, mode)
    lsl = rig.lsl if req.lsl is None else req.lsl
    if lsl:
        _check_lsl(mode, from_rig=req.lsl is None, rig=rig)
    pressure = resolve_pressure(protocol, data_root=data_root, participant=run_id.participant,
                                session=run_id.session, dry_run=req.dry_run, calibration_file=req.calibration,
                                max_age_h=rig.calibration_max_age_h, override_kpa=req.pressure_override_kpa,
                                override_reason=req.override_reason)
    seed = req.seed if req.seed is not None else protocol.seed
    timeline = build_schedule(protocol, seed=seed, participant=run_id.participant,
                              levels_kpa=calibrated_levels_kpa(pressure, protocol), timing=rig.cuff_timing)
    panel_kpa = gated_panel_kpa(cuff_spec, timeline, rig=rig, panel_kpa=req.panel_kpa, dry_run=req.dry_run)
    check_stimulus_files(protocol)
    check_can_confirm(dry_run=req.dry_run, assume_yes=req.yes)
    if mode is not Mode.HEADLESS:
        check_display()
    return RunPlan(protocol=protocol, protocol_path=req.protocol, rig=rig, rig_path=req.rig, timeline=timeline,
                   run_id=run_id, take_next=req.run == "next", data_root=data_root, mode=mode, seed=seed,
                   cuff_spec=cuff_spec, scanner_spec=scanner_spec, pressure=pressure, assume_yes=req.yes,
                   panel_kpa=panel_kpa,
                   confirmed_by=req.confirmed_by,
                   instructions=protocol.instructions if req.instructions is None else req.instructions,
                   buttons=buttons, lsl=lsl)


def gated_panel_kpa(cuff: CuffSpec, timeline: Timeline, *, rig: Rig, panel_kpa: float | None,
                    dry_run: bool) -> float | None:
    """A gated inflator's panel setting, checked against the run (None for any other cuff).

    Its pressure is set on its panel, so the run has one pressure level and its target is the
    panel setting (--panel-pressure, else the rig's cuff_panel_pressure). A dry run without one
    sets the simulated panel to the target.
    """
    if not cuff.gated:
        return None
    if cuff.gate in (Gate.RTS, Gate.DTR) and any(e.timed_from == "target_reached" and e.cuff == "inflate"
                                                 for e in timeline.events):
        raise InputError(f"the cuff {cuff} is a relay on a gated inflator: nothing measures its pressure, so no phase "
                         "can be timed from the moment the target is reached; time them from onset")
    targets = sorted({round(e.target_kpa, 3) for e in timeline.events
                      if e.cuff == "inflate" and e.target_kpa is not None})
    if len(targets) > 1:
        raise InputError(f"the cuff {cuff} is a gated inflator whose pressure is set on its panel: it cannot give "
                         f"several pressures in one run, and this protocol has {len(targets)} "
                         f"({', '.join(f'{t:g}' for t in targets)} kPa); use a protocol with one pressure level")
    declared = panel_kpa if panel_kpa is not None else \
        None if rig.cuff_panel_pressure is None else rig.cuff_panel_pressure.kpa
    if declared is None:
        if dry_run:
            return targets[0] if targets else None
        raise InputError(f"the cuff {cuff} is a gated inflator: say what its panel is set to with --panel-pressure KPA "
                         f"or the rig's cuff_panel_pressure (it must equal the run's target"
                         f"{f' {targets[0]:g} kPa' if targets else ''})")
    if not (declared > 0 and declared == declared):
        raise InputError(f"--panel-pressure must be a pressure above 0 kPa, got {declared:g}")
    if targets and abs(declared - targets[0]) > PANEL_TOLERANCE_KPA + 1e-9:
        raise InputError(f"the inflator's panel is set to {declared:.1f} kPa but this run's target is "
                         f"{targets[0]:.1f} kPa; "
                         "set the panel to the target (and say so), or use the protocol meant for this setting")
    return declared


def check_stimulus_files(protocol: Protocol) -> None:
    """Every image cue decodes (load_protocol already checked that the files exist);
    a corrupt file is refused before any device or window is opened."""
    from PIL import Image

    for name, cue in protocol.cues.items():
        if cue.kind != "image" or cue.image_path is None:
            continue
        try:
            with Image.open(cue.image_path) as im:
                im.load()
        except Exception as exc:
            raise InputError(f"cue {name!r}: image file {cue.image_path} cannot be read ({exc})") from None
