"""The station's web app: the page, its JSON, the live stream and the three actions.

Security (docs/station.md): every request needs the station's token, from the URL it
opened (`?token=`) or the `X-Cuedpain-Token` header, or gets 403; the watch token opens
the page and the stream without controls. Start, abort, discard and the choice of the
visit are POST requests whose token must be in the header (a page of another site can
neither read the token nor set that header), with an Origin, when sent, of this station;
a GET to them is refused (405). The Host header must name this station (no DNS
rebinding). Responses are not cached and send no referrer.

State: nothing about the visit is kept in memory. The checklist is derived from the
disk on every request (experiment/procedures/visit/state.py); the step being run is the
station's state file (`sourcedata/station/active.json`); the chosen visit is
`sourcedata/station/selection.json`. A restarted station therefore shows the same page
and follows a step still running.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import sys
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable, MutableMapping

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
from sse_starlette.sse import EventSourceResponse
from starlette.staticfiles import StaticFiles

from experiment.errors import CuedpainError
from experiment.procedures.visit.commands import Context, row_argv
from experiment.procedures.visit.listing import read_listing, station_dir
from experiment.procedures.visit.procedure import tasks_of
from experiment.procedures.visit.state import Active, Row, RowState, expand, visit_state
from experiment.protocol.visit import RunsStep, Visit, load_visit
from experiment.web.blocks import Where, block
from experiment.web.children import ActiveStep, Children, console_tail, find_logs, load_active, replace_file
from experiment.web.config import StationConfig
from experiment.web.follow import LiveViews, StepRecords, Tail, trace_points

STATIC = Path(__file__).resolve().parent / "static"
TOKEN_HEADER = "x-cuedpain-token"
STATE_EVERY_S = 2.0      # how often a stream re-derives the checklist from disk
LIVE_EVERY_S = 1.0       # a live event with only new samples and the clock's countdown: at most this often
Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
SECURITY_HEADERS = [(b"cache-control", b"no-store"), (b"referrer-policy", b"no-referrer"),
                    (b"x-frame-options", b"DENY"), (b"x-content-type-options", b"nosniff"),
                    (b"content-security-policy", b"default-src 'self'; img-src 'self' data:; "
                                                  b"style-src 'self'; script-src 'self'; frame-ancestors 'none'")]


# ---------------------------------------------------------------- who may do what (pure)

def authorize(*, method: str, query_token: str | None, header_token: str | None, host: str | None,
              origin: str | None, config: StationConfig) -> tuple[int, str]:
    """(status, role or reason): 200 with 'control' or 'watch', else 403 and why."""
    if host not in config.origin_hosts:
        return 403, "unknown host"
    token = header_token or query_token
    role = None
    if token is not None:
        if secrets.compare_digest(token.encode(), config.token.encode()):
            role = "control"
        elif secrets.compare_digest(token.encode(), config.watch_token.encode()):
            role = "watch"
    if role is None:
        return 403, "no valid token"
    if method not in ("GET", "HEAD"):
        if role != "control":
            return 403, "the watch page has no controls"
        if header_token is None:
            return 403, "actions need the token in the X-Cuedpain-Token header"
        if origin is not None and origin not in tuple(f"http://{h}" for h in config.origin_hosts):
            return 403, "another origin"
    return 200, role


class Guard:
    """ASGI middleware: `authorize` before anything else, security headers on every response."""

    def __init__(self, app: ASGIApp, config: StationConfig) -> None:
        self.app, self.config = app, config

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        from urllib.parse import parse_qs

        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        status, role = authorize(method=scope["method"], query_token=(query.get("token") or [None])[0],
                                 header_token=headers.get(TOKEN_HEADER), host=headers.get("host"),
                                 origin=headers.get("origin"), config=self.config)

        async def send_secure(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = list(message.get("headers", [])) + SECURITY_HEADERS
            await send(message)

        if status != 200:
            body = f"403 Forbidden: {role}\n".encode()
            await send_secure({"type": "http.response.start", "status": 403,
                               "headers": [(b"content-type", b"text/plain; charset=utf-8"),
                                           (b"content-length", str(len(body)).encode())]})
            await send({"type": "http.response.body", "body": body})
            return
        scope.setdefault("state", {})["role"] = role
        await self.app(scope, receive, send_secure)


# ---------------------------------------------------------------- the station's state (from disk)

@dataclass(frozen=True)
class Selection:
    participant: str
    session: str | None
    plan: str                      # a visit plan, or a single protocol


class Station:
    """The station's view of the disk and its child processes (one per app; no global state)."""

    def __init__(self, config: StationConfig) -> None:
        self.config = config
        self.children = Children(config.data, command=config.child_command)
        self._visits: dict[tuple[str, float], tuple[Visit, tuple[Row, ...]]] = {}
        self._offered: dict[tuple[Path, str], tuple[tuple[int, int], bool]] = {}

    # -- the chosen visit
    def selection(self) -> Selection | None:
        try:
            doc = json.loads((station_dir(self.config.data) / "selection.json").read_text(encoding="utf-8"))
            return Selection(str(doc["participant"]), doc.get("session") or None, str(doc["plan"]))
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def select(self, sel: Selection) -> None:
        from experiment.protocol.identifiers import check_label

        check_label(sel.participant, "participant")
        if sel.session is not None:
            check_label(sel.session, "session")
        self.visit(sel.plan)   # refuses a bad plan
        d = station_dir(self.config.data)
        d.mkdir(parents=True, exist_ok=True)
        replace_file(d / "selection.json", json.dumps(
            {"participant": sel.participant, "session": sel.session, "plan": sel.plan}) + "\n")

    def choices(self) -> dict[str, list[str]]:
        """The plans and protocols offered (YAML files of those folders with the format's own top-level key).

        A file is read again only when its size or time changed (the live stream asks every 2 s)."""
        def having(d: Path, key: str) -> list[str]:
            if not d.is_dir():
                return []
            out = []
            for p in sorted(d.glob("*.yaml")):
                try:
                    st = p.stat()
                    stamp = (st.st_size, st.st_mtime_ns)
                    found = self._offered.get((p, key))
                    if found is None or found[0] != stamp:
                        text = p.read_text(encoding="utf-8")
                        found = self._offered[(p, key)] = (stamp, any(line.startswith(key)
                                                                      for line in text.splitlines()))
                except (OSError, UnicodeDecodeError):
                    continue
                if found[1]:
                    out.append(str(p))
            return out

        return {"plans": having(self.config.plans_dir, "steps:"),
                "protocols": having(self.config.protocols_dir, "trial_types:")}

    def visit(self, plan: str) -> tuple[Visit, tuple[Row, ...]]:
        """The plan (or a single protocol as a one-run visit), loaded once per file version."""
        path = Path(plan)
        try:
            stamp = path.stat().st_mtime
        except OSError:
            raise CuedpainError(f"{plan}: not found") from None
        cached = self._visits.get((plan, stamp))
        if cached is not None:
            return cached
        try:
            visit = load_visit(path)
        except CuedpainError:
            from experiment.protocol.model import load_protocol

            protocol = load_protocol(path)   # not a plan: a single protocol, one run
            visit = Visit(name=f"one run of {protocol.name}", description="",
                          steps=(RunsStep(protocol=str(path), protocol_path=path, count=1, instructions=None),),
                          path=path.with_name(f"protocol-{path.stem}.yaml"))
        loaded = (visit, expand(visit, tasks_of(visit)))
        self._visits[(plan, stamp)] = loaded
        return loaded

    def ctx(self, sel: Selection) -> Context:
        c = self.config
        return Context(participant=sel.participant, session=sel.session, data=c.data, rig=c.rig, dry_run=c.dry_run,
                       headless=c.headless, yes=True, confirmed_by="station")

    def active(self) -> ActiveStep | None:
        self.children.reap()
        return load_active(self.config.data)

    def rows(self, sel: Selection) -> tuple[Visit, tuple[RowState, ...]]:
        visit, rows = self.visit(sel.plan)
        listing = read_listing(self.config.data, sel.participant, sel.session, visit.label)
        a = self.active()
        mine = a is not None and (a.participant, a.session, a.visit) == (sel.participant, sel.session, visit.label)
        listing = replace(listing, active=Active(a.key, a.pid, a.alive, a.started) if a is not None and mine else None)
        return visit, visit_state(rows, listing, session=sel.session)

    def where(self, sel: Selection) -> Where:
        c = self.config
        return Where(sel.participant, sel.session, c.data, c.rig, c.dry_run, c.headless)

    # -- the page's JSON
    def state_doc(self, role: str) -> dict[str, Any]:
        c = self.config
        doc: dict[str, Any] = {"station": {"dry_run": c.dry_run, "headless": c.headless, "data": str(c.data),
                                           "rig": None if c.rig is None else str(c.rig), "role": role},
                               "choices": self.choices(), "selection": None, "rows": [], "visit": None,
                               "error": None, "active": None, "rig_ports_missing": self._ports_missing()}
        a = self.active()
        if a is not None:
            doc["active"] = {**a.as_dict(), "alive": a.alive}
        sel = self.selection()
        if sel is None:
            return doc
        doc["selection"] = {"participant": sel.participant, "session": sel.session, "plan": sel.plan}
        try:
            visit, rows = self.rows(sel)
        except CuedpainError as exc:
            doc["error"] = exc.message
            return doc
        doc["visit"] = {"name": visit.name, "label": visit.label, "description": visit.description}
        doc["rows"] = [_row_doc(s, c.data) for s in rows]
        return doc

    def _ports_missing(self) -> bool:
        if self.config.dry_run:
            return False
        from experiment.protocol.rig import load_rig

        try:
            rig = load_rig(self.config.rig)
        except CuedpainError:
            return True
        return rig.cuff is None or rig.scanner is None

    # -- actions
    def start(self, sel: Selection, key: str, pressure_kpa: float | None) -> ActiveStep:
        a = self.active()
        if a is not None and a.alive:
            raise CuedpainError(f"'{a.title}' is still running (pid {a.pid}); wait for it or abort it")
        visit, rows = self.rows(sel)
        state = next((s for s in rows if s.row.key == key), None)
        if state is None:
            raise CuedpainError(f"no step {key!r} in this visit")
        again = state.row.kind == "scanner_check" and state.state == "done" and pressure_kpa is not None
        if state.state != "next" and not again:
            raise CuedpainError(f"'{state.row.title}' is {state.state}; the next step is started in order")
        from experiment.procedures.visit.listing import begin_visit

        begin_visit(self.config.data, sel.participant, sel.session, visit.label, plan=visit.path or Path(sel.plan),
                    plan_sha256=visit.sha256)
        args = row_argv(visit, state.row, self.ctx(sel), pressure_kpa=pressure_kpa)
        return self.children.launch(args, key=key, kind=state.row.kind, title=state.row.title,
                                    participant=sel.participant, session=sel.session, visit=visit.label)

    def discard(self, run_dir: str, reason: str) -> tuple[int, str]:
        root = self.config.data.resolve()
        path = Path(run_dir).resolve()
        if not path.is_relative_to(root / "sourcedata") or not (path / "log.jsonl").is_file():
            raise CuedpainError(f"{run_dir} is not a run directory of this station's data root")
        return self.children.run_quick(["discard", str(path), "--reason", reason])


def _row_doc(s: RowState, data: Path) -> dict[str, Any]:
    r = s.row
    evidence = s.evidence
    report = None
    if r.kind == "run" and evidence and (Path(evidence) / "report.html").is_file():
        report = "/files/" + str(Path(evidence, "report.html").resolve().relative_to(data.resolve()))
    return {"key": r.key, "kind": r.kind, "title": r.title, "state": s.state, "detail": s.detail,
            "evidence": evidence, "instructions": list(r.instructions), "report": report,
            "reader": "participant" if r.kind in ("run", "scanner_check") else "operator",
            "tries": [{"run_dir": t.run_dir, "run": t.run, "status": t.status, "reason": t.reason,
                       "attempt": t.attempt, "discarded": t.discarded} for t in s.tries]}


# ---------------------------------------------------------------- following the active step

def _lower_this_thread(nice: int = 10) -> None:
    """Give the thread that follows the logs a lower priority than the run it follows (Linux: per thread).

    Only the worker threads of the live streams; steps are started from the event loop's
    thread, so they keep the normal priority (a priority once lowered cannot be raised back
    without privileges)."""
    if not hasattr(os, "setpriority") or not sys.platform.startswith("linux"):
        return
    try:
        tid = threading.get_native_id()
        if os.getpriority(os.PRIO_PROCESS, tid) < nice:
            os.setpriority(os.PRIO_PROCESS, tid, nice)
    except OSError:
        pass


class Follower:
    """One stream's view of the active step: its logs read as they grow, deltas out.

    Cheap, since it shares the computer with the run it follows: the logs are read from the
    last offset (`Tail`), the live view is recomputed over all records only when the event log
    grew (`LiveViews`), the console file is read again only when it changed, every event is
    JSON-encoded once, and an event equal to the last one of its kind is not sent (a step
    that ended sends nothing more until something changes)."""

    def __init__(self, station: Station) -> None:
        self.station = station
        self.step: ActiveStep | None = None
        self.records = StepRecords()
        self.tails: tuple[Tail, Tail | None] | None = None
        self.sent = 0
        self.origin: float | None = None
        self.seen: tuple[float, float] | None = None     # (latest step-clock time, monotonic when first seen)
        self.last_state = ""
        self.last_state_t = 0.0
        self.last_alive: bool | None = None
        self.last_live = ""
        self.last_live_t = 0.0
        self.last_news: tuple[Any, ...] = ()
        self.views = LiveViews()
        self.console: tuple[str, int, int, list[str]] | None = None   # (path, size, mtime_ns, its tail)

    def _console(self, step: ActiveStep) -> list[str]:
        """The step's console tail, read again only when the file changed."""
        try:
            st = os.stat(step.console)
        except OSError:
            return []
        c = self.console
        if c is None or (c[0], c[1], c[2]) != (step.console, st.st_size, st.st_mtime_ns):
            c = self.console = (step.console, st.st_size, st.st_mtime_ns, console_tail(step))
        return c[3]

    def _task(self, step: ActiveStep) -> str | None:
        sel = self.station.selection()
        if sel is None or step.kind != "run":
            return None
        _, rows = self.station.visit(sel.plan)
        return next((r.task for r in rows if r.key == step.key), None)

    def poll(self, role: str) -> list[tuple[str, str]]:
        """The events to send now: (name, JSON text)."""
        _lower_this_thread()
        out: list[tuple[str, str]] = []
        now = time.monotonic()
        current = self.station.active()
        alive = None if current is None else current.alive
        if now - self.last_state_t >= STATE_EVERY_S or alive != self.last_alive:   # a step ended: say so at once
            self.last_alive = alive
            self.last_state_t = now
            doc = json.dumps(self.station.state_doc(role), sort_keys=True)
            if doc != self.last_state:
                self.last_state = doc
                out.append(("state", doc))
        step = current
        if step is None:
            return out
        reset = self.step is None or (step.pid, step.started) != (self.step.pid, self.step.started)
        if reset:
            self.step, self.records, self.tails, self.sent, self.origin, self.seen = step, StepRecords(), None, 0, \
                None, None
            self.views = LiveViews()
        if self.tails is None:
            try:
                found = find_logs(self.station.config.data, step, task=self._task(step))
            except CuedpainError:
                found = None
            if found is not None:
                log, pressure = found
                self.tails = (Tail(log), None if pressure is None else Tail(pressure))
        if self.tails is not None:
            events, ptail = self.tails
            self.records.add(events.read(), [] if ptail is None else ptail.read())
        alive = bool(alive)
        last_t = self.records.last_t
        if last_t is not None and (self.seen is None or last_t > self.seen[0]):
            self.seen = (last_t, now)
        now_t = None if self.seen is None else (self.seen[0] + (now - self.seen[1]) if alive else self.seen[0])
        view = self.views.view(self.records, now_t=now_t)
        if self.origin is None and (view.get("t0") is not None or self.records.samples):
            self.origin = view["t0"] if view.get("t0") is not None else float(self.records.samples[0]["t"])
        if view.get("t0") is not None and self.origin != view["t0"]:
            self.origin, self.sent, reset = view["t0"], 0, True
        # news (a new step, its process ended, its logs found, a phase, a trial, a warning, the end) goes out
        # at once; new samples, pulses and the countdown wait for LIVE_EVERY_S: the page draws at most once a second
        news = (reset, alive, step.pid, step.started, self.tails is None, view.get("phase_label"), view.get("trial"),
                view.get("stimulus"), len(view.get("warnings") or ()), view.get("end") is not None)
        if news == self.last_news and now - self.last_live_t < LIVE_EVERY_S - 0.05:
            return out
        points = trace_points(self.records.samples[self.sent:], self.origin or 0.0)
        self.sent = len(self.records.samples)
        live = json.dumps({"reset": reset, "step": {**step.as_dict(), "alive": alive}, "view": view,
                           "points": points, "console": self._console(step),
                           "log": None if self.tails is None else str(self.tails[0].path)})
        if live != self.last_live:
            self.last_live, self.last_live_t, self.last_news = live, now, news
            out.append(("live", live))
        return out


# ---------------------------------------------------------------- the app

def create_app(config: StationConfig) -> ASGIApp:
    """The station's ASGI app behind its guard."""
    station = Station(config)
    app = FastAPI(title="cuedpain station", docs_url=None, redoc_url=None, openapi_url=None)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    def role_of(request: Request) -> str:
        return str(getattr(request.state, "role", "watch"))

    def fail(exc: CuedpainError) -> HTTPException:
        return HTTPException(status_code=409, detail=exc.message)

    @app.get("/", response_class=HTMLResponse)
    def index(request: Request) -> HTMLResponse:
        token = config.token if role_of(request) == "control" else config.watch_token   # the one the guard checked
        return HTMLResponse((STATIC / "index.html").read_text(encoding="utf-8").replace("__TOKEN__", token))

    @app.get("/api/state")
    def state(request: Request) -> JSONResponse:
        return JSONResponse(station.state_doc(role_of(request)))

    @app.get("/api/block")
    def get_block(key: str, pressure_kpa: float | None = None) -> JSONResponse:
        sel = station.selection()
        if sel is None:
            raise HTTPException(status_code=409, detail="choose a participant and a visit first")
        try:
            visit, rows = station.rows(sel)
        except CuedpainError as exc:
            raise fail(exc) from None
        row = next((s.row for s in rows if s.row.key == key), None)
        if row is None:
            raise HTTPException(status_code=404, detail=f"no step {key!r}")
        doc = block(visit, row, station.where(sel), pressure_kpa=pressure_kpa)
        doc["command"] = "cuedpain " + " ".join(row_argv(visit, row, station.ctx(sel), pressure_kpa=pressure_kpa))
        return JSONResponse(doc)

    @app.get("/api/ports")
    def ports() -> JSONResponse:
        from experiment.station.ports import list_ports

        return JSONResponse([p.as_dict() for p in list_ports()])

    @app.post("/api/select")
    async def select(request: Request) -> JSONResponse:
        body = await request.json()
        sel = Selection(str(body.get("participant") or "").strip(), (str(body.get("session") or "").strip() or None),
                        str(body.get("plan") or ""))
        try:
            station.select(sel)
        except CuedpainError as exc:
            raise fail(exc) from None
        return JSONResponse(station.state_doc(role_of(request)))

    @app.post("/api/start")
    async def start(request: Request) -> JSONResponse:
        body = await request.json()
        sel = station.selection()
        if sel is None:
            raise HTTPException(status_code=409, detail="choose a participant and a visit first")
        pressure = body.get("pressure_kpa")
        try:
            step = station.start(sel, str(body.get("key")), None if pressure in (None, "") else float(pressure))
        except CuedpainError as exc:
            raise fail(exc) from None
        return JSONResponse({"started": step.as_dict()})

    @app.post("/api/abort")
    def abort() -> JSONResponse:
        a = station.active()
        if a is None or not station.children.abort(a):
            raise HTTPException(status_code=409, detail="no step is running")
        return JSONResponse({"aborted": a.key, "signal": "SIGINT"})

    @app.post("/api/discard")
    async def discard(request: Request) -> JSONResponse:
        body = await request.json()
        reason = str(body.get("reason") or "").strip()
        if not reason:
            raise HTTPException(status_code=409, detail="say why the run is discarded")
        try:
            code, text = station.discard(str(body.get("run_dir") or ""), reason)
        except CuedpainError as exc:
            raise fail(exc) from None
        if code != 0:
            raise HTTPException(status_code=409, detail=text)
        return JSONResponse({"discarded": body.get("run_dir"), "output": text})

    @app.get("/files/{path:path}")
    def files(path: str) -> FileResponse:
        root = config.data.resolve()
        target = (root / path).resolve()
        if not target.is_relative_to(root) or not target.is_file() or target.name != "report.html":
            raise HTTPException(status_code=404, detail="not found")
        return FileResponse(target)

    @app.get("/api/stream")
    async def stream(request: Request) -> EventSourceResponse:
        role = role_of(request)
        follower = Follower(station)

        async def events() -> AsyncIterator[dict[str, str]]:
            while not await request.is_disconnected():
                for name, data in await asyncio.to_thread(follower.poll, role):
                    yield {"event": name, "data": data}
                await asyncio.sleep(config.poll_s)

        return EventSourceResponse(events(), ping=10)

    return Guard(app, config)
