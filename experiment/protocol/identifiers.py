"""BIDS label rules for participant, session, task and run identifiers."""

from __future__ import annotations

import re

from experiment.errors import InputError

_LABEL = re.compile(r"^[A-Za-z0-9]+$")


def check_label(value: str, what: str) -> str:
    """Return `value` if it is a BIDS label (letters and digits only), else raise.

    Path separators, spaces, dots, dashes and underscores are refused because they
    would change the meaning of a BIDS file name or escape the data directory.
    """
    if not isinstance(value, str) or not _LABEL.match(value):
        raise InputError(
            f"{what} {value!r} is not a valid BIDS label: use letters and digits only "
            f"(no spaces, '-', '_', '.', '/' or '\\'), for example 'P01'")
    return value


def check_run_number(value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1 or value > 99:
        raise InputError(f"run number {value!r} must be a whole number from 1 to 99")
    return value
