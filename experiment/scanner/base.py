"""The interface every trigger source implements.

A source delivers scanner pulses, each stamped on the run's clock at arrival (a key's
own event timestamp, a serial byte's reader-thread timestamp). Sources never decide
which pulse is time zero: that is `experiment.scanner.startgate`'s job, from the
discard counts in the protocol or rig.
"""

from __future__ import annotations

import collections
import threading
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from experiment.errors import DeviceFault

KeyPress = tuple[str, float]   # (PsychoPy key name, clock time of the key event)


@dataclass(frozen=True)
class Pulse:
    index: int      # 0-based count of pulses this source has seen since open()
    t: float        # clock time of arrival
    source: str     # "keyboard", "serial", "sim", "syncgenerator"


class TriggerSource(Protocol):
    """Everything the runner asks of a trigger source, so it never probes for more.

    `reads_keyboard` says whether this source reads the keyboard queue; a run has
    exactly one keyboard reader (two would steal keys from each other), so when it is
    True the runner takes the participant's keys from `poll_keys()`, and otherwise it
    makes its own key reader. A source that does not read the keyboard returns [].
    """

    @property
    def name(self) -> str:
        """What the pulses' `source` says and the log header records."""

    @property
    def simulated(self) -> bool:
        """True for a simulated scanner (refused outside a dry run)."""

    @property
    def reads_keyboard(self) -> bool: ...

    def open(self) -> None:
        """Open the line (port, keyboard queue). Raises HardwareError if it cannot."""

    def poll(self) -> list[Pulse]:
        """Pulses that arrived since the last poll, oldest first. Never blocks."""

    def poll_keys(self) -> list[KeyPress]:
        """Keys that are not pulses, oldest first ([] unless `reads_keyboard`). Never blocks."""

    def close(self) -> None: ...


T = TypeVar("T")


class PulseBuffer(Generic[T]):
    """A bounded, thread-safe FIFO between a source's reader and `poll()`.

    Never drops silently: when full, the newest item is refused and counted, and
    `drain()` raises `DeviceFault` once the count is non-zero, because a run whose
    volume count is unknown cannot be analysed.
    """

    def __init__(self, capacity: int, *, what: str) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, got {capacity}")
        self.capacity = capacity
        self.dropped = 0
        self._what = what
        self._items: collections.deque[T] = collections.deque()
        self._lock = threading.Lock()

    def push(self, item: T) -> bool:
        """Queue one item; False (and counted) when the buffer is full."""
        with self._lock:
            if len(self._items) >= self.capacity:
                self.dropped += 1
                return False
            self._items.append(item)
            return True

    def drain(self) -> list[T]:
        """Everything queued, oldest first; raises DeviceFault after an overflow."""
        with self._lock:
            items = list(self._items)
            self._items.clear()
            dropped = self.dropped
        if dropped:
            raise DeviceFault(
                f"{self._what}: {dropped} item(s) dropped because the queue of {self.capacity} was full "
                f"(poll() was not called for too long); the pulse count can no longer be trusted")
        return items

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)
