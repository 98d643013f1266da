"""Exceptions that end a command, each carrying its documented exit code.

The command line turns these into one clear message and the exit code; no traceback.
Exit codes (documented in the README):
    0  done
    2  invalid input: usage, protocol, rig file, identifiers, existing run
    3  run aborted: operator (Escape, Ctrl-C, SIGTERM), participant stop, safety interlock
    4  hardware unavailable or faulty at start
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_INPUT = 2
EXIT_ABORTED = 3
EXIT_HARDWARE = 4


class CuedpainError(Exception):
    """Base class: a message meant for the operator and an exit code."""

    exit_code: int = 1

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InputError(CuedpainError):
    """Bad input found before anything was touched (protocol, rig, identifiers)."""

    exit_code = EXIT_INPUT


class AbortError(CuedpainError):
    """A run that started and was ended early (operator, participant, safety)."""

    exit_code = EXIT_ABORTED

    def __init__(self, message: str, *, reason: str = "aborted") -> None:
        super().__init__(message)
        self.reason = reason


class HardwareError(CuedpainError):
    """A device that cannot be opened, does not answer, or is faulty at start."""

    exit_code = EXIT_HARDWARE


class DeviceFault(CuedpainError):
    """A device failure during a run (no reply, error reply, lost port, fault event).

    During a run this becomes an abort (exit 3) after the cuff is vented; at start it
    is a hardware error (exit 4).
    """

    exit_code = EXIT_ABORTED
