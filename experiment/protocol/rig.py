"""Rig file (YAML, site hardware) -> a validated, frozen `Rig`; rig and protocol together.

Public API:
    load_rig(path | None) -> Rig                  None: the defaults (no devices configured)
    parse_rig(text, *, file) -> Rig               pure
    effective_keys(protocol, rig) -> Keys         protocol keys with the rig's overrides; all distinct
    check_rig_for_protocol(protocol, rig)         the screen can show the protocol's cue units
    rig_json_schema() -> str                      protocols/cuedpain-rig.schema.json
    RIG_SPEC
    Rig.cuff_timing                               the pre-flight's cuff timing model (experiment.protocol.cuff_timing.CuffTiming)

A rig file keeps a protocol portable between labs: ports, trigger source, button box and
screen live here. `cuff` and `scanner` are device specs in the one grammar of
`experiment.protocol.specs` (typed once read); a missing one is None, meaning "not
configured": the runner then needs --cuff/--scanner or --dry-run, and never falls back to
a simulator on its own.
"""

from __future__ import annotations

from dataclasses import field, replace
from pathlib import Path

from experiment.errors import InputError
from experiment.protocol.model import PRESSURE, Keys, Pressure, Protocol
from experiment.protocol.cuff_timing import CUFF_TIMING, CuffTiming
from experiment.protocol.schema import (Boolean, Choice, Integer, KeyName, MapOf, Nullable, Number, Pair, Record,
                                        Refined, Text, json_schema_document, record, spec)
from experiment.protocol.specs import (BUTTONS_FORMS, CUFF_FORMS, SCANNER_FORMS, ButtonSpec, CuffSpec, KeyboardSpec,
                                       ScannerSpec, parse_buttons_spec, parse_cuff_spec, parse_scanner_spec)
from experiment.protocol.yamlload import FieldPath, Located, Where, parse_yaml, read_yaml

SCHEMA_ID = "https://github.com/cuedpain/cuedpain/protocols/cuedpain-rig.schema.json"
_DEFAULT = "<default rig>"


def rig_json_schema() -> str:
    """The rig format's JSON Schema, as committed in protocols/cuedpain-rig.schema.json."""
    return json_schema_document(RIG_SPEC, title="cuedpain rig", schema_id=SCHEMA_ID)


def _field(where: Where, path: FieldPath) -> str:
    """How a spec error names a rig field: `FILE:LINE:COL: name`."""
    pos = where.position(path)
    name = ".".join(str(p) for p in path)
    return f"{where.file}:{pos[0]}:{pos[1]}: {name}" if pos else f"{where.file}: {name}"


def _cuff(text: str, path: FieldPath, where: Where) -> CuffSpec:
    return parse_cuff_spec(text, what=_field(where, path))


def _scanner(text: str, path: FieldPath, where: Where) -> ScannerSpec:
    return parse_scanner_spec(text, what=_field(where, path))


def _buttons(text: str, path: FieldPath, where: Where) -> ButtonSpec:
    return parse_buttons_spec(text, what=_field(where, path))


BYTE_KEY = Text("a byte: 0xNN or one character, quoted in YAML", pattern=r"0x[0-9a-fA-F]{2}|.",
                pattern_doc="a byte as '0xNN' (two hex digits) or one character, quoted", max_length=4)


def byte_of(key: str) -> int:
    """A `button_map` key ('0x31' or '1') -> its byte value."""
    return int(key, 16) if len(key) == 4 and key.startswith("0x") else ord(key)


_UNITS = ("pix", "norm", "height", "deg", "cm")


PATCH_CORNERS = ("none", "top_left", "top_right", "bottom_left", "bottom_right")


@record
class Screen:
    fullscreen: bool = spec(Boolean("full-screen window"), default=True)
    index: int = spec(Integer("which screen (0: the first)", minimum=0, maximum=15), default=0)
    size: tuple[int, int] | None = spec(Nullable(Pair(Integer(minimum=1, maximum=20000), "[width, height] in pixels "
                                                      "(null: the screen's own)")), default=None)
    units: str = spec(Choice(_UNITS, "the window's default units"), default="height")
    refresh_hz: float | None = spec(Nullable(Number("expected refresh rate; the runner measures it and warns when "
                                                    "it differs (null: just measure)", minimum=1.0, maximum=1000.0)),
                                    default=None)
    width_cm: float | None = spec(Nullable(Number("visible width of the screen (needed for deg and cm units)",
                                                  minimum=0.0, exclusive_minimum=True, maximum=2000.0)), default=None)
    distance_cm: float | None = spec(Nullable(Number("eye to screen distance (needed for deg units)", minimum=0.0,
                                                     exclusive_minimum=True, maximum=5000.0)), default=None)
    light_patch: str = spec(Choice(list(PATCH_CORNERS), "a square in this corner of the screen turns white for "
                                   "0.1 s at every cue change, for a light sensor (`cuedpain timing-test`, "
                                   "docs/light-sensor.md); also shown during runs when set (none: never)"),
                            default="none")
    light_patch_px: int = spec(Integer("the light patch's side", unit="pixels", minimum=4, maximum=400), default=40)


SCREEN = Record(Screen, "the participant's screen")


@record
class TimingLimits:
    """What `cuedpain timing-test` calls fit (its verdict)."""

    refresh_tolerance_pct: float = spec(Number("largest difference between the measured refresh rate and "
                                               "screen.refresh_hz", unit="%", minimum=0.0, maximum=50.0), default=2.0)
    max_dropped_pct: float = spec(Number("most frames over 1.5 frame intervals", unit="% of frames", minimum=0.0,
                                         maximum=100.0), default=0.1)
    max_onset_error_ms: float = spec(Number("largest distance of a cue's flip from its planned time", unit="ms",
                                            minimum=0.0, exclusive_minimum=True, maximum=1000.0), default=10.0)
    max_light_lag_ms: float = spec(Number("largest median lag from flip to light at the sensor", unit="ms",
                                          minimum=0.0, exclusive_minimum=True, maximum=1000.0), default=50.0)
    max_lag_sd_ms: float = spec(Number("largest standard deviation of that lag (a constant lag can be corrected "
                                       "for, a variable one cannot)", unit="ms", minimum=0.0, exclusive_minimum=True,
                                       maximum=1000.0), default=4.0)
    max_missed_flashes: int = spec(Integer("most patch flashes the sensor may miss", minimum=0, maximum=1000),
                                   default=0)


TIMING_LIMITS = Record(TimingLimits, "the limits of `cuedpain timing-test`'s verdict")


@record
class RigKeys:
    """Overrides of the protocol's keys; None keeps the protocol's key."""

    trigger: str | None = spec(Nullable(KeyName("overrides the protocol's keys.trigger")), default=None)
    stop: str | None = spec(Nullable(KeyName("overrides the protocol's keys.stop")), default=None)
    left: str | None = spec(Nullable(KeyName("overrides the protocol's keys.left")), default=None)
    right: str | None = spec(Nullable(KeyName("overrides the protocol's keys.right")), default=None)
    confirm: str | None = spec(Nullable(KeyName("overrides the protocol's keys.confirm")), default=None)


RIG_KEYS = Record(RigKeys, "button box keys; null keeps the protocol's")


@record
class Rig:
    """A rig file's values; `cuff` and `scanner` are typed device specs (None: not configured)."""

    cuff: CuffSpec | None = spec(Nullable(Refined(Text(f"cuff device: {CUFF_FORMS} (null: not configured)",
                                                       max_length=300), _cuff)), default=None)
    scanner: ScannerSpec | None = spec(Nullable(Refined(Text(f"trigger source: {SCANNER_FORMS} (null: not "
                                                             "configured)", max_length=300), _scanner)),
                                       default=None)
    buttons: ButtonSpec | None = spec(Nullable(Refined(Text(f"button box on a serial line: {BUTTONS_FORMS} (null: "
                                                            "the keyboard only)", max_length=300), _buttons)),
                                      default=None)
    button_map: dict[str, str] | None = spec(Nullable(MapOf(BYTE_KEY, KeyName("the button (key) name this byte "
                                                                              "presses"), "a custom button box's "
                                                                              "bytes -> button names (buttons: "
                                                            "serial:PORT:custom)", min_items=1, max_items=256,
                                                            key_label="byte")), default=None)
    lsl: bool = spec(Boolean("publish markers and the pressure trace as Lab Streaming Layer streams (docs/lsl.md)"),
                     default=False)
    discard_pulses: int | None = spec(Nullable(Integer("overrides the protocol's scan.discard_pulses for this "
                                                       "scanner", minimum=0, maximum=100)), default=None)
    screen: Screen = spec(SCREEN, default=SCREEN.defaults())
    keys: RigKeys = spec(RIG_KEYS, default=RIG_KEYS.defaults())
    serial_latency_ms: float | None = spec(Nullable(Number("USB-serial latency timer setting, recorded in the log "
                                                           "(FTDI default 16 ms; set 1 ms)", minimum=0.0,
                                                           maximum=100.0)), default=None)
    calibration_max_age_h: float = spec(Number("a run takes the participant's newest calibration only if it is from "
                                               "the same session and at most this old; otherwise the operator names "
                                               "it with --calibration FILE", unit="hours", minimum=0.0,
                                               exclusive_minimum=True, maximum=24.0 * 365), default=12.0)
    cuff_timing: CuffTiming = spec(CUFF_TIMING, default=CUFF_TIMING.defaults())
    cuff_panel_pressure: Pressure | None = spec(Nullable(PRESSURE, "the pressure set on the front panel of a gated "
                                                         "inflator (cuff gated:PORT:GATE), which the operator confirms "
                                                         "before each run; a run's target must equal it (null: not "
                                                         "declared)"), default=None)
    timing_limits: TimingLimits = spec(TIMING_LIMITS, default=TIMING_LIMITS.defaults())
    sim_link: str = spec(Choice(["auto", "pty", "socket"], "how a dry run serves its simulated cuff and scanner: "
                                "a pseudo-terminal (POSIX), a loopback TCP port (socket://, as on Windows), or "
                                "auto: a pseudo-terminal where there are some"), default="auto")
    notes: str = spec(Text("free text about this rig (adapters, latency checks, contacts)", min_length=0,
                           max_length=5000), default="")
    path: Path | None = None
    where: Where = field(default_factory=lambda: Where(_DEFAULT), compare=False, repr=False)

    @property
    def label(self) -> str:
        """How messages name this rig: its file, or that there is none."""
        if self.path is not None:
            return str(self.path)
        return "the default rig (no rig file given)" if self.where.file == _DEFAULT else self.where.file


RIG_SPEC = Record(Rig, "a cuedpain rig file (site hardware)")


def build_rig(doc: Located) -> Rig:
    """Validate parsed YAML (with positions) into a Rig. Pure."""
    where = doc.where
    data = {} if doc.data is None else doc.data
    if not isinstance(data, dict):
        raise where.error((), f"a rig file must be a mapping (cuff, scanner, screen, keys, ...); "
                              f"got {type(data).__name__}")
    rig = replace(RIG_SPEC.check(data, (), where), where=where)
    seen: dict[str, str] = {}
    for role in RIG_KEYS.fields:
        key = getattr(rig.keys, role)
        if key is None:
            continue
        if key in seen:
            raise where.error(("keys", role), f"key {key!r} is already the {seen[key]} key; every key needs its "
                                              f"own role")
        seen[key] = role
    _check_button_map(rig, where)
    return rig


def _check_button_map(rig: Rig, where: Where) -> None:
    """A custom button box needs its byte map, and a byte map needs a custom box to read it."""
    from experiment.protocol.specs import ButtonPresetName, SerialButtonSpec

    custom = isinstance(rig.buttons, SerialButtonSpec) and rig.buttons.preset is ButtonPresetName.CUSTOM
    if custom and rig.button_map is None:
        raise where.error(("buttons",), "a custom button box needs button_map (byte -> button name) in the rig file")
    if rig.button_map is not None and not custom:
        raise where.error(("button_map",), "button_map is read only by a custom button box: set buttons: "
                                           "serial:PORT:custom")
    if rig.button_map is not None and len({byte_of(k) for k in rig.button_map}) != len(rig.button_map):
        raise where.error(("button_map",), "a byte is mapped twice (as '0xNN' and as its character)")


def parse_rig(text: str, *, file: str = "<rig>") -> Rig:
    """Validate rig text (an empty document is the defaults)."""
    return build_rig(parse_yaml(text, file=file))


def load_rig(path: str | Path | None) -> Rig:
    """Read and validate a rig file; None gives the defaults (no cuff or scanner configured)."""
    if path is None:
        return build_rig(Located({}, Where(_DEFAULT)))
    p = Path(path)
    return replace(build_rig(read_yaml(p)), path=p)


def effective_keys(protocol: Protocol, rig: Rig, *, scanner: ScannerSpec | None = None) -> Keys:
    """The protocol's keys with the rig's overrides and a keyboard:KEY trigger (the one the run
    uses: `scanner`, from the command line, else the rig's); all distinct."""
    merged = {role: getattr(protocol.keys, role) for role in ("trigger", "stop", "escape", "left", "right",
                                                                "confirm")}
    source = {role: "protocol" for role in merged}
    for role in RIG_KEYS.fields:
        value = getattr(rig.keys, role)
        if value is not None:
            merged[role], source[role] = value, "rig"
    used = scanner if scanner is not None else rig.scanner
    if isinstance(used, KeyboardSpec) and used.key is not None:
        merged["trigger"], source["trigger"] = used.key, ("rig scanner" if used is rig.scanner else "--scanner")
    seen: dict[str, str] = {}
    for role, key in merged.items():
        if key in seen:
            other = seen[key]
            raise InputError(f"key {key!r} is both the {other} key ({source[other]}) and the {role} key "
                             f"({source[role]}); with {rig.label} and {protocol.path or protocol.where.file}, "
                             f"every key needs its own role")
        seen[key] = role
    return Keys(**merged)


def check_rig_for_protocol(protocol: Protocol, rig: Rig) -> None:
    """Cues in deg need the screen's width and distance; in cm, its width. A gated inflator (its
    pressure set on its panel) gives one pressure level per run."""
    levels = protocol.stimulation.levels
    if rig.cuff is not None and rig.cuff.gated and len(levels) > 1:
        raise protocol.where.error(("stimulation", "levels"),
                                   f"{len(levels)} pressure levels ({', '.join(levels)}), but the cuff of {rig.label} "
                                   f"({rig.cuff}) is a gated inflator whose pressure is set on its panel: one level "
                                   "per run")
    for name, cue in protocol.cues.items():
        need = {"deg": ("width_cm", "distance_cm"), "cm": ("width_cm",)}.get(cue.units, ())
        missing = [n for n in need if getattr(rig.screen, n) is None]
        if missing:
            raise protocol.where.error(("cues", name, "units"),
                                       f"units {cue.units!r} need screen.{' and screen.'.join(missing)} in "
                                       f"{rig.label}")
