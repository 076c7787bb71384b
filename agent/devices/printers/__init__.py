"""Printer languages: what a printer says about itself, and what a job holds.

One module per language: :mod:`.zpl` (Zebra ``~HS`` and ``~HQES``), :mod:`.tspl` (TSC
``<ESC>!?``), :mod:`.epl` (EPL2 ``^ee``) and :mod:`.escpos` (``DLE EOT n`` real-time
status, and jobs built with python-escpos). Each parser is pure: reply bytes in, a
:class:`PrinterStatus` out, or :class:`~agent.errors.ProtocolError` saying what was
expected and what arrived. :class:`PrinterLanguage` ties a parser to its request bytes and
reply framing for :class:`agent.devices.printer.Printer`, which owns the port.

Status always comes from the printer itself, never from a spooler: a printer that does
not answer is ``status_unknown`` (``ready is None``), never ready.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from agent.devices.transport import SerialLine
from agent.errors import FAULT_CODES, ProtocolError

FAULT_PRIORITY: tuple[str, ...] = (
    "head_open", "paper_out", "paper_jam", "ribbon_out", "cutter_error", "overheated",
    "device_error",
    "paused", "offline", "protocol_error", "status_unknown", "paper_near_end",
)
"""Fault codes a printer status can carry, most important first (the device state's code)."""

WARNING_CODES = frozenset({"paper_near_end"})
"""Codes that are reported but do not stop printing: the printer stays ``ready``."""


@dataclass(frozen=True)
class PrinterStatus:
    """What a printer said about itself in answer to one status request.

    Attributes:
        ready: ``True`` when the printer can print now, ``False`` when a fault stops it,
            ``None`` when the status is unknown (no reply, or a reply that did not parse).
        faults: stable codes from :data:`agent.errors.FAULT_CODES`, most important first
            (see :data:`FAULT_PRIORITY`); ``paper_near_end`` is a warning only.
        labels_remaining: labels of the current batch still to print (ZPL ``~HS``; EPL
            printers that append it to a paper-out report), else ``None``.
        formats_in_buffer: label formats received and not yet printed (ZPL ``~HS``).
        printing: the printer says it is printing (TSPL bit 5; ZPL labels or formats
            pending); ``None`` when the language does not say.
        notes: human words for every condition reported, faults and harmless ones.
        fields: every field of the reply, decoded, JSON-safe (for status and diagnostics).
        raw: the reply bytes as received.
        at: when the reply was parsed (Unix time).
    """

    ready: bool | None
    faults: tuple[str, ...] = ()
    labels_remaining: int | None = None
    formats_in_buffer: int | None = None
    printing: bool | None = None
    notes: tuple[str, ...] = ()
    fields: Mapping[str, Any] = field(default_factory=dict)
    raw: bytes = b""
    at: float = field(default_factory=time.time)

    @property
    def blocking_faults(self) -> tuple[str, ...]:
        """The faults that stop printing (all but warnings), most important first."""
        return tuple(code for code in self.faults if code not in WARNING_CODES)

    @property
    def message(self) -> str:
        """One human line: the notes, or the description of the first fault."""
        if self.notes:
            return "; ".join(self.notes)
        if self.faults:
            return FAULT_CODES.get(self.faults[0], self.faults[0])
        return "ready" if self.ready else "no status"

    def as_dict(self, *, full: bool = True) -> dict[str, Any]:
        """JSON-safe form; ``raw`` as latin-1 text like the other bus items.

        Args:
            full: include ``fields`` and ``raw`` (diagnostics); without them the dict is
                small enough for the device status the agent publishes.
        """
        out: dict[str, Any] = {
            "ready": self.ready,
            "faults": list(self.faults),
            "labels_remaining": self.labels_remaining,
            "formats_in_buffer": self.formats_in_buffer,
            "printing": self.printing,
            "notes": list(self.notes),
            "at": self.at,
        }
        if full:
            out["fields"] = dict(self.fields)
            out["raw"] = self.raw.decode("latin-1")
        return out


MAX_QUANTITY = 999_999_999
"""More labels than a job's quantity may ask for (ZPL ``^PQ`` takes up to 99,999,999)."""


def quantity(digits: bytes, command: str) -> int:
    """A job's label quantity, ``digits`` after ``command`` (``^PQ``, ``PRINT``, ``P``).

    Raises:
        ValueError: over :data:`MAX_QUANTITY` (a longer number would not even convert).
    """
    value = digits.lstrip(b"0") or b"0"
    if len(value) > len(str(MAX_QUANTITY)) or int(value) > MAX_QUANTITY:
        raise ValueError(f"{command} {digits[:20].decode('ascii')}"
                         f"{'...' if len(digits) > 20 else ''} asks for more than "
                         f"{MAX_QUANTITY:,} labels")
    return int(value)


def make_status(faults: Iterable[str], notes: Iterable[str], raw: bytes, *,
                fields: Mapping[str, Any] | None = None, labels_remaining: int | None = None,
                formats_in_buffer: int | None = None,
                printing: bool | None = None) -> PrinterStatus:
    """A parsed status: faults ordered by importance, ``ready`` unless one blocks printing."""
    unique = set(faults)
    ordered = tuple(code for code in FAULT_PRIORITY if code in unique)
    ordered += tuple(sorted(unique - set(ordered)))
    return PrinterStatus(
        ready=not any(code not in WARNING_CODES for code in ordered), faults=ordered,
        labels_remaining=labels_remaining, formats_in_buffer=formats_in_buffer,
        printing=printing, notes=tuple(dict.fromkeys(notes)), fields=dict(fields or {}),
        raw=raw)


def unknown_status(raw: bytes, note: str) -> PrinterStatus:
    """No usable answer: ``status_unknown``, never ready."""
    return PrinterStatus(ready=None, faults=("status_unknown",), notes=(note,), raw=raw)


def garbled_status(raw: bytes, error: ProtocolError) -> PrinterStatus:
    """A reply that does not parse: ``protocol_error``, status unknown."""
    return PrinterStatus(ready=None, faults=("protocol_error",), notes=(str(error),), raw=raw)


class PrinterLanguage(ABC):
    """A printer language's status exchange and job facts, for the printer driver.

    One instance per printer: a language may learn what its printer supports (ZPL
    printers without ``~HQES``).
    """

    name: ClassVar[str]
    status_command: ClassVar[str]
    """The status request as the manuals write it, for messages (``~HS``)."""
    line: ClassVar[SerialLine] = SerialLine(9600)
    """Serial defaults (the factory settings of most printers: 9600 8N1, no handshake)."""

    @abstractmethod
    def status_request(self) -> bytes:
        """The bytes that ask the printer for its status."""

    @abstractmethod
    def reply_complete(self, reply: bytes) -> bool:
        """Whether ``reply`` (everything received since the request) is a whole reply.

        Raises:
            ProtocolError: as soon as the bytes cannot be the start of a reply.
        """

    @abstractmethod
    def parse_status(self, reply: bytes) -> PrinterStatus:
        """Parse a complete reply. Raises :class:`ProtocolError` if it does not parse."""

    def reply_timed_out(self, reply: bytes, timeout_ms: int) -> PrinterStatus:
        """The status when the reply did not complete within ``timeout_ms``.

        Nothing at all means ``status_unknown``; a partial reply is a protocol error.
        """
        if not reply.strip(b"\r\n"):
            return unknown_status(reply, f"no reply to {self.status_command} within "
                                         f"{timeout_ms} ms")
        raise ProtocolError(f"expected a complete reply to {self.status_command} within "
                            f"{timeout_ms} ms, got only {reply[:64]!r}")

    def labels_in(self, job: bytes) -> int | None:
        """How many labels ``job`` prints, when the language says; ``None`` if unknown."""
        return None
