"""The participant window under Xvfb: what the log says is on screen is on screen."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from experiment.clock import VirtualClock, psychopy_clock
from experiment.station.display import LAG_WINDOW, SimulatedDisplay, SoftwarePacer, WindowDisplay
from experiment.errors import InputError
from experiment.protocol.model import Cue

DATA = Path(__file__).parent / "data"

CUES = {
    "fixation": Cue("fixation", "shape", (0.1, 0.1), (0.0, 0.0), "height", color="#ffffff", shape="cross"),
    "pain": Cue("pain", "shape", (0.5, 0.5), (0.0, 0.0), "height", color="#ff0000", shape="circle"),
    "relief": Cue("relief", "image", (0.5, 0.5), (0.0, 0.0), "height", image="blue.png"),
}


def _image_cue(image: str) -> dict[str, Cue]:
    return {"relief": Cue("relief", "image", (0.2, 0.2), (0.0, 0.0), "height", image=image)}


@pytest.fixture
def window(xdisplay):
    disp = WindowDisplay(clock=psychopy_clock(), cues=CUES, stimuli_dir=DATA, fullscreen=False,
                         size=(320, 240), units="height", refresh_hz=60.0, dry_run=True, title="cuedpain-test-display")
    yield disp
    disp.close()


def _center_rgb(frame) -> np.ndarray:
    a = np.asarray(frame.convert("RGB"))
    h, w, _ = a.shape
    return a[h // 2 - 3:h // 2 + 3, w // 2 - 3:w // 2 + 3].reshape(-1, 3).mean(axis=0)


@pytest.mark.display
def test_each_cue_is_drawn_for_the_flip(window: WindowDisplay) -> None:
    window.show("pain")
    rgb = _center_rgb(window.grab_back_buffer())
    assert rgb[0] > 200 and rgb[1] < 50 and rgb[2] < 50  # red disc
    window.flip()
    window.show("relief")
    rgb = _center_rgb(window.grab_back_buffer())
    assert rgb[2] > 200 and rgb[0] < 50  # blue image
    window.flip()
    window.show(None)
    rgb = _center_rgb(window.grab_back_buffer())
    assert rgb.max() < 30  # blank
    corner = np.asarray(window.grab_back_buffer().convert("RGB"))[:40, :].reshape(-1, 3)
    assert (corner[:, 0] > 150).any()  # the orange DRY RUN mark is there


@pytest.mark.display
def test_flips_are_paced_on_a_frame_grid_without_vsync(window: WindowDisplay) -> None:
    assert window.vsync is False  # Xvfb has no vertical blank: software pacing
    clock = psychopy_clock()
    ts, misses = [], []
    for _ in range(93):
        predicted = window.predict_next_flip()
        t = window.flip()
        ts.append(t)
        misses.append(t - predicted)
        assert abs(clock.now() - t) < 0.05  # flip times are on the run's clock
    intervals = np.diff(ts)
    assert np.median(intervals) == pytest.approx(1 / 60, abs=0.002)
    # the pacer wakes each flip early by its render lag: flips land on the predicted times,
    # not a lag late (a few ms under Xvfb; it varies with the machine's load)
    lag_s = window.flip_lag_s
    assert lag_s is not None and lag_s > 0
    assert abs(np.median(misses[31:])) < max(0.001, lag_s / 2)


def test_software_pacer_learns_the_flip_lag_and_lands_flips_on_its_grid() -> None:
    frame_s, lag_s = 1 / 60, 0.0023
    pacer = SoftwarePacer(frame_s)          # no first estimate: it starts at 0
    now, landed = 10.0, []
    for _ in range(3 * LAG_WINDOW):
        predicted = pacer.next_flip(now)
        wake = pacer.wake_time(now)
        assert wake <= predicted and wake >= now
        t_flip = wake + lag_s               # rendering and swapping take lag_s
        pacer.flipped(t_flip, wake)
        landed.append(t_flip - predicted)
        now = t_flip + 0.004                # the next frame's work
    assert landed[0] == pytest.approx(lag_s)                       # before it learned: late by the lag
    assert max(abs(x) for x in landed[LAG_WINDOW:]) < 1e-9         # after one window: on the grid
    assert pacer.lag_s == pytest.approx(lag_s)
    assert np.diff([pacer.next_flip(now) for now in (now, now + frame_s)])[0] == pytest.approx(frame_s)


def test_software_pacer_ignores_a_stall_and_never_wakes_a_frame_early() -> None:
    frame_s = 1 / 60
    pacer = SoftwarePacer(frame_s, lag_s=0.002)
    now = 0.0
    for k in range(LAG_WINDOW):
        wake = pacer.wake_time(now)
        pacer.flipped(wake + (0.060 if k == 5 else 0.002), wake)   # one 60 ms stall
        now = wake + 0.003
    assert pacer.lag_s == pytest.approx(0.002)                     # the median: the stall is not the lag
    slow = SoftwarePacer(frame_s, lag_s=0.5)                       # an absurd estimate is bounded
    assert slow.lag_s == pytest.approx(0.75 * frame_s)


@pytest.mark.display
def test_missing_image_is_an_input_error(xdisplay, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="cue 'relief': image file .*nothere.png does not exist"):
        WindowDisplay(clock=psychopy_clock(), cues=_image_cue("nothere.png"),
                      stimuli_dir=tmp_path, fullscreen=False, size=(200, 200))


@pytest.mark.display
def test_corrupt_image_is_an_input_error(xdisplay, tmp_path: Path) -> None:
    (tmp_path / "bad.png").write_bytes(b"not a png at all")
    with pytest.raises(InputError, match="cue 'relief' cannot be loaded"):
        WindowDisplay(clock=psychopy_clock(), cues=_image_cue("bad.png"),
                      stimuli_dir=tmp_path, fullscreen=False, size=(200, 200))


def test_simulated_display_flips_on_an_exact_grid() -> None:
    clock = VirtualClock(start=10.0)
    disp = SimulatedDisplay(clock, refresh_hz=60.0)
    disp.show("pain")
    t1 = disp.flip()
    clock.sleep(0.005)
    t2 = disp.flip()
    assert t1 == 10.0 and t2 == pytest.approx(10.0 + 1 / 60)
    assert disp.shown == [(10.0, "pain")]
    clock.sleep(0.1)  # a stall: the next flip is the next grid point, counted as a drop
    t3 = disp.flip()
    assert t3 == pytest.approx(10.0 + 7 / 60)
    assert disp.stats.dropped == 1


@pytest.mark.display
def test_the_light_patch_turns_white_at_a_cue_change_for_a_tenth_of_a_second(xdisplay) -> None:
    disp = WindowDisplay(clock=psychopy_clock(), cues=CUES, stimuli_dir=DATA, fullscreen=False, size=(320, 240),
                         units="height", refresh_hz=60.0, title="cuedpain-test-patch",
                         light_patch=("bottom_right", 20))
    try:
        def patch_rgb() -> np.ndarray:
            a = np.asarray(disp.grab_back_buffer().convert("RGB"))
            return a[-14:-6, -14:-6].reshape(-1, 3).mean(axis=0)

        assert patch_rgb().max() < 30 and disp.patch_flashes == []      # black before any cue change
        disp.show("pain")
        t_flip = disp.flip()
        assert disp.patch_flashes == [t_flip]
        assert patch_rgb().min() > 225                                  # white after the change's flip
        disp.show("pain")                                                # the same cue: no new flash
        disp.flip()
        assert disp.patch_flashes == [t_flip]
        while disp.flip() < t_flip + 0.12:
            pass
        assert patch_rgb().max() < 30                                    # black again after 0.1 s
    finally:
        disp.close()
