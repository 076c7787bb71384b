"""A barcode scanner double: serial on a pseudo-terminal, or a keyboard wedge.

Serial: :class:`SerialScannerSimulator` owns a :class:`PtyPort` whose slave is reached
through a link (like ``/dev/serial/by-id/...``); each scan is written as the optional
AIM prefix, the data and the suffix (CR, LF or CRLF), as a scanner in serial mode does.
It can also send a read cut short, line noise, and be unplugged and plugged back.

Keyboard wedge: :func:`key_events` gives the ``evdev.InputEvent`` sequence a USB HID
scanner set to a keyboard country produces for a text (``EV_MSC``/``MSC_SCAN`` with the
HID usage, ``EV_KEY`` down and up with Shift/AltGr/Ctrl, ``SYN_REPORT``, 1 ms apart).
:class:`KeyFeed` hands such sequences to the agent's own wedge reader in-process
(where there is no ``/dev/input``, as in CI); :class:`UinputScanner` types them into a
real virtual keyboard through ``/dev/uinput`` for a bench or a desktop (root or the
``uinput`` group; not used by the tests).

Run it by hand::

    python -m simulators.scanner --link /tmp/scanner0 [--suffix crlf] [--aim ]C1]
    python -m simulators.scanner --uinput --layout de [--terminator tab]

It prints the connection string, then every stdin line is a barcode to scan, with
``<GS>``, ``<RS>``, ``<FS>``, ``<US>``, ``<EOT>`` written for those control characters.
Lines starting with ``!`` are commands: ``!partial TEXT`` (no suffix), ``!garbage [N]``,
``!aim ID`` / ``!aim off``, ``!suffix cr|lf|crlf``, ``!unplug``, ``!replug``, ``!help``,
``!quit``; ``!!TEXT`` scans a barcode that starts with ``!``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sys
import time
from collections import deque
from pathlib import Path
from typing import Any

from evdev import InputEvent
from evdev import ecodes as e

from agent.devices.scanners.keymap import LAYOUTS, text_to_events
from agent.errors import DeviceError
from simulators.console import serve_stdin
from simulators.ptyport import PtyPort

SUFFIXES = {"cr": b"\r", "lf": b"\n", "crlf": b"\r\n"}
CONTROL_NAMES = {"<GS>": "\x1d", "<RS>": "\x1e", "<FS>": "\x1c", "<US>": "\x1f",
                 "<EOT>": "\x04"}
KEY_INTERVAL_S = 0.002
"""A HID scanner sends one report per 1 ms USB poll: key down, then key up."""


def _hid_usages() -> dict[int, int]:
    """Linux key code -> USB HID keyboard usage (page 7), for ``MSC_SCAN`` events."""
    usages = {code: 0x04 + i for i, code in enumerate(
        getattr(e, f"KEY_{c}") for c in "ABCDEFGHIJKLMNOPQRSTUVWXYZ")}
    usages |= {getattr(e, f"KEY_{c}"): 0x1E + i for i, c in enumerate("1234567890")}
    named = {
        "ENTER": 0x28, "ESC": 0x29, "BACKSPACE": 0x2A, "TAB": 0x2B, "SPACE": 0x2C,
        "MINUS": 0x2D, "EQUAL": 0x2E, "LEFTBRACE": 0x2F, "RIGHTBRACE": 0x30,
        "BACKSLASH": 0x31, "SEMICOLON": 0x33, "APOSTROPHE": 0x34, "GRAVE": 0x35,
        "COMMA": 0x36, "DOT": 0x37, "SLASH": 0x38, "CAPSLOCK": 0x39, "KPSLASH": 0x54,
        "KPASTERISK": 0x55, "KPMINUS": 0x56, "KPPLUS": 0x57, "KPENTER": 0x58, "KP1": 0x59,
        "KP2": 0x5A, "KP3": 0x5B, "KP4": 0x5C, "KP5": 0x5D, "KP6": 0x5E, "KP7": 0x5F,
        "KP8": 0x60, "KP9": 0x61, "KP0": 0x62, "KPDOT": 0x63, "102ND": 0x64,
        "LEFTCTRL": 0xE0, "LEFTSHIFT": 0xE1, "LEFTALT": 0xE2, "RIGHTCTRL": 0xE4,
        "RIGHTSHIFT": 0xE5, "RIGHTALT": 0xE6,
    }
    return usages | {getattr(e, f"KEY_{name}"): usage for name, usage in named.items()}


HID_USAGES = _hid_usages()


def with_msc_scan(events: list[InputEvent]) -> list[InputEvent]:
    """Put the ``MSC_SCAN`` event usbhid sends before each key event."""
    out: list[InputEvent] = []
    for event in events:
        if event.type == e.EV_KEY and event.code in HID_USAGES:
            out.append(InputEvent(event.sec, event.usec, e.EV_MSC, e.MSC_SCAN,
                                  0x70000 | HID_USAGES[event.code]))
        out.append(event)
    return out


def key_events(text: str, layout: str = "us", terminator: str | None = "enter", *,
               start_s: float | None = None, key_interval_s: float = KEY_INTERVAL_S,
               caps_lock: bool = False) -> list[InputEvent]:
    """The events of a wedge scanner set to ``layout`` typing ``text`` and ``terminator``.

    Timestamps start at ``start_s`` (now by default) and advance ``key_interval_s`` per
    key. Raises :class:`ValueError` for a character the layout cannot type.
    """
    events = text_to_events(text, layout, terminator=terminator,
                            start_s=time.time() if start_s is None else start_s,
                            key_interval_s=key_interval_s, caps_lock=caps_lock)
    return with_msc_scan(events)


def alt_code_events(text: str, terminator: str | None = "enter", *, start_s: float = 0.0,
                    key_interval_s: float = KEY_INTERVAL_S) -> list[InputEvent]:
    """``text`` typed as Windows Alt codes (Alt held, the decimal code on the keypad).

    Codes above 127 are sent with a leading 0 (code page 1252), as scanners in
    "keypad emulation" mode do.
    """
    keypad = {str(n): getattr(e, f"KEY_KP{n}") for n in range(10)}
    presses: list[tuple[int, int]] = []
    for char in text:
        code = char.encode("cp1252")[0]
        digits = f"0{code}" if code > 127 else f"{code:03d}"
        presses += [(e.KEY_LEFTALT, 1)]
        for digit in digits:
            presses += [(keypad[digit], 1), (keypad[digit], 0)]
        presses += [(e.KEY_LEFTALT, 0)]
    if terminator is not None:
        key = e.KEY_TAB if terminator == "tab" else e.KEY_ENTER
        presses += [(key, 1), (key, 0)]
    events: list[InputEvent] = []
    step_us = round(key_interval_s * 1_000_000 / 2)
    for n, (code, value) in enumerate(presses):
        sec, usec = divmod(round(start_s * 1_000_000) + n * step_us, 1_000_000)
        events += [InputEvent(sec, usec, e.EV_KEY, code, value),
                   InputEvent(sec, usec, e.EV_SYN, e.SYN_REPORT, 0)]
    return with_msc_scan(events)


class KeyFeed:
    """A wedge scanner in-process: a ``KeyEventSource`` for the agent's wedge reader.

    Each :meth:`send` is one batch, as one read of the event device returns. Use it from
    the event loop that runs the reader.
    """

    description = "simulated keyboard-wedge scanner"

    def __init__(self, layout: str = "us", terminator: str = "enter", *,
                 caps_lock_led: bool = False) -> None:
        self.layout = layout
        self.terminator = terminator
        self.caps_lock_led = caps_lock_led
        self.plugged = True
        self.opened = 0
        self._open = False
        self._batches: deque[list[InputEvent]] = deque()
        self._arrived: asyncio.Event | None = None

    # KeyEventSource
    async def open(self) -> None:
        if not self.plugged:
            raise DeviceError("simulated scanner is unplugged", code="not_found")
        self._arrived = asyncio.Event()
        self._batches.clear()
        self._open = True
        self.opened += 1

    def caps_lock_on(self) -> bool:
        return self.caps_lock_led

    async def read(self, timeout_s: float | None) -> list[InputEvent]:
        while True:
            if not self._open or self._arrived is None:
                raise DeviceError("simulated scanner went away", code="disconnected")
            if self._batches:
                return self._batches.popleft()
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), timeout_s)
            except TimeoutError:
                return []

    def close(self) -> None:
        self._open = False
        self._wake()

    def details(self) -> dict[str, Any]:
        return {"input_name": self.description, "grabbed": True}

    # the scanner's side
    def scan(self, text: str, *, layout: str | None = None, terminator: str | None = None,
             caps_lock: bool = False) -> list[InputEvent]:
        """Type one barcode (and the terminator) as one batch; return its events."""
        events = key_events(text, layout or self.layout, terminator or self.terminator,
                            caps_lock=caps_lock)
        self.send(events)
        return events

    def send(self, events: list[InputEvent]) -> None:
        """Deliver ``events`` as one batch (dropped while unplugged, like a real cable)."""
        if self.plugged and self._open:
            self._batches.append(list(events))
            self._wake()

    def unplug(self) -> None:
        """The reader's next read fails with ``disconnected``; opens fail until replug."""
        self.plugged = False
        self._open = False
        self._wake()

    def replug(self) -> None:
        self.plugged = True

    def _wake(self) -> None:
        if self._arrived is not None:
            self._arrived.set()


class SerialScannerSimulator:
    """A serial (or USB-CDC) scanner on a pseudo-terminal reached through ``link``."""

    def __init__(self, link: str | Path, *, suffix: str = "cr", aim: str | None = None) -> None:
        self.port = PtyPort(link)
        self.suffix = suffix
        self.aim = aim
        self._random = random.Random(0)

    @property
    def path(self) -> Path:
        return self.port.path

    @property
    def connection(self) -> str:
        return f"serial://{self.port.path}"

    def scan(self, data: str, *, aim: str | None = None, suffix: str | None = None) -> bytes:
        """Send one read: AIM prefix (this call's, else the simulator's), data, suffix."""
        prefix = aim if aim is not None else (self.aim or "")
        frame = (prefix + data).encode() + SUFFIXES[suffix or self.suffix]
        self.port.write(frame)
        return frame

    def partial(self, data: str) -> bytes:
        """A read cut short: the data without its suffix."""
        frame = data.encode()
        self.port.write(frame)
        return frame

    def garbage(self, length: int = 64) -> bytes:
        """Line noise as a wrong baud rate gives, ended by a CR."""
        frame = bytes(self._random.randrange(256) for _ in range(length)) + b"\r"
        self.port.write(frame)
        return frame

    def send(self, raw: bytes) -> None:
        self.port.write(raw)

    def unplug(self) -> None:
        self.port.unplug()

    def replug(self) -> None:
        self.port.replug()

    def close(self) -> None:
        self.port.close()

    def command(self, line: str) -> str:
        """One stdin line: a barcode to scan, or a ``!`` command. Returns what was done."""
        return _command(self, line)


class UinputScanner:
    """A virtual USB keyboard through ``/dev/uinput`` typing like a wedge scanner."""

    def __init__(self, layout: str = "us", terminator: str = "enter") -> None:
        from evdev import UInput  # only here: CI has no /dev/uinput

        keys = sorted(set(LAYOUTS[layout].keys) | set(HID_USAGES))
        self.layout = layout
        self.terminator = terminator
        self.device = UInput({e.EV_KEY: keys}, name="bench-agent simulated scanner",
                             vendor=0x1209, product=0x0001)  # pid.codes test ids
        self.path = os.fsdecode(self.device.device.path) if self.device.device else ""

    def scan(self, text: str) -> None:
        """Type ``text`` and the terminator, one HID report per ``KEY_INTERVAL_S``."""
        events = text_to_events(text, self.layout, terminator=self.terminator, start_s=0.0)
        for event in events:
            if event.type == e.EV_SYN:
                self.device.syn()
                time.sleep(KEY_INTERVAL_S / 2)
            else:
                self.device.write(event.type, event.code, event.value)

    def close(self) -> None:
        self.device.close()


def decode_controls(line: str) -> str:
    for name, char in CONTROL_NAMES.items():
        line = line.replace(name, char)
    return line


def _command(sim: SerialScannerSimulator | UinputScanner, line: str) -> str:
    line = line.rstrip("\r\n")
    if line.startswith("!!") or not line.startswith("!"):
        data = decode_controls(line[1:] if line.startswith("!!") else line)
        if isinstance(sim, UinputScanner):
            sim.scan(data)
            return f"typed {data!r}"
        return f"sent {sim.scan(data)!r}"
    word, _, arg = line[1:].partition(" ")
    if word == "help":
        return __doc__.split("Run it by hand::", 1)[1].strip() if __doc__ else ""
    if isinstance(sim, UinputScanner):
        raise ValueError(f"!{word}: a uinput scanner only types barcodes")
    if word == "partial":
        return f"sent {sim.partial(decode_controls(arg))!r}"
    if word == "garbage":
        return f"sent {sim.garbage(int(arg or 64))!r}"
    if word == "aim":
        sim.aim = None if arg in ("", "off") else arg
        return f"AIM prefix {sim.aim or 'off'}"
    if word == "suffix":
        if arg not in SUFFIXES:
            raise ValueError(f"suffix is one of {', '.join(SUFFIXES)}, not {arg!r}")
        sim.suffix = arg
        return f"suffix {arg}"
    if word == "unplug":
        sim.unplug()
        return "unplugged"
    if word == "replug":
        sim.replug()
        return "plugged in"
    raise ValueError(f"unknown command !{word} (try !help)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--link", type=Path, help="serial scanner: the pty's link path")
    where.add_argument("--uinput", action="store_true",
                       help="keyboard wedge: a virtual keyboard via /dev/uinput")
    parser.add_argument("--suffix", choices=sorted(SUFFIXES), default="cr")
    parser.add_argument("--aim", help="AIM prefix for every serial scan, e.g. ]C1")
    parser.add_argument("--layout", choices=sorted(LAYOUTS), default="us")
    parser.add_argument("--terminator", choices=("enter", "tab"), default="enter")
    args = parser.parse_args(argv)
    sim: SerialScannerSimulator | UinputScanner
    if args.uinput:
        sim = UinputScanner(args.layout, args.terminator)
        print(f"connection = 'evdev://{sim.path}'", flush=True)
    else:
        sim = SerialScannerSimulator(args.link, suffix=args.suffix, aim=args.aim)
        print(f"connection = {sim.connection!r}", flush=True)
    handle = sim.command if isinstance(sim, SerialScannerSimulator) else \
        (lambda line: _command(sim, line))
    try:
        # Every other line is a barcode, so the quit words carry a "!".
        serve_stdin(handle, quit_words=("!quit", "!exit"))
    finally:
        sim.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
