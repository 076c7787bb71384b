"""Scanner decoding without ports: AIM identifiers, GS1 fields, line framing, key events."""

from __future__ import annotations

import string
from typing import Any

import pytest
from evdev import InputEvent
from evdev import ecodes as e
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.bus import Bus
from agent.devices.readings import BadInput, Scan
from agent.devices.scanner import make_scanner, scan_from_text
from agent.devices.scanners import DISCARD_CODES, Discarded, RawScan
from agent.devices.scanners.keymap import LAYOUTS, KeyDecoder, compose, keystrokes
from agent.devices.scanners.serial_scanner import LineFramer
from agent.devices.scanners.symbology import parse_gs1, split_aim, symbology_name
from agent.devices.settings import ScannerSettings
from agent.errors import ProtocolError
from simulators.scanner import alt_code_events, key_events

GS = "\x1d"
PRINTABLE = string.digits + string.ascii_letters + string.punctuation + " "


# ---------------------------------------------------------------- AIM identifiers
@pytest.mark.parametrize(("text", "identifier", "data", "name"), [
    ("]C1010950600013435217201225", "]C1", "010950600013435217201225", "GS1-128"),
    ("]C0ABC-123", "]C0", "ABC-123", "Code 128"),
    ("]E04006381333931", "]E0", "4006381333931", "EAN-13 / UPC-A / UPC-E"),
    ("]E496385074", "]E4", "96385074", "EAN-8"),
    ("]d2010950600013435210ABC", "]d2", "010950600013435210ABC", "GS1 DataMatrix"),
    ("]d1hello", "]d1", "hello", "Data Matrix"),
    ("]Q3010950600013435221X", "]Q3", "010950600013435221X", "GS1 QR Code"),
    ("]Q1https://example.com", "]Q1", "https://example.com", "QR Code"),
    ("]e00109506000134352", "]e0", "0109506000134352", "GS1 DataBar"),
    ("]A0CODE39", "]A0", "CODE39", "Code 39"),
    ("]I110012345678902", "]I1", "10012345678902", "ITF (check digit verified), ITF-14"),
    ("]L0PDF", "]L0", "PDF", "PDF417"),
    ("]z0AZTEC", "]z0", "AZTEC", "Aztec Code"),
])
def test_aim_identifier_is_stripped_and_named(text: str, identifier: str, data: str,
                                              name: str) -> None:
    """A known AIM prefix is split from the data and said in words."""
    assert split_aim(text) == (identifier, data)
    assert symbology_name(identifier) == name


@pytest.mark.parametrize("text", ["]W0abc", "]C", "]C!abc", "ABC]C1", "", "]Y9ab"])
def test_text_without_a_well_formed_aim_identifier_is_kept_whole(text: str) -> None:
    """An unknown code character or a bad modifier is data, not an identifier."""
    assert split_aim(text) == (None, text)


@given(st.text(max_size=30))
def test_split_aim_never_raises_and_loses_nothing(text: str) -> None:
    identifier, data = split_aim(text)
    assert (identifier or "") + data == text


# ---------------------------------------------------------------- GS1
def test_gs1_128_fields_with_gs_separated_variable_length_ais() -> None:
    """GTIN, expiry, batch and serial, each variable-length AI ended by GS."""
    data = f"0109506000134352" f"17201225" f"10ABC123{GS}" f"21SN0042{GS}" "3103001250"
    fields = parse_gs1(data, "]C1")
    assert fields.error is None
    assert fields.fields == {
        "01": "09506000134352", "gtin": "09506000134352",
        "17": "201225", "expiry": "2020-12-25",
        "10": "ABC123", "batch": "ABC123",
        "21": "SN0042", "serial": "SN0042",
        "3103": "001250",
    }


def test_gs1_expiry_day_00_means_the_last_day_of_the_month() -> None:
    assert parse_gs1("0109506000134352" "17260200", "]C1").fields == {
        "01": "09506000134352", "gtin": "09506000134352", "17": "260200",
        "expiry": "2026-02-28"}


def test_gs1_sscc_of_a_shipping_label() -> None:
    assert parse_gs1("00376130321109103420", "]C1").fields == {
        "00": "376130321109103420", "sscc": "376130321109103420"}


def test_gs1_bad_gtin_check_digit_is_reported_with_the_fields() -> None:
    fields = parse_gs1("0109506000134353" "10LOT", "]d2")
    assert fields.fields is not None and fields.fields["10"] == "LOT"
    assert fields.error == "Invalid GTIN check digit for '09506000134353': Expected 2, got 3."


def test_gs1_symbology_with_data_that_is_not_gs1_reports_the_error() -> None:
    fields = parse_gs1("hello", "]C1")
    assert fields.fields is None
    assert fields.error == "Failed to get GS1 Application Identifier from 'hello'."


@pytest.mark.parametrize(("data", "identifier", "gtin"), [
    ("4006381333931", "]E0", "04006381333931"),
    ("96385074", "]E4", "00000096385074"),
    ("400638133393112", "]E3", "04006381333931"),
    ("10012345678902", "]I1", "10012345678902"),
    ("4006381333931", None, "04006381333931"),
    ("036000291452", None, "00036000291452"),
])
def test_ean_upc_and_itf14_give_the_gtin_as_14_digits(data: str, identifier: str | None,
                                                       gtin: str) -> None:
    assert parse_gs1(data, identifier).fields == {"gtin": gtin}


def test_ean13_with_a_wrong_check_digit_has_an_error_and_no_gtin() -> None:
    fields = parse_gs1("4006381333932", "]E0")
    assert fields.fields is None
    assert fields.error is not None and "check digit" in fields.error


@pytest.mark.parametrize("data", [
    f"0109506000134352{GS}10ABC",          # contains GS
    "(01)09506000134352(10)ABC",            # human-readable form
    "010950600013435210ABC",                # 01 + a GTIN-14 with a valid check digit
    "https://id.gs1.org/01/09506000134352/10/ABC",  # GS1 Digital Link
])
def test_gs1_without_an_aim_identifier_is_recognised_by_its_look(data: str) -> None:
    fields = parse_gs1(data, None)
    assert fields.error is None
    assert fields.fields is not None
    assert (fields.fields["gtin"], fields.fields["batch"]) == ("09506000134352", "ABC")


@pytest.mark.parametrize(("data", "identifier"), [
    ("ORDER-2026-000123", None), ("1234567", None), ("0109506000134353", None),
    ("https://example.com/track/123", None), ("https://example.com/x", "]Q1"),
    (f"01095060001343521{GS}0ABC", "]C0"), ("4006381333931", "]A0"),
])
def test_data_that_is_not_gs1_gets_no_fields_and_no_error(data: str,
                                                          identifier: str | None) -> None:
    assert parse_gs1(data, identifier).fields is None
    assert parse_gs1(data, identifier).error is None


@given(st.text(alphabet=string.digits + "()" + GS + "AB-/:.", max_size=60),
       st.sampled_from([None, "]C1", "]d2", "]Q3", "]e0", "]E0", "]E3", "]E4", "]I1", "]Q1"]))
def test_gs1_parsing_never_raises(data: str, identifier: str | None) -> None:
    """Whatever biip makes of it, the result is fields and/or an error text."""
    parse_gs1(data, identifier)


# ---------------------------------------------------------------- complete reads
def test_scan_from_text_strips_stx_etx_and_reads_aim_and_gs1() -> None:
    scan = scan_from_text("s1", f"\x02]C10109506000134352{GS}\x03", b"raw", aim_ids=True)
    assert (scan.data, scan.symbology, scan.symbology_name) == (
        f"0109506000134352{GS}", "]C1", "GS1-128")
    assert scan.gs1 == {"01": "09506000134352", "gtin": "09506000134352"}
    assert scan.raw == b"raw"


def test_scan_from_text_keeps_a_bracket_prefix_when_aim_ids_are_off() -> None:
    scan = scan_from_text("s1", "]C1ABC", b"", aim_ids=False)
    assert (scan.data, scan.symbology) == ("]C1ABC", None)


def test_scan_from_text_refuses_line_noise() -> None:
    with pytest.raises(ProtocolError, match=r"control byte 0x00 at position 2"):
        scan_from_text("s1", "ab\x00cd", b"", aim_ids=True)


@given(st.text(max_size=50))
def test_scan_from_text_gives_a_scan_or_a_protocol_error(text: str) -> None:
    try:
        scan = scan_from_text("s1", text, text.encode(), aim_ids=True)
    except ProtocolError:
        return
    assert isinstance(scan, Scan)


# ---------------------------------------------------------------- serial framing
@pytest.mark.parametrize(("framing", "stream", "lines"), [
    ("cr", b"A1\rB2\r", [b"A1", b"B2"]),
    ("lf", b"A1\nB2\n", [b"A1", b"B2"]),
    ("crlf", b"A1\r\nB\r2\r\n", [b"A1", b"B\r2"]),
    ("any", b"A1\rB2\nC3\r\nD4\n\r", [b"A1", b"B2", b"C3", b"D4"]),
    ("cr", b"A1\nB2\r", [b"A1\nB2"]),
])
def test_line_framing_cuts_lines_at_the_configured_ending(framing: str, stream: bytes,
                                                          lines: list[bytes]) -> None:
    for chunk_size in (1, 2, len(stream)):
        framer = LineFramer(framing)
        out = [o for i in range(0, len(stream), chunk_size)
               for o in framer.feed(stream[i:i + chunk_size])]
        assert [o.raw for o in out if isinstance(o, RawScan)] == lines
        assert not any(isinstance(o, Discarded) for o in out)
        assert not framer.pending


def test_line_framing_reports_an_over_long_line_once_and_resyncs() -> None:
    framer = LineFramer("crlf", max_length=8)
    out = framer.feed(b"0123456789ABCDEF\r")
    out += framer.feed(b"\nGHIJ\r\nOK\r\n")
    assert [(type(o).__name__, o.raw) for o in out] == [
        ("Discarded", b"01234567"), ("RawScan", b"GHIJ"), ("RawScan", b"OK")]
    assert isinstance(out[0], Discarded) and out[0].code == "too_long"


def test_line_framing_expires_a_partial_line() -> None:
    framer = LineFramer("cr", inter_char_timeout_s=0.1)
    assert framer.feed(b"40063") == []
    assert framer.pending
    [partial] = framer.expire()
    assert isinstance(partial, Discarded)
    assert (partial.code, partial.raw) == ("partial_scan", b"40063")
    assert partial.message == "partial read b'40063' discarded: no CR within 100 ms"
    assert framer.expire() == []


def test_serial_line_in_latin1_is_kept_byte_for_byte() -> None:
    [line] = LineFramer("cr").feed(b"Stra\xdfe\r")
    assert isinstance(line, RawScan) and line.text == "Straße"


@settings(max_examples=200)
@given(st.lists(st.binary(max_size=40), max_size=10), st.sampled_from(["cr", "lf", "crlf", "any"]))
def test_serial_driver_fed_garbage_publishes_only_scans_and_bad_input(
        chunks: list[bytes], framing: str) -> None:
    """Framer and scanner together never raise on random bytes; every line is reported."""
    bus = Bus()
    items = bus.subscribe(object)
    settings_ = ScannerSettings(connection="serial:///dev/ttyUSB9", framing=framing,
                                max_length=16)
    scanner = make_scanner("s1", settings_, bus)
    framer = LineFramer(framing, max_length=16)
    outcomes = [o for chunk in chunks for o in framer.feed(chunk)] + framer.expire()
    for outcome in outcomes:
        if isinstance(outcome, RawScan):
            scanner.report_scan(outcome)
        else:
            scanner.report_discarded(outcome)
    published = []
    while (item := items.get_nowait()) is not None:
        published.append(item)
    assert len(published) == len(outcomes)
    assert all(isinstance(i, Scan) or (isinstance(i, BadInput) and i.code in DISCARD_CODES)
               for i in published)


# ---------------------------------------------------------------- key events
def _ev(code: int, value: int, at_s: float) -> InputEvent:
    sec, usec = divmod(round(at_s * 1_000_000), 1_000_000)
    return InputEvent(sec, usec, e.EV_KEY, code, value)


def _press(*codes: int, at_s: float = 1.0) -> list[InputEvent]:
    """Modifiers and a key pressed together, then released (codes: modifiers first)."""
    return [*(_ev(c, 1, at_s) for c in codes), *(_ev(c, 0, at_s + 0.001) for c in codes)]


def _decode(layout: str, events: list[InputEvent], **options: Any) -> list[object]:
    return KeyDecoder(layout, **options).feed_all(events)


@pytest.mark.parametrize(("layout", "text"), [
    ("us", "Hello-World_1@#"), ("de", "Zyx@€µ~|{[]}\\"), ("fr", "Azerty123@#!&"),
])
def test_wedge_scan_decodes_on_the_scanners_layout(layout: str, text: str) -> None:
    [scan] = _decode(layout, key_events(text, layout, start_s=5.0))
    assert scan == RawScan(text, text.encode())


def test_german_scanner_swaps_y_and_z_and_needs_altgr_for_at() -> None:
    assert keystrokes("zy@", "de")[0].code == e.KEY_Y
    assert keystrokes("zy@", "de")[1].code == e.KEY_Z
    at = keystrokes("@", "de")[0]
    assert (at.code, at.altgr, at.shift) == (e.KEY_Q, True, False)


def test_french_scanner_needs_shift_for_digits() -> None:
    events = [*_press(e.KEY_1, at_s=1.0), *_press(e.KEY_LEFTSHIFT, e.KEY_1, at_s=1.01),
              *_press(e.KEY_ENTER, at_s=1.02)]
    assert _decode("fr", events) == [RawScan("&1", b"&1")]


def test_caps_lock_shifts_letters_only() -> None:
    events = [*_press(e.KEY_CAPSLOCK, at_s=1.0), *_press(e.KEY_A, at_s=1.01),
              *_press(e.KEY_1, at_s=1.02), *_press(e.KEY_LEFTSHIFT, e.KEY_B, at_s=1.03),
              *_press(e.KEY_LEFTBRACE, at_s=1.04), *_press(e.KEY_2, at_s=1.05),
              *_press(e.KEY_ENTER, at_s=1.06)]
    assert _decode("us", events) == [RawScan("A1b[2", b"A1b[2")]
    assert _decode("de", events) == [RawScan("A1bÜ2", "A1bÜ2".encode())]
    # fr: KEY_A is q; KEY_LEFTBRACE is the dead ^, which does not compose with é.
    assert _decode("fr", events) == [RawScan("Q&b^é", "Q&b^é".encode())]


def test_caps_lock_state_from_the_led_at_open() -> None:
    events = [*_press(e.KEY_A), *_press(e.KEY_ENTER, at_s=1.01)]
    assert _decode("us", events, caps_lock=True) == [RawScan("A", b"A")]


@pytest.mark.parametrize("layout", ["us", "de", "fr"])
def test_gs_is_ctrl_and_the_key_right_of_p_on_every_layout(layout: str) -> None:
    """Ctrl+] (us), Ctrl++ (de), Ctrl+$ (fr): the same physical key, KEY_RIGHTBRACE."""
    events = [*_press(e.KEY_1 if layout != "fr" else e.KEY_P, at_s=1.0),
              *_press(e.KEY_LEFTCTRL, e.KEY_RIGHTBRACE, at_s=1.01),
              *_press(e.KEY_ENTER, at_s=1.02)]
    [scan] = _decode(layout, events)
    assert isinstance(scan, RawScan) and scan.text[1:] == GS
    assert keystrokes(GS, layout)[0].code == e.KEY_RIGHTBRACE


def test_altgr_sent_as_left_ctrl_and_left_alt() -> None:
    events = [*_press(e.KEY_LEFTCTRL, e.KEY_LEFTALT, e.KEY_Q), *_press(e.KEY_ENTER, at_s=1.01)]
    assert _decode("de", events) == [RawScan("@", b"@")]


def test_alt_codes_on_the_keypad_type_any_character() -> None:
    text = f"AB{GS}1é"
    assert _decode("de", alt_code_events(text, start_s=1.0)) == [RawScan(text, text.encode())]


@pytest.mark.parametrize(("layout", "keys", "text"), [
    ("de", [(e.KEY_GRAVE,), (e.KEY_A,)], "â"),
    ("de", [(e.KEY_GRAVE,), (e.KEY_SPACE,)], "^"),
    ("de", [(e.KEY_LEFTSHIFT, e.KEY_EQUAL), (e.KEY_E,)], "è"),
    ("fr", [(e.KEY_RIGHTALT, e.KEY_2), (e.KEY_N,)], "ñ"),
    ("fr", [(e.KEY_LEFTBRACE,), (e.KEY_X,)], "^x"),
    ("fr", [(e.KEY_LEFTBRACE,), (e.KEY_ENTER,)], "^"),
])
def test_dead_keys_compose_like_windows(layout: str, keys: list[tuple[int, ...]],
                                        text: str) -> None:
    events = [ev for n, codes in enumerate(keys) for ev in _press(*codes, at_s=1 + n / 100)]
    if keys[-1] != (e.KEY_ENTER,):
        events += _press(e.KEY_ENTER, at_s=1 + len(keys) / 100)
    assert _decode(layout, events) == [RawScan(text, text.encode())]
    assert compose("^", "a") == "â"


@pytest.mark.parametrize(("terminator", "key", "scans"), [
    ("enter", e.KEY_TAB, []), ("tab", e.KEY_ENTER, []),
    ("enter", e.KEY_ENTER, ["12"]), ("tab", e.KEY_TAB, ["12"]),
    ("either", e.KEY_TAB, ["12"]), ("either", e.KEY_KPENTER, ["12"]),
])
def test_wedge_terminator_ends_a_read_and_the_other_key_is_data(
        terminator: str, key: int, scans: list[str]) -> None:
    events = [*_press(e.KEY_1, at_s=1.0), *_press(e.KEY_2, at_s=1.01), *_press(key, at_s=1.02)]
    decoder = KeyDecoder("us", terminator=terminator)
    assert [o.text for o in decoder.feed_all(events) if isinstance(o, RawScan)] == scans
    assert decoder.pending == (not scans)
    if not scans:
        [partial] = decoder.expire()
        assert isinstance(partial, Discarded) and partial.raw in (b"12\t", b"12\n")


def test_wedge_gap_between_key_timestamps_discards_the_partial_read() -> None:
    """A read cut short is dropped when the next key comes after the timeout."""
    events = key_events("400", terminator=None, start_s=10.0)
    events += key_events("4006381333931", start_s=10.5)
    out = _decode("us", events, inter_char_timeout_s=0.1)
    assert out == [
        Discarded("partial_scan", "partial read '400' discarded: no Enter or Tab within "
                  "100 ms", b"400"),
        RawScan("4006381333931", b"4006381333931"),
    ]


def test_wedge_expire_discards_a_partial_read_and_releases_held_keys() -> None:
    decoder = KeyDecoder("us")
    decoder.feed_all([_ev(e.KEY_LEFTSHIFT, 1, 1.0), *_press(e.KEY_A, at_s=1.0)])
    assert decoder.active
    [partial] = decoder.expire()
    assert isinstance(partial, Discarded) and partial.raw == b"A"
    assert not decoder.active
    assert decoder.feed_all([*_press(e.KEY_A, at_s=3), *_press(e.KEY_ENTER, at_s=3.01)]) == [
        RawScan("a", b"a")]


def test_wedge_unknown_key_discards_the_read_and_names_the_key() -> None:
    events = [*_press(e.KEY_1, at_s=1.0), *_press(e.KEY_F5, at_s=1.01),
              *_press(e.KEY_2, at_s=1.02), *_press(e.KEY_ENTER, at_s=1.03)]
    events += key_events("OK", start_s=2.0)
    assert _decode("fr", events) == [
        Discarded("unknown_key", "KEY_F5 types no character on the fr layout (is the scanner "
                  "set to this keyboard country?); read '&é' discarded", "&é".encode()),
        RawScan("OK", b"OK"),
    ]


def test_wedge_over_long_read_is_reported_once() -> None:
    events = key_events("123456789ABC", start_s=1.0) + key_events("OK", start_s=2.0)
    out = _decode("us", events, max_length=8)
    assert [(type(o).__name__, o.raw) for o in out] == [
        ("Discarded", b"12345678"), ("RawScan", b"OK")]


def test_wedge_ignores_autorepeat_and_non_key_events() -> None:
    events = [InputEvent(1, 0, e.EV_MSC, e.MSC_SCAN, 0x70004), _ev(e.KEY_A, 1, 1.0),
              _ev(e.KEY_A, 2, 1.0), _ev(e.KEY_A, 2, 1.0), _ev(e.KEY_A, 0, 1.0),
              InputEvent(1, 0, e.EV_SYN, e.SYN_REPORT, 0), *_press(e.KEY_ENTER, at_s=1.01)]
    assert _decode("us", events) == [RawScan("a", b"a")]


ROUND_TRIP_TEXT = st.text(alphabet=PRINTABLE + GS, min_size=1, max_size=40)


@settings(max_examples=150)
@given(ROUND_TRIP_TEXT, st.sampled_from(sorted(LAYOUTS)), st.sampled_from(["enter", "tab"]),
       st.booleans())
def test_every_printable_ascii_character_round_trips_through_key_events(
        text: str, layout: str, terminator: str, caps_lock: bool) -> None:
    """text -> the scanner's key events for a layout -> the decoder -> the same text."""
    events = key_events(text, layout, terminator, start_s=100.0, caps_lock=caps_lock)
    assert _decode(layout, events, terminator=terminator) == [RawScan(text, text.encode())]


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_each_printable_ascii_character_alone_round_trips(layout: str) -> None:
    for char in PRINTABLE + GS:
        events = key_events(char, layout, start_s=1.0)
        assert _decode(layout, events) == [RawScan(char, char.encode())], (layout, char)


_KEY_CODES = sorted({*LAYOUTS["fr"].keys, e.KEY_ENTER, e.KEY_TAB, e.KEY_LEFTSHIFT,
                     e.KEY_RIGHTALT, e.KEY_LEFTCTRL, e.KEY_LEFTALT, e.KEY_CAPSLOCK,
                     e.KEY_F1, e.KEY_ESC, e.KEY_BACKSPACE, 0, 700})


@settings(max_examples=200)
@given(st.lists(st.tuples(st.sampled_from([e.EV_KEY, e.EV_KEY, e.EV_SYN, e.EV_MSC]),
                          st.sampled_from(_KEY_CODES), st.integers(-1, 3),
                          st.integers(0, 400_000)), max_size=60),
       st.sampled_from(sorted(LAYOUTS)), st.sampled_from(["enter", "tab", "either"]))
def test_random_key_events_never_break_the_decoder(
        raw: list[tuple[int, int, int, int]], layout: str, terminator: str) -> None:
    decoder = KeyDecoder(layout, terminator=terminator, max_length=10)
    out = []
    for etype, code, value, usec in raw:
        out += decoder.feed(InputEvent(1, usec, etype, code, value))
    out += decoder.expire()
    for outcome in out:
        assert isinstance(outcome, RawScan | Discarded)
        if isinstance(outcome, Discarded):
            assert outcome.code in DISCARD_CODES
        else:
            assert outcome.text and len(outcome.text) <= 10


@pytest.mark.parametrize("text", ["\x02\x03", "]C1"])
def test_scan_from_text_refuses_a_read_with_no_data(text: str) -> None:
    with pytest.raises(ProtocolError, match="expected barcode text, got an empty read"):
        scan_from_text("s1", text, b"", aim_ids=True)
