"""Atomic file writes that can only touch the files a run owns.

A derived file is written to a temporary file in its own directory, flushed, fsynced,
then renamed over its name with `os.replace`, so a reader (or a crash) sees the old
file or the new one, never half of one. Every write names the set of paths its run
owns (`OwnedPaths`); a path outside that set is refused, so a bug in path building
cannot replace another run's files. Files shared by all runs (dataset_description.json,
the task sidecar, README) are only ever created, never replaced: `create_once`. Every file
written here gets the mode a plain open() would give it (0o666 less the umask), like the
run logs, so the lab's group can read derived files when the umask lets it.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from experiment.errors import InputError


@dataclass(frozen=True)
class OwnedPaths:
    """The files one run may replace: an explicit set, plus files under its own directories."""

    files: frozenset[Path]
    dirs: frozenset[Path] = frozenset()
    protected: frozenset[Path] = frozenset()  # raw files inside those dirs: never replaced

    @classmethod
    def of(cls, files: list[Path] | tuple[Path, ...] = (), *, dirs: tuple[Path, ...] = (),
           protected: tuple[Path, ...] = ()) -> "OwnedPaths":
        return cls(frozenset(_abs(p) for p in files), frozenset(_abs(d) for d in dirs),
                   frozenset(_abs(p) for p in protected))

    def owns(self, path: Path) -> bool:
        p = _abs(path)
        if p in self.protected:
            return False
        return p in self.files or any(d in p.parents for d in self.dirs)


def _abs(path: Path) -> Path:
    return Path(os.path.abspath(path))


def ensure_dir(path: Path) -> Path:
    """Create a directory and its parents if needed; return it."""
    Path(path).mkdir(parents=True, exist_ok=True)
    return Path(path)


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory handles (Windows)
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


# Mode of a new temporary file before the umask: the kernel applies the process umask
# (or the directory's default ACL) to it, as open() does for the run logs, so a derived
# file gets 0o666 & ~umask (0o644 with umask 022, 0o664 with 002) and a lab group can read
# it. tempfile.mkstemp would force 0o600. Reading the umask instead would mean calling
# os.umask() to set and restore it: process-global state, racing with every thread that
# creates a file meanwhile (the cuff's and the log's threads may run while outputs are
# derived), so the mode is left to the kernel rather than computed here.
_NEW_FILE_MODE = 0o666
_TEMP_ATTEMPTS = 100


def _create_temp(path: Path) -> tuple[int, Path]:
    """A new, empty, uniquely named temporary file next to `path`: (fd, its path)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0) | getattr(os, "O_CLOEXEC", 0)
    for _ in range(_TEMP_ATTEMPTS):
        tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
        try:
            return os.open(tmp, flags, _NEW_FILE_MODE), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary name next to {path} after {_TEMP_ATTEMPTS} tries")


def _write_temp(path: Path, data: bytes) -> Path:
    fd, tmp = _create_temp(path)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException:
        os.unlink(tmp)
        raise
    return tmp


def write_bytes(path: Path, data: bytes, *, owned: OwnedPaths) -> Path:
    """Write `data` to `path` atomically; refuse a path the run does not own."""
    path = Path(path)
    if not owned.owns(path):
        raise InputError(f"refusing to write {path}: it does not belong to this run")
    ensure_dir(path.parent)
    tmp = _write_temp(path, data)
    try:
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def write_text(path: Path, text: str, *, owned: OwnedPaths) -> Path:
    """`write_bytes` for UTF-8 text with '\\n' line ends on every platform."""
    return write_bytes(path, text.encode("utf-8"), owned=owned)


def create_once(path: Path, data: bytes) -> bool:
    """Create `path` with `data` if it does not exist; never replace it. True if created.

    The complete file appears at once (hard link of a synced temporary file), and two
    runs racing to create it cannot both succeed.
    """
    path = Path(path)
    if path.exists():
        return False
    ensure_dir(path.parent)
    tmp = _write_temp(path, data)
    try:
        os.link(tmp, path)
    except FileExistsError:
        return False
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(path.parent)
    return True
