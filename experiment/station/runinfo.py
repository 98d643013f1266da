"""Facts about this installation and its data directory, shared by `run` and `calibrate`."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from experiment.errors import InputError

ROOT = Path(__file__).resolve().parents[1]


def software_revision() -> str | None:
    """The git revision of this checkout (with -dirty), or None outside a checkout."""
    try:
        out = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        if out.returncode == 0:
            dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
                                   capture_output=True, text=True, timeout=5).stdout.strip()
            return out.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        pass
    return None


def package_versions() -> dict[str, str]:
    """Versions of the packages that shape a run's timing and outputs."""
    from importlib import metadata

    versions = {}
    for name in ("psychopy", "psychtoolbox", "numpy", "pandas", "pyserial", "scipy", "nilearn", "PyYAML"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def check_writable(data_root: Path) -> None:
    """The data directory can be created and written (checked before any device is opened)."""
    try:
        data_root.mkdir(parents=True, exist_ok=True)
        probe = data_root / f".cuedpain-write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise InputError(f"the data directory {data_root} is not writable: {exc.strerror or exc}") from None
