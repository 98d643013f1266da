"""What a Station needs from its surroundings, checked before anything is opened.

A real session asks the operator to confirm on a terminal; a window needs a display.
Both are checked in pre-flight so that a session that cannot go on says so before a
device is touched.
"""

from __future__ import annotations

import os
import sys

from experiment.errors import HardwareError, InputError


def check_can_confirm(*, dry_run: bool, assume_yes: bool) -> None:
    """A real session asks the operator to confirm on the terminal; without one, --yes is needed."""
    if dry_run or assume_yes:
        return
    try:
        interactive = sys.stdin is not None and sys.stdin.isatty()
    except (OSError, ValueError):
        interactive = False
    if not interactive:
        raise InputError("a real session shows what it will do and asks the operator to confirm, but there is no "
                         "terminal to ask on (stdin is not a terminal); run it from a terminal, or confirm in "
                         "advance with --yes (recorded in the log)")


def check_display() -> None:
    """A window needs a display: say so, and how to proceed, before anything is touched (exit 4)."""
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        raise HardwareError("no display: this command opens the participant's window, but no display is set "
                            "(DISPLAY is empty). Run it on the stimulus computer's desktop session, or rehearse "
                            "without a window: --dry-run --headless")
