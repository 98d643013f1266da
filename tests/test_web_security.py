"""The station is secure by default: a token on every request, actions by POST only, no other host."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from experiment.web.app import authorize, create_app
from experiment.web.config import StationConfig

ROOT = Path(__file__).resolve().parents[1]
WEB = ROOT / "tests" / "data" / "web"


@pytest.fixture
def station(tmp_path: Path) -> tuple[TestClient, StationConfig]:
    config = StationConfig(data=tmp_path / "data-dryrun", dry_run=True, headless=True, plans_dir=WEB,
                           protocols_dir=WEB, port=8765)
    client = TestClient(create_app(config), base_url="http://127.0.0.1:8765")   # type: ignore[arg-type]
    return client, config


def test_every_request_needs_the_token(station: tuple[TestClient, StationConfig]) -> None:
    client, config = station
    for path in ("/", "/api/state", "/api/stream", "/static/station.js", "/static/vendor/uPlot.iife.min.js",
                 "/api/ports", "/files/x/report.html", "/favicon.ico"):
        r = client.get(path)
        assert r.status_code == 403, path
        assert client.get(path, params={"token": "not-the-token"}).status_code == 403
    page = client.get("/", params={"token": config.token})
    assert page.status_code == 200 and config.token in page.text and "__TOKEN__" not in page.text
    assert page.headers["cache-control"] == "no-store" and page.headers["referrer-policy"] == "no-referrer"
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert client.get("/static/station.js", params={"token": config.token}).status_code == 200


def test_actions_are_post_only_with_the_token_in_a_header(station: tuple[TestClient, StationConfig]) -> None:
    client, config = station
    header = {"X-Cuedpain-Token": config.token}
    for path in ("/api/start", "/api/abort", "/api/discard", "/api/select"):
        assert client.get(path, params={"token": config.token}).status_code == 405, path
        assert client.post(path, params={"token": config.token}, json={}).status_code == 403, path   # not in a header
        assert client.post(path, json={}).status_code == 403, path
        assert client.post(path, headers={"X-Cuedpain-Token": config.watch_token}, json={}).status_code == 403
        assert client.post(path, headers={**header, "Origin": "http://evil.example"}, json={}).status_code == 403
    r = client.post("/api/select", headers={**header, "Origin": "http://127.0.0.1:8765"},
                    json={"participant": "S1", "session": "", "plan": str(WEB / "visit.yaml")})
    assert r.status_code == 200 and [row["state"] for row in r.json()["rows"]] == ["next", "to do", "to do"]
    assert client.post("/api/abort", headers=header).status_code == 409        # nothing is running
    bad = client.post("/api/select", headers=header, json={"participant": "S 1", "plan": str(WEB / "visit.yaml")})
    assert bad.status_code == 409 and "participant" in bad.json()["detail"]


def test_the_watch_token_reads_but_cannot_act(station: tuple[TestClient, StationConfig]) -> None:
    client, config = station
    r = client.get("/api/state", params={"token": config.watch_token})
    assert r.status_code == 200 and r.json()["station"]["role"] == "watch"


def test_another_host_name_is_refused() -> None:
    config = StationConfig(data=Path("d"), port=8765)
    ok = dict(method="GET", query_token=config.token, header_token=None, origin=None, config=config)
    assert authorize(host="127.0.0.1:8765", **ok) == (200, "control")   # type: ignore[arg-type]
    assert authorize(host="localhost:8765", **ok) == (200, "control")   # type: ignore[arg-type]
    assert authorize(host="attacker.example:8765", **ok)[0] == 403      # type: ignore[arg-type]  # DNS rebinding
    assert authorize(host=None, **ok)[0] == 403                          # type: ignore[arg-type]


def test_reports_are_served_only_from_the_data_root(station: tuple[TestClient, StationConfig], tmp_path: Path) -> None:
    client, config = station
    (tmp_path / "report.html").write_text("secret")
    r = client.get("/files/../report.html", params={"token": config.token})
    assert r.status_code == 404


def test_the_station_binds_to_this_computer_and_warns_for_another_address(tmp_path: Path) -> None:
    import os

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = tmp_path / "out.txt"
    with open(out, "w") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "experiment", "station", "--dry-run", "--data",
                                 str(tmp_path / "d"), "--port", "0", "--no-browser", "--host", "0.0.0.0"],
                                stdout=fh, stderr=subprocess.STDOUT, env=env)
        try:
            deadline = time.monotonic() + 20
            while "watch (read-only" not in out.read_text() and time.monotonic() < deadline:
                time.sleep(0.1)
            text = out.read_text()
        finally:
            proc.terminate()
            proc.wait(10)
    assert "WARNING: serving on 0.0.0.0" in text
    default = subprocess.run([sys.executable, "-m", "experiment", "station", "--help"], capture_output=True, text=True,
                             env=env)
    assert "default 127.0.0.1" in default.stdout


def test_a_run_never_imports_the_web_stack(tmp_path: Path) -> None:
    import os

    code = ("import sys; from experiment.cli import main; "
            f"code = main(['run', {str(ROOT / 'protocols' / 'demo.yaml')!r}, '--participant', 'N1', '--dry-run', "
            f"'--headless', '--data', {str(tmp_path)!r}, '--yes', '--confirmed-by', 'station']); "
            "web = sorted(m for m in sys.modules if m.split('.')[0] in ('fastapi', 'starlette', 'uvicorn', "
            "'sse_starlette') or m.startswith('experiment.web')); print(code, web)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                         env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)
    assert out.stdout.strip().splitlines()[-1] == "0 []", out.stdout + out.stderr
