"""Benchmark 8: does the operator station disturb the run it follows?

    python -m benchmarks.station [--pairs 2] [--protocol protocols/demo.yaml] [--out DIR]

Real-time dry runs of the protocol in a window, in a balanced order of blocks (off, on |
on, off | ...), in one command on one display:

* off: the run as `cuedpain run PROTOCOL --dry-run --yes` started by hand;
* on: the same run started from the operator station (`cuedpain station --dry-run`, its
  Start button's POST), with the station following it (the live stream) and the station's
  page open in Debian's chromium (headless, through Playwright) drawing the live trace, as
  on an operator's screen. Without Playwright the stream is read by a plain HTTP client
  and the results say so.

Frame intervals are measured inside the run's process: the run is started as
`python -m benchmarks.station --child FILE -- run ...`, which records the time of every
`WindowDisplay.flip()` and then is `cuedpain run` unchanged. Intervals between t0 and the
`end` record are kept. Reported per condition: median, p99, longest, count over 1.5
frames; and on/off ratios of p99 (goal <= 1.01) and of the longest frame (goal: no growth).
Results: DIR/station.json and DIR/station.md (default benchmarks/results/).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

from benchmarks.machine import ROOT, load_average, machine_info
from benchmarks.proc import virtual_display

ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def child(out: Path, args: list[str]) -> int:
    """`cuedpain ARGS` with every flip time recorded into OUT (JSON) at the end."""
    from experiment.cli import main
    from experiment.station import display

    flips: list[float] = []
    original = display.WindowDisplay.flip

    def recording_flip(self: Any, *a: Any, **k: Any) -> float:
        t = float(original(self, *a, **k))
        flips.append(t)
        return t

    display.WindowDisplay.flip = recording_flip  # type: ignore[method-assign]
    code = main(args)
    out.write_text(json.dumps({"exit_code": code, "flips": flips}))
    return code


def serve(data: Path, child_out: Path, protocols: Path) -> int:
    """A dry-run station whose steps run through `child` (so their flips are recorded)."""
    import socket

    from experiment.cli.station import _serve
    from experiment.web.config import StationConfig

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    config = StationConfig(data=data, dry_run=True, plans_dir=protocols, protocols_dir=protocols,
                           port=sock.getsockname()[1],
                           child_command=(sys.executable, "-m", "benchmarks.station", "--child", str(child_out), "--"))
    return _serve(config, sock, open_browser=False, remote=False, opener=None)


def block_order(pairs: int) -> list[str]:
    order: list[str] = []
    for k in range(pairs):
        order += ["off", "on"] if k % 2 == 0 else ["on", "off"]
    return order


def _post(base: str, token: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
    req = urllib.request.Request(base + path, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json", "X-Cuedpain-Token": token})
    with urllib.request.urlopen(req, timeout=30) as r:
        return dict(json.loads(r.read()))


def _run_args(protocol: Path, participant: str, data: Path) -> list[str]:
    return ["run", str(protocol), "--participant", participant, "--run", "next", "--dry-run", "--data", str(data),
            "--yes"]


def _wait_file(path: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{path} did not appear")
        time.sleep(0.2)


def run_off(protocol: Path, participant: str, data: Path, out: Path, env: dict[str, str], timeout_s: float) -> str:
    subprocess.run([sys.executable, "-m", "benchmarks.station", "--child", str(out), "--",
                    *_run_args(protocol, participant, data)], env=env, cwd=ROOT, timeout=timeout_s,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return "none"


def run_on(protocol: Path, participant: str, data: Path, out: Path, env: dict[str, str], timeout_s: float,
           work: Path) -> str:
    """The run started from a station that follows it, its page open in a browser; who followed."""
    console = work / f"station-{participant}.txt"
    with open(console, "w") as fh:
        station = subprocess.Popen([sys.executable, "-m", "benchmarks.station", "--serve", str(data), str(out),
                                    str(protocol.parent)], stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    try:
        url = ""
        deadline = time.monotonic() + 30
        while not url and time.monotonic() < deadline:
            url = next((line.split()[1] for line in console.read_text().splitlines() if line.startswith("station: ")),
                       "")
            time.sleep(0.1)
        base, token = url.split("/?token=")[0], url.split("token=")[1]
        _post(base, token, "/api/select", {"participant": participant, "session": "", "plan": str(protocol)})
        follower, stop = _follow(url, base, token)
        try:
            _post(base, token, "/api/start", {"key": "0-run-1"})
            _wait_file(out, timeout_s)
        finally:
            stop()
        return follower
    finally:
        station.terminate()
        station.wait(20)


def _follow(url: str, base: str, token: str) -> tuple[str, Any]:
    """Chromium on the station's page (or, without Playwright, an HTTP client on the stream)."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        sync_playwright = None
    done = threading.Event()
    ready = threading.Event()
    who: list[str] = []

    def browser() -> None:
        assert sync_playwright is not None
        with sync_playwright() as pw:
            b = pw.chromium.launch(executable_path="/usr/bin/chromium", args=ARGS)
            page = b.new_page(viewport={"width": 1280, "height": 1000})
            page.goto(url)
            who.append("chromium on the station's page (live view drawn)")
            ready.set()
            done.wait()
            who.append(f"{page.evaluate('window.cuedpain.chart.data[0].length')} points drawn")
            b.close()

    def stream() -> None:
        with urllib.request.urlopen(f"{base}/api/stream?token={token}", timeout=600) as r:
            who.append("an HTTP client reading the live stream")
            ready.set()
            while not done.is_set() and r.readline():
                pass

    use_browser = sync_playwright is not None and Path("/usr/bin/chromium").exists()
    thread = threading.Thread(target=browser if use_browser else stream, daemon=True)
    thread.start()
    ready.wait(60)

    def stop() -> None:
        done.set()
        thread.join(30)

    return ("; ".join(who) if who else "?"), stop


def intervals_ms(flips: list[float], t0: float, t_end: float) -> list[float]:
    """Consecutive flip intervals (ms) between t0 and the end of the run."""
    inside = [t for t in flips if t0 <= t <= t_end]
    return [1000 * (b - a) for a, b in zip(inside, inside[1:])]


def summarize(intervals: list[float], frame_ms: float) -> dict[str, Any]:
    import numpy as np

    a = np.array(intervals, dtype=float)
    return {"n": int(a.size), "median_ms": float(np.median(a)), "p99_ms": float(np.percentile(a, 99)),
            "max_ms": float(a.max()), "over_1_5_frames": int(np.sum(a > 1.5 * frame_ms))}


def _log_span(data: Path, participant: str) -> tuple[float, float, dict[str, Any]]:
    from experiment.log.eventlog import read_log

    log = read_log(next((data / "sourcedata" / f"sub-{participant}").glob("*/log.jsonl")))
    t0 = next(r["t"] for r in log.records if r["kind"] == "t0")
    end = next(r for r in log.records if r["kind"] == "end")
    frames = [r for r in log.records if r["kind"] == "frames"][-1]
    return float(t0), float(end["t"]), {"end": end["status"], "frames_record": frames}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--child"]:
        return child(Path(argv[1]), argv[3:])
    if argv[:1] == ["--serve"]:
        return serve(Path(argv[1]), Path(argv[2]), Path(argv[3]))
    p = argparse.ArgumentParser(prog="python -m benchmarks.station", description=__doc__.split("\n")[0])
    p.add_argument("--pairs", type=int, default=2)
    p.add_argument("--protocol", type=Path, default=ROOT / "protocols" / "demo.yaml")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = p.parse_args(argv)
    from experiment.clock import RealClock
    from experiment.protocol.model import load_protocol

    scan = load_protocol(args.protocol).scan
    timeout_s = (scan.n_volumes + scan.discard_pulses) * scan.tr_s + 120
    clock = RealClock()
    results: dict[str, Any] = {"command": "python -m benchmarks.station " + " ".join(argv), "machine": machine_info(),
                               "protocol": str(args.protocol.resolve().relative_to(ROOT)), "blocks": [],
                               "load_average_at_start": load_average()}
    start = clock.now()
    with tempfile.TemporaryDirectory(prefix="cuedpain-bench-station-") as tmp, virtual_display(clock) as display:
        work = Path(tmp)
        env = {**os.environ, "DISPLAY": display["display"], "PYTHONPATH": str(ROOT)}
        results["display"] = display
        pooled: dict[str, list[float]] = {"off": [], "on": []}
        frame_ms = 1000 / 60
        for k, cond in enumerate(block_order(args.pairs)):
            participant, data, out = f"BENCH{k}", work / "data-dryrun", work / f"flips-{k}.json"
            print(f"[bench] 7 station {cond}: block {k + 1} of {2 * args.pairs}", flush=True)
            load = load_average()
            follower = (run_on(args.protocol, participant, data, out, env, timeout_s, work) if cond == "on" else
                        run_off(args.protocol, participant, data, out, env, timeout_s))
            flips = json.loads(out.read_text())
            t0, t_end, facts = _log_span(data, participant)
            iv = intervals_ms(flips["flips"], t0, t_end)
            pooled[cond] += iv
            results["blocks"].append({"condition": cond, "exit_code": flips["exit_code"], "follower": follower,
                                      "load_average_before": load, **facts, "frames": summarize(iv, frame_ms)})
        results["off"] = summarize(pooled["off"], frame_ms)
        results["on"] = summarize(pooled["on"], frame_ms)
        results["p99_ratio"] = results["on"]["p99_ms"] / results["off"]["p99_ms"]
        results["longest_ratio"] = results["on"]["max_ms"] / results["off"]["max_ms"]
    results["wall_s"] = round(clock.now() - start, 1)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "station.json").write_text(json.dumps(results, indent=1) + "\n")
    (args.out / "station.md").write_text(render(results))
    print(render(results), flush=True)
    return 0


def render(r: dict[str, Any]) -> str:
    """The results as a small markdown table. Pure."""
    def row(name: str, s: dict[str, Any]) -> str:
        return (f"| {name} | {s['n']} | {s['median_ms']:.2f} | {s['p99_ms']:.2f} | {s['max_ms']:.2f} | "
                f"{s['over_1_5_frames']} |")

    followers = sorted({b["follower"].split(";")[0] for b in r["blocks"] if b["condition"] == "on"})
    lines = ["# Benchmark 8: frame intervals with and without the station following the run", "",
             f"Command: `{r['command']}`; protocol `{r['protocol']}`; {len(r['blocks'])} real-time dry runs in "
             f"the order {', '.join(b['condition'] for b in r['blocks'])}; total {r['wall_s'] / 60:.1f} min.",
             f"On: started from `cuedpain station --dry-run`, followed by {', '.join(followers)}.", "",
             "| condition | intervals | median ms | p99 ms | longest ms | over 1.5 frames |", "|---|---|---|---|---|---|",
             row("without the station", r["off"]), row("with the station", r["on"]), "",
             f"p99 ratio (with / without): **{r['p99_ratio']:.3f}** (goal <= 1.01); longest frame ratio: "
             f"**{r['longest_ratio']:.2f}** (goal: no growth).", "", "Per block:", "",
             "| # | condition | p99 ms | longest ms | over 1.5 frames | runner's dropped | load before |",
             "|---|---|---|---|---|---|---|"]
    for k, b in enumerate(r["blocks"], start=1):
        f = b["frames"]
        lines.append(f"| {k} | {b['condition']} | {f['p99_ms']:.2f} | {f['max_ms']:.2f} | {f['over_1_5_frames']} | "
                     f"{b['frames_record'].get('dropped')} | {' / '.join(str(x) for x in b['load_average_before'])} |")
    m = r["machine"]
    lines += ["", f"Machine: {m.get('cpu_count')} CPUs ({m.get('cpu_model')}), {m.get('platform')}, Python {m.get('python')}; "
                  f"display {r['display'].get('display')} ({r['display'].get('kind', 'Xvfb')})", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
