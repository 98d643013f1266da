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
from typing import Any, Protocol

from experiment.errors import DeviceFault


@dataclass(frozen=True)
class Pulse:
    index: int      # 0-based count of pulses this source has seen since open()
    t: float        # clock time of arrival
    source: str     # "keyboard", "serial", "sim", "syncgenerator"


class TriggerSource(Protocol):
    name: str
    simulated: bool

    def open(self) -> None:
        """Open the line (port, keyboard queue). Raises HardwareError if it cannot."""

    def poll(self) -> list[Pulse]:
        """Pulses that arrived since the last poll, oldest first. Never blocks."""

    def close(self) -> None: ...


class PulseBuffer:
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
        self._items: collections.deque[Any] = collections.deque()
        self._lock = threading.Lock()

    def push(self, item: Any) -> bool:
        """Queue one item; False (and counted) when the buffer is full."""
        with self._lock:
            if len(self._items) >= self.capacity:
                self.dropped += 1
                return False
            self._items.append(item)
            return True

    def drain(self) -> list[Any]:
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
