"""EPL2 (Zebra LP/TLP 2824/2844 and EPL-compatible printers, Intermec ESim).

EPL printers do report status on the wire: ``^ee`` ("immediate error report", ended by
CR or LF) is answered on the serial or USB channel, and on the network port of printers
that have one, with the pending error and status codes: ``00<CR><LF>`` when there is
none, else ``XX<CR><LF>`` or ``XX,YY,..<CR><LF>`` (EPL Programming Guide ``^ee``; ESim
Programmer's Reference). ``eR`` uses the same codes. The codes that mean the printer
cannot print:

====  ======================================  ==============
code  meaning                                 fault code
====  ======================================  ==============
07    out of paper or ribbon (ESim appends    paper_out /
      ``Pnnn``/``Rnnn``: paper or ribbon,     ribbon_out
      ``nnn`` labels remaining)
11    print head up (open)                    head_open
62    high printhead temperature (ESim)       overheated
81    cutter jammed or not installed          cutter_error
92    pause printing mode (ESim)              paused
====  ======================================  ==============

01-06 and 08-10 report a bad command (syntax error, object beyond the label, bar code
data length, memory) in the last job: the printer can still print, so they are notes,
not faults. Any other code is ``device_error``. In the default error mode (``eR`` mode 0)
the printer also sends XON/XOFF (0x11/0x13) and ESim a NAK (0x15) on its own when an
error starts or ends; those bytes are skipped. Printers without a return channel (a
one-way parallel port) never answer: ``status_unknown``.

Jobs are lines ending with LF; ``P p1[,p2]`` prints ``p1`` label sets of ``p2`` copies.
"""

from __future__ import annotations

import re
from typing import ClassVar

from agent.devices.printers import PrinterLanguage, PrinterStatus, make_status, quantity
from agent.errors import ProtocolError

STATUS_REQUEST = b"^ee\r\n"
_SKIPPED = b"\x11\x13\x15"
_MAX_REPLY = 64
_CODE = re.compile(r"(\d\d)(?:([PR])(\d{1,8}))?")
_ALLOWED = frozenset(b"0123456789,PR\r\n \x11\x13\x15")

_FAULTS: dict[str, tuple[str, str]] = {
    "07": ("paper_out", "out of paper or ribbon"),
    "11": ("head_open", "print head up (open)"),
    "62": ("overheated", "high printhead temperature"),
    "81": ("cutter_error", "cutter jammed or not installed"),
    "92": ("paused", "paused"),
}
_JOB_ERRORS: dict[str, str] = {
    "01": "syntax error",
    "02": "object exceeded label border",
    "03": "bar code data length error",
    "04": "insufficient memory to store data",
    "05": "memory configuration error",
    "06": "RS-232 interface error",
    "08": "duplicate form, graphic or font name",
    "09": "form, graphic or font name not found",
    "10": "not in data entry mode",
}


def _clean(reply: bytes) -> bytes:
    return reply.translate(None, _SKIPPED)


def parse_status(reply: bytes) -> PrinterStatus:
    """Decode the one line answering ``^ee``.

    Raises:
        ProtocolError: unless the reply is one line of two-digit codes separated by commas.
    """
    text = _clean(reply).strip(b"\r\n ")
    if not text or b"\n" in text or b"\r" in text or not text.isascii():
        raise ProtocolError(f"expected one line of status codes (00 or XX,YY) in reply to "
                            f"^ee, got {reply[:64]!r}")
    faults: list[str] = []
    notes: list[str] = []
    codes: list[str] = []
    remaining: int | None = None
    for token in text.decode("ascii").split(","):
        match = _CODE.fullmatch(token.strip())
        if match is None:
            raise ProtocolError(f"expected a two-digit status code in reply to ^ee, got "
                                f"{token!r} in {reply[:64]!r}")
        code, media, count = match[1], match[2], match[3]
        codes.append(match[0])
        if code == "00":
            continue
        if code == "07" and media == "R":
            faults.append("ribbon_out")
            notes.append("out of ribbon")
        elif code in _FAULTS:
            fault, words = _FAULTS[code]
            faults.append(fault)
            notes.append("out of paper" if media == "P" else words)
        elif code in _JOB_ERRORS:
            notes.append(f"last job: {_JOB_ERRORS[code]} ({code})")
        else:
            faults.append("device_error")
            notes.append(f"printer error code {code}")
        if count is not None:
            remaining = int(count)
    return make_status(faults, notes, reply, fields={"codes": codes},
                       labels_remaining=remaining)


_PRINT = re.compile(rb"^P(\d+)(?:,(\d+))?[ \t]*\r?$", re.M)


def labels_in(job: bytes) -> int:
    """Labels an EPL job prints: ``p1 * p2`` for every ``P p1[,p2]`` line.

    Raises:
        ValueError: ``p1`` or ``p2`` over :data:`~agent.devices.printers.MAX_QUANTITY`.
    """
    return sum(quantity(sets, "P") * quantity(copies or b"1", "P")
               for sets, copies in _PRINT.findall(job))


class EplLanguage(PrinterLanguage):
    """EPL2: status codes for ``^ee``."""

    name = "epl"
    status_command: ClassVar[str] = "^ee"

    def status_request(self) -> bytes:
        return STATUS_REQUEST

    def reply_complete(self, reply: bytes) -> bool:
        if len(reply) > _MAX_REPLY or not set(reply) <= _ALLOWED:
            raise ProtocolError(f"expected status codes (00 or XX,YY) and CR LF in reply to "
                                f"^ee, got {reply[:64]!r}")
        return b"\n" in _clean(reply).lstrip(b"\r\n")

    def parse_status(self, reply: bytes) -> PrinterStatus:
        return parse_status(reply)

    def reply_timed_out(self, reply: bytes, timeout_ms: int) -> PrinterStatus:
        return super().reply_timed_out(_clean(reply), timeout_ms)

    def labels_in(self, job: bytes) -> int:
        return labels_in(job)
