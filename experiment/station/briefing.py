"""What the operator sees, and confirms, before a participant is involved.

Before a real run waits for the scanner (and before a real calibration starts), the
console shows one block: who, which protocol (and its hash), the pressure in kPa and
mmHg with where it came from, the ceiling, the cuff's identity as the device reported it,
and the trigger source. The operator confirms with a key; `--yes` confirms for scripted
use and is recorded as such. A dry run shows the block and does not ask. The same facts
and the confirmation go into the log header, provenance.json, the QC report and the
events sidecar. Building the block is pure; `confirm` asks.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Callable, Mapping

from typing_extensions import NotRequired, TypedDict

from experiment.cuff.base import DeviceInfo
from experiment.errors import AbortError
from experiment.log.records import LevelPressure, PressureInfo
from experiment.units import kpa_to_mmhg

RULE = "=" * 78
YES_WORDS = frozenset({"y", "yes"})


class Confirmation(TypedDict):
    """Who confirmed the block, and when (the log header's and provenance's `confirmation`)."""

    by: str                         # operator, --yes, a --confirmed-by name, or dry run (not asked)
    at: str                         # ISO 8601 with offset
    started_from: NotRequired[str]  # the --confirmed-by given with --yes
    answer: NotRequired[str]        # what the operator typed


@dataclass(frozen=True)
class Briefing:
    """The facts the operator confirms: labelled lines for the console, and the same as JSON."""

    what: str                               # "run" | "calibration"
    dry_run: bool
    lines: tuple[tuple[str, str], ...]      # (label, text), in the order shown
    facts: Mapping[str, object]             # for the log header and provenance

    def record(self) -> dict[str, object]:
        """The block as it was shown (`lines`) and its facts, for the log header."""
        return {"what": self.what, "lines": [list(line) for line in self.lines], **self.facts}

    def text(self) -> str:
        kind = "DRY RUN: simulated devices, nothing reaches a participant" if self.dry_run else "REAL"
        head = f" CHECK BEFORE STARTING: {self.what} ({kind}) "
        width = max(len(label) for label, _ in self.lines) + 2
        body = [f"{label:<{width}}{text}" for label, text in self.lines]
        return "\n".join([head.center(len(RULE), "="), *body, RULE])


def pressure_line(pressure: PressureInfo) -> str:
    """The pressure and where it came from, in one line for the operator."""
    levels: Mapping[str, LevelPressure] = pressure.get("levels") or {}
    if len(levels) > 1:
        each = "; ".join(f"{n} {lv['pressure_kpa']:.1f} kPa ({lv['pressure_mmhg']:.0f} mmHg, {lv['as_written']})"
                         for n, lv in levels.items())
        return f"{each}; {_source(pressure)}"
    kpa = pressure["pressure_kpa"]
    assert kpa is not None, "one level: its pressure is at the top"
    head = f"{kpa:.1f} kPa ({kpa_to_mmhg(kpa):.0f} mmHg)"
    source = pressure["source"]
    if source == "protocol":
        return f"{head}, fixed by the protocol ({pressure.get('as_written')})"
    lv: Mapping[str, object] = next(iter(levels.values()), {})
    if source == "override":
        return f"{head} = {lv.get('fraction') or 1:g} x {_source(pressure)}"
    how = (f"the calibration's pressure for rating {lv['rating']:g}" if lv.get("rating") is not None else
           f"{lv.get('fraction', pressure.get('fraction')) or 1:g} x {pressure['calibrated_kpa']:.1f} kPa")
    return f"{head} = {how}, {_source(pressure)}"


def _source(pressure: PressureInfo) -> str:
    source = pressure["source"]
    if source == "protocol":
        return "fixed by the protocol"
    if source == "override":
        return f"OPERATOR OVERRIDE of the calibrated pressure ({pressure['override_kpa']:g} kPa): {pressure.get('reason')}"
    named = ", named with --calibration" if pressure.get("named") else ""
    return f"from calibration {pressure.get('description')}{named}"


def _kpa(p: float) -> str:
    return f"{p:.1f} kPa ({kpa_to_mmhg(p):.0f} mmHg)"


def _cuff_lines(cuff: DeviceInfo, calibration_cuff: Mapping[str, object] | None) -> list[tuple[str, str]]:
    lines = [("cuff", f"{cuff.identity()}; hard limit {cuff.hard_limit_kpa:g} kPa")]
    if calibration_cuff:
        same = (calibration_cuff.get("name"), calibration_cuff.get("serial")) == (cuff.name, cuff.serial)
        if not same:
            lines.append(("NOTE", f"the calibration was made with another cuff ({calibration_cuff.get('name')}, "
                                  f"serial {calibration_cuff.get('serial') or '?'}); the same pressure may feel "
                                  "different"))
    return lines


def panel_line(panel_kpa: float, cuff: DeviceInfo) -> str:
    """A gated inflator's pressure: set on its panel by the operator, measured or not."""
    measured = "measured by the gate board's sensor" if cuff.pressure_readback else "not measured"
    return f"pressure set on the device's panel: {_kpa(panel_kpa)}, {measured}"


def run_briefing(*, participant: str, session: str | None, run: int, protocol_path: str, protocol_sha256: str,
                 pressure: PressureInfo, ceiling_kpa: float, cuff: DeviceInfo, trigger_spec: str,
                 trigger_simulated: bool, dry_run: bool, panel_kpa: float | None = None,
                 buttons: str | None = None, lsl: bool = False) -> Briefing:
    """The block shown before a run waits for the scanner; a gated inflator adds its panel line
    (the operator confirms the panel shows it), a serial button box its line, LSL streams theirs."""
    ses = f", session {session}" if session else ""
    lines = [("participant", f"sub-{participant}{ses}, run {run}"),
             ("protocol", f"{protocol_path} (sha256 {protocol_sha256[:12]})"),
             ("pressure", pressure_line(pressure)),
             *([] if panel_kpa is None else [("panel", panel_line(panel_kpa, cuff))]),
             ("ceiling", _kpa(ceiling_kpa)),
             *_cuff_lines(cuff, pressure.get("calibration_cuff")),
             ("trigger", trigger_spec + (" (SIMULATED)" if trigger_simulated else "")),
             *([("buttons", buttons)] if buttons is not None else []),
             *([("streams", "Lab Streaming Layer: markers and pressure (docs/lsl.md)")] if lsl else [])]
    facts = {"participant": participant, "session": session, "run": run, "protocol_path": protocol_path,
             "protocol_sha256": protocol_sha256, "pressure": dict(pressure), "ceiling_kpa": ceiling_kpa,
             "ceiling_mmhg": round(kpa_to_mmhg(ceiling_kpa), 1), "cuff": asdict(cuff),
             "trigger": {"spec": trigger_spec, "simulated": trigger_simulated}, "dry_run": dry_run,
             **({} if panel_kpa is None else {"panel_kpa": panel_kpa, "pressure_measured": cuff.pressure_readback}),
             **({"buttons": buttons} if buttons is not None else {}), **({"lsl": True} if lsl else {})}
    return Briefing("run", dry_run, tuple(lines), facts)


def calibration_briefing(*, participant: str, session: str | None, method: str, target_rating: float,
                         ceiling_kpa: float, cuff: DeviceInfo, dry_run: bool) -> Briefing:
    """The block shown before a calibration gives its first stimulus."""
    ses = f", session {session}" if session else ""
    lines = [("participant", f"sub-{participant}{ses}"),
             ("procedure", f"calibration, {method} method, target rating {target_rating:g}/100"),
             ("ceiling", f"{_kpa(ceiling_kpa)}: no stimulus goes above it"),
             *_cuff_lines(cuff, None)]
    facts = {"participant": participant, "session": session, "method": method, "target_rating": target_rating,
             "ceiling_kpa": ceiling_kpa, "ceiling_mmhg": round(kpa_to_mmhg(ceiling_kpa), 1), "cuff": asdict(cuff),
             "dry_run": dry_run}
    return Briefing("calibration", dry_run, tuple(lines), facts)


def confirm(briefing: Briefing, *, say: Callable[[str], None], assume_yes: bool,
            ask: Callable[[str], str] = input, confirmed_by: str | None = None) -> Confirmation:
    """Show the block; a real session needs 'y' from the operator (or --yes). The confirmation record.

    `confirmed_by` (with --yes) names who confirmed instead of the terminal, e.g. 'station':
    the operator confirmed this block on the station's page, which then started this process.
    Anything but y/yes (an empty line, EOF on a closed stdin) cancels: AbortError, reason
    `not_confirmed`, before anything reaches the participant.
    """
    say(briefing.text())
    stamp = datetime.now().astimezone().isoformat(timespec="seconds")
    if briefing.dry_run or assume_yes:
        by = "dry run (not asked)" if briefing.dry_run else "--yes" if confirmed_by is None else confirmed_by
        if not briefing.dry_run:
            say(f"confirmed by {by} (recorded)")
        done: Confirmation = {"by": by, "at": stamp}
        if confirmed_by is not None:
            done["started_from"] = confirmed_by
        return done
    try:
        answer = ask(f"Start this {briefing.what}? Type y and Enter to start, anything else cancels: ")
    except EOFError:
        answer = ""
    if answer.strip().lower() not in YES_WORDS:
        raise AbortError(f"the operator did not confirm (answer {answer.strip()!r}); nothing was started",
                         reason="not_confirmed")
    return {"by": "operator", "at": datetime.now().astimezone().isoformat(timespec="seconds"),
            "answer": answer.strip()}
