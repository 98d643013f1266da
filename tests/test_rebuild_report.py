"""`cuedpain rebuild` after a kill or an abort, and the one-page QC report."""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest

from experiment.cli import main
from experiment.outputs.rundir import RunId
from tests.logfactory import add_placeholder_bold, bids_validate, make_run

ROOT = Path(__file__).resolve().parents[1]


def stored_volumes(run) -> int:
    return sum(1 for t in run.pulse_times if t >= run.t0 - 1e-6)


def test_rebuild_of_a_torn_log_says_incomplete_and_where_it_stopped(tmp_path, capsys):
    run = make_run(tmp_path, kill_at_s=80.0)   # during trial 3's pain phase; the last line is torn
    assert main(["rebuild", str(run.run_dir)]) == 0
    out = capsys.readouterr().out
    assert "incomplete" in out and "QC report:" in out
    func = run.rid.func_dir(tmp_path)
    side = json.loads((func / f"{run.rid.stem}_events.json").read_text())
    assert side["RunStatus"] == "incomplete"
    assert "last phase started: trial 3 'pain'" in side["RunStatusDescription"]
    assert "last completed trial: 2 of 3" in side["RunStatusDescription"]
    prov = json.loads((run.run_dir / "provenance.json").read_text())
    assert prov["exit_status"] == "incomplete" and prov["log_truncated"] is True and prov["end_wall"] is None
    assert prov["stopped"]["last_phase_started"] == {"trial": 3, "phase": "pain"}
    assert prov["stopped"]["last_trial_completed"] == 2
    onsets = [float(line.split("\t")[0]) for line in (func / f"{run.rid.stem}_events.tsv").read_text()
              .split("\n")[1:-1]]
    assert onsets and max(onsets) <= 80.0
    assert len(onsets) == len([p for p in run.plan if p["bids_trial_type"] and p["i"] in run.onset_t])
    add_placeholder_bold(run, stored_volumes(run))
    errors, _ = bids_validate(tmp_path)
    assert errors == [], [(e["code"], e.get("location")) for e in errors]
    assert "incomplete" in (run.run_dir / "report.html").read_text()


_WRITER = textwrap.dedent("""
    import json, sys, time
    from pathlib import Path
    sys.path.insert(0, sys.argv[3])
    from experiment.log.eventlog import LogFile, read_log
    from tests.logfactory import make_run

    src = make_run(Path(sys.argv[1]))
    target = src.rid.source_dir(Path(sys.argv[2]))
    target.mkdir(parents=True)
    for name in ("protocol.yaml", "rig.yaml"):
        (target / name).write_bytes((src.run_dir / name).read_bytes())
    strip = lambda r: {k: v for k, v in r.items() if k not in ("seq", "format")}
    logs = {}
    for name in ("log.jsonl", "pressure.jsonl"):
        contents = read_log(src.run_dir / name)
        header = {k: v for k, v in strip(contents.header).items() if k != "kind"}
        logs[name] = (LogFile(target / name, header, sync=True), contents.records)
    timeline = [(r.get("t", 0.0), "pressure.jsonl", r) for r in logs["pressure.jsonl"][1]]
    timeline += [(r.get("t") or r.get("t_write") or r.get("t_onset") or 0.0, "log.jsonl", r)
                 for r in logs["log.jsonl"][1]]
    timeline.sort(key=lambda x: x[0])
    kill_i = next(p["i"] for p in src.plan if p["trial"] == 3 and p["phase"] == "pain")
    ready = False
    for _, name, rec in timeline:
        logs[name][0].write(strip(rec))
        if not ready and rec["kind"] == "onset" and rec["i"] == kill_i:
            deadline = time.monotonic() + 10
            def on_disk():   # that onset record (not the plan record with the same "i") is written
                return any('"kind":"onset"' in ln and f'"i":{kill_i},' in ln
                           for ln in (target / "log.jsonl").read_text().splitlines())
            while not on_disk() and time.monotonic() < deadline:
                time.sleep(0.005)   # wait until the writer thread has it on disk
            print("ready", flush=True)
            ready = True
        if ready:
            time.sleep(0.002)  # keep writing, like a run in progress, until killed
    time.sleep(60)
""")


def test_rebuild_after_a_real_sigkill_gives_valid_outputs_up_to_the_kill(tmp_path):
    data = tmp_path / "data"
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(tmp_path / "scratch"), str(data), str(ROOT)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line: list[str] = []
    reader = threading.Thread(target=lambda: line.append(proc.stdout.readline()), daemon=True)
    reader.start()
    reader.join(60)
    try:
        assert line == ["ready\n"], proc.stderr.read() if proc.poll() is not None else "no ready line"
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    assert proc.returncode == -signal.SIGKILL
    run_dir = next((data / "sourcedata").glob("sub-01/sub-01_task-cuedpain_run-1"))
    assert main(["rebuild", str(run_dir)]) == 0
    events = (data / "sub-01" / "func" / "sub-01_task-cuedpain_run-1_events.tsv").read_text().split("\n")[1:-1]
    rows = [line.split("\t") for line in events]
    assert ["3", "pain"] in [[r[3], r[2]] for r in rows]   # the phase on screen when killed is there
    side = json.loads((data / "sub-01" / "func" / "sub-01_task-cuedpain_run-1_events.json").read_text())
    assert side["RunStatus"] == "incomplete"
    errors, _ = bids_validate(data)   # no BOLD yet: only the task-level sidecar has nothing to describe
    assert [(e["code"], e["location"]) for e in errors] == [("SIDECAR_WITHOUT_DATAFILE", "/task-cuedpain_bold.json")]
    pulses = (run_dir / "pulses.tsv").read_text().split("\n")[1:-1]
    add_placeholder_bold(SimpleNamespace(run_dir=run_dir, data_root=data, rid=RunId("01", None, "cuedpain", 1),
                                         tr_s=2.0, n_volumes=sum(float(p.split("\t")[3]) >= 0 for p in pulses)))
    errors, _ = bids_validate(data)
    assert errors == [], [(e["code"], e.get("location")) for e in errors]


@pytest.mark.parametrize("setup, message", [
    (lambda d: None, "has no event log"),
    (lambda d: (d / "log.jsonl").write_text("hello\n"), "not a valid cuedpain event log"),
])
def test_rebuild_without_a_valid_log_is_an_input_error(tmp_path, capsys, setup, message):
    run_dir = tmp_path / "sourcedata" / "sub-01" / "sub-01_task-x_run-1"
    run_dir.mkdir(parents=True)
    setup(run_dir)
    assert main(["rebuild", str(run_dir)]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert list(tmp_path.rglob("*.tsv")) == []


def test_rebuild_outside_a_dataset_is_an_input_error(tmp_path, capsys):
    run = make_run(tmp_path / "data")
    moved = tmp_path / "elsewhere"
    run.run_dir.rename(moved)
    assert main(["rebuild", str(moved)]) == 2
    assert "not inside a 'sourcedata' directory" in capsys.readouterr().err


def test_report_is_one_self_contained_page(tmp_path, capsys):
    run = make_run(tmp_path, abort_at_s=70.0, missed_volumes=(5,))
    assert main(["report", str(run.run_dir)]) == 0
    path = Path(capsys.readouterr().out.strip().split(": ", 1)[1])
    assert path == run.run_dir / "report.html"
    page = path.read_text(encoding="utf-8")
    assert not re.search(r"(src|href)\s*=\s*['\"](?!data:)", page)
    assert "<script" not in page and "<link" not in page
    images = re.findall(r"src='data:image/png;base64,([^']+)'", page)
    assert len(images) == 5
    assert all(base64.b64decode(img)[:8] == b"\x89PNG\r\n\x1a\n" for img in images)
    assert "aborted (escape: the operator pressed Escape)" in page and "DRY RUN" in page
    assert "operator escape" in page and "pulse_jitter" in page       # safety event and warning listed
    assert "1 missed" in page


def test_report_of_a_real_run_has_no_dry_run_banner(tmp_path):
    from experiment.outputs.report import write_report

    run = make_run(tmp_path, dry_run=False)
    page = write_report(run.run_dir).read_text()
    assert "DRY RUN" not in page and "Run completed" in page


def test_rebuild_of_a_run_killed_before_t0_writes_no_events(tmp_path, capsys):
    run = make_run(tmp_path, kill_at_s=-3.0)     # waiting for the scanner when killed
    assert main(["rebuild", str(run.run_dir)]) == 0
    assert "never reached t0" in capsys.readouterr().out
    assert not run.rid.func_dir(tmp_path).exists()
    prov = json.loads((run.run_dir / "provenance.json").read_text())
    assert prov["exit_status"] == "incomplete" and prov["stopped"]["last_phase_started"] is None
    assert prov["timing"]["volumes_received"] == 0
    trials = (run.run_dir / "trials.csv").read_text().split("\n")[1:-1]
    assert [row.split(",")[2] for row in trials] == ["not started"] * 3
