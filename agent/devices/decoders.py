"""Barcode decoding of camera frames: one interface, two libraries.

:class:`ZxingDecoder` (zxing-cpp, the default) and :class:`PyzbarDecoder` (pyzbar over the
system's libzbar) both turn a frame into :class:`Decoded` symbols named with the config's
format names (``BARCODE_FORMATS``). zxing-cpp decodes a frame 4.5 (640x480) to 8
(1920x1080) times faster than zbar (``benchmarks/camera_decode.py``), reads DataMatrix,
PDF417 and Aztec, which zbar cannot, gives the AIM symbology identifier (``]C1`` marks
GS1-128) and needs no system library.

Both are normalised to what an AIM-conforming scanner transmits: UPC-A and UPC-E as the
13 digits of their EAN-13 form (``]E0`` + ``0036000291452``), GS1 element strings with a
GS (``\\x1d``) after each variable-length field. An EAN-13 with a leading 0 is a UPC-A:
it is reported as ``upca`` when that format is configured.

``decode`` is blocking and CPU-bound: the camera driver calls it in a worker thread. The
decoders hold no per-call state and may be used from several threads at once.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import cv2
import numpy as np
import numpy.typing as npt
import zxingcpp

from agent.devices.settings import BARCODE_FORMATS, PYZBAR_CANNOT_READ
from agent.errors import ConfigError, ProtocolError

Point = tuple[int, int]

SYMBOLOGY_NAMES: dict[str, str] = {
    "ean13": "EAN-13", "ean8": "EAN-8", "upca": "UPC-A", "upce": "UPC-E",
    "code128": "Code 128", "code39": "Code 39", "code93": "Code 93", "codabar": "Codabar",
    "itf": "ITF", "databar": "GS1 DataBar", "databar_expanded": "GS1 DataBar Expanded",
    "qrcode": "QR Code", "datamatrix": "Data Matrix", "pdf417": "PDF417", "aztec": "Aztec",
}
"""Our format name -> the symbology in words, as ``Scan.symbology_name`` carries it."""
GS1_NAMES = {"code128": "GS1-128", "qrcode": "GS1 QR Code", "datamatrix": "GS1 DataMatrix",
             "aztec": "GS1 Aztec"}
"""Names of a symbology when it carries GS1 data (FNC1 in first position)."""


@dataclass(frozen=True, slots=True)
class Decoded:
    """One barcode found in a frame.

    Attributes:
        text: the content; GS1 element strings keep their GS separators.
        format: our format name (``ean13``, ``code128``...), one of ``BARCODE_FORMATS``.
        box: the symbol's corners in pixels, clockwise from its top left as printed.
        raw: the content's bytes as the decoder gave them.
        symbology_id: the AIM identifier (``]C1``) when the decoder reports one.
        gs1: the symbol carries GS1 data (FNC1 in first position).
    """

    text: str
    format: str
    box: tuple[Point, Point, Point, Point]
    raw: bytes
    symbology_id: str | None = None
    gs1: bool = False

    @property
    def symbology_name(self) -> str:
        """The symbology in words: ``EAN-13``, ``GS1-128``, ``Data Matrix``..."""
        if self.gs1 and self.format in GS1_NAMES:
            return GS1_NAMES[self.format]
        return SYMBOLOGY_NAMES[self.format]


class BarcodeDecoder(ABC):
    """Finds the configured barcode formats in an image. Stateless and thread-safe."""

    name: ClassVar[str]
    unsupported: ClassVar[frozenset[str]] = frozenset()
    """Formats the library cannot read; configuring one fails at construction."""

    def __init__(self, formats: Iterable[str]) -> None:
        self.formats = tuple(formats)
        unknown = [f for f in self.formats if f not in BARCODE_FORMATS]
        if unknown or not self.formats:
            raise ConfigError(f"barcode formats {unknown or '(none)'} are not known; "
                              f"allowed: {', '.join(BARCODE_FORMATS)}")
        missing = [f for f in self.formats if f in self.unsupported]
        if missing:
            raise ConfigError(
                f"decoder {self.name!r} cannot read {', '.join(missing)} "
                f"(its library has no reader for {'it' if len(missing) == 1 else 'them'}); "
                f'use decoder = "zxing" or remove {", ".join(missing)} from formats')

    def decode(self, image: npt.NDArray[Any]) -> list[Decoded]:
        """The barcodes in ``image`` (8-bit grayscale, BGR or BGRA), in the decoder's order.

        Raises:
            ProtocolError: the image is not an 8-bit grey or colour picture, or the
                library failed on it.
        """
        gray = to_gray(image)
        try:
            found = self._decode_gray(gray)
        except ProtocolError:
            raise
        except Exception as exc:
            raise ProtocolError(f"{self.name} could not decode a {gray.shape[1]}x"
                                f"{gray.shape[0]} frame: {exc}") from exc
        results = []
        for item in found:
            item = _as_upc(item, self.formats)
            if item.format in self.formats:
                results.append(item)
        return results

    @abstractmethod
    def _decode_gray(self, gray: npt.NDArray[np.uint8]) -> list[Decoded]:
        """Decode a C-contiguous 2-D ``uint8`` image."""


def to_gray(image: npt.NDArray[Any]) -> npt.NDArray[np.uint8]:
    """One grayscale conversion for any frame OpenCV delivers; checks what arrived."""
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.size == 0:
        raise ProtocolError(f"expected a non-empty uint8 image, got "
                            f"{type(image).__name__} {getattr(image, 'dtype', '')} "
                            f"{getattr(image, 'shape', '')}")
    if image.ndim == 2:
        return np.ascontiguousarray(image)
    if image.ndim == 3 and image.shape[2] == 1:
        return np.ascontiguousarray(image[:, :, 0])
    if image.ndim == 3 and image.shape[2] in (3, 4):
        code = cv2.COLOR_BGR2GRAY if image.shape[2] == 3 else cv2.COLOR_BGRA2GRAY
        return np.asarray(cv2.cvtColor(image, code), dtype=np.uint8)
    raise ProtocolError(f"expected a grayscale, BGR or BGRA image, got shape {image.shape}")


def _as_upc(item: Decoded, formats: Sequence[str]) -> Decoded:
    """One name for a UPC-A whichever reader saw it: an EAN-13 starting with 0 *is* a
    UPC-A; it is reported as ``upca`` when that is configured, else as ``ean13``."""
    name = item.format
    if name == "ean13" and "upca" in formats and item.text.startswith("0"):
        name = "upca"
    elif name == "upca" and "upca" not in formats and "ean13" in formats:
        name = "ean13"
    if name == item.format:
        return item
    return Decoded(item.text, name, item.box, item.raw, item.symbology_id, item.gs1)


class ZxingDecoder(BarcodeDecoder):
    """zxing-cpp 3: ``read_barcodes`` restricted to the configured formats."""

    name = "zxing"
    _F = zxingcpp.BarcodeFormat
    FORMATS: ClassVar[dict[str, tuple[zxingcpp.BarcodeFormat, ...]]] = {
        "ean13": (_F.EAN13,), "ean8": (_F.EAN8,), "upca": (_F.UPCA,), "upce": (_F.UPCE,),
        "code128": (_F.Code128,), "code39": (_F.Code39,), "code93": (_F.Code93,),
        "codabar": (_F.Codabar,), "itf": (_F.ITF,),
        "databar": (_F.DataBarOmni, _F.DataBarStk, _F.DataBarStkOmni, _F.DataBarLtd),
        "databar_expanded": (_F.DataBarExp, _F.DataBarExpStk),
        "qrcode": (_F.QRCode,), "datamatrix": (_F.DataMatrix,), "pdf417": (_F.PDF417,),
        "aztec": (_F.Aztec,),
    }
    """Our names -> zxing-cpp formats (a family name reads all its variants)."""

    def __init__(self, formats: Iterable[str], *, try_invert: bool = False) -> None:
        super().__init__(formats)
        # Packing labels are printed dark on light. The pass for inverted (light on dark)
        # symbols costs 10-20 % per frame, and with DataMatrix on it nearly doubles the
        # time at 1080p (benchmarks/camera_decode.py), so it is off unless asked for.
        self.try_invert = try_invert
        self._formats = zxingcpp.BarcodeFormats(
            [zx for name in self.formats for zx in self.FORMATS[name]])
        self._names: dict[zxingcpp.BarcodeFormat, str] = {}
        for name, members in self.FORMATS.items():
            for member in members:
                for variant in zxingcpp.barcode_formats_list(zxingcpp.BarcodeFormats(member)):
                    self._names.setdefault(variant, name)
                self._names.setdefault(member, name)

    def _decode_gray(self, gray: npt.NDArray[np.uint8]) -> list[Decoded]:
        # Plain text keeps GS1's GS separators, as a scanner sends them.
        barcodes = zxingcpp.read_barcodes(gray, formats=self._formats,
                                          try_invert=self.try_invert,
                                          text_mode=zxingcpp.TextMode.Plain)
        found = []
        for barcode in barcodes:
            name = self._names.get(barcode.format) or self._names.get(barcode.symbology)
            if name is None:
                continue
            p = barcode.position
            box = ((p.top_left.x, p.top_left.y), (p.top_right.x, p.top_right.y),
                   (p.bottom_right.x, p.bottom_right.y), (p.bottom_left.x, p.bottom_left.y))
            found.append(Decoded(barcode.text, name, box, barcode.bytes,
                                 barcode.symbology_identifier or None,
                                 barcode.content_type == zxingcpp.ContentType.GS1))
        return found


class PyzbarDecoder(BarcodeDecoder):
    """pyzbar over libzbar: ``pyzbar.decode`` with its symbols restricted.

    zbar reads no DataMatrix, Aztec or PDF417 (its PDF417 reader never finishes a
    symbol), reports no AIM identifier and loses the GS1 flag of a GS1-128.
    """

    name = "pyzbar"
    unsupported = PYZBAR_CANNOT_READ
    SYMBOLS: ClassVar[dict[str, str]] = {
        "ean13": "EAN13", "ean8": "EAN8", "upca": "UPCA", "upce": "UPCE",
        "code128": "CODE128", "code39": "CODE39", "code93": "CODE93",
        "codabar": "CODABAR", "itf": "I25", "databar": "DATABAR",
        "databar_expanded": "DATABAR_EXP", "qrcode": "QRCODE",
    }
    """Our names -> zbar symbol types."""

    def __init__(self, formats: Iterable[str]) -> None:
        super().__init__(formats)
        try:
            from pyzbar import pyzbar
        except (ImportError, OSError) as exc:
            raise ConfigError(f"decoder 'pyzbar' needs the zbar library (libzbar0): {exc}; "
                              'use decoder = "zxing"') from exc
        self._pyzbar = pyzbar
        wanted = {self.SYMBOLS[name] for name in self.formats}
        if wanted & {"EAN13", "UPCA", "UPCE"}:
            # zbar reads UPC-A/E in its EAN-13 reader and reports them as EAN-13 unless
            # their own types are on: all three on, the unwanted ones dropped after.
            wanted |= {"EAN13", "UPCA", "UPCE"}
        self._symbols = [pyzbar.ZBarSymbol[symbol] for symbol in sorted(wanted)]
        self._names = {symbol: name for name, symbol in self.SYMBOLS.items()}

    def _decode_gray(self, gray: npt.NDArray[np.uint8]) -> list[Decoded]:
        found = []
        for symbol in self._pyzbar.decode(gray, symbols=self._symbols):
            name = self._names.get(symbol.type)
            if name is None:
                continue
            raw = bytes(symbol.data)
            text = raw.decode("utf-8", errors="replace")
            if name == "upca" and len(text) == 12:
                text = "0" + text
            elif name == "upce" and len(text) == 8:
                text = "0" + upce_to_upca(text)
            found.append(Decoded(text, name, _box(symbol.polygon, symbol.rect), raw))
        return found


def _box(polygon: Sequence[Any], rect: Any) -> tuple[Point, Point, Point, Point]:
    """zbar's polygon (any number of points) as the bounding box's four corners."""
    if polygon:
        xs = [int(p.x) for p in polygon]
        ys = [int(p.y) for p in polygon]
        left, top, right, bottom = min(xs), min(ys), max(xs), max(ys)
    else:
        left, top = int(rect.left), int(rect.top)
        right, bottom = left + int(rect.width), top + int(rect.height)
    return (left, top), (right, top), (right, bottom), (left, bottom)


def upce_to_upca(upce: str) -> str:
    """The 12-digit UPC-A a UPC-E (number system, six digits, check digit) stands for."""
    system, d, check = upce[0], upce[1:7], upce[7]
    last = d[5]
    if last in "012":
        body = d[0:2] + last + "0000" + d[2:5]
    elif last == "3":
        body = d[0:3] + "00000" + d[3:5]
    elif last == "4":
        body = d[0:4] + "00000" + d[4]
    else:
        body = d[0:5] + "0000" + last
    return system + body + check


DECODERS: dict[str, type[BarcodeDecoder]] = {"zxing": ZxingDecoder, "pyzbar": PyzbarDecoder}


def make_decoder(name: str, formats: Iterable[str]) -> BarcodeDecoder:
    """The decoder called ``name`` (``zxing`` or ``pyzbar``) for ``formats``.

    Raises:
        ConfigError: an unknown decoder, an unknown format, or a format the decoder's
            library cannot read (the message names it).
    """
    try:
        decoder = DECODERS[name]
    except KeyError:
        raise ConfigError(f"unknown barcode decoder {name!r}; allowed: "
                          f"{', '.join(DECODERS)}") from None
    return decoder(formats)
