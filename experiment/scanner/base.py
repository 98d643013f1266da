"""The interface every trigger source implements.

A source delivers scanner pulses, each stamped on the run's clock at arrival (a key's
own event timestamp, a serial byte's reader-thread timestamp). Sources never decide
which pulse is time zero: that is `experiment.scanner.startgate`'s job, from the
discard counts in the protocol or rig.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


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
