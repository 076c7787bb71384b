"""AIM symbology identifiers and GS1 data: what a barcode was and what its fields say.

A scanner set to send AIM identifiers (ISO/IEC 15424) prefixes every read with three
characters: ``]``, a code character naming the symbology (``C`` Code 128, ``d`` Data
Matrix...) and a modifier character (``1`` in ``]C1``: FNC1 in first position, so the
content is GS1 element strings). :func:`split_aim` strips the prefix and
:func:`symbology_name` says it in words.

GS1 element strings (``01`` GTIN, ``17`` expiry, ``10`` batch, ``21`` serial...) are
parsed with biip. Variable-length fields end with GS (``\\x1d``), which is how scanners
transmit the FNC1 separators inside a GS1-128, GS1 DataMatrix or GS1 QR symbol.
:func:`parse_gs1` never raises: what biip rejects comes back as error text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from biip import BiipException
from biip.gs1_digital_link_uris import GS1DigitalLinkURI
from biip.gs1_element_strings import GS1ElementString
from biip.gs1_messages import GS1Message
from biip.gtin import Gtin

GS = "\x1d"

# ISO/IEC 15424 code characters; a modifier-specific name below takes precedence.
_CODE_NAMES: dict[str, str] = {
    "A": "Code 39", "B": "Telepen", "C": "Code 128", "D": "Code One", "E": "EAN/UPC",
    "F": "Codabar", "G": "Code 93", "H": "Code 11", "I": "ITF", "J": "DotCode",
    "K": "Code 16K", "L": "PDF417", "M": "MSI", "N": "Anker", "O": "Codablock",
    "P": "Plessey", "Q": "QR Code", "R": "Straight 2 of 5 (2-bar start/stop)",
    "S": "Straight 2 of 5 (3-bar start/stop)", "T": "Code 49", "U": "MaxiCode",
    "X": "other symbology", "Y": "system expansion", "Z": "non-barcode input",
    "c": "Channel Code", "d": "Data Matrix", "e": "GS1 DataBar", "h": "Han Xin Code",
    "o": "OCR", "p": "PosiCode", "s": "SuperCode", "z": "Aztec Code",
}
_MODIFIER_NAMES: dict[str, str] = {
    "]C1": "GS1-128",
    "]C2": "Code 128 (AIM application, FNC1 in second position)",
    "]C4": "Code 128 (ISBT concatenation)",
    "]E0": "EAN-13 / UPC-A / UPC-E",
    "]E1": "EAN/UPC 2-digit add-on",
    "]E2": "EAN/UPC 5-digit add-on",
    "]E3": "EAN-13 / UPC with add-on",
    "]E4": "EAN-8",
    "]I1": "ITF (check digit verified), ITF-14",
    "]d0": "Data Matrix ECC 000-140",
    "]d1": "Data Matrix",
    "]d2": "GS1 DataMatrix",
    "]d3": "Data Matrix (AIM application, FNC1 in second position)",
    "]d4": "Data Matrix with ECI",
    "]d5": "GS1 DataMatrix with ECI",
    "]Q0": "QR Code model 1",
    "]Q1": "QR Code",
    "]Q2": "QR Code with ECI",
    "]Q3": "GS1 QR Code",
    "]Q4": "GS1 QR Code with ECI",
    "]Q5": "QR Code (AIM application, FNC1 in second position)",
    "]Q6": "QR Code (AIM application) with ECI",
    "]e0": "GS1 DataBar",
    "]e1": "GS1 Composite (separator character)",
    "]e2": "GS1 Composite (escape character)",
    "]J1": "GS1 DotCode",
    "]L2": "MicroPDF417",
}

GS1_SYMBOLOGIES = frozenset({"]C1", "]e0", "]e1", "]e2", "]d2", "]d5", "]Q3", "]Q4", "]J1"})
"""Identifiers whose content is GS1 element strings (FNC1 in first position)."""
GTIN_SYMBOLOGIES = frozenset({"]E0", "]E3", "]E4", "]I1"})
"""Identifiers whose content is (or starts with) a GTIN."""
_LINK_CODES = frozenset({"Q", "d"})
"""QR Code and Data Matrix may carry a GS1 Digital Link URI."""

_MODIFIER = re.compile(r"[0-9A-Za-z]")
_HRI = re.compile(r"\(\d{2,4}\)")
HELPERS = {"01": "gtin", "10": "batch", "21": "serial", "00": "sscc"}
"""Application Identifiers also reported under a name; ``17`` becomes ``expiry``."""


@dataclass(frozen=True, slots=True)
class Gs1Fields:
    """What :func:`parse_gs1` found: the fields (or ``None``) and an error (or ``None``)."""

    fields: dict[str, str] | None = None
    error: str | None = None


def split_aim(text: str) -> tuple[str | None, str]:
    """Split ``]C1...`` into the AIM identifier and the barcode data.

    Text that does not start with a well-formed identifier (``]``, a known code
    character, a modifier letter or digit) is returned whole with ``None``.
    ``]Y`` (system expansion) carries ``n + 1`` modifier characters after a digit ``n``.
    """
    if len(text) < 3 or text[0] != "]" or text[1] not in _CODE_NAMES:
        return None, text
    length = 3
    if text[1] == "Y":
        if not text[2].isascii() or not text[2].isdigit():  # "²" is a digit to Python
            return None, text
        length = 3 + int(text[2]) + 1
        if len(text) < length:
            return None, text
    identifier = text[:length]
    if not all(_MODIFIER.fullmatch(c) for c in identifier[2:]):
        return None, text
    return identifier, text[length:]


def symbology_name(identifier: str) -> str:
    """``]C1`` -> ``GS1-128``; an unknown modifier falls back to the code's name."""
    name = _MODIFIER_NAMES.get(identifier)
    if name is not None:
        return name
    return _CODE_NAMES.get(identifier[1:2], "unknown symbology")


def parse_gs1(data: str, identifier: str | None) -> Gs1Fields:
    """The GS1 fields of a barcode's data, by its AIM identifier or by its look.

    * A GS1 symbology (``]C1``, ``]e0``, ``]d2``, ``]Q3``...): element strings, and
      every problem is reported.
    * EAN/UPC and ITF-14 (``]E0``, ``]E3``, ``]E4``, ``]I1``): the GTIN, check digit
      verified.
    * A QR Code or Data Matrix (or no identifier) holding an ``http(s)://`` URI: a GS1
      Digital Link, when it parses as one (any other URL is just a URL).
    * No identifier: element strings when the data contains GS, is in the human-readable
      form ``(01)...(17)...``, or starts with ``01`` + a GTIN-14 or ``00`` + an SSCC whose
      check digit is right; a 12- or 13-digit number with a valid check digit is a GTIN.
    * Anything else: no fields, no error.
    """
    try:
        return _parse(data, identifier)
    except BiipException as exc:
        return Gs1Fields(error=str(exc))
    except (ValueError, LookupError, TypeError) as exc:
        # biip validates with regular expressions and slicing; a gap there must not
        # cost the scan, so its failure is reported like any other parse error.
        return Gs1Fields(error=f"the GS1 parser failed on {data!r}: {exc!r}")


def _parse(data: str, identifier: str | None) -> Gs1Fields:
    if identifier in GS1_SYMBOLOGIES:
        return _element_strings(GS1Message.parse(data).element_strings)
    if identifier in GTIN_SYMBOLOGIES:
        return _gtin(_gtin_part(data, identifier))
    if data.startswith(("http://", "https://")) and (
        identifier is None or identifier[1] in _LINK_CODES
    ):
        try:
            link = GS1DigitalLinkURI.parse(data)
        except BiipException:
            return Gs1Fields()
        return _element_strings(link.element_strings)
    if identifier is not None:
        return Gs1Fields()
    if _HRI.match(data):
        return _element_strings(GS1Message.parse_hri(data).element_strings)
    if GS in data or _starts_with_key(data):
        return _element_strings(GS1Message.parse(data).element_strings)
    if data.isascii() and data.isdigit() and len(data) in (12, 13):
        try:
            return _gtin(data)
        except BiipException:
            return Gs1Fields()
    return Gs1Fields()


def _starts_with_key(data: str) -> bool:
    """``01`` + a GTIN-14, or ``00`` + an SSCC, with a valid check digit."""
    for ai, length in (("01", 14), ("00", 18)):
        digits = data[2:2 + length]
        if data.startswith(ai) and len(digits) == length and digits.isascii() \
                and digits.isdigit() and _mod10_ok(digits):
            return True
    return False


def _mod10_ok(digits: str) -> bool:
    """GS1 mod-10: weights 3 and 1 from the right, the check digit included."""
    total = sum(int(d) * (3 if i % 2 else 1) for i, d in enumerate(reversed(digits)))
    return total % 10 == 0


def _gtin_part(data: str, identifier: str) -> str:
    """EAN/UPC with add-on (``]E3``) sends the 2 or 5 add-on digits after the GTIN."""
    if identifier == "]E3":
        for main, addon in ((13, 2), (13, 5), (12, 2), (12, 5)):
            if len(data) == main + addon:
                return data[:main]
    return data


def _gtin(value: str) -> Gs1Fields:
    gtin = Gtin.parse(value)
    return Gs1Fields(fields={"gtin": gtin.as_gtin_14()})


def _element_strings(elements: list[GS1ElementString]) -> Gs1Fields:
    fields: dict[str, str] = {}
    errors: list[str] = []
    for element in elements:
        ai = element.ai.ai
        fields[ai] = element.value
        if ai in HELPERS:
            fields[HELPERS[ai]] = element.value
        if ai == "17" and element.date is not None:
            fields["expiry"] = element.date.isoformat()
        errors += [e for e in (element.gtin_error, element.sscc_error, element.gln_error) if e]
    return Gs1Fields(fields=fields or None, error="; ".join(errors) or None)
