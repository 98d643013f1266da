"""PsychoPy's own scanner emulator (`SyncGenerator`, used by `launchScan`) as a trigger source.

Labs that rehearse with PsychoPy's emulator keep doing so: `SyncGenerator` is a thread
that puts the sync key into `psychopy.event`'s key buffer every TR (after `skip`
volumes without a pulse), stamped with `psychopy.clock.getTime()` at injection. It
lives in the `psychopy-mri-emulator` plugin (`psychopy.hardware.emulator` only holds
a stub that names the plugin). The pulses are read by `KeyboardSource` with the
`event` backend, the path PsychoPy itself reads them by, so other keys typed into the
window still come out of `poll_keys()`. It cannot jitter, drop pulses or send
per-slice pulses; use `sim` for those.
"""

from __future__ import annotations

from typing import Any, Callable, Protocol, cast

from experiment.clock import Clock
from experiment.errors import HardwareError, InputError
from experiment.scanner.base import KeyPress, Pulse
from experiment.scanner.keyboard_source import KeyboardSource
from experiment.scanner.sim_scanner import ScannerPlan


class SyncGenerator(Protocol):
    """What this source uses of PsychoPy's SyncGenerator thread (the library is untyped)."""

    daemon: bool

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def join(self, timeout: float | None = None) -> None: ...

    def is_alive(self) -> bool: ...


SyncGeneratorClass = Callable[..., SyncGenerator]   # SyncGenerator(TR=, TA=, volumes=, sync=, skip=)


def load_sync_generator() -> SyncGeneratorClass:
    """PsychoPy's SyncGenerator class, from the plugin or an older PsychoPy."""
    try:
        from psychopy_mri_emulator import SyncGenerator as plugin
        return cast(SyncGeneratorClass, plugin)
    except ImportError:
        pass
    try:
        from psychopy.hardware.emulator import SyncGenerator as candidate
        from psychopy.plugins import PluginStub
    except ImportError as exc:  # pragma: no cover - PsychoPy missing
        raise HardwareError(f"PsychoPy's scanner emulator cannot be imported: {exc}") from exc
    if issubclass(candidate, PluginStub):
        raise HardwareError("PsychoPy's scanner emulator (SyncGenerator) is not installed: "
                            "pip install psychopy-mri-emulator")
    return cast(SyncGeneratorClass, candidate)  # pragma: no cover - PsychoPy before the plugin split


class SyncGenSource:
    """A `SyncGenerator` thread that starts at `open()`, read through the event key buffer.

    `win` is the PsychoPy window: an object of an untyped library, hence Any.
    """

    simulated = True
    reads_keyboard = True

    def __init__(self, win: Any, *, clock: Clock, plan: ScannerPlan, key: str = "5",
                 name: str = "syncgenerator") -> None:
        if plan.jitter_s or plan.dropped or plan.slices_per_volume != 1:
            raise InputError("PsychoPy's SyncGenerator sends one pulse per TR without jitter or drops; "
                             "use the 'sim' scanner for jitter, dropped or per-slice pulses")
        if plan.tr_s < 0.1:
            raise InputError(f"PsychoPy's SyncGenerator needs a TR of at least 0.1 s, got {plan.tr_s}")
        self.plan = plan
        self.key = key
        self.name = name
        self._keys = KeyboardSource(win, clock=clock, trigger_keys=(key,), backend="event", name=name)
        self._generator: SyncGenerator | None = None

    def open(self) -> None:
        cls = load_sync_generator()
        self._keys.open()
        self._generator = cls(TR=self.plan.tr_s, TA=self.plan.tr_s, volumes=self.plan.n_pulsed_volumes,
                              sync=self.key, skip=self.plan.prep_scans_no_pulse)
        self._generator.daemon = True
        self._generator.start()

    @property
    def running(self) -> bool:
        return self._generator is not None and self._generator.is_alive()

    def poll(self) -> list[Pulse]:
        return self._keys.poll()

    def poll_keys(self) -> list[KeyPress]:
        return self._keys.poll_keys()

    def close(self) -> None:
        if self._generator is not None:
            self._generator.stop()
            self._generator.join(self.plan.tr_s + 1.0)
            self._generator = None
        self._keys.close()
