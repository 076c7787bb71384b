"""ESC/POS receipt printers: jobs built with python-escpos, ``DLE EOT n`` real-time status.

Jobs: :class:`EscposJob` is a python-escpos printer whose one primitive, ``_raw``,
collects bytes instead of writing to a port, so a packing slip is built with
python-escpos's commands (``text``, ``set``, ``barcode``, ``qr``, ``image``, ``cut``...)
and its :attr:`~EscposJob.output` goes to the printer through the agent's own transport
(``Printer.send``), on the device's single connection.

Status: ``DLE EOT n`` (``10 04 n``) is a real-time command: the printer answers at once,
even while offline or with a full buffer, with one byte. Every reply byte has fixed bits
(bit 1 and bit 4 set, bits 0 and 7 clear: ``byte & 0x93 == 0x12``), which tells a status
byte from anything else (Epson ESC/POS Application Programming Guide, ``DLE EOT``):

==  ================  =====================================================================
n   status            bits used
==  ================  =====================================================================
1   printer           3 offline
2   offline cause     2 cover open, 3 paper fed by the feed button, 5 stopped by paper
                      end, 6 error
3   error cause       2 mechanical error, 3 autocutter error, 5 unrecoverable error,
                      6 automatically recoverable error (print head too hot)
4   roll paper        2-3 paper near end, 5-6 paper end
==  ================  =====================================================================

The four requests go out together (ESC/POS allows up to eight real-time commands in a
row) and the four bytes come back in order. A printer with Automatic Status Back
(``GS a``) enabled also sends unsolicited 4-byte ASB blocks; their first byte fails the
fixed-bit check and the reply is reported as a protocol error.
"""

from __future__ import annotations

from typing import ClassVar

from escpos.capabilities import CAPABILITIES
from escpos.escpos import Escpos

from agent.devices.printers import PrinterLanguage, PrinterStatus, make_status
from agent.errors import ProtocolError

DLE_EOT = b"\x10\x04"
STATUS_REQUEST = DLE_EOT + b"\x01" + DLE_EOT + b"\x02" + DLE_EOT + b"\x03" + DLE_EOT + b"\x04"
_FIXED_MASK, _FIXED_BITS = 0x93, 0x12


class EscposJob(Escpos):  # type: ignore[misc]  # python-escpos is untyped
    """A receipt or slip built with python-escpos; ``output`` holds its bytes.

    Args:
        profile: python-escpos capability profile (``TM-T88V``...); ``None`` is the
            generic profile.
    """

    def __init__(self, profile: str | None = None) -> None:
        super().__init__(profile=profile)
        self._job = bytearray()

    def _raw(self, msg: bytes) -> None:
        self._job += msg

    @property
    def output(self) -> bytes:
        """The job's bytes so far."""
        return bytes(self._job)

    def clear(self) -> None:
        """Start an empty job."""
        self._job.clear()

    def open(self) -> None:
        """Nothing to open: the bytes go out through the printer driver."""

    def close(self) -> None:
        """Nothing to close."""


def profiles() -> list[str]:
    """The python-escpos capability profiles ``escpos_profile`` may name."""
    return sorted(CAPABILITIES["profiles"])


def check_profile(name: str | None) -> None:
    """Raise ``ValueError`` naming the known profiles unless ``name`` is one (or ``None``)."""
    if name is not None and name not in CAPABILITIES["profiles"]:
        raise ValueError(f"unknown python-escpos profile {name!r}; known profiles: "
                         f"{', '.join(profiles())}")


def _check(byte: int, n: int) -> None:
    if byte & _FIXED_MASK != _FIXED_BITS:
        raise ProtocolError(f"expected a DLE EOT {n} status byte (bits 1 and 4 set, 0 and 7 "
                            f"clear), got 0x{byte:02X}")


def parse_status(reply: bytes) -> PrinterStatus:
    """Decode the four bytes answering ``DLE EOT 1``, ``2``, ``3`` and ``4``, in order.

    Raises:
        ProtocolError: unless the reply is four bytes with the fixed bits of a status byte.
    """
    if len(reply) != 4:
        raise ProtocolError(f"expected 4 status bytes in reply to DLE EOT 1/2/3/4, got "
                            f"{len(reply)} bytes: {reply[:32]!r}")
    for n, byte in enumerate(reply, start=1):
        _check(byte, n)
    printer, offline_cause, error_cause, paper = reply
    fields = {
        "printer_status": printer, "offline_cause": offline_cause,
        "error_cause": error_cause, "paper_status": paper,
        "offline": bool(printer & 0x08), "drawer_pin3": bool(printer & 0x04),
        "cover_open": bool(offline_cause & 0x04), "feed_button": bool(offline_cause & 0x08),
        "paper_end_stop": bool(offline_cause & 0x20), "error": bool(offline_cause & 0x40),
        "mechanical_error": bool(error_cause & 0x04), "cutter_error": bool(error_cause & 0x08),
        "unrecoverable_error": bool(error_cause & 0x20),
        "recoverable_error": bool(error_cause & 0x40),
        "paper_near_end": bool(paper & 0x0C), "paper_end": bool(paper & 0x60),
    }
    conditions = (
        ("cover_open", "head_open", "cover open"),
        ("paper_end", "paper_out", "paper end"),
        ("paper_end_stop", "paper_out", "printing stopped at paper end"),
        ("cutter_error", "cutter_error", "autocutter error"),
        ("recoverable_error", "overheated", "print head too hot (recoverable error)"),
        ("mechanical_error", "device_error", "mechanical error"),
        ("unrecoverable_error", "device_error", "unrecoverable error"),
        ("offline", "offline", "offline"),
        ("paper_near_end", "paper_near_end", "paper near end"),
        ("feed_button", None, "paper fed by the feed button"),
    )
    faults: list[str] = []
    notes: list[str] = []
    for name, code, words in conditions:
        if fields[name]:
            notes.append(words)
            if code is not None:
                faults.append(code)
    if fields["error"] and not error_cause & 0x6C:
        faults.append("device_error")
        notes.append("error (no cause reported)")
    return make_status(faults, notes, reply, fields=fields)


class EscposLanguage(PrinterLanguage):
    """ESC/POS: ``DLE EOT 1..4`` real-time status; jobs from :class:`EscposJob`."""

    name = "escpos"
    status_command: ClassVar[str] = "DLE EOT 1/2/3/4"

    def __init__(self, profile: str | None = None) -> None:
        check_profile(profile)
        self.profile = profile

    def new_job(self) -> EscposJob:
        """An empty job for this printer's capability profile."""
        return EscposJob(self.profile)

    def status_request(self) -> bytes:
        return STATUS_REQUEST

    def reply_complete(self, reply: bytes) -> bool:
        if len(reply) > 4:
            raise ProtocolError(f"expected 4 status bytes in reply to DLE EOT 1/2/3/4, got "
                                f"{len(reply)} bytes: {reply[:32]!r}")
        for n, byte in enumerate(reply, start=1):
            _check(byte, n)
        return len(reply) == 4

    def parse_status(self, reply: bytes) -> PrinterStatus:
        return parse_status(reply)
