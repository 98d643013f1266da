"""Where a run's files go, and the rule that no run is ever overwritten.

Layout (BIDS dataset root `data/`):
    data/sourcedata/sub-<id>/[ses-<s>/]<stem>/   raw log, pressure log, protocol and rig copies
    data/sub-<id>/[ses-<s>/]func/<stem>_*          derived BIDS files
    data/sourcedata/sub-<id>/[ses-<s>/]attempts/<stem>_attempt-<time>/
                                                   a run that ended before its first stored volume
where stem = sub-<id>[_ses-<s>]_task-<label>_run-<n>.
A run exists once its sourcedata directory exists; it is created exclusively. A run
that never reached t0 (no scanner, Escape while waiting) is moved to `attempts/`: its
log is kept, and its run number stays free for the run that will be scanned.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from experiment.errors import InputError
from experiment.protocol.identifiers import check_label, check_run_number


@dataclass(frozen=True)
class RunId:
    participant: str
    session: str | None
    task: str
    run: int

    @property
    def stem(self) -> str:
        ses = f"_ses-{self.session}" if self.session else ""
        return f"sub-{self.participant}{ses}_task-{self.task}_run-{self.run}"

    def subject_dir(self, root: Path) -> Path:
        d = Path(root) / f"sub-{self.participant}"
        return d / f"ses-{self.session}" if self.session else d

    def source_dir(self, data_root: Path) -> Path:
        d = Path(data_root) / "sourcedata" / f"sub-{self.participant}"
        if self.session:
            d = d / f"ses-{self.session}"
        return d / self.stem

    def func_dir(self, data_root: Path) -> Path:
        return self.subject_dir(data_root) / "func"


def _run_taken(data_root: Path, rid: RunId) -> bool:
    if rid.source_dir(data_root).exists():
        return True
    return any(rid.func_dir(data_root).glob(f"{rid.stem}_*"))


def next_free_run(data_root: Path, participant: str, session: str | None, task: str) -> int:
    for n in range(1, 100):
        if not _run_taken(data_root, RunId(participant, session, task, n)):
            return n
    raise InputError(f"all run numbers 1-99 are taken for sub-{participant} task-{task} in {data_root}")


def resolve_run(data_root: Path, *, participant: str, session: str | None, task: str, run: str) -> RunId:
    """Check identifiers and pick the run number; refuse a run that exists."""
    check_label(participant, "participant")
    if session is not None:
        check_label(session, "session")
    check_label(task, "task")
    if run == "next":
        number = next_free_run(data_root, participant, session, task)
    else:
        try:
            number = int(run)
        except ValueError:
            raise InputError(f"--run must be a number from 1 to 99 or 'next', got {run!r}") from None
        check_run_number(number)
    rid = RunId(participant, session, task, number)
    if _run_taken(data_root, rid):
        free = next_free_run(data_root, participant, session, task)
        raise InputError(
            f"run {number} of sub-{participant}{' ses-' + session if session else ''} task-{task} "
            f"already exists in {data_root} and is never overwritten; run {free} is free (--run {free})")
    return rid


def create_source_dir(data_root: Path, rid: RunId, *, take_next: bool = False) -> tuple[RunId, Path]:
    """Create the run's sourcedata directory exclusively (a concurrent run cannot share it).

    With `take_next` (`--run next`), a number taken meanwhile by a concurrent session
    moves this run to the next free number instead of refusing; the run actually
    created is returned with its directory.
    """
    while True:
        d = rid.source_dir(data_root)
        d.parent.mkdir(parents=True, exist_ok=True)
        try:
            d.mkdir()
            return rid, d
        except FileExistsError:
            if not take_next:
                raise InputError(f"{d} already exists; a run is never overwritten") from None
            rid = RunId(rid.participant, rid.session, rid.task,
                        next_free_run(data_root, rid.participant, rid.session, rid.task))


ATTEMPTS = "attempts"


def is_attempt_dir(run_dir: Path) -> bool:
    """A run directory moved to `attempts/` (it has no BIDS files and takes no run number)."""
    return Path(run_dir).parent.name == ATTEMPTS


def move_to_attempts(source_dir: Path) -> Path:
    """Move a run directory that never reached t0 to `attempts/<stem>_attempt-<time>`; the new path."""
    source_dir = Path(source_dir)
    target = source_dir.parent / ATTEMPTS / f"{source_dir.name}_attempt-{datetime.now():%Y%m%dT%H%M%S}"
    target.parent.mkdir(exist_ok=True)
    n = 1
    while target.exists():   # two attempts in the same second
        n += 1
        target = target.with_name(f"{target.name.split('.')[0]}.{n}")
    os.rename(source_dir, target)
    return target
