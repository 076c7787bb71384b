"""Print documents: what a print job's ``document`` may be, checked and turned into bytes.

A document is one of three forms (``docs/print-documents.md``):

* raw printer language, base64 (``zpl``, ``tspl``, ``epl``, ``escpos``): checked here and
  sent as it is, ``copies`` times;
* a picture, base64 (``png``, ``pdf``): every image or page becomes one label (or one
  raster block of a receipt) in the printer's language, see :mod:`agent.jobs.raster`;
* a packing slip from fields (``slip``), for ESC/POS printers, see :mod:`agent.jobs.slip`.

:func:`render` is the one entry point: document in, the exact bytes for the printer out,
or :class:`DocumentError` with a code from :data:`DOCUMENT_ERROR_CODES` and a message
that says what was wrong and what is allowed. It is pure CPU work (Pillow, PDFium,
python-escpos): the print-job queue runs it in a thread.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from agent.devices.printers import epl, tspl, zpl
from agent.devices.settings import PrinterSettings
from agent.errors import AgentError

DOCUMENT_ERROR_CODES: dict[str, str] = {
    "invalid_document": "the document is malformed: bad base64, a PNG or PDF that does not "
                        "read, a raw job that cannot print (ZPL without ^XZ, TSPL without "
                        "PRINT...), a slip field missing or of the wrong type",
    "wrong_language": "a raw document in another language than the printer speaks",
    "too_large": "the document, the rendered job, a page or image, or the page count is "
                 "over its limit",
    "unsupported_document": "a document the printer cannot print: unknown format or "
                            "template, a packing slip on a label printer, a slip barcode "
                            "or image the printer's profile cannot print",
    "unprintable_text": "slip text with characters no code page of the printer can print",
    "render_timeout": "rendering a PNG or PDF took longer than jobs.print.render_timeout_s "
                      "(the render was stopped)",
    "forbidden_command": "a raw ZPL document with a command that reconfigures, resets or "
                         "erases the printer",
}
"""Stable codes of :class:`DocumentError` (``docs/print-documents.md`` lists them)."""

RAW_FORMATS = ("zpl", "tspl", "epl", "escpos")
PICTURE_FORMATS = ("png", "pdf")
FORMATS = (*RAW_FORMATS, *PICTURE_FORMATS, "slip")
LANGUAGE_NAMES = {"zpl": "ZPL", "tspl": "TSPL", "epl": "EPL", "escpos": "ESC/POS"}

# Raw ZPL commands a print job may not carry: (command, why). Matched case-insensitively
# anywhere in the job; the caret/tilde are the defaults because changing them is itself
# refused (^CC/~CC/^CT/~CT), so no command can hide behind another prefix.
# ZPL II Programming Guide, command reference.
ZPL_FORBIDDEN: tuple[tuple[str, str], ...] = (
    ("^CC", "changes the command prefix (the caret)"),
    ("~CC", "changes the command prefix (the caret)"),
    ("^CT", "changes the control prefix (the tilde)"),
    ("~CT", "changes the control prefix (the tilde)"),
    ("^JU", "saves, recalls or resets the printer's configuration"),
    ("~JR", "resets the printer (power-on reset)"),
    ("~JD", "switches the printer into communications diagnostics mode"),
    ("~JE", "switches communications diagnostics mode off"),
    ("^JB", "initializes (erases) flash memory"),
    ("~JB", "erases optional battery-backed memory"),
    ("^ID", "deletes objects from the printer's memory"),
    ("~EG", "erases every downloaded graphic"),
    ("~JA", "cancels every format in the printer's buffer, other jobs' too"),
    ("^NB", "changes the network boot settings"),
    ("^NC", "selects the primary network device"),
    ("^ND", "changes the network settings"),
    ("^NI", "changes the network ID"),
    ("^NN", "changes the SNMP settings"),
    ("^NP", "sets the primary/secondary network device"),
    ("^NS", "changes the wired network settings"),
    ("^NT", "changes the SMTP settings"),
    ("^NW", "changes the web server settings"),
    ("^WA", "changes the wireless antenna settings"),
    ("^WE", "changes the wireless encryption settings"),
    ("^WI", "changes the wireless network settings"),
    ("^WL", "changes the wireless LEAP settings"),
    ("^WP", "changes the wireless password"),
    ("^WR", "changes the wireless transmit rate"),
    ("^WS", "changes the wireless radio settings"),
    ("~WR", "resets the wireless card"),
    ("^SC", "changes the serial port settings"),
    ("^KP", "changes the front panel password"),
    ("~WC", "prints a configuration label (not counted as a label, shows network settings)"),
    ("^WD", "prints a directory label (not counted as a label)"),
    ("^JI", "starts ZBI, the printer's BASIC interpreter"),
    ("~JI", "starts ZBI, the printer's BASIC interpreter"),
    ("~PP", "pauses the printer until someone presses the pause key"),
)
"""Refused in raw ZPL (code ``forbidden_command``); ``docs/print-documents.md`` lists them."""

_ZPL_FORBIDDEN = re.compile(b"|".join(re.escape(command.encode()) for command, _ in
                                      ZPL_FORBIDDEN), re.I)
_ZPL_WHY = {command.upper(): why for command, why in ZPL_FORBIDDEN}
# Zebra printers also read RS (0x1E) as the caret and DLE (0x10) as the tilde (ZPL II
# Programming Guide, "Changing the Prefix": the alternate prefixes), so the checks read
# the job with those replaced.
_ALTERNATE_PREFIXES = bytes.maketrans(b"\x1e\x10", b"^~")
# Set-Get-Do commands change settings outside any format: "! U1 setvar ...", "! U1 do ...",
# and their JSON form "{}{...}" (Zebra SGD Command Reference).
_ZPL_SGD = re.compile(rb"!\s*U1?\s+(setvar|do)\b|\{\}\s*\{", re.I)
_ZPL_FORMAT_MARK = re.compile(rb"\^X[AZ]", re.I)
_BASE64_WHITESPACE = {ord(c): None for c in " \t\r\n"}
_MAGIC = ((b"\xff\xd8\xff", "a JPEG"), (b"GIF8", "a GIF"), (b"%PDF", "a PDF"),
          (b"BM", "a BMP"), (b"II*\x00", "a TIFF"), (b"MM\x00*", "a TIFF"),
          (b"PK\x03\x04", "a ZIP file"), (b"\x89PNG", "a PNG"))


class DocumentError(AgentError):
    """A document that cannot print; ``code`` is one of :data:`DOCUMENT_ERROR_CODES`."""

    code = "invalid_document"

    def __init__(self, message: str, *, code: str = "invalid_document") -> None:
        if code not in DOCUMENT_ERROR_CODES:
            raise ValueError(f"unknown document error code {code!r}")
        super().__init__(message, code=code)


@dataclass(frozen=True)
class Limits:
    """How big a document may be (``[jobs.print]`` in the config)."""

    max_bytes: int = 4 * 1024 * 1024
    """Decoded document AND rendered job, each."""
    max_pages: int = 20
    max_pixels: int = 16_000_000
    """Per page or image, before it is scaled to the printer's width."""


@dataclass(frozen=True)
class Rendered:
    """A rendered document, ready for ``Printer.send``."""

    data: bytes
    """Exactly what goes to the printer (all copies included)."""
    labels: int | None
    """Labels or receipts it prints (``None``: unknown, e.g. raw ESC/POS)."""
    pages: int
    """Pages, images or formats in the document (1 for raw)."""
    summary: str
    """One line for people: ``pdf, 2 pages -> ZPL ^GF 800x1200 dots (acs), 2 copies``."""


_DATA = {"type": "string", "description": "base64 (RFC 4648, standard alphabet)"}
DOCUMENT_SCHEMA: dict[str, Any] = {
    "title": "A print job's document",
    "description": "Raw printer language, a PNG or PDF, or a packing slip from fields "
                   "(docs/print-documents.md). Base64, PNG, PDF and slip field contents are "
                   "checked when the job is rendered (code invalid_document...).",
    "type": "object",
    "required": ["format"],
    "properties": {"format": {"enum": list(FORMATS)}},
    "allOf": [
        {"if": {"properties": {"format": {"enum": list(RAW_FORMATS)}},
                "required": ["format"]},
         "then": {"required": ["format", "data"], "additionalProperties": False,
                  "properties": {"format": True, "data": _DATA}}},
        {"if": {"properties": {"format": {"enum": list(PICTURE_FORMATS)}},
                "required": ["format"]},
         "then": {"required": ["format", "data"], "additionalProperties": False,
                  "properties": {
                      "format": True, "data": _DATA,
                      "threshold": {"type": "integer", "minimum": 0, "maximum": 255,
                                    "description": "gray below this prints black (128)"},
                      "dither": {"type": "boolean",
                                 "description": "Floyd-Steinberg instead of a threshold"}}}},
        {"if": {"properties": {"format": {"const": "slip"}}, "required": ["format"]},
         "then": {"required": ["format", "template", "fields"],
                  "additionalProperties": False,
                  "properties": {
                      "format": True,
                      "template": {"type": "string", "description": "packing_slip"},
                      "fields": {"type": "object",
                                 "description": "the template's fields "
                                                "(docs/print-documents.md)"}}}},
    ],
}
"""JSON Schema (draft 2020-12) of a document, to embed in the ``print.submit`` schema (no
``$schema``/``$id``/``$ref``, so it works at any depth)."""

_KEYS = {"raw": ("format", "data"), "picture": ("format", "data", "threshold", "dither"),
         "slip": ("format", "template", "fields")}


def render(document: Mapping[str, Any], settings: PrinterSettings, *, copies: int = 1,
           limits: Limits = Limits()) -> Rendered:
    """Validate and convert a document for the printer; raises :class:`DocumentError`.

    Pure CPU work (decoding, rendering): the caller runs it in a thread.

    Args:
        document: the job's ``document`` object (see :data:`DOCUMENT_SCHEMA`).
        settings: the printer's settings: ``language``, ``dpi``, ``width_mm``,
            ``escpos_profile``, ``text_encoding``, ``zpl_graphics``.
        copies: how many times the document prints (the language's own quantity for
            rendered labels, repeated bytes for raw and ESC/POS documents).
        limits: size limits of the document and of the rendered job.
    """
    if isinstance(copies, bool) or not isinstance(copies, int) or copies < 1:
        raise DocumentError(f"copies must be a whole number of at least 1, got {copies!r}")
    if not isinstance(document, Mapping):
        raise DocumentError(f"document must be an object, got {type(document).__name__}")
    fmt = document.get("format")
    if not isinstance(fmt, str):
        raise DocumentError(f"document has no format; allowed: {', '.join(FORMATS)}")
    if fmt in RAW_FORMATS:
        _check_keys(document, _KEYS["raw"])
        if fmt != settings.language:
            raise DocumentError(f"document is {LANGUAGE_NAMES[fmt]} but the printer speaks "
                                f"{LANGUAGE_NAMES[settings.language]} (language = "
                                f"\"{settings.language}\"); send {settings.language} or a "
                                f"PNG/PDF", code="wrong_language")
        rendered = _render_raw(fmt, decode_data(document, limits), copies, limits)
    elif fmt in PICTURE_FORMATS:
        _check_keys(document, _KEYS["picture"])
        # Imported here: raster and slip import this module, and Pillow and PDFium then
        # load only when a picture is printed.
        from agent.jobs import raster

        rendered = raster.render_picture(document, settings, copies=copies, limits=limits)
    elif fmt == "slip":
        _check_keys(document, _KEYS["slip"])
        from agent.jobs import slip

        rendered = slip.render_slip(document, settings, copies=copies, limits=limits)
    else:
        raise DocumentError(f"unknown document format {fmt!r}; allowed: {', '.join(FORMATS)}",
                            code="unsupported_document")
    check_job_size(len(rendered.data), limits)
    return rendered


def _check_keys(document: Mapping[str, Any], allowed: tuple[str, ...]) -> None:
    unknown = sorted(str(key) for key in document if key not in allowed)
    if unknown:
        raise DocumentError(f"document has unknown keys {unknown} for format "
                            f"{document['format']!r}; allowed: {', '.join(allowed)}")


def decode_data(document: Mapping[str, Any], limits: Limits) -> bytes:
    """``document["data"]`` decoded from base64; its size is checked before decoding.

    Line breaks and spaces in the base64 text (MIME style) are ignored.
    """
    data = document.get("data")
    if not isinstance(data, str):
        raise DocumentError(f"document.data must be a base64 string, got "
                            f"{type(data).__name__}")
    text = data.translate(_BASE64_WHITESPACE)
    if len(text) % 4:
        raise DocumentError(f"document.data is not valid base64: {len(text)} characters "
                            f"(without whitespace) is not a multiple of 4")
    size = len(text) // 4 * 3 - (len(text) - len(text.rstrip("=")))
    if size > limits.max_bytes:
        raise DocumentError(f"document is {size:,} bytes after base64 decoding; the limit "
                            f"is {limits.max_bytes:,} (jobs.print.max_job_bytes)",
                            code="too_large")
    try:
        return base64.b64decode(text, validate=True)
    except ValueError as exc:  # binascii.Error, or non-ASCII text
        raise DocumentError(f"document.data is not valid base64 ({exc}); send standard "
                            f"base64: A-Z a-z 0-9 + / with = padding") from exc


def describe_bytes(data: bytes) -> str:
    """What ``data`` looks like, for messages: ``a JPEG``, ``b'<html>'``..."""
    if not data:
        return "it is empty"
    for magic, name in _MAGIC:
        if data.startswith(magic):
            return f"it is {name}"
    if data[8:12] == b"WEBP":
        return "it is a WebP"
    return f"it starts with {data[:16]!r}"


def check_job_size(size: int, limits: Limits, copies: int = 1) -> None:
    """Refuse a rendered job of ``size`` bytes per copy, ``copies`` times, over the limit."""
    total = size * copies
    if total > limits.max_bytes:
        each = f" ({copies} copies of {size:,})" if copies > 1 else ""
        raise DocumentError(f"the rendered job is {total:,} bytes{each}; the limit is "
                            f"{limits.max_bytes:,} (jobs.print.max_job_bytes)",
                            code="too_large")


def repeat(one_copy: bytes, copies: int, limits: Limits) -> bytes:
    """``one_copy`` ``copies`` times, byte for byte, after checking the total size."""
    check_job_size(len(one_copy), limits, copies)
    return one_copy * copies


def plural(count: int, word: str, words: str | None = None) -> str:
    """``1 copy``, ``2 copies``."""
    return f"{count:,} {word if count == 1 else (words or word + 's')}"


# ------------------------------------------------------------ raw documents
def _render_raw(fmt: str, data: bytes, copies: int, limits: Limits) -> Rendered:
    """A raw job, checked, ``copies`` times; ``labels`` as the language module counts."""
    labels: int | None
    if fmt == "zpl":
        check_zpl(data)
        labels = _count(zpl.labels_in, fmt, data)
    elif fmt == "tspl":
        labels = _count(tspl.labels_in, fmt, data)
        if not labels:
            raise DocumentError("TSPL document prints nothing: it has no PRINT m[,n] line "
                                "with m, n >= 1")
    elif fmt == "epl":
        labels = _count(epl.labels_in, fmt, data)
        if not labels:
            raise DocumentError("EPL document prints nothing: it has no P<n>[,<n>] line "
                                "with n >= 1 (the print command, on a line of its own)")
    else:
        if not data:
            raise DocumentError("ESC/POS document is empty")
        labels = None
    job = repeat(data, copies, limits)
    counted = f", {plural(labels, 'label')} each" if labels is not None else ""
    return Rendered(data=job, labels=None if labels is None else labels * copies, pages=1,
                    summary=f"{fmt}, {plural(len(data), 'byte')}{counted} -> as sent, "
                            f"{plural(copies, 'copy', 'copies')}")


def _count(labels_in: Callable[[bytes], int], fmt: str, data: bytes) -> int:
    try:
        return labels_in(data)
    except ValueError as exc:  # a quantity no printer takes
        raise DocumentError(f"{LANGUAGE_NAMES[fmt]} document: {exc}") from exc


def check_zpl(data: bytes) -> None:
    """Refuse a raw ZPL job that cannot print whole or reconfigures the printer.

    Every ``^XA`` must be closed by ``^XZ`` before the next ``^XA``, no ``^XZ`` may come
    without ``^XA``, there must be at least one format, and no command of
    :data:`ZPL_FORBIDDEN` may appear (case-insensitive, as the printer reads them).
    """
    data = data.translate(_ALTERNATE_PREFIXES)
    sgd = _ZPL_SGD.search(data)
    if sgd is not None:
        raise DocumentError(f"ZPL document has a Set-Get-Do command {sgd[0][:24]!r} at byte "
                            f"{sgd.start():,}: print jobs may not change printer settings",
                            code="forbidden_command")
    forbidden = _ZPL_FORBIDDEN.search(data)
    if forbidden is not None:
        command = forbidden[0].decode("ascii").upper()
        raise DocumentError(f"ZPL document has {command} at byte {forbidden.start():,}: it "
                            f"{_ZPL_WHY[command]}; print jobs may not reconfigure the printer "
                            f"(docs/print-documents.md lists the refused commands)",
                            code="forbidden_command")
    opened: int | None = None
    formats = 0
    for mark in _ZPL_FORMAT_MARK.finditer(data):
        if mark[0][2:].upper() == b"A":
            if opened is not None:
                raise DocumentError(f"ZPL document has ^XA at byte {opened:,} without a "
                                    f"closing ^XZ before the next ^XA at byte "
                                    f"{mark.start():,}")
            opened = mark.start()
        else:
            if opened is None:
                raise DocumentError(f"ZPL document has ^XZ at byte {mark.start():,} without "
                                    f"an opening ^XA")
            opened = None
            formats += 1
    if opened is not None:
        raise DocumentError(f"ZPL document has ^XA at byte {opened:,} without a closing ^XZ "
                            f"(truncated?)")
    if not formats:
        raise DocumentError("ZPL document has no label format: nothing between ^XA and ^XZ")
