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
screen live here. `cuff` and `scanner` are parsed by `experiment.protocol.specs` (the same
grammar as --cuff and --scanner) into typed specs; an error names the file, line and field.
A missing one is None, meaning "not configured": the runner then needs --cuff/--scanner
or --dry-run, and never falls back to a simulator on its own.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

from experiment.errors import InputError
from experiment.protocol.model import Keys, Protocol
from experiment.protocol.cuff_timing import CuffTiming
from experiment.protocol.specs import CUFF_FORMS, SCANNER_FORMS, CuffSpec, KeyboardSpec, ScannerSpec, \
    parse_cuff_spec, parse_scanner_spec
from experiment.protocol.schema import Boolean, Choice, Field, KeyName, ListOf, Nullable, Number, Object, Text, \
    json_schema_document
from experiment.protocol.yamlload import Located, Where, parse_yaml, read_yaml

SCHEMA_ID = "https://github.com/cuedpain/cuedpain/protocols/cuedpain-rig.schema.json"
_DEFAULT = "<default rig>"

SCREEN = Object({
    "fullscreen": Field(Boolean("full-screen window"), default=True),
    "index": Field(Number("which screen (0: the first)", integer=True, minimum=0, maximum=15), default=0),
    "size": Field(Nullable(ListOf(Number(integer=True, minimum=1, maximum=20000), "[width, height] in pixels "
                                         "(null: the screen's own)", min_items=2, max_items=2)), default=None),
    "units": Field(Choice(["pix", "norm", "height", "deg", "cm"], "the window's default units"), default="height"),
    "refresh_hz": Field(Nullable(Number("expected refresh rate; the runner measures it and warns when it "
                                        "differs (null: just measure)", minimum=1.0, maximum=1000.0)),
                        default=None),
    "width_cm": Field(Nullable(Number("visible width of the screen (needed for deg and cm units)", minimum=0.0,
                                      exclusive_minimum=True, maximum=2000.0)), default=None),
    "distance_cm": Field(Nullable(Number("eye to screen distance (needed for deg units)", minimum=0.0,
                                         exclusive_minimum=True, maximum=5000.0)), default=None),
}, "the participant's screen")
SCREEN_DEFAULT = {"fullscreen": True, "index": 0, "size": None, "units": "height", "refresh_hz": None,
                  "width_cm": None, "distance_cm": None}

_KEY_ROLES = ("trigger", "stop", "left", "right", "confirm")
RIG_KEYS = Object({role: Field(Nullable(KeyName(f"overrides the protocol's keys.{role}")), default=None)
                   for role in _KEY_ROLES}, "button box keys; null keeps the protocol's")

_TIMING = CuffTiming()
CUFF_TIMING = Object({
    "ramp_margin_s": Field(Number("a ramp to P kPa at r kPa/s counts as up to P / r x (1 + ramp_margin_fraction) "
                                  "+ this", unit="seconds", minimum=0.0, maximum=30.0),
                           default=_TIMING.ramp_margin_s),
    "ramp_margin_fraction": Field(Number("how much slower than its commanded rate the cuff may ramp (0.1: 10 %)",
                                         minimum=0.0, maximum=1.0), default=_TIMING.ramp_margin_fraction),
    "release_margin_s": Field(Number("the release after DEFLATE counts as up to P / r x (1 + "
                                     "ramp_margin_fraction) + this", unit="seconds", minimum=0.0, maximum=30.0),
                              default=_TIMING.release_margin_s),
    "onset_slack_s": Field(Number("SET to DEFLATE may run this much longer than planned (commands go out on "
                                  "frame flips)", unit="seconds", minimum=0.0, maximum=1.0),
                           default=_TIMING.onset_slack_s),
}, "how much slower than ideal this rig's cuff is; the pre-flight inflation checks count with it "
   "(docs/protocol-format.md, Pre-flight checks)")
CUFF_TIMING_DEFAULT = {"ramp_margin_s": _TIMING.ramp_margin_s, "ramp_margin_fraction": _TIMING.ramp_margin_fraction,
                       "release_margin_s": _TIMING.release_margin_s, "onset_slack_s": _TIMING.onset_slack_s}

RIG_SPEC = Object({
    "cuff": Field(Nullable(Text(f"cuff device: {CUFF_FORMS} (null: not configured)",
                                max_length=300)), default=None),
    "scanner": Field(Nullable(Text(f"trigger source: {SCANNER_FORMS} (null: not configured)",
                                   max_length=300)), default=None),
    "discard_pulses": Field(Nullable(Number("overrides the protocol's scan.discard_pulses for this scanner",
                                            integer=True, minimum=0, maximum=100)), default=None),
    "screen": Field(SCREEN, default=SCREEN_DEFAULT),
    "keys": Field(RIG_KEYS, default={role: None for role in _KEY_ROLES}),
    "serial_latency_ms": Field(Nullable(Number("USB-serial latency timer setting, recorded in the log (FTDI "
                                               "default 16 ms; set 1 ms)", minimum=0.0, maximum=100.0)),
                               default=None),
    "calibration_max_age_h": Field(Number("a run takes the participant's newest calibration only if it is from "
                                          "the same session and at most this old; otherwise the operator names it "
                                          "with --calibration FILE", unit="hours", minimum=0.0,
                                          exclusive_minimum=True, maximum=24.0 * 365), default=12.0),
    "cuff_timing": Field(CUFF_TIMING, default=CUFF_TIMING_DEFAULT),
    "notes": Field(Text("free text about this rig (adapters, latency checks, contacts)", min_length=0,
                        max_length=5000), default=""),
}, "a cuedpain rig file (site hardware)")


def rig_json_schema() -> str:
    """The rig format's JSON Schema, as committed in protocols/cuedpain-rig.schema.json."""
    return json_schema_document(RIG_SPEC, title="cuedpain rig", schema_id=SCHEMA_ID)


@dataclass(frozen=True)
class Screen:
    fullscreen: bool
    index: int
    size: tuple[int, int] | None
    units: str
    refresh_hz: float | None
    width_cm: float | None
    distance_cm: float | None


@dataclass(frozen=True)
class RigKeys:
    """Overrides of the protocol's keys; None keeps the protocol's key."""

    trigger: str | None = None
    stop: str | None = None
    left: str | None = None
    right: str | None = None
    confirm: str | None = None


@dataclass(frozen=True)
class Rig:
    cuff: CuffSpec | None               # None = not configured
    scanner: ScannerSpec | None         # None = not configured
    discard_pulses: int | None          # None: the protocol's scan.discard_pulses
    screen: Screen
    keys: RigKeys
    serial_latency_ms: float | None
    notes: str
    calibration_max_age_h: float = 12.0
    cuff_timing: CuffTiming = CuffTiming()
    path: Path | None = None
    where: Where = field(default_factory=lambda: Where(_DEFAULT), compare=False, repr=False)

    @property
    def label(self) -> str:
        """How messages name this rig: its file, or that there is none."""
        if self.path is not None:
            return str(self.path)
        return "the default rig (no rig file given)" if self.where.file == _DEFAULT else self.where.file


def _field(where: Where, name: str) -> str:
    """How a spec error names a rig field: `FILE:LINE:COL: name`."""
    pos = where.position((name,))
    return f"{where.file}:{pos[0]}:{pos[1]}: {name}" if pos else f"{where.file}: {name}"


def build_rig(doc: Located) -> Rig:
    """Validate parsed YAML (with positions) into a Rig. Pure."""
    where = doc.where
    data = {} if doc.data is None else doc.data
    if not isinstance(data, dict):
        raise where.error((), f"a rig file must be a mapping (cuff, scanner, screen, keys, ...); "
                              f"got {type(data).__name__}")
    d = RIG_SPEC.check(data, (), where)
    cuff = None if d["cuff"] is None else parse_cuff_spec(d["cuff"], what=_field(where, "cuff"))
    scanner = None if d["scanner"] is None else parse_scanner_spec(d["scanner"], what=_field(where, "scanner"))
    keys = {k: v for k, v in d["keys"].items() if v is not None}
    seen: dict[str, str] = {}
    for role, key in keys.items():
        if key in seen:
            raise where.error(("keys", role), f"key {key!r} is already the {seen[key]} key; every key needs its "
                                              f"own role")
        seen[key] = role
    s = d["screen"]
    screen = Screen(fullscreen=s["fullscreen"], index=s["index"], size=tuple(s["size"]) if s["size"] else None,
                    units=s["units"], refresh_hz=s["refresh_hz"], width_cm=s["width_cm"],
                    distance_cm=s["distance_cm"])
    return Rig(cuff=cuff, scanner=scanner, discard_pulses=d["discard_pulses"], screen=screen,
               keys=RigKeys(**keys), serial_latency_ms=d["serial_latency_ms"], notes=d["notes"],
               calibration_max_age_h=d["calibration_max_age_h"], cuff_timing=CuffTiming(**d["cuff_timing"]),
               where=where)


def parse_rig(text: str, *, file: str = "<rig>") -> Rig:
    """Validate rig text (an empty document is the defaults)."""
    return build_rig(parse_yaml(text, file=file))


def load_rig(path: str | Path | None) -> Rig:
    """Read and validate a rig file; None gives the defaults (no cuff or scanner configured)."""
    if path is None:
        return build_rig(Located({}, Where(_DEFAULT)))
    p = Path(path)
    return replace(build_rig(read_yaml(p)), path=p)


def effective_keys(protocol: Protocol, rig: Rig) -> Keys:
    """The protocol's keys with the rig's overrides (and a keyboard:KEY trigger); all distinct."""
    merged = {role: getattr(protocol.keys, role) for role in ("trigger", "stop", "escape", "left", "right",
                                                                "confirm")}
    source = {role: "protocol" for role in merged}
    for role in _KEY_ROLES:
        value = getattr(rig.keys, role)
        if value is not None:
            merged[role], source[role] = value, "rig"
    spec = rig.scanner
    if isinstance(spec, KeyboardSpec) and spec.key is not None:
        merged["trigger"], source["trigger"] = spec.key, "rig scanner"
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
    """Cues in deg need the screen's width and distance; in cm, its width."""
    for name, cue in protocol.cues.items():
        need = {"deg": ("width_cm", "distance_cm"), "cm": ("width_cm",)}.get(cue.units, ())
        missing = [n for n in need if getattr(rig.screen, n) is None]
        if missing:
            raise protocol.where.error(("cues", name, "units"),
                                       f"units {cue.units!r} need screen.{' and screen.'.join(missing)} in "
                                       f"{rig.label}")
