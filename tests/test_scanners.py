"""Scanner drivers end to end: the serial scanner simulator on a pty, the wedge key feed.

The production driver (``make_scanner`` -> ``Scanner`` with its reader) runs under its
own supervisor (``Device.run``); the tests read what it puts on the bus. The evdev event
device itself (open, grab, read of ``/dev/input/event*``) needs a real or uinput device,
which CI lacks: only its refusals (missing path, a node that is not an input device) are
tested here; the key events go through :class:`simulators.scanner.KeyFeed` into the same
``KeyboardReader`` and ``KeyDecoder``.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from evdev import InputEvent
from evdev import ecodes as e

from agent.bus import Bus, Subscription
from agent.devices.readings import BadInput, DeviceState, Scan, StateChange
from agent.devices.scanner import Scanner, make_scanner
from agent.devices.scanners.serial_scanner import LineReader
from agent.devices.scanners.wedge import KeyboardReader
from agent.devices.settings import ScannerSettings
from simulators.scanner import KeyFeed, SerialScannerSimulator, key_events

GS = "\x1d"
T = TypeVar("T")
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def serial_sim(tmp_path: Path) -> Iterator[SerialScannerSimulator]:
    sim = SerialScannerSimulator(tmp_path / "scanner0")
    yield sim
    sim.close()


def scanner_settings(connection: str, **options: Any) -> ScannerSettings:
    return ScannerSettings(connection=connection, reconnect_min_s=0.05, reconnect_max_s=0.2,
                           **options)


async def get(subscription: Subscription[T], timeout_s: float = 3.0) -> T:
    return await asyncio.wait_for(subscription.get(), timeout_s)


def run_scanner(scanner: Scanner, body: Callable[[Scanner], Awaitable[None]]) -> None:
    """Run the driver's supervisor, wait until ready, run ``body``, stop the driver."""
    async def main() -> None:
        task = asyncio.create_task(scanner.run())
        try:
            await asyncio.wait_for(scanner.ready.wait(), 5)
            await body(scanner)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    asyncio.run(main())


def serial_scanner(sim: SerialScannerSimulator, **options: Any) -> Scanner:
    return make_scanner("scanner1", scanner_settings(sim.connection, **options), Bus())


def wedge_scanner(feed: KeyFeed, **options: Any) -> Scanner:
    settings = scanner_settings("evdev:///dev/input/by-id/usb-Sim_Scanner-event-kbd",
                                **options)
    return Scanner("wedge1", settings, Bus(), KeyboardReader(settings, events=feed))


# ---------------------------------------------------------------- serial
@pytest.mark.parametrize(("framing", "suffix"), [
    ("cr", "cr"), ("lf", "lf"), ("crlf", "crlf"), ("any", "cr"), ("any", "lf"),
    ("any", "crlf"),
])
def test_serial_scanner_reads_lines_with_cr_lf_or_crlf_framing(
        serial_sim: SerialScannerSimulator, framing: str, suffix: str) -> None:
    serial_sim.suffix = suffix
    scanner = serial_scanner(serial_sim, framing=framing)

    async def body(scanner: Scanner) -> None:
        with scanner.bus.subscribe(object) as items:
            assert serial_sim.scan("4006381333931") == b"4006381333931" + {
                "cr": b"\r", "lf": b"\n", "crlf": b"\r\n"}[suffix]
            serial_sim.scan("ORDER-0001")
            first, second = await get(items), await get(items)
            assert isinstance(first, Scan) and isinstance(second, Scan)
            assert (first.data, first.raw, first.device) == (
                "4006381333931", b"4006381333931", "scanner1")
            assert first.gs1 == {"gtin": "04006381333931"}
            assert (second.data, second.gs1) == ("ORDER-0001", None)
            assert items.get_nowait() is None

    run_scanner(scanner, body)


def test_serial_scanner_reports_aim_symbology_and_gs1_fields(
        serial_sim: SerialScannerSimulator) -> None:
    """GS1-128 with an AIM prefix: GTIN, expiry, batch and serial, GS-separated AIs."""
    scanner = serial_scanner(serial_sim)
    data = f"0109506000134352" "17271130" f"10LOT-7{GS}" f"21SN0042{GS}" "3103001250"

    async def body(scanner: Scanner) -> None:
        with scanner.bus.subscribe(Scan) as scans:
            assert serial_sim.scan(data, aim="]C1") == f"]C1{data}\r".encode()
            scan = await get(scans)
            assert (scan.symbology, scan.symbology_name, scan.data) == ("]C1", "GS1-128", data)
            assert scan.gs1 == {"01": "09506000134352", "gtin": "09506000134352",
                                "17": "271130", "expiry": "2027-11-30", "10": "LOT-7",
                                "batch": "LOT-7", "21": "SN0042", "serial": "SN0042",
                                "3103": "001250"}
            assert scan.gs1_error is None
            serial_sim.scan("4006381333932", aim="]E0")
            bad_check = await get(scans)
            assert (bad_check.symbology_name, bad_check.gs1) == ("EAN-13 / UPC-A / UPC-E", None)
            assert bad_check.gs1_error == ("Invalid GTIN check digit for '4006381333932': "
                                           "Expected 1, got 2.")
            serial_sim.scan("https://example.com/x", aim="]Q1")
            qr = await get(scans)
            assert (qr.symbology_name, qr.data, qr.gs1, qr.gs1_error) == (
                "QR Code", "https://example.com/x", None, None)

    run_scanner(scanner, body)


def test_serial_scanner_discards_a_partial_line_after_the_inter_character_timeout(
        serial_sim: SerialScannerSimulator) -> None:
    scanner = serial_scanner(serial_sim, inter_char_timeout_ms=80)

    async def body(scanner: Scanner) -> None:
        with scanner.bus.subscribe(object) as items:
            started = time.monotonic()
            serial_sim.partial("40063")
            bad = await get(items)
            waited_s = time.monotonic() - started
            assert isinstance(bad, BadInput)
            assert (bad.code, bad.raw, bad.device) == ("partial_scan", b"40063", "scanner1")
            assert bad.message == "partial read b'40063' discarded: no CR or LF within 80 ms"
            assert 0.08 <= waited_s < 1.0
            serial_sim.scan("4006381333931")
            scan = await get(items)
            assert isinstance(scan, Scan) and scan.data == "4006381333931"
            assert scanner.details()["discarded_by_code"] == {"partial_scan": 1}

    run_scanner(scanner, body)


def test_serial_scanner_reports_an_over_long_line_once_and_keeps_reading(
        serial_sim: SerialScannerSimulator) -> None:
    scanner = serial_scanner(serial_sim, max_length=16)

    async def body(scanner: Scanner) -> None:
        with scanner.bus.subscribe(object) as items:
            serial_sim.send(b"X" * 40 + b"\r" + b"OK-123\r")
            bad, scan = await get(items), await get(items)
            assert isinstance(bad, BadInput) and (bad.code, bad.raw) == ("too_long", b"X" * 16)
            assert isinstance(scan, Scan) and scan.data == "OK-123"

    run_scanner(scanner, body)


def test_serial_scanner_fed_line_noise_reports_bad_input_and_keeps_running(
        serial_sim: SerialScannerSimulator) -> None:
    scanner = serial_scanner(serial_sim, max_length=64)

    async def body(scanner: Scanner) -> None:
        with scanner.bus.subscribe(object) as items:
            serial_sim.send(b"ab\x00\x01\xff\x13cd\r")
            bad = await get(items)
            assert isinstance(bad, BadInput) and bad.code == "protocol_error"
            assert bad.raw == b"ab\x00\x01\xff\x13cd"
            assert bad.message.startswith("expected barcode text, got control byte 0x00 at "
                                          "position 2")
            for _ in range(20):
                serial_sim.garbage(50)
            serial_sim.scan("AFTER-NOISE")
            seen: list[object] = []
            while not (seen and isinstance(seen[-1], Scan) and seen[-1].data == "AFTER-NOISE"):
                seen.append(await get(items))
            # Noise between two line endings can look like Latin-1 text: that is a scan.
            assert sum(isinstance(i, BadInput) for i in seen) >= 10
            assert scanner.state is DeviceState.READY
            assert (scanner.connects, scanner.failures) == (1, 0)

    run_scanner(scanner, body)


def test_serial_scanner_unplugged_goes_disconnected_and_comes_back_after_replug(
        serial_sim: SerialScannerSimulator) -> None:
    scanner = serial_scanner(serial_sim)

    async def body(scanner: Scanner) -> None:
        with scanner.bus.subscribe(StateChange) as changes, scanner.bus.subscribe(Scan) as scans:
            serial_sim.unplug()
            change = await get(changes)
            assert (change.state, change.code) == (DeviceState.DISCONNECTED, "disconnected")
            await asyncio.sleep(0.3)  # retries find no port meanwhile
            assert scanner.state is DeviceState.DISCONNECTED
            serial_sim.replug()
            while (change := await get(changes)).state is not DeviceState.READY:
                pass
            serial_sim.scan("BACK-AGAIN")
            assert (await get(scans)).data == "BACK-AGAIN"
            assert scanner.connects == 2

    run_scanner(scanner, body)


def test_scanner_status_counts_scans_and_discards(serial_sim: SerialScannerSimulator) -> None:
    scanner = serial_scanner(serial_sim, framing="cr", max_length=8)

    async def body(scanner: Scanner) -> None:
        with scanner.bus.subscribe(object) as items:
            serial_sim.send(b"A1\rB2\r123456789\r")
            for _ in range(3):
                await get(items)
            status = scanner.status()
            assert {k: status[k] for k in ("kind", "state", "reader", "framing", "scans",
                                           "discarded", "discarded_by_code", "aim_ids")} == {
                "kind": "scanner", "state": "ready", "reader": "serial", "framing": "cr",
                "scans": 2, "discarded": 1, "discarded_by_code": {"too_long": 1},
                "aim_ids": True}
            assert status["last_scan_at"] == pytest.approx(time.time(), abs=5)

    run_scanner(scanner, body)


def test_network_scanner_lines_arrive_over_tcp() -> None:
    async def main() -> None:
        async def serve(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write(b"]E04006381333931\r\n")
            await writer.drain()
            await asyncio.sleep(5)

        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        scanner = make_scanner("net1", scanner_settings(f"tcp://127.0.0.1:{port}"), Bus())
        assert isinstance(scanner.reader, LineReader)
        with scanner.bus.subscribe(Scan) as scans:
            task = asyncio.create_task(scanner.run())
            scan = await get(scans)
            assert (scan.symbology, scan.data, scan.gs1) == (
                "]E0", "4006381333931", {"gtin": "04006381333931"})
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        server.close()

    asyncio.run(main())


def test_make_scanner_picks_the_reader_by_connection_scheme() -> None:
    bus = Bus()
    wedge = make_scanner("a", scanner_settings("evdev:///dev/input/event7"), bus)
    serial = make_scanner("b", scanner_settings("/dev/ttyACM0"), bus)
    assert isinstance(wedge.reader, KeyboardReader)
    assert isinstance(serial.reader, LineReader)


def test_simulator_cli_scans_stdin_lines_into_the_driver(tmp_path: Path) -> None:
    """``python -m simulators.scanner --link ...``: each stdin line is a barcode."""
    link = tmp_path / "cli-scanner"
    proc = subprocess.Popen(
        [sys.executable, "-m", "simulators.scanner", "--link", str(link), "--aim", "]C1",
         "--suffix", "crlf"], cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        text=True)
    try:
        assert proc.stdout is not None and proc.stdin is not None
        assert proc.stdout.readline().strip() == f"connection = 'serial://{link}'"
        scanner = make_scanner("cli", scanner_settings(f"serial://{link}", framing="crlf"),
                               Bus())

        async def body(scanner: Scanner) -> None:
            assert proc.stdin is not None and proc.stdout is not None
            with scanner.bus.subscribe(Scan) as scans:
                proc.stdin.write("0109506000134352<GS>10ABC\n")
                proc.stdin.flush()
                scan = await get(scans, 10)
                assert (scan.symbology, scan.data) == ("]C1", f"0109506000134352{GS}10ABC")
                assert proc.stdout.readline().strip() == (
                    r"sent b']C10109506000134352\x1d10ABC\r\n'")

        run_scanner(scanner, body)
        proc.stdin.write("!bogus\n!quit\n")
        proc.stdin.flush()
        assert proc.stdout.readline().strip() == "error: unknown command !bogus (try !help)"
        assert proc.wait(10) == 0
    finally:
        proc.kill()
        proc.wait()


# ---------------------------------------------------------------- keyboard wedge
@pytest.mark.parametrize(("layout", "terminator"), [("us", "enter"), ("de", "tab"),
                                                    ("fr", "either")])
def test_wedge_scanner_publishes_gs1_scans_typed_on_its_layout(layout: str,
                                                               terminator: str) -> None:
    """A GS1 DataMatrix read with its AIM prefix, Shift, AltGr and Ctrl+GS keystrokes."""
    feed = KeyFeed(layout, "tab" if terminator == "tab" else "enter")
    scanner = wedge_scanner(feed, layout=layout, terminator=terminator)
    text = f"]d20109506000134352" f"10Lot-7/A{GS}" "21Zy&X"

    async def body(scanner: Scanner) -> None:
        with scanner.bus.subscribe(Scan) as scans:
            feed.scan(text)
            scan = await get(scans)
            assert (scan.device, scan.symbology, scan.symbology_name) == (
                "wedge1", "]d2", "GS1 DataMatrix")
            assert scan.data == text[3:]
            assert scan.raw == text.encode()
            assert scan.gs1 == {"01": "09506000134352", "gtin": "09506000134352",
                                "10": "Lot-7/A", "batch": "Lot-7/A", "21": "Zy&X",
                                "serial": "Zy&X"}
            feed.scan("]Q1ops@bench-7#{1}[2]|~")  # AltGr characters on de and fr
            scan = await get(scans)
            assert (scan.symbology, scan.data) == ("]Q1", "ops@bench-7#{1}[2]|~")
            assert scanner.details()["layout"] == layout

    run_scanner(scanner, body)


def test_wedge_scanner_discards_a_partial_read_after_the_inter_character_timeout() -> None:
    feed = KeyFeed("us")
    scanner = wedge_scanner(feed, inter_char_timeout_ms=60, terminator="enter")

    async def body(scanner: Scanner) -> None:
        with scanner.bus.subscribe(object) as items:
            started = time.monotonic()
            feed.send(key_events("40063", terminator=None))
            bad = await get(items)
            assert 0.06 <= time.monotonic() - started < 1.0
            assert isinstance(bad, BadInput)
            assert (bad.code, bad.raw) == ("partial_scan", b"40063")
            assert bad.message == "partial read '40063' discarded: no Enter within 60 ms"
            feed.scan("4006381333931")
            scan = await get(items)
            assert isinstance(scan, Scan) and scan.gs1 == {"gtin": "04006381333931"}

    run_scanner(scanner, body)


def test_wedge_scanner_reports_unknown_keys_and_keeps_reading() -> None:
    feed = KeyFeed("de")
    scanner = wedge_scanner(feed, layout="de")

    async def body(scanner: Scanner) -> None:
        with scanner.bus.subscribe(object) as items:
            events = key_events("AB", "de", terminator=None)
            last = events[-1]
            events += [InputEvent(last.sec, last.usec, e.EV_KEY, e.KEY_F12, 1),
                       InputEvent(last.sec, last.usec, e.EV_KEY, e.KEY_F12, 0)]
            feed.send(events + key_events("", "de", start_s=last.timestamp() + 0.002))
            bad = await get(items)
            assert isinstance(bad, BadInput) and bad.code == "unknown_key"
            assert bad.message == ("KEY_F12 types no character on the de layout (is the "
                                   "scanner set to this keyboard country?); read 'AB' discarded")
            feed.scan("Zürich")
            scan = await get(items)
            assert isinstance(scan, Scan) and scan.data == "Zürich"

    run_scanner(scanner, body)


def test_wedge_scanner_unplugged_goes_disconnected_and_comes_back() -> None:
    feed = KeyFeed("us")
    scanner = wedge_scanner(feed)

    async def body(scanner: Scanner) -> None:
        with scanner.bus.subscribe(StateChange) as changes, scanner.bus.subscribe(Scan) as scans:
            feed.unplug()
            change = await get(changes)
            assert (change.state, change.code) == (DeviceState.DISCONNECTED, "disconnected")
            await asyncio.sleep(0.3)
            assert scanner.state is DeviceState.DISCONNECTED
            assert scanner.code == "not_found"
            feed.replug()
            while (await get(changes)).state is not DeviceState.READY:
                pass
            feed.scan("Back-1")
            assert (await get(scans)).data == "Back-1"
            assert feed.opened == 2

    run_scanner(scanner, body)


def test_wedge_scanner_follows_the_hosts_caps_lock_between_reads() -> None:
    """The Caps Lock LED is read before each read, as the console would apply it."""
    feed = KeyFeed("us")
    scanner = wedge_scanner(feed)

    async def body(scanner: Scanner) -> None:
        with scanner.bus.subscribe(Scan) as scans:
            feed.scan("Back-1")
            assert (await get(scans)).data == "Back-1"
            feed.caps_lock_led = True  # Caps Lock pressed on the bench's keyboard
            feed.scan("Back-1")
            assert (await get(scans)).data == "bACK-1"
            assert scanner.details()["caps_lock"] is True
            feed.scan("Back-1", caps_lock=True)  # a scanner that toggles it around the read
            assert (await get(scans)).data == "bACK-1"
            feed.caps_lock_led = False
            feed.scan("Back-1", caps_lock=True)
            assert (await get(scans)).data == "Back-1"

    run_scanner(scanner, body)


@pytest.mark.parametrize(("path", "state", "code"), [
    ("/dev/input/by-id/usb-Nobody_Scanner-event-kbd", DeviceState.DISCONNECTED, "not_found"),
    ("/dev/null", DeviceState.FAULTED, "device_error"),
])
def test_evdev_scanner_open_refuses_a_missing_path_or_a_node_that_is_not_input(
        path: str, state: DeviceState, code: str) -> None:
    """The real evdev open path: a missing link, a character device of another kind."""
    async def main() -> None:
        scanner = make_scanner("kbd", scanner_settings(f"evdev://{path}"), Bus())
        with scanner.bus.subscribe(StateChange) as changes:
            task = asyncio.create_task(scanner.run())
            while (change := await get(changes)).state is DeviceState.CONNECTING:
                pass
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        assert (change.state, change.code) == (state, code)
        assert change.message is not None and path in change.message

    asyncio.run(main())
