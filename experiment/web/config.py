"""The station's settings and its two tokens."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from pathlib import Path

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def new_token() -> str:
    """A random token (192 bits) for the station's URL."""
    return secrets.token_urlsafe(24)


@dataclass(frozen=True)
class StationConfig:
    """What one station serves; fixed for its lifetime (a dry-run station never becomes real)."""

    data: Path
    rig: Path | None = None
    dry_run: bool = False
    headless: bool = False                  # dry runs only: every step on a virtual clock (tests, rehearsal)
    plans_dir: Path = Path("visits")
    protocols_dir: Path = Path("protocols")
    host: str = "127.0.0.1"
    port: int = 8765
    token: str = field(default_factory=new_token)          # control: every page, stream and action
    watch_token: str = field(default_factory=new_token)    # watch: the page and the stream, no actions
    child_command: tuple[str, ...] | None = None           # None: this interpreter's `-m experiment`
    poll_s: float = 0.5                                      # how often the stream reads the logs (2 Hz)

    @property
    def origin_hosts(self) -> tuple[str, ...]:
        """Host header values this station answers to (DNS-rebinding guard)."""
        names = LOOPBACK if self.host in LOOPBACK else (self.host,)
        return tuple(f"[{n}]:{self.port}" if ":" in n else f"{n}:{self.port}" for n in names)

    def url(self, token: str) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/?token={token}"
