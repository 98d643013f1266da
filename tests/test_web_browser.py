"""The operator station in a real browser (Debian's chromium through Playwright).

A dry-run visit (a short calibration, then two runs of tests/data/web/tiny.yaml) is run
from the page in real time under the test session's Xvfb: the live pressure trace grows
while a run goes; Abort vents the simulated cuff and keeps the data; a run is marked
discarded and redone; the station is killed in the middle of a run, the run goes on, and
a new station re-attaches to it from its logs. Screenshots of the main states go to the
test's tmp directory.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import pytest

from experiment.log.eventlog import read_log

ROOT = Path(__file__).resolve().parents[1]
WEB = ROOT / "tests" / "data" / "web"
CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]

pytestmark = [pytest.mark.realtime, pytest.mark.display,
              pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed")]


class StationProcess:
    """`cuedpain station --dry-run` as the operator starts it; its two URLs from its console."""

    def __init__(self, data: Path, log: Path) -> None:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.out = open(log, "w+", encoding="utf-8")
        self.proc = subprocess.Popen([sys.executable, "-m", "experiment", "station", "--dry-run", "--data", str(data),
                                      "--plans", str(WEB), "--protocols", str(WEB), "--port", "0", "--no-browser"],
                                     stdout=self.out, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        self.url = self.watch_url = ""
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not self.watch_url:
            text = Path(log).read_text(encoding="utf-8")
            for line in text.splitlines():
                if line.startswith("station: "):
                    self.url = line.split()[1]
                elif line.startswith("watch (read-only"):
                    self.watch_url = line.split()[-1]
            if self.proc.poll() is not None:
                raise AssertionError(f"the station exited: {text}")
            time.sleep(0.1)
        assert self.url and self.watch_url, Path(log).read_text(encoding="utf-8")
        self.base = self.url.split("/?")[0]

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self.out.close()


def _wait(what: str, check: Callable[[], Any], timeout_s: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _row_state(page: Any, key: str) -> str:
    return str(page.get_attribute(f"#checklist li[data-key='{key}']", "data-state") or "")


def _trace_length(page: Any, key: str | None = None) -> int:
    """Points in the live chart (0 while the live view shows another step than `key`)."""
    shown = page.evaluate("window.cuedpain.live && window.cuedpain.live.step.key")
    return int(page.evaluate("window.cuedpain.chart.data[0].length")) if key is None or shown == key else 0


def _start(page: Any, key: str) -> None:
    _wait(f"{key} to be next and its block checked",
          lambda: _row_state(page, key) == "next" and page.is_enabled("#start")
          and page.get_attribute("#start", "data-key") == key)
    page.click("#start")
    _wait(f"{key} to run", lambda: _row_state(page, key) in ("running", "done"), 20)


def _active(data: Path) -> dict[str, Any]:
    return dict(json.loads((data / "sourcedata" / "station" / "active.json").read_text()))


def test_a_dry_run_visit_from_the_page(xdisplay: str, tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    data = tmp_path / "data-dryrun"
    shots = tmp_path / "screenshots"
    shots.mkdir()
    station = StationProcess(data, tmp_path / "station-1.txt")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 1100})
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(station.url)
        assert page.inner_text("#mode") == "DRY RUN" and page.is_visible("#dryrun")
        page.fill("#participant", "B01")
        page.fill("#session", "1")
        page.select_option("#plan", str(WEB / "visit.yaml"))
        page.click("#open")
        _wait("the checklist", lambda: page.locator("#checklist li").count() == 3)
        _wait("the calibration's block", lambda: "CHECK BEFORE STARTING (DRY RUN" in page.inner_text("#block"))
        assert "ceiling" in page.inner_text("#block") and "simulated cuff" in page.inner_text("#block")
        page.screenshot(path=str(shots / "1-checklist.png"), full_page=True)

        # calibration, in real time in the Xvfb window
        _start(page, "0-calibration")
        _wait("the calibration", lambda: _row_state(page, "0-calibration") == "done", 90)
        _wait("run 1's block", lambda: "pressure" in page.inner_text("#block") and "from calibration"
              in page.inner_text("#block"))
        page.screenshot(path=str(shots / "2-run-block.png"), full_page=True)

        # run 1: the trace grows while it goes; Abort in the pain phase vents the cuff and keeps the data
        _start(page, "1-run-1")
        first = _wait("pressure samples", lambda: _trace_length(page, "1-run-1"), 30)
        _wait("more samples", lambda: _trace_length(page, "1-run-1") > first + 10, 10)
        _wait("the pain phase", lambda: page.evaluate("window.cuedpain.live && window.cuedpain.live.view.phase")
              == "pain", 20)
        page.screenshot(path=str(shots / "3-live.png"), full_page=True)
        page.click("#abort")
        _wait("the end of the aborted run", lambda: "Ended: aborted" in page.inner_text("#summary"), 30)
        aborted = Path(page.evaluate("window.cuedpain.live.log")).parent
        log = read_log(aborted / "log.jsonl")
        end = [r for r in log.records if r["kind"] == "end"][-1]
        assert end["status"] == "aborted" and end["reason"] == "sigint" and end["exit_code"] == 3
        assert any(r["kind"] == "safety" and r["reason"] == "sigint" and r["action"] == "vent" for r in log.records)
        vents = [r for r in log.records if r["kind"] == "cuff_cmd" and r["command"] == "VENT"]
        assert vents and all(r["ok"] for r in vents)
        samples = list(read_log(aborted / "pressure.jsonl").of_kind("p"))
        # inflated, then vented: the release below the protocol's threshold was verified on closing
        # (the stream's last sample may come just before the final STATUS? reading that verified it)
        assert max(s["p"] for s in samples) > 5 and samples[-1]["p"] < max(s["p"] for s in samples) / 2
        assert not [r for r in log.records if r["kind"] == "warning" and r.get("code") == "cuff_release_not_verified"]
        assert log.header["confirmation"]["started_from"] == "station"
        page.screenshot(path=str(shots / "4-aborted.png"), full_page=True)

        # run 1 again (the aborted one does not count), then discard it, then redo it
        _start(page, "1-run-1")
        _wait("run 1", lambda: _row_state(page, "1-run-1") == "done", 60)
        _wait("the run's QC report link", lambda: page.locator("a.report").count() == 1)
        report = page.get_attribute("a.report", "href")
        assert report is not None and report.startswith("/files/") and "token=" in report
        row = page.locator("#runs-table tr", has=page.locator("button.discard"))
        row.locator("input.discard-reason").fill("participant fell asleep")
        row.locator("button.discard").click()
        _wait("the discarded run to leave its row to redo", lambda: _row_state(page, "1-run-1") == "next", 20)
        assert "discarded: participant fell asleep" in page.inner_text("#runs-table")
        page.screenshot(path=str(shots / "5-discarded.png"), full_page=True)
        _start(page, "1-run-1")
        _wait("run 1 redone", lambda: _row_state(page, "1-run-1") == "done", 60)

        # run 2: the station dies in the middle; the run goes on; a new station re-attaches
        _start(page, "1-run-2")
        pid = int(_active(data)["pid"])
        second = StationProcess(data, tmp_path / "station-2.txt")   # ready first: the run is short
        _wait("run 2 to be under way", lambda: _trace_length(page, "1-run-2") > 5, 30)
        station.kill()
        time.sleep(0.5)
        os.kill(pid, 0)          # the run is still going
        station = second
        page.goto(station.url)
        _wait("the re-attached live view", lambda: page.is_visible("#live") and "running" in
              page.inner_text("#live-title") and _trace_length(page) > 0, 20)
        seen = _trace_length(page)
        _wait("the trace to grow after re-attaching", lambda: _trace_length(page) > seen, 10)
        page.screenshot(path=str(shots / "6-reattached.png"), full_page=True)
        _wait("run 2", lambda: _row_state(page, "1-run-2") == "done", 60)
        assert [_row_state(page, k) for k in ("0-calibration", "1-run-1", "1-run-2")] == ["done"] * 3
        page.screenshot(path=str(shots / "7-complete.png"), full_page=True)

        # the watch page: the same visit, no controls
        watch = browser.new_page(viewport={"width": 1280, "height": 900})
        watch.goto(station.watch_url)
        _wait("the watch page", lambda: watch.locator("#checklist li").count() == 3)
        assert watch.inner_text("#role") == "WATCH ONLY" and not watch.is_visible("#start")
        assert not watch.is_visible("button.discard")
        browser.close()
        assert not errors, errors
    station.kill()
    runs = sorted(p.name for p in (data / "sourcedata" / "sub-B01" / "ses-1").glob("sub-*"))
    assert runs == [f"sub-B01_ses-1_task-tiny_run-{n}" for n in (1, 2, 3, 4)]   # nothing overwritten
    assert shutil.disk_usage(shots) and len(list(shots.glob("*.png"))) == 7
