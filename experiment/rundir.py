"""Where a run's files go, and the rule that no run is ever overwritten.

Layout (BIDS dataset root `data/`):
    data/sourcedata/sub-<id>/[ses-<s>/]<stem>/   raw log, pressure log, protocol and rig copies
    data/sub-<id>/[ses-<s>/]func/<stem>_*          derived BIDS files
where stem = sub-<id>[_ses-<s>]_task-<label>_run-<n>.
A run exists once its sourcedata directory exists; it is created exclusively.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from experiment.errors import InputError
from experiment.identifiers import check_label, check_run_number


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


def create_source_dir(data_root: Path, rid: RunId) -> Path:
    """Create the run's sourcedata directory exclusively (a concurrent run cannot share it)."""
    d = rid.source_dir(data_root)
    d.parent.mkdir(parents=True, exist_ok=True)
    try:
        d.mkdir()
    except FileExistsError:
        raise InputError(f"{d} already exists; a run is never overwritten") from None
    return d
