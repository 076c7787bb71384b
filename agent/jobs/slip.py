"""Packing slips: a receipt built from fields, for ESC/POS printers (python-escpos).

The ``packing_slip`` template prints the shop, the title, the order ids, waybill, buyer
and date, a line per item (``2 x SKU-1  name``), the totals, a ``GIFT`` block, the note,
a CODE128 bar code, a QR code, the footer, and a cut. No prices, ever: a gift slip must
not show them and a packing slip does not need them.

Text is laid out in columns of font A (12 dots wide: 48 columns on 80 mm paper, 32 on
58 mm); East Asian wide characters take two. Text is encoded as ``text_encoding`` says:

* ``auto``: python-escpos ``text()`` picks, character by character, a code page of the
  printer's profile. A character no code page has would print as ``?``: the slip is
  refused instead (``unprintable_text``), naming the characters.
* ``gb18030``: ``FS &`` (``1C 26``, select Chinese character mode) once at the start,
  then every text as GB18030 bytes; every non-ASCII character prints double width.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from escpos.constants import QR_ECLEVEL_M
from escpos.exceptions import Error as EscposError

from agent.devices.printers.escpos import EscposJob
from agent.devices.settings import PrinterSettings
from agent.jobs.documents import DocumentError, Limits, Rendered, plural, repeat
from agent.jobs.raster import receipt_job

TEMPLATES = ("packing_slip",)
FIELDS = ("shop", "title", "order_ids", "waybill", "buyer", "created_at", "lines", "gift",
          "gift_message", "note", "footer", "barcode", "qr")
LINE_FIELDS = ("sku", "name", "quantity", "note")
FONT_A_DOTS = 12  # font A is 12 x 24 dots (Epson TM and compatible printers)
MIN_COLUMNS = 16
FS_CHINESE_ON = b"\x1c&"  # FS &: Chinese (Kanji) character mode, the printer reads GB codes
BARCODE_HEIGHT_DOTS = 80
BARCODE_QUIET_MODULES = 55  # CODE128: start 11 + check 11 + stop 13, 10 quiet each side
QR_MAX_BYTES = 500  # UTF-8: QR version 15 at most, which fits 58 mm paper


@dataclass(frozen=True)
class SlipLine:
    """One item on the slip."""

    sku: str
    name: str
    quantity: int
    note: str | None = None


@dataclass(frozen=True)
class PackingSlip:
    """The validated fields of a ``packing_slip``."""

    order_ids: tuple[str, ...]
    lines: tuple[SlipLine, ...]
    shop: str | None = None
    title: str = "Packing slip"
    waybill: str | None = None
    buyer: str | None = None
    created_at: str | None = None
    gift: bool = False
    gift_message: str | None = None
    note: str | None = None
    footer: str | None = None
    barcode: str | None = None
    qr: str | None = None

    def texts(self) -> Iterator[tuple[str, str]]:
        """Every text the slip prints, with the field it comes from."""
        for name in ("shop", "title", "waybill", "buyer", "created_at", "gift_message",
                     "note", "footer"):
            yield f"fields.{name}", getattr(self, name) or ""
        for index, order_id in enumerate(self.order_ids):
            yield f"fields.order_ids[{index}]", order_id
        for index, line in enumerate(self.lines):
            path = f"fields.lines[{index}]"
            yield from ((f"{path}.sku", line.sku), (f"{path}.name", line.name),
                        (f"{path}.note", line.note or ""))


# ------------------------------------------------------------ fields
def parse_packing_slip(fields: object) -> PackingSlip:
    """Check the ``fields`` of a ``packing_slip``; the message names the field."""
    if not isinstance(fields, Mapping):
        raise DocumentError(f"document.fields must be an object, got {type(fields).__name__}")
    unknown = sorted(str(key) for key in fields if key not in FIELDS)
    if unknown:
        raise DocumentError(f"fields {unknown} are not packing_slip fields; allowed: "
                            f"{', '.join(FIELDS)}")
    order_ids = _list(fields.get("order_ids"), "fields.order_ids")
    raw_lines = _list(fields.get("lines"), "fields.lines")
    gift = fields.get("gift", False)
    if not isinstance(gift, bool):
        raise DocumentError(f"fields.gift must be true or false, got {gift!r}")
    barcode = _text(fields.get("barcode"), "fields.barcode")
    if barcode is not None and not all(" " <= ch <= "~" for ch in barcode):
        raise DocumentError("fields.barcode must be printable ASCII (space to ~): CODE128 "
                            "code set B has no other characters")
    qr = _text(fields.get("qr"), "fields.qr")
    if qr is not None and len(qr.encode("utf-8")) > QR_MAX_BYTES:
        raise DocumentError(f"fields.qr is {len(qr.encode('utf-8'))} bytes (UTF-8); at most "
                            f"{QR_MAX_BYTES} fit a readable QR code on the slip")
    return PackingSlip(
        order_ids=tuple(_required(value, f"fields.order_ids[{index}]")
                        for index, value in enumerate(order_ids)),
        lines=tuple(_line(value, f"fields.lines[{index}]")
                    for index, value in enumerate(raw_lines)),
        shop=_text(fields.get("shop"), "fields.shop"),
        title=_text(fields.get("title"), "fields.title") or "Packing slip",
        waybill=_text(fields.get("waybill"), "fields.waybill"),
        buyer=_text(fields.get("buyer"), "fields.buyer"),
        created_at=_text(fields.get("created_at"), "fields.created_at"),
        gift=gift,
        gift_message=_text(fields.get("gift_message"), "fields.gift_message", lines=True),
        note=_text(fields.get("note"), "fields.note", lines=True),
        footer=_text(fields.get("footer"), "fields.footer", lines=True),
        barcode=barcode,
        qr=qr,
    )


def _list(value: object, path: str) -> list[Any]:
    if not isinstance(value, list) or not value:
        raise DocumentError(f"{path} is required: a list with at least one entry, got "
                            f"{value!r:.80}")
    return value


def _required(value: object, path: str) -> str:
    text = _text(value, path)
    if text is None:
        raise DocumentError(f"{path} must be a non-empty string")
    return text


def _text(value: object, path: str, *, lines: bool = False) -> str | None:
    """A text field: ``None`` when absent or blank; control characters are refused
    (they would reach the printer as commands), line breaks only where ``lines``."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise DocumentError(f"{path} must be a string, got {value!r:.80}")
    text = value.replace("\r\n", "\n").replace("\t", " ")
    controls = sorted({f"U+{ord(ch):04X}" for ch in text
                       if unicodedata.category(ch) == "Cc" and not (lines and ch == "\n")})
    if controls:
        allowed = "line breaks only" if lines else "no line breaks"
        raise DocumentError(f"{path} has control characters {', '.join(controls)}; it must be "
                            f"printable text ({allowed})")
    return text if text.strip() else None


def _line(value: object, path: str) -> SlipLine:
    if not isinstance(value, Mapping):
        raise DocumentError(f"{path} must be an object with sku, name, quantity, got "
                            f"{value!r:.80}")
    unknown = sorted(str(key) for key in value if key not in LINE_FIELDS)
    if unknown:
        raise DocumentError(f"{path} has unknown fields {unknown}; allowed: "
                            f"{', '.join(LINE_FIELDS)}")
    quantity = value.get("quantity")
    if isinstance(quantity, bool) or not isinstance(quantity, int) or quantity < 1:
        raise DocumentError(f"{path}.quantity must be a whole number of at least 1, got "
                            f"{quantity!r}")
    return SlipLine(sku=_required(value.get("sku"), f"{path}.sku"),
                    name=_required(value.get("name"), f"{path}.name"), quantity=quantity,
                    note=_text(value.get("note"), f"{path}.note", lines=True))


# ------------------------------------------------------------ text
def check_printable(job: EscposJob, slip: PackingSlip, text_encoding: str) -> None:
    """Refuse text the printer would not print as sent (``unprintable_text``)."""
    encoder = job.magic.encoder
    if text_encoding == "gb18030":
        def can_print(ch: str) -> bool:
            # GB18030 maps every code point but surrogates; the fonts of Chinese receipt
            # printers cover its one- and two-byte part (GBK): four-byte codes (emoji, ß, ñ,
            # •, ™, rare ideographs) print as garbage, two columns wide.
            if unicodedata.category(ch) == "Cs":
                return False
            return len(ch.encode("gb18030")) <= 2

        hint = ("the printer's Chinese mode prints GBK (one- and two-byte GB18030 codes) "
                "and these need four-byte codes; replace them (ss for ß, n for ñ...)")
    else:
        def can_print(ch: str) -> bool:  # python-escpos: a code page of the profile has it
            return ord(ch) < 128 or any(encoder.can_encode(encoding, ch)
                                        for encoding in encoder.codepages)

        profile = job.profile.profile_data.get("name", "generic")
        hint = (f"no code page of the printer's python-escpos profile ({profile}) has them; "
                f"set text_encoding = \"gb18030\" on the printer if it has a Chinese font")
    bad: dict[str, str] = {}
    checked: set[str] = set()
    for path, text in slip.texts():
        for ch in text:
            if ch not in checked:
                checked.add(ch)
                if not can_print(ch):
                    bad[ch] = path
    if bad:
        listed = [f"{ch!r} (U+{ord(ch):04X}) in {path}" for ch, path in list(bad.items())[:8]]
        more = f" and {len(bad) - 8} more" if len(bad) > 8 else ""
        raise DocumentError(f"slip text has characters the printer cannot print: "
                            f"{', '.join(listed)}{more}; {hint}", code="unprintable_text")


@dataclass
class SlipWriter:
    """Lays a :class:`PackingSlip` out on an :class:`EscposJob`, ``columns`` wide."""

    job: EscposJob
    columns: int
    paper_dots: int
    chinese: bool

    def char_width(self, ch: str) -> int:
        if unicodedata.combining(ch):
            return 0
        if self.chinese:  # Chinese mode prints every GB character from the 24-dot font
            return 1 if ord(ch) < 128 else 2
        return 2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1

    def width(self, text: str) -> int:
        return sum(self.char_width(ch) for ch in text)

    def wrap(self, text: str, first: int, rest: int) -> list[str]:
        """``text`` in lines of at most ``first`` then ``rest`` columns, broken at
        spaces where possible (CJK text, which has none, anywhere)."""
        lines: list[str] = []
        for paragraph in text.split("\n"):
            current, used = "", 0
            limit = max(1, first if not lines else rest)
            for token in re.findall(r"\S+|\s+", paragraph):
                if token.isspace():
                    if current and used < limit:
                        current, used = current + " ", used + 1
                    continue
                if used + self.width(token) > limit and current:
                    lines.append(current.rstrip())
                    current, used, limit = "", 0, max(1, rest)
                while self.width(token) > limit - used:  # a word longer than a line
                    piece, piece_width = "", 0
                    for ch in token:
                        if piece and piece_width + self.char_width(ch) > limit:
                            break
                        piece, piece_width = piece + ch, piece_width + self.char_width(ch)
                    lines.append(piece)
                    token = token[len(piece):]
                    limit = max(1, rest)
                current, used = current + token, used + self.width(token)
            lines.append(current.rstrip())
        return lines

    def text(self, text: str) -> None:
        if self.chinese:
            self.job._raw(text.encode("gb18030"))
        else:
            self.job.text(text)

    def block(self, text: str, *, prefix: str = "", indent: int | None = None,
              columns: int | None = None) -> None:
        """``prefix`` + ``text`` wrapped, continuation lines indented."""
        columns = columns or self.columns
        indent = self.width(prefix) if indent is None else indent
        lines = self.wrap(text, columns - self.width(prefix), columns - indent)
        self.text("".join(f"{prefix if index == 0 else ' ' * indent}{line}\n"
                          for index, line in enumerate(lines)))

    def write(self, slip: PackingSlip) -> bytes:
        job = self.job
        job.hw("INIT")  # ESC @: nothing a previous job left (size, alignment) carries over
        if self.chinese:
            job._raw(FS_CHINESE_ON)
        job.set(align="center")
        if slip.shop:
            job.set(bold=True)
            self.block(slip.shop)
            job.set(bold=False)
        job.set(bold=True, custom_size=True, width=2, height=2)  # GS ! 0x11
        self.block(slip.title, columns=self.columns // 2)
        job.set(bold=False, custom_size=True, width=1, height=1)
        job.set(align="left")
        self.text("\n")
        label = "Order: " if len(slip.order_ids) == 1 else "Orders: "
        self.block(", ".join(slip.order_ids), prefix=label)
        for label, value in (("Waybill: ", slip.waybill), ("Buyer: ", slip.buyer),
                             ("Date: ", slip.created_at)):
            if value:
                self.block(value, prefix=label)
        self.text("-" * self.columns + "\n")
        for line in slip.lines:
            prefix = f"{line.quantity} x {line.sku}  "
            if self.width(prefix) > self.columns // 2:
                self.block(prefix.rstrip())
                self.block(line.name, prefix="    ")
            else:
                self.block(line.name, prefix=prefix)
            if line.note:
                self.block(line.note, prefix="    - ")
        self.text("-" * self.columns + "\n")
        items = sum(line.quantity for line in slip.lines)
        self.text(f"{plural(len(slip.lines), 'line')}, {plural(items, 'item')}\n")
        if slip.gift:
            self.text("\n")
            job.set(align="center", bold=True, custom_size=True, width=2, height=2)
            self.text("GIFT\n")
            job.set(bold=False, custom_size=True, width=1, height=1)
            if slip.gift_message:
                self.block(slip.gift_message)
            job.set(align="left")
        if slip.note:
            self.text("\n")
            self.block(slip.note, prefix="Note: ")
        if slip.barcode:
            self.text("\n")
            self.barcode(slip.barcode)
        if slip.qr:
            self.text("\n")
            self.qr(slip.qr)
        if slip.footer:
            self.text("\n")
            job.set(align="center")
            self.block(slip.footer)
            job.set(align="left")
        job.cut()
        return job.output

    def barcode(self, value: str) -> None:
        """CODE128 (code set B, ``{B``; a ``{`` in the data is sent as ``{{``: Epson
        ESC/POS ``GS k`` m=73), centered, its text below (HRI, font A)."""
        profile = self.job.profile
        if not profile.supports("barcodeB"):
            raise DocumentError(f"fields.barcode: the printer's python-escpos profile "
                                f"{profile.profile_data.get('name', '?')!r} has no CODE128 "
                                f"(GS k function B); leave the barcode out",
                                code="unsupported_document")
        modules = 11 * len(value) + BARCODE_QUIET_MODULES
        module_dots = 3 if 3 * modules <= self.paper_dots else 2
        if 2 * modules > self.paper_dots:
            fits = (self.paper_dots // 2 - BARCODE_QUIET_MODULES) // 11
            raise DocumentError(f"fields.barcode is {len(value)} characters; at most {fits} "
                                f"fit across the paper as CODE128 ({self.paper_dots} dots)")
        try:
            # python-escpos's barcode() picks this same hardware path for a profile with
            # barcodeB, but print()s "Using hardware barcode renderer" on stdout.
            self.job._hw_barcode("{B" + value.replace("{", "{{"), "CODE128",
                                 height=BARCODE_HEIGHT_DOTS, width=module_dots, pos="BELOW",
                                 font="A", align_ct=True, function_type="B")
        except EscposError as exc:
            raise DocumentError(f"fields.barcode cannot print as CODE128: {exc}") from exc
        self.job.set(align="left")

    def qr(self, content: str) -> None:
        """A QR code (error correction M), centered: printed by the printer (``GS ( k``)
        when the profile has it, else as a raster image (python-escpos and qrcode)."""
        profile = self.job.profile
        module_dots = 6 if self.paper_dots >= 512 else 4
        if not profile.supports("qrCode") and not profile.supports("bitImageRaster"):
            raise DocumentError(f"fields.qr: the printer's python-escpos profile "
                                f"{profile.profile_data.get('name', '?')!r} prints neither "
                                f"QR codes nor images; leave the QR code out",
                                code="unsupported_document")
        self.job.set(align="center")
        try:
            if profile.supports("qrCode"):
                self.job.qr(content, ec=QR_ECLEVEL_M, size=module_dots, native=True)
                self.text("\n")
            else:
                self.job.qr(content, ec=QR_ECLEVEL_M, size=module_dots, native=False,
                            image_arguments={"impl": "bitImageRaster", "center": False})
        except (EscposError, ValueError) as exc:
            raise DocumentError(f"fields.qr cannot print as a QR code: {exc}") from exc
        self.job.set(align="left")


# ------------------------------------------------------------ the document
def render_slip(document: Mapping[str, Any], settings: PrinterSettings, *, copies: int,
                limits: Limits) -> Rendered:
    """A ``slip`` document for an ESC/POS printer, ``copies`` receipts."""
    if settings.language != "escpos":
        raise DocumentError(f"packing slips print on ESC/POS receipt printers; this printer "
                            f"speaks {settings.language.upper()}: send the slip as a PDF or "
                            f"PNG instead", code="unsupported_document")
    template = document.get("template")
    if template not in TEMPLATES:
        raise DocumentError(f"unknown slip template {template!r}; known: "
                            f"{', '.join(TEMPLATES)}", code="unsupported_document")
    slip = parse_packing_slip(document.get("fields"))
    job, paper_dots = receipt_job(settings)
    columns = paper_dots // FONT_A_DOTS
    if columns < MIN_COLUMNS:
        raise DocumentError(f"the paper is {paper_dots} dots wide: {columns} columns, fewer "
                            f"than the {MIN_COLUMNS} a packing slip needs (width_mm)",
                            code="unsupported_document")
    chinese = settings.text_encoding == "gb18030"
    check_printable(job, slip, settings.text_encoding)
    one = SlipWriter(job, columns, paper_dots, chinese).write(slip)
    items = sum(line.quantity for line in slip.lines)
    orders = slip.order_ids[0] + (f" +{len(slip.order_ids) - 1}"
                                  if len(slip.order_ids) > 1 else "")
    return Rendered(data=repeat(one, copies, limits), labels=copies, pages=1,
                    summary=f"packing slip, order {orders}, "
                            f"{plural(len(slip.lines), 'line')} ({plural(items, 'item')}) "
                            f"-> ESC/POS {columns} columns ({settings.text_encoding}), "
                            f"{plural(copies, 'copy', 'copies')}")
