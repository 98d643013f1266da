"""Benchmark 8: does the operator station disturb the run it follows?

    python -m benchmarks.station [--pairs 2] [--protocol protocols/demo.yaml] [--out DIR]
    python -m benchmarks.station --cpu-only [--blocks 1] [--protocol protocols/demo.yaml] [--out DIR]

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

CPU, which does not need a quiet machine: every 'on' block also reports the CPU seconds
(utime + stime from /proc/PID/stat, all threads) per minute of run that the station's own
process, the browser (chromium and every process under it) and the run itself used, from
the Start button's POST to the end of the run. `--cpu-only` runs only 'on' blocks (default
one) and writes DIR/station-cpu.json and DIR/station-cpu.md (Linux only).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

from benchmarks.machine import ROOT, load_average, machine_info
from benchmarks.stalls import StallProbe, attribute_drops, drops_from_flips, longest_without_steal
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


GROUPS = ("station", "browser", "driver", "run", "display")


class CpuMeter:
    """CPU seconds used by the station, the browser and the run while it is followed (Linux /proc).

    Samples every process under this one every `every_s`: the station's process itself
    ('station'; not its children), chromium and everything under it ('browser'), the
    station's children ('run': the step and its simulated devices), the benchmark's Xvfb
    ('display': it draws the run's window, with or without the station), the rest ('driver':
    Playwright's node process). A process's CPU is its last sample minus its value at
    `start` (0 for a process begun later), so one that ends between two samples loses at most
    `every_s` of CPU."""

    def __init__(self, station_pid: int, every_s: float = 0.5) -> None:
        self.station_pid, self.every_s = station_pid, every_s
        self.tick = os.sysconf("SC_CLK_TCK")
        self.first: dict[tuple[int, int], tuple[str, float]] = {}
        self.last: dict[tuple[int, int], tuple[str, float]] = {}
        self.names: dict[tuple[int, int], str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="bench-cpu", daemon=True)
        self.t_start = self.t_end = 0.0

    @staticmethod
    def _stat(pid: int) -> tuple[int, int, int] | None:
        """(ppid, utime + stime ticks, start ticks) of a process, or None."""
        try:
            with open(f"/proc/{pid}/stat", "rb") as fh:
                f = fh.read().rsplit(b")", 1)[1].split()
            return int(f[1]), int(f[11]) + int(f[12]), int(f[19])
        except (OSError, IndexError, ValueError):
            return None

    @staticmethod
    def _is_chromium(pid: int) -> bool:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                return b"chromium" in fh.read().split(b"\0", 1)[0]
        except OSError:
            return False

    @staticmethod
    def _comm(pid: int) -> str:
        """The process's name, and its --type= for chromium's processes (renderer, gpu-process, ...)."""
        try:
            with open(f"/proc/{pid}/comm", encoding="utf-8", errors="replace") as fh:
                name = fh.read().strip()
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                args = fh.read().replace(b" ", b"\0").split(b"\0")
            kind = next((a[7:].decode() for a in args if a.startswith(b"--type=")), "")
            kind += " (chromium's own UI)" if b"--top-chrome-webui" in args else ""
            return f"{name} {kind}".strip()
        except OSError:
            return "?"

    @staticmethod
    def _is_display(pid: int) -> bool:
        try:
            with open(f"/proc/{pid}/comm", "rb") as fh:
                return fh.read().startswith(b"Xvfb")
        except OSError:
            return False

    def sample(self) -> None:
        stats: dict[int, tuple[int, int, int]] = {}
        for name in os.listdir("/proc"):
            if name.isdigit() and (st := self._stat(int(name))) is not None:
                stats[int(name)] = st
        me = os.getpid()
        group: dict[int, str] = {}

        def group_of(pid: int) -> str | None:
            """'me' for this process, '-' for one not under it, else its group (memoized in `group`)."""
            chain, p = [], pid
            while p not in group and p in stats and p not in (me, 0, 1):
                chain.append(p)
                p = stats[p][0]
            found = group.get(p, "me" if p == me else "-")
            for q in reversed(chain):           # from the top of the chain down to pid
                if found == "-":
                    pass
                elif q == self.station_pid:
                    found = "station"
                elif found == "station":
                    found = "run"
                elif found in ("me", "driver") and self._is_chromium(q):
                    found = "browser"
                elif found == "me" and self._is_display(q):
                    found = "display"
                elif found == "me":
                    found = "driver"
                group[q] = found
            g = group.get(pid)
            return g if g in GROUPS else None

        for pid, (_, ticks, started) in stats.items():
            g = group_of(pid)
            if g:
                key = (pid, started)
                if key not in self.first:
                    self.first[key] = (g, ticks / self.tick)
                    self.names[key] = self._comm(pid)
                self.last[key] = (g, ticks / self.tick)

    def _loop(self) -> None:
        while not self._stop.wait(self.every_s):
            self.sample()

    def start(self) -> None:
        self.sample()
        self.baseline = set(self.first)
        self.t_start = time.monotonic()
        self._thread.start()

    def stop(self) -> dict[str, Any]:
        """CPU seconds per group and per minute of the measured span."""
        self._stop.set()
        self._thread.join(5)
        self.sample()
        self.t_end = time.monotonic()
        span = self.t_end - self.t_start
        used: dict[str, float] = {}
        top: list[tuple[float, str, str]] = []
        for key, (g, cpu) in self.last.items():
            before = self.first[key][1] if key in self.baseline else 0.0
            used[g] = used.get(g, 0.0) + cpu - before
            top.append((round(cpu - before, 2), g, self.names.get(key, "?")))
        return {"span_s": round(span, 1), "top": [list(x) for x in sorted(top, reverse=True)[:12]],
                "cpu_s": {g: round(used.get(g, 0.0), 2) for g in GROUPS},
                "cpu_s_per_min": {g: round(60 * used.get(g, 0.0) / span, 2) for g in GROUPS}}


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
           work: Path) -> tuple[str, dict[str, Any]]:
    """The run started from a station that follows it, its page open in a browser: who followed, and the
    CPU the station, the browser and the run used from Start to the end of the run (CpuMeter)."""
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
        who, stop = _follow(url, base, token)
        meter = CpuMeter(station.pid)
        try:
            meter.start()
            _post(base, token, "/api/start", {"key": "0-run-1"})
            _wait_file(out, timeout_s)
            cpu = meter.stop()
        finally:
            stop()
        return "; ".join(who) if who else "?", cpu
    finally:
        station.terminate()
        station.wait(20)


CHROMIUM = "/usr/bin/chromium"


def _browser_executable(work: Path) -> tuple[str, str]:
    """The chromium to launch, and how it was launched.

    Run as root (this machine), chromium may raise its own display threads' priority (it
    asks for nice -8) and would then compete with the run, whose nice -10 is barely above;
    an operator's browser runs as a normal user and cannot. So as root chromium is started
    through `setpriv` without CAP_SYS_NICE, as a normal user's would be."""
    setpriv = shutil.which("setpriv")
    if os.geteuid() != 0 or setpriv is None:
        return CHROMIUM, "as this user"
    wrapper = work / "chromium-no-sys-nice"
    wrapper.write_text(f'#!/bin/sh\nexec {setpriv} --bounding-set=-sys_nice {CHROMIUM} "$@"\n')
    wrapper.chmod(0o755)
    return str(wrapper), "as root without CAP_SYS_NICE (setpriv), like a normal user's browser"


def _follow(url: str, base: str, token: str) -> tuple[list[str], Any]:
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
            work = Path(tempfile.mkdtemp(prefix="cuedpain-bench-chromium-"))
            executable, how = _browser_executable(work)
            b = pw.chromium.launch(executable_path=executable, args=ARGS)
            page = b.new_page(viewport={"width": 1280, "height": 1000})
            page.goto(url)
            page.wait_for_selector("#checklist li")
            time.sleep(3)     # chromium starts its own UI's renderer after the page loads: not a cost of following
            who.append(f"chromium on the station's page (live view drawn, started {how})")
            ready.set()
            done.wait()
            who.append(f"{page.evaluate('window.cuedpain.chart.data[0].length')} points received")
            b.close()

    def stream() -> None:
        with urllib.request.urlopen(f"{base}/api/stream?token={token}", timeout=600) as r:
            who.append("an HTTP client reading the live stream")
            ready.set()
            while not done.is_set() and r.readline():
                pass

    use_browser = sync_playwright is not None and Path(CHROMIUM).exists()
    thread = threading.Thread(target=browser if use_browser else stream, daemon=True)
    thread.start()
    ready.wait(60)

    def stop() -> None:
        done.set()
        thread.join(30)

    return who, stop


def intervals_ms(flips: list[float]) -> list[float]:
    """Consecutive flip intervals (ms)."""
    return [1000 * (b - a) for a, b in zip(flips, flips[1:])]


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
    priority = next((r for r in log.records if r["kind"] == "priority"), {})   # by hand and from the station: the same
    return float(t0), float(end["t"]), {"end": end["status"], "frames_record": frames,
                                        "nice": {k: priority.get(k) for k in ("nice_before", "nice", "obtained")}}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--child"]:
        return child(Path(argv[1]), argv[3:])
    if argv[:1] == ["--serve"]:
        return serve(Path(argv[1]), Path(argv[2]), Path(argv[3]))
    p = argparse.ArgumentParser(prog="python -m benchmarks.station", description=__doc__.split("\n")[0])
    p.add_argument("--pairs", type=int, default=2)
    p.add_argument("--cpu-only", action="store_true", help="only 'on' blocks; report the CPU they cost")
    p.add_argument("--blocks", type=int, default=1, help="with --cpu-only: how many 'on' blocks")
    p.add_argument("--protocol", type=Path, default=ROOT / "protocols" / "demo.yaml")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = p.parse_args(argv)
    from experiment.clock import RealClock, psychopy_clock
    from experiment.protocol.model import load_protocol

    scan = load_protocol(args.protocol).scan
    timeout_s = (scan.n_volumes + scan.discard_pulses) * scan.tr_s + 120
    clock, run_clock = RealClock(), psychopy_clock()
    results: dict[str, Any] = {"command": "python -m benchmarks.station " + " ".join(argv), "machine": machine_info(),
                               "protocol": str(args.protocol.resolve().relative_to(ROOT)), "blocks": [],
                               "load_average_at_start": load_average()}
    order = ["on"] * args.blocks if args.cpu_only else block_order(args.pairs)
    start = clock.now()
    with tempfile.TemporaryDirectory(prefix="cuedpain-bench-station-") as tmp, virtual_display(clock) as display:
        work = Path(tmp)
        env = {**os.environ, "DISPLAY": display["display"], "PYTHONPATH": str(ROOT)}
        results["display"] = display
        pooled: dict[str, list[float]] = {"off": [], "on": []}
        frame_ms = 1000 / 60
        for k, cond in enumerate(order):
            participant, data, out = f"BENCH{k}", work / "data-dryrun", work / f"flips-{k}.json"
            print(f"[bench] 8 station {cond}: block {k + 1} of {len(order)}", flush=True)
            load = load_average()
            with StallProbe(None, run_clock) as probe:   # the host's steal, on the flips' clock
                follower, cpu = (run_on(args.protocol, participant, data, out, env, timeout_s, work) if cond == "on"
                                 else (run_off(args.protocol, participant, data, out, env, timeout_s), None))
            flips = json.loads(out.read_text())
            t0, t_end, facts = _log_span(data, participant)
            inside = [t for t in flips["flips"] if t0 <= t <= t_end]   # from t0 to the end of the run
            iv = intervals_ms(inside)
            pooled[cond] += iv
            stalls = attribute_drops(drops_from_flips(inside, frame_ms / 1000), probe.samples, n_cpus=os.cpu_count() or 1)
            clean = longest_without_steal(inside, probe.samples)
            results["blocks"].append({"condition": cond, "exit_code": flips["exit_code"], "follower": follower,
                                      "load_average_before": load, "stalls": stalls, "longest_without_steal_ms": None if clean is None
                                      else round(1000 * clean, 2), **facts, "frames": summarize(iv, frame_ms),
                                      **({} if cpu is None else {"cpu": cpu})})
        for cond in ("off", "on"):
            if pooled[cond]:
                results[cond] = summarize(pooled[cond], frame_ms)
        if not args.cpu_only:
            results["p99_ratio"] = results["on"]["p99_ms"] / results["off"]["p99_ms"]
            results["longest_ratio"] = results["on"]["max_ms"] / results["off"]["max_ms"]
            clean_by = {c: [b["longest_without_steal_ms"] for b in results["blocks"] if b["condition"] == c]
                        for c in ("off", "on")}
            if all(v and None not in v for v in clean_by.values()):
                results["longest_without_steal_ratio"] = max(clean_by["on"]) / max(clean_by["off"])
        results["cpu_s_per_min"] = cpu_mean([b["cpu"] for b in results["blocks"] if "cpu" in b])
    results["wall_s"] = round(clock.now() - start, 1)
    args.out.mkdir(parents=True, exist_ok=True)
    name, text = ("station-cpu", render_cpu(results)) if args.cpu_only else ("station", render(results))
    (args.out / f"{name}.json").write_text(json.dumps(results, indent=1) + "\n")
    (args.out / f"{name}.md").write_text(text)
    print(text, flush=True)
    return 0


def cpu_mean(blocks: list[dict[str, Any]]) -> dict[str, float]:
    """CPU seconds per minute of run over all 'on' blocks (total CPU / total span). Pure."""
    span = sum(b["span_s"] for b in blocks)
    groups = GROUPS
    return {g: round(60 * sum(b["cpu_s"][g] for b in blocks) / span, 2) if span else 0.0 for g in groups}


def _cpu_lines(r: dict[str, Any]) -> list[str]:
    c = r.get("cpu_s_per_min") or {}
    if not c:
        return []
    lines = ["CPU seconds per minute of a followed run (from the Start button's POST to the end of the run; "
             "utime + stime from /proc, all threads):", "",
             "| | station process | browser (chromium, all processes) | Playwright driver | the run (station's children) "
             "| Xvfb |", "|---|---|---|---|---|---|",
             f"| mean | {c['station']:.2f} | {c['browser']:.2f} | {c['driver']:.2f} | {c['run']:.2f} | "
             f"{c['display']:.2f} |"]
    for k, b in enumerate(r["blocks"], start=1):
        if "cpu" in b:
            x = b["cpu"]["cpu_s_per_min"]
            lines.append(f"| block {k} ({b['cpu']['span_s']:.0f} s) | {x['station']:.2f} | {x['browser']:.2f} | "
                         f"{x['driver']:.2f} | {x['run']:.2f} | {x['display']:.2f} |")
    return lines + [""]


def render_cpu(r: dict[str, Any]) -> str:
    """The --cpu-only results as markdown. Pure."""
    followers = sorted({b["follower"].split(";")[0] for b in r["blocks"]})
    m = r["machine"]
    return "\n".join(["# Benchmark 8, CPU only: what following a run costs the station and the browser", "",
                      f"Command: `{r['command']}`; protocol `{r['protocol']}`; {len(r['blocks'])} real-time dry "
                      f"run(s) started from `cuedpain station --dry-run`; total {r['wall_s'] / 60:.1f} min.",
                      f"Followed by: {'; '.join(followers)}.", "", *_cpu_lines(r),
                      f"Machine: {m.get('cpu_count')} CPUs ({m.get('cpu_model')}), {m.get('platform')}, "
                      f"Python {m.get('python')}; display {r['display'].get('display')} "
                      f"({r['display'].get('kind', 'Xvfb')})", ""])


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
             f"**{r['longest_ratio']:.2f}** (goal: no growth)."
             + (f" Longest frame that held no steal by the host (benchmarks/stalls.py), ratio: "
                f"{r['longest_without_steal_ratio']:.2f}." if r.get("longest_without_steal_ratio") else ""),
             "", "Per block:", "",
             "| # | condition | p99 ms | longest ms | over 1.5 frames | runner's dropped | load before "
             "| CPU time stolen by the host | drops that held steal | longest frame without steal ms |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for k, b in enumerate(r["blocks"], start=1):
        f = b["frames"]
        lines.append(f"| {k} | {b['condition']} | {f['p99_ms']:.2f} | {f['max_ms']:.2f} | {f['over_1_5_frames']} | "
                     f"{b['frames_record'].get('dropped')} | {' / '.join(str(x) for x in b['load_average_before'])} | "
                     + (f"{100 * st['steal_share']:.1f} % | {st['with_steal']} of {st['n_drops']}"
                        if (st := b.get("stalls") or {}).get("sampled") else "? | ?") + " | "
                     + ("?" if b.get("longest_without_steal_ms") is None else f"{b['longest_without_steal_ms']:.2f}")
                     + " |")
    m = r["machine"]
    lines += [""] + _cpu_lines(r)
    lines += [f"Machine: {m.get('cpu_count')} CPUs ({m.get('cpu_model')}), {m.get('platform')}, Python {m.get('python')}; "
                  f"display {r['display'].get('display')} ({r['display'].get('kind', 'Xvfb')})", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
