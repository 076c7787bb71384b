"""Fuzzing the parsers of device input: scale frames, scanner reads and keys, GS1 data.

Whatever a device sends, split wherever the reads cut it, each parser gives its result or
the package's own error whose message says what was expected and what came; buffers stay
bounded. ``docs/architecture.md`` ("Fuzzing") says what is guaranteed;
``BENCH_FUZZ_SCALE=N`` runs N times the examples (also in test_fuzz_printers.py and
test_fuzz_commands.py, which use :func:`fuzz`). The hypothesis tests next to each parser
(test_scale_parsers.py, test_scanner_decoding.py) cover random input in one piece; these
add valid frames with line noise, arbitrary splits, very long input, and the structure
of AIM prefixes, key events and GS1 element strings.
"""

from __future__ import annotations

import itertools
import os
import pickle
import string
from typing import Any

import pytest
from evdev import InputEvent
from evdev import ecodes as e
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.devices.readings import WeightCondition
from agent.devices.scale import PROTOCOLS
from agent.devices.scales import GRAMS_PER_UNIT, ScaleProtocol
from agent.devices.scanner import scan_from_text
from agent.devices.scanners import DISCARD_CODES, Discarded, RawScan, ReadOutcome
from agent.devices.scanners.keymap import LAYOUTS, KeyDecoder
from agent.devices.scanners.serial_scanner import LineFramer
from agent.devices.scanners.symbology import GS1_SYMBOLOGIES, GTIN_SYMBOLOGIES, parse_gs1
from agent.errors import DeviceError, ProtocolError
from simulators.scale import hid_report

FUZZ_SCALE = max(1, int(os.environ.get("BENCH_FUZZ_SCALE", "1")))
"""Multiplies every fuzz test's examples (a long run: ``BENCH_FUZZ_SCALE=50``)."""
GS = "\x1d"


def fuzz(examples: int) -> settings:
    """One fuzz test's settings: ``examples`` times :data:`FUZZ_SCALE`, no deadline."""
    return settings(max_examples=examples * FUZZ_SCALE, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def pieces(data: st.DataObject, stream: bytes) -> list[bytes]:
    """``stream`` cut where hypothesis says, as reads from a port deliver it."""
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=8), label="cuts"))
    return [stream[a:b] for a, b in itertools.pairwise([0, *cuts, len(stream)])]


def noisy(data: st.DataObject, stream: bytes) -> bytes:
    """Line noise on a stream: bytes inserted, dropped or flipped, the end cut off."""
    out = bytearray(stream)
    for _ in range(data.draw(st.integers(0, 4), label="noise")):
        kind = data.draw(st.sampled_from(["insert", "drop", "flip", "truncate"]))
        at = data.draw(st.integers(0, len(out)))
        if kind == "insert":
            out[at:at] = data.draw(st.binary(min_size=1, max_size=6))
        elif kind == "drop":
            del out[at:at + data.draw(st.integers(1, 4))]
        elif kind == "flip" and at < len(out):
            out[at] ^= 1 << data.draw(st.integers(0, 7))
        elif kind == "truncate":
            del out[at:]
    return bytes(out)


def says_what(error: Exception) -> str:
    """The error's message, checked to say what was expected and what came."""
    message = str(error)
    assert "expected" in message and "got" in message, message
    return message


def kept_after(parser: Any, feed: Any, chunk: bytes, times: int) -> int:
    """The size of ``parser``'s state after ``feed(chunk)`` ``times`` (outputs dropped)."""
    for _ in range(times):
        feed(chunk)
    return len(pickle.dumps(parser))


# ---------------------------------------------------------------- scale frames
_UNITS = sorted(GRAMS_PER_UNIT)
_number = st.builds(lambda sign, units, places: f"{sign}{units / 10 ** places:.{places}f}",
                    st.sampled_from(["", "-", "+", "- "]), st.integers(0, 10**7),
                    st.integers(0, 4))
_plain = _number.filter(lambda n: n[0].isdigit())


def _no_plus(number: str) -> str:
    return number.replace("+", "")  # SCP-01 signs only a negative weight


def _scp_status(bits: list[int]) -> bytes:
    return bytes(0x30 | b & 0x0F | (0x40 if 0 < i < len(bits) - 1 else 0) | (b & 0x80)
                 for i, b in enumerate(bits))


_FRAMES: dict[str, st.SearchStrategy[bytes]] = {
    "mt-sics": st.one_of(
        st.builds("{} {:>10} {}\r\n".format, st.sampled_from(["S S", "S D", "T S"]), _number,
                  st.sampled_from(_UNITS)),
        st.sampled_from(["S I", "S +", "S -", "Z A", "Z I", "Z +", "Z -", "T I", "T +",
                         "TAC A", "TAC I", "ES", "ET", "EL", 'I4 A "B12"']).map("{}\r\n".format),
    ).map(str.encode),
    "toledo-8217": st.one_of(
        st.builds(lambda value, unit: b"\x02" + value.encode() + unit + b"\r", _plain,
                  st.sampled_from([b"", b"kg", b"lb", b"oz", b"g", b" KG"])),
        st.integers(0, 0x9F).map(lambda s: b"\x02?" + bytes([s | 0x60]) + b"\r")),
    "scp-01": st.builds(
        lambda line, status, s: b"\n" + line + s + _scp_status(status) + b"\r\x03",
        st.one_of(st.just(b""), st.builds("{:>8}{}\r\n".format, _number.map(_no_plus),
                                          st.sampled_from(["kg", "lb", "oz", "g", "KG"])
                                          ).map(str.encode),
                  st.builds(" {}lb {}oz\r\n".format, st.integers(0, 99), _plain).map(str.encode),
                  st.sampled_from([b"^^^^^^^kg\r\n", b"_______\r\n", b"------\r\n"])),
        st.lists(st.integers(0, 255), min_size=2, max_size=3),
        st.sampled_from([b"", b"S"])) | st.just(b"\n?\r\x03"),
    "continuous": st.builds(
        "{},{}{}{}\r\n".format, st.sampled_from(["ST", "US", "OL", "st"]),
        st.sampled_from(["", "GS,", "NT,", "GW,", "NW,"]), _number,
        st.sampled_from(["kg", "g", "lb", "oz", "t", " kg"])).map(str.encode),
    "hid-pos": st.builds(hid_report, st.integers(1, 8), st.sampled_from([1, 2, 3, 4, 6, 7, 8, 9,
                                                                          10, 11, 12]),
                         st.integers(-128, 127), st.integers(0, 65535))
    .map(lambda report: report + b"\x00\x00"),
}


def _scale_exchange(protocol: ScaleProtocol[Any], chunk: bytes) -> bool:
    """One framed chunk as the driver takes it: parse, weight, every command's outcome."""
    try:
        reply = protocol.parse(chunk)
        frame = protocol.weight(reply)
    except ProtocolError as exc:
        says_what(exc)
        return False
    if frame is not None:
        assert frame.grams is None or (frame.grams >= 0 and frame.grams != float("inf"))
        assert frame.grams is None or frame.condition is WeightCondition.WEIGHT
    for action in protocol.requests:
        try:
            protocol.outcome(action, reply)
        except DeviceError as exc:
            assert exc.code in ("command_failed", "unsupported") and str(exc)
    return True


@pytest.mark.parametrize("name", sorted(PROTOCOLS))
@fuzz(120)
@given(data=st.data())
def test_scale_frames_with_noise_in_any_pieces_parse_alike_or_say_what_is_wrong(
        name: str, data: st.DataObject) -> None:
    """Valid frames, line noise, any split: the same frames parse as from one read."""
    frames = data.draw(st.lists(_FRAMES[name], min_size=1, max_size=6), label="frames")
    stream = noisy(data, b"".join(frames))
    protocol = PROTOCOLS[name]()
    framer = protocol.framer()
    chunks = [chunk for piece in pieces(data, stream) for chunk in framer.feed(piece)]
    good = [chunk for chunk in chunks if _scale_exchange(protocol, chunk)]
    whole = [c for c in PROTOCOLS[name]().framer().feed(stream) if _scale_exchange(protocol, c)]
    assert good == whole


@pytest.mark.parametrize("name", sorted(PROTOCOLS))
@fuzz(60)
@given(data=st.data())
def test_scale_frames_split_anywhere_are_all_found(name: str, data: st.DataObject) -> None:
    """Without noise, every frame comes out of the framer whole and parses."""
    frames = data.draw(st.lists(_FRAMES[name], min_size=1, max_size=6), label="frames")
    protocol = PROTOCOLS[name]()
    framer = protocol.framer()
    chunks = [chunk for piece in pieces(data, b"".join(frames)) for chunk in framer.feed(piece)]
    assert [protocol.parse(chunk) for chunk in chunks]
    assert [c.rstrip(b"\r\n\x00") for c in chunks] == [f.rstrip(b"\r\n\x00") for f in frames]


_NO_END = {"mt-sics": b"S S 12.0 g ", "toledo-8217": b"\x02 1.250 kg", "continuous": b"ST,GS,+",
           "scp-01": b"\n  1.250kg\r\n", "hid-pos": bytes(range(4, 250))}


@pytest.mark.parametrize("name", sorted(PROTOCOLS))
def test_a_megabyte_without_a_frame_end_is_not_kept(name: str) -> None:
    """1 MB of bytes that never end a frame: the framer keeps at most a frame's worth."""
    framer = PROTOCOLS[name]().framer()
    chunk = (_NO_END[name] * (4096 // len(_NO_END[name]) + 1))[:4096]
    assert kept_after(framer, framer.feed, chunk, 256) < 8 * 1024


# ---------------------------------------------------------------- scanner input
_AIM = st.builds("]{}{}".format,
                 st.just("Y") | st.sampled_from("ACEFGIJLQUXZdehz") | st.characters(),
                 st.text(st.characters(categories=("Nd", "No")) | st.characters(), max_size=4))
_barcode = st.builds(lambda aim, text: aim + text, st.just("") | _AIM,
                     st.text(max_size=30) | st.text(string.digits + GS, max_size=40))
_SUFFIX = {"cr": b"\r", "lf": b"\n", "crlf": b"\r\n", "any": b"\r\n"}


def _check_outcome(outcome: ReadOutcome, max_length: int) -> None:
    if isinstance(outcome, Discarded):
        assert outcome.code in DISCARD_CODES and outcome.message
        assert len(outcome.raw) <= max_length + 1  # a partial line may end in a CRLF's CR
        return
    assert outcome.text and len(outcome.raw) <= max_length
    try:
        scan = scan_from_text("s1", outcome.text, outcome.raw, aim_ids=True)
    except ProtocolError as exc:
        says_what(exc)
        return
    assert scan.data and (scan.symbology or "") + scan.data in outcome.text
    assert scan.gs1 is None or all(isinstance(v, str) for v in scan.gs1.values())


@fuzz(150)
@given(framing=st.sampled_from(sorted(_SUFFIX)), data=st.data())
def test_serial_scanner_reads_in_any_pieces_are_the_same_reads(framing: str,
                                                               data: st.DataObject) -> None:
    """Barcodes, noise, over-long lines: split anywhere, the framer gives the same outcomes;
    each read is a Scan or a ProtocolError; a line left without its suffix is dropped as
    ``partial_scan`` when the inter-character timeout expires."""
    reads = data.draw(st.lists(_barcode.map(lambda t: t.encode("utf-8", "replace")),
                               max_size=5), label="reads")
    stream = noisy(data, b"".join(read + _SUFFIX[framing] for read in reads))
    whole = LineFramer(framing, max_length=32).feed(stream)
    framer = LineFramer(framing, max_length=32)
    split = [outcome for piece in pieces(data, stream) for outcome in framer.feed(piece)]
    assert split == whole
    for outcome in [*split, *framer.expire()]:
        _check_outcome(outcome, 32)
        if isinstance(outcome, Discarded) and outcome.code == "partial_scan":
            assert "no " in outcome.message and " within 100 ms" in outcome.message


@fuzz(300)
@given(text=_barcode, stx=st.booleans(), aim_ids=st.booleans())
def test_any_scanner_text_is_a_scan_or_a_protocol_error(text: str, stx: bool,
                                                        aim_ids: bool) -> None:
    """AIM prefixes of any shape (``]Y`` with any digit), GS1 or not: never anything else."""
    text = f"\x02{text}\x03" if stx else text
    try:
        scan = scan_from_text("s1", text, text.encode("utf-8", "replace"), aim_ids=aim_ids)
    except ProtocolError as exc:
        says_what(exc)
        return
    assert (scan.symbology or "") + scan.data in text
    assert scan.gs1_error is None or scan.gs1_error.strip()


def test_a_line_of_the_longest_length_whose_crlf_is_split_is_a_scan() -> None:
    framer = LineFramer("crlf", max_length=8)
    assert framer.feed(b"ABCDEFGH\r") == []
    assert framer.feed(b"\n") == [RawScan("ABCDEFGH", b"ABCDEFGH")]


def test_a_megabyte_of_serial_input_without_a_suffix_is_one_too_long_read() -> None:
    framer = LineFramer("cr", max_length=4096)
    out: list[ReadOutcome] = []
    assert kept_after(framer, lambda chunk: out.extend(framer.feed(chunk)), b"x" * 4096,
                      256) < 8 * 1024
    assert [o.code for o in out if isinstance(o, Discarded)] == ["too_long"]
    assert framer.feed(b"tail\rOK\r") == [RawScan("OK", b"OK")]


_KEYS = sorted({*LAYOUTS["fr"].keys, *range(0, 0x300, 7), e.KEY_ENTER, e.KEY_KPENTER, e.KEY_TAB,
                e.KEY_LEFTSHIFT, e.KEY_RIGHTSHIFT, e.KEY_LEFTCTRL, e.KEY_LEFTALT, e.KEY_RIGHTALT,
                e.KEY_CAPSLOCK, e.KEY_ESC, e.KEY_NUMLOCK, e.KEY_KP0, e.KEY_KP9})
_event = st.tuples(st.sampled_from([e.EV_KEY] * 6 + [e.EV_SYN, e.EV_MSC, e.EV_LED, 0x1F]),
                   st.sampled_from(_KEYS) | st.integers(0, 0xFFFF), st.integers(-2, 3),
                   st.integers(0, 300_000))


@fuzz(150)
@given(events=st.lists(_event, max_size=80), layout=st.sampled_from(sorted(LAYOUTS)),
       terminator=st.sampled_from(["enter", "tab", "either"]), gaps=st.booleans())
def test_any_key_events_give_reads_or_discarded_input(
        events: list[tuple[int, int, int, int]], layout: str, terminator: str,
        gaps: bool) -> None:
    """Every event type, code, value, timestamp (gaps past the timeout or not)."""
    decoder = KeyDecoder(layout, terminator=terminator, max_length=16)
    out: list[ReadOutcome] = []
    for n, (etype, code, value, usec) in enumerate(events):
        sec, usec = (n, usec) if gaps else (1, usec // 100 + n)
        out += decoder.feed(InputEvent(sec, usec, etype, code, value))
    out += decoder.expire()
    assert not decoder.pending
    for outcome in out:
        assert isinstance(outcome, RawScan | Discarded)
        if isinstance(outcome, Discarded):
            assert outcome.code in DISCARD_CODES and outcome.message
        else:
            assert 0 < len(outcome.text) <= 16


def _keys(*presses: tuple[int, int]) -> list[InputEvent]:
    return [InputEvent(1, n, e.EV_KEY, code, value) for n, (code, value) in enumerate(presses)]


@fuzz(20)
@given(digits=st.builds(lambda head, sevens, tail: head + "7" * sevens + tail,
                        st.text("0123456789", min_size=1, max_size=6), st.integers(0, 12_000),
                        st.text("0123456789", max_size=6)))
def test_an_alt_code_of_any_length_types_one_character(digits: str) -> None:
    """Alt + keypad digits, however many: the code modulo 256 (Windows), one character."""
    decoder = KeyDecoder("us", terminator="enter", max_length=16)
    keypad = [getattr(e, f"KEY_KP{d}") for d in digits]
    out = decoder.feed_all(_keys((e.KEY_LEFTALT, 1), *((k, 1) for k in keypad),
                                 (e.KEY_LEFTALT, 0), (e.KEY_ENTER, 1)))
    code = 0
    for digit in digits:
        code = (code * 10 + int(digit)) % 256
    page = "cp1252" if digits.startswith("0") else "cp437"
    try:
        char = bytes([code]).decode(page)
    except UnicodeDecodeError:
        char = bytes([code]).decode("latin-1")
    assert out == ([] if char in "\r\n" else [RawScan(char, char.encode())])  # CR, LF end it


def test_a_long_wedge_read_without_a_terminator_is_one_too_long_read() -> None:
    decoder = KeyDecoder("us", max_length=4096)
    presses = _keys(*[(e.KEY_A, value) for _ in range(2048) for value in (1, 0)])
    out: list[ReadOutcome] = []
    assert kept_after(decoder, lambda batch: out.extend(decoder.feed_all(batch)), presses,
                      20) < 32 * 1024
    assert [o.code for o in out if isinstance(o, Discarded)] == ["too_long"]


# ---------------------------------------------------------------- GS1 element strings
def _check_digit(payload: str) -> str:
    total = sum(int(d) * (3 if i % 2 == 0 else 1) for i, d in enumerate(reversed(payload)))
    return str(-total % 10)


_digits = st.sampled_from(string.digits)
_date = st.builds("{:02d}{:02d}{:02d}".format, st.integers(0, 99), st.integers(1, 12),
                  st.integers(0, 28))
_cset = string.ascii_letters + string.digits + "-./_"
_ELEMENTS: dict[str, tuple[st.SearchStrategy[str], bool]] = {
    # AI: (valid values, variable length: ends with GS unless last)
    "00": (st.text("0123456789", min_size=17, max_size=17).map(lambda p: p + _check_digit(p)),
           False),
    "01": (st.text("0123456789", min_size=13, max_size=13).map(lambda p: p + _check_digit(p)),
           False),
    "17": (_date, False),
    "11": (_date, False),
    "3103": (st.text("0123456789", min_size=6, max_size=6), False),
    "10": (st.text(_cset, min_size=1, max_size=20), True),
    "21": (st.text(_cset, min_size=1, max_size=20), True),
    "37": (st.text("0123456789", min_size=1, max_size=8), True),
    "400": (st.text(_cset, min_size=1, max_size=30), True),
}
_HELPERS = {"01": "gtin", "10": "batch", "21": "serial", "00": "sscc"}


@st.composite
def _element_string(draw: st.DrawFn, *, broken: bool) -> tuple[str, dict[str, str], str]:
    """A GS1 element string, the fields it holds, and what was broken in it (or "")."""
    ais = draw(st.lists(st.sampled_from(sorted(_ELEMENTS)), min_size=1, max_size=5,
                        unique=True))
    fields: dict[str, str] = {}
    text, flaw = "", ""
    for n, ai in enumerate(ais):
        values, variable = _ELEMENTS[ai]
        value = draw(values)
        if broken and not flaw and draw(st.booleans()):
            flaw = draw(st.sampled_from(["check digit", "length", "letter", "unknown AI"]
                                        if ai in ("00", "01") else ["length", "unknown AI"]))
            if flaw == "check digit":
                value = value[:-1] + str((int(value[-1]) + draw(st.integers(1, 9))) % 10)
            elif flaw == "length":
                value = value[:-1] if draw(st.booleans()) else value + draw(_digits)
            elif flaw == "letter":
                value = value[:5] + "X" + value[6:]
            else:
                ai = draw(st.sampled_from(["23", "99x", "4", "", "7039"]))
        fields[ai] = value
        text += ai + value + (GS if variable and n < len(ais) - 1 else "")
    return text, fields, flaw


@fuzz(200)
@given(data=st.text(max_size=60) | st.text(string.digits + GS + "()", max_size=60),
       identifier=st.sampled_from([*sorted(GS1_SYMBOLOGIES | GTIN_SYMBOLOGIES), None, "]Q1",
                                   "]d1", "]C0", "]Y0ab"]))
def test_any_barcode_data_gives_gs1_fields_or_an_error_never_an_exception(
        data: str, identifier: str | None) -> None:
    gs1 = parse_gs1(data, identifier)
    assert gs1.fields is None or (gs1.fields and all(
        isinstance(k, str) and isinstance(v, str) for k, v in gs1.fields.items()))
    assert gs1.error is None or gs1.error.strip()


@fuzz(200)
@given(element=_element_string(broken=False),
       identifier=st.sampled_from(["]C1", "]d2", "]Q3", None]))
def test_a_valid_element_string_parses_back_to_its_fields(
        element: tuple[str, dict[str, str], str], identifier: str | None) -> None:
    """GS-separated (and without an AIM id when it starts with GS or a checked key)."""
    text, fields, _ = element
    gs1 = parse_gs1(text, identifier)
    if identifier is None and GS not in text and not text.startswith(("01", "00")):
        assert gs1.error is None  # not recognisable as GS1: plain data, no complaint
        return
    assert gs1.error is None and gs1.fields is not None
    expected = {**fields, **{_HELPERS[ai]: v for ai, v in fields.items() if ai in _HELPERS}}
    assert {k: v for k, v in gs1.fields.items() if k != "expiry"} == expected
    assert ("expiry" in gs1.fields) is ("17" in fields)


@fuzz(100)
@given(element=_element_string(broken=False))
def test_a_valid_human_readable_element_string_parses_back_to_its_fields(
        element: tuple[str, dict[str, str], str]) -> None:
    _, fields, _ = element
    gs1 = parse_gs1("".join(f"({ai}){value}" for ai, value in fields.items()), None)
    assert gs1.error is None and gs1.fields is not None
    assert {ai: gs1.fields[ai] for ai in fields} == fields


@fuzz(200)
@given(element=_element_string(broken=True), identifier=st.sampled_from(["]C1", "]e0", None]))
def test_a_broken_element_string_gives_an_error_naming_the_problem(
        element: tuple[str, dict[str, str], str], identifier: str | None) -> None:
    """Bad AIs, wrong lengths, letters in digits, wrong check digits: an error, no crash."""
    text, _, flaw = element
    gs1 = parse_gs1(text, identifier)
    assert gs1.fields is not None or gs1.error is not None or identifier is None
    if flaw == "check digit" and identifier is not None:
        assert gs1.error is not None and "check digit" in gs1.error
