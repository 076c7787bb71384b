"""Fuzzing what printers answer and what print jobs hold: status replies, label counts,
print documents. Status replies arrive in any pieces and are read as the printer driver
reads them; documents are the central system's ``print.submit`` documents.
``BENCH_FUZZ_SCALE=N`` runs N times the examples (``docs/architecture.md``, "Fuzzing").
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.devices.printers import PrinterLanguage, PrinterStatus, epl, escpos, tspl, zpl
from agent.devices.settings import PrinterSettings
from agent.errors import FAULT_CODES, ProtocolError
from agent.jobs.documents import DOCUMENT_ERROR_CODES, FORMATS, DocumentError, Limits, render
from tests.test_fuzz_devices import fuzz, noisy, pieces, says_what

LANGUAGES: dict[str, Callable[[], PrinterLanguage]] = {
    "zpl": zpl.ZplLanguage, "tspl": tspl.TsplLanguage, "epl": epl.EplLanguage,
    "escpos": escpos.EscposLanguage}
_flag = st.sampled_from("01")


def _zpl_reply(one: list[str], two: list[str], errors: int, warnings: int, host: bool,
               extended: bool, extended_first: bool) -> bytes:
    lines = [",".join(one), ",".join(two), "1234,0"]
    hs = b"".join(b"\x02" + line.encode() + b"\x03\r\n" for line in lines) if host else b""
    hq = (b"\x02\r\nPRINTER STATUS\r\n   ERRORS:         %d 00000000 %08X\r\n"
          b"   WARNINGS:       %d 00000000 %08X\r\n\x03\r\n"
          % (bool(errors), errors, bool(warnings), warnings)) if extended else b""
    return hq + hs if extended_first else hs + hq


_REPLIES: dict[str, st.SearchStrategy[bytes]] = {
    "zpl": st.builds(
        _zpl_reply,
        st.tuples(st.integers(0, 511).map("{:03d}".format), _flag, _flag,
                  st.integers(0, 9999).map("{:04d}".format),
                  st.integers(0, 999).map("{:03d}".format), _flag, _flag, _flag,
                  st.just("000"), _flag, _flag, _flag).map(list),
        st.tuples(st.integers(0, 255).map("{:03d}".format), st.just("0"), _flag, _flag, _flag,
                  st.sampled_from("0123459"), st.sampled_from("0123"), _flag,
                  st.integers(0, 99_999_999).map("{:08d}".format), st.just("1"),
                  st.integers(0, 999).map("{:03d}".format)).map(list),
        st.integers(0, 0xFFFFFFFF), st.integers(0, 0xFFFFFFFF), st.booleans(), st.booleans(),
        st.booleans()),
    "tspl": st.integers(0, 255).map(lambda byte: bytes([byte])),
    "epl": st.builds(lambda codes, xon: xon + ",".join(codes).encode() + b"\r\n",
                     st.lists(st.sampled_from(["00", "01", "07", "07P003", "07R001", "11",
                                               "62", "81", "92", "99"]), min_size=1,
                              max_size=3),
                     st.sampled_from([b"", b"\x11", b"\x13\x15"])),
    "escpos": st.lists(st.integers(0, 255).map(lambda b: (b & ~0x93) | 0x12), min_size=4,
                       max_size=4).map(bytes),
}


def exchange(language: PrinterLanguage, reply: list[bytes]) -> PrinterStatus:
    """One status request as :class:`agent.devices.printer.Printer` runs it: the reply so
    far is checked after every piece, parsed when complete, else judged at the timeout."""
    language.status_request()
    received = b""
    for piece in [b"", *reply]:
        received += piece
        if language.reply_complete(received):
            return language.parse_status(received)
    return language.reply_timed_out(received, 100)


@pytest.mark.parametrize("name", sorted(LANGUAGES))
@fuzz(150)
@given(data=st.data())
def test_a_status_reply_in_any_pieces_gives_a_status_or_a_protocol_error(
        name: str, data: st.DataObject) -> None:
    """Valid replies, noisy ones, random bytes; never ready without a reply that parses."""
    reply = data.draw(st.one_of(_REPLIES[name], _REPLIES[name].map(lambda r: noisy(data, r)),
                                st.binary(max_size=80)), label="reply")
    language = LANGUAGES[name]()
    try:
        status = exchange(language, pieces(data, reply))
    except ProtocolError as exc:
        says_what(exc)
        return
    assert set(status.faults) <= set(FAULT_CODES)
    assert status.ready is not True or not status.blocking_faults
    if status.ready is None:
        assert status.faults == ("status_unknown",) and not reply.strip(b"\r\n\x11\x13\x15")
    json.dumps(status.as_dict(), allow_nan=False)


@pytest.mark.parametrize("name", sorted(LANGUAGES))
@fuzz(60)
@given(data=st.data())
def test_a_valid_status_reply_in_any_pieces_reads_as_in_one_piece(
        name: str, data: st.DataObject) -> None:
    """A valid reply, split anywhere, says what it says in one piece (or nothing at all)."""
    reply = data.draw(_REPLIES[name], label="reply")
    whole = LANGUAGES[name]().parse_status(reply) if reply.strip(b"\r\n") else None
    try:
        split = exchange(LANGUAGES[name](), pieces(data, reply))
    except ProtocolError as exc:
        assert whole is None, exc
        return
    if whole is not None and split.ready is not None:
        assert (split.ready, split.faults) == (whole.ready, whole.faults)


def _printer(language: str) -> PrinterSettings:
    return PrinterSettings(connection="tcp://127.0.0.1:9100", language=language)  # type: ignore[arg-type]


_COUNTED = {"zpl": b"^XA^FO1,1^FDx^FS^PQ%s^XZ", "tspl": b"SIZE 4,6\r\nPRINT %s\r\n",
            "epl": b"N\nA1,1,0,1,1,1,N,\"x\"\nP%s\n"}


@pytest.mark.parametrize("name", sorted(_COUNTED))
@fuzz(60)
@given(quantity=st.integers(0, 10**6).map(str) | st.builds(
    lambda zeros, digits: zeros + digits, st.text("0", max_size=3),
    st.integers(1, 6000).map(lambda n: "9" * n)), data=st.data())
def test_a_label_quantity_of_any_size_is_counted_or_refused_in_words(
        name: str, quantity: str, data: st.DataObject) -> None:
    """``^PQ``, ``PRINT``, ``P`` with any number: a count, or a document error saying so."""
    job = noisy(data, _COUNTED[name] % quantity.encode())
    settings = _printer(name)
    try:
        rendered = render({"format": name, "data": base64.b64encode(job).decode()}, settings)
    except DocumentError as exc:
        assert exc.code in DOCUMENT_ERROR_CODES and str(exc).startswith(
            ("ZPL document", "TSPL document", "EPL document")), exc
        return
    assert rendered.labels is not None and 0 <= rendered.labels < 2**63


_text = st.text(st.characters(exclude_categories=()), max_size=24)  # lone surrogates too


def _nested(inner: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.lists(inner, max_size=3) | st.dictionaries(_text, inner, max_size=3)


_json = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | _text, _nested,
                     max_leaves=8)
_base64ish = st.one_of(_text, st.binary(max_size=60).map(
    lambda raw: base64.b64encode(raw).decode()), st.sampled_from(
    ["", "====", "QUJD\n", "QU JD", "QUJD=", "Zm9v\u00e9", "X" * 9, "^XA^XZ"]))
_raw_jobs = st.sampled_from([b"^XA^FO1,1^FDx^FS^XZ", b"PRINT 1\r\n", b"P1\n", b"\x1b@x\n",
                             b"^XA^JUS^XZ", b"\x89PNG\r\n\x1a\n", b"%PDF-1.4\n"])
_slip_line = st.fixed_dictionaries({"sku": _text, "name": _text, "quantity": st.integers(-1, 3)},
                                   optional={"note": _text, "colour": _json})
_slip_fields = st.fixed_dictionaries(
    {"order_ids": st.lists(_text | _json, max_size=2), "lines": st.lists(_slip_line | _json,
                                                                         max_size=3)},
    optional={key: _text | _json for key in ("shop", "title", "waybill", "buyer", "created_at",
                                             "gift", "gift_message", "note", "footer",
                                             "barcode", "qr", "extra")})
_document = st.one_of(
    st.fixed_dictionaries({"format": st.sampled_from(FORMATS[:4]),
                           "data": _base64ish | _raw_jobs.map(lambda j: base64.b64encode(
                               j).decode()) | _json}),
    st.fixed_dictionaries({"format": st.sampled_from(["png", "pdf"]), "data": _base64ish},
                          optional={"threshold": _json, "dither": _json}),
    st.fixed_dictionaries({"format": st.just("slip"), "template": st.just("packing_slip")
                           | st.text(max_size=12), "fields": _slip_fields | _json}),
    st.dictionaries(st.text(max_size=10), _json, max_size=4),
    _json)


@fuzz(300)
@given(document=_document, language=st.sampled_from(["escpos", *sorted(LANGUAGES)]),
       copies=st.integers(1, 3) | _json)
def test_any_print_document_renders_or_is_refused_with_a_document_code(
        document: Any, language: str, copies: Any) -> None:
    """Raw jobs in any language, base64 garbage, pictures that are not, slips with fields
    of every type: :class:`DocumentError` with a documented code and a message."""
    settings = _printer(language)
    try:
        rendered = render(document, settings, copies=copies, limits=Limits(max_bytes=4096))
    except DocumentError as exc:
        assert exc.code in DOCUMENT_ERROR_CODES and len(str(exc)) > 10
        return
    assert rendered.data and len(rendered.data) <= 4096
