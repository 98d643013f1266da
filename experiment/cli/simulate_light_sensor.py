"""`cuedpain simulate-light-sensor`: a light sensor that watches the screen in the X server (tests, rehearsal)."""

from __future__ import annotations

import argparse
from typing import Any


def add_parser(sub: Any) -> None:
    from experiment.protocol.rig import PATCH_CORNERS

    p = sub.add_parser("simulate-light-sensor",
                       help="watch the light patch's pixels in the X server and send the sensor's byte on a "
                            "pseudo-terminal (prints its path first) until SIGINT/SIGTERM")
    p.add_argument("--corner", choices=[c for c in PATCH_CORNERS if c != "none"], default="top_left",
                   help="where the patch is (the rig file's screen.light_patch)")
    p.add_argument("--size", metavar="PX", type=int, default=40, help="the patch's side (screen.light_patch_px)")
    p.add_argument("--display", default=None, help="X display (default: $DISPLAY)")
    p.add_argument("--parent-pid", metavar="PID", type=int, default=None,
                   help="stop when process PID is no longer this one's parent")


def command(args: argparse.Namespace) -> int:
    from experiment.station import lightsensor_sim

    return lightsensor_sim.command(args)
