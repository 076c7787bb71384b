"""Barcode scanners: every read becomes a ``Scan`` on the bus, every bad input a ``BadInput``.

:func:`make_scanner` picks the reader by the connection's scheme (an explicit dict):
``evdev://`` is a USB HID keyboard-wedge scanner (:mod:`.scanners.wedge`), ``serial://``
a serial or USB-CDC scanner and ``tcp://`` a network one (:mod:`.scanners.serial_scanner`).
:class:`Scanner` is the shared part: it strips and names the AIM symbology identifier,
parses GS1 element strings (:mod:`.scanners.symbology`), publishes the :class:`Scan`, and
reports thrown-away input as :class:`BadInput` (``partial_scan``, ``too_long``,
``unknown_key``, ``protocol_error``) with a log line. Bad input never stops the driver.
"""

from __future__ import annotations

import re
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from agent.bus import Bus
from agent.devices.base import Device
from agent.devices.readings import BadInput, Scan
from agent.devices.scanners import Discarded, RawScan, ScanReader
from agent.devices.scanners.serial_scanner import LineReader
from agent.devices.scanners.symbology import parse_gs1, split_aim, symbology_name
from agent.devices.scanners.wedge import KeyboardReader
from agent.devices.settings import ScannerSettings
from agent.errors import ProtocolError

READERS: dict[str, Callable[[ScannerSettings], ScanReader]] = {
    "evdev": KeyboardReader,
    "serial": LineReader,
    "tcp": LineReader,
}
"""Connection scheme -> the scanner reader for it."""

# Control characters barcode data carries: HT, EOT, FS, GS, RS, US (GS1 separators,
# ISO/IEC 15434 envelopes). Any other C0 byte or DEL is line noise (wrong baud rate or
# parity) or a misconfigured prefix, not barcode text.
_NOT_TEXT = re.compile(r"[\x00-\x03\x05-\x08\x0b\x0c\x0e-\x1b\x7f]")
STX, ETX = "\x02", "\x03"


def scan_from_text(device: str, text: str, raw: bytes, *, aim_ids: bool) -> Scan:
    """The :class:`Scan` for one complete read.

    A leading STX and trailing ETX (a serial scanner's optional framing) are removed.
    With ``aim_ids`` a leading AIM identifier is stripped and named; GS1 fields are
    parsed (errors land in ``gs1_error``, never raised).

    Raises:
        ProtocolError: the text holds control characters that barcode data never has, or
            nothing besides the framing and the AIM identifier.
    """
    if text.startswith(STX) and text.endswith(ETX) and len(text) >= 2:
        text = text[1:-1]
    bad = _NOT_TEXT.search(text)
    if bad is not None:
        raise ProtocolError(
            f"expected barcode text, got control byte 0x{ord(bad.group()):02x} at position "
            f"{bad.start()} of {text[:40]!r} (wrong baud rate or parity?)")
    identifier, data = split_aim(text) if aim_ids else (None, text)
    if not data:
        raise ProtocolError(f"expected barcode text, got an empty read {text!r}")
    gs1 = parse_gs1(data, identifier)
    return Scan(
        device=device,
        data=data,
        symbology=identifier,
        symbology_name=symbology_name(identifier) if identifier else None,
        gs1=gs1.fields,
        gs1_error=gs1.error,
        raw=raw,
    )


class Scanner(Device[ScannerSettings]):
    """A barcode scanner of any connection: its reads on the bus, its counters."""

    kind = "scanner"

    def __init__(self, name: str, settings: ScannerSettings, bus: Bus,
                 reader: ScanReader) -> None:
        super().__init__(name, settings, bus)
        self.reader = reader
        self.scans = 0
        self.discarded: Counter[str] = Counter()
        self.last_scan_at: float | None = None

    async def _open(self) -> None:
        await self.reader.open()

    async def _serve(self) -> None:
        while True:
            outcome = await self.reader.next()
            if isinstance(outcome, RawScan):
                self.report_scan(outcome)
            else:
                self.report_discarded(outcome)

    async def _close(self) -> None:
        self.reader.close()

    def report_scan(self, read: RawScan) -> Scan | None:
        """Publish one complete read as a :class:`Scan` (or as ``protocol_error``)."""
        try:
            scan = scan_from_text(self.name, read.text, read.raw,
                                  aim_ids=self.settings.aim_ids)
        except ProtocolError as exc:
            self.report_discarded(Discarded(exc.code, str(exc), read.raw))
            return None
        self.seen()
        self.scans += 1
        self.last_scan_at = scan.at
        if scan.gs1_error:
            self.log.info("%s: scan %r: GS1 data not valid: %s", self.name, scan.data,
                          scan.gs1_error)
        else:
            self.log.info("%s: scan %r (%s)", self.name, scan.data,
                          scan.symbology_name or "symbology not sent")
        self.bus.publish(scan)
        return scan

    def report_discarded(self, discarded: Discarded) -> BadInput:
        """Publish thrown-away input as :class:`BadInput`; the packer may need to rescan."""
        self.discarded[discarded.code] += 1
        self.log.warning("%s: input discarded (%s): %s", self.name, discarded.code,
                         discarded.message)
        bad = BadInput(self.name, discarded.code, discarded.message, discarded.raw,
                       at=time.time())
        self.bus.publish(bad)
        return bad

    def details(self) -> dict[str, Any]:
        return {
            **self.reader.details(),
            "aim_ids": self.settings.aim_ids,
            "scans": self.scans,
            "discarded": sum(self.discarded.values()),
            "discarded_by_code": dict(self.discarded),
            "last_scan_at": self.last_scan_at,
        }


def make_scanner(name: str, settings: ScannerSettings, bus: Bus) -> Scanner:
    """The scanner driver for ``settings.connection`` (``evdev://``, ``serial://``, ``tcp://``)."""
    reader = READERS[settings.conn.scheme](settings)
    return Scanner(name, settings, bus, reader)
