"""Serial and USB-CDC scanners (and network scanners on a raw TCP port): lines of text.

A scanner in serial mode sends each read as bytes followed by its suffix: CR (the
factory default of most), LF or CRLF. USB scanners in "USB serial" / CDC-ACM mode appear
as ``/dev/ttyACM0`` (``/dev/serial/by-id/usb-<maker>_...-if00``) and behave the same;
their baud setting is ignored by the device. RS-232 scanners default to 9600 8N1 on
most models (many Honeywell models: 115200), set with ``?baud=`` on the connection.

:class:`LineFramer` cuts the byte stream into lines; :class:`LineReader` runs it on the
transport from :func:`agent.devices.transport.open_transport`. Empty lines (the second
half of a CRLF under ``any`` framing, a bare suffix) are not reads and are dropped.
"""

from __future__ import annotations

import re
from collections import deque
from typing import Any

from agent.devices.scanners import Discarded, RawScan, ReadOutcome, ScanReader
from agent.devices.settings import ScannerSettings
from agent.devices.transport import SerialLine, Transport, open_transport

DEFAULT_LINE = SerialLine(baud=9600, bytesize=8, parity="N", stopbits=1)
_ENDINGS = {
    "cr": re.compile(rb"\r"),
    "lf": re.compile(rb"\n"),
    "crlf": re.compile(rb"\r\n"),
    "any": re.compile(rb"[\r\n]"),
}
_FRAMING_NAMES = {"cr": "CR", "lf": "LF", "crlf": "CRLF", "any": "CR or LF"}


class LineFramer:
    """Bytes in, complete lines out. Pure: the reader times the silences.

    A line longer than ``max_length`` bytes is reported once as ``too_long`` and the rest
    of it, up to the next line ending, is dropped. :meth:`expire` discards an
    unterminated line as ``partial_scan`` (called after the inter-character timeout).
    """

    def __init__(self, framing: str = "any", *, max_length: int = 4096,
                 inter_char_timeout_s: float = 0.1) -> None:
        self.framing = framing
        self.max_length = max_length
        self.timeout_s = inter_char_timeout_s
        self._ending = _ENDINGS[framing]
        self._buffer = bytearray()
        self._skipping = False

    @property
    def pending(self) -> bool:
        """Bytes of an unfinished line are buffered (or an over-long one is skipped)."""
        return bool(self._buffer) or self._skipping

    def feed(self, data: bytes) -> list[ReadOutcome]:
        """Take received bytes; return the lines they completed and what was discarded."""
        self._buffer += data
        out: list[ReadOutcome] = []
        while True:
            match = self._ending.search(self._buffer)
            if match is None:
                break
            line = bytes(self._buffer[:match.start()])
            del self._buffer[:match.end()]
            if self._skipping:
                self._skipping = False
            elif len(line) > self.max_length:
                out.append(self._too_long(line))
            elif line:
                out.append(RawScan(decode_line(line), line))
        pending = len(self._buffer)
        if self.framing == "crlf" and self._buffer.endswith(b"\r"):
            pending -= 1  # the CR of a CRLF whose LF comes with the next read
        if pending > self.max_length and not self._skipping:
            out.append(self._too_long(bytes(self._buffer)))
            self._skipping = True
        if self._skipping:
            # Keep a possible CR of a CRLF split across two reads; drop the rest.
            del self._buffer[:-1 if self._buffer.endswith(b"\r") else len(self._buffer)]
        return out

    def expire(self) -> list[ReadOutcome]:
        """The line stopped without its ending: discard it."""
        line, skipping = bytes(self._buffer), self._skipping
        self._buffer.clear()
        self._skipping = False
        if skipping or not line:
            return []
        return [Discarded("partial_scan", f"partial read {_preview(line)} discarded: no "
                          f"{_FRAMING_NAMES[self.framing]} within "
                          f"{self.timeout_s * 1000:g} ms", line)]

    def _too_long(self, line: bytes) -> Discarded:
        return Discarded("too_long", f"line longer than {self.max_length} bytes discarded "
                         f"(is the scanner's suffix {_FRAMING_NAMES[self.framing]}?)",
                         line[:self.max_length])


def decode_line(line: bytes) -> str:
    """Scanner text is ASCII or UTF-8; other bytes (Latin-1 from old scanners) map 1:1."""
    try:
        return line.decode("utf-8")
    except UnicodeDecodeError:
        return line.decode("latin-1")


def _preview(line: bytes, limit: int = 40) -> str:
    return repr(line if len(line) <= limit else line[:limit] + b"...")


class LineReader(ScanReader):
    """Reads of a serial, USB-CDC or TCP scanner."""

    def __init__(self, settings: ScannerSettings) -> None:
        self.settings = settings
        self.connection = settings.conn
        self.description = self.connection.describe()
        self.framer = self._framer()
        self._transport: Transport | None = None
        self._ready: deque[ReadOutcome] = deque()

    def _framer(self) -> LineFramer:
        s = self.settings
        return LineFramer(s.framing, max_length=s.max_length,
                          inter_char_timeout_s=s.inter_char_timeout_ms / 1000)

    async def open(self) -> None:
        # A scanner answers nothing unprompted: an opened port is all there is to check.
        self._transport = await open_transport(self.connection, line=DEFAULT_LINE)
        self.description = self._transport.description or self.description
        self.framer = self._framer()
        self._ready.clear()

    async def next(self) -> ReadOutcome:
        transport = self._transport
        if transport is None:
            raise RuntimeError("LineReader.next() before open()")
        while not self._ready:
            if self.framer.pending:
                data = await transport.read_for(self.framer.timeout_s)
                if not data:
                    self._ready += self.framer.expire()
                    continue
            else:
                data = await transport.read()
            self._ready += self.framer.feed(data)
        return self._ready.popleft()

    def close(self) -> None:
        transport, self._transport = self._transport, None
        if transport is not None:
            transport.close()

    def details(self) -> dict[str, Any]:
        return {"reader": "serial" if self.connection.scheme == "serial" else "tcp",
                "framing": self.settings.framing, "port": self.description}
