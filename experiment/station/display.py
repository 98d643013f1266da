"""The participant display: a PsychoPy window with frame-locked flips, or a simulated
display on a virtual clock for headless runs.

Both give the runner the same three things: `show(cue)` to choose what the next flip
shows, `predict_next_flip()` to decide which flip a change belongs to, and `flip()`
which returns the flip's time on the run's clock.

Under Xvfb (and on any display without vertical sync) `win.flip()` returns as soon as
the frame is rendered. The window then paces its flips in software on a fixed grid at the
rig's refresh rate (`SoftwarePacer`) and says so in the log (`vsync: false`): onsets stay
frame-quantised as on a real monitor, and the log never pretends there was a vertical blank.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from experiment.clock import Clock, VirtualClock
from experiment.errors import HardwareError, InputError
from experiment.log.records import DisplayInfo, FrameSummary
from experiment.protocol.model import Cue
from experiment.station.rating import RatingScale, RatingState


PATCH_WHITE_S = 0.1   # how long the light patch stays white after a cue change
LAG_WINDOW = 31       # flips over which a software-paced window's flip lag is estimated (median)


class SoftwarePacer:
    """Flip times on a fixed grid for a display without vertical sync.

    `win.flip()` takes time to render and swap (a millisecond or more in software GL), so a
    flip started at its grid time lands that much after it, and a phase put on the flip
    predicted for its grid time would start late by that lag, past the half-frame bound.
    The pacer wakes the flip early by the median lag of the last `LAG_WINDOW` flips, so
    measured flip times lie on the grid that `next_flip()` predicts."""

    def __init__(self, frame_s: float, lag_s: float = 0.0) -> None:
        self.frame_s = frame_s
        self.lag_s = min(max(lag_s, 0.0), 0.75 * frame_s)
        self._grid: float | None = None
        self._lags = [self.lag_s] * LAG_WINDOW
        self._k = 0

    def next_flip(self, now: float) -> float:
        """The grid time of the next flip that can still be made from `now`."""
        if self._grid is None:
            self._grid = now + self.lag_s
        while self._grid - self.lag_s < now:
            self._grid += self.frame_s
        return self._grid

    def wake_time(self, now: float) -> float:
        """When to call `win.flip()` for the next flip to land on its grid time."""
        return self.next_flip(now) - self.lag_s

    def flipped(self, t_flip: float, t_wake: float) -> None:
        """A flip woken at `t_wake` was measured at `t_flip`: learn the lag, advance the grid."""
        self._lags[self._k] = t_flip - t_wake
        self._k += 1
        if self._k == LAG_WINDOW:   # a new median once per window: no sorting in every frame
            self._k = 0
            self.lag_s = min(max(sorted(self._lags)[LAG_WINDOW // 2], 0.0), 0.75 * self.frame_s)
        self._grid = (self._grid if self._grid is not None else t_flip) + self.frame_s


@dataclass
class FrameStats:
    """Frame intervals measured from flip times: bounded, O(1) per frame."""

    frame_s: float
    n: int = 0
    dropped: int = 0
    max_interval_s: float = 0.0
    _last_t: float | None = None
    _hist: list[int] = field(default_factory=lambda: [0] * 400)  # 0.25 ms bins up to 100 ms
    drops: list[tuple[float, float]] = field(default_factory=list)  # since last take_drops()

    def add(self, t_flip: float) -> None:
        if self._last_t is not None:
            dt = t_flip - self._last_t
            self.n += 1
            self.max_interval_s = max(self.max_interval_s, dt)
            self._hist[min(len(self._hist) - 1, int(dt / 0.00025))] += 1
            if dt > 1.5 * self.frame_s:
                self.dropped += 1
                self.drops.append((t_flip, dt))
        self._last_t = t_flip

    def restart_interval(self) -> None:
        """Forget the last flip (after a deliberate pause) so no false drop is counted."""
        self._last_t = None

    def percentile_s(self, q: float) -> float:
        if self.n == 0:
            return math.nan
        target = q / 100.0 * self.n
        acc = 0
        for i, c in enumerate(self._hist):
            acc += c
            if acc >= target:
                return (i + 1) * 0.00025
        return self.max_interval_s

    def take_drops(self) -> list[tuple[float, float]]:
        d, self.drops = self.drops, []
        return d

    def summary(self, t: float) -> FrameSummary:
        return {"t": t, "n": self.n, "dropped": self.dropped, "max_interval_s": round(self.max_interval_s, 6),
                "p99_interval_s": round(self.percentile_s(99), 6)}


class SimulatedDisplay:
    """A display on a virtual clock: flips land on an exact frame grid.

    Used by headless runs; it draws nothing but remembers what each flip showed so
    tests can check that the log says what was on screen.
    """

    simulated = True

    def __init__(self, clock: VirtualClock, *, refresh_hz: float = 60.0, dry_run_mark: bool = True) -> None:
        self._clock = clock
        self.frame_s = 1.0 / refresh_hz
        self.refresh_hz = refresh_hz
        self._next = clock.now()
        self._pending: str | None = None
        self.on_screen: str | None = None
        self.shown: list[tuple[float, str | None]] = []  # (flip time, cue) at every change
        self.stats = FrameStats(self.frame_s)
        self.rating: RatingState | None = None

    def info(self) -> DisplayInfo:
        return {"refresh_hz": self.refresh_hz, "frame_s": self.frame_s, "resolution": None,
                "fullscreen": False, "vsync": False, "simulated": True}

    def show(self, cue: str | None) -> None:
        self._pending = cue

    def show_rating(self, state: RatingState | None) -> None:
        self.rating = state

    def show_message(self, text: str | None) -> None:
        pass

    def predict_next_flip(self) -> float:
        now = self._clock.now()
        while self._next < now - 1e-12:
            self._next += self.frame_s
        return self._next

    def flip(self) -> float:
        t = self.predict_next_flip()
        self._clock.sleep_until(t)
        self._next = t + self.frame_s
        if self._pending != self.on_screen:
            self.shown.append((t, self._pending))
        self.on_screen = self._pending
        self.stats.add(t)
        return t

    def poll_keys(self) -> list[tuple[str, float]]:
        return []

    def close(self) -> None:
        pass


def _open_window(*, size: tuple[int, int], fullscreen: bool, screen: int, units: str, background: str,
                 title: str | None, width_cm: float | None, distance_cm: float | None) -> Any:
    """The participant's PsychoPy window (an object of an untyped library), or HardwareError."""
    from psychopy import visual

    # the process id in the title lets tools (xdotool, tests) find this run's window
    title = title or f"cuedpain participant (pid {os.getpid()})"
    monitor = None
    if width_cm is not None:  # needed for cues in deg or cm (the rig file gives them)
        from psychopy import monitors

        monitor = monitors.Monitor("cuedpain-rig", width=width_cm, distance=distance_cm or 57.0)
        monitor.setSizePix(list(size))
    try:
        return visual.Window(size=list(size), fullscr=fullscreen, screen=screen, units=units,
                             color=background, waitBlanking=True, allowGUI=not fullscreen,
                             title=title, checkTiming=False, monitor=monitor)
    except Exception as exc:
        raise HardwareError(f"cannot open the participant window: {exc}") from exc


def _gl_finish() -> Callable[[], None] | None:
    """OpenGL's glFinish (through pyglet, PsychoPy's window library), or None without it."""
    try:
        from pyglet import gl
    except Exception:  # pragma: no cover - PsychoPy without pyglet
        return None
    finish: Callable[[], None] = gl.glFinish
    return finish


class WindowDisplay:
    """A PsychoPy window showing the protocol's cues, the rating scale and messages.

    Cue stimuli are built once at start (so a missing or corrupt image fails before
    the participant sees anything). `flip()` returns the flip time on the run's clock.
    """

    simulated = False

    def __init__(self, *, clock: Clock, cues: Mapping[str, Cue], stimuli_dir: Path,
                 fullscreen: bool = True, size: tuple[int, int] = (1024, 768), screen: int = 0,
                 units: str = "height", refresh_hz: float = 60.0, dry_run: bool = False,
                 title: str | None = None, background: str = "black",
                 width_cm: float | None = None, distance_cm: float | None = None,
                 rating_scales: Sequence[RatingScale] = (), light_patch: tuple[str, int] | None = None) -> None:
        try:
            from psychopy import logging as pplogging
            from psychopy import visual
        except Exception as exc:  # pragma: no cover - install problem
            raise HardwareError(f"PsychoPy cannot be imported: {exc}") from exc
        self._clock = clock
        self._visual = visual
        self.win = _open_window(size=size, fullscreen=fullscreen, screen=screen, units=units,
                                background=background, title=title, width_cm=width_cm, distance_cm=distance_cm)
        self.win.mouseVisible = False
        self._ppclock = pplogging.defaultClock
        # PsychoPy's own console chatter (frame-drop warnings) would bury the operator
        # console; drops are measured and logged by FrameStats instead.
        pplogging.console.setLevel(pplogging.ERROR)
        try:
            self._prepare_stimuli(cues, stimuli_dir, dry_run=dry_run, rating_scales=rating_scales)
            self._init_patch(light_patch)
        except BaseException:   # a cue that cannot be built: no window is left open behind the error
            self.close()
            raise
        self._cue: str | None = None
        self.refresh_hz = refresh_hz
        self.frame_s = 1.0 / refresh_hz
        self.vsync, lag_s = self._detect_vsync()
        self.stats = FrameStats(self.frame_s)
        # FrameStats measures the intervals; PsychoPy's own record would grow a list and log a
        # warning object per drop in the frame loop for nothing
        self.win.recordFrameIntervals = False
        self._pacer = None if self.vsync else SoftwarePacer(self.frame_s, lag_s)
        self._finish_rendering = None if self.vsync else _gl_finish()
        self._last_flip: float | None = None

    # -- construction helpers --
    def _prepare_stimuli(self, cues: Mapping[str, Cue], stimuli_dir: Path, *, dry_run: bool,
                         rating_scales: Sequence[RatingScale]) -> None:
        """Every cue, mark, message and rating text built and drawn once before the run (first
        draws build textures and glyphs, and a missing image fails here)."""
        visual = self._visual
        self._stims = {name: self._make_stim(name, spec, stimuli_dir) for name, spec in cues.items()}
        self._dry_mark = (visual.TextStim(self.win, text="DRY RUN", color="orange", height=0.04,
                                          units="height", pos=(0.0, 0.45)) if dry_run else None)
        self._message = visual.TextStim(self.win, text="", color="white", height=0.04, units="height",
                                        pos=(0.0, -0.4), wrapWidth=1.2)
        self._show_message = False
        self._rating: RatingState | None = None
        self._rating_shapes = self._make_rating_shapes()
        self._marker_drawn: tuple[float, float, float, bool] | None = None   # what the marker was last set to
        self._rating_texts: dict[tuple[str, str, str], dict[str, Any]] = {}
        for scale in rating_scales:  # lay the texts out now: the first layout costs a frame or more
            self._texts_for(scale)
        texts = [stim for group in self._rating_texts.values() for stim in group.values()]
        for stim in [*self._stims.values(), *self._rating_shapes.values(), *texts]:
            stim.draw()  # first draws build textures and glyphs: do it before the run
        self.win.clearBuffer()

    def _make_stim(self, name: str, cue: Cue, stimuli_dir: Path) -> Any:
        """One cue as a PsychoPy stimulus; a cue that cannot be built is an input error."""
        try:
            if cue.kind == "image":
                return self._image_stim(name, cue, stimuli_dir)
            if cue.kind == "text":
                return self._visual.TextStim(self.win, text=str(cue.text), units=cue.units, pos=cue.pos,
                                             color=cue.color or "white", height=cue.size[1])
            if cue.kind == "shape":
                return self._shape_stim(name, cue)
        except InputError:
            raise
        except Exception as exc:
            raise InputError(f"cue {name!r} cannot be loaded: {exc}") from exc
        raise InputError(f"cue {name!r}: unknown kind {cue.kind!r}")

    def _image_stim(self, name: str, cue: Cue, stimuli_dir: Path) -> Any:
        path = cue.image_path or Path(stimuli_dir) / str(cue.image)
        if not path.is_file():
            raise InputError(f"cue {name!r}: image file {path} does not exist")
        return self._visual.ImageStim(self.win, image=str(path), units=cue.units, pos=cue.pos, size=cue.size)

    def _shape_stim(self, name: str, cue: Cue) -> Any:
        v, (w, h), color = self._visual, cue.size, cue.color or "white"
        common = {"units": cue.units, "pos": cue.pos, "fillColor": color, "lineColor": color}
        if cue.shape == "circle":
            return v.Circle(self.win, radius=w / 2, edges=64, **common)
        if cue.shape == "triangle":
            return v.Polygon(self.win, edges=3, radius=w / 2, **common)
        if cue.shape in ("square", "rect"):
            return v.Rect(self.win, width=w, height=h, **common)
        if cue.shape == "cross":
            return v.ShapeStim(self.win, vertices="cross", size=(w, h), **common)
        raise InputError(f"cue {name!r}: unknown shape {cue.shape!r}")

    def _init_patch(self, light_patch: tuple[str, int] | None) -> None:
        """The light sensor's patch (`light_patch`: corner and side in pixels; none: no patch)."""
        self._patch = None if light_patch is None or light_patch[0] == "none" else self._make_patch(*light_patch)
        self._patch_white = False
        self._flash_pending = False
        self._flash_until: float | None = None
        self.patch_flashes: list[float] = []   # flip times at which the light patch turned white

    def _make_patch(self, corner: str, side_px: int) -> Any:
        """The light sensor's square in a corner of the window (docs/light-sensor.md), black until a cue changes."""
        w, h = (int(x) for x in self.win.size)
        x = (w - side_px) / 2 * (1 if corner.endswith("right") else -1)
        y = (h - side_px) / 2 * (1 if corner.startswith("top") else -1)
        patch = self._visual.Rect(self.win, width=side_px, height=side_px, units="pix", pos=(x, y),
                                  fillColor="black", lineColor="black", lineWidth=0)
        patch.draw()
        return patch

    def _set_patch(self, white: bool) -> None:
        if self._patch is not None and white != self._patch_white:   # set only on change (PsychoPy rebuilds colours)
            self._patch.fillColor = self._patch.lineColor = "white" if white else "black"
            self._patch_white = white

    def _make_rating_shapes(self) -> dict[str, Any]:
        v = self._visual
        return {
            "line": v.Line(self.win, start=(-0.4, -0.05), end=(0.4, -0.05), units="height", lineColor="white", lineWidth=3),
            "marker": v.Rect(self.win, width=0.012, height=0.08, units="height", pos=(0, -0.05), fillColor="orange", lineColor="orange"),
        }

    def _texts_for(self, sc: RatingScale) -> dict[str, Any]:
        """The question and anchors of one scale, laid out once (re-laying out text costs frames)."""
        key = (sc.question, sc.low_label, sc.high_label)
        texts = self._rating_texts.get(key)
        if texts is None:
            v = self._visual
            texts = {"question": v.TextStim(self.win, text=sc.question, units="height", height=0.045, pos=(0, 0.12),
                                            color="white"),
                     "low": v.TextStim(self.win, text=sc.low_label, units="height", height=0.03, pos=(-0.4, -0.13),
                                       color="white"),
                     "high": v.TextStim(self.win, text=sc.high_label, units="height", height=0.03, pos=(0.4, -0.13),
                                        color="white")}
            self._rating_texts[key] = texts
        return texts

    def _abs(self, t_flip: float) -> float:
        """PsychoPy's flip time is on logging.defaultClock; return it on the run's clock."""
        return t_flip + float(self._ppclock.getLastResetTime())

    def _detect_vsync(self) -> tuple[bool, float]:
        """Time 30 flips: with vertical sync they take about a frame each.

        With sync, the measured frame period replaces the rig's nominal one (and
        `refresh_mismatch` says when they differ by more than 5 %). Also returns the median
        time a flip takes from its call (the software pacer's first lag estimate)."""
        calls, ts = [], []
        for _ in range(30):
            calls.append(self._clock.now())
            ts.append(self._abs(self.win.flip()))
        intervals = sorted(b - a for a, b in zip(ts, ts[1:]))
        median = intervals[len(intervals) // 2]
        lag_s = sorted(t - c for c, t in zip(calls, ts))[len(ts) // 2]
        self.measured_refresh_hz = 1.0 / median if median > 0 else float("inf")
        vsync = median > 0.5 * self.frame_s
        self.refresh_mismatch = vsync and abs(self.measured_refresh_hz - self.refresh_hz) > 0.05 * self.refresh_hz
        if vsync:
            self.frame_s = median
        return vsync, lag_s

    # -- what the next flip shows --
    def info(self) -> DisplayInfo:
        return {"refresh_hz": self.refresh_hz, "measured_refresh_hz": round(self.measured_refresh_hz, 3),
                "frame_s": self.frame_s, "resolution": list(self.win.size),
                "fullscreen": bool(self.win._isFullScr), "vsync": self.vsync, "simulated": False}

    def show(self, cue: str | None) -> None:
        if cue is not None and cue not in self._stims:
            raise InputError(f"cue {cue!r} is not defined")
        if cue != self._cue:
            self._flash_pending = self._patch is not None
        self._cue = cue

    def show_rating(self, state: RatingState | None) -> None:
        self._rating = state

    def show_message(self, text: str | None) -> None:
        self._show_message = bool(text)
        if text:
            self._message.text = text

    def _draw(self) -> None:
        if self._cue is not None:
            self._stims[self._cue].draw()
        if self._rating is not None:
            r, shapes = self._rating, self._rating_shapes
            sc = r.scale
            marker = (r.value, sc.low, sc.high, r.confirmed)
            if marker != self._marker_drawn:   # PsychoPy rebuilds vertices and colours on every set: only on change
                frac = (r.value - sc.low) / (sc.high - sc.low)
                shapes["marker"].pos = (-0.4 + 0.8 * frac, -0.05)
                shapes["marker"].fillColor = shapes["marker"].lineColor = "limegreen" if r.confirmed else "orange"
                self._marker_drawn = marker
            for stim in [*shapes.values(), *self._texts_for(sc).values()]:
                stim.draw()
        if self._show_message:
            self._message.draw()
        if self._dry_mark is not None:
            self._dry_mark.draw()
        if self._patch is not None:
            self._patch.draw()

    # -- timing --
    @property
    def flip_lag_s(self) -> float | None:
        """How long a software-paced flip takes from its call (None with vertical sync)."""
        return None if self._pacer is None else self._pacer.lag_s

    def predict_next_flip(self) -> float:
        now = self._clock.now()
        if self.vsync:
            if self._last_flip is None:
                return now
            t = self._last_flip + self.frame_s
            while t < now:
                t += self.frame_s
            return t
        assert self._pacer is not None
        return self._pacer.next_flip(now)

    def flip(self, *, on_flip: Callable[[], None] | None = None) -> float:
        """Draw, flip, return the flip time on the run's clock."""
        if self._patch is not None:
            if self._flash_pending:
                self._set_patch(True)
            elif self._flash_until is not None and self._clock.now() >= self._flash_until:
                self._set_patch(False)
                self._flash_until = None
        self._draw()
        pacer = self._pacer
        if pacer is not None:
            if self._finish_rendering is not None:   # render now, before the wait: the flip then only swaps
                self._finish_rendering()
            t_wake = pacer.wake_time(self._clock.now())
            self._clock.sleep_until(t_wake)
        t = self._abs(self.win.flip())
        if pacer is not None:
            pacer.flipped(t, t_wake)
        self._last_flip = t
        self.stats.add(t)
        if self._flash_pending:
            self._flash_pending = False
            self._flash_until = t + PATCH_WHITE_S - self.frame_s / 2
            self.patch_flashes.append(t)
        if on_flip is not None:
            on_flip()
        return t

    def grab_back_buffer(self) -> Any:
        """The frame drawn for the next flip, read back (tests check what is on screen)."""
        self._draw()
        return self.win.getMovieFrame(buffer="back")

    def close(self) -> None:
        try:
            self.win.close()
        except Exception:  # pragma: no cover - closing a broken window
            pass
