"""`cuedpain timing-test`: the rig's own screen, measured with the protocol's own cues at its pace.

On the participant's screen (full-screen, as a real run), the protocol's cue changes are
drawn at their planned times for `duration_s`, each on the first flip whose predicted time is
at or after its plan minus half a frame (as the trial loop does). Every flip is timed. With
a light sensor on a serial port (docs/light-sensor.md) the light patch in the rig's corner
turns white at each cue change and the lag from flip to light is measured per cue. The
figures and a verdict against the rig file's `timing_limits` go to
`<data>/sourcedata/timing-tests/timing-test-<time>.json`; a run's log header (and so its
provenance) names the newest one (`latest_timing_test`). Exit 0 fit, 4 not fit, 2 bad input.
Escape (or a stop signal) ends the test (exit 3), with nothing written.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from experiment import __version__
from experiment.errors import EXIT_HARDWARE, EXIT_OK, AbortError, InputError
from experiment.outputs.atomic import create_once
from experiment.procedures.timingtest.figures import Measured, figures, fit, verdict
from experiment.protocol.model import Protocol
from experiment.protocol.rig import Rig
from experiment.protocol.schedule import build_schedule
from experiment.station.console import OperatorConsole
from experiment.station.runinfo import software_revision
from experiment.station.station import Mode, Station, StationSpec, WindowSpec

DEFAULT_CORNER = "top_left"   # where the patch goes when a sensor is given and the rig names no corner
TAIL_S = 0.5                  # frames after the last cue change, so its light can still arrive
SUBDIR = ("sourcedata", "timing-tests")


@dataclass(frozen=True)
class TimingTestRequest:
    """A checked request (the CLI builds it)."""

    protocol: Protocol
    protocol_path: Path
    rig: Rig
    sensor_port: str | None
    duration_s: float
    data_root: Path
    seed: int | None = None


def results_dir(data_root: Path) -> Path:
    return Path(data_root).joinpath(*SUBDIR)


def latest_timing_test(data_root: Path) -> dict[str, Any] | None:
    """The newest timing test of a dataset root, in brief (a run's header records it), or None."""
    files = sorted(results_dir(data_root).glob("timing-test-*.json"))
    for path in reversed(files):
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if not isinstance(doc, dict):
            continue
        return {"path": str(path.relative_to(data_root)), "start_wall": doc.get("start_wall"), "fit": doc.get("fit"),
                "sensor": doc.get("sensor"), "sensor_simulated": (doc.get("figures") or {}).get("light", {}).get(
                    "sensor_simulated")}
    return None


def check_request(req: TimingTestRequest) -> None:
    if not 1.0 <= req.duration_s <= 3600.0:
        raise InputError(f"timing-test: --duration must be 1-3600 s, got {req.duration_s:g}")


def run_timing_test(req: TimingTestRequest, *, console: OperatorConsole | None = None,
                    say: Callable[[str], None] = print) -> int:
    check_request(req)
    p, rig = req.protocol, req.rig
    screen = rig.screen
    if req.sensor_port is not None and screen.light_patch == "none":
        screen = replace(screen, light_patch=DEFAULT_CORNER)
        say(f"timing-test: the rig names no light patch corner; the patch is in the {DEFAULT_CORNER} corner")
    timeline = build_schedule(p, seed=req.seed)
    changes = _cue_changes(timeline.events, req.duration_s)
    if not changes:
        raise InputError(f"timing-test: the protocol changes no cue in the first {req.duration_s:g} s; "
                         "give a longer --duration")
    spec = StationSpec(mode=Mode.REAL, keys=p.keys,
                       window=WindowSpec(screen=screen, cues=p.cues, stimuli_dir=p.stimuli_dir), assume_yes=True)
    start_wall = datetime.now().astimezone().isoformat(timespec="seconds")
    with Station(spec, console=console) as st:
        sensor = None
        if req.sensor_port is not None:
            from experiment.station.lightsensor import LightSensor

            sensor = LightSensor(req.sensor_port, clock=st.clock)
            sensor.open()
        try:
            measured = _measure(st, changes, duration_s=req.duration_s, sensor=sensor,
                                rig_refresh_hz=screen.refresh_hz)
        finally:
            if sensor is not None:
                sensor.close()
        assert st.display is not None
        display_info = st.display.info()
    fig = figures(measured)
    rows = verdict(fig, rig.timing_limits, with_sensor=req.sensor_port is not None)
    ok = fit(rows)
    doc = {"format": "cuedpain-timing-test/1", "start_wall": start_wall,
           "software": {"name": "cuedpain", "version": __version__, "revision": software_revision()},
           "protocol": {"path": str(req.protocol_path), "sha256": p.sha256}, "seed": timeline.seed,
           "rig": {"path": str(rig.path) if rig.path else None, "screen": asdict(screen),
                   "timing_limits": asdict(rig.timing_limits)},
           "display": display_info, "sensor": req.sensor_port, "duration_s": req.duration_s,
           "figures": fig, "verdict": rows, "fit": ok}
    out = results_dir(req.data_root)
    out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    path = out / f"timing-test-{stamp}-{os.getpid()}.json"
    if not create_once(path, (json.dumps(doc, indent=1, default=str) + "\n").encode("utf-8")):
        raise InputError(f"timing-test: {path} exists already; nothing was overwritten")
    _say_verdict(say, fig, rows, ok, path)
    return EXIT_OK if ok else EXIT_HARDWARE


def _cue_changes(events: Any, duration_s: float) -> list[tuple[float, str | None]]:
    """(onset_s, cue) of every visual change in the first `duration_s` (pure)."""
    changes: list[tuple[float, str | None]] = []
    shown: object = object()
    for ev in events:
        if ev.onset_s >= duration_s:
            break
        if ev.cue != shown:
            changes.append((ev.onset_s, ev.cue))
            shown = ev.cue
    return changes


def _measure(st: Station, changes: list[tuple[float, str | None]], *, duration_s: float, sensor: Any,
             rig_refresh_hz: float | None) -> Measured:
    """The flip loop: cue changes on their flips until the end; Escape and stop signals end it."""
    display = st.display
    assert display is not None
    escape = st.spec.keys.escape
    half = display.frame_s / 2
    flips: list[float] = []
    onsets: list[tuple[float, float]] = []
    display.show(None)
    t_start = display.flip() + 1.0
    flashed_before = len(getattr(display, "patch_flashes", []))
    end_t = t_start + duration_s + TAIL_S
    k = 0
    while True:
        st.check()
        for key, _t in st.read_keys():
            if key == escape:
                raise AbortError("the operator pressed Escape during the timing test", reason="escape")
        t_next = display.predict_next_flip()
        planned: float | None = None
        while k < len(changes) and t_start + changes[k][0] - half <= t_next:
            planned = t_start + changes[k][0]
            display.show(changes[k][1])
            k += 1
        t = display.flip()
        if t >= t_start:
            flips.append(t)
        if planned is not None:
            onsets.append((planned, t))
        if t >= end_t:
            break
    flashes = list(getattr(display, "patch_flashes", []))[flashed_before:]   # one per cue change of the test
    edges = sensor.take() if sensor is not None else []
    return Measured(flips=flips, onsets=onsets, flashes=flashes, light=[e.t for e in edges],
                    sensor_simulated=any(e.simulated for e in edges), rig_refresh_hz=rig_refresh_hz,
                    frame_s=display.frame_s, vsync=bool(getattr(display, "vsync", False)))


def _fmt(value: Any) -> str:
    return "n/a" if value is None else f"{value:.2f}" if isinstance(value, float) else str(value)


def _say_verdict(say: Callable[[str], None], fig: dict[str, Any], rows: list[dict[str, Any]], ok: bool,
                 path: Path) -> None:
    r, f, o, light = fig["refresh"], fig["frames"], fig["onsets"], fig["light"]
    say(f"refresh: measured {_fmt(r['measured_hz'])} Hz, rig {_fmt(r['rig_hz'])} Hz"
        + ("" if r["vsync"] else " (no vertical sync: flips paced in software)"))
    say(f"frames: {f['n_intervals']} intervals, median {_fmt(f['interval']['median_ms'])} ms, "
        f"p99 {_fmt(f['interval']['p99_ms'])} ms, max {_fmt(f['interval']['max_ms'])} ms, dropped {f['dropped']}")
    say(f"cue onsets: {o['n']}, error median {_fmt(o['error']['median_ms'])} ms, "
        f"largest {_fmt(o['largest_abs_ms'])} ms")
    if light["flashes"]:
        say(f"flip to light: {light['seen']} of {light['flashes']} flashes seen, median "
            f"{_fmt(light['lag']['median_ms'])} ms, SD {_fmt(light['lag']['sd_ms'])} ms, "
            f"max {_fmt(light['lag']['max_ms'])} ms" + (" (SIMULATED sensor)" if light["sensor_simulated"] else ""))
    for row in rows:
        mark = {True: "ok  ", False: "FAIL", None: "n/a "}[row["ok"]]
        say(f"  {mark} {row['check']}: {_fmt(row['value'])} (limit {_fmt(row['limit'])})")
    say(f"timing-test: {'FIT' if ok else 'NOT FIT'}; figures in {path}")
