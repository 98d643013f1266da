"""Shared test fixtures: a real Xvfb display and real pseudo-terminals."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _free_display() -> int:
    """A display number no other X server uses. Parallel test workers (pytest-xdist sets
    PYTEST_XDIST_WORKER=gw0, gw1, ...) search disjoint ranges, so two never take the same one."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    first = 90 + 40 * int(worker[2:] or 0) if worker.startswith("gw") else 90
    for n in range(first, first + 40):
        if not Path(f"/tmp/.X11-unix/X{n}").exists() and not Path(f"/tmp/.X{n}-lock").exists():
            return n
    raise RuntimeError("no free X display number")


@pytest.fixture(scope="session")
def xdisplay():
    """A real X display for PsychoPy windows: Xvfb started for the test session.

    Uses $DISPLAY when one is set; fails (not skips) when Xvfb is missing, because
    `make test` installs it.
    """
    if os.environ.get("DISPLAY"):
        yield os.environ["DISPLAY"]
        return
    if shutil.which("Xvfb") is None:
        pytest.fail("Xvfb is not installed; run `make test` (it installs xvfb as root)")
    n = _free_display()
    # Xvfb must outlive this process: PsychoPy/pyglet keep their X connection until the
    # interpreter exits, and a server that goes away first makes Xlib exit(1) ("XIO
    # fatal IO error"). A small watcher stops Xvfb once the test process has gone.
    # -r: no key auto-repeat. The tests type discrete key events; on a busy machine a key's release
    # can reach the server after the repeat delay and be read as a second press (a pulse too many)
    proc = subprocess.Popen(["Xvfb", f":{n}", "-screen", "0", "1024x768x24", "-nolisten", "tcp", "-r"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    subprocess.Popen(["sh", "-c", f"while kill -0 {os.getpid()} 2>/dev/null; do sleep 1; done; kill {proc.pid}"],
                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 10
    while not Path(f"/tmp/.X11-unix/X{n}").exists():
        if time.monotonic() > deadline or proc.poll() is not None:
            proc.kill()
            pytest.fail("Xvfb did not start")
        time.sleep(0.05)
    os.environ["DISPLAY"] = f":{n}"
    yield f":{n}"


@pytest.fixture
def pty_pair():
    """A real pseudo-terminal: (master_fd, slave_path). The device side uses the master."""
    master, slave = os.openpty()
    path = os.ttyname(slave)
    try:
        yield master, path, slave
    finally:
        for fd in (master, slave):
            try:
                os.close(fd)
            except OSError:
                pass
