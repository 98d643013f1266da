"""`cuedpain simulate-light-sensor`: a light sensor that watches the screen's pixels in the X server.

The simulated twin of a photodiode board (docs/light-sensor.md): from a process of its own it
reads the light patch's pixels from the X server's root window (python-xlib `get_image`) about
every millisecond, and on each dark-to-light edge writes `S` (the simulated sensor's byte) into
a pseudo-terminal, whose slave path it prints first. What it measures is when the X server had
the white pixels, which under Xvfb (no vertical sync, no photons) is the nearest thing to light.
It stops on SIGINT/SIGTERM, or when its parent process is gone if `--parent-pid` is given.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
from typing import Any

from experiment.errors import HardwareError, InputError
from experiment.station.lightsensor import SIMULATED

POLL_S = 0.001
WHITE_LEVEL = 200      # mean channel value (0-255) above which the patch counts as light
DARK_LEVEL = 60        # and below which it counts as dark again (hysteresis)


def patch_box(corner: str, side_px: int, width: int, height: int) -> tuple[int, int, int, int]:
    """The centre quarter of the patch (x, y, w, h in root-window pixels): edges of the square
    are left out, so antialiasing at its border does not count (pure)."""
    quarter = max(1, side_px // 4)
    x0 = 0 if corner.endswith("left") else width - side_px
    y0 = 0 if corner.startswith("top") else height - side_px
    return x0 + side_px // 2 - quarter // 2, y0 + side_px // 2 - quarter // 2, quarter, quarter


def brightness(data: bytes) -> float:
    """Mean of the colour channels of 32-bit ZPixmap pixels (BGRX), 0-255 (pure)."""
    if not data:
        return 0.0
    total = sum(data) - sum(data[3::4])
    return total / (len(data) // 4 * 3)


def command(args: argparse.Namespace) -> int:
    from Xlib import display as xdisplay   # python-xlib: only this command needs it
    from Xlib.error import DisplayError

    if args.corner == "none":
        raise InputError("simulate-light-sensor: --corner must name a corner")
    try:
        dpy = xdisplay.Display(args.display)
    except (DisplayError, OSError) as exc:
        raise HardwareError(f"simulate-light-sensor: cannot open the X display: {exc}") from exc
    import tty

    master, slave = os.openpty()
    tty.setraw(slave)
    print(os.ttyname(slave), flush=True)
    stop = threading.Event()
    old = {s: signal.signal(s, lambda signum, frame: stop.set()) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        edges = _watch(dpy, args, master, stop)
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
        os.close(master)
        os.close(slave)
        dpy.close()
    sys.stderr.write(f"simulate-light-sensor: stopped after {edges} light edge(s)\n")
    return 0


def _watch(dpy: Any, args: argparse.Namespace, master: int, stop: threading.Event) -> int:
    """Poll the patch until stopped (or the parent is gone); one byte per dark-to-light edge.
    `dpy` is python-xlib's display (an untyped library, hence Any). Returns the edges seen."""
    from Xlib import X

    root = dpy.screen().root
    geometry = root.get_geometry()
    x, y, w, h = patch_box(args.corner, args.size, geometry.width, geometry.height)
    edges, light = 0, False
    while not stop.is_set():
        if args.parent_pid is not None and os.getppid() != args.parent_pid:
            break
        level = brightness(root.get_image(x, y, w, h, X.ZPixmap, 0xFFFFFFFF).data)
        if not light and level >= WHITE_LEVEL:
            light, edges = True, edges + 1
            try:
                os.write(master, SIMULATED)
            except OSError:
                pass     # nobody has the port open: the byte is lost, as on a wire
        elif light and level <= DARK_LEVEL:
            light = False
        time.sleep(POLL_S)
    return edges
