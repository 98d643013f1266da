"""Fault-injection harness: the real `cuedpain run` in a subprocess, its devices in the test.

The runner is started as the operator would start it (`python -m experiment run ...`),
with a real PsychoPy window on the test session's Xvfb display. Its two devices live in
the test process, so a test can break them and afterwards ask them what really happened:

* the cuff is the simulated CUFF/1 firmware under a hardware name (`BenchCuff`,
  tests/hardware_double.py) served on a pseudo-terminal by a `SimServer` (`--cuff
  line:<server.path>`, not `--dry-run`): the runner takes the real-run path, which
  refuses a device that names itself a simulator. The operator's confirmation is given
  with `--yes`. `server.rx_log` keeps every byte the runner sent, with its arrival
  time on the test's clock; `vent_log` keeps every vent the firmware made and why;
* the trigger box is a pseudo-terminal read by the runner's serial source
  (`--scanner serial:<slave>:forp`); a `PtyScanner` thread writes '5' at each planned
  pulse into the master, and can be stopped mid-run or never started.

The same harness runs a gated inflator (`cuff="gated"`): the simulated GATE/1 gate board
under a hardware name (`BenchGate`, tests/hardware_double.py) on the pseudo-terminal,
driven as `--cuff gated:<server.path>:board --panel-pressure 20`; its gate-on and gate-off
bytes stand where CUFF/1's SET and VENT stand.

Faults are injected through the firmware's own fault-injection commands (`SIM BUTTON`,
`SIM SILENT`, `SIM OVERPRESSURE`, `SIM LEAK`, docs/cuff-protocol.md) handed to the
device's `receive` between two server steps: the device then behaves exactly as its
firmware model says (the host sees one stray `OK SIM ...` line, which its driver
ignores). Waits poll the run's log file or the device with a timeout, never a fixed sleep.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tty
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from experiment.clock import RealClock
from experiment.cuff.line_codec import format_err
from experiment.cuff.simserver import SimServer
from experiment.scanner.sim_scanner import PtyScanner, ScannerPlan
from tests.cuff_helpers import wait_for
from tests.hardware_double import BenchCuff, BenchGate

ROOT = Path(__file__).resolve().parents[1]
PARTICIPANT = "P1"
TASK = "faults"
WINDOW_TITLE = "cuedpain participant"
TR_S = 0.5
DISCARD_PULSES = 1
WATCHDOG_S = 1.0        # SafetyLimits.watchdog_ms default, armed by the supervisor at start
VENTED_KPA = 1.0        # CUFF/1's "released" level


def protocol_text(*, stimuli_dir: Path = ROOT / "stimuli", pain_s: float = 2.0, rate_kpa_s: float = 20.0,
                  on_participant_stop: str = "end", on_scanner_stop: str = "end",
                  first_trigger_timeout_s: float = 3.0, scanner_stop_trs: float = 3.0) -> str:
    """A short protocol (two trials, TR 0.5 s, about 9 s) for fault scenarios.

    The pain cue is an image, so a missing or corrupt stimulus file can be staged in
    `stimuli_dir`. Inflation: 20 kPa at `rate_kpa_s` (1 s at the default), held to the
    end of the `pain_s` phase and the relief cue, then deflated.
    """
    trial_s = 0.5 + pain_s + 0.5 + 0.5 + 0.5
    n_volumes = int((0.5 + 2 * trial_s + 0.5) / TR_S + 0.999)
    return f"""\
cuedpain_version: dev
metadata: {{name: fault injection, task: {TASK}}}
stimuli_dir: {stimuli_dir}
cues:
  fixation: {{kind: shape, shape: cross, color: white, size: 0.05, units: height}}
  pain_cue: {{kind: image, image: orange_triangle.png, size: 0.2, units: height}}
  relief_cue: {{kind: shape, shape: circle, color: "#47a4fa", size: 0.16, units: height}}
trial_types:
  pain:
    phases:
      - {{name: pain_anticipation, cue: pain_cue, duration: 0.5, bids_trial_type: pain_anticipation}}
      - {{name: pain, cue: fixation, cuff: inflate, duration: {pain_s}, bids_trial_type: pain}}
      - {{name: relief_anticipation, cue: relief_cue, cuff: hold, duration: 0.5, bids_trial_type: relief_anticipation}}
      - {{name: deflation, cue: fixation, cuff: deflate, duration: 0.5}}
      - {{name: rest, cue: fixation, duration: 0.5}}
trials:
  counts: {{pain: 2}}
  seed: 1
stimulation:
  target: {{value: 20, unit: kPa}}
  rate_kpa_s: {rate_kpa_s}
safety:
  max_pressure: {{value: 30, unit: kPa}}
  max_inflation_per_stimulus_s: 10
  max_cumulative_inflation_per_run_s: 20
  min_deflated_between_s: 1
  on_participant_stop: {on_participant_stop}
scan:
  tr_s: {TR_S}
  n_volumes: {n_volumes}
  discard_pulses: {DISCARD_PULSES}
  lead_in_s: 0.5
  tail_s: 0.5
  first_trigger_timeout_s: {first_trigger_timeout_s}
  on_scanner_stop: {on_scanner_stop}
  scanner_stop_trs: {scanner_stop_trs}
keys: {{trigger: '5', stop: '4', escape: escape, left: '1', right: '2', confirm: '3'}}
"""


class RefusingSimDevice(BenchCuff):
    """The simulated firmware, except that it answers chosen commands with an error.

    `refuse` maps a command name ("SET") to the CUFF/1 error code to answer with.
    """

    def __init__(self, *, refuse: dict[str, int] | None = None, **options: Any) -> None:
        super().__init__(**options)
        self.refuse = dict(refuse or {})

    def _execute(self, cmd: Any, now: float) -> Any:  # the firmware's one command dispatcher
        code = self.refuse.get(cmd.name)
        if code is not None:
            return format_err(code, "injected"), None
        return super()._execute(cmd, now)


def read_records(path: Path) -> list[dict[str, Any]]:
    """The complete records of a log being written (a torn or unfinished last line is skipped)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (FileNotFoundError, NotADirectoryError):
        return []   # not started (or refused before the run directory was made)
    records = []
    for line in text.split("\n")[:-1]:   # the part after the last newline is not complete
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return records


@dataclass
class Outcome:
    """How a run ended, as the operator and the disk see it."""

    code: int
    stdout: str
    stderr: str
    records: list[dict[str, Any]]

    def of_kind(self, *kinds: str) -> list[dict[str, Any]]:
        return [r for r in self.records if r.get("kind") in kinds]

    @property
    def end(self) -> dict[str, Any] | None:
        ends = self.of_kind("end")
        return ends[-1] if ends else None

    @property
    def said(self) -> str:
        """Everything the operator was told (stdout and stderr)."""
        return self.stdout + self.stderr


class FaultRun:
    """One `cuedpain run` in a subprocess against a simulated cuff and trigger line.

    Use as a context manager; `start()` launches the runner, `finish()` waits for it.
    """

    def __init__(self, workdir: Path, *, protocol: str | None = None, device: Any = None,
                 python: Sequence[str] = (sys.executable, "-m", "experiment"),
                 data: Path | None = None, env: dict[str, str] | None = None,
                 extra_args: Sequence[str] = (), yes: bool = True, terminal: bool = False,
                 cuff: str = "line") -> None:
        """`extra_args` go after the usual ones; `yes=False` leaves the confirmation to the operator,
        who answers through `type_line` when `terminal` gives the runner a pseudo-terminal as stdin;
        `cuff` is "line" (CUFF/1) or "gated" (the gate board, its panel at the protocol's 20 kPa)."""
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.protocol_path = self.workdir / "protocol.yaml"
        self.protocol_path.write_text(protocol if protocol is not None else protocol_text())
        self.data = data if data is not None else self.workdir / "data"
        self.clock = RealClock()
        self.cuff = cuff
        default = BenchGate(panel_kpa=20.0) if cuff == "gated" else BenchCuff()
        self.server = SimServer(device if device is not None else default, clock=self.clock)
        self.set_command = "GATE ON" if cuff == "gated" else "SET"     # the stimulus' cuff_cmd
        self.vent_bytes = b"0" if cuff == "gated" else b"VENT\n"       # a vent as it arrives at the device
        self._master, self._slave = os.openpty()
        tty.setraw(self._slave)   # the trigger line carries bytes, not terminal input
        self.scanner_path = os.ttyname(self._slave)
        self._python = list(python)
        self._env = env or {}
        self._extra = list(extra_args)
        self._yes = yes
        self._tty: tuple[int, int] | None = os.openpty() if terminal else None
        self.proc: subprocess.Popen[bytes] | None = None
        self.pulses: PtyScanner | None = None
        self._out = self.workdir / "stdout.txt"
        self._err = self.workdir / "stderr.txt"

    # ------------------------------------------------------------ the runner

    @property
    def run_dir(self) -> Path:
        """The run's directory; once a run that never reached t0 has ended, its attempt directory."""
        stem = f"sub-{PARTICIPANT}_task-{TASK}_run-1"
        d = self.data / "sourcedata" / f"sub-{PARTICIPANT}" / stem
        attempts = sorted(d.parent.glob(f"attempts/{stem}_attempt-*"))
        return attempts[-1] if attempts and not d.exists() else d

    @property
    def log_path(self) -> Path:
        return self.run_dir / "log.jsonl"

    def argv(self) -> list[str]:
        return [*self._python, "run", str(self.protocol_path), "--participant", PARTICIPANT,
                "--cuff", f"gated:{self.server.path}:board" if self.cuff == "gated" else f"line:{self.server.path}",
                *(["--panel-pressure", "20"] if self.cuff == "gated" else []), "--scanner", f"serial:{self.scanner_path}:forp",
                "--data", str(self.data), *(["--yes"] if self._yes else []), *self._extra]

    def start(self) -> "FaultRun":
        env = {**os.environ, **self._env}   # DISPLAY comes from the xdisplay fixture
        stdin = self._tty[1] if self._tty is not None else subprocess.DEVNULL
        with open(self._out, "wb") as out, open(self._err, "wb") as err:
            self.proc = subprocess.Popen(self.argv(), cwd=ROOT, env=env, stdin=stdin, stdout=out, stderr=err)
        return self

    def type_line(self, text: str) -> None:
        """The operator types `text` and Enter at the runner's terminal."""
        assert self._tty is not None, "start the run with terminal=True"
        os.write(self._tty[0], text.encode() + b"\n")

    def said_so_far(self) -> str:
        return self._out.read_text() if self._out.exists() else ""

    def records(self) -> list[dict[str, Any]]:
        return read_records(self.log_path)

    def wait_record(self, predicate: Callable[[dict[str, Any]], bool], *, timeout_s: float = 20.0,
                    what: str = "a record") -> dict[str, Any]:
        """The first log record that satisfies `predicate`; fails with the runner's output otherwise."""
        found: list[dict[str, Any]] = []

        def seen() -> bool:
            found[:] = [r for r in self.records() if predicate(r)][:1]
            return bool(found) or (self.proc is not None and self.proc.poll() is not None)

        wait_for(seen, timeout_s, poll_s=0.01)
        if not found:
            found[:] = [r for r in self.records() if predicate(r)][:1]
        assert found, f"no {what} in {self.log_path} within {timeout_s} s; {self._diagnosis()}"
        return found[0]

    def wait_kind(self, kind: str, *, timeout_s: float = 20.0, **fields: Any) -> dict[str, Any]:
        return self.wait_record(lambda r: r.get("kind") == kind and all(r.get(k) == v for k, v in fields.items()),
                                timeout_s=timeout_s, what=f"{kind} record {fields or ''}")

    def wait_waiting(self) -> dict[str, Any]:
        """Until the runner waits for the scanner (devices open, log started)."""
        return self.wait_kind("waiting", timeout_s=30.0)

    def wait_inflating(self, *, above_kpa: float = 2.0) -> dict[str, Any]:
        """Until the first SET was acknowledged and the cuff's true pressure is rising past `above_kpa`."""
        rec = self.wait_record(lambda r: r.get("kind") == "cuff_cmd" and str(r.get("command")).startswith(self.set_command)
                               and r.get("ok") is True, what="an acknowledged SET")
        assert self.wait_device(lambda d: d.pressure_kpa > above_kpa, 3.0), \
            f"the cuff did not inflate past {above_kpa} kPa; {self._diagnosis()}"
        return rec

    def finish(self, *, timeout_s: float = 20.0) -> Outcome:
        """Wait for the runner to exit; its exit code, output and log."""
        assert self.proc is not None
        try:
            code = self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
            raise AssertionError(f"the runner did not exit within {timeout_s} s; {self._diagnosis()}") from None
        return Outcome(code, self._out.read_text(), self._err.read_text(), self.records())

    def send_signal(self, signum: int) -> float:
        """Signal the runner; returns the time it was sent, on the device's clock."""
        assert self.proc is not None
        t = self.clock.now()
        os.kill(self.proc.pid, signum)
        return t

    def press_key(self, key: str) -> None:
        """A real X key event (XTEST) into this runner's participant window."""
        assert self.proc is not None
        if shutil.which("xdotool") is None:
            raise AssertionError("xdotool is not installed (apt-get install xdotool)")
        ids: list[str] = []

        def window_found() -> bool:
            out = subprocess.run(["xdotool", "search", "--name", f"{WINDOW_TITLE} .pid {self.proc.pid}."],
                                 capture_output=True, text=True)
            ids[:] = out.stdout.split()
            return len(ids) == 1

        assert wait_for(window_found, 10.0, poll_s=0.05), f"windows named {WINDOW_TITLE!r} of the runner: {ids}"
        subprocess.run(["xdotool", "windowfocus", "--sync", ids[0], "key", "--delay", "0", key],
                       check=True, timeout=10)

    def _diagnosis(self) -> str:
        code = None if self.proc is None else self.proc.poll()
        err = self._err.read_text() if self._err.exists() else ""
        return f"runner exit code {code}; stderr: {err[-2000:]!r}"

    # ------------------------------------------------------------ the trigger line

    def start_pulses(self, *, slices_per_volume: int = 1, n_volumes: int = 200) -> PtyScanner:
        """A scanner sending one pulse per TR (or per slice) into the trigger line from now on."""
        plan = ScannerPlan(tr_s=TR_S, n_volumes=n_volumes, discard_pulses=DISCARD_PULSES,
                           slices_per_volume=slices_per_volume, start_delay_s=0.05)
        self.pulses = PtyScanner(plan, self._master, clock=self.clock)
        self.pulses.start()
        return self.pulses

    def stop_pulses(self) -> float:
        """The scanner stops; returns when its last pulse was sent."""
        assert self.pulses is not None
        self.pulses.stop()
        return self.pulses.sent[-1] if self.pulses.sent else self.clock.now()

    # ------------------------------------------------------------ the cuff

    def inspect(self, fn: Callable[[Any], Any]) -> Any:
        return self.server.inspect(fn)

    def wait_device(self, predicate: Callable[[Any], bool], timeout_s: float) -> bool:
        return wait_for(lambda: bool(self.server.inspect(predicate)), timeout_s)

    def inject(self, command: str) -> None:
        """A fault-injection command (`SIM BUTTON`, `SIM LEAK 80`, ...) into the firmware, now."""
        now = self.clock.now()
        self.server.inspect(lambda d: d.receive(command.encode("ascii") + b"\n", now))

    def vent_reasons(self) -> list[str]:
        return [reason for _, reason in self.server.inspect(lambda d: list(d.vent_log))]

    def first_vent_after(self, t: float, reason: str | None = None) -> float | None:
        """Device time of its first vent after `t` (optionally for one reason)."""
        log = self.server.inspect(lambda d: list(d.vent_log))
        times = [tv for tv, why in log if tv >= t and (reason is None or why == reason)]
        return min(times) if times else None

    def host_bytes_after(self, t: float) -> bytes:
        return b"".join(data for tr, data in list(self.server.rx_log) if tr >= t)

    def vent_on_wire_after(self, t: float, *, timeout_s: float = 2.0) -> float | None:
        """When the first VENT command (gate off) from the runner arrived after `t` (device clock)."""
        found: list[float] = []

        def arrived() -> bool:
            found[:] = [tr for tr, data in list(self.server.rx_log) if tr >= t and self.vent_bytes in data][:1]
            return bool(found)

        wait_for(arrived, timeout_s)
        return found[0] if found else None

    def vented(self, timeout_s: float = 3.0) -> bool:
        """The cuff's true pressure falls below 1 kPa within `timeout_s`."""
        return self.wait_device(lambda d: d.pressure_kpa < VENTED_KPA, timeout_s)

    # ------------------------------------------------------------ cleanup

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
        if self.pulses is not None:
            self.pulses.stop()
        self.server.close()
        for fd in (self._master, self._slave, *(self._tty or ())):
            try:
                os.close(fd)
            except OSError:
                pass

    def __enter__(self) -> "FaultRun":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def rebuild(run_dir: Path) -> subprocess.CompletedProcess[str]:
    """`cuedpain rebuild RUN_DIR` as the operator would run it."""
    return subprocess.run([sys.executable, "-m", "experiment", "rebuild", str(run_dir)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
