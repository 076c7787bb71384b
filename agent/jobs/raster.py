"""Pictures for printers: a PNG or PDF becomes labels (ZPL, TSPL, EPL) or receipt blocks.

Each image or PDF page becomes one 1-bit :class:`Bitmap` (1 = black dot): gray (a
transparent pixel is white), scaled *down* (never up) to the printer's width keeping its
aspect ratio, then thresholded (a pixel darker than ``threshold`` is black: bar codes stay
sharp) or Floyd-Steinberg dithered (photos), its width padded with white to whole bytes.
Then it is written in the printer's language:

* ZPL: ``^XA^FO0,0^GFA,t,t,r,DATA^FS^PQn^XZ`` per page, ``DATA`` as ``zpl_graphics``
  says: plain hex, Zebra's ASCII compression (``acs``) or ``:Z64:`` (deflate + base64).
* TSPL: ``SIZE``, ``CLS``, ``BITMAP 0,0,r,h,0,<binary>``, ``PRINT 1,n`` per page.
* EPL: ``N``, ``GW0,0,r,h,<binary>``, ``Pn`` per page.
* ESC/POS: python-escpos ``image()`` as ``GS v 0`` raster blocks, one cut at the end.
"""

from __future__ import annotations

import base64
import binascii
import io
import itertools
import math
import re
import threading
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pypdfium2 as pdfium
from PIL import Image, UnidentifiedImageError

from agent.devices.printers.escpos import EscposJob
from agent.devices.settings import PrinterSettings
from agent.jobs.documents import (
    LANGUAGE_NAMES,
    DocumentError,
    Limits,
    Rendered,
    decode_data,
    describe_bytes,
    plural,
    repeat,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
FPDF_ERR_PASSWORD = 4
"""PDFium's ``FPDF_GetLastError`` code for a document that needs a password."""
_PDFIUM_LOCK = threading.Lock()
_EMPTY_PAGE_TREE = re.compile(rb"/Count\s*0\s*/Kids\s*\[\s*\]|/Kids\s*\[\s*\]\s*/Count\s*0\b")
"""PDFium is not thread-safe (pypdfium2 documentation): one document at a time."""
_INVERT = bytes(255 - value for value in range(256))
_SIXTEEN_BIT = frozenset({"I", "I;16", "I;16B", "I;16L", "I;16N"})


@dataclass(frozen=True)
class Bitmap:
    """A 1-bit picture: ``height`` rows of ``width // 8`` bytes, leftmost dot in bit 7,
    1 = black (as ZPL ``^GF`` and ESC/POS ``GS v 0`` want it)."""

    width: int
    height: int
    rows: bytes

    @property
    def bytes_per_row(self) -> int:
        return self.width // 8

    @property
    def size(self) -> str:
        return f"{self.width}x{self.height}"


# ------------------------------------------------------------ reading pictures
def read_png(data: bytes, limits: Limits) -> Image.Image:
    """The PNG in ``data`` as a gray (``L``) image; transparent pixels are white."""
    if not data.startswith(PNG_SIGNATURE):
        raise DocumentError(f"document is not a PNG ({describe_bytes(data)}); send "
                            f"format \"png\" with a PNG file, or use \"pdf\"")
    try:
        image = Image.open(io.BytesIO(data), formats=["PNG"])
    except Image.DecompressionBombError as exc:
        raise DocumentError(f"PNG is too large: {exc}", code="too_large") from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DocumentError("PNG is corrupt or truncated: Pillow cannot read its header"
                            ) from exc
    width, height = image.size
    if width * height > limits.max_pixels:
        raise DocumentError(f"PNG is {width}x{height} = {width * height:,} pixels; the limit "
                            f"is {limits.max_pixels:,} pixels per image", code="too_large")
    try:
        image.load()
    except (OSError, SyntaxError, ValueError, EOFError, zlib.error) as exc:
        raise DocumentError(f"PNG is corrupt or truncated: {exc}") from exc
    return gray(image)


def gray(image: Image.Image) -> Image.Image:
    """``image`` in 8-bit gray (``L``) on white: transparency becomes white."""
    if image.mode in _SIXTEEN_BIT:
        # Pillow clips 16-bit gray to 0..255 when converting to L; keep the top 8 bits.
        values = np.asarray(image).astype(np.int64)
        return Image.fromarray((np.clip(values, 0, 65535) >> 8).astype(np.uint8))
    if "A" in image.mode or "a" in image.mode or "transparency" in image.info:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        white.alpha_composite(rgba)
        return white.convert("L")
    return image.convert("L")


def read_pdf(data: bytes, settings: PrinterSettings, limits: Limits) -> list[Image.Image]:
    """Every page of the PDF in ``data``, rendered gray at the printer's dpi.

    A page wider than the printer is rendered straight at the scale that fits it (the
    same result as rendering at the printer's dpi and scaling down, but rasterised at the
    final size so text and bar codes stay sharp).
    """
    dpi_scale = settings.dpi / 72  # PDF user space: 72 units per inch
    pages: list[Image.Image] = []
    with _PDFIUM_LOCK:
        try:
            pdf = pdfium.PdfDocument(data)
        except pdfium.PdfiumError as exc:
            if exc.err_code == FPDF_ERR_PASSWORD:
                raise DocumentError("PDF is encrypted (it needs a password to open); send "
                                    "it without encryption") from exc
            # PDFium refuses a document whose page tree is empty, with whatever error code
            # was left from before ("Success" on a fresh thread).
            if exc.err_code == 0 or _EMPTY_PAGE_TREE.search(data):
                raise DocumentError("PDF has no pages (an empty or missing page tree)"
                                    ) from exc
            raise DocumentError(f"PDF cannot be read ({exc}); {describe_bytes(data)}"
                                ) from exc
        try:
            count = len(pdf)
            if count == 0:
                raise DocumentError("PDF has no pages: nothing to print")
            if count > limits.max_pages:
                raise DocumentError(f"PDF has {count} pages; the limit is {limits.max_pages} "
                                    f"(jobs.print.max_pages)", code="too_large")
            for index in range(count):
                try:
                    page = pdf[index]
                except pdfium.PdfiumError as exc:
                    raise DocumentError(f"PDF page {index + 1} cannot be read ({exc})"
                                        ) from exc
                try:
                    pages.append(_render_page(page, index, dpi_scale, settings, limits))
                finally:
                    page.close()
        finally:
            pdf.close()
    return pages


def _render_page(page: Any, index: int, dpi_scale: float, settings: PrinterSettings,
                 limits: Limits) -> Image.Image:
    width_pt, height_pt = page.get_size()
    width, height = math.ceil(width_pt * dpi_scale), math.ceil(height_pt * dpi_scale)
    if width * height > limits.max_pixels:
        raise DocumentError(f"PDF page {index + 1} is {width}x{height} = {width * height:,} "
                            f"pixels at {settings.dpi} dpi; the limit is "
                            f"{limits.max_pixels:,} pixels per page", code="too_large")
    # A hair under the printer's width so PDFium's rounding up cannot add a dot.
    scale = min(dpi_scale, (settings.width_dots - 1e-6) / width_pt)
    try:
        bitmap = page.render(scale=scale, grayscale=True, fill_color=(255, 255, 255, 255),
                             may_draw_forms=False)
    except (pdfium.PdfiumError, ValueError) as exc:
        raise DocumentError(f"PDF page {index + 1} cannot be rendered ({exc})") from exc
    image: Image.Image = bitmap.to_pil().convert("L")  # a copy, not PDFium's buffer
    bitmap.close()
    return image


# ------------------------------------------------------------ 1-bit
def to_bitmap(image: Image.Image, width_dots: int, *, threshold: int = 128,
              dither: bool = False) -> Bitmap:
    """A gray image as a 1-bit :class:`Bitmap` at most ``width_dots`` wide.

    Wider images are scaled down with an area average (no ringing around bars), keeping
    the aspect ratio; narrower ones keep their size. ``threshold``: a pixel below it is
    black; ``dither``: Pillow's Floyd-Steinberg instead (``threshold`` then unused).
    """
    if image.width > width_dots:
        height = max(1, round(image.height * width_dots / image.width))
        image = image.resize((width_dots, height), Image.Resampling.BOX)
    if dither:
        black = ~np.asarray(image.convert("1"), dtype=bool)  # mode "1": True is white
    else:
        black = np.asarray(image, dtype=np.uint8) < threshold
    packed = np.packbits(black, axis=1)  # pads each row with 0 bits: white
    return Bitmap(width=packed.shape[1] * 8, height=packed.shape[0], rows=packed.tobytes())


# ------------------------------------------------------------ ZPL ^GF
def zpl_graphic_data(bitmap: Bitmap, encoding: str) -> str:
    """The ``DATA`` of ``^GFA`` for ``bitmap`` (1 = black dot) as ``hex``, ``acs`` or ``z64``.

    ``z64``: ``:Z64:`` + base64 of the zlib stream + ``:`` + the CRC of the base64 text as
    four hex digits (ZPL II Programming Guide, "ZB64 Encoding and Compression"; the "LZ77"
    there is zlib, the CRC is CRC-16/CCITT with polynomial 0x1021 and initial value 0,
    which is :func:`binascii.crc_hqx` with 0).
    """
    if encoding == "hex":
        return bitmap.rows.hex().upper()
    if encoding == "z64":
        text = base64.b64encode(zlib.compress(bitmap.rows)).decode("ascii")
        return f":Z64:{text}:{binascii.crc_hqx(text.encode('ascii'), 0):04X}"
    if encoding == "acs":
        return acs(bitmap)
    raise ValueError(f"unknown zpl_graphics {encoding!r}")


def acs(bitmap: Bitmap) -> str:
    """Zebra's ASCII compression of ``bitmap``'s hex rows.

    ZPL II Programming Guide, "Alternative Data Compression Scheme for ~DG and ~DB
    Commands" (also accepted in ``^GFA``): ``G``..``Y`` repeat the next hex digit 1..19
    times, ``g``..``z`` 20..400 times (counts add up: ``vMB`` is 327 ``B``); ``,`` fills the
    rest of the row with ``0`` and ``!`` with ``F`` (from a whole byte: an odd tail keeps
    one digit); ``:`` repeats the previous row.
    """
    out: list[str] = []
    previous: bytes | None = None
    step = bitmap.bytes_per_row
    for start in range(0, len(bitmap.rows), step):
        row = bitmap.rows[start:start + step]
        if row == previous:
            out.append(":")
            continue
        previous = row
        out.append(_acs_row(row.hex().upper()))
    return "".join(out)


def _acs_row(digits: str) -> str:
    body, fill = digits, ""
    for digit, mark in (("0", ","), ("F", "!")):
        cut = len(digits.rstrip(digit))
        cut += cut % 2  # the fill starts on a byte boundary
        if cut < len(body):
            body, fill = digits[:cut], mark
    out: list[str] = []
    for digit, group in itertools.groupby(body):
        run = sum(1 for _ in group)
        out.append((_repeat_count(run) if run > 1 else "") + digit)
    return "".join(out) + fill


def _repeat_count(count: int) -> str:
    letters = "z" * (count // 400)
    count %= 400
    if count >= 20:
        letters += chr(ord("g") + count // 20 - 1)
        count %= 20
    if count:
        letters += chr(ord("G") + count - 1)
    return letters


def zpl_job(bitmaps: list[Bitmap], copies: int, encoding: str) -> bytes:
    """One ``^XA``..``^XZ`` format per bitmap, each printing ``copies`` labels (``^PQ``)."""
    formats = []
    for bitmap in bitmaps:
        total = len(bitmap.rows)
        data = zpl_graphic_data(bitmap, encoding)
        formats.append(f"^XA^FO0,0^GFA,{total},{total},{bitmap.bytes_per_row},{data}^FS"
                       f"^PQ{copies}^XZ")
    return "".join(formats).encode("ascii")


# ------------------------------------------------------------ TSPL, EPL
# TSPL BITMAP and EPL2 GW take raw binary rows where a 0 bit prints a dot and 1 leaves
# it white: the opposite of ^GF and GS v 0. Sources: LPrint (Michael Sweet) renders TSPL
# BITMAP and EPL2 GW rows in the CUPS "W" (luminance, 1 = white) colour space and ZPL
# in "K" (1 = black); TSC's TSPL/TSPL2 manual, BITMAP; Zebra's EPL2 guide, GW.
def tspl_job(bitmaps: list[Bitmap], settings: PrinterSettings, copies: int) -> bytes:
    """``SIZE``/``CLS``/``BITMAP``/``PRINT 1,copies`` per bitmap; sizes in mm, 0.1 mm."""
    out = bytearray()
    for bitmap in bitmaps:
        height_mm = bitmap.height * 25.4 / settings.dpi
        out += (f"SIZE {settings.width_mm:.1f} mm,{height_mm:.1f} mm\r\nCLS\r\n"
                f"BITMAP 0,0,{bitmap.bytes_per_row},{bitmap.height},0,").encode("ascii")
        out += bitmap.rows.translate(_INVERT)
        out += f"\r\nPRINT 1,{copies}\r\n".encode("ascii")
    return bytes(out)


def epl_job(bitmaps: list[Bitmap], copies: int) -> bytes:
    """``N``/``GW0,0,r,h,<binary>``/``P copies`` per bitmap."""
    out = bytearray()
    for bitmap in bitmaps:
        out += f"N\r\nGW0,0,{bitmap.bytes_per_row},{bitmap.height},".encode("ascii")
        out += bitmap.rows.translate(_INVERT)
        out += f"\r\nP{copies}\r\n".encode("ascii")
    return bytes(out)


# ------------------------------------------------------------ ESC/POS
def receipt_job(settings: PrinterSettings) -> tuple[EscposJob, int]:
    """A python-escpos job for the printer and its paper width in dots.

    The width is ``width_dots``, or the profile's ``media.width.pixels`` (whole bytes)
    when that is known and narrower. A profile that does not know its width is told the
    one used, so python-escpos checks images against it (and does not print() a
    warning on every image).
    """
    job = EscposJob(settings.escpos_profile)
    data: dict[str, Any] = job.profile.profile_data
    media: dict[str, Any] = data.get("media") or {}
    pixels = (media.get("width") or {}).get("pixels")
    if isinstance(pixels, str) and pixels.isdigit():
        pixels = int(pixels)
    if isinstance(pixels, int) and pixels >= 8:
        return job, min(settings.width_dots, pixels // 8 * 8)
    width = settings.width_dots
    # An instance attribute: the profile class (shared by every job) stays untouched.
    job.profile.profile_data = {**data, "media": {
        **media, "width": {**(media.get("width") or {}), "pixels": width}}}
    return job, width


def escpos_job(bitmaps: list[Bitmap], job: EscposJob) -> bytes:
    """``ESC @``, one ``GS v 0`` raster image per bitmap, then python-escpos's ``cut()``.

    python-escpos turns the image to gray, inverts it and makes it 1-bit again, which
    keeps a 1-bit picture exactly; images taller than 960 rows go out as several
    ``GS v 0`` blocks. ``ESC @`` first resets alignment and print modes a previous job
    may have left (``ESC a`` also moves raster images).
    """
    if not job.profile.supports("bitImageRaster"):
        raise DocumentError(f"the printer's python-escpos profile "
                            f"{job.profile.profile_data.get('name', '?')!r} cannot print "
                            f"raster images (GS v 0)", code="unsupported_document")
    job.hw("INIT")
    for bitmap in bitmaps:
        # Pillow's mode "1" stores a 1 bit for white: invert the 1 = black rows.
        picture = Image.frombytes("1", (bitmap.width, bitmap.height),
                                  bitmap.rows.translate(_INVERT))
        job.image(picture, impl="bitImageRaster")
    job.cut()
    return job.output


# ------------------------------------------------------------ the document
def render_picture(document: Mapping[str, Any], settings: PrinterSettings, *, copies: int,
                   limits: Limits) -> Rendered:
    """A ``png`` or ``pdf`` document for the printer (see the module docstring)."""
    fmt = document["format"]
    threshold = document.get("threshold", 128)
    dither = document.get("dither", False)
    if isinstance(threshold, bool) or not isinstance(threshold, int) or \
            not 0 <= threshold <= 255:
        raise DocumentError(f"document.threshold must be a whole number from 0 to 255, got "
                            f"{threshold!r}")
    if not isinstance(dither, bool):
        raise DocumentError(f"document.dither must be true or false, got {dither!r}")
    job: EscposJob | None = None
    if settings.language == "escpos":
        job, width_dots = receipt_job(settings)
    else:
        width_dots = settings.width_dots
    if width_dots < 8:
        raise DocumentError(f"the printer is narrower than 8 dots (width_mm = "
                            f"{settings.width_mm} at {settings.dpi} dpi)",
                            code="unsupported_document")
    data = decode_data(document, limits)
    images = read_pdf(data, settings, limits) if fmt == "pdf" else [read_png(data, limits)]
    bitmaps = [to_bitmap(image, width_dots, threshold=threshold, dither=dither)
               for image in images]
    scaled = [f"{image.width}x{image.height}" for image, bitmap in zip(images, bitmaps,
                                                                       strict=True)
              if image.width > width_dots]
    if settings.language == "zpl":
        out, labels = zpl_job(bitmaps, copies, settings.zpl_graphics), len(bitmaps) * copies
        how = f"ZPL ^GF {_sizes(bitmaps)} dots ({settings.zpl_graphics})"
    elif settings.language == "tspl":
        out, labels = tspl_job(bitmaps, settings, copies), len(bitmaps) * copies
        how = f"TSPL BITMAP {_sizes(bitmaps)} dots"
    elif settings.language == "epl":
        out, labels = epl_job(bitmaps, copies), len(bitmaps) * copies
        how = f"EPL GW {_sizes(bitmaps)} dots"
    else:
        assert job is not None
        out, labels = repeat(escpos_job(bitmaps, job), copies, limits), copies
        how = f"{LANGUAGE_NAMES['escpos']} GS v 0 {_sizes(bitmaps)} dots"
    unit = ("page", "pages") if fmt == "pdf" else ("image", "images")
    summary = (f"{fmt}, {plural(len(bitmaps), *unit)} -> {how}, "
               f"{plural(copies, 'copy', 'copies')}")
    if scaled:
        summary += f", scaled down from {', '.join(dict.fromkeys(scaled))}"
    if dither:
        summary += ", dithered"
    return Rendered(data=out, labels=labels, pages=len(bitmaps), summary=summary)


def _sizes(bitmaps: list[Bitmap]) -> str:
    return ", ".join(dict.fromkeys(bitmap.size for bitmap in bitmaps))
