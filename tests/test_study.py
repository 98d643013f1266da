"""The study view: participants and groups, discarded runs, and `cuedpain study` on a real dataset.

The dataset (tests/study_dataset.py) is made once for the module from headless dry runs
through the real command line: two groups, an aborted run (SIGTERM), a killed run (SIGKILL),
a discarded run and an operator override. Every figure the study tables give is checked
against the runs' own files (log, events.tsv, pulses.tsv, trials.csv, provenance.json,
calibration results), never against numbers copied from the study's output. The page is
opened in Debian's chromium through Playwright, with the network blocked.
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from experiment.cli import main
from experiment.errors import InputError
from experiment.outputs.annotations import (ScanEntry, TsvTable, annotation_record, discard_state, parse_annotations,
                                          scans_table)
from experiment.study.model import Limits, Stimulus, Timing
from experiment.outputs.participants import (Declaration, FieldSpec, ParticipantsTable, apply_declaration,
                                           set_fields)
from experiment.study.plans import Done, PlannedStep, VisitPlan, missing_steps
from experiment.study.qc import run_flags
from tests.logfactory import bids_validate
from tests.study_dataset import (DISCARD_REASON, GROUPS, OVERRIDE_KPA, OVERRIDE_REASON, ROOT, TASK, Built, build)

CHROMIUM = next((Path(p) for p in ("/usr/bin/chromium", shutil.which("chromium") or "", shutil.which("chromium-browser") or "")
                 if p and Path(p).is_file()), Path("/usr/bin/chromium"))
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


# ---------------------------------------------------------------- the dataset, once

@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    work = tmp_path_factory.mktemp("study")
    return build(work / "data", work)


@pytest.fixture(scope="module")
def out(built: Built) -> Path:
    assert main(["study", str(built.root)]) == 0
    return built.root / "derivatives" / "cuedpain-study"


def tsv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh, delimiter="\t"))


def num(text: str) -> float | None:
    return None if text == "n/a" else float(text)


def run_row(out: Path, participant: str, run: int) -> dict[str, str]:
    rows = [r for r in tsv(out / "runs.tsv") if r["participant"] == participant and r["run"] == str(run)]
    assert len(rows) == 1, rows
    return rows[0]


def log_records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def run_dirs(built: Built) -> list[Path]:
    return sorted(p.parent for p in (built.root / "sourcedata").glob("sub-*/**/sub-*_run-*/log.jsonl"))


def events_of(built: Built, stem: str) -> Path:
    return next(built.root.glob(f"sub-*/**/func/{stem}_events.tsv"))


def source_of(built: Built, stem: str) -> Path:
    return next((built.root / "sourcedata").glob(f"sub-*/**/{stem}"))


# ---------------------------------------------------------------- the study command

def test_the_page_and_every_table_are_written_with_n_a_for_missing(out: Path) -> None:
    assert (out / "study.html").is_file()
    for name in ("overview", "runs", "calibrations", "calibrations_by_group", "run_pressures",
                 "ratings_by_participant", "ratings_by_group", "stimuli", "missing_from_plans", "problems"):
        text = (out / f"{name}.tsv").read_text()
        assert "\t\t" not in text and "\t\n" not in text and "nan" not in text.lower().split("\t")
        header = text.splitlines()[0].split("\t")
        described = json.loads((out / f"{name}.json").read_text())
        assert list(described) == header and all(d["Description"] for d in described.values())


def test_every_run_is_listed_with_the_status_its_log_says(built: Built, out: Path) -> None:
    dirs = run_dirs(built)
    assert len(dirs) == 8 and len(tsv(out / "runs.tsv")) == 8
    for d in dirs:
        records = log_records(d / "log.jsonl")
        header, end = records[0], next((r for r in records if r["kind"] == "end"), None)
        row = run_row(out, header["participant"], header["run"])
        expected = "incomplete" if end is None else end["status"]
        assert row["status"].split(" ")[-1].strip("()") == expected
        assert row["group"] == GROUPS.get(header["participant"], "no group")
        assert row["run_dir"] == str(d.relative_to(built.root))
        assert row["session"] == (header["session"] or "n/a")
    assert run_row(out, "P05", 1)["status"] == "incomplete"
    assert "bids_outputs" in run_row(out, "P05", 1)["flags"]
    # the overview counts each participant's runs by the status their logs and annotations give
    counts: dict[tuple[str, str], dict[str, int]] = {}
    for d in dirs:
        records = log_records(d / "log.jsonl")
        end = next((r for r in records if r["kind"] == "end"), None)
        notes = (d / "annotations.jsonl").read_text().splitlines() if (d / "annotations.jsonl").exists() else []
        kind = "discarded" if notes and json.loads(notes[-1])["kind"] == "discarded" else \
            ("incomplete" if end is None else end["status"])
        key = (records[0]["participant"], records[0]["session"] or "n/a")
        counts.setdefault(key, {})[kind] = counts.setdefault(key, {}).get(kind, 0) + 1
    for row in tsv(out / "overview.tsv"):
        got = {k: int(row[k]) for k in ("completed", "aborted", "incomplete", "discarded") if int(row[k])}
        assert got == counts.get((row["participant"], row["session"]), {}), row


def test_the_aborted_run_says_why_and_where_it_stopped_as_its_own_files_do(built: Built, out: Path) -> None:
    row = run_row(out, "P03", 1)
    end = next(r for r in log_records(built.run_dir("P03", 1) / "log.jsonl") if r["kind"] == "end")
    prov = json.loads((built.run_dir("P03", 1) / "provenance.json").read_text())
    # the end record says sigterm, or safety when the signal's vent refused a stimulus being commanded
    assert (row["status"], end["status"], end["reason"] in ("sigterm", "safety")) == ("aborted", "aborted", True)
    assert row["status_detail"] == prov["status_summary"]
    assert f"aborted ({end['reason']}" in row["status_detail"] and "sigterm" in row["status_detail"]
    records = log_records(built.run_dir("P03", 1) / "log.jsonl")
    last = [r for r in records if r["kind"] == "onset"][-1]
    assert f"last phase started: trial {last['trial']} '{last['phase']}'" in row["status_detail"]
    safety = [r["reason"] for r in records if r["kind"] == "safety"]   # the vent the signal asked for, if any
    flag = next((f for f in row["flags"].split("; ") if f.startswith("safety:")), None)
    assert (flag is not None) == bool(safety) and all(reason in (flag or "") for reason in safety), (safety, flag)


def test_qc_figures_match_each_runs_own_files(built: Built, out: Path) -> None:
    for d in run_dirs(built):
        if not (d / "provenance.json").is_file():
            continue          # the killed run: nothing derived (checked above)
        header = log_records(d / "log.jsonl")[0]
        row = run_row(out, header["participant"], header["run"])
        prov = json.loads((d / "provenance.json").read_text())
        # pulses: every stored-volume pulse in pulses.tsv, missing ones from its gaps
        stored = [p for p in tsv(d / "pulses.tsv") if p["onset"] != "n/a" and float(p["onset"]) >= -1e-6]
        assert int(row["volumes_received"]) == len(stored)
        assert int(row["missed_pulses"]) == sum(int(p["missed_before"]) for p in stored)
        assert int(row["volumes_expected"]) == prov["timing"]["volumes_expected"]
        assert int(row["dropped_frames"]) == prov["timing"]["dropped_frames"]
        # onset errors: the trials' phases in trials.csv (s, 4 decimals)
        trials = list(csv.DictReader((d / "trials.csv").open()))
        errors = [abs(float(v)) for t in trials for k, v in t.items() if k.endswith("_onset_error") and v != "n/a"]
        if errors:
            assert float(row["onset_error_max_ms"]) == pytest.approx(1000 * max(errors), abs=0.06)
        # pressure: the header's; measured against commanded from events.tsv
        assert float(row["pressure_kpa"]) == pytest.approx(header["pressure"]["pressure_kpa"], abs=0.05)
        assert row["pressure_source"] == header["pressure"]["source"]
        events = tsv(events_of(built, d.name))
        deviations = [abs(float(e["measured_pressure_kpa"]) - float(e["target_pressure_kpa"])) for e in events
                      if e["cuff"] in ("inflate", "hold") and e["measured_pressure_kpa"] != "n/a"]
        assert num(row["max_deviation_kpa"]) == (pytest.approx(max(deviations), abs=0.0015) if deviations else None)
        # inflation: each SET to the next DEFLATE or VENT, as the log has them; limits from the protocol copy
        cmds = [r for r in log_records(d / "log.jsonl") if r["kind"] == "cuff_cmd" and r["ok"]]
        spans, start = [], None
        for c in cmds:
            if c["command"].startswith("SET"):
                start = c["t_write"]
            elif start is not None and c["command"] in ("DEFLATE", "VENT"):
                spans.append(c["t_write"] - start)
                start = None
        assert int(row["stimuli"]) == len(spans)
        if spans:
            assert float(row["inflated_total_s"]) == pytest.approx(sum(spans), abs=0.006)
            assert float(row["longest_stimulus_s"]) == pytest.approx(max(spans), abs=0.006)
        safety = yaml.safe_load((d / "protocol.yaml").read_text())["safety"]
        assert float(row["stimulus_limit_s"]) == safety["max_inflation_per_stimulus_s"]
        assert float(row["run_limit_s"]) == safety["max_cumulative_inflation_per_run_s"]
        # and per stimulus in stimuli.tsv
        stimuli = [s for s in tsv(out / "stimuli.tsv") if s["participant"] == header["participant"]
                   and s["run"] == str(header["run"])]
        assert [float(s["inflated_s"]) for s in stimuli] == pytest.approx(spans, abs=0.0006)
        for s in stimuli:
            assert float(s["percent_of_limit"]) == pytest.approx(
                100 * float(s["inflated_s"]) / safety["max_inflation_per_stimulus_s"], abs=0.06)


def test_a_discarded_run_keeps_its_log_and_is_recorded_beside_it_and_in_scans_tsv(built: Built, out: Path) -> None:
    d = built.run_dir("P04", 1)
    prov = json.loads((d / "provenance.json").read_text())
    recorded = {r["path"]: r["sha256"] for r in prov["logs"]}
    for name in ("log.jsonl", "pressure.jsonl"):   # byte for byte what the run wrote
        assert hashlib.sha256((d / name).read_bytes()).hexdigest() == recorded[str((d / name).relative_to(built.root))]
    last = json.loads((d / "annotations.jsonl").read_text().splitlines()[-1])
    assert (last["kind"], last["reason"], last["by"], last["run_uid"]) == ("discarded", DISCARD_REASON, "test operator",
                                                                           prov["run_uid"])
    scans = tsv(built.root / "sub-P04" / "sub-P04_scans.tsv")
    assert {s["filename"] for s in scans} == {f"func/{d.name}_events.tsv", f"func/{d.name}_recording-cuff_stim.tsv.gz"}
    assert all((s["discarded"], s["discard_reason"], s["run_status"]) == ("true", DISCARD_REASON, "completed")
               for s in scans)
    row = run_row(out, "P04", 1)
    assert (row["status"], row["discarded"], row["discard_reason"]) == ("discarded (completed)", "true", DISCARD_REASON)
    # it counts nowhere else: P02 and P06 are the controls with ratings
    control = [r for r in tsv(out / "ratings_by_group.tsv") if r["group"] == "control"]
    assert [r["participants"] for r in control] == ["2"]


def test_calibrated_pressures_by_group_match_the_calibration_files(built: Built, out: Path) -> None:
    groups = {r["participant_id"][4:]: r["group"] for r in tsv(built.root / "participants.tsv")}
    newest: dict[str, float] = {}
    for f in sorted((built.root / "sourcedata").glob("sub-*/calibration/sub-*_calibration-*.json")):
        doc = json.loads(f.read_text())
        newest[doc["participant"]] = doc["pressure_kpa"]
    rows = {r["group"]: r for r in tsv(out / "calibrations_by_group.tsv")}
    assert set(rows) == {"patient", "control"}
    for g, row in rows.items():
        xs = [v for p, v in newest.items() if groups[p] == g]
        assert int(row["participants"]) == len(xs) == {"patient": 2, "control": 3}[g]
        assert float(row["mean_kpa"]) == pytest.approx(statistics.mean(xs), abs=0.006)
        assert float(row["sd_kpa"]) == pytest.approx(statistics.stdev(xs), abs=0.006)
        assert (float(row["min_kpa"]), float(row["max_kpa"])) == pytest.approx((min(xs), max(xs)), abs=0.006)
    # the simulated patients feel pain at lower pressures: the groups differ as made
    assert float(rows["patient"]["mean_kpa"]) < float(rows["control"]["mean_kpa"])
    every = sorted((r["participant"], float(r["pressure_kpa"])) for r in tsv(out / "calibrations.tsv"))
    assert every == sorted(newest.items())


def test_ratings_by_trial_type_and_group_match_the_events_files(built: Built, out: Path) -> None:
    groups = {r["participant_id"][4:]: r["group"] for r in tsv(built.root / "participants.tsv")}
    discarded = {s["filename"].split("/")[-1].rsplit("_", 1)[0]
                 for f in built.root.glob("sub-*/**/sub-*_scans.tsv") for s in tsv(f) if s["discarded"] == "true"}
    per_participant: dict[tuple[str, str], list[float]] = {}
    for events in sorted(built.root.glob("sub-*/**/func/*_events.tsv")):
        stem = events.name[: -len("_events.tsv")]
        if stem in discarded:
            continue
        participant = stem.split("_")[0][4:]
        trial_type = {t["trial"]: t["trial_type"] for t in csv.DictReader((source_of(built, stem) / "trials.csv").open())}
        for e in tsv(events):
            if e["rating"] != "n/a":
                per_participant.setdefault((participant, trial_type[e["trial"]]), []).append(float(e["rating"]))
    rows = tsv(out / "ratings_by_group.tsv")
    assert {(r["trial_type"], r["group"]) for r in rows} == {(tt, groups[p]) for p, tt in per_participant}
    for r in rows:
        means = [statistics.mean(v) for (p, tt), v in per_participant.items()
                 if tt == r["trial_type"] and groups[p] == r["group"]]
        assert int(r["participants"]) == len(means)
        assert int(r["ratings"]) == sum(len(v) for (p, tt), v in per_participant.items()
                                        if tt == r["trial_type"] and groups[p] == r["group"])
        assert float(r["mean_rating"]) == pytest.approx(statistics.mean(means), abs=0.006)


def test_the_override_and_its_reason_are_shown_with_the_run(built: Built, out: Path) -> None:
    header = log_records(built.run_dir("P02", 2) / "log.jsonl")[0]
    pressure = header["pressure"]
    assert (pressure["source"], pressure["override_kpa"], pressure["reason"]) == \
        ("override", OVERRIDE_KPA, OVERRIDE_REASON)
    level = pressure["levels"]["target"]          # the override stands in for the calibrated pressure
    given = level["pressure_kpa"]
    assert given == pytest.approx(OVERRIDE_KPA * (level.get("fraction") or 1), abs=0.051)
    row = next(r for r in tsv(out / "run_pressures.tsv") if (r["participant"], r["run"]) == ("P02", "2"))
    assert (float(row["pressure_kpa"]), row["level"], row["source"], row["note"]) == \
        (pytest.approx(given, abs=0.005), "target", "override", OVERRIDE_REASON)
    assert OVERRIDE_REASON in (out / "study.html").read_text()


def test_participants_and_scans_files_pass_the_bids_validator(built: Built, tmp_path: Path) -> None:
    import nibabel as nib
    import numpy as np

    root = tmp_path / "data"
    shutil.copytree(built.root, root, ignore=shutil.ignore_patterns("derivatives"))
    for events in root.glob("sub-*/**/func/*_events.tsv"):   # the images the scanner would have made
        stem = events.name[: -len("_events.tsv")]
        n = json.loads((next((root / "sourcedata").glob(f"sub-*/**/{stem}")) / "provenance.json").read_text())[
            "timing"]["volumes_received"]
        img = nib.Nifti1Image(np.zeros((2, 2, 2, max(n, 1)), dtype=np.int16), np.eye(4))
        img.header.set_zooms((3.0, 3.0, 3.0, 1.0))
        img.header.set_xyzt_units("mm", "sec")
        nib.save(img, str(events.parent / f"{stem}_bold.nii.gz"))
    errors, warnings = bids_validate(root)
    assert errors == [], errors
    about_ours = [w for w in warnings if re.search(r"participants|scans", str(w.get("location")))]
    assert about_ours == [], about_ours


def _snapshot(root: Path) -> dict[str, tuple[int, int, str]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
            for p in sorted(root.rglob("*")) if p.is_file() and "derivatives" not in p.parts}


def test_the_study_only_reads_the_dataset(built: Built, out: Path, tmp_path: Path) -> None:
    before = _snapshot(built.root)
    assert main(["study", str(built.root), "--out", str(tmp_path / "elsewhere")]) == 0
    assert _snapshot(built.root) == before
    assert (tmp_path / "elsewhere" / "study.html").is_file()   # (its speed: benchmarks/study.py)


def test_what_cannot_be_read_is_named_on_the_page_and_the_rest_is_shown(built: Built, tmp_path: Path) -> None:
    root = tmp_path / "data"
    shutil.copytree(built.root, root, ignore=shutil.ignore_patterns("derivatives"))
    (root / f"task-{TASK}_bold.json").unlink()                                      # a missing sidecar
    log = root / "sourcedata" / "sub-P01" / f"sub-P01_task-{TASK}_run-2" / "log.jsonl"
    log.write_bytes(log.read_bytes()[:-40])                                         # killed mid-line
    (root / "sourcedata" / "sub-P01" / "notes.txt").write_text("scanner was slow today\n")   # a foreign file
    (root / "sub-P02" / "func" / f"sub-P02_task-{TASK}_run-9_events.tsv").write_text("onset\tduration\n")
    lines = (root / "participants.tsv").read_text().splitlines()
    (root / "participants.tsv").write_text("\n".join(line for line in lines if "sub-P05" not in line) + "\n")
    proc = subprocess.run([sys.executable, "-m", "experiment", "study", str(root)], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    out = root / "derivatives" / "cuedpain-study"
    problems = {(p["path"], p["problem"]) for p in tsv(out / "problems.tsv")}

    def said(path: str, pattern: str) -> bool:
        return any(p == path and re.search(pattern, what) for p, what in problems)

    assert said(f"task-{TASK}_bold.json", r"missing")
    assert said(str(log.relative_to(root)), r"cut off")
    assert said("sourcedata/sub-P01/notes.txt", r"not a run, session, calibration or attempts directory")
    assert said(f"sub-P02/func/sub-P02_task-{TASK}_run-9_events.tsv", r"no run log")
    assert said("participants.tsv", r"no row for sub-P05 .*PARTICIPANT_ID_MISMATCH")
    cut = run_row(out, "P01", 2)
    assert cut["status"] == "incomplete" and "log_cut" in cut["flags"]
    assert len(tsv(out / "runs.tsv")) == 8
    page = (out / "study.html").read_text()
    assert "notes.txt" in page and "cut off" in page


def test_a_discard_taken_back_counts_again(built: Built, tmp_path: Path) -> None:
    root = tmp_path / "data"
    shutil.copytree(built.root, root, ignore=shutil.ignore_patterns("derivatives"))
    d = root / "sourcedata" / "sub-P04" / f"sub-P04_task-{TASK}_run-1"
    assert main(["discard", str(d), "--undo", "--reason", "the camera was off, not the participant's eyes"]) == 0
    assert [json.loads(x)["kind"] for x in (d / "annotations.jsonl").read_text().splitlines()] == ["discarded", "restored"]
    assert {s["discarded"] for s in tsv(root / "sub-P04" / "sub-P04_scans.tsv")} == {"false"}
    assert main(["study", str(root)]) == 0
    control = [r for r in tsv(root / "derivatives" / "cuedpain-study" / "ratings_by_group.tsv") if r["group"] == "control"]
    assert [r["participants"] for r in control] == ["3"]
    # a run in a session: its session's scans.tsv
    d6 = root / "sourcedata" / "sub-P06" / "ses-1" / f"sub-P06_ses-1_task-{TASK}_run-1"
    assert main(["discard", str(d6), "--reason", "wrong protocol"]) == 0
    scans = tsv(root / "sub-P06" / "ses-1" / "sub-P06_ses-1_scans.tsv")
    assert scans and all((s["discarded"], s["discard_reason"]) == ("true", "wrong protocol") for s in scans)
    assert not (root / "sub-P06" / "sub-P06_scans.tsv").exists()


# ---------------------------------------------------------------- the page in a browser

def test_the_page_renders_in_chromium_offline_with_runs_reasons_and_plots(built: Built, out: Path,
                                                                           tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    assert CHROMIUM.exists(), "chromium is not installed (make test installs it: scripts/install-system-deps.sh)"
    page_path = out / "study.html"
    html = page_path.read_text()
    for ref in re.findall(r"""(?:src|href)=['"]([^'"]*)['"]""", html):
        assert ref.startswith(("data:image/png;base64,", "#")), f"external reference {ref[:60]}"
    requested: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1250, "height": 1000})

            def only_local(route) -> None:  # the page must need nothing from outside
                url = route.request.url
                if url.startswith(("file:", "data:")):
                    route.continue_()
                else:
                    requested.append(url)
                    route.abort()

            page.route("**/*", only_local)
            page.goto(page_path.as_uri())
            shot = tmp_path / "study.png"
            page.screenshot(path=str(shot), full_page=True)
            images = page.eval_on_selector_all("img", "els => els.map(e => [e.complete, e.naturalWidth, e.alt])")
            runs_rows = page.locator("#runs ~ table").first.locator("tbody tr").all_inner_texts()
            body = page.inner_text("body")
        finally:
            browser.close()
    assert requested == []
    assert shot.stat().st_size > 20_000
    assert len(images) == 4 and all(done and width > 300 for done, width, _ in images), images
    assert len(runs_rows) == 8
    by_run = {(r.split("\t")[0], r.split("\t")[4]): r for r in runs_rows}
    assert set(by_run) == {("P01", "1"), ("P01", "2"), ("P02", "1"), ("P02", "2"), ("P03", "1"), ("P04", "1"),
                           ("P05", "1"), ("P06", "1")}
    assert by_run[("P06", "1")].split("\t")[2] == "1"          # its session
    assert "ABORTED" in by_run[("P03", "1")] and "sigterm" in by_run[("P03", "1")].lower()
    assert "DISCARDED" in by_run[("P04", "1")] and DISCARD_REASON in by_run[("P04", "1")]
    assert "INCOMPLETE" in by_run[("P05", "1")]
    assert "override" in by_run[("P02", "2")]
    assert "DRY RUNS" in body and "No visit plan" in body


# ---------------------------------------------------------------- bad input: one message, exit 2

@pytest.mark.parametrize("argv, message", [
    (["participants", "set", "P01", "--field", "group=patiet"], r"field 'group' must be one of patient, control.*did "
                                                                 r"you mean 'patient'"),
    (["participants", "set", "P01", "--field", "agee=40"], r"field 'agee' is not declared in .*participants.json"),
    (["participants", "set", "P01", "--field", "age=twelve"], r"field 'age' must be a whole number \(year\) from 18"),
    (["participants", "set", "P01", "--field", "group"], r"--field 'group': write NAME=VALUE"),
    (["participants", "set", "P-1", "--field", "group=patient"], r"participant 'P-1' is not a valid BIDS label"),
    (["study", "{root}/nowhere"], r"nowhere is not a directory"),
    (["discard", "{root}/sourcedata/sub-P01", "--reason", "x"], r"has no event log"),
    (["discard", "{root}/sourcedata/sub-P01/sub-P01_task-demo_run-1", "--undo", "--reason", "x"], r"is not discarded"),
    (["discard", "{root}/sourcedata/sub-P01/sub-P01_task-demo_run-1", "--reason", "   "], r"--reason is required"),
])
def test_bad_input_is_one_clear_message_and_exit_2(built: Built, capsys: pytest.CaptureFixture[str], argv: list[str],
                                                   message: str) -> None:
    args = [a.replace("{root}", str(built.root)) for a in argv]
    if args[0] == "participants":
        args += ["--data", str(built.root)]
    before = (built.root / "participants.tsv").read_bytes()
    assert main(args) == 2
    err = capsys.readouterr().err
    assert re.search(message, err), err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert (built.root / "participants.tsv").read_bytes() == before


def test_a_bad_field_declaration_names_file_line_and_field(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "fields.yaml"
    bad.write_text("fields:\n  group:\n    description: Study group\n    level: {patient: p}\n")
    assert main(["participants", "declare", str(bad), "--data", str(tmp_path / "data")]) == 2
    err = capsys.readouterr().err
    assert f"{bad}:4:5: fields.group.level: unknown key 'level'" in err and "did you mean 'levels'" in err
    assert not (tmp_path / "data" / "participants.json").exists()


# ---------------------------------------------------------------- the pure parts

DECL = Declaration(fields=(FieldSpec("group", "Study group", levels=(("patient", "p"), ("control", "c"))),
                           FieldSpec("age", "Age", format="integer", units="year", minimum=18, maximum=75)),
                   source="participants.json")


def test_set_fields_adds_a_row_and_checks_each_value() -> None:
    t = set_fields(ParticipantsTable(), DECL, "P02", {"group": "control"})
    t = set_fields(t, DECL, "sub-P01", {"age": "45", "group": "patient"})
    assert t.columns == ("participant_id", "group", "age")
    assert t.rows == (("sub-P01", "patient", "45"), ("sub-P02", "control", "n/a"))
    assert set_fields(t, DECL, "P01", {"age": "n/a"}).row("sub-P01") == {"participant_id": "sub-P01",
                                                                         "group": "patient", "age": "n/a"}
    for values, pattern in (({"age": "17"}, "from 18 to 75"), ({"age": "45.5"}, "whole number"),
                            ({"group": "Patient"}, "one of patient, control"), ({"sex": "F"}, "not declared")):
        with pytest.raises(InputError, match=pattern):
            set_fields(t, DECL, "P01", values)


def test_a_declaration_never_drops_a_field_or_level_in_use() -> None:
    t = set_fields(ParticipantsTable(), DECL, "P01", {"group": "patient"})
    narrower = Declaration(fields=(FieldSpec("group", "Study group", levels=(("control", "c"),)),), source="f.yaml")
    with pytest.raises(InputError, match=r"sub-P01 has 'patient'"):
        apply_declaration(t, narrower, DECL)
    without_group = Declaration(fields=(DECL.fields[1],), source="f.yaml")
    with pytest.raises(InputError, match=r"field 'group' is not declared any more"):
        apply_declaration(t, without_group, DECL)
    table, dropped = apply_declaration(t, Declaration(fields=(DECL.fields[0],), source="f.yaml"), DECL)
    assert dropped == ("age",) and table.columns == ("participant_id", "group")


def test_the_last_discard_or_restore_line_wins_and_other_runs_lines_are_ignored() -> None:
    lines = [annotation_record("discarded", reason="moved", by="a", at="t1", run_uid="u1", stem="s"),
             annotation_record("discarded", reason="not mine", by="b", at="t2", run_uid="u2", stem="s"),
             annotation_record("restored", reason="camera", by="c", at="t3", run_uid="u1", stem="s"),
             annotation_record("discarded", reason="cuff slipped", by="d", at="t4", run_uid="u1", stem="s")]
    text = "\n".join(json.dumps(x) for x in lines) + "\n{\"format\": \"cuedpain-annot"
    annotations, problems = parse_annotations(text, source="a.jsonl", run_uid="u1")
    state = discard_state(annotations)
    assert (state.discarded, state.reason, state.by, len(state.history)) == (True, "cuff slipped", "d", 3)
    assert [p.split(": ", 1)[0] for p in problems] == ["a.jsonl:2", "a.jsonl:5"]
    assert discard_state(annotations[:2]).discarded is False


def test_a_minimal_discard_line_without_run_uid_counts_for_its_run() -> None:
    text = '{"kind": "discarded", "reason": "moved", "at": "2026-12-01T10:00:00+01:00"}\n'
    annotations, problems = parse_annotations(text, source="a.jsonl", run_uid="u1")
    assert problems == () and discard_state(annotations).reason == "moved"


def test_scans_tsv_keeps_what_others_wrote() -> None:
    existing = TsvTable(columns=("filename", "acq_time", "operator"),
                        rows=(("func/x_bold.nii.gz", "2026-01-01T10:00:00", "AB"),
                              ("anat/sub-1_T1w.nii.gz", "2026-01-01T09:00:00", "AB")))
    table = scans_table(existing, [ScanEntry("func/x_bold.nii.gz", "2026-01-01T10:00:05", "aborted", True, "moved"),
                                   ScanEntry("func/x_events.tsv", "2026-01-01T10:00:05", "aborted", True, "moved")])
    assert table.columns == ("filename", "acq_time", "operator", "run_status", "discarded", "discard_reason")
    assert table.rows == (("anat/sub-1_T1w.nii.gz", "2026-01-01T09:00:00", "AB", "n/a", "n/a", "n/a"),
                          ("func/x_bold.nii.gz", "2026-01-01T10:00:00", "AB", "aborted", "true", "moved"),
                          ("func/x_events.tsv", "2026-01-01T10:00:05", "n/a", "aborted", "true", "moved"))


def test_runs_missing_from_a_visit_plan() -> None:
    plan = VisitPlan("visit 1", "plans/v1.yaml", (PlannedStep("calibration", "1"),
                                                  PlannedStep("run", "1", task="loggia2014", count=2)))
    done = [Done("P01", ((("1", "loggia2014"),) * 2), ("1",)), Done("P02", (("1", "loggia2014"),), ())]
    missing = missing_steps([plan], ["P01", "P02", "P03"], done)
    assert [(m.participant, m.kind, m.expected, m.found) for m in missing] == [
        ("P02", "calibration", 1, 0), ("P02", "run", 2, 1), ("P03", "calibration", 1, 0), ("P03", "run", 2, 0)]


def _timing(**kw: object) -> Timing:
    base = dict(n_onsets=10, onset_error_median_ms=1.0, onset_error_p95_ms=5.0, onset_error_max_ms=6.0,
                frame_ms=1000 / 60, dropped_frames=0, volumes_expected=100, volumes_received=100, missed_pulses=0,
                extra_pulses=0, tr_s=2.0, tr_measured_s=2.0001, tr_sidecar_s=2.0, safety=(), warnings=())
    base.update(kw)
    return Timing(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize("timing, stimuli, code, text", [
    (_timing(onset_error_max_ms=17.0), (), "onset_error", r"17\.0 ms off .*limit 1 frame, 16\.7 ms"),
    (_timing(dropped_frames=3), (), "dropped_frames", r"3 dropped"),
    (_timing(missed_pulses=2, volumes_received=98), (), "missed_pulses", r"2 scanner pulse"),
    (_timing(extra_pulses=1), (), "extra_pulses", r"1 extra"),
    (_timing(volumes_received=90), (), "short_of_volumes", r"90 of 100"),
    (_timing(tr_measured_s=2.01), (), "tr_mismatch", r"measured TR 2\.0100 s, protocol TR 2 s"),
    (_timing(tr_sidecar_s=2.5), (), "tr_sidecar", r"RepetitionTime 2\.5 s"),
    (_timing(safety=("host_compliance",)), (), "safety", r"host_compliance"),
    (None, (Stimulus(1, "pain", 40.0, 36.5, 3.5, 40.2, 8.0),), "pressure_deviation", r"more than 2 kPa .*3\.50 kPa"),
    (None, (Stimulus(1, "pain", 40.0, None, None, None, 8.0),), "pressure_not_held", r"trial\(s\) 1"),
    (None, (Stimulus(1, "pain", 40.0, 40.0, 0.1, 40.1, 31.0),), "inflation_limit", r"31\.00 s \(limit 30 s\)"),
])
def test_each_flag_names_its_figure_and_limit(timing: Timing | None, stimuli: tuple[Stimulus, ...], code: str,
                                              text: str) -> None:
    flags = run_flags(timing, stimuli, Limits(30.0, 360.0, 2.0), status="completed", log_cut=False, bids_problem=None)
    assert [f.code for f in flags] == [code]
    assert re.search(text, flags[0].text), flags[0].text
    assert run_flags(_timing(), (Stimulus(1, "pain", 40.0, 39.9, 0.1, 40.1, 8.0),), Limits(30.0, 360.0, 2.0),
                     status="completed", log_cut=False, bids_problem=None) == ()


def test_a_run_with_several_pressure_levels_lists_each_and_an_old_log_its_one_pressure() -> None:
    from experiment.study.reader import _pressure_levels

    two = {"pressure_kpa": None, "source": "calibration",
           "levels": {"low": {"pressure_kpa": 24.5}, "high": {"pressure_kpa": 41.0}}}
    assert _pressure_levels(two) == (("low", 24.5), ("high", 41.0))
    assert _pressure_levels({"pressure_kpa": 30.0, "source": "protocol"}) == (("target", 30.0),)
    assert _pressure_levels({"source": "protocol"}) == ()


def test_a_new_participants_run_gives_them_a_row_in_an_existing_participants_tsv(tmp_path: Path) -> None:
    root = tmp_path / "data"
    assert main(["participants", "declare", str(ROOT / "protocols" / "participants.yaml"), "--data", str(root)]) == 0
    assert main(["participants", "set", "P01", "--field", "group=patient", "--data", str(root)]) == 0
    assert main(["run", str(ROOT / "protocols" / "demo.yaml"), "--participant", "P09", "--dry-run", "--headless",
                 "--data", str(root)]) == 0
    rows = {r["participant_id"]: r for r in tsv(root / "participants.tsv")}
    assert set(rows) == {"sub-P01", "sub-P09"} and rows["sub-P09"]["group"] == "n/a"
    assert rows["sub-P01"]["group"] == "patient"
