"""Fault injection: the real runner, broken devices and operators; the cuff always vents.

Each scenario runs `cuedpain run` in a subprocess with a real window on Xvfb, the
simulated cuff on a pseudo-terminal and a trigger line driven from this process
(tests/fault_harness.py), injects one fault, and checks what the issue asks of every
exit path: the cuff is vented (the simulated device's true pressure and its own record
of why it vented), the data up to the fault is on disk (the log with its `end` record,
and events.tsv derived from it), the operator is told the cause in plain words (no
traceback), and the exit code is the documented one (src: experiment/errors.py).

Protocol-file fuzzing lives in tests/test_protocol.py; byte-stream fuzzing of the cuff
and trigger lines in tests/test_fuzz_streams.py.
"""

from __future__ import annotations

import csv
import json
import re
import signal
import sys
from pathlib import Path

import pytest

from experiment.outputs.rundir import resolve_run
from tests.fault_harness import (PARTICIPANT, ROOT, TASK, WATCHDOG_S, FaultRun, Outcome, RefusingSimDevice,
                                 protocol_text, rebuild)
from tests.fault_full_disk import FILES_VAR, WHEN_VAR

pytestmark = [pytest.mark.realtime, pytest.mark.display, pytest.mark.timeout(90)]

EXIT_ABORTED, EXIT_INPUT = 3, 2
SIGNAL_TO_VENT_LIMIT_S = 0.100      # docs/architecture.md: VENT on the wire within 100 ms of the signal
WATCHDOG_MARGIN_S = 0.15            # server tick, firmware step and scheduling on a busy 2-core machine


@pytest.fixture
def run(tmp_path: Path, xdisplay: str):
    runs: list[FaultRun] = []

    def make(**kwargs) -> FaultRun:
        r = FaultRun(tmp_path / f"run{len(runs)}", **kwargs)
        runs.append(r)
        return r.start()

    yield make
    for r in runs:
        r.close()


def events_tsv(run: FaultRun) -> Path:
    return run.data / "sub-P1" / "func" / "sub-P1_task-faults_run-1_events.tsv"


def started_inflating(run: FaultRun) -> dict:
    """Wait for the scanner, send pulses, wait until the cuff inflates; the acknowledged SET."""
    run.wait_waiting()
    run.start_pulses()
    return run.wait_inflating()


def assert_clear(out: Outcome, *patterns: str) -> None:
    """The operator was told the cause (each pattern, case-insensitive) and saw no traceback."""
    assert "Traceback" not in out.said
    for pattern in patterns:
        assert re.search(pattern, out.said, re.IGNORECASE), f"{pattern!r} not said; stdout/stderr:\n{out.said}"


def assert_aborted_in_order(run: FaultRun, out: Outcome, *, reason: str, set_record: dict | None = None,
                            after_t0: bool = True) -> None:
    """Exit 3; the log ends with its `end` record (aborted, `reason`); outputs derived from it
    (events.tsv when the run got to time zero, provenance in any case)."""
    assert out.code == EXIT_ABORTED, out.said
    end = out.records[-1]
    assert end["kind"] == "end", out.records[-3:]
    assert (end["status"], end["reason"], end["exit_code"]) == ("aborted", reason, EXIT_ABORTED)
    if set_record is not None:   # the records from before the fault are there, in order
        assert set_record in out.records
    seqs = [r["seq"] for r in out.records]
    assert seqs == list(range(len(seqs)))
    assert events_tsv(run).is_file() == after_t0
    assert json.loads((run.run_dir / "provenance.json").read_text())["exit_status"] == "aborted"


def assert_vented(run: FaultRun, *reasons: str) -> None:
    """The device's true pressure is below 1 kPa and it vented for one of `reasons`."""
    assert run.vented(3.0), run.inspect(lambda d: (d.pressure_kpa, d.state, d.vent_log))
    assert set(reasons) & set(run.vent_reasons()), run.vent_reasons()


# ---------------------------------------------------------------- the cuff breaks


def test_cable_pulled_during_inflation_the_cuff_vents_by_its_watchdog(run) -> None:
    r = run()
    set_rec = started_inflating(r)
    t_pull = r.clock.now()
    r.server.pull_cable()
    out = r.finish()
    assert_aborted_in_order(r, out, reason="safety", set_record=set_rec)
    assert_clear(out, r"safety interlock \(connection_lost\): cuff on \S+: connection lost",
                 r"its watchdog \(1000 ms\) should vent it: check the cuff")
    # the host cannot reach the cuff: it vents by its own watchdog, within the WDT of the last PING
    assert_vented(r, "WATCHDOG")
    assert r.inspect(lambda d: d.state) == "FAULT"
    t_vent = r.first_vent_after(t_pull, "WATCHDOG")
    assert t_vent is not None and t_vent - t_pull <= WATCHDOG_S + WATCHDOG_MARGIN_S


def test_a_silent_cuff_is_a_reply_timeout_and_the_cuff_vents(run) -> None:
    r = run()
    set_rec = started_inflating(r)
    t = r.clock.now()
    r.inject("SIM SILENT 1500")    # its serial stack hangs for 1.5 s: input lost, nothing sent
    out = r.finish()
    assert_aborted_in_order(r, out, reason="safety", set_record=set_rec)
    assert_clear(out, r"safety interlock \(no_reply\): .*cuff on \S+: no reply within 500 ms")
    assert [c["ok"] for c in out.of_kind("cuff_cmd")].count(False) >= 1
    # the host's VENT is lost in the hung device; its watchdog (fed by nothing now) vents it
    assert_vented(r, "WATCHDOG", "VENT")
    t_vent = r.first_vent_after(t)
    assert t_vent is not None and t_vent - t <= WATCHDOG_S + WATCHDOG_MARGIN_S


@pytest.mark.parametrize("refused", ["SET", "DEFLATE"])
def test_an_error_reply_ends_the_run_and_the_cuff_is_vented(run, refused: str) -> None:
    # a refused DEFLATE comes while the cuff holds 20 kPa: only the host's VENT empties it
    r = run(device=RefusingSimDevice(refuse={refused: 13}))
    r.wait_waiting()
    r.start_pulses()
    set_rec = r.wait_inflating() if refused == "DEFLATE" else None
    out = r.finish()
    assert_aborted_in_order(r, out, reason="device_fault", set_record=set_rec)
    assert_clear(out, rf"refused '{refused}[^']*': ERR \d+ [A-Z_]+ injected")
    assert_vented(r, "VENT")
    if refused == "SET":
        assert not any(c["ok"] for c in out.of_kind("cuff_cmd") if c["command"].startswith("SET"))


@pytest.mark.parametrize("fault, event, reason", [
    ("SIM OVERPRESSURE", "OVERPRESSURE", "device_overpressure"),
    ("SIM LEAK 100", "COMPLIANCE", "device_compliance"),   # a torn cuff: the hold sags
])
def test_device_safety_events_vent_and_end_the_run(run, fault: str, event: str, reason: str) -> None:
    r = run(protocol=protocol_text(pain_s=3.0))   # a hold long enough for a sag to be called
    set_rec = started_inflating(r)
    r.wait_record(lambda rec: rec.get("kind") == "cuff_event" and rec.get("name") == "TARGET_REACHED")
    r.inject(fault)
    out = r.finish()
    assert_aborted_in_order(r, out, reason="safety", set_record=set_rec)
    assert_clear(out, rf"safety interlock \({reason}\): the cuff reported {event} .*it vented and latched")
    assert [e["name"] for e in out.of_kind("cuff_event")].count(event) == 1
    assert any(s["reason"] == reason and s["action"] == "vent" for s in out.of_kind("safety"))
    assert_vented(r, event)
    assert r.inspect(lambda d: d.state) == "FAULT"


# ---------------------------------------------------------------- the participant stops


def _stop(r: FaultRun, how: str) -> None:
    if how == "button":
        r.inject("SIM BUTTON")
    else:
        r.press_key("4")


@pytest.mark.parametrize("how", ["button", "key"])
def test_participant_stop_with_protocol_end_vents_and_ends_the_run(run, how: str) -> None:
    r = run()
    set_rec = started_inflating(r)
    _stop(r, how)
    assert r.vented(1.0)
    out = r.finish()
    assert_aborted_in_order(r, out, reason=f"participant_stop_{how}", set_record=set_rec)
    assert_clear(out, rf"participant pressed the stop {how}")
    assert_vented(r, "ESTOP" if how == "button" else "VENT")


@pytest.mark.parametrize("how", ["button", "key"])
def test_participant_stop_with_continue_vents_and_never_inflates_again(run, how: str) -> None:
    r = run(protocol=protocol_text(on_participant_stop="continue_without_stimulation"))
    started_inflating(r)
    t_stop = r.clock.now()
    _stop(r, how)
    assert r.vented(1.0), f"still {r.inspect(lambda d: d.pressure_kpa):.1f} kPa 1 s after the stop {how}"
    out = r.finish(timeout_s=30)
    assert out.code == 0, out.said
    end = out.end
    assert (end["status"], end["exit_code"]) == ("completed", 0)
    assert_clear(out, rf"completed without stimulation after participant stop \({how}\)")
    sent = r.host_bytes_after(t_stop)
    assert b"SET" not in sent and b"DEFLATE" not in sent and b"RATE" not in sent
    skipped = [w for w in out.of_kind("warning") if w["code"] == "stimulation_off"]
    assert len(skipped) == 3     # trial 1's deflate, trial 2's inflate and deflate
    assert events_tsv(r).is_file()


# ---------------------------------------------------------------- the operator stops


def test_escape_in_the_participant_window_vents_and_keeps_the_data(run) -> None:
    r = run()
    set_rec = started_inflating(r)
    r.press_key("Escape")
    out = r.finish()
    assert_aborted_in_order(r, out, reason="escape", set_record=set_rec)
    assert_clear(out, r"operator pressed Escape")
    assert [k["role"] for k in out.of_kind("key")] == ["escape"]
    assert_vented(r, "VENT")


@pytest.mark.parametrize("signum, said", [(signal.SIGINT, r"stopped by Ctrl-C from the operator"),
                                          (signal.SIGTERM, r"stopped by SIGTERM"),
                                          (signal.SIGHUP, r"stopped by SIGHUP \(the terminal was closed")])
def test_ctrl_c_sigterm_and_sighup_vent_within_100_ms_and_keep_the_data(run, signum: int, said: str) -> None:
    """The host vents (VENT on the wire, not the device's watchdog) and derives the outputs."""
    r = run()
    set_rec = started_inflating(r)
    t_signal = r.send_signal(signum)
    t_vent = r.vent_on_wire_after(t_signal)
    out = r.finish()
    name = signal.Signals(signum).name.lower()
    assert_aborted_in_order(r, out, reason=name, set_record=set_rec)
    assert_clear(out, said)
    assert [o["action"] for o in out.of_kind("operator")] == [name]
    assert_vented(r, "VENT")
    assert t_vent is not None
    latency_s = t_vent - t_signal
    print(f"\n{name}: signal -> VENT bytes at the device {latency_s * 1000:.2f} ms")
    assert 0 < latency_s < SIGNAL_TO_VENT_LIMIT_S


def test_sigkill_the_device_watchdog_vents_and_rebuild_recovers_the_data(run) -> None:
    r = run()
    set_rec = started_inflating(r)
    t_kill = r.send_signal(signal.SIGKILL)
    out = r.finish()
    assert out.code == -signal.SIGKILL
    assert_vented(r, "WATCHDOG")
    t_vent = r.first_vent_after(t_kill, "WATCHDOG")
    assert t_vent is not None
    print(f"\nSIGKILL -> watchdog vent {(t_vent - t_kill) * 1000:.0f} ms (WDT {WATCHDOG_S * 1000:.0f} ms)")
    assert t_vent - t_kill <= WATCHDOG_S + WATCHDOG_MARGIN_S
    # the log simply stops: everything up to the kill, no end record
    assert set_rec in out.records and out.end is None
    proc = rebuild(r.run_dir)
    assert proc.returncode == 0, proc.stderr
    assert "incomplete" in proc.stdout and "Traceback" not in proc.stderr
    # the outputs end where the run was killed: trial 1's pain phase, cut short
    rows = list(csv.DictReader(events_tsv(r).open(), delimiter="\t"))
    assert [(row["trial"], row["phase"]) for row in rows] == [("1", "pain_anticipation"), ("1", "pain")]
    assert rows[-1]["duration_source"] == "stopped"
    prov = json.loads((r.run_dir / "provenance.json").read_text())
    assert prov["exit_status"] == "incomplete"
    assert prov["stopped"]["last_phase_started"] == {"trial": 1, "phase": "pain"}


# ---------------------------------------------------------------- the scanner misbehaves


def test_scanner_stopping_mid_run_vents_and_ends_the_run(run) -> None:
    r = run()
    set_rec = started_inflating(r)
    t_last = r.stop_pulses()
    out = r.finish()
    assert_aborted_in_order(r, out, reason="scanner_stopped", set_record=set_rec)
    assert_clear(out, r"no pulse for \d+\.\d s", r"on_scanner_stop: end")
    warning = [w for w in out.of_kind("warning") if w["code"] == "scanner_stopped"]
    assert len(warning) == 1
    assert_vented(r, "VENT")
    t_vent = r.first_vent_after(t_last)
    # vented once scanner_stop_trs (3) x TR (0.5 s) passed without a pulse, not before, not much after
    assert t_vent is not None and 1.5 <= t_vent - t_last < 1.5 + 0.5


def test_a_first_trigger_that_never_comes_times_out_with_the_cuff_never_inflated(run) -> None:
    r = run(protocol=protocol_text(first_trigger_timeout_s=2.0))
    r.wait_waiting()
    out = r.finish()
    assert_aborted_in_order(r, out, reason="no_trigger", after_t0=False)
    assert_clear(out, r"first trigger never came within 2 s")
    sent = r.host_bytes_after(0.0)
    assert b"SET" not in sent and b"RATE" not in sent
    assert not out.of_kind("t0")
    assert r.inspect(lambda d: d.pressure_kpa) < 1.0
    # kept as an attempt: the log is there, no BIDS file, and run 1 is still free
    assert r.run_dir.parent.name == "attempts" and (r.run_dir / "provenance.json").is_file()
    assert not list(r.data.glob("sub-*/func/*"))
    assert resolve_run(r.data, participant=PARTICIPANT, session=None, task=TASK, run="next").run == 1


def test_pulses_at_slice_rate_are_warned_about_as_they_happen(run) -> None:
    r = run()
    r.wait_waiting()
    r.start_pulses(slices_per_volume=4)
    warning = r.wait_record(lambda rec: rec.get("kind") == "warning" and rec.get("code") == "per_slice")
    assert re.search(r"pulses arrive every \d+\.\d ms", warning["message"])
    r.send_signal(signal.SIGTERM)
    out = r.finish()
    assert_aborted_in_order(r, out, reason="sigterm")
    assert_clear(out, r"WARNING: pulses arrive every \d+\.\d ms")


# ---------------------------------------------------------------- refused at start


@pytest.mark.parametrize("damage", ["missing", "corrupt"])
def test_a_missing_or_corrupt_stimulus_is_refused_before_the_cuff_is_touched(run, tmp_path: Path,
                                                                            damage: str) -> None:
    stimuli = tmp_path / "stimuli"
    stimuli.mkdir()
    if damage == "corrupt":
        (stimuli / "orange_triangle.png").write_bytes((ROOT / "stimuli" / "orange_triangle.png").read_bytes()[:60])
    r = run(protocol=protocol_text(stimuli_dir=stimuli))
    out = r.finish()
    assert out.code == EXIT_INPUT, out.said
    assert_clear(out, r"pain_cue", r"stimuli/orange_triangle\.png",
                 r"not found|does not exist" if damage == "missing" else r"not a readable image|cannot be read")
    assert r.server.opens == 0 and r.server.rx_log == []
    assert not (r.data / "sourcedata").exists()


def test_a_data_directory_that_cannot_be_written_is_refused_before_the_cuff_is_touched(run, tmp_path) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where the data directory should go\n")
    r = run(data=blocker / "data")
    out = r.finish()
    assert out.code == EXIT_INPUT, out.said
    assert_clear(out, rf"the data directory {re.escape(str(blocker / 'data'))} is not writable")
    assert r.server.opens == 0 and r.server.rx_log == []


# ---------------------------------------------------------------- the disk fills up


def _full_disk_run(run, tmp_path: Path, files: str) -> tuple[FaultRun, Path]:
    trigger = tmp_path / "disk-is-full"
    r = run(python=(sys.executable, str(ROOT / "tests" / "fault_full_disk.py")),
            env={WHEN_VAR: str(trigger), FILES_VAR: files})
    return r, trigger


def test_a_full_disk_during_inflation_vents_stops_and_says_so(run, tmp_path: Path) -> None:
    r, disk_full = _full_disk_run(run, tmp_path, "log.jsonl,pressure.jsonl")
    set_rec = started_inflating(r)
    disk_full.touch()
    out = r.finish()
    assert out.code == EXIT_ABORTED, out.said
    assert_clear(out, r"ABORTED \(log_write_failed\)", r"No space left on device")
    assert_vented(r, "VENT")
    # what reached the disk before it filled is intact (no end record: it could not be written)
    assert set_rec in out.records and out.end is None
    assert [rec["seq"] for rec in out.records] == list(range(len(out.records)))


def test_a_failing_pressure_log_also_stops_the_run(run, tmp_path: Path) -> None:
    r, disk_full = _full_disk_run(run, tmp_path, "pressure.jsonl")
    started_inflating(r)
    disk_full.touch()
    out = r.finish()
    # the event log still works: it records the end and why
    assert_aborted_in_order(r, out, reason="log_write_failed")
    assert_clear(out, r"cannot write \S+pressure\.jsonl: \[Errno 28\] No space left on device")
    assert_vented(r, "VENT")


# ---------------------------------------------------------------- a gated inflator (docs/gate-board.md)
#
# The simulated GATE/1 gate board under a hardware name, on the same pseudo-terminal and
# through the same real-run path as the CUFF/1 board above; its panel is set to the
# protocol's 20 kPa, and the run is told so (--panel-pressure 20). "OFF" is the board's
# record of the host's gate-off byte, "WATCHDOG" of its own watchdog.


def test_gated_escape_turns_the_gate_off_and_keeps_the_data(run) -> None:
    r = run(cuff="gated")
    set_rec = started_inflating(r)
    assert r.inspect(lambda d: d.gate_on)
    r.press_key("Escape")
    out = r.finish()
    assert_aborted_in_order(r, out, reason="escape", set_record=set_rec)
    assert_vented(r, "OFF")
    assert not r.inspect(lambda d: d.gate_on)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_gated_sigterm_and_sighup_turn_the_gate_off_within_100_ms(run, signum: int) -> None:
    r = run(cuff="gated")
    set_rec = started_inflating(r)
    t_signal = r.send_signal(signum)
    t_off = r.vent_on_wire_after(t_signal)
    out = r.finish()
    assert_aborted_in_order(r, out, reason=signal.Signals(signum).name.lower(), set_record=set_rec)
    assert_vented(r, "OFF")
    assert t_off is not None
    print(f"\ngated {signal.Signals(signum).name}: signal -> gate-off byte at the board {(t_off - t_signal) * 1000:.2f} ms")
    assert 0 < t_off - t_signal < SIGNAL_TO_VENT_LIMIT_S


def test_gated_cable_pulled_the_board_watchdog_turns_the_gate_off(run) -> None:
    r = run(cuff="gated")
    set_rec = started_inflating(r)
    t_pull = r.clock.now()
    r.server.pull_cable()
    out = r.finish()
    assert_aborted_in_order(r, out, reason="safety", set_record=set_rec)
    assert_clear(out, r"safety interlock \(connection_lost\)")
    assert_vented(r, "WATCHDOG")
    t_off = r.first_vent_after(t_pull, "WATCHDOG")
    assert t_off is not None and t_off - t_pull <= WATCHDOG_S + WATCHDOG_MARGIN_S
    assert r.inspect(lambda d: d.state) == "FAULT"


def test_gated_sigkill_the_board_watchdog_leaves_the_gate_off(run) -> None:
    r = run(cuff="gated")
    started_inflating(r)
    t_kill = r.send_signal(signal.SIGKILL)
    out = r.finish()
    assert out.code == -signal.SIGKILL
    assert_vented(r, "WATCHDOG")
    t_off = r.first_vent_after(t_kill, "WATCHDOG")
    assert t_off is not None and t_off - t_kill <= WATCHDOG_S + WATCHDOG_MARGIN_S
    assert not r.inspect(lambda d: d.gate_on)
    print(f"\ngated SIGKILL -> board watchdog gate off {(t_off - t_kill) * 1000:.0f} ms")
