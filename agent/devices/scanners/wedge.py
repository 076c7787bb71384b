"""USB HID keyboard-wedge scanners, read through evdev.

The scanner is a keyboard to Linux: ``/dev/input/by-id/usb-<maker>_<model>-event-kbd``.
The reader opens that event device, grabs it (``EVIOCGRAB``) so no keystroke reaches a
console, a login prompt or a desktop, and feeds its key events to a
:class:`~.keymap.KeyDecoder` for the scanner's layout. The event device's file
descriptor is non-blocking and watched by the asyncio loop (no thread).

An input device node has major number 13; anything else at the path (a tty, a regular
file) is refused before evdev's ioctls touch it. An unplugged scanner's node goes away:
reads fail with ENODEV and the next open finds no file.

:class:`KeyEventSource` is the seam between the event device and the decoding: the
scanner simulator (``simulators/scanner.py``) implements it to feed real
``evdev.InputEvent`` sequences into the same :class:`KeyboardReader` where no
``/dev/input`` exists (CI).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import os
import stat
import struct
import time
from collections import deque
from typing import Any, Protocol

import evdev
from evdev import InputEvent
from evdev import ecodes as e

from agent.devices.scanners import ReadOutcome, ScanReader
from agent.devices.scanners.keymap import KeyDecoder
from agent.devices.settings import ScannerSettings
from agent.devices.transport import os_error
from agent.errors import DeviceError

INPUT_MAJOR = 13
"""Linux input subsystem character devices (``/dev/input/event*``)."""
EVIOCSCLOCKID = 0x400445A0
"""``_IOW('E', 0xa0, int)``: the clock of the event timestamps (wall clock by default)."""


class KeyEventSource(Protocol):
    """Where a wedge scanner's key events come from (an event device or a simulator)."""

    description: str

    async def open(self) -> None:
        """Open (and grab) the device. Raises :class:`DeviceError` with a stable code."""

    def caps_lock_on(self) -> bool:
        """Whether the host's Caps Lock is on (the device's Caps Lock LED)."""

    async def read(self, timeout_s: float | None) -> list[InputEvent]:
        """The next events, or ``[]`` after ``timeout_s`` without any.

        Raises:
            DeviceError: ``disconnected`` when the device went away.
        """

    def close(self) -> None:
        """Release (ungrab) and close; safe to call twice."""

    def details(self) -> dict[str, Any]:
        """JSON-safe facts (device name, grabbed)."""


class EvdevKeyboard:
    """A Linux input event device, grabbed when asked, read by the asyncio loop."""

    def __init__(self, path: str, *, grab: bool) -> None:
        self.path = path
        self.description = path
        self.grab = grab
        self._device: evdev.InputDevice[str] | None = None
        self._grabbed = False
        self._name = ""
        self._readable = asyncio.Event()

    async def open(self) -> None:
        try:
            node = os.stat(self.path)
        except OSError as exc:
            raise os_error(exc, f"opening {self.path}") from exc
        if not stat.S_ISCHR(node.st_mode) or os.major(node.st_rdev) != INPUT_MAJOR:
            raise DeviceError(f"{self.path} is not an input event device (expected a "
                              "/dev/input/by-id/...-event-kbd link)", code="device_error")
        try:
            device: evdev.InputDevice[str] = evdev.InputDevice(self.path)
        except OSError as exc:
            raise os_error(exc, f"opening {self.path}") from exc
        self._device = device
        self._name = device.name
        with contextlib.suppress(OSError):
            # Monotonic timestamps: an NTP step mid-scan must not look like a key gap.
            fcntl.ioctl(device.fd, EVIOCSCLOCKID, struct.pack("i", time.CLOCK_MONOTONIC))
        keys = device.capabilities().get(e.EV_KEY, [])
        if e.KEY_ENTER not in keys and e.KEY_TAB not in keys:
            raise DeviceError(f"{self.path} ({device.name}) has no Enter or Tab key: not "
                              "the scanner's keyboard interface", code="device_error")
        if self.grab:
            try:
                device.grab()
            except OSError as exc:
                if exc.errno == errno.EBUSY:
                    raise DeviceError(f"{self.path} is grabbed by another program",
                                      code="busy") from exc
                raise os_error(exc, f"grabbing {self.path}") from exc
            self._grabbed = True
        asyncio.get_running_loop().add_reader(device.fd, self._readable.set)

    def caps_lock_on(self) -> bool:
        # The console sets the LEDs of every keyboard, a grabbed one too: this LED is the
        # host's Caps Lock, which scanners with automatic Caps Lock handling compensate.
        if self._device is None:
            return False
        try:
            return e.LED_CAPSL in self._device.leds()
        except OSError:
            return False

    async def read(self, timeout_s: float | None) -> list[InputEvent]:
        device = self._device
        if device is None:
            raise DeviceError(f"{self.path} is closed", code="disconnected")
        while True:
            self._readable.clear()
            try:
                return list(device.read())
            except BlockingIOError:
                pass
            except OSError as exc:
                # ENODEV: the scanner was unplugged while open.
                raise DeviceError(f"reading {self.path}: {exc.strerror or exc}",
                                  code="disconnected") from exc
            try:
                async with asyncio.timeout(timeout_s):
                    await self._readable.wait()
            except TimeoutError:
                return []

    def close(self) -> None:
        device, self._device = self._device, None
        if device is None:
            return
        if device.fd >= 0:
            asyncio.get_running_loop().remove_reader(device.fd)
        if self._grabbed:
            self._grabbed = False
            with contextlib.suppress(OSError):  # already gone with the device
                device.ungrab()
        device.close()

    def details(self) -> dict[str, Any]:
        return {"input_name": self._name, "grabbed": self._grabbed}


class KeyboardReader(ScanReader):
    """Reads of a keyboard-wedge scanner: key events decoded with its layout."""

    def __init__(self, settings: ScannerSettings, events: KeyEventSource | None = None) -> None:
        self.settings = settings
        self.events = events or EvdevKeyboard(settings.conn.path, grab=settings.grab)
        self.description = self.events.description
        self.decoder = self._decoder()
        self._ready: deque[ReadOutcome] = deque()

    def _decoder(self) -> KeyDecoder:
        s = self.settings
        return KeyDecoder(s.layout, terminator=s.terminator,
                          inter_char_timeout_s=s.inter_char_timeout_ms / 1000,
                          max_length=s.max_length)

    async def open(self) -> None:
        await self.events.open()
        self.decoder = self._decoder()
        self._ready.clear()

    async def next(self) -> ReadOutcome:
        while not self._ready:
            timeout_s = self.decoder.timeout_s if self.decoder.active else None
            events = await self.events.read(timeout_s)
            if not events:
                self._ready += self.decoder.expire()
                continue
            if not self.decoder.active:
                # Between reads Caps Lock follows the host; within one, the scanner's own
                # Caps Lock presses toggle it (the decoder tracks those).
                self.decoder.caps_lock = self.events.caps_lock_on()
            self._ready += self.decoder.feed_all(events)
        return self._ready.popleft()

    def close(self) -> None:
        self.events.close()

    def details(self) -> dict[str, Any]:
        return {"reader": "keyboard wedge", "layout": self.settings.layout,
                "terminator": self.settings.terminator, "caps_lock": self.decoder.caps_lock,
                **self.events.details()}
