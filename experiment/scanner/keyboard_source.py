"""Scanner pulses typed as a key by the trigger box, and the participant's other keys.

The trigger box types a key ('5' or 't') into the participant window; button-box keys
(1-4), Escape and every other key are not pulses. One `KeyboardSource` is the run's
key pump: `poll()` returns the pulses, `poll_keys()` the other keys as
`(key, t)`, both from the same reads, so neither steals from the other. When the
trigger source is not a keyboard, the runner still makes one with
`trigger_keys=()` to read Escape and responses.

Two backends (docs/scanner.md says what each timestamp means):

* `ptb` (default): PsychoPy's `psychopy.hardware.keyboard.Keyboard` on the
  Psychtoolbox HID queue. Each key has its own event timestamp (PTB `GetSecs`,
  the base of `psychopy.clock.getTime`), taken when the event reached the queue,
  however late the runner polls. Listens to all keyboards whatever window has focus.
* `event`: `psychopy.event`'s pyglet key buffer. A key is stamped with
  `psychopy.core.getTime()` (monotonicClock; converted here to `psychopy.clock.getTime`'s
  base) when pyglet dispatches the window's events (every
  flip and every poll), so the stamp is late by up to one poll interval. Needs the
  window to have focus. It is also where PsychoPy's SyncGenerator injects its keys,
  stamped at injection.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Callable, Sequence

from experiment.clock import Clock
from experiment.errors import HardwareError, InputError
from experiment.protocol.specs import KeyBackend
from experiment.scanner.base import KeyPress, Pulse, PulseBuffer

KeyReader = Callable[[], list[KeyPress]]  # (key name, clock time) oldest first
BACKENDS = tuple(b.value for b in KeyBackend)


class PtbKeyReader:
    """Keys from PsychoPy's Keyboard (Psychtoolbox HID queue), each with its event time.

    PsychoPy's `getKeys(waitRelease=False)` returns only keys still held and
    `getKeys(waitRelease=True)` only released ones; a short press (a trigger) is
    released before the next poll, so one call alone loses keys. Both are read, and
    a key handed out while held is not handed out again when it is released.
    """

    MAX_HELD = 64

    def __init__(self, *, device: int = -1) -> None:
        try:
            from psychopy import logging as pplogging
            from psychopy.hardware import keyboard
        except Exception as exc:  # pragma: no cover - install problem
            raise HardwareError(f"PsychoPy's keyboard cannot be imported: {exc}") from exc
        self._pplogging = pplogging
        try:
            self._kb = keyboard.Keyboard(device=device, backend="ptb")
        except Exception as exc:
            raise HardwareError(f"cannot open the keyboard queue (device {device}): {exc}") from exc
        backend = self._kb.getBackend()
        if backend != "ptb":
            raise HardwareError(f"PsychoPy's Keyboard is already using the {backend!r} backend in this process; "
                                f"the trigger keyboard needs 'ptb' (Psychtoolbox) for per-key timestamps")
        self._kb.clearEvents()
        self._held: deque[Any] = deque(maxlen=self.MAX_HELD)  # PsychoPy KeyPress objects (untyped library)

    def __call__(self) -> list[KeyPress]:
        held = self._kb.getKeys(waitRelease=False, clear=True)
        released = self._kb.getKeys(waitRelease=True, clear=True)
        fresh = list(held)
        for key in released:
            already = next((h for h in self._held if h is key), None)
            if already is not None:
                self._held.remove(already)
            else:
                fresh.append(key)
        self._held.extend(held)
        fresh.sort(key=lambda k: k.tDown)
        # KeyPress.tDown is PTB time minus logging.defaultClock's reset time
        offset = self._pplogging.defaultClock.getLastResetTime()
        return [(str(k.name), float(k.tDown) + offset) for k in fresh]


class EventKeyReader:
    """Keys from psychopy.event's pyglet buffer, stamped at dispatch (or injection)."""

    def __init__(self) -> None:
        from psychopy import clock as ppclock
        from psychopy import event

        self._event = event
        self._monotonic = ppclock.monotonicClock
        event.clearEvents("keyboard")

    def __call__(self) -> list[KeyPress]:
        # timeStamped=True: [name, time] with time from psychopy.core.getTime(), which is
        # monotonicClock time (zero at PsychoPy's import); add its zero to get getTime's base
        offset = self._monotonic.getLastResetTime()
        return [(str(k[0]), float(k[-1]) + offset) for k in self._event.getKeys(timeStamped=True)]


def _discard_pyglet_keys() -> None:
    """With the ptb backend pyglet still buffers every key typed into the window; empty
    that buffer so 18,000 trigger keys do not pile up in psychopy.event."""
    from psychopy import event

    event.clearEvents("keyboard")


class KeyboardSource:
    """Trigger keys as pulses, other keys as (key, t); see the module docstring.

    `win` is the PsychoPy window (or None): an object of an untyped library, hence Any.
    """

    simulated = False
    reads_keyboard = True

    def __init__(self, win: Any = None, *, clock: Clock, trigger_keys: Sequence[str] = ("5",),
                 backend: str = "ptb", device: int = -1, reader: KeyReader | None = None,
                 name: str = "keyboard", capacity: int = 100_000) -> None:
        if backend not in BACKENDS:
            raise InputError(f"keyboard backend {backend!r} is not one of {', '.join(BACKENDS)}")
        self.win = win
        self.backend = backend
        self.device = device
        self.trigger_keys = frozenset(trigger_keys)
        self.name = name
        self._clock = clock
        self._reader = reader
        self._injected = reader is not None
        self._pulses: PulseBuffer[Pulse] = PulseBuffer(capacity, what=f"{name} pulse queue")
        self._keys: PulseBuffer[KeyPress] = PulseBuffer(capacity, what=f"{name} key queue")
        self._count = 0

    def open(self) -> None:
        if self._reader is None:
            self._reader = PtbKeyReader(device=self.device) if self.backend == "ptb" else EventKeyReader()
        if not self._injected:
            self._check_time_base()

    def _check_time_base(self) -> None:
        """Key times are on psychopy.clock.getTime; refuse a run clock on another base."""
        from psychopy import clock as ppclock

        diff = abs(self._clock.now() - ppclock.getTime())
        if diff > 0.5:
            raise InputError(f"keyboard trigger times are on psychopy.clock.getTime but the run clock "
                             f"({self._clock.name}) differs from it by {diff:.1f} s; use experiment.clock.psychopy_clock()")

    def pump(self) -> None:
        """Read pending keys once and sort them into pulses and other keys."""
        if self._reader is None:
            raise RuntimeError("KeyboardSource.open() was not called")
        for key, t in self._reader():
            if key in self.trigger_keys:
                self._pulses.push(Pulse(self._count, t, self.name))
                self._count += 1
            else:
                self._keys.push((key, t))
        if self.backend == "ptb" and self.win is not None and not self._injected:
            _discard_pyglet_keys()

    def poll(self) -> list[Pulse]:
        self.pump()
        return self._pulses.drain()

    def poll_keys(self) -> list[KeyPress]:
        """Keys that are not trigger keys, (name, clock time), oldest first."""
        self.pump()
        return self._keys.drain()

    def close(self) -> None:
        self._reader = None
