"""The narrow interface every cuff driver implements, and the typed values it returns.

Pressure is kPa everywhere in here. Times are seconds on the run's clock (see
experiment.clock). A driver never decides policy (ceilings per protocol, time limits
per run, when to vent): that is `experiment.cuff.safety.CuffSupervisor`'s job. A driver
only speaks its wire protocol faithfully and translates what the device says into the
values below, so that policy code never reads a wire string.

Several values keep the wire text beside the typed values (`Ack.reply`,
`DeviceEvent.name` and `.fields`): that text is for the log (`cuff_cmd`, `cuff_event`
records) and for people; code that decides anything reads the typed values.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Callable, Protocol

from experiment.errors import DeviceFault

# ---------------------------------------------------------------- states and faults


class CuffState(enum.Enum):
    """What the cuff is doing (CUFF/1's states; other drivers map their own onto them)."""

    IDLE = "IDLE"            # disarmed, vented
    ARMED = "ARMED"          # ceiling set, no target, vented
    RAMP = "RAMP"            # moving toward a target
    HOLD = "HOLD"            # holding the target
    DEFLATING = "DEFLATING"  # ramping down
    FAULT = "FAULT"          # a fault latched until cleared on purpose
    ESTOP = "ESTOP"          # an emergency stop latched until cleared on purpose

    @property
    def latched(self) -> bool:
        """Latched until the operator clears it (FAULT, ESTOP): nothing may start."""
        return self in (CuffState.FAULT, CuffState.ESTOP)

    @property
    def armed(self) -> bool:
        """A ceiling is set and the cuff may hold air (ARMED, RAMP, HOLD, DEFLATING)."""
        return self in (CuffState.ARMED, CuffState.RAMP, CuffState.HOLD, CuffState.DEFLATING)


class FaultKind(enum.Enum):
    """The latching faults; the value is the fault code logs and CUFF/1 use (30-34)."""

    WATCHDOG = 30
    ESTOP = 31
    TIME_LIMIT = 32
    OVERPRESSURE = 33
    COMPLIANCE = 34

    @property
    def meaning(self) -> str:
        """What the fault means, in the operator's words (rig-check, refusals at start)."""
        return _FAULT_MEANINGS[self]


_FAULT_MEANINGS: dict[FaultKind, str] = {
    FaultKind.WATCHDOG: "the watchdog fired: the host stopped talking to the cuff (program killed or hung, "
                        "cable pulled) and the cuff vented itself",
    FaultKind.ESTOP: "an emergency stop: the participant's stop button or the host's ESTOP",
    FaultKind.TIME_LIMIT: "the time limit: the cuff stayed above 1 kPa longer than its MAXTIME and vented itself",
    FaultKind.OVERPRESSURE: "over-pressure: the pressure went over the armed ceiling plus its margin and the cuff "
                            "vented itself",
    FaultKind.COMPLIANCE: "compliance: the target was not reached in time or the pressure sagged (a leak, a loose "
                          "hose, or the cuff is off the limb)",
}


@dataclass(frozen=True)
class Fault:
    """A latched fault as the device reports it: its code, and what it means.

    `code` is kept even when this program does not know it (a newer firmware), so the
    operator sees what the device said.
    """

    code: int

    @property
    def kind(self) -> FaultKind | None:
        try:
            return FaultKind(self.code)
        except ValueError:
            return None

    @property
    def name(self) -> str:
        return self.kind.name if self.kind is not None else "UNKNOWN"

    @property
    def meaning(self) -> str:
        return self.kind.meaning if self.kind is not None else "a fault this program does not know"

    def describe(self, state: CuffState) -> str:
        """`FAULT (error 30 WATCHDOG: the watchdog fired: ...)`."""
        return f"{state.value} (error {self.code} {self.name}: {self.meaning})"


# ---------------------------------------------------------------- the device


@dataclass(frozen=True)
class Span:
    """An inclusive range of accepted values, in the unit its name says."""

    lo: float
    hi: float

    def __contains__(self, value: float) -> bool:
        return self.lo <= value <= self.hi

    def text(self, unit: str) -> str:
        """`0.1-100 kPa/s`."""
        return f"{self.lo:g}-{self.hi:g} {unit}"


@dataclass(frozen=True)
class DeviceLimits:
    """What a device accepts, so that a protocol can be checked against it before a run."""

    rate_kpa_s: Span              # ramp rates it accepts
    watchdog_ms: Span | None      # settable watchdog timeouts; None: fixed in its firmware
    max_time_ms: Span | None      # settable time limits for one inflation; None: it has none


@dataclass(frozen=True, kw_only=True)
class DeviceInfo:
    """What a device says about itself when connected, and what it accepts.

    `dataclasses.asdict` of it is the `cuff` of a log header (docs/event-log.md).
    """

    kind: str             # "line" (CUFF/1), "cpar" or "gated"
    port: str             # device path or URL it was opened on
    name: str             # device name reported by the device
    firmware: str         # firmware version string
    hard_limit_kpa: float  # the firmware's fixed ceiling, not settable by the host
    simulated: bool       # True when the far end is one of our simulators (it says so)
    serial: str | None = None  # the device's serial number, where it reports one
    limits: DeviceLimits
    pressure_readback: bool = True  # False: nothing measures the pressure (a gate on a panel-set inflator)

    def identity(self) -> str:
        """One line for the operator: name, firmware, serial, port (and SIMULATED)."""
        sn = f", serial {self.serial}" if self.serial else ""
        sim = " (SIMULATED)" if self.simulated else ""
        return f"{self.name}{sim}, firmware {self.firmware}{sn}, on {self.port} ({self.kind})"


@dataclass(frozen=True)
class CuffStatus:
    """The device's state at one moment (`STATUS?` in CUFF/1)."""

    state: CuffState
    pressure_kpa: float | None  # None: the device does not measure it (DeviceInfo.pressure_readback False)
    target_kpa: float      # 0 unless a target is active
    armed_max_kpa: float   # 0 when disarmed
    hard_limit_kpa: float
    fault: Fault | None    # the latched fault, None when nothing is latched

    @property
    def error_code(self) -> int:
        """The latched fault's code, 0 when none (as logs and rig-check print it)."""
        return 0 if self.fault is None else self.fault.code

    def summary(self) -> str:
        """`st=HOLD p=30.1 tgt=30.0 max=40.0 err=0`: the `reply` of its `cuff_cmd` record."""
        p = "-" if self.pressure_kpa is None else f"{self.pressure_kpa:.1f}"
        return (f"st={self.state.value} p={p} tgt={self.target_kpa:.1f} "
                f"max={self.armed_max_kpa:.1f} err={self.error_code}")

    def record(self) -> dict[str, object]:
        """The status as a log record's value (plain JSON types)."""
        return {"state": self.state.value, "pressure_kpa": self.pressure_kpa, "target_kpa": self.target_kpa,
                "armed_max_kpa": self.armed_max_kpa, "hard_limit_kpa": self.hard_limit_kpa,
                "error_code": self.error_code}


# ---------------------------------------------------------------- acknowledgements


@dataclass(frozen=True, kw_only=True)
class Ack:
    """One command and its acknowledgement, with the two times that matter for the log.

    `command` and `reply` are text for the `cuff_cmd` record (CUFF/1: the lines as sent
    and received; CPAR: a function name and a summary). `sent` is False for a command a
    driver handles on the host side only (nothing went on the wire; CPAR's ARM, RATE).
    """

    command: str          # the command as sent
    t_write: float        # clock time the bytes were handed to the OS (just before the write call)
    t_ack: float          # clock time the reply arrived (reader thread timestamp)
    reply: str            # the reply as received (text, or a decoded summary); never parsed
    sent: bool = True


@dataclass(frozen=True, kw_only=True)
class PingAck(Ack):
    count: int | None     # the device's ping counter (it goes down after a restart); None: not reported


@dataclass(frozen=True, kw_only=True)
class WatchdogAck(Ack):
    timeout_ms: int | None  # the watchdog timeout now set; None: not settable, the device keeps its own


@dataclass(frozen=True, kw_only=True)
class MaxTimeAck(Ack):
    max_ms: int           # the time limit for one inflation now in force


@dataclass(frozen=True, kw_only=True)
class ArmAck(Ack):
    ceiling_kpa: float    # the ceiling the device is armed with (the value sent, rounded down)


@dataclass(frozen=True, kw_only=True)
class RateAck(Ack):
    rate_kpa_s: float     # the ramp rate for later targets


@dataclass(frozen=True, kw_only=True)
class RampAck(Ack):
    target_kpa: float          # the target the device ramps to
    eta_s: float | None        # when it expects to reach it, from the ack; None: it does not say
    hold_s: float | None = None  # how long it then holds before ending by itself; None: until told


@dataclass(frozen=True, kw_only=True)
class DeflateAck(Ack):
    eta_s: float | None   # when it expects to be empty, from the ack; None: it does not say


@dataclass(frozen=True, kw_only=True)
class StreamAck(Ack):
    rate_hz: int          # pressure samples per second (0: none)


class CommandRefused(DeviceFault):
    """The device (or the driver on its behalf, `ack.sent` False) refused a command.

    `ack` holds the exchange for the log; `code` and `error` are the refusal's number and
    name (CUFF/1 `ERR 20 OVER_LIMIT`; CPAR NACK 0x02; `code` None for a driver's own refusal).
    """

    def __init__(self, message: str, *, ack: Ack, code: int | None, error: str) -> None:
        super().__init__(message)
        self.ack = ack
        self.code = code
        self.error = error


class DeviceRestarted(DeviceFault):
    """The device restarted since it was set up (its counters went back): its settings are gone."""


# ---------------------------------------------------------------- events and samples


class EventKind(enum.Enum):
    """What an unsolicited device event means."""

    BOOT = "BOOT"                      # the device (re)started
    TARGET_REACHED = "TARGET_REACHED"  # within tolerance of the target
    DEFLATED = "DEFLATED"              # empty after a deflation, vent or stop
    WATCHDOG = "WATCHDOG"              # its watchdog fired: vented, FAULT latched
    ESTOP = "ESTOP"                    # an emergency stop: vented, ESTOP latched (see StopSource)
    TIME_LIMIT = "TIME_LIMIT"          # its time limit ended an inflation: vented, FAULT latched
    OVERPRESSURE = "OVERPRESSURE"      # over its ceiling: vented, FAULT latched
    COMPLIANCE = "COMPLIANCE"          # target not reached or not held: vented, FAULT latched
    OTHER = "OTHER"                    # a driver-specific notice (the log name says which); no meaning to policy

    @property
    def fault(self) -> FaultKind | None:
        """The fault this event latches, if it latches one."""
        return _EVENT_FAULTS.get(self)


_EVENT_FAULTS = {EventKind.WATCHDOG: FaultKind.WATCHDOG, EventKind.ESTOP: FaultKind.ESTOP,
                 EventKind.TIME_LIMIT: FaultKind.TIME_LIMIT, EventKind.OVERPRESSURE: FaultKind.OVERPRESSURE,
                 EventKind.COMPLIANCE: FaultKind.COMPLIANCE}


class StopSource(enum.Enum):
    """Who stopped the cuff (an ESTOP event)."""

    BUTTON = "button"        # the participant's stop button
    HOST = "host"            # the host's ESTOP command
    EMERGENCY = "emergency"  # the device's emergency switch
    VAS = "vas"              # the participant's rating device at its maximum (CPAR)


@dataclass(frozen=True, kw_only=True)
class DeviceEvent:
    """An unsolicited event from the device, stamped by the host on arrival.

    `name` and `fields` are the log's wording (`cuff_event` record: CUFF/1's event name
    and key=value pairs, or the CPAR driver's equivalents); the rest is typed.
    """

    t: float
    kind: EventKind
    name: str                         # for the log: the kind's name, or a driver-specific one for OTHER
    fields: dict[str, str] = field(default_factory=dict)  # for the log only
    pressure_kpa: float | None = None  # the measured pressure the event reports
    target_kpa: float | None = None    # the target it was about (COMPLIANCE)
    source: StopSource | None = None   # ESTOP: who stopped it
    limit_ms: int | None = None        # WATCHDOG, TIME_LIMIT: the limit that fired
    firmware: str | None = None        # BOOT: the firmware version

    def summary(self) -> str:
        """`COMPLIANCE p=12.0 tgt=30.0`: the event as the device worded it, for messages."""
        return " ".join([self.name, *(f"{k}={v}" for k, v in self.fields.items())])


@dataclass(frozen=True)
class PressureSample:
    """One telemetry sample, stamped by the host on arrival."""

    t: float              # host clock at arrival
    device_ms: int        # device's own millisecond counter
    pressure_kpa: float
    target_kpa: float
    state: CuffState


# ---------------------------------------------------------------- the interface


class Cuff(Protocol):
    """Every cuff driver. Methods raise `experiment.errors.DeviceFault` on a reply
    timeout or a lost port, `CommandRefused` (a DeviceFault) on a refusal,
    `DeviceRestarted` when the device restarted; `HardwareError` from `connect` when the
    device cannot be opened or identified."""

    @property
    def info(self) -> DeviceInfo | None: ...
    def connect(self) -> DeviceInfo: ...
    def ping(self) -> PingAck: ...
    def set_watchdog(self, timeout_ms: int) -> WatchdogAck: ...
    def set_max_time(self, max_ms: int) -> MaxTimeAck: ...
    def arm(self, ceiling_kpa: float) -> ArmAck: ...
    def disarm(self) -> Ack: ...
    def set_rate(self, rate_kpa_s: float) -> RateAck: ...
    def set_target(self, pressure_kpa: float) -> RampAck: ...
    def deflate(self) -> DeflateAck: ...
    def vent(self) -> Ack: ...
    def estop(self) -> Ack: ...
    def clear(self) -> Ack: ...
    def status(self) -> CuffStatus: ...
    def stream(self, rate_hz: int) -> StreamAck: ...

    def sim_stop_button(self) -> Ack:
        """Simulators only (dry runs): press the participant's stop button. A real device
        refuses (CommandRefused); a driver that cannot reach its simulator's button says so."""
        ...

    def set_listeners(self, *, on_event: Callable[[DeviceEvent], None] | None = None,
                      on_sample: Callable[[PressureSample], None] | None = None,
                      on_lost: Callable[[BaseException], None] | None = None) -> None: ...
    def close(self) -> None: ...
