"""TSPL/TSPL2 (TSC and TSPL-compatible label printers such as Xprinter, Gprinter).

Status: ``<ESC>!?`` (``1B 21 3F``) is answered at any time, even in error states and in
the middle of a job, with one byte whose bits flag the printer's condition (TSPL/TSPL2
programming manual, "<ESC>!?"):

====  ====================================================================
bit   meaning (0x00: ready)
====  ====================================================================
0     print head opened
1     paper jam
2     out of paper
3     out of ribbon
4     pause
5     printing
6     cover opened (models with a cover sensor)
7     other error; on some models: ambient temperature out of range
====  ====================================================================

so ``0x05`` is "out of paper and head opened". A jam is ``paper_jam``.

Jobs are lines ending with CR LF; ``PRINT m[,n]`` prints ``m`` label sets of ``n``
copies each.
"""

from __future__ import annotations

import re
from typing import ClassVar

from agent.devices.printers import PrinterLanguage, PrinterStatus, make_status, quantity
from agent.errors import ProtocolError

STATUS_REQUEST = b"\x1b!?"

_BITS: tuple[tuple[int, str, str, str], ...] = (
    (0x01, "head_open", "head_opened", "print head open"),
    (0x02, "paper_jam", "paper_jam", "paper jam"),
    (0x04, "paper_out", "out_of_paper", "out of paper"),
    (0x08, "ribbon_out", "out_of_ribbon", "out of ribbon"),
    (0x10, "paused", "pause", "paused"),
    (0x40, "head_open", "cover_opened", "cover open"),
    (0x80, "device_error", "other_error", "other error (bit 7; on some models the ambient "
                                          "temperature is out of range)"),
)


def parse_status(reply: bytes) -> PrinterStatus:
    """Decode the one status byte answering ``<ESC>!?``.

    Raises:
        ProtocolError: unless ``reply`` is exactly one byte.
    """
    if len(reply) != 1:
        raise ProtocolError(f"expected one status byte in reply to <ESC>!?, got "
                            f"{len(reply)} bytes: {reply[:32]!r}")
    byte = reply[0]
    faults = [code for bit, code, _, _ in _BITS if byte & bit]
    notes = [words for bit, _, _, words in _BITS if byte & bit]
    printing = bool(byte & 0x20)
    if printing:
        notes.append("printing")
    fields: dict[str, int | bool] = {"status_byte": byte, "printing": printing}
    fields.update({name: bool(byte & bit) for bit, _, name, _ in _BITS})
    return make_status(faults, notes, reply, fields=fields, printing=printing)


_PRINT = re.compile(rb"^[ \t]*PRINT[ \t]+(\d+)(?:[ \t]*,[ \t]*(\d+))?", re.M)


def labels_in(job: bytes) -> int:
    """Labels a TSPL job prints: ``m * n`` for every ``PRINT m[,n]`` line.

    Raises:
        ValueError: ``m`` or ``n`` over :data:`~agent.devices.printers.MAX_QUANTITY`.
    """
    return sum(quantity(m, "PRINT") * quantity(n or b"1", "PRINT")
               for m, n in _PRINT.findall(job))


class TsplLanguage(PrinterLanguage):
    """TSPL: one status byte for ``<ESC>!?``."""

    name = "tspl"
    status_command: ClassVar[str] = "<ESC>!?"

    def status_request(self) -> bytes:
        return STATUS_REQUEST

    def reply_complete(self, reply: bytes) -> bool:
        if len(reply) > 1:
            raise ProtocolError(f"expected one status byte in reply to <ESC>!?, got "
                                f"{len(reply)} bytes: {reply[:32]!r}")
        return len(reply) == 1

    def parse_status(self, reply: bytes) -> PrinterStatus:
        return parse_status(reply)

    def labels_in(self, job: bytes) -> int:
        return labels_in(job)
