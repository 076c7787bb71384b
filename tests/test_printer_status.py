"""Printer status parsers and job facts: exact reply bytes in, stable fault codes out."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.devices.printers import (
    FAULT_PRIORITY,
    PrinterLanguage,
    PrinterStatus,
    epl,
    escpos,
    make_status,
    tspl,
    zpl,
)
from agent.errors import FAULT_CODES, ProtocolError

HS_READY = (b"\x02030,0,0,1218,000,0,0,0,000,0,0,0\x03\r\n"
            b"\x02001,0,0,0,1,2,6,0,00000000,1,000\x03\r\n"
            b"\x021234,0\x03\r\n")


def hs(one: str = "030,0,0,1218,000,0,0,0,000,0,0,0",
       two: str = "001,0,0,0,1,2,6,0,00000000,1,000", three: str = "1234,0") -> bytes:
    return b"".join(b"\x02" + line.encode() + b"\x03\r\n" for line in (one, two, three))


def hqes(errors: int = 0, warnings: int = 0, group2: int = 0) -> bytes:
    return (b"\x02\r\nPRINTER STATUS\r\n"
            + f"   ERRORS:         {int(bool(errors or group2))} {group2:08X} {errors:08X}\r\n"
            .encode()
            + f"   WARNINGS:       {int(bool(warnings))} 00000000 {warnings:08X}\r\n".encode()
            + b"\x03\r\n")


# ---------------------------------------------------------------- ZPL ~HS / ~HQES
def test_zpl_host_status_decodes_every_field_of_the_three_lines() -> None:
    """~HS string 1, 2 and 3 fields land where the ZPL II guide puts them."""
    frames, rest = zpl.split_frames(hs("126,1,1,0812,003,1,1,1,000,1,1,0",
                                       "129,0,1,1,1,3,6,1,00000017,1,004", "5678,1"))
    assert rest == b""
    status = zpl.parse_host_status(frames)
    assert (status.baud, status.data_bits, status.stop_bits, status.parity,
            status.handshake) == (9600, 8, 1, "even", "xon/xoff")
    assert status.paper_out and status.paused and status.buffer_full
    assert status.label_length_dots == 812 and status.formats_in_buffer == 3
    assert status.diagnostic_mode and status.partial_format and status.corrupt_ram
    assert status.under_temperature and not status.over_temperature
    assert status.function_settings == 129 and status.continuous_media
    assert status.head_up and status.ribbon_out and status.thermal_transfer
    assert status.print_mode == "cutter" and status.print_width_mode == 6
    assert status.label_waiting and status.labels_remaining == 17
    assert status.format_while_printing and status.graphics_stored == 4
    assert status.password == "5678" and status.static_ram


def test_zpl_communication_settings_decode_baud_bit_8_and_dtr() -> None:
    """aaa: a8 extends the baud code (38400 = 1 001), a7 DTR, a5 off means no parity."""
    frames, _ = zpl.split_frames(hs(one=f"{0b110011001},0,0,1218,000,0,0,0,000,0,0,0"))
    status = zpl.parse_host_status(frames)
    assert (status.baud, status.data_bits, status.stop_bits, status.parity,
            status.handshake) == (38400, 8, 1, "none", "dtr")


def test_zpl_ready_printer_reports_ready_with_counts() -> None:
    """A clean ~HS is ready, not printing, with label and format counts."""
    status = zpl.parse_status(HS_READY)
    assert status.ready is True and status.faults == ()
    assert (status.labels_remaining, status.formats_in_buffer, status.printing) == (0, 0, False)
    assert status.raw == HS_READY


@pytest.mark.parametrize(("one", "two", "code"), [
    ("030,1,0,1218,000,0,0,0,000,0,0,0", "001,0,0,0,1,2,6,0,00000000,1,000", "paper_out"),
    ("030,0,1,1218,000,0,0,0,000,0,0,0", "001,0,0,0,1,2,6,0,00000000,1,000", "paused"),
    ("030,0,0,1218,000,0,0,0,000,0,0,0", "001,0,1,0,1,2,6,0,00000000,1,000", "head_open"),
    ("030,0,0,1218,000,0,0,0,000,0,0,0", "001,0,0,1,1,2,6,0,00000000,1,000", "ribbon_out"),
    ("030,0,0,1218,000,0,0,0,000,0,0,1", "001,0,0,0,1,2,6,0,00000000,1,000", "overheated"),
])
def test_zpl_host_status_flags_map_to_stable_fault_codes(one: str, two: str, code: str) -> None:
    """Each ~HS fault flag is its fault code, and the printer is not ready."""
    status = zpl.parse_status(hs(one, two))
    assert status.faults == (code,) and status.ready is False


def test_zpl_labels_remaining_means_printing() -> None:
    """Labels remaining in the batch or formats waiting: the printer is busy printing."""
    status = zpl.parse_status(hs(one="030,0,0,1218,002,0,0,0,000,0,0,0",
                                 two="001,0,0,0,1,2,6,0,00000005,1,000"))
    assert (status.labels_remaining, status.formats_in_buffer, status.printing) == (5, 2, True)
    assert status.ready is True


@pytest.mark.parametrize(("errors", "code"), [
    (0x1, "paper_out"), (0x2, "ribbon_out"), (0x4, "head_open"), (0x8, "cutter_error"),
    (0x10, "overheated"), (0x20, "overheated"), (0x40, "device_error"),
    (0x4000, "device_error"), (0x10000, "paused"), (0x100000, "device_error"),
])
def test_zpl_extended_status_error_bits_map_to_fault_codes(errors: int, code: str) -> None:
    """~HQES group-1 error bits: media out, ribbon out, head open, cutter, heat, pause."""
    status = zpl.parse_status(hqes(errors))
    assert status.faults == (code,) and status.ready is False
    assert status.labels_remaining is None


def test_zpl_extended_status_exact_reply_is_parsed() -> None:
    """The reply of a printer with head open and media out (bits 4 and 1)."""
    reply = (b"\x02\r\nPRINTER STATUS\r\n   ERRORS:         1 00000000 00000005\r\n"
             b"   WARNINGS:       0 00000000 00000000\r\n\x03\r\n")
    status = zpl.parse_status(reply)
    assert status.faults == ("head_open", "paper_out")
    assert status.fields["hqes_errors"] == 5


def test_zpl_paper_near_end_warning_keeps_the_printer_ready() -> None:
    """~HQES warning bit 8 is paper_near_end: reported, but printing goes on."""
    status = zpl.parse_status(HS_READY + hqes(warnings=0x8 | 0x2))
    assert status.faults == ("paper_near_end",) and status.ready is True
    assert status.blocking_faults == ()
    assert "clean the printhead" in status.notes


def test_zpl_group2_error_bits_are_a_device_error() -> None:
    """Error bits the guide does not name are still a fault, never ready."""
    status = zpl.parse_status(hqes(group2=0x1))
    assert status.faults == ("device_error",)


def test_zpl_host_and_extended_status_combine_in_either_order() -> None:
    """~HQES first or last, the faults of both replies are merged and ordered."""
    paused = hs(one="030,0,1,1218,000,0,0,0,000,0,0,0")
    for reply in (paused + hqes(0x4), hqes(0x4) + paused):
        status = zpl.parse_status(reply)
        assert status.faults == ("head_open", "paused")


@pytest.mark.parametrize("reply", [
    b"", b"\x02030,0,0\x03\r\n", HS_READY[:-10], b"GARBAGE" + HS_READY,
    HS_READY + HS_READY, hs(one="030,x,0,1218,000,0,0,0,000,0,0,0"),
    hs(two="001,0,0,0,1,22,6,0,00000000,1,000"), b"\x02\r\nPRINTER STATUS\r\n\x03\r\n",
    b"\x02" + b"1" * 300,
])
def test_zpl_malformed_replies_raise_protocol_error_saying_what_was_expected(
        reply: bytes) -> None:
    """Truncated, doubled, non-numeric or unframed replies are protocol errors."""
    with pytest.raises(ProtocolError, match="expected"):
        zpl.parse_status(reply)


def test_zpl_language_asks_hqes_until_the_printer_proves_it_has_none() -> None:
    """~HS answered but ~HQES not: the next requests are ~HS alone."""
    language = zpl.ZplLanguage()
    assert language.status_request() == b"~HS~HQES"
    assert not language.reply_complete(HS_READY)
    status = language.reply_timed_out(HS_READY, 500)
    assert status.ready is True and language.extended is False
    assert language.status_request() == b"~HS"
    assert language.reply_complete(HS_READY)


def test_zpl_language_uses_hqes_when_hs_stays_silent_in_a_fault() -> None:
    """Only ~HQES answered: its faults are the status; labels remaining unknown."""
    language = zpl.ZplLanguage()
    language.status_request()
    status = language.reply_timed_out(hqes(0x1), 500)
    assert status.faults == ("paper_out",) and status.labels_remaining is None
    assert language.extended is True


def test_zpl_language_with_no_reply_is_status_unknown_never_ready() -> None:
    """Silence is status_unknown with ready None."""
    language = zpl.ZplLanguage()
    language.status_request()
    status = language.reply_timed_out(b"", 500)
    assert status.ready is None and status.faults == ("status_unknown",)


def test_zpl_label_count_is_formats_with_fields_times_quantity() -> None:
    """^PQ multiplies a format; set-up formats print nothing."""
    job = (b"^XA^MMT^XZ"
           b"^XA^FO50,50^A0N,40,40^FDSF1234567890^FS^PQ3^XZ"
           b"^XA^FO0,0^GFA,8,8,1,FFFFFFFFFFFFFFFF^FS^XZ")
    assert zpl.labels_in(job) == 4


# ---------------------------------------------------------------- TSPL
@pytest.mark.parametrize(("byte", "faults", "ready"), [
    (0x00, (), True), (0x01, ("head_open",), False), (0x02, ("paper_jam",), False),
    (0x04, ("paper_out",), False), (0x08, ("ribbon_out",), False),
    (0x10, ("paused",), False), (0x20, (), True), (0x40, ("head_open",), False),
    (0x80, ("device_error",), False), (0x05, ("head_open", "paper_out"), False),
    (0x0C, ("paper_out", "ribbon_out"), False),
])
def test_tspl_status_byte_bits_map_to_fault_codes(
        byte: int, faults: tuple[str, ...], ready: bool) -> None:
    """<ESC>!? bits: head, jam, paper, ribbon, pause, printing, cover, other."""
    status = tspl.parse_status(bytes([byte]))
    assert status.faults == faults and status.ready is ready
    assert status.printing is bool(byte & 0x20)


def test_tspl_paper_jam_is_paper_jam() -> None:
    status = tspl.parse_status(b"\x02")
    assert status.faults == ("paper_jam",) and status.message == "paper jam"


@pytest.mark.parametrize("reply", [b"", b"\x00\x00"])
def test_tspl_status_is_exactly_one_byte(reply: bytes) -> None:
    with pytest.raises(ProtocolError, match="expected one status byte"):
        tspl.parse_status(reply)


def test_tspl_label_count_multiplies_sets_and_copies() -> None:
    job = b"SIZE 100 mm,150 mm\r\nCLS\r\nTEXT 10,10,\"3\",0,1,1,\"A\"\r\nPRINT 2,3\r\nPRINT 1\r\n"
    assert tspl.labels_in(job) == 7


# ---------------------------------------------------------------- EPL
@pytest.mark.parametrize(("reply", "faults", "ready"), [
    (b"00\r\n", (), True), (b"07\r\n", ("paper_out",), False),
    (b"11\r\n", ("head_open",), False), (b"07R012\r\n", ("ribbon_out",), False),
    (b"81\r\n", ("cutter_error",), False), (b"62\r\n", ("overheated",), False),
    (b"92\r\n", ("paused",), False), (b"01\r\n", (), True),
    (b"07,11\r\n", ("head_open", "paper_out"), False), (b"55\r\n", ("device_error",), False),
    (b"\x13" + b"07\r\n", ("paper_out",), False),
])
def test_epl_error_report_codes_map_to_fault_codes(
        reply: bytes, faults: tuple[str, ...], ready: bool) -> None:
    """^ee codes: 07 media, 11 head, 62 heat, 81 cutter, 92 pause; 01 is a job error."""
    status = epl.parse_status(reply)
    assert status.faults == faults and status.ready is ready


def test_epl_paper_out_with_labels_remaining() -> None:
    """ESim appends P and the labels remaining to a paper-out report."""
    status = epl.parse_status(b"07P003\r\n")
    assert status.labels_remaining == 3 and status.notes == ("out of paper",)


@pytest.mark.parametrize("reply", [b"\r\n", b"OK\r\n", b"7\r\n", b"00\r\n01\r\n", b"0x\r\n"])
def test_epl_malformed_report_raises_protocol_error(reply: bytes) -> None:
    with pytest.raises(ProtocolError, match="expected"):
        epl.parse_status(reply)


def test_epl_label_count_multiplies_sets_and_copies() -> None:
    job = b"\r\nN\r\nA50,0,0,1,1,1,N,\"Order 1234\"\r\nP2,2\r\nN\r\nP1\r\n"
    assert epl.labels_in(job) == 5


# ---------------------------------------------------------------- ESC/POS
@pytest.mark.parametrize(("reply", "faults", "ready"), [
    (b"\x12\x12\x12\x12", (), True),
    (b"\x1a\x16\x12\x12", ("head_open", "offline"), False),
    (b"\x12\x12\x12\x1e", ("paper_near_end",), True),
    (b"\x1a\x32\x12\x7e", ("paper_out", "offline", "paper_near_end"), False),
    (b"\x1a\x52\x1a\x12", ("cutter_error", "offline"), False),
    (b"\x1a\x52\x52\x12", ("overheated", "offline"), False),
    (b"\x1a\x52\x12\x12", ("device_error", "offline"), False),
    (b"\x1a\x12\x12\x12", ("offline",), False),
])
def test_escpos_dle_eot_bytes_map_to_fault_codes(
        reply: bytes, faults: tuple[str, ...], ready: bool) -> None:
    """DLE EOT 1 offline, 2 cover/paper end/error, 3 cutter/heat, 4 near end/end."""
    status = escpos.parse_status(reply)
    assert status.faults == faults and status.ready is ready


@pytest.mark.parametrize("reply", [b"\x12\x12\x12", b"\x00\x12\x12\x12",
                                   b"\x12\x12\x12\x13", b"\x12\x12\x12\x12\x12"])
def test_escpos_reply_without_the_fixed_bits_is_a_protocol_error(reply: bytes) -> None:
    """Bits 1 and 4 set, 0 and 7 clear, four bytes: anything else is not a status."""
    with pytest.raises(ProtocolError, match="expected"):
        escpos.parse_status(reply)


def test_escpos_job_collects_python_escpos_bytes_exactly() -> None:
    """text + cut through python-escpos: code page, text, feed 6 lines, full cut."""
    job = escpos.EscposJob()
    job.text("Order 1234\n")
    job.cut()
    assert job.output == b"\x1bt\x00Order 1234\n\x1bd\x06\x1dV\x00"
    job.clear()
    assert job.output == b""


def test_escpos_unknown_profile_names_the_known_ones() -> None:
    with pytest.raises(ValueError, match="TM-T88V"):
        escpos.check_profile("TM-NOPE")


# ---------------------------------------------------------------- the status type
def test_status_orders_faults_by_importance_and_is_json_safe() -> None:
    status = make_status(["paused", "paper_near_end", "head_open"], ["x"], b"\x02\xff")
    assert status.faults == ("head_open", "paused", "paper_near_end")
    assert status.as_dict()["raw"] == "\x02\xff" and status.as_dict()["faults"][0] == "head_open"


def test_every_status_fault_code_is_a_stable_code() -> None:
    assert set(FAULT_PRIORITY) <= set(FAULT_CODES)


# ---------------------------------------------------------------- properties
LANGUAGES: list[Callable[[], PrinterLanguage]] = [
    zpl.ZplLanguage, tspl.TsplLanguage, epl.EplLanguage, escpos.EscposLanguage]
PARSERS = [zpl.parse_status, tspl.parse_status, epl.parse_status, escpos.parse_status]


def _only_protocol_errors(call: object, *args: object) -> PrinterStatus | bool | None:
    try:
        result = call(*args)  # type: ignore[operator]
    except ProtocolError as exc:
        assert "expected" in str(exc)
        return None
    return result  # type: ignore[no-any-return]


@given(st.binary(max_size=300))
def test_random_bytes_never_raise_anything_but_protocol_error(data: bytes) -> None:
    """Every parser and framer: a status with stable codes, or ProtocolError."""
    for parse in PARSERS:
        status = _only_protocol_errors(parse, data)
        if isinstance(status, PrinterStatus):
            assert set(status.faults) <= set(FAULT_CODES)
            assert status.ready is (not status.blocking_faults)
    for make in LANGUAGES:
        language = make()
        language.status_request()
        _only_protocol_errors(language.reply_complete, data)
        status = _only_protocol_errors(language.reply_timed_out, data, 100)
        if isinstance(status, PrinterStatus):
            assert status.ready is not True or not status.blocking_faults


@given(st.binary(max_size=120), st.binary(max_size=120))
def test_zpl_random_frames_never_raise_anything_but_protocol_error(a: bytes, b: bytes) -> None:
    """Framed garbage (<STX>..<ETX>) is parsed or refused, never crashes."""
    _only_protocol_errors(zpl.parse_status, b"\x02" + a + b"\x03\r\n\x02" + b + b"\x03\r\n")


flag = st.sampled_from("01")


@given(flag, flag, st.integers(0, 9999), st.integers(0, 999), flag, flag, flag,
       st.integers(0, 99_999_999), flag, flag)
def test_zpl_any_well_formed_host_status_round_trips(
        paper: str, pause: str, length: int, formats: int, head: str, ribbon: str,
        over: str, remaining: int, under: str, full: str) -> None:
    """Whatever the printer's values, ~HS fields come back as sent."""
    reply = hs(f"030,{paper},{pause},{length:04d},{formats:03d},{full},0,0,000,0,{under},{over}",
               f"001,0,{head},{ribbon},1,2,6,0,{remaining:08d},1,000")
    status = zpl.parse_status(reply)
    assert status.labels_remaining == remaining and status.formats_in_buffer == formats
    assert status.fields["label_length_dots"] == length
    assert ("paper_out" in status.faults) is (paper == "1")
    assert ("head_open" in status.faults) is (head == "1")
    assert ("ribbon_out" in status.faults) is (ribbon == "1")
    assert ("paused" in status.faults) is (pause == "1")
    assert status.ready is (paper + pause + head + ribbon + over == "00000")


@given(st.integers(0, 0xFFFFFFFF), st.integers(0, 0xFFFFFFFF))
def test_zpl_any_extended_status_mask_parses_to_stable_codes(errors: int, warnings: int) -> None:
    status = zpl.parse_status(hqes(errors, warnings))
    assert status.ready is (errors == 0)
    assert set(status.faults) <= set(FAULT_CODES)


@given(st.integers(0, 255))
def test_tspl_every_status_byte_parses(byte: int) -> None:
    status = tspl.parse_status(bytes([byte]))
    assert status.ready is (byte & 0xDF == 0)


@given(st.lists(st.integers(0, 255).map(lambda b: (b & ~0x93) | 0x12), min_size=4, max_size=4))
def test_escpos_every_well_formed_reply_parses(values: list[int]) -> None:
    status = escpos.parse_status(bytes(values))
    printer, cause, error, paper = values
    assert status.ready is (not (printer & 0x08 or cause & 0x64 or error & 0x6C
                                 or paper & 0x60))
