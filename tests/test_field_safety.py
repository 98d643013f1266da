"""Safe to put a participant in: where the pressure comes from, real versus simulated
devices, what the operator confirms, every way a session ends, and dataset roots.

Real-run paths go through the real serial code: the runner in a subprocess (`FaultRun`,
tests/fault_harness.py) against the simulated firmware served on a pseudo-terminal under
a hardware name (`BenchCuff`, tests/hardware_double.py), because no real cuff can be
attached here. The shipped simulator (`SimCuffDevice`) is what a real run must refuse.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from experiment.procedures.calibration.results import read_calibration, resolve_pressure
from experiment.station.console import ClosedSafeStream, OperatorConsole, Status
from experiment.cuff.simdevice import SimCuffDevice
from experiment.errors import InputError
from experiment.log.eventlog import read_log
from experiment.protocol.model import parse_protocol
from experiment.outputs.rundir import RunId, create_source_dir
from tests.cuff_helpers import wait_for
from tests.fault_harness import PARTICIPANT, ROOT, TASK, FaultRun, Outcome, protocol_text, read_records
from tests.hardware_double import BENCH_NAME, BENCH_SERIAL, BenchCuff

DEMO = ROOT / "protocols" / "demo.yaml"


def _cli(*args: str, cwd: Path = ROOT, env: dict[str, str] | None = None,
         timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "experiment", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=env, stdin=subprocess.DEVNULL)


def _one_clear_line(stderr: str) -> None:
    assert stderr.count("\n") == 1 and "Traceback" not in stderr, stderr


def _sent(run: FaultRun) -> bytes:
    return run.host_bytes_after(0.0)


def _runs_made(data: Path) -> list[Path]:
    return sorted(p for p in data.glob("sourcedata/sub-*/sub-*_run-*") if p.is_dir())


def _complete(run: FaultRun) -> Outcome:
    """Let a started real run get its pulses and finish."""
    run.wait_waiting()
    run.start_pulses()
    out = run.finish(timeout_s=40)
    assert out.code == 0, out.said
    return out


# ---------------------------------------------------------------- never silent simulation

@pytest.mark.realtime
def test_a_real_run_refuses_a_cuff_that_identifies_as_the_simulator(tmp_path: Path, xdisplay: str) -> None:
    with FaultRun(tmp_path, device=SimCuffDevice()) as run:
        out = run.start().finish()
        assert out.code == 4, out.said
        assert "identifies itself as a simulator (cuedpain-sim)" in out.stderr
        _one_clear_line(out.stderr)
        sent = _sent(run)
        assert b"HELLO" in sent and b"ARM" not in sent and b"SET" not in sent   # identified, never armed
        assert _runs_made(run.data) == []


def test_the_simulator_has_no_way_to_pass_for_a_device() -> None:
    """Its HELLO names it a simulator whatever it is built with; only a test double subclasses it."""
    with pytest.raises(TypeError):
        SimCuffDevice(name="labcuff")  # type: ignore[call-arg]
    assert SimCuffDevice.name.startswith("cuedpain-sim") and not BenchCuff.name.startswith("cuedpain-sim")


# ---------------------------------------------------------------- the operator confirms

@pytest.mark.realtime
def test_the_operator_sees_the_block_and_a_refusal_starts_nothing(tmp_path: Path, xdisplay: str) -> None:
    with FaultRun(tmp_path, yes=False, terminal=True) as run:
        run.start()
        assert wait_for(lambda: "Type y" in run.said_so_far(), 30), run.said_so_far()
        block = run.said_so_far()
        assert f"sub-{PARTICIPANT}, run 1" in block
        assert "20.0 kPa (150 mmHg), fixed by the protocol (20 kPa)" in block
        assert "ceiling      30.0 kPa (225 mmHg)" in block
        assert f"{BENCH_NAME}, firmware 1.0.0, serial {BENCH_SERIAL}, on {run.server.path}" in block
        assert f"serial:{run.scanner_path}:forp" in block and "REAL" in block
        run.type_line("n")
        out = run.finish()
        assert out.code == 3 and "did not confirm" in out.stderr, out.said
        assert b"SET" not in _sent(run) and run.vented()
        assert _runs_made(run.data) == []


@pytest.mark.realtime
def test_a_confirmed_run_records_what_was_shown_and_who_confirmed(tmp_path: Path, xdisplay: str) -> None:
    with FaultRun(tmp_path, yes=False, terminal=True) as run:
        run.start()
        assert wait_for(lambda: "Type y" in run.said_so_far(), 30), run.said_so_far()
        run.type_line("y")
        _complete(run)
        log = read_log(run.log_path)
        assert log.header["confirmation"]["by"] == "operator"
        briefing = log.header["briefing"]
        assert briefing["cuff"]["serial"] == BENCH_SERIAL and briefing["pressure"]["source"] == "protocol"
        assert briefing["pressure"]["pressure_kpa"] == log.header["pressure"]["pressure_kpa"] == 20.0
        prov = json.loads((run.run_dir / "provenance.json").read_text())
        assert prov["confirmation"] == log.header["confirmation"] and prov["briefing"]["lines"]
        events_json = next(run.data.glob("sub-*/func/*_events.json"))
        assert json.loads(events_json.read_text())["CuedpainRun"]["Confirmation"]["by"] == "operator"
        assert "Shown to the operator before the run" in (run.run_dir / "report.html").read_text()


def test_a_real_run_without_a_terminal_needs_yes(tmp_path: Path) -> None:
    proc = _cli("run", str(DEMO), "--participant", "P1", "--data", str(tmp_path / "data"),
                "--cuff", "line:/dev/ttyUSB9", "--scanner", "keyboard")
    assert proc.returncode == 2 and "confirm in advance with --yes" in proc.stderr
    _one_clear_line(proc.stderr)


# ---------------------------------------------------------------- a latched fault is a fault

def _rig_check(run: FaultRun, data: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return _cli("rig-check", "--cuff", f"line:{run.server.path}", "--pings", "100", "--data", str(data), *extra)


@pytest.mark.realtime
def test_a_latched_cuff_is_reported_refused_and_cleared_only_on_purpose(tmp_path: Path, xdisplay: str) -> None:
    device = BenchCuff()
    with FaultRun(tmp_path, device=device) as run:
        run.inject("ESTOP")                           # latched before anything starts
        assert run.inspect(lambda d: d.state) == "ESTOP"
        check = _rig_check(run, run.data)
        assert check.returncode == 4, check.stdout + check.stderr
        assert "latched in ESTOP (error 31 ESTOP: an emergency stop" in check.stdout
        assert "rig-check --clear-fault" in check.stdout
        out = run.start().finish()
        assert out.code == 4 and "latched in ESTOP (error 31" in out.stderr and "--clear-fault" in out.stderr
        _one_clear_line(out.stderr)
        assert run.inspect(lambda d: d.state) == "ESTOP" and b"CLEAR" not in _sent(run)
        assert _runs_made(run.data) == []
        cleared = _rig_check(run, run.data, "--clear-fault")
        assert cleared.returncode == 0, cleared.stdout + cleared.stderr
        assert run.inspect(lambda d: d.state) == "IDLE"
        logs = sorted((run.data / "sourcedata" / "rig-checks").glob("rig-check-*.jsonl"))
        assert len(logs) == 2
        records = read_log(logs[-1]).records
        clear = [r for r in records if r["kind"] == "clear_fault"]
        assert len(clear) == 1 and clear[0]["state"] == "ESTOP" and clear[0]["error_code"] == 31
        assert clear[0]["state_after"] == "IDLE"
        run.start()
        _complete(run)


# ---------------------------------------------------------------- pressure provenance

def _calibrated(text: str) -> str:
    return text.replace("target: {value: 20, unit: kPa}", "target: calibrated")


def _dry_calibration(root: Path, participant: str = PARTICIPANT) -> Path:
    proc = _cli("calibrate", "--participant", participant, "--dry-run", "--headless", "--data", str(root),
                "--ceiling", "25", "--sim-participant", "p50=18,slope=4,noise=2")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return root / "sourcedata" / f"sub-{participant}" / "calibration" / f"sub-{participant}_calibration-1.json"


@pytest.mark.realtime
def test_a_dry_run_calibration_is_never_used_by_a_real_run(tmp_path: Path, xdisplay: str) -> None:
    dry = _dry_calibration(tmp_path / "data-dryrun")
    assert json.loads(dry.read_text())["dry_run"] is True
    with FaultRun(tmp_path / "real", protocol=_calibrated(protocol_text())) as run:
        found = run.data / "sourcedata" / f"sub-{PARTICIPANT}" / "calibration" / dry.name
        found.parent.mkdir(parents=True)
        shutil.copy(dry, found)                       # it ended up beside the participant's data
        out = run.start().finish()
        assert out.code == 2 and f"{found} was made in a dry run" in out.stderr, out.said
        assert "calibrate for real" in out.stderr
        _one_clear_line(out.stderr)
        assert run.server.opens == 0                  # the cuff was not touched
    with FaultRun(tmp_path / "named", protocol=_calibrated(protocol_text()),
                  extra_args=("--calibration", str(dry))) as run:
        out = run.start().finish()
        assert out.code == 2 and "was made in a dry run" in out.stderr and run.server.opens == 0


@pytest.mark.realtime
def test_a_real_calibration_is_used_and_said_where_it_came_from(tmp_path: Path, xdisplay: str) -> None:
    dry = _dry_calibration(tmp_path / "data-dryrun")
    with FaultRun(tmp_path / "real", protocol=_calibrated(protocol_text())) as run:
        real = run.data / "sourcedata" / f"sub-{PARTICIPANT}" / "calibration" / dry.name
        real.parent.mkdir(parents=True)
        doc = json.loads(dry.read_text())
        doc.update(dry_run=False, device={"name": "othercuff", "serial": "OC-1"})  # stands in for a real calibration
        real.write_text(json.dumps(doc))
        run.start()
        out = _complete(run)
        pressure = read_log(run.log_path).header["pressure"]
        assert pressure["source"] == "calibration" and pressure["calibration_file"] == str(real)
        assert pressure["calibration_dry_run"] is False and pressure["pressure_kpa"] == doc["pressure_kpa"]
        sets = [r["command"] for r in out.of_kind("cuff_cmd") if r["command"].startswith("SET")]
        assert sets and all(float(c.split()[1]) == pytest.approx(doc["pressure_kpa"], abs=0.051) for c in sets)
        assert "the calibration was made with another cuff (othercuff, serial OC-1)" in out.stdout
        assert f"from calibration {real.name}" in out.stdout


def _calibration_file(d: Path, *, participant: str = "P1", n: int = 1, **fields: object) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    doc = {"participant": participant, "session": None, "pressure_kpa": 30.0, "dry_run": False,
           "created": datetime.now().astimezone().isoformat(timespec="seconds"), "method": "staircase",
           "ceiling_kpa": 45.0, "device": {"name": BENCH_NAME, "serial": BENCH_SERIAL}, **fields}
    path = d / f"sub-{participant}_calibration-{n}.json"
    path.write_text(json.dumps(doc))
    return path


CALIBRATED = parse_protocol(_calibrated(protocol_text()).replace("value: 30, unit: kPa", "value: 50, unit: kPa"),
                            base_dir=ROOT / "protocols")


def _resolve(root: Path, **kw: object) -> dict:
    args: dict = {"data_root": root, "participant": "P1", "session": None, "dry_run": False}
    args.update(kw)
    return resolve_pressure(CALIBRATED, **args)


@pytest.mark.parametrize("fields, session, refusal", [
    ({"session": "1"}, "2", r"is from session 1, and this run is session 2"),
    ({"session": "1"}, None, r"is from session 1, and this run is without a session"),
    ({"created": (datetime.now().astimezone() - timedelta(hours=13)).isoformat()}, None, r"is 13\.\d h old"),
    ({"created": None}, None, r"of unknown age"),
    ({"dry_run": None}, None, r"does not say whether it came from a dry run"),
    ({"dry_run": True}, None, r"was made in a dry run"),
])
def test_a_calibration_a_real_run_may_not_take_is_refused(tmp_path: Path, fields: dict, session: str | None,
                                                          refusal: str) -> None:
    path = _calibration_file(tmp_path / "sourcedata" / "sub-P1" / "calibration", **fields)
    with pytest.raises(InputError, match=refusal):
        _resolve(tmp_path, session=session)
    if fields.get("dry_run") is False or "dry_run" not in fields:   # named on purpose, it is used
        assert _resolve(tmp_path, session=session, calibration_file=path)["named"] is True
    else:                                                           # a dry one never is, even named
        with pytest.raises(InputError, match=refusal):
            _resolve(tmp_path, session=session, calibration_file=path)
    assert _resolve(tmp_path, session=session, dry_run=True)["source"] == "calibration"   # dry runs take any


def test_the_age_limit_comes_from_the_rig_and_the_newest_file_wins(tmp_path: Path) -> None:
    d = tmp_path / "sourcedata" / "sub-P1" / "calibration"
    _calibration_file(d, n=1, pressure_kpa=20.0)
    _calibration_file(d, n=2, pressure_kpa=24.0,
                      created=(datetime.now().astimezone() - timedelta(hours=20)).isoformat())
    with pytest.raises(InputError, match=r"over the limit of 12 h"):
        _resolve(tmp_path)
    got = _resolve(tmp_path, max_age_h=24)
    assert got["calibrated_kpa"] == 24.0 and got["calibration_file"].endswith("calibration-2.json")
    other = _calibration_file(tmp_path / "elsewhere", participant="P2")
    with pytest.raises(InputError, match=r"is sub-P2's, not sub-P1's"):
        _resolve(tmp_path, calibration_file=other)
    assert read_calibration(d / "sub-P1_calibration-1.json").pressure_kpa == 20.0


def test_a_fixed_target_is_recorded_as_the_protocols_pressure() -> None:
    fixed = parse_protocol(protocol_text(), base_dir=ROOT / "protocols")
    got = resolve_pressure(fixed, data_root=Path("."), participant="P1")
    assert got == {"pressure_kpa": 20.0, "pressure_mmhg": 150.0, "source": "protocol", "as_written": "20 kPa",
                   "levels": {"target": {"pressure_kpa": 20.0, "pressure_mmhg": 150.0, "as_written": "20 kPa",
                                         "source": "protocol"}}}


# ---------------------------------------------------------------- dry runs keep to their own root

def test_dry_runs_write_to_their_own_root_and_the_two_never_mix(tmp_path: Path) -> None:
    proc = _cli("run", str(DEMO), "--participant", "P1", "--dry-run", "--headless", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert list((tmp_path / "data-dryrun").glob("sub-P1/func/*_events.tsv")) and not (tmp_path / "data").exists()
    marker = json.loads((tmp_path / "data-dryrun" / "sourcedata" / "cuedpain-dataset.json").read_text())
    assert marker["dry_run"] is True
    real = _cli("run", str(DEMO), "--participant", "P1", "--data", "data-dryrun", "--cuff", "line:/dev/ttyUSB9",
                "--scanner", "keyboard", "--yes", cwd=tmp_path)
    assert real.returncode == 2 and "data-dryrun holds dry runs; a real session never writes there" in real.stderr
    _one_clear_line(real.stderr)
    (tmp_path / "data" / "sourcedata").mkdir(parents=True)
    (tmp_path / "data" / "sourcedata" / "cuedpain-dataset.json").write_text('{"dry_run": false}')
    dry = _cli("run", str(DEMO), "--participant", "P1", "--dry-run", "--headless", "--data", "data", cwd=tmp_path)
    assert dry.returncode == 2 and "data holds real sessions; a dry run never writes there" in dry.stderr


# ---------------------------------------------------------------- output nobody reads

def test_validate_and_plan_piped_into_a_closed_reader_exit_0(tmp_path: Path) -> None:
    for args in (["validate", str(DEMO)], ["plan", str(DEMO), "--out", str(tmp_path / "plan")]):
        proc = subprocess.Popen([sys.executable, "-m", "experiment", *args], cwd=ROOT, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)
        assert proc.stdout is not None and proc.stderr is not None
        proc.stdout.close()                       # `| head -1` that has already gone
        err = proc.stderr.read().decode()
        assert proc.wait(60) == 0 and err == "", err
    assert (tmp_path / "plan" / "timeline.tsv").is_file()


def test_a_run_whose_terminal_went_away_finishes_and_keeps_everything(tmp_path: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "experiment", "run", str(DEMO), "--participant", "P1",
                             "--dry-run", "--headless", "--data", str(tmp_path)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()
    proc.stderr.close()
    assert proc.wait(120) == 0
    run_dir = tmp_path / "sourcedata" / "sub-P1" / "sub-P1_task-demo_run-1"
    lost = [r for r in read_records(run_dir / "log.jsonl") if r.get("code") == "console_lost"]
    assert len(lost) == 1 and "the session continues" in lost[0]["message"]
    assert read_records(run_dir / "log.jsonl")[-1]["status"] == "completed"
    assert list(tmp_path.glob("sub-P1/func/*_events.tsv")) and (run_dir / "report.html").is_file()


def test_a_closed_stream_is_dropped_once_and_the_console_goes_on() -> None:
    class Gone:
        def write(self, text: str) -> int:
            raise BrokenPipeError(32, "Broken pipe")

        def flush(self) -> None:
            raise BrokenPipeError(32, "Broken pipe")

        def isatty(self) -> bool:
            return False

    lost: list[BaseException] = []
    stream = ClosedSafeStream(Gone())  # type: ignore[arg-type]
    console = OperatorConsole(stream=stream, on_lost=lost.append)  # type: ignore[arg-type]
    console.say("one")
    console.say("two")
    assert len(lost) == 1 and isinstance(lost[0], BrokenPipeError) and stream.write("x") == 1


# ---------------------------------------------------------------- smaller things on the same pass

def test_the_status_line_names_the_lead_in_and_the_close_and_keeps_discarded_pulses_apart() -> None:
    s = Status(trial=0, n_trials=8, phase="lead_in", pulses=3, pulses_expected=240, pulses_discarded=5)
    assert s.line(False).startswith("before trial 1  lead_in") and "pulses 3/240 (+5 discarded)" in s.line(False)
    s.phase, s.pulses = "tail", 230
    assert s.line(False).startswith("after trial 8  tail") and "trial 0/" not in s.line(False)
    s.trial, s.phase, s.pulses_discarded = 3, "pain", 0
    assert s.line(True).startswith("[DRY RUN] trial 3/8  pain") and "discarded" not in s.line(True)


def test_next_takes_the_following_number_when_a_concurrent_run_took_this_one(tmp_path: Path) -> None:
    rid = RunId("P1", None, "demo", 1)
    first, d1 = create_source_dir(tmp_path, rid, take_next=True)
    second, d2 = create_source_dir(tmp_path, rid, take_next=True)   # run 1 was taken meanwhile
    assert (first.run, second.run) == (1, 2) and d1 != d2 and d2.is_dir()
    with pytest.raises(InputError, match="already exists; a run is never overwritten"):
        create_source_dir(tmp_path, rid)


def test_no_display_says_so_and_how_to_go_on(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    proc = _cli("run", str(DEMO), "--participant", "P1", "--dry-run", "--data", str(tmp_path), env=env)
    assert proc.returncode == 4 and "no display" in proc.stderr and "--dry-run --headless" in proc.stderr
    _one_clear_line(proc.stderr)
    assert not (tmp_path / "sourcedata").exists()


@pytest.mark.realtime
def test_psychopys_sync_generator_drives_a_dry_run(tmp_path: Path, xdisplay: str) -> None:
    protocol = tmp_path / "p.yaml"
    protocol.write_text(protocol_text().replace(f"tr_s: 0.5", "tr_s: 1.0"))
    proc = _cli("run", str(protocol), "--participant", "P1", "--dry-run", "--scanner", "sim:syncgen",
                "--data", str(tmp_path / "d"))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr
    pulses = [r for r in read_records(tmp_path / "d" / "sourcedata" / "sub-P1" / f"sub-P1_task-{TASK}_run-1"
                                      / "log.jsonl") if r.get("kind") == "pulse"]
    assert pulses and {p["source"] for p in pulses} == {"syncgenerator"}


@pytest.mark.realtime
def test_a_whole_dry_run_over_loopback_sockets_as_on_windows(tmp_path: Path, xdisplay: str) -> None:
    """Windows has no pseudo-terminals: with `sim_link: socket` the simulated cuff and scanner are
    served on loopback TCP ports (pyserial's socket://) and the run goes through the same drivers."""
    protocol = tmp_path / "p.yaml"
    protocol.write_text(protocol_text())
    rig = tmp_path / "rig.yaml"
    rig.write_text("sim_link: socket\n")
    proc = _cli("run", str(protocol), "--participant", "P1", "--dry-run", "--rig", str(rig),
                "--data", str(tmp_path / "d"))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr
    log = read_log(tmp_path / "d" / "sourcedata" / "sub-P1" / f"sub-P1_task-{TASK}_run-1" / "log.jsonl")
    assert log.header["cuff"]["port"].startswith("socket://127.0.0.1:")
    assert log.header["scanner"]["spec"] == "sim:socket"
    sets = [r for r in log.of_kind("cuff_cmd") if r["command"].startswith("SET")]
    assert len(sets) == 2 and all(r["ok"] for r in sets)
    assert len(list(log.of_kind("pulse"))) >= 18 and log.records[-1]["status"] == "completed"


# ---------------------------------------------------------------- the end record names the operator's signal

@pytest.mark.parametrize("signum, reason", [(signal.SIGTERM, "sigterm"), (signal.SIGINT, "sigint")])
def test_a_signal_that_lands_as_a_stimulus_is_sent_is_the_runs_end_reason(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, signum: int, reason: str) -> None:
    """A real signal, raised at the moment the run asks for a stimulus (the patch only picks the
    moment): its handler vents, the stimulus is then refused, and the end record must still name
    the operator's signal, not the refusal that followed from it."""
    from experiment.cli import main
    from experiment.cuff.safety import CuffSupervisor

    original = CuffSupervisor.stimulate

    def signalled(self: CuffSupervisor, *args: object, **kwargs: object):  # type: ignore[no-untyped-def]
        os.kill(os.getpid(), signum)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(CuffSupervisor, "stimulate", signalled)
    data = tmp_path / "data"
    assert main(["run", str(ROOT / "protocols" / "demo.yaml"), "--participant", "S1", "--dry-run", "--headless",
                 "--data", str(data)]) == 3
    log = read_log(data / "sourcedata" / "sub-S1" / "sub-S1_task-demo_run-1" / "log.jsonl")
    end = next(iter(log.of_kind("end")))
    assert end["reason"] == reason, end
    assert [r["action"] for r in log.of_kind("operator")] == [reason]
    assert not [c for c in log.of_kind("cuff_cmd") if c["command"].startswith("SET") and c.get("ok")]
