"""A calibration's pre-flight: every input checked, nothing touched; the result is a typed setup.

Participant and session labels, a ceiling given on purpose (at most 100 kPa), the method's
options, the rig and its keys, the dataset root, a terminal to confirm on and a display:
a problem is one InputError (exit 2), or a HardwareError for a missing display (exit 4).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Mapping

from experiment.errors import InputError
from experiment.outputs.dataset import check_root, default_root
from experiment.outputs.participants import check_new_values
from experiment.procedures.calibration.participant import SimSpec, parse_sim_spec
from experiment.procedures.calibration.results import next_calibration_path
from experiment.procedures.calibration.steps import (RampSettings, Settings, StaircaseSettings, check_settings,
                                                     inflation_limits_s)
from experiment.procedures.run.preflight import mode_of
from experiment.protocol.identifiers import check_label
from experiment.protocol.model import HARD_MAX_KPA, KEYS_DEFAULT, Cue, Keys, Protocol, Safety, load_protocol
from experiment.protocol.rig import Rig, load_rig
from experiment.protocol.specs import SIM_CUFF, CuffSpec, parse_cuff_spec
from experiment.station.devices import safety_limits
from experiment.station.rating import RatingScale
from experiment.station.runinfo import check_writable
from experiment.station.station import CuffNeed, Mode, StationSpec, WindowSpec
from experiment.station.surroundings import check_can_confirm, check_display

RATING_TIMEOUT_S = 8.0
FIXATION = Cue(name="fixation", kind="shape", size=(0.05, 0.05), pos=(0.0, 0.0), units="height", color="#ffffff",
               shape="cross")


@dataclass(frozen=True)
class CalibrationRequest:
    """What the operator asked for (the command line, or a visit step)."""

    participant: str
    ceiling_kpa: float | None
    session: str | None = None
    method: str = "staircase"            # staircase | ramp
    target_rating: float = 50.0
    rig: Path | None = None
    cuff: str | None = None
    dry_run: bool = False
    headless: bool = False
    data: Path | None = None
    seed: int | None = None
    yes: bool = False
    rate_kpa_s: float | None = None
    repeats: int | None = None           # ramp
    start_kpa: float | None = None       # staircase
    step_kpa: float | None = None        # staircase
    plateau_s: float | None = None       # staircase
    rest_s: float | None = None
    sim_participant: str | None = None   # dry runs: the simulated participant
    protocol: Path | None = None         # report the pressure of every calibrated level of this protocol
    fields: Mapping[str, str] = field(default_factory=dict)   # participant fields to keep (participants.tsv)
    confirmed_by: str | None = None      # with yes: who confirmed instead of the terminal ('station')


@dataclass(frozen=True)
class CalibrationSetup:
    """Everything known good before a device is touched."""

    participant: str
    session: str | None
    method: str
    target_rating: float
    ceiling_kpa: float
    settings: Settings
    data_root: Path
    mode: Mode
    seed: int
    rig: Rig
    rig_path: Path | None
    cuff_spec: CuffSpec
    sim: SimSpec | None
    keys: Keys
    safety: Safety
    scale: RatingScale
    assume_yes: bool = False
    protocol: Protocol | None = None     # whose calibrated levels the result reports
    fields: Mapping[str, str] = field(default_factory=dict)   # checked participant fields (participants.tsv)
    confirmed_by: str | None = None

    @property
    def dry_run(self) -> bool:
        return self.mode.simulated

    @property
    def headless(self) -> bool:
        return self.mode is Mode.HEADLESS

    def station_spec(self) -> StationSpec:
        """A cuff and a window with the fixation cross and the rating scale; no trigger source."""
        window = WindowSpec(screen=self.rig.screen, cues={"fixation": FIXATION}, stimuli_dir=Path("."),
                            rating_scales=(self.scale,))
        return StationSpec(mode=self.mode, keys=self.keys, window=window,
                           cuff=CuffNeed(self.cuff_spec, safety_limits(self.safety,
                                                                       rates_kpa_s=(self.settings.rate_kpa_s,))),
                           assume_yes=self.assume_yes, sim_link=self.rig.sim_link, confirmed_by=self.confirmed_by)


def method_settings(req: CalibrationRequest) -> Settings:
    """The method's settings from the options; an option of the other method is refused."""
    ramp_only = {"repeats": req.repeats}
    stair_only = {"start": req.start_kpa, "step": req.step_kpa, "plateau": req.plateau_s}
    wrong = [k for k, v in (stair_only if req.method == "ramp" else ramp_only).items() if v is not None]
    if wrong:
        raise InputError(f"--{wrong[0]} does not apply to --method {req.method}")
    given: dict[str, float | int | None] = {"rate_kpa_s": req.rate_kpa_s, "rest_s": req.rest_s}
    if req.method == "ramp":
        given["repeats"] = req.repeats
        return RampSettings(**{k: v for k, v in given.items() if v is not None})  # type: ignore[arg-type]
    given.update(start_kpa=req.start_kpa, step_kpa=req.step_kpa, plateau_s=req.plateau_s)
    return StaircaseSettings(**{k: v for k, v in given.items() if v is not None})  # type: ignore[arg-type]


def calibration_keys(rig: Rig) -> Keys:
    """The default keys with the rig's button-box overrides; every key its own role."""
    overrides = {f: getattr(rig.keys, f) for f in ("stop", "left", "right", "confirm")
                 if getattr(rig.keys, f) is not None}
    keys = replace(Keys(**KEYS_DEFAULT), **overrides)
    seen: dict[str, str] = {}
    for role in ("stop", "escape", "left", "right", "confirm"):
        key = getattr(keys, role)
        if key in seen:
            raise InputError(f"key {key!r} is both the {seen[key]} and the {role} key (with {rig.label}); "
                             "every key needs its own role")
        seen[key] = role
    return keys


def _checked_values(req: CalibrationRequest) -> tuple[str, str | None, float, float]:
    participant = check_label(req.participant, "participant")
    session = None if req.session is None else check_label(req.session, "session")
    ceiling = req.ceiling_kpa
    if ceiling is None:
        raise InputError("calibration needs --ceiling KPA: the highest pressure this participant may receive "
                         "(from your ethics approval); there is no default")
    if not (math.isfinite(ceiling) and 0 < ceiling <= HARD_MAX_KPA):
        raise InputError(f"--ceiling must be above 0 and at most {HARD_MAX_KPA:g} kPa, got {ceiling:g}")
    target = req.target_rating
    if not (math.isfinite(target) and 0 < target < 100):
        raise InputError(f"--target-rating must be between 0 and 100 (exclusive), got {target:g}")
    return participant, session, ceiling, target


def check_not_gated(cuff: str | None, rig: Rig) -> None:
    """InputError when the cuff (--cuff, else the rig's, also for a rehearsal) is a gated inflator:
    its pressure is set on its panel, so it cannot give the pressures a calibration or a check chooses."""
    cli_cuff = None if cuff is None else parse_cuff_spec(cuff, what="--cuff")
    spec = cli_cuff or rig.cuff
    if spec is not None and spec.gated:
        raise InputError(f"the cuff {spec} is a gated inflator whose pressure is set on its panel: it cannot give the "
                         "several pressures a calibration or a pressure check needs. Calibrate on a cuff that sets "
                         "its own pressure, or run at the panel's fixed pressure")


def _cuff_spec(req: CalibrationRequest, rig: Rig) -> CuffSpec:
    """The cuff spec, parsed once; the simulated cuff only in a dry run; never a gated inflator."""
    check_not_gated(req.cuff, rig)
    cli_cuff = None if req.cuff is None else parse_cuff_spec(req.cuff, what="--cuff")
    if req.dry_run:
        if cli_cuff is not None and not cli_cuff.simulated:
            raise InputError(f"--dry-run uses the simulated cuff; remove --cuff {cli_cuff} or drop --dry-run")
        return SIM_CUFF
    spec = cli_cuff or rig.cuff
    if spec is None:
        raise InputError("no cuff given: use --cuff line:PORT or cpar:PORT, a rig file, or --dry-run")
    if spec.simulated:
        where = "--cuff" if cli_cuff is not None else f"{rig.label}: cuff"
        raise InputError(f"{where} sim is only allowed with --dry-run; a real calibration never uses simulation")
    return spec


def preflight(req: CalibrationRequest) -> CalibrationSetup:
    """Check all input; touches no device. InputError (exit 2), HardwareError for no display (exit 4)."""
    mode = mode_of(dry_run=req.dry_run, headless=req.headless)
    participant, session, ceiling, target = _checked_values(req)
    settings = method_settings(req)
    rig = load_rig(req.rig)
    check_settings(settings, ceiling_kpa=ceiling, timing=rig.cuff_timing)
    if req.sim_participant is not None and not req.dry_run:
        raise InputError("--sim-participant describes the simulated participant of a dry run: it needs --dry-run")
    sim = parse_sim_spec(req.sim_participant) if req.dry_run else None
    protocol = None if req.protocol is None else load_protocol(req.protocol)
    if protocol is not None and not protocol.stimulation.calibrated:
        raise InputError(f"{req.protocol}: its pressures are fixed ({protocol.stimulation.as_written}); --protocol "
                         "is for a protocol with calibrated levels")
    cuff_spec = _cuff_spec(req, rig)
    keys = calibration_keys(rig)
    data_root = req.data if req.data is not None else default_root(dry_run=req.dry_run)
    check_writable(data_root)
    check_root(data_root, dry_run=req.dry_run)
    next_calibration_path(data_root, participant)   # a broken earlier calibration file is an input error
    fields = check_new_values(data_root, req.fields)
    check_can_confirm(dry_run=req.dry_run, assume_yes=req.yes)
    if mode is not Mode.HEADLESS:
        check_display()
    one_s, total_s = inflation_limits_s(settings, ceiling_kpa=ceiling, timing=rig.cuff_timing)
    safety = Safety(max_pressure_kpa=ceiling, max_inflation_per_stimulus_s=one_s,
                    max_cumulative_inflation_per_run_s=total_s, min_deflated_between_s=settings.rest_s,
                    release_threshold_kpa=2.0, release_deadline_s=2.0, compliance_margin_kpa=2.0,
                    on_participant_stop="end")
    scale = RatingScale(low=0, high=100, start=50, step=5, timeout_s=RATING_TIMEOUT_S, left_key=keys.left,
                        right_key=keys.right, confirm_key=keys.confirm, low_label="no pain",
                        high_label="most intense pain imaginable", question="How painful was the pressure?")
    return CalibrationSetup(participant=participant, session=session, method=req.method, target_rating=target,
                            ceiling_kpa=ceiling, settings=settings, data_root=data_root, mode=mode,
                            seed=0 if req.seed is None else req.seed, rig=rig, rig_path=req.rig,
                            cuff_spec=cuff_spec, sim=sim, keys=keys, safety=safety, scale=scale,
                            assume_yes=req.yes, protocol=protocol, fields=fields, confirmed_by=req.confirmed_by)
