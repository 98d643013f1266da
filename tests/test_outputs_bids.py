"""BIDS outputs: the official validator, the raw text of the files, and never overwriting."""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import pytest

from experiment.errors import InputError
from experiment.outputs.atomic import OwnedPaths, create_once, write_bytes
from experiment.outputs.bids import EVENT_COLUMNS, HED_VERSION, PSYCHOPY_RRID
from experiment.outputs.writer import write_run_outputs
from tests.logfactory import add_placeholder_bold, bids_validate, make_run


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def written(tmp_path):
    run = make_run(tmp_path, session="A", trials=("pain", "catch", "pain"), timeout_trials=(3,))
    paths = write_run_outputs(run.run_dir, data_root=tmp_path)
    return run, paths


def test_official_validator_reports_no_errors(tmp_path):
    # a windowed display (PsychoPy) with a missed pulse and a timed-out rating; a headless run
    # (simulated display) in a session with a gap in the pressure samples
    runs = [make_run(tmp_path, run=1, timeout_trials=(3,), missed_volumes=(7,)),
            make_run(tmp_path, participant="02", session="A", run=2, display_simulated=True,
                     pressure_gap=(20.0, 21.0))]
    for run in runs:
        write_run_outputs(run.run_dir, data_root=tmp_path)
        add_placeholder_bold(run)
    errors, warnings = bids_validate(tmp_path)
    assert errors == [], [(e["code"], e.get("location"), e.get("issueMessage", "")[:200]) for e in errors]
    headless = json.loads((tmp_path / "sub-02/ses-A/func/sub-02_ses-A_task-cuedpain_run-2_events.json").read_text())
    assert "simulated display" in headless["StimulusPresentation"]["SoftwareName"]
    assert "SoftwareRRID" not in headless["StimulusPresentation"]   # PsychoPy showed nothing
    codes = {w["code"] for w in warnings}
    # what is left is about metadata only the lab can give (authors, license, scanner fields)
    assert codes <= {"SIDECAR_KEY_RECOMMENDED", "JSON_KEY_RECOMMENDED", "NO_AUTHORS", "TOO_FEW_AUTHORS"}, codes


def test_validator_catches_what_we_avoid(written, tmp_path):
    """The validator run above can fail: a NaN cell is an error it reports."""
    run, paths = written
    add_placeholder_bold(run)
    text = paths.events_tsv.read_text().splitlines()
    cells = text[1].split("\t")
    cells[1] = "NaN"
    paths.events_tsv.write_text("\n".join([text[0], "\t".join(cells), *text[2:]]) + "\n")
    errors, _ = bids_validate(tmp_path)
    assert any(e["code"] == "TSV_VALUE_INCORRECT_TYPE" for e in errors)


def test_events_tsv_text_has_no_nan_or_empty_cells(written):
    run, paths = written
    assert paths.events_tsv.name == "sub-01_ses-A_task-cuedpain_run-1_events.tsv"
    assert paths.events_tsv.parent == run.data_root / "sub-01" / "ses-A" / "func"
    lines = paths.events_tsv.read_text(encoding="utf-8").split("\n")
    assert lines[-1] == "" and "\r" not in "".join(lines)
    header = lines[0].split("\t")
    assert header[:2] == ["onset", "duration"] and header == [c for c, _, _ in EVENT_COLUMNS]
    onsets = []
    for line in lines[1:-1]:
        cells = line.split("\t")
        assert len(cells) == len(header)
        for cell in cells:
            assert cell != "" and cell.strip() == cell and cell not in ("NaN", "nan", "None", "inf", "-inf", "NA")
        assert len(cells[0].split(".")[1]) >= 3       # at least millisecond precision
        onsets.append(float(cells[0]))
    assert onsets == sorted(onsets) and len(onsets) == len([p for p in run.plan if p["bids_trial_type"]])
    assert "n/a" in paths.events_tsv.read_text()      # missing values are written n/a


def test_events_json_describes_every_column_with_hed_and_presentation(written):
    run, paths = written
    side = json.loads(paths.events_json.read_text())
    columns = paths.events_tsv.read_text().split("\n")[0].split("\t")
    for c in columns:
        assert side[c]["Description"]
    assert side["onset"]["Units"] == "s" and side["target_pressure_kpa"]["Units"] == "kPa"
    levels = {line.split("\t")[2] for line in paths.events_tsv.read_text().split("\n")[1:-1]}
    assert levels <= set(side["trial_type"]["Levels"]) and levels <= set(side["trial_type"]["HED"])
    assert "(Pain, Tactile-pressure)" in side["trial_type"]["HED"]["pain"]
    sp = side["StimulusPresentation"]
    assert sp["SoftwareName"] == "PsychoPy" and sp["SoftwareRRID"] == PSYCHOPY_RRID
    assert sp["SoftwareVersion"] == run.header["packages"]["psychopy"]
    assert sp["ScreenRefreshRate"] == 60.0 and sp["ScreenResolution"] == [1920, 1080]
    assert side["RunStatus"] == "completed" and side["CuedpainRun"]["DryRun"] is True
    desc = json.loads((run.data_root / "dataset_description.json").read_text())
    assert desc["HEDVersion"] == HED_VERSION and desc["DatasetType"] == "raw"
    task = json.loads((run.data_root / "task-cuedpain_bold.json").read_text())
    assert {k: task[k] for k in ("TaskName", "RepetitionTime", "NumberOfVolumesDiscardedByScanner",
                                 "NumberOfVolumesDiscardedByUser")} == \
        {"TaskName": "cuedpain", "RepetitionTime": run.tr_s, "NumberOfVolumesDiscardedByScanner": 0,
         "NumberOfVolumesDiscardedByUser": 4}
    assert "synthetic" in task["TaskDescription"]


def test_stim_file_is_headerless_gzip_without_name_or_time(written):
    run, paths = written
    raw = paths.stim_tsv.read_bytes()
    assert raw[:2] == b"\x1f\x8b"
    assert raw[3] & 0x08 == 0                # FLG.FNAME not set: no file name stored
    assert raw[4:8] == b"\x00\x00\x00\x00"  # MTIME = 0
    lines = gzip.decompress(raw).decode().split("\n")[:-1]
    side = json.loads(paths.stim_json.read_text())
    assert side["Columns"] == ["pressure_setpoint", "pressure_measured"]
    assert all(side[c]["Units"] == "kPa" for c in side["Columns"])
    first = [float(x) for x in lines[0].split("\t")]   # a header line would not parse
    assert len(first) == 2
    rate, start = side["SamplingFrequency"], side["StartTime"]
    first_sample = run.samples[0]["t"] - run.t0
    assert start >= first_sample and start - first_sample < 1 / rate
    assert len(lines) == int((run.samples[-1]["t"] - run.t0 - start) * rate) + 1


def test_dataset_files_are_created_once_and_never_replaced(tmp_path):
    tmp_path.joinpath("dataset_description.json").write_text('{"Name": "lab data", "BIDSVersion": "1.9.0", '
                                                             '"HEDVersion": "8.3.0", "Authors": ["A"]}\n')
    tmp_path.joinpath("README").write_text("ours\n")
    before = {n: tmp_path.joinpath(n).read_bytes() for n in ("dataset_description.json", "README")}
    run = make_run(tmp_path)
    paths = write_run_outputs(run.run_dir, data_root=tmp_path)
    assert {n: tmp_path.joinpath(n).read_bytes() for n in before} == before
    assert not tmp_path.joinpath("README.md").exists()
    assert paths.task_sidecar.exists()


def test_writing_another_run_leaves_run_1_byte_identical(tmp_path):
    run1 = make_run(tmp_path, run=1)
    write_run_outputs(run1.run_dir, data_root=tmp_path)
    before = snapshot(tmp_path)
    run2 = make_run(tmp_path, run=2, tr_s=1.5, seed=9)   # another TR: the shared task sidecar disagrees
    paths2 = write_run_outputs(run2.run_dir, data_root=tmp_path)
    after = snapshot(tmp_path)
    assert {k: after[k] for k in before} == before
    assert any(k.startswith("sub-01/func/sub-01_task-cuedpain_run-2_") for k in after)
    prov = json.loads(paths2.provenance.read_text())
    assert any("task-cuedpain_bold.json disagrees" in n and "RepetitionTime" in n for n in prov["notes"])
    assert json.loads(paths2.bold_sidecar.read_text())["RepetitionTime"] == 1.5


def test_rebuild_replaces_only_its_own_files_atomically(written, tmp_path):
    run, paths = written
    raw = {n: (run.run_dir / n).read_bytes() for n in ("log.jsonl", "pressure.jsonl", "protocol.yaml", "rig.yaml")}
    before = snapshot(tmp_path)
    inodes = {p: os.stat(p).st_ino for p in (paths.events_tsv, paths.events_json, paths.trials_csv)}
    write_run_outputs(run.run_dir, data_root=tmp_path)
    assert snapshot(tmp_path) == before                  # derivation is deterministic
    assert all(os.stat(p).st_ino != ino for p, ino in inodes.items())   # replaced by rename, not rewritten
    assert not [p for p in tmp_path.rglob("*.tmp")]
    assert {n: (run.run_dir / n).read_bytes() for n in raw} == raw


def test_refuses_to_replace_files_of_another_run(written, tmp_path):
    run, paths = written
    side = json.loads(paths.events_json.read_text())
    side["CuedpainRun"]["RunUID"] = "someone-else"
    paths.events_json.write_text(json.dumps(side))
    before = snapshot(tmp_path)
    with pytest.raises(InputError, match="was not written from this run's log.*never overwritten"):
        write_run_outputs(run.run_dir, data_root=tmp_path)
    assert snapshot(tmp_path) == before


def test_refuses_a_run_directory_that_was_moved(written, tmp_path):
    run, _ = written
    moved = tmp_path / "sourcedata" / "sub-01" / "ses-A" / "sub-01_ses-A_task-cuedpain_run-7"
    run.run_dir.rename(moved)
    with pytest.raises(InputError, match="holds the log of sub-01_ses-A_task-cuedpain_run-1"):
        write_run_outputs(moved, data_root=tmp_path)


def test_atomic_writes_only_to_owned_paths(tmp_path):
    own = tmp_path / "run"
    owned = OwnedPaths.of([tmp_path / "func" / "mine.tsv"], dirs=(own,), protected=(own / "log.jsonl",))
    write_bytes(own / "sub" / "x.txt", b"1", owned=owned)
    write_bytes(tmp_path / "func" / "mine.tsv", b"2", owned=owned)
    for path in (tmp_path / "func" / "other.tsv", own / "log.jsonl", tmp_path / "run2" / "x"):
        with pytest.raises(InputError, match="does not belong to this run"):
            write_bytes(path, b"3", owned=owned)
        assert not path.exists()
    assert create_once(tmp_path / "shared.json", b"a") is True
    assert create_once(tmp_path / "shared.json", b"b") is False
    assert (tmp_path / "shared.json").read_bytes() == b"a"


def test_a_headless_dry_run_of_the_demo_protocol_validates(tmp_path, capsys):
    """End to end with the real runner: its log, our outputs, the official validator."""
    from types import SimpleNamespace

    from experiment.cli import main
    from experiment.outputs.rundir import RunId

    root = Path(__file__).resolve().parents[1]
    assert main(["run", str(root / "protocols" / "demo.yaml"), "--participant", "P01", "--dry-run", "--headless",
                 "--data", str(tmp_path)]) == 0
    run_dir = next((tmp_path / "sourcedata" / "sub-P01").iterdir())
    header = json.loads((run_dir / "log.jsonl").read_text().split("\n")[0])
    rid = RunId("P01", None, header["task"], 1)
    onsets = [float(line.split("\t")[3]) for line in (run_dir / "pulses.tsv").read_text().split("\n")[1:-1]]
    add_placeholder_bold(SimpleNamespace(rid=rid, data_root=tmp_path, tr_s=header["tr_s"], run_dir=run_dir),
                         sum(o >= 0 for o in onsets))
    errors, _ = bids_validate(tmp_path)
    assert errors == [], [(e["code"], e.get("location")) for e in errors]
    events = (rid.func_dir(tmp_path) / f"{rid.stem}_events.tsv").read_text()
    assert "pain_anticipation" in events and "NaN" not in events


_MODES = """
import json, os, stat, sys
from pathlib import Path
os.umask(int(sys.argv[2], 8))          # a fresh process: the umask is process-global state
from experiment.log.eventlog import LogFile
from experiment.outputs.writer import write_run_outputs
from tests.logfactory import make_run
root = Path(sys.argv[1])
paths = write_run_outputs(make_run(root).run_dir, data_root=root)
LogFile(root / "log.jsonl", {"stream": "events"}, threaded=False).close()
mode = lambda p: stat.S_IMODE(os.stat(p).st_mode)
print(json.dumps({"events_tsv": mode(paths.events_tsv), "log": mode(root / "log.jsonl"),
                  "files": sorted({mode(p) for p in root.rglob("*") if p.is_file()}),
                  "dirs": sorted({mode(p) for p in root.rglob("*") if p.is_dir()})}))
"""


@pytest.mark.skipif(os.name != "posix", reason="file modes and umask are POSIX")
@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_derived_files_follow_the_umask_like_the_run_logs(tmp_path, umask, mode):
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", _MODES, str(tmp_path), oct(umask)], capture_output=True, text=True,
                         cwd=root, timeout=120)
    assert out.returncode == 0, out.stderr
    modes = json.loads(out.stdout)
    assert modes["events_tsv"] == mode and modes["log"] == mode
    assert modes["files"] == [mode]                    # every derived file (shared ones too), logs and inputs
    assert modes["dirs"] == [0o777 & ~umask]
