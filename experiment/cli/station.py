"""`cuedpain station [--rig FILE] [--data DIR] [--port N] [--no-browser]`: the operator station."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from experiment.cli import options
from experiment.cli.options import Subparsers

if TYPE_CHECKING:
    import socket

    from experiment.web.config import StationConfig


def add_parser(sub: Subparsers) -> None:
    p = sub.add_parser("station", help="the operator station: a local web page to run a visit (opens the browser)")
    p.add_argument("--rig", metavar="FILE", help="rig file (site hardware) every step uses")
    options.data(p)
    p.add_argument("--dry-run", action="store_true", help="a rehearsal station: every step with simulated devices")
    p.add_argument("--headless", action="store_true", help="dry runs only: every step on a virtual clock, no window")
    p.add_argument("--port", metavar="N", type=int, default=8765, help="TCP port (default 8765; 0: any free port)")
    p.add_argument("--host", metavar="ADDR", default="127.0.0.1",
                   help="address to serve on (default 127.0.0.1, this computer only); another address makes the "
                        "station reachable from the network (a warning is printed)")
    p.add_argument("--no-browser", action="store_true", help="do not open the browser (print the address only)")
    p.add_argument("--plans", metavar="DIR", default="visits", help="where the visit plans are (default visits)")
    p.add_argument("--protocols", metavar="DIR", default="protocols",
                   help="where the protocols are, for a single run (default protocols)")


def command(args: argparse.Namespace) -> int:
    """Serves until Ctrl-C (exit 0); 2 bad input; steps it started go on after it ends."""
    import socket
    import webbrowser

    from experiment.errors import InputError
    from experiment.outputs.dataset import check_root, default_root
    from experiment.procedures.run.preflight import mode_of
    from experiment.protocol.rig import load_rig
    from experiment.web.config import LOOPBACK, StationConfig

    mode_of(dry_run=args.dry_run, headless=args.headless)
    load_rig(options.path(args.rig))
    data = options.path(args.data) or default_root(dry_run=args.dry_run)
    check_root(data, dry_run=args.dry_run)
    if not 0 <= args.port <= 65535:
        raise InputError(f"--port must be 0-65535, got {args.port}")
    family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((args.host, args.port))
    except OSError as exc:
        sock.close()
        raise InputError(f"cannot serve on {args.host}:{args.port} ({exc.strerror or exc}); is another station "
                         "running? use another --port") from None
    config = StationConfig(data=data, rig=options.path(args.rig), dry_run=args.dry_run, headless=args.headless,
                           plans_dir=Path(args.plans), protocols_dir=Path(args.protocols), host=args.host,
                           port=sock.getsockname()[1])
    return _serve(config, sock, open_browser=not args.no_browser, remote=args.host not in LOOPBACK,
                  opener=webbrowser.open)


def _serve(config: StationConfig, sock: socket.socket, *, open_browser: bool, remote: bool,
           opener: Callable[[str], object]) -> int:
    import uvicorn

    from experiment.web.app import create_app

    kind = "DRY RUN station (simulated devices only)" if config.dry_run else "REAL station"
    say = sys.stdout.write
    say(f"cuedpain station: {kind}; data in {config.data}\n")
    if remote:
        say(f"WARNING: serving on {config.host}: anyone on the network who has the address with its token can "
            "start and stop steps. Use 127.0.0.1 unless you need a second computer, and only on a trusted network\n")
    say(f"station: {config.url(config.token)}\n")
    say(f"watch (read-only, for a second screen): {config.url(config.watch_token)}\n")
    say("Ctrl-C stops the station; a step that is running goes on, and a new station follows it again\n")
    sys.stdout.flush()
    sock.listen(16)
    server = uvicorn.Server(uvicorn.Config(create_app(config), log_level="warning", access_log=False,
                                           timeout_graceful_shutdown=2))
    if open_browser:
        opener(config.url(config.token))
    server.run(sockets=[sock])
    return 0
