"""Which dataset root a session writes to, and the rule that dry runs and real sessions never mix.

A dataset root (a BIDS dataset) holds either real sessions or rehearsals, never both:
a dry run's simulated ratings and pressures must not sit beside a participant's data,
and a dry-run calibration must not be found by a real run. By default real sessions
write to `data/` and dry runs to `data-dryrun/` (both relative to the working
directory). A root says what it holds in `sourcedata/cuedpain-dataset.json`, written
when the first session starts writing there; a root made before that file existed is
judged by the headers of the logs it holds. `check_root` runs in pre-flight (it writes
nothing); `claim_root` writes the marker when a session starts writing.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

from experiment.errors import InputError
from experiment.outputs.atomic import create_once

REAL_ROOT = Path("data")
DRY_RUN_ROOT = Path("data-dryrun")
MARKER = Path("sourcedata") / "cuedpain-dataset.json"
MARKER_FORMAT = "cuedpain-dataset/1"
_LOG_GLOBS = ("sourcedata/sub-*/**/log.jsonl", "sourcedata/sub-*/calibration/*_log.jsonl")


def default_root(*, dry_run: bool) -> Path:
    """`data-dryrun` for a dry run, `data` for a real session."""
    return DRY_RUN_ROOT if dry_run else REAL_ROOT


def _kind(dry_run: bool) -> str:
    return "dry runs" if dry_run else "real sessions"


def root_holds(root: Path) -> bool | None:
    """True: the root holds dry runs; False: real sessions; None: nothing yet.

    The marker decides; without one, the first log header found (old roots)."""
    marker = Path(root) / MARKER
    if marker.is_file():
        try:
            return bool(json.loads(marker.read_text(encoding="utf-8"))["dry_run"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise InputError(f"{marker} cannot be read ({exc}); it says whether {root} holds real sessions or "
                             "dry runs: restore it or remove it") from None
    for pattern in _LOG_GLOBS:
        for log in sorted(Path(root).glob(pattern)):
            try:
                with open(log, encoding="utf-8") as fh:
                    header = json.loads(fh.readline())
            except (OSError, ValueError):
                continue
            if isinstance(header, dict) and "dry_run" in header:
                return bool(header["dry_run"])
    return None


def check_root(root: Path, *, dry_run: bool) -> None:
    """InputError (exit 2) when `root` holds the other kind of session. Writes nothing."""
    holds = root_holds(root)
    if holds is None or holds == dry_run:
        return
    other = default_root(dry_run=dry_run)
    raise InputError(f"{root} holds {_kind(holds)}; a {'dry run' if dry_run else 'real session'} never writes "
                     f"there (rehearsals and participants' data are kept apart). Use another --data, for example "
                     f"the default {other}")


def claim_root(root: Path, *, dry_run: bool) -> None:
    """Check, then write the root's marker if it has none (never replaced)."""
    check_root(root, dry_run=dry_run)
    marker = Path(root) / MARKER
    if marker.exists():
        return
    marker.parent.mkdir(parents=True, exist_ok=True)
    doc = {"format": MARKER_FORMAT, "dry_run": dry_run, "holds": _kind(dry_run),
           "created": datetime.now().astimezone().isoformat(timespec="seconds")}
    create_once(marker, (json.dumps(doc, indent=2) + "\n").encode("utf-8"))
