"""ZPL II (Zebra and ZPL-compatible label printers): ``~HS`` and ``~HQES`` status.

``~HS`` (host status return) is answered with three lines, each framed
``<STX>...<ETX><CR><LF>`` (ZPL II Programming Guide, ``~HS``)::

    <STX>aaa,b,c,dddd,eee,f,g,h,iii,j,k,l<ETX><CR><LF>     string 1
    <STX>mmm,n,o,p,q,r,s,t,uuuuuuuu,v,www<ETX><CR><LF>    string 2
    <STX>xxxx,y<ETX><CR><LF>                              string 3

string 1: aaa communication settings (9 bits in decimal: a8,a2..a0 baud, a3 data bits,
a4 stop bits, a5 parity on, a6 parity even, a7 DTR handshake), b paper out, c pause,
dddd label length in dots, eee formats in the receive buffer, f receive buffer full,
g communications diagnostic mode, h partial format in progress, iii unused (000),
j corrupt RAM (configuration lost), k under temperature, l over temperature.
string 2: mmm function settings (m7 continuous media, m6 sensor profile, m5 diagnostics,
m0 thermal transfer), n unused, o head up, p ribbon out, q thermal transfer mode,
r print mode (0 rewind, 1 peel-off, 2 tear-off, 3 cutter, 4 applicator, 5 delayed cut,
9 RFID), s print width mode, t label waiting (peel-off), uuuuuuuu labels remaining in the
batch, v format while printing (always 1), www graphic images stored.
string 3: xxxx password, y static RAM installed.

Many Zebra printers do not answer ``~HS`` at all while the media or ribbon is out, the
head is open or too hot: that is ``status_unknown``, never ready. ``~HQES`` (host query,
extended status) still answers then, with two 64-bit masks in hex (group 2, group 1)::

    <STX><CR><LF>PRINTER STATUS<CR><LF>
       ERRORS:         1 00000000 00000005<CR><LF>
       WARNINGS:       0 00000000 00000000<CR><LF><ETX><CR><LF>

so the driver sends ``~HS~HQES`` together and combines both; a printer that answers
``~HS`` but never ``~HQES`` (older firmware) is asked ``~HS`` alone afterwards.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

from agent.devices.printers import (
    PrinterLanguage,
    PrinterStatus,
    make_status,
    quantity,
    unknown_status,
)
from agent.errors import ProtocolError

HS_REQUEST = b"~HS"
HQES_REQUEST = b"~HQES"
STX, ETX = 0x02, 0x03
_BETWEEN_FRAMES = b"\r\n\x11\x13"
"""CR LF end a line; XON/XOFF come from serial printers set to software handshake."""
_MAX_LINE = 256
"""Longer than any status line: more bytes without ``<ETX>`` are not a status reply."""

_BAUD = {0b0000: 110, 0b0001: 300, 0b0010: 600, 0b0011: 1200, 0b0100: 2400, 0b0101: 4800,
         0b0110: 9600, 0b0111: 19200, 0b1000: 28800, 0b1001: 38400, 0b1010: 57600,
         0b1011: 14400}
_PRINT_MODES = {"0": "rewind", "1": "peel-off", "2": "tear-off", "3": "cutter",
                "4": "applicator", "5": "delayed cut", "9": "rfid"}

# ~HQES error bits (group 1): code, words.
_ERRORS: tuple[tuple[int, str, str], ...] = (
    (0x00000001, "paper_out", "paper out"),  # "Media Out" in the guide
    (0x00000002, "ribbon_out", "ribbon out"),
    (0x00000004, "head_open", "head open"),
    (0x00000008, "cutter_error", "cutter fault"),
    (0x00000010, "overheated", "head over temperature"),
    (0x00000020, "overheated", "motor over temperature"),
    (0x00000040, "device_error", "bad printhead element"),
    (0x00000080, "device_error", "printhead detection error"),
    (0x00000100, "device_error", "invalid firmware configuration"),
    (0x00000200, "device_error", "printhead thermistor open"),
    (0x00001000, "paper_jam", "paper jam during retract"),
    (0x00002000, "device_error", "presenter not running"),
    (0x00004000, "device_error", "paper feed error"),
    (0x00008000, "device_error", "clear paper path failed"),
    (0x00010000, "paused", "paused"),
    (0x00020000, "device_error", "retract function timed out"),
    (0x00040000, "device_error", "black mark calibrate error"),
    (0x00080000, "device_error", "black mark not found"),
)
# ~HQES warning bits (group 1): code (None: a note only), words.
_WARNINGS: tuple[tuple[int, str | None, str], ...] = (
    (0x00000001, None, "media needs calibrating"),
    (0x00000002, None, "clean the printhead"),
    (0x00000004, None, "replace the printhead"),
    (0x00000008, "paper_near_end", "paper near end"),
    (0x00000010, None, "sensor 1 (paper before head)"),
    (0x00000020, None, "sensor 2 (black mark)"),
    (0x00000040, None, "sensor 3 (paper after head)"),
    (0x00000080, None, "sensor 4 (loop ready)"),
    (0x00000100, None, "sensor 5 (presenter)"),
    (0x00000200, None, "sensor 6 (retract ready)"),
    (0x00000400, None, "sensor 7 (in retract)"),
    (0x00000800, None, "sensor 8 (at bin)"),
)


@dataclass(frozen=True)
class HostStatus:
    """Every field of a ``~HS`` reply, decoded (see the module docstring for positions)."""

    communication_settings: int
    baud: int | None
    data_bits: int
    stop_bits: int
    parity: str
    handshake: str
    paper_out: bool
    paused: bool
    label_length_dots: int
    formats_in_buffer: int
    buffer_full: bool
    diagnostic_mode: bool
    partial_format: bool
    corrupt_ram: bool
    under_temperature: bool
    over_temperature: bool
    function_settings: int
    continuous_media: bool
    sensor_profile: bool
    communications_diagnostics: bool
    head_up: bool
    ribbon_out: bool
    thermal_transfer: bool
    print_mode: str
    print_width_mode: int
    label_waiting: bool
    labels_remaining: int
    format_while_printing: bool
    graphics_stored: int
    password: str
    static_ram: bool


@dataclass(frozen=True)
class ExtendedStatus:
    """A ``~HQES`` reply: the error and warning flags and their two 32-bit groups each."""

    error_flag: bool
    errors: int
    errors_group2: int
    warning_flag: bool
    warnings: int
    warnings_group2: int


def split_frames(data: bytes) -> tuple[list[bytes], bytes]:
    """The complete ``<STX>...<ETX>`` frames in ``data`` and the incomplete rest.

    CR, LF, XON and XOFF between frames are skipped.

    Raises:
        ProtocolError: for any other byte outside a frame, or a frame that is too long.
    """
    frames: list[bytes] = []
    pos = 0
    while True:
        while pos < len(data) and data[pos] in _BETWEEN_FRAMES:
            pos += 1
        if pos == len(data):
            return frames, b""
        if data[pos] != STX:
            raise ProtocolError(f"expected <STX> (0x02) to start a ZPL status line, got "
                                f"{data[pos:pos + 32]!r}")
        end = data.find(ETX, pos + 1)
        body = data[pos + 1:] if end < 0 else data[pos + 1:end]
        if STX in body:
            raise ProtocolError(f"expected <ETX> (0x03) to end a ZPL status line, got "
                                f"another <STX> in {data[pos:pos + 64]!r}")
        if len(body) > _MAX_LINE:
            raise ProtocolError(f"expected a ZPL status line of at most {_MAX_LINE} bytes, "
                                f"got {len(body)} bytes without <ETX>")
        if end < 0:
            return frames, data[pos:]
        frames.append(body)
        pos = end + 1


def is_extended(frame: bytes) -> bool:
    """Whether a frame's body is a ``~HQES`` reply rather than a ``~HS`` line."""
    return b"ERRORS" in frame or b"PRINTER STATUS" in frame


def _numbers(line: bytes, count: int, which: str) -> list[str]:
    try:
        text = line.decode("ascii")
    except UnicodeDecodeError as exc:
        raise ProtocolError(f"expected ASCII in ~HS {which}, got {line[:64]!r}") from exc
    values = [value.strip() for value in text.split(",")]
    if len(values) < count:
        raise ProtocolError(f"expected {count} comma-separated fields in ~HS {which}, "
                            f"got {len(values)}: {line[:64]!r}")
    return values


def _int(value: str, which: str, name: str) -> int:
    if not value.isascii() or not value.isdigit():
        raise ProtocolError(f"expected digits for {name} in ~HS {which}, got {value!r}")
    return int(value)


def parse_host_status(frames: list[bytes]) -> HostStatus:
    """Decode the three ``~HS`` lines (frame bodies without ``<STX>``/``<ETX>``).

    Raises:
        ProtocolError: wrong number of lines or fields, a non-numeric field.
    """
    if len(frames) != 3:
        raise ProtocolError(f"expected 3 lines in reply to ~HS, got {len(frames)}")
    one = _numbers(frames[0], 12, "string 1")
    two = _numbers(frames[1], 11, "string 2")
    three = _numbers(frames[2], 2, "string 3")

    def i1(index: int, name: str) -> int:
        return _int(one[index], "string 1", name)

    def i2(index: int, name: str) -> int:
        return _int(two[index], "string 2", name)

    comm = i1(0, "communication settings")
    function = i2(0, "function settings")
    mode = two[5]
    if len(mode) != 1 or not mode.isascii() or not mode.isalnum():
        raise ProtocolError(f"expected one character for print mode in ~HS string 2, "
                            f"got {mode!r}")
    return HostStatus(
        communication_settings=comm,
        baud=_BAUD.get((comm & 0b111) | ((comm >> 5) & 0b1000)),
        data_bits=8 if comm & 0x08 else 7,
        stop_bits=1 if comm & 0x10 else 2,
        parity=("even" if comm & 0x40 else "odd") if comm & 0x20 else "none",
        handshake="dtr" if comm & 0x80 else "xon/xoff",
        paper_out=bool(i1(1, "paper out flag")),
        paused=bool(i1(2, "pause flag")),
        label_length_dots=i1(3, "label length"),
        formats_in_buffer=i1(4, "formats in receive buffer"),
        buffer_full=bool(i1(5, "buffer full flag")),
        diagnostic_mode=bool(i1(6, "diagnostic mode flag")),
        partial_format=bool(i1(7, "partial format flag")),
        corrupt_ram=bool(i1(9, "corrupt RAM flag")),
        under_temperature=bool(i1(10, "under temperature flag")),
        over_temperature=bool(i1(11, "over temperature flag")),
        function_settings=function,
        continuous_media=bool(function & 0x80),
        sensor_profile=bool(function & 0x40),
        communications_diagnostics=bool(function & 0x20),
        head_up=bool(i2(2, "head up flag")),
        ribbon_out=bool(i2(3, "ribbon out flag")),
        thermal_transfer=bool(i2(4, "thermal transfer flag")),
        print_mode=_PRINT_MODES.get(mode, f"other ({mode})"),
        print_width_mode=i2(6, "print width mode"),
        label_waiting=bool(i2(7, "label waiting flag")),
        labels_remaining=i2(8, "labels remaining"),
        format_while_printing=bool(i2(9, "format while printing flag")),
        graphics_stored=i2(10, "graphic images stored"),
        password=three[0],
        static_ram=bool(_int(three[1], "string 3", "static RAM flag")),
    )


_MASK_LINES = {
    label: re.compile(label + rb":\s*([01])\s+([0-9A-Fa-f]{8})\s+([0-9A-Fa-f]{8})")
    for label in (b"ERRORS", b"WARNINGS")
}


def parse_extended_status(frame: bytes) -> ExtendedStatus:
    """Decode a ``~HQES`` reply (the frame body, ``PRINTER STATUS`` with its two lines).

    Raises:
        ProtocolError: when the ``ERRORS:`` or ``WARNINGS:`` line is missing or malformed.
    """
    found: dict[bytes, tuple[bool, int, int]] = {}
    for label, pattern in _MASK_LINES.items():
        match = pattern.search(frame)
        if match is None:
            raise ProtocolError(f"expected '{label.decode()}: F GGGGGGGG HHHHHHHH' in reply "
                                f"to ~HQES, got {frame[:96]!r}")
        found[label] = (match[1] == b"1", int(match[3], 16), int(match[2], 16))
    errors, warnings = found[b"ERRORS"], found[b"WARNINGS"]
    return ExtendedStatus(error_flag=errors[0], errors=errors[1], errors_group2=errors[2],
                          warning_flag=warnings[0], warnings=warnings[1],
                          warnings_group2=warnings[2])


def _host_faults(hs: HostStatus) -> tuple[list[str], list[str]]:
    faults: list[str] = []
    notes: list[str] = []
    for flag, code, words in ((hs.head_up, "head_open", "head open"),
                              (hs.paper_out, "paper_out", "paper out"),
                              (hs.ribbon_out, "ribbon_out", "ribbon out"),
                              (hs.over_temperature, "overheated", "head over temperature"),
                              (hs.paused, "paused", "paused")):
        if flag:
            faults.append(code)
            notes.append(words)
    for flag, words in ((hs.under_temperature, "head under temperature"),
                        (hs.buffer_full, "receive buffer full"),
                        (hs.corrupt_ram, "configuration lost (corrupt RAM)"),
                        (hs.diagnostic_mode, "communications diagnostic mode"),
                        (hs.label_waiting, "label waiting to be taken")):
        if flag:
            notes.append(words)
    return faults, notes


def _extended_faults(es: ExtendedStatus) -> tuple[list[str], list[str]]:
    faults: list[str] = []
    notes: list[str] = []
    known = 0
    for bit, code, words in _ERRORS:
        known |= bit
        if es.errors & bit:
            faults.append(code)
            notes.append(words)
    unexplained = (es.errors & ~known) | es.errors_group2
    if unexplained or (es.error_flag and not es.errors):
        faults.append("device_error")
        notes.append(f"printer error bits {es.errors_group2:08X} {es.errors:08X}")
    for bit, warning, words in _WARNINGS:
        if es.warnings & bit:
            notes.append(words)
            if warning is not None:
                faults.append(warning)
    return faults, notes


def parse_status(reply: bytes) -> PrinterStatus:
    """A printer status from a reply to ``~HS``, ``~HQES`` or both, in either order.

    Raises:
        ProtocolError: bytes outside frames, not 0 or 3 ``~HS`` lines, more than one
            ``~HQES`` reply, nothing at all, or a field that does not parse.
    """
    frames, rest = split_frames(reply)
    if rest:
        raise ProtocolError(f"expected <ETX> to end a ZPL status line, got {rest[:64]!r}")
    return _status(frames, reply)


def _status(frames: list[bytes], raw: bytes) -> PrinterStatus:
    host = [frame for frame in frames if not is_extended(frame)]
    extended = [frame for frame in frames if is_extended(frame)]
    if len(host) not in (0, 3) or len(extended) > 1 or not frames:
        raise ProtocolError(f"expected 3 ~HS lines and/or one ~HQES reply, got {len(host)} "
                            f"~HS lines and {len(extended)} ~HQES replies")
    faults: list[str] = []
    notes: list[str] = []
    fields: dict[str, Any] = {}
    labels_remaining = formats = None
    printing = None
    if host:
        hs = parse_host_status(host)
        faults, notes = _host_faults(hs)
        fields.update(asdict(hs))
        labels_remaining, formats = hs.labels_remaining, hs.formats_in_buffer
        printing = labels_remaining > 0 or formats > 0
    else:
        notes.append("no reply to ~HS (printers stay silent in some fault states)")
    if extended:
        es = parse_extended_status(extended[0])
        more_faults, more_notes = _extended_faults(es)
        faults += more_faults
        notes += more_notes
        fields.update({f"hqes_{key}": value for key, value in asdict(es).items()})
    return make_status(faults, notes, raw, fields=fields, labels_remaining=labels_remaining,
                       formats_in_buffer=formats, printing=printing)


_FORMAT = re.compile(rb"\^XA(.*?)\^XZ", re.S | re.I)
_QUANTITY = re.compile(rb"\^PQ\s*(\d+)", re.I)
_PRINTS = re.compile(rb"\^(FO|FT|FD|GB|GC|GD|GE|GF|GS|XG|IM)", re.I)


def labels_in(job: bytes) -> int:
    """Labels a ZPL job prints: each ``^XA``...``^XZ`` format with a field or graphic,
    times its ``^PQ`` quantity (total quantity ``q``; replicates of serialized fields are
    not counted). Formats that only set up the printer (``^XA^MMT^XZ``) print nothing.

    Raises:
        ValueError: a ``^PQ`` quantity over :data:`~agent.devices.printers.MAX_QUANTITY`.
    """
    total = 0
    for body in _FORMAT.findall(job):
        if _PRINTS.search(body):
            found = _QUANTITY.search(body)
            total += quantity(found[1], "^PQ") if found else 1
    return total


class ZplLanguage(PrinterLanguage):
    """ZPL II: ``~HS`` plus ``~HQES`` while the printer answers it."""

    name = "zpl"
    status_command: ClassVar[str] = "~HS"

    def __init__(self) -> None:
        self.extended: bool | None = None
        """Whether the printer answers ``~HQES``; ``None`` until it is known."""
        self._asked_extended = False

    def status_request(self) -> bytes:
        self._asked_extended = self.extended is not False
        return HS_REQUEST + HQES_REQUEST if self._asked_extended else HS_REQUEST

    def _counts(self, reply: bytes) -> tuple[int, int]:
        frames, _ = split_frames(reply)
        host = sum(1 for frame in frames if not is_extended(frame))
        extended = len(frames) - host
        if host > 3 or extended > 1:
            raise ProtocolError(f"expected 3 ~HS lines and one ~HQES reply, got {host} "
                                f"~HS lines and {extended} ~HQES replies")
        if extended:
            self.extended = True
        return host, extended

    def reply_complete(self, reply: bytes) -> bool:
        host, extended = self._counts(reply)
        return host == 3 and extended == (1 if self._asked_extended else 0)

    def parse_status(self, reply: bytes) -> PrinterStatus:
        return parse_status(reply)

    def reply_timed_out(self, reply: bytes, timeout_ms: int) -> PrinterStatus:
        host, extended = self._counts(reply)
        if host == 3 and self._asked_extended and not extended:
            self.extended = False  # answers ~HS in time but not ~HQES: older firmware
            return parse_status(reply)
        if extended and host != 3:
            frames, _ = split_frames(reply)
            return _status([frame for frame in frames if is_extended(frame)], reply)
        if host == 0 and not split_frames(reply)[1]:  # not even part of a line came
            asked = "~HS and ~HQES" if self._asked_extended else "~HS"
            return unknown_status(reply, f"no reply to {asked} within {timeout_ms} ms "
                                         f"(some printers stay silent while faulted)")
        raise ProtocolError(f"expected 3 ~HS lines within {timeout_ms} ms, got {host}: "
                            f"{reply[:96]!r}")

    def labels_in(self, job: bytes) -> int:
        return labels_in(job)
