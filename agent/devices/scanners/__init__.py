"""Scanner protocols: the one primitive every scanner connection implements.

A :class:`ScanReader` delivers what a scanner sent, one read at a time: a completed
:class:`RawScan` (the text between two terminators) or a :class:`Discarded` input (a
partial read cut by the inter-character timeout, an over-long read, a key the layout
lacks). How the bytes or key presses arrive is the reader's business:

* :mod:`.serial_scanner`: serial and USB-CDC scanners (and network ones over TCP),
  lines framed by CR, LF or CRLF;
* :mod:`.wedge`: USB HID keyboard-wedge scanners read through evdev, key presses
  decoded with the scanner's keyboard layout by :mod:`.keymap`.

:class:`agent.devices.scanner.Scanner` turns both into ``Scan`` and ``BadInput`` items on
the bus (AIM identifier and GS1 fields by :mod:`.symbology`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

DISCARD_CODES = ("partial_scan", "too_long", "unknown_key", "protocol_error")
"""Why input was thrown away (``BadInput.code``)."""


@dataclass(frozen=True, slots=True)
class RawScan:
    """One complete read as the scanner sent it: AIM prefix and GS separators included.

    ``raw`` is what arrived on the wire (the line's bytes; for a keyboard wedge the decoded
    text in UTF-8, since key presses have no bytes).
    """

    text: str
    raw: bytes


@dataclass(frozen=True, slots=True)
class Discarded:
    """Input that is not a scan, and why; ``code`` is one of :data:`DISCARD_CODES`."""

    code: str
    message: str
    raw: bytes = b""


ReadOutcome = RawScan | Discarded


class ScanReader(ABC):
    """A scanner connection: open it, take reads from it, close it."""

    description = ""

    @abstractmethod
    async def open(self) -> None:
        """Reach the scanner. Raises :class:`agent.errors.DeviceError` with a stable code."""

    @abstractmethod
    async def next(self) -> ReadOutcome:
        """Wait for the next complete read or discarded input.

        Raises:
            DeviceError: ``disconnected`` when the scanner went away.
        """

    @abstractmethod
    def close(self) -> None:
        """Release the port or device; safe to call twice or after a failed open."""

    def details(self) -> dict[str, Any]:
        """JSON-safe facts for the device status (layout, framing, model name)."""
        return {}
