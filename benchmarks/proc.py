"""Subprocesses for the benchmarks: a display to run them on, and stamped console output.

`StampedProcess` runs a command and stamps each line of its standard output with the
benchmark's clock as the line arrives, so "from the command to a console line" is
measured from outside the process, the way an operator experiences it.

`virtual_display()` gives the window benchmarks an X display: `$DISPLAY` when there is
one, else an Xvfb started here (no vertical sync: the runner paces its flips in software,
see experiment/station/display.py) and stopped when the benchmark ends. That Xvfb asks for
the run's own priority (nice -10, granted to root): it stands in for the display hardware,
which on a rig scans out without waiting for the CPU, and every flip of the run waits for it;
at the normal priority the run's flips would wait behind the simulated devices, the benchmark
itself and (benchmark 8) the browser. What was granted is in the display's description.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence

from experiment.clock import Clock


class StampedProcess:
    """A child process whose stdout lines are stamped on arrival; stderr goes to a file."""

    def __init__(self, argv: Sequence[str], *, clock: Clock, env: dict[str, str], stderr_path: Path,
                 cwd: Path | None = None) -> None:
        self._clock = clock
        self.argv = list(argv)
        self.lines: list[tuple[float, str]] = []
        self._cond = threading.Condition()
        self._stderr = open(stderr_path, "w", encoding="utf-8")
        self.stderr_path = stderr_path
        self.start_t = clock.now()
        self.proc = subprocess.Popen(self.argv, stdout=subprocess.PIPE, stderr=self._stderr, text=True,
                                     bufsize=1, env=env, cwd=cwd)
        self._reader = threading.Thread(target=self._read, name="bench-stdout", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            t = self._clock.now()
            with self._cond:
                self.lines.append((t, line.rstrip("\n")))
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def wait_for_line(self, marker: str, timeout_s: float) -> float | None:
        """Seconds from the start to the first line containing `marker` (None: exited or timed out)."""
        def found() -> float | None:
            return next((t - self.start_t for t, text in self.lines if marker in text), None)

        with self._cond:
            self._cond.wait_for(lambda: found() is not None or not self._reader.is_alive(), timeout_s)
            return found()

    def wait(self, timeout_s: float) -> int:
        """Exit code; the process is killed (and this raises) if it outlives the timeout."""
        try:
            code = self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            raise RuntimeError(f"{' '.join(self.argv[:4])}... did not finish in {timeout_s:.0f} s; killed") from None
        finally:
            self._reader.join(5)
            self._stderr.close()
        return code

    def terminate(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def stderr_tail(self, n: int = 5) -> str:
        try:
            return "\n".join(self.stderr_path.read_text(encoding="utf-8", errors="replace").splitlines()[-n:])
        except OSError:
            return ""


def _free_display() -> int:
    for n in range(150, 250):
        if not Path(f"/tmp/.X11-unix/X{n}").exists() and not Path(f"/tmp/.X{n}-lock").exists():
            return n
    raise RuntimeError("no free X display number for Xvfb")


DISPLAY_NICE = -10   # the run's own priority (experiment/station/realtime.py)


def _display_priority() -> None:
    """In the Xvfb child before exec: the run's priority if allowed, else unchanged."""
    try:
        os.nice(DISPLAY_NICE - os.nice(0))
    except OSError:
        pass


def _niceness(pid: int) -> int:
    """A process's niceness (field 19 of /proc/PID/stat; 0 where /proc is not there)."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[16])
    except (OSError, IndexError, ValueError):
        return 0


@contextmanager
def virtual_display(clock: Clock, *, size: str = "1024x768x24") -> Iterator[dict[str, str]]:
    """Yield {"display": ":N", "kind": ...}; starts (and then stops) Xvfb when $DISPLAY is unset."""
    if os.environ.get("DISPLAY"):
        yield {"display": os.environ["DISPLAY"], "kind": "existing $DISPLAY"}
        return
    if shutil.which("Xvfb") is None:
        raise RuntimeError("no $DISPLAY and no Xvfb: install xvfb (make sysdeps) or run with a display")
    n = _free_display()
    proc = subprocess.Popen(["Xvfb", f":{n}", "-screen", "0", size, "-nolisten", "tcp"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                            preexec_fn=_display_priority)
    try:
        socket = Path(f"/tmp/.X11-unix/X{n}")
        deadline = clock.now() + 10.0
        while not socket.exists():
            if proc.poll() is not None or clock.now() > deadline:
                raise RuntimeError(f"Xvfb :{n} did not start")
            clock.sleep(0.05)
        nice = _niceness(proc.pid)
        yield {"display": f":{n}", "kind": f"Xvfb {size} (started by the benchmark at nice {nice}; no vertical sync)"}
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
