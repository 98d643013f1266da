"""The narrow interface every cuff driver implements, and the values it returns.

Pressure is kPa everywhere in here. Times are seconds on the run's clock (see
experiment.clock). A driver never decides policy (ceilings per protocol, time limits
per run, when to vent): that is `experiment.cuff.safety.CuffSupervisor`'s job. A driver
only speaks its wire protocol faithfully and reports what the device says.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Protocol


@dataclass(frozen=True)
class DeviceInfo:
    """What a device says about itself when connected."""

    kind: str             # "line" (CUFF/1) or "cpar"
    port: str             # device path or URL it was opened on
    name: str             # device name reported by the device
    firmware: str         # firmware version string
    hard_limit_kpa: float  # the firmware's fixed ceiling, not settable by the host
    simulated: bool       # True when the far end is one of our simulators (it says so)
    serial: str | None = None  # the device's serial number, where it reports one

    def identity(self) -> str:
        """One line for the operator: name, firmware, serial, port (and SIMULATED)."""
        sn = f", serial {self.serial}" if self.serial else ""
        sim = " (SIMULATED)" if self.simulated else ""
        return f"{self.name}{sim}, firmware {self.firmware}{sn}, on {self.port} ({self.kind})"


@dataclass(frozen=True)
class CommandResult:
    """One command and its reply, with the two times that matter for the log."""

    command: str          # the command as sent (text for CUFF/1, a name for CPAR)
    t_write: float        # clock time the bytes were handed to the OS (just before the write call)
    t_ack: float          # clock time the reply arrived (reader thread timestamp)
    reply: str            # the reply as received (text, or a decoded summary)
    fields: dict[str, str] = field(default_factory=dict)  # key=value pairs of the reply


@dataclass(frozen=True)
class CuffStatus:
    state: str            # IDLE ARMED RAMP HOLD DEFLATING FAULT ESTOP
    pressure_kpa: float
    target_kpa: float
    armed_max_kpa: float
    hard_limit_kpa: float
    error_code: int


@dataclass(frozen=True)
class DeviceEvent:
    """An unsolicited event from the device (`!EVT NAME k=v` in CUFF/1)."""

    t: float
    name: str             # BOOT TARGET_REACHED DEFLATED WATCHDOG ESTOP TIME_LIMIT OVERPRESSURE COMPLIANCE
    fields: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class PressureSample:
    """One telemetry sample, stamped by the host on arrival."""

    t: float              # host clock at arrival
    device_ms: int        # device's own millisecond counter
    pressure_kpa: float
    target_kpa: float
    state: str


class Cuff(Protocol):
    """Every cuff driver. Methods raise `experiment.errors.DeviceFault` on an error
    reply, a reply timeout or a lost port; `HardwareError` from `connect` when the
    device cannot be opened or identified."""

    info: DeviceInfo | None

    def connect(self) -> DeviceInfo: ...
    def ping(self) -> CommandResult: ...
    def set_watchdog(self, timeout_ms: int) -> CommandResult: ...
    def set_max_time(self, max_ms: int) -> CommandResult: ...
    def arm(self, ceiling_kpa: float) -> CommandResult: ...
    def disarm(self) -> CommandResult: ...
    def set_rate(self, rate_kpa_s: float) -> CommandResult: ...
    def set_target(self, pressure_kpa: float) -> CommandResult: ...
    def deflate(self) -> CommandResult: ...
    def vent(self) -> CommandResult: ...
    def estop(self) -> CommandResult: ...
    def clear(self) -> CommandResult: ...
    def status(self) -> CuffStatus: ...
    def stream(self, rate_hz: int) -> CommandResult: ...
    def set_listeners(self, *, on_event: Callable[[DeviceEvent], None] | None = None,
                      on_sample: Callable[[PressureSample], None] | None = None,
                      on_lost: Callable[[BaseException], None] | None = None) -> None: ...
    def close(self) -> None: ...
