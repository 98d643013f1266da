"""One writer at a time for a file that several programs update (participants.tsv, scans.tsv).

An advisory lock on a small lock file under `sourcedata/` (ignored by the BIDS validator):
`fcntl.flock` on POSIX, `msvcrt.locking` on Windows (written to the documented API,
untested here). The lock is released when the holder exits, however it ends.
"""

from __future__ import annotations

import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


@contextmanager
def locked(lock_path: Path) -> Iterator[None]:
    """Hold the lock on `lock_path` (created if needed) for the duration of the block."""
    path = Path(lock_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as fh:
        if sys.platform == "win32":  # pragma: no cover - not testable here
            import msvcrt

            fh.seek(0)
            msvcrt.locking(fh.fileno(), msvcrt.LK_LOCK, 1)
            try:
                yield
            finally:
                fh.seek(0)
                msvcrt.locking(fh.fileno(), msvcrt.LK_UNLCK, 1)
        else:
            import fcntl

            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
