"""A real-time dry run in a real PsychoPy window under Xvfb.

The demo protocol runs end to end with the simulated cuff on a pseudo-terminal
(through the serial driver) and the simulated scanner typing real X key events into
the participant window. Every flip that changed the cue is read back from the frame
buffer, so the test checks that each cue was on screen when the log says it was.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import experiment.station.devices as devices
from experiment.cli import main
from experiment.station.display import WindowDisplay
from experiment.log.eventlog import read_log

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "protocols" / "demo.yaml"


class RecordingWindow(WindowDisplay):
    """A WindowDisplay that reads back the frame of every flip that changes the cue."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.captures: list[tuple[float, str | None, np.ndarray]] = []
        self._last_cue: object = object()

    def flip(self, **kwargs) -> float:
        capture = None
        if self._cue != self._last_cue:
            frame = np.asarray(self.grab_back_buffer().convert("RGB"))
            h, w, _ = frame.shape
            capture = frame[h // 2 - 2:h // 2 + 2, w // 2 - 2:w // 2 + 2].reshape(-1, 3).mean(axis=0)
            self._last_cue = self._cue
        t = super().flip(**kwargs)
        if capture is not None:
            self.captures.append((t, self._cue, capture))
        return t


def _looks_like(cue: str | None, rgb: np.ndarray) -> bool:
    r, g, b = rgb
    if cue == "pain_cue":       # orange triangle image
        return r > 200 and 80 < g < 200 and b < 100
    if cue == "relief_cue":     # #47a4fa disc
        return b > 200 and r < 120
    if cue == "fixation":       # white cross at the centre
        return min(r, g, b) > 200
    return max(r, g, b) < 30


@pytest.mark.realtime
@pytest.mark.display
def test_demo_dry_run_in_a_window_shows_each_cue_when_the_log_says(xdisplay, tmp_path, monkeypatch) -> None:
    windows: list[RecordingWindow] = []
    real_open = devices.open_display

    def open_recording(window, *, mode, clock, stack):
        disp = RecordingWindow(clock=clock, cues=window.cues, stimuli_dir=window.stimuli_dir,
                               fullscreen=False, size=(640, 480), units=window.screen.units, refresh_hz=60.0,
                               dry_run=True, rating_scales=window.rating_scales)
        stack.callback(disp.close)
        windows.append(disp)
        return disp

    monkeypatch.setattr(devices, "open_display", open_recording)
    data = tmp_path / "data"
    code = main(["run", str(DEMO), "--participant", "W01", "--dry-run", "--scanner", "sim:keyboard",
                 "--data", str(data)])
    assert real_open is not open_recording and code == 0
    run_dir = data / "sourcedata" / "sub-W01" / "sub-W01_task-demo_run-1"
    log = read_log(run_dir / "log.jsonl")
    assert log.header["cuff"]["simulated"] and log.header["cuff"]["port"].startswith("/dev/pts/")
    # pulses came as real X key events through the keyboard source
    pulses = list(log.of_kind("pulse"))
    assert len(pulses) >= 40 and all(p["source"] == "sim" for p in pulses)
    intervals = np.diff([p["t"] for p in pulses])
    assert np.median(intervals) == pytest.approx(1.0, abs=0.02)
    # every onset whose cue changed was captured at exactly its logged flip time, showing that cue
    captured = {t: (cue, rgb) for t, cue, rgb in windows[0].captures}
    onsets = list(log.of_kind("onset"))
    # (the fixation cross is already on screen while the runner waits for the scanner)
    before = [{"cue": "fixation"}, *onsets]
    changes = [o for prev, o in zip(before, onsets) if prev["cue"] != o["cue"]]
    assert len(changes) >= 8
    for o in changes:
        assert o["t"] in captured, f"no frame captured at the logged onset of {o['phase']}"
        cue, rgb = captured[o["t"]]
        assert cue == o["cue"] and _looks_like(cue, rgb), (o["phase"], cue, rgb)
    # the cuff really inflated and deflated through the serial path
    sets = [r for r in log.of_kind("cuff_cmd") if r["command"].startswith("SET")]
    assert len(sets) == 2 and all(r["ok"] for r in sets)
    reached = [e for e in log.of_kind("cuff_event") if e["name"] == "TARGET_REACHED"]
    assert len(reached) == 2
    end = next(log.of_kind("end"))
    assert end["status"] == "completed"
    assert (data / "sub-W01" / "func" / "sub-W01_task-demo_run-1_events.tsv").exists()
