"""Run numbering: identifiers are BIDS labels and no run is ever overwritten."""

from __future__ import annotations

from pathlib import Path

import pytest

from experiment.errors import InputError
from experiment.outputs.rundir import create_source_dir, resolve_run


@pytest.mark.parametrize("bad", ["../etc", "P 01", "P_01", "P-01", "a/b", "", "..", "P01\\x"])
def test_participant_must_be_a_bids_label(tmp_path: Path, bad: str) -> None:
    with pytest.raises(InputError, match="not a valid BIDS label"):
        resolve_run(tmp_path, participant=bad, session=None, task="pain", run="1")


def test_bad_session_and_run_are_refused(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="session 'a b' is not a valid BIDS label"):
        resolve_run(tmp_path, participant="P01", session="a b", task="pain", run="1")
    with pytest.raises(InputError, match="must be a number from 1 to 99 or 'next'"):
        resolve_run(tmp_path, participant="P01", session=None, task="pain", run="x")
    with pytest.raises(InputError, match="from 1 to 99"):
        resolve_run(tmp_path, participant="P01", session=None, task="pain", run="0")


def test_existing_run_is_refused_and_the_free_one_named(tmp_path: Path) -> None:
    rid = resolve_run(tmp_path, participant="P01", session="1", task="pain", run="1")
    _, d = create_source_dir(tmp_path, rid)
    assert d == tmp_path / "sourcedata" / "sub-P01" / "ses-1" / "sub-P01_ses-1_task-pain_run-1"
    with pytest.raises(InputError, match="run 1 of sub-P01 ses-1 task-pain already exists .* run 2 is free"):
        resolve_run(tmp_path, participant="P01", session="1", task="pain", run="1")
    assert resolve_run(tmp_path, participant="P01", session="1", task="pain", run="next").run == 2
    # a derived file alone also marks a run as taken
    func = tmp_path / "sub-P01" / "ses-1" / "func"
    func.mkdir(parents=True)
    (func / "sub-P01_ses-1_task-pain_run-2_events.tsv").write_text("onset\tduration\n")
    assert resolve_run(tmp_path, participant="P01", session="1", task="pain", run="next").run == 3
