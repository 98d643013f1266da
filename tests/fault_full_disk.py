"""`cuedpain` with run logs on a disk that fills up on cue (fault-injection tests only).

    CUEDPAIN_TEST_DISK_FULL_WHEN=PATH [CUEDPAIN_TEST_DISK_FULL_FILES=log.jsonl,pressure.jsonl] \
        python tests/fault_full_disk.py run PROTOCOL ...

Runs the real command line (`experiment.cli.main`) after giving every run log
(`experiment.log.eventlog.LogFile`) named in CUEDPAIN_TEST_DISK_FULL_FILES (default: both)
a file object whose writes fail with ENOSPC, as a full disk's do, from the moment the
file PATH exists. The test creates PATH when it wants the disk full (for instance while
the cuff inflates), so the failure lands at a known point of the run. This is a test
double for a full disk, which cannot be made portably here (it needs a mount); it uses
the `opener` that `LogFile` has for this purpose and changes nothing else.
"""

from __future__ import annotations

import errno
import os
import sys
from pathlib import Path
from typing import IO, Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # this checkout's code, not an installed copy
import experiment.log.eventlog as eventlog  # noqa: E402
from experiment.cli import main  # noqa: E402

WHEN_VAR = "CUEDPAIN_TEST_DISK_FULL_WHEN"
FILES_VAR = "CUEDPAIN_TEST_DISK_FULL_FILES"


class FillingFile:
    """A text file whose `write` raises ENOSPC once the trigger file exists."""

    def __init__(self, fh: IO[str], trigger: Path) -> None:
        self._fh = fh
        self._trigger = trigger

    def write(self, text: str) -> int:
        if self._trigger.exists():
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), self._fh.name)
        return self._fh.write(text)

    def __getattr__(self, name: str) -> Any:   # flush, fileno, close, name: the real file's
        return getattr(self._fh, name)


def install(trigger: Path, names: set[str]) -> None:
    """Make LogFile open the named logs through `FillingFile`."""
    original = eventlog.LogFile.__init__

    def init(self: eventlog.LogFile, path: Path, header: dict[str, Any], **kwargs: Any) -> None:
        if Path(path).name in names and kwargs.get("opener") is None:
            kwargs["opener"] = lambda p: FillingFile(open(p, "x", encoding="utf-8"), trigger)
        original(self, path, header, **kwargs)

    eventlog.LogFile.__init__ = init  # type: ignore[method-assign]


if __name__ == "__main__":
    install(Path(os.environ[WHEN_VAR]), set(os.environ.get(FILES_VAR, "log.jsonl,pressure.jsonl").split(",")))
    sys.exit(main(sys.argv[1:]))
