"""Serial button boxes (docs/buttons.md): the spec grammar, the rig fields, the decoders, one reader
splitting a shared trigger/button line on a real pseudo-terminal, the pre-flight's refusals, the
`simulate-buttons` tool, and real-time dry runs whose ratings come from presses on the trigger's line."""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from experiment.buttons.decoders import (ByteMapDecoder, Fed, XidDecoder, forp_byte, make_decoder, xid_packet)
from experiment.clock import RealClock
from experiment.errors import InputError
from experiment.protocol.rig import parse_rig
from experiment.protocol.specs import (PRESETS, ButtonPresetName, SerialButtonSpec, SimButtonSpec,
                                       parse_buttons_spec)
from experiment.scanner.serial_source import LineSplitter, SerialSource, TriggerDecoder
from tests.cuff_helpers import wait_for
from tests.protocol_samples import edited, load_dict

ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------- the grammar and the rig


@pytest.mark.parametrize("text, spec", [
    ("serial:/dev/ttyUSB0", SerialButtonSpec("/dev/ttyUSB0")),
    ("serial:COM3:cedrus", SerialButtonSpec("COM3", ButtonPresetName.CEDRUS, 115200)),
    ("serial:/dev/ttyUSB0:forp@115200", SerialButtonSpec("/dev/ttyUSB0", ButtonPresetName.FORP, 115200)),
    ("serial:socket://127.0.0.1:7000", SerialButtonSpec("socket://127.0.0.1:7000")),
    ("serial:/dev/ttyS0:custom@9600", SerialButtonSpec("/dev/ttyS0", ButtonPresetName.CUSTOM, 9600)),
    ("sim", SimButtonSpec()),
])
def test_button_specs_parse_and_their_text_parses_back(text: str, spec: object) -> None:
    parsed = parse_buttons_spec(text, what="--buttons")
    assert parsed == spec
    assert parse_buttons_spec(str(parsed), what="--buttons") == parsed


@pytest.mark.parametrize("text, message", [
    ("serial:/dev/ttyUSB0:frop", "--buttons: unknown button preset 'frop' in 'serial:/dev/ttyUSB0:frop'; allowed: "
                                 "forp | cedrus | custom"),
    ("keyboard", "--buttons: unknown button box 'keyboard'; allowed: serial:PORT[:PRESET]"),
    ("serial:", "--buttons: 'serial' needs a port, got 'serial:'"),
    ("serial:/dev/x:forp@1234", "--buttons: baud rate 1234 is not a standard rate"),
])
def test_bad_button_specs_are_one_clear_input_error(text: str, message: str) -> None:
    with pytest.raises(InputError) as err:
        parse_buttons_spec(text, what="--buttons")
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


def test_the_rig_names_the_box_its_byte_map_and_lsl() -> None:
    rig = parse_rig("buttons: serial:/dev/ttyUSB0:custom\nbutton_map: {'0x61': '1', 'b': '2'}\nlsl: true\n")
    assert rig.buttons == SerialButtonSpec("/dev/ttyUSB0", ButtonPresetName.CUSTOM)
    assert rig.button_map == {"0x61": "1", "b": "2"} and rig.lsl


@pytest.mark.parametrize("text, message", [
    ("buttons: serial:/dev/x:custom\n", "rig.yaml:1:10: buttons: a custom button box needs button_map"),
    ("buttons: serial:/dev/x\nbutton_map: {'a': '1'}\n", "rig.yaml:2:1: button_map: button_map is read only by a "
                                                        "custom button box"),
    ("buttons: serial:/dev/x:custom\nbutton_map: {'a': '1', '0x61': '2'}\n", "a byte is mapped twice"),
    ("buttons: serial:/dev/x:custom\nbutton_map: {'abc': '1'}\n", "the byte 'abc' is not allowed"),
    ("buttons: serial:/dev/x:kedrus\n", "rig.yaml:1:10: buttons: unknown button preset 'kedrus'"),
])
def test_bad_rig_button_fields_name_the_line(text: str, message: str) -> None:
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_rig(text, file="rig.yaml")


# ---------------------------------------------------------------- the decoders (pure)


def _feed(decoder: object, data: bytes) -> Fed:
    fed = Fed()
    for b in data:
        decoder.feed_byte(b, fed)   # type: ignore[attr-defined]
    return fed


def test_forp_bytes_are_its_buttons_and_other_bytes_are_unmatched() -> None:
    fed = _feed(make_decoder(ButtonPresetName.FORP), b"1234x6789\x00")
    assert [d.button for d in fed.presses] == list("12346789")
    assert bytes(fed.unmatched) == b"x\x00"


def test_a_custom_map_names_its_bytes() -> None:
    fed = _feed(ByteMapDecoder({0x61: "1", ord("b"): "stop_button"}), b"abc")
    assert [d.button for d in fed.presses] == ["1", "stop_button"] and bytes(fed.unmatched) == b"c"


def test_xid_packets_give_presses_with_the_pads_timer_and_releases_are_not_presses() -> None:
    data = (xid_packet(3, timer_ms=1234) + xid_packet(3, pressed=False, timer_ms=1300)
            + xid_packet(5, port=2, timer_ms=7) + b"zz" + xid_packet(8, timer_ms=0x35353535))     # key 8: key bits 0
    fed = _feed(XidDecoder(), data)
    assert [(d.button, d.device_ms) for d in fed.presses] == [("3", 1234), ("p2_5", 7), ("8", 0x35353535)]
    assert fed.releases == 1 and bytes(fed.unmatched) == b"zz"
    assert xid_packet(3, timer_ms=1234) == b"k\x70\xd2\x04\x00\x00"   # key 3 << 5 | press bit 0x10


def test_one_line_splits_triggers_from_buttons_and_an_xid_timer_byte_is_never_a_trigger() -> None:
    splitter = LineSplitter(TriggerDecoder(PRESETS["forp"]), make_decoder(ButtonPresetName.FORP))
    pulses, fed = splitter.feed(b"5152x5")
    assert pulses == 3 and [d.button for d in fed.presses] == ["1", "2"] and bytes(fed.unmatched) == b"x"
    xid = LineSplitter(TriggerDecoder(PRESETS["forp"]), make_decoder(ButtonPresetName.CEDRUS))
    pulses, fed = xid.feed(xid_packet(1, timer_ms=0x35353535) + b"5")
    assert pulses == 1 and [d.device_ms for d in fed.presses] == [0x35353535]


def test_forp_byte_refuses_a_button_the_box_has_not() -> None:
    assert forp_byte("9") == b"9"
    with pytest.raises(ValueError, match="no button '5'"):
        forp_byte("5")


# ---------------------------------------------------------------- one reader on a real pty


def test_one_reader_owns_a_shared_line_and_stamps_every_byte(pty_pair) -> None:
    master, path, _ = pty_pair
    clock = RealClock()
    source = SerialSource(path, clock=clock, preset=PRESETS["forp"], buttons=make_decoder(ButtonPresetName.FORP))
    source.open()
    try:
        t_before = clock.now()
        os.write(master, b"5")
        time.sleep(0.05)
        os.write(master, b"1")
        time.sleep(0.05)
        os.write(master, b"\xff5")
        wait_for(lambda: len(source._buffer) == 2, timeout_s=2.0)
        pulses = source.poll()
        wait_for(lambda: len(source._presses) == 1, timeout_s=2.0)
        presses = source.poll_buttons()
        unmatched = source.take_unmatched()
    finally:
        source.close()
    assert [p.index for p in pulses] == [0, 1]
    assert [p.button for p in presses] == ["1"] and presses[0].raw == b"1"
    assert t_before < pulses[0].t < presses[0].t < pulses[1].t     # each stamped on arrival, in order
    assert unmatched is not None and unmatched.n == 1 and unmatched.head == b"\xff"
    assert source.take_unmatched() is None
    assert source.describe()["buttons"] == "forp"


def test_a_button_box_alone_has_no_pulses_and_a_lost_line_is_a_fault(pty_pair) -> None:
    master, path, slave = pty_pair
    source = SerialSource(path, clock=RealClock(), preset=None, buttons=make_decoder(ButtonPresetName.CEDRUS),
                          baud=115200, name="buttons")
    source.open()
    try:
        os.write(master, xid_packet(2, timer_ms=10)[:3])
        time.sleep(0.05)
        os.write(master, xid_packet(2, timer_ms=10)[3:] + b"5")   # a packet split across reads; '5' is no trigger
        wait_for(lambda: len(source._presses) == 1, timeout_s=2.0)
        assert [p.button for p in source.poll_buttons()] == ["2"] and source.poll() == []
        wait_for(lambda: source._unmatched is not None, timeout_s=2.0)
        assert source.take_unmatched().head == b"5"
    finally:
        source.close()


# ---------------------------------------------------------------- pre-flight


def _short_protocol(tmp_path: Path) -> Path:
    """One trial of 5.5 s at TR 0.5 s with a rating phase of 2 s."""
    d = edited(load_dict(), **{
        "trials.counts": {"pain": 1}, "scan.tr_s": 0.5, "scan.n_volumes": 12, "scan.lead_in_s": 0.5,
        "scan.tail_s": 0.5, "rating.timeout_s": 2,
        "trial_types.pain.phases": [
            {"name": "pain_anticipation", "cue": "pain_cue", "duration": 0.5, "bids_trial_type": "pain_anticipation"},
            {"name": "pain", "cue": "fixation", "cuff": "inflate", "duration": 1, "bids_trial_type": "pain"},
            {"name": "deflation", "cue": "relief_cue", "cuff": "deflate", "duration": 0.5},
            {"name": "rating", "kind": "rating", "cue": "fixation", "duration": 2, "bids_trial_type": "rating"},
            {"name": "rest", "cue": "fixation", "duration": 0.5}]})
    d.pop("checks", None)
    (tmp_path / "protocols").mkdir(exist_ok=True)
    if not (tmp_path / "stimuli").exists():
        (tmp_path / "stimuli").symlink_to(ROOT / "stimuli")     # the protocol's ../stimuli
    path = tmp_path / "protocols" / "short.yaml"
    path.write_text(yaml.safe_dump(d, sort_keys=False))
    return path


@pytest.mark.parametrize("extra, message", [
    (["--buttons", "sim"], "--buttons sim is only allowed with --dry-run"),
    (["--dry-run", "--headless", "--buttons", "sim"], "a headless run has no button box"),
    (["--dry-run", "--scanner", "sim:keyboard", "--buttons", "sim"], "it needs --scanner sim"),
    (["--dry-run", "--scanner", "serial:/dev/ttyX:forp", "--buttons", "serial:/dev/ttyX:cedrus"],
     "one line has one baud rate"),
    (["--dry-run", "--buttons", "serial:/dev/ttyX:custom"], "a custom button box needs the rig file's button_map"),
])
def test_the_preflight_refuses_what_cannot_work_before_any_device(tmp_path: Path, extra: list[str],
                                                                  message: str) -> None:
    from experiment.cli import main

    args = ["run", str(_short_protocol(tmp_path)), "--participant", "B01", "--data", str(tmp_path / "d"),
            "--cuff", "line:/dev/ttyX", "--scanner", "serial:/dev/ttyY"] if "--dry-run" not in extra else \
           ["run", str(_short_protocol(tmp_path)), "--participant", "B01", "--data", str(tmp_path / "d")]
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(args + extra)
    assert code == 2 and message in err.getvalue(), err.getvalue()


# ---------------------------------------------------------------- simulate-buttons


def test_simulate_buttons_sends_triggers_and_presses_on_one_pty() -> None:
    import serial

    proc = subprocess.Popen([sys.executable, "-m", "experiment", "simulate-buttons", "--tr", "0.2",
                             "--press", "2@0.3"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        path = proc.stdout.readline().strip()
        line = serial.Serial(path, 19200, timeout=0.1)
        proc.stdin.write("1 3\n")
        proc.stdin.flush()
        data, t_end = b"", time.monotonic() + 1.5
        while time.monotonic() < t_end:
            data += line.read(100)
        line.close()
    finally:
        proc.terminate()
        assert proc.wait(5) == 0
    assert path.startswith("/dev/pts/")
    assert sorted(data.replace(b"5", b"")) == sorted(b"123") and data.count(b"5") >= 2   # every 0.2 s from 1 s after the start


# ---------------------------------------------------------------- real-time dry runs


def _log(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]


def _rating_from_buttons(records: list[dict], start: float = 50, step: float = 10) -> float:
    value = start
    for r in records:
        if r["button"] == "3":
            return value
        value = min(100, max(0, value + (step if r["button"] == "2" else -step if r["button"] == "1" else 0)))
    raise AssertionError("no confirm press")


def _events_rating(data: Path, participant: str) -> str:
    tsv = next((data / f"sub-{participant}" / "func").glob("*_events.tsv")).read_text().splitlines()
    head = tsv[0].split("\t")
    row = next(dict(zip(head, r.split("\t"))) for r in tsv[1:] if "\trating\t" in r)
    return row["rating"]


@pytest.mark.realtime
@pytest.mark.display
def test_a_dry_run_takes_its_ratings_from_simulated_presses_on_the_trigger_line(xdisplay, tmp_path) -> None:
    from experiment.cli import main

    data = tmp_path / "data"
    code = main(["run", str(_short_protocol(tmp_path)), "--participant", "B01", "--dry-run", "--buttons", "sim",
                 "--data", str(data)])
    assert code == 0
    log = _log(next((data / "sourcedata" / "sub-B01").glob("*run-1")))
    assert log[0]["buttons"] == {"spec": "sim", "simulated": True, "shared_with_trigger": True, "byte_map": None}
    assert ["buttons", "sim (SIMULATED), on the trigger's line (one reader)"] in log[0]["briefing"]["lines"]
    presses = [r for r in log if r["kind"] == "button"]
    assert presses and all(r["raw"] == r["button"].encode().hex() for r in presses)   # fORP bytes, read back
    keys = [(r["key"], r["t"]) for r in log if r["kind"] == "key"]
    assert keys == [(r["button"], r["t"]) for r in presses]     # every key of this run came from the line
    assert len([r for r in log if r["kind"] == "pulse"]) >= 12
    assert float(_events_rating(data, "B01")) == _rating_from_buttons(presses)
    from tests.test_log_records import record_problems
    assert record_problems(log[0], log[1:]) == []      # the button records are the typed ones


@pytest.mark.realtime
@pytest.mark.display
def test_a_dry_run_on_a_simulated_forp_shares_its_pty_between_triggers_and_buttons(xdisplay, tmp_path) -> None:
    """`cuedpain simulate-buttons` on one pty; the run reads it as --scanner and --buttons; the presses are
    typed into the simulator once the rating scale is on screen (seen in the run's log)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    sim = subprocess.Popen([sys.executable, "-m", "experiment", "simulate-buttons", "--tr", "0.5"],
                           stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                           cwd=ROOT, env=env)
    data = tmp_path / "data"
    try:
        pty = sim.stdout.readline().strip()
        run = subprocess.Popen([sys.executable, "-m", "experiment", "run", str(_short_protocol(tmp_path)),
                                "--participant", "B02", "--dry-run", "--scanner", f"serial:{pty}",
                                "--buttons", f"serial:{pty}", "--data", str(data)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env)
        log_path = data / "sourcedata" / "sub-B02" / "sub-B02_task-demo_run-1" / "log.jsonl"

        def rating_on_screen() -> bool:
            if run.poll() is not None:
                return True
            return log_path.exists() and any('"kind":"onset"' in line and '"phase":"rating"' in line
                                             for line in log_path.read_text().replace(" ", "").splitlines())

        wait_for(rating_on_screen, timeout_s=30.0)
        sim.stdin.write("2 2 2 1 3\n")       # up 3 steps, down 1, confirm: 50 + 20
        sim.stdin.flush()
        _, err = run.communicate(timeout=60)
        assert run.returncode == 0, err
    finally:
        sim.terminate()
        sim.wait(5)
    log = _log(log_path.parent)
    assert log[0]["buttons"]["shared_with_trigger"] is True and log[0]["scanner"]["spec"] == f"serial:{pty}:forp"
    assert [r["button"] for r in log if r["kind"] == "button"] == ["2", "2", "2", "1", "3"]
    assert _events_rating(data, "B02") == "70.00"
    from tests.test_log_records import record_problems
    assert record_problems(log[0], log[1:]) == []


@pytest.mark.parametrize("link", ["pty", "socket"])
def test_simulated_presses_share_the_simulated_scanners_line_on_either_link(link: str) -> None:
    from experiment.scanner.sim_scanner import ScannerPlan, pty_sim_source, socket_sim_source

    clock = RealClock()
    make = pty_sim_source if link == "pty" else socket_sim_source
    source = make(ScannerPlan(tr_s=0.05, n_volumes=20, start_delay_s=0.0), clock=clock,
                  buttons=make_decoder(ButtonPresetName.FORP))
    source.open()
    try:
        t = clock.now()
        source.press([("1", t + 0.05), ("3", t + 0.1)])
        presses: list = []
        wait_for(lambda: bool(presses.extend(source.poll_buttons())) or len(presses) >= 2, timeout_s=3.0)
        pulses = source.poll()
    finally:
        source.close()
    assert [p.button for p in presses] == ["1", "3"] and len(pulses) >= 2
    assert [p.button for p in presses] == [d.decode() for _, d in source.presser.sent]
    # stamped on arrival: after the write, within a few ms of it here
    assert all(0 <= p.t - sent_t < 0.05 for p, (sent_t, _) in zip(presses, source.presser.sent))


def test_the_stations_confirmation_block_names_the_box_and_the_streams(xdisplay, tmp_path) -> None:
    from experiment.procedures.run.preflight import RunRequest, preflight
    from experiment.web.blocks import _input_lines

    plan = preflight(RunRequest(protocol=_short_protocol(tmp_path), participant="B03", dry_run=True, buttons="sim",
                                lsl=True, data=tmp_path / "d"))
    assert _input_lines(plan) == [["buttons", "sim (SIMULATED), on the trigger's line (one reader)"],
                                  ["streams", "Lab Streaming Layer: markers and pressure (docs/lsl.md)"]]
    plain = preflight(RunRequest(protocol=_short_protocol(tmp_path), participant="B03", dry_run=True,
                                 data=tmp_path / "d"))
    assert _input_lines(plain) == []
