"""Scale frames, parsers and the stability rule, without a port: exact bytes in, meaning out."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.devices.readings import WeightCondition
from agent.devices.scale import PROTOCOLS, StabilityTracker
from agent.devices.scales import (
    Framer,
    ScaleFrame,
    ScaleProtocol,
    continuous,
    hid_pos,
    mt_sics,
    scp01,
    to_grams,
    toledo_8217,
)
from agent.errors import DeviceError, ProtocolError
from simulators.scale import (
    HID_STATUS,
    HID_UNITS,
    Pan,
    hid_report,
    hid_report_for,
    hid_weight_report,
)

W = WeightCondition


# ---------------------------------------------------------------- units and framing
def test_units_normalise_to_grams_exactly() -> None:
    assert to_grams(1.234, "kg") == 1234.0
    assert to_grams(2.2, "LB") == 997.903
    assert to_grams(16, "oz") == 453.592
    assert to_grams(250, "mg") == 0.25
    assert to_grams(-0.0, "g") == 0.0
    with pytest.raises(ProtocolError, match=r"expected a mass unit .* got 'pcs'"):
        to_grams(3, "pcs")


def test_line_framer_cuts_at_cr_or_lf_and_skips_empty_lines() -> None:
    framer = Framer(b"\r\n")
    assert framer.feed(b"S S    1.00 g\r\nS D") == [b"S S    1.00 g\r"]
    assert framer.feed(b"  2.00 g\r\n\r\n") == [b"S D  2.00 g\r"]


def test_start_framer_hands_junk_before_a_start_byte_on_as_its_own_chunk() -> None:
    framer = Framer(b"\r", b"\x02", restart=True)
    assert framer.feed(b"\x15zz\x02 1.250\r") == [b"\x15zz", b"\x02 1.250\r"]
    assert framer.feed(b"\x02 1.2\x02?a\r") == [b"\x02 1.2", b"\x02?a\r"]


def test_framer_cuts_a_frame_that_never_ends() -> None:
    chunks = Framer(b"\r\n", max_bytes=16).feed(b"x" * 40)
    assert [len(c) for c in chunks] == [16, 16]


# ---------------------------------------------------------------- MT-SICS
@pytest.mark.parametrize(("line", "frame"), [
    (b"S S      100.00 g\r\n", ScaleFrame(W.WEIGHT, 100.0, True)),
    (b"S D     1.2345 kg\r\n", ScaleFrame(W.WEIGHT, 1234.5, False)),
    (b"S S     -12.50 g\r\n", ScaleFrame(W.UNDER_ZERO, None, True)),
    (b"S S       2.20 lb\r\n", ScaleFrame(W.WEIGHT, 997.903, True)),
    (b"S +\r\n", ScaleFrame(W.OVERLOAD, None, False)),
    (b"S -\r\n", ScaleFrame(W.UNDERLOAD, None, False)),
    (b"S I\r\n", ScaleFrame(W.WEIGHT, None, False)),
])
def test_mt_sics_weight_replies(line: bytes, frame: ScaleFrame) -> None:
    assert mt_sics.MtSics().weight(mt_sics.parse(line)) == frame


def test_mt_sics_error_replies_are_never_weights() -> None:
    protocol = mt_sics.MtSics()
    for line, says in ((b"ES\r\n", "does not know"), (b"ET\r\n", "garbled"),
                       (b"EL\r\n", "cannot execute")):
        with pytest.raises(ProtocolError, match=f"expected a weight reply to SI, .*{says}"):
            protocol.weight(mt_sics.parse(line))


@pytest.mark.parametrize(("action", "line", "code"), [
    ("zero", b"Z I\r\n", "command_failed"),
    ("zero", b"Z +\r\n", "command_failed"),
    ("zero", b"Z -\r\n", "command_failed"),
    ("tare", b"T I\r\n", "command_failed"),
    ("tare", b"T +\r\n", "command_failed"),
    ("clear_tare", b"TAC I\r\n", "command_failed"),
    ("clear_tare", b"ES\r\n", "unsupported"),
    ("tare", b"EL\r\n", "command_failed"),
])
def test_mt_sics_refusals_raise_with_a_stable_code(action: Any, line: bytes, code: str) -> None:
    with pytest.raises(DeviceError) as caught:
        mt_sics.MtSics().outcome(action, mt_sics.parse(line))
    assert caught.value.code == code


def test_mt_sics_command_answers_and_net_marking() -> None:
    protocol = mt_sics.MtSics()
    assert protocol.outcome("zero", mt_sics.parse(b"Z A\r\n"))
    assert not protocol.outcome("zero", mt_sics.parse(b"S S     5.00 g\r\n"))
    assert protocol.outcome("tare", mt_sics.parse(b"T S     300.00 g\r\n"))
    assert protocol.weight(mt_sics.parse(b"S S     0.00 g\r\n")) == \
        ScaleFrame(W.WEIGHT, 0.0, True, net=True)
    assert protocol.outcome("clear_tare", mt_sics.parse(b"TAC A\r\n"))
    assert protocol.weight(mt_sics.parse(b"S S   300.00 g\r\n")).net is False  # type: ignore[union-attr]
    assert mt_sics.parse(b'I4 A "B123456789"\r\n').text == "B123456789"


@pytest.mark.parametrize(("line", "says"), [
    (b"S Q 1.00 g\r\n", "expected status S D I"),
    (b"S S\r\n", "expected '<weight> <unit>'"),
    (b"S S 1.00 pcs\r\n", "expected a mass unit"),
    (b"S S 1.0.0 g\r\n", "decimal number"),
    (b"Z A 12\r\n", "expected nothing after Z A"),
    (b"\xff\xfe\r\n", "ASCII"),
    (b"hello\r\n", "expected an MT-SICS reply"),
])
def test_mt_sics_bad_lines_say_what_was_expected(line: bytes, says: str) -> None:
    with pytest.raises(ProtocolError, match=says):
        mt_sics.parse(line)


# ---------------------------------------------------------------- Toledo 8217
@pytest.mark.parametrize(("record", "frame"), [
    (b"\x0201.250\r", ScaleFrame(W.WEIGHT, 1250.0, True)),
    (b"\x02 1.250kg\r", ScaleFrame(W.WEIGHT, 1250.0, True)),
    (b"\x0202.50lb\r", ScaleFrame(W.WEIGHT, 1133.981, True)),
    (b"\x02?a\r", ScaleFrame(W.WEIGHT, None, False)),          # motion
    (b"\x02?b\r", ScaleFrame(W.OVERLOAD, None, False)),        # over capacity
    (b"\x02?d\r", ScaleFrame(W.UNDER_ZERO, None, False)),      # under zero
    (b"\x02?e\r", ScaleFrame(W.UNDER_ZERO, None, False)),      # under zero and moving
    (b"\x02?\xe1\r", ScaleFrame(W.WEIGHT, None, False)),       # parity bit set: dropped
])
def test_toledo_8217_records(record: bytes, frame: ScaleFrame) -> None:
    assert toledo_8217.Toledo8217().weight(toledo_8217.parse(record)) == frame


def test_toledo_8217_outside_zero_range_is_a_device_fault() -> None:
    frame = toledo_8217.Toledo8217().weight(toledo_8217.parse(b"\x02?h\r"))
    assert frame is not None and frame.grams is None and "zero capture range" in str(frame.fault)


def test_toledo_8217_reads_refusals_from_the_status_bits() -> None:
    protocol = toledo_8217.Toledo8217()
    assert protocol.outcome("zero", toledo_8217.parse(b"\x02?p\r"))
    assert protocol.outcome("clear_tare", toledo_8217.parse(b"\x02?a\r"))
    assert not protocol.outcome("tare", toledo_8217.parse(b"\x0201.000\r"))
    for action, status in (("zero", b"a"), ("zero", b"h"), ("tare", b"d"), ("tare", b"b")):
        with pytest.raises(DeviceError) as caught:
            protocol.outcome(action, toledo_8217.parse(b"\x02?" + status + b"\r"))  # type: ignore[arg-type]
        assert caught.value.code == "command_failed"


@pytest.mark.parametrize("record", [b"\x02?\x01\r", b"\x02??x\r", b"\x02\r", b"\x021,2\r",
                                    b" 1.250\r", b"\x02 1.250"])
def test_toledo_8217_bad_records(record: bytes) -> None:
    with pytest.raises(ProtocolError, match="expected an 8217"):
        toledo_8217.parse(record)


# ---------------------------------------------------------------- SCP-01
@pytest.mark.parametrize(("reply", "frame"), [
    (b"\n  1.250kg\r\n00\r\x03", ScaleFrame(W.WEIGHT, 1250.0, True)),
    (b"\n  1.250kg\r\n10\r\x03", ScaleFrame(W.WEIGHT, 1250.0, False)),
    (b"\n  2.75lb\r\n0p4\r\x03", ScaleFrame(W.WEIGHT, 1247.379, True, net=True)),
    (b"\n 2lb 3.5oz\r\n00\r\x03", ScaleFrame(W.WEIGHT, 1006.408, True)),
    (b"\n -0.020kg\r\n00\r\x03", ScaleFrame(W.UNDER_ZERO, None, True)),
    (b"\n^^^^^^^kg\r\n02\r\x03", ScaleFrame(W.OVERLOAD, None, False)),
    (b"\n_______kg\r\n01\r\x03", ScaleFrame(W.UNDERLOAD, None, False)),
    (b"\n00\r\x03", ScaleFrame(W.UNDER_ZERO, None, False)),      # status only, still
    (b"\nS10\r\x03", ScaleFrame(W.WEIGHT, None, False)),         # status only, moving
    (b"\n  1250 g \r\n20\r\x03", ScaleFrame(W.WEIGHT, 1250.0, True)),
])
def test_scp01_replies(reply: bytes, frame: ScaleFrame) -> None:
    assert scp01.Scp01().weight(scp01.parse(reply)) == frame


def test_scp01_reports_scale_errors_as_a_fault_with_the_frame() -> None:
    frame = scp01.Scp01().weight(scp01.parse(b"\n  1.000kg\r\n48\r\x03"))
    assert frame is not None and frame.fault == "RAM error; faulty calibration"


def test_scp01_zero_answer_and_unknown_command() -> None:
    protocol = scp01.Scp01()
    assert protocol.outcome("zero", scp01.parse(b"\n20\r\x03"))
    with pytest.raises(DeviceError) as caught:
        protocol.outcome("zero", scp01.parse(b"\n10\r\x03"))
    assert caught.value.code == "command_failed"
    with pytest.raises(DeviceError) as caught:
        protocol.outcome("zero", scp01.parse(b"\n?\r\x03"))
    assert caught.value.code == "unsupported"
    with pytest.raises(DeviceError) as caught:
        protocol.request("tare")
    assert caught.value.code == "unsupported"


@pytest.mark.parametrize(("reply", "says"), [
    (b"\n  1.250kg\r\n0\r\x03", "expected SCP-01 status bytes"),
    (b"\n  1.250kg\r\n0p\r\x03", "expected SCP-01 status bytes"),   # says "more follows"
    (b"\n  1.250kg\r\n\x00\x00\r\x03", "expected SCP-01 status bytes"),
    (b"  1.250kg\r\n00\r\x03", "expected an SCP-01 reply"),
    (b"\n1\r\n2\r\n00\r\x03", "at most a weight line"),
    (b"\n1.2.5kg\r\n00\r\x03", "decimal number"),
])
def test_scp01_bad_replies(reply: bytes, says: str) -> None:
    with pytest.raises(ProtocolError, match=says):
        scp01.parse(reply)


def test_scp01_framer_drops_junk_ending_in_lf_without_losing_the_reply() -> None:
    chunks = scp01.Scp01().framer().feed(b"\x15junk\r\n\n  1.250kg\r\n00\r\x03")
    assert chunks[-1] == b"\n  1.250kg\r\n00\r\x03"


# ---------------------------------------------------------------- continuous
@pytest.mark.parametrize(("line", "frame"), [
    (b"ST,GS,+  1.234kg\r\n", ScaleFrame(W.WEIGHT, 1234.0, True)),
    (b"US,GS,+  1.234kg\r\n", ScaleFrame(W.WEIGHT, 1234.0, False)),
    (b"ST,NT,+  0.500kg\r\n", ScaleFrame(W.WEIGHT, 500.0, True, net=True)),
    (b"ST,GS,-  0.020kg\r\n", ScaleFrame(W.UNDER_ZERO, None, True)),
    (b"OL,GS,+ 99.999kg\r\n", ScaleFrame(W.OVERLOAD, None, False)),
    (b"OL,GS,-  9.999kg\r\n", ScaleFrame(W.UNDERLOAD, None, False)),
    (b"ST,+00123.45  g\r\n", ScaleFrame(W.WEIGHT, 123.45, True)),
    (b"OL,+9999999\r\n", ScaleFrame(W.OVERLOAD, None, False)),
    (b"ST,GW,+002.50lb\r", ScaleFrame(W.WEIGHT, 1133.981, True)),
])
def test_continuous_lines(line: bytes, frame: ScaleFrame) -> None:
    assert continuous.parse(line) == frame


@pytest.mark.parametrize("line", [b"QT,+0000012 PC\r\n", b"ST,GS,+  1.234pcs\r\n",
                                  b"ST,GS,\r\n", b"XX,GS,+1.0kg\r\n", b"ST,GS,+1.0kg\x00\r\n"])
def test_continuous_bad_lines(line: bytes) -> None:
    with pytest.raises(ProtocolError, match="expected"):
        continuous.parse(line)


# ---------------------------------------------------------------- HID POS reports
@pytest.mark.parametrize(("report", "frame"), [
    (bytes.fromhex("03040bff2b00"), ScaleFrame(W.WEIGHT, 121.903, True)),     # 4.3 oz
    (bytes.fromhex("03040200e803"), ScaleFrame(W.WEIGHT, 1000.0, True)),      # 1000 g
    (bytes.fromhex("03030200e803"), ScaleFrame(W.WEIGHT, 1000.0, False)),     # moving
    (bytes.fromhex("03020b000000"), ScaleFrame(W.WEIGHT, 0.0, True)),         # at zero
    (bytes.fromhex("03040cfe7d00"), ScaleFrame(W.WEIGHT, 566.99, True)),      # 1.25 lb
    (bytes.fromhex("030403fd7d00"), ScaleFrame(W.WEIGHT, 125.0, True)),       # 0.125 kg
    (bytes.fromhex("030502000000"), ScaleFrame(W.UNDER_ZERO, None, False)),
    (bytes.fromhex("030602000000"), ScaleFrame(W.OVERLOAD, None, False)),
    (bytes.fromhex("03040200e8030000"), ScaleFrame(W.WEIGHT, 1000.0, True)),  # 8-byte packet
])
def test_hid_pos_reports(report: bytes, frame: ScaleFrame) -> None:
    assert hid_pos.frame(hid_pos.parse(report)) == frame


@pytest.mark.parametrize(("status", "says"), [(1, "fault"), (7, "calibration"),
                                              (8, "re-zeroing")])
def test_hid_pos_fault_statuses_are_faults_not_weights(status: int, says: str) -> None:
    frame = hid_pos.frame(hid_pos.parse(hid_report(status, 2, 0, 500)))
    assert frame.grams is None and says in str(frame.fault)


@pytest.mark.parametrize(("report", "says"), [
    (bytes.fromhex("0304020000"), "6-byte HID scale report"),
    (bytes.fromhex("01040200e803"), "report id 3"),
    (bytes.fromhex("03090200e803"), "status 1 to 8"),
])
def test_hid_pos_bad_reports(report: bytes, says: str) -> None:
    with pytest.raises(ProtocolError, match=says):
        hid_pos.parse(report)


def test_hid_pos_taels_are_refused_as_ambiguous() -> None:
    with pytest.raises(ProtocolError, match="expected a HID weight unit"):
        hid_pos.frame(hid_pos.parse(hid_report(4, 5, 0, 10)))


def test_hid_report_stream_is_cut_into_reports_with_padding_and_junk() -> None:
    stream = hid_weight_report(1250) + b"\x00\x00" + b"\x15\x16" + \
        hid_weight_report(300, unit="oz", stable=False)
    framer = hid_pos.HidPos().framer()
    chunks = framer.feed(stream[:5]) + framer.feed(stream[5:])
    assert chunks == [hid_weight_report(1250), b"\x15\x16",
                      hid_weight_report(300, unit="oz", stable=False)]
    assert hid_pos.frame(hid_pos.parse(chunks[2])) == ScaleFrame(W.WEIGHT, 300.505, False)


def test_hid_reports_of_the_simulator_follow_the_pan() -> None:
    pan = Pan(load_g=1250.0)
    assert hid_report_for(pan) == bytes.fromhex("03040200e204")
    pan.motion = True
    assert hid_report_for(pan)[1] == HID_STATUS["motion"]
    pan.condition = "overload"
    assert hid_report_for(pan)[1] == HID_STATUS["overload"]
    assert hid_weight_report(453.59237, unit="lb") == hid_report(4, HID_UNITS["lb"], -2, 100)


# ---------------------------------------------------------------- every parser: properties
def _pipeline(protocol: ScaleProtocol[Any], data: bytes, cut: int) -> tuple[int, int]:
    """Frame ``data`` (arriving in two pieces) and parse it all: (good, bad) frames."""
    framer = protocol.framer()
    good = bad = 0
    for chunk in framer.feed(data[:cut]) + framer.feed(data[cut:]):
        try:
            reply = protocol.parse(chunk)
            frame = protocol.weight(reply)
            for action in protocol.requests:
                try:
                    protocol.outcome(action, reply)
                except DeviceError as exc:
                    assert exc.code in ("command_failed", "unsupported")
        except ProtocolError as exc:
            assert "expected" in str(exc)
            bad += 1
            continue
        good += 1
        if frame is not None and frame.condition is not W.WEIGHT:
            assert frame.grams is None
    return good, bad


_NEAR_MISSES: dict[str, list[bytes]] = {
    "mt-sics": [b"S S ", b"S D ", b"  1.00 g", b"-3.5 kg", b"\r\n", b"Z A", b"TAC I", b"ES"],
    "toledo-8217": [b"\x02", b"?", b"a", b"d", b"01.250", b"kg", b"\r"],
    "scp-01": [b"\n", b"  1.250kg", b"\r\n", b"00", b"0p4", b"\r\x03", b"?", b"S"],
    "continuous": [b"ST,", b"US,", b"OL,", b"GS,", b"NT,", b"+  1.234", b"kg", b"\r\n"],
    "hid-pos": [bytes.fromhex("03040200e803"), b"\x03", b"\x00", b"\x05", b"\xff"],
}


@pytest.mark.parametrize("name", sorted(PROTOCOLS))
@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_any_bytes_parse_or_raise_protocol_error(name: str, data: st.DataObject) -> None:
    """Random bytes and near-miss frames never raise anything but ProtocolError."""
    pieces = data.draw(st.lists(st.one_of(st.binary(max_size=12),
                                          st.sampled_from(_NEAR_MISSES[name])), max_size=12))
    stream = b"".join(pieces)
    _pipeline(PROTOCOLS[name](), stream, data.draw(st.integers(0, len(stream))))


@pytest.mark.parametrize("name", ["mt-sics", "toledo-8217", "scp-01", "continuous"])
def test_simulator_frames_all_parse(name: str, tmp_path: Any) -> None:
    """Every reply a simulator can give parses (the simulators speak the protocols)."""
    from simulators.scale import SIMULATORS

    sim = SIMULATORS[name](tmp_path / "port")
    requests = {"mt-sics": [b"SI\r\n", b"S\r\n", b"Z\r\n", b"T\r\n", b"TAC\r\n"],
                "toledo-8217": [b"W", b"Z", b"T", b"C", b"Q"],
                "scp-01": [b"W\r", b"S\r", b"Z\r"], "continuous": []}[name]
    protocol = PROTOCOLS[name]()
    for setup in ("normal", "motion", "overload", "underload", "under_zero", "tare"):
        sim.pan = Pan(load_g=1250.0, motion=setup == "motion",
                      condition=setup if setup in ("overload", "underload", "under_zero")
                      else "normal", tare_g=300.0 if setup == "tare" else 0.0)
        frames = [sim.answer(r) for r in requests]
        if name == "continuous":
            frames = [sim.line()]  # type: ignore[attr-defined]
        for raw in frames:
            assert raw is not None
            assert _pipeline(protocol, raw, len(raw)) == (1, 0), raw
    sim.stop()


# ---------------------------------------------------------------- the stability rule
def _feed(tracker: StabilityTracker, readings: list[tuple[W, float | None, bool]]) -> list[int]:
    return [i for i, r in enumerate(readings) if tracker.update(*r)]


def _stable(grams: float, times: int) -> list[tuple[W, float | None, bool]]:
    return [(W.WEIGHT, grams, True)] * times


def test_two_equal_parcels_in_a_row_are_two_settled_readings() -> None:
    tracker = StabilityTracker(3, 0.0, 5.0)
    readings = [*_stable(1250, 5), (W.WEIGHT, 400.0, False), *_stable(0, 3), *_stable(1250, 4)]
    assert _feed(tracker, readings) == [2, 11]


def test_a_parcel_left_on_the_pan_settles_once() -> None:
    tracker = StabilityTracker(3, 2.0, 5.0)
    readings = [*_stable(1250, 3), (W.WEIGHT, 1251.0, True), (W.WEIGHT, 1250.0, False),
                *_stable(1249, 50)]
    assert _feed(tracker, readings) == [2]


def test_motion_breaks_the_run_and_the_stable_count_is_consecutive() -> None:
    tracker = StabilityTracker(3, 0.0, 5.0)
    readings = [*_stable(800, 2), (W.WEIGHT, None, False), *_stable(800, 2), *_stable(800, 1)]
    assert _feed(tracker, readings) == [5]


def test_an_item_added_to_a_settled_parcel_settles_again() -> None:
    tracker = StabilityTracker(2, 1.0, 5.0)
    readings = _stable(1000, 2) + _stable(1500, 2) + _stable(1000.5, 3)
    assert _feed(tracker, readings) == [1, 3, 5]


def test_an_empty_pan_and_conditions_never_settle_but_rearm() -> None:
    tracker = StabilityTracker(1, 0.0, 5.0)
    readings = _stable(0, 5) + _stable(700, 2) + [(W.UNDER_ZERO, None, False)] + \
        _stable(700, 2) + [(W.OVERLOAD, None, False)] + _stable(700, 1)
    assert _feed(tracker, readings) == [5, 8, 11]


_reading = st.one_of(
    st.tuples(st.just(W.WEIGHT), st.sampled_from([0.0, 2.0, 700.0, 701.0, 1250.0]),
              st.booleans()),
    st.tuples(st.just(W.WEIGHT), st.none(), st.just(False)),
    st.tuples(st.sampled_from([W.OVERLOAD, W.UNDERLOAD, W.UNDER_ZERO]), st.none(),
              st.booleans()),
)


@settings(max_examples=300, deadline=None)
@given(readings=st.lists(_reading, max_size=60), count=st.integers(1, 4),
       band=st.sampled_from([0.0, 1.0, 5.0]))
def test_settled_readings_obey_the_documented_rule(
        readings: list[tuple[W, float | None, bool]], count: int, band: float) -> None:
    empty = 5.0
    settled = _feed(StabilityTracker(count, band, empty), readings)
    for index in settled:
        condition, grams, stable = readings[index]
        assert condition is W.WEIGHT and stable and grams is not None and grams >= empty
        run = readings[index - count + 1:index + 1]
        assert len(run) == count and all(r[0] is W.WEIGHT and r[2] for r in run)
        values = [r[1] for r in run]
        assert max(values) - min(values) <= band  # type: ignore[type-var, operator]
    for first, second in itertools.pairwise(settled):
        between = readings[first + 1:second + 1]
        emptied = any(r[0] is not W.WEIGHT or (r[1] is not None and r[1] < empty)
                      for r in between)
        moved = abs(readings[second][1] - readings[first][1]) > band  # type: ignore[operator]
        assert emptied or moved


@settings(max_examples=200, deadline=None)
@given(parcels=st.lists(st.tuples(st.sampled_from([150.0, 1250.0, 1250.0, 30.0]),
                                  st.integers(3, 12)), min_size=1, max_size=8),
       count=st.integers(1, 3))
def test_every_placement_gives_exactly_one_settled_reading(
        parcels: list[tuple[float, int]], count: int) -> None:
    tracker = StabilityTracker(count, 0.0, 5.0)
    settled = 0
    for grams, held in parcels:
        settled += len(_feed(tracker, [(W.WEIGHT, grams / 2, False), *_stable(grams, held)]))
        _feed(tracker, [(W.WEIGHT, 3.0, False), *_stable(0.0, 2)])
    assert settled == len(parcels)
