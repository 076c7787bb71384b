"""Connection strings, byte transports and USB access: the ground every driver stands on."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.devices import usb as agent_usb
from agent.devices.connection import parse_connection
from agent.devices.discovery import usb_devices, video_devices
from agent.devices.transport import SerialLine, open_transport
from agent.errors import DeviceError
from simulators.ptyport import PtyPort
from simulators.usb_backend import SimBackend, SimUsbDevice


def test_connection_forms_of_the_docs_parse() -> None:
    serial = parse_connection("scale", "serial:///dev/serial/by-id/usb-FTDI-if00?baud=9600"
                                       "&bytesize=7&parity=E")
    assert (serial.scheme, serial.path, serial.params["parity"]) == \
        ("serial", "/dev/serial/by-id/usb-FTDI-if00", "E")
    assert parse_connection("scale", "/dev/ttyUSB0").scheme == "serial"
    tcp = parse_connection("printer", "tcp://10.0.0.5:9100")
    assert (tcp.host, tcp.port) == ("10.0.0.5", 9100)
    usb = parse_connection("scale", "usb://0922:8003?serial=A1")
    assert (usb.vid, usb.pid, usb.params) == (0x0922, 0x8003, {"serial": "A1"})
    assert parse_connection("printer", "/dev/usb/lp0").scheme == "file"
    assert parse_connection("scanner", "evdev:///dev/input/event3").path == "/dev/input/event3"
    assert parse_connection("camera", "video:0").params == {"index": "0"}
    assert parse_connection("camera", "images:///srv/f/frame_%03d.png").params == \
        {"sequence": "1"}
    rtsp = parse_connection("camera", "rtsp://admin:secret@10.0.0.9/stream1")
    assert "secret" not in rtsp.describe() and "10.0.0.9/stream1" in rtsp.describe()


@pytest.mark.parametrize(("kind", "raw", "says"), [
    ("scale", "tcp://scale", "expected tcp://HOST:PORT"),
    ("scale", "serial:///dev/ttyS0?baud=fast", "baud='fast' is not valid"),
    ("scale", "serial:///dev/ttyS0?speed=9600", "unknown option speed"),
    ("scale", "usb://922:8003", "expected usb://VID:PID"),
    ("printer", "evdev:///dev/input/event1", "a printer connects by"),
    ("scanner", "/home/user/scanner", "a bare path must be a serial port"),
    ("camera", "ftp://cam/x", "a camera is /dev/videoN"),
    ("printer", "serial://dev/ttyS0", "three slashes"),
])
def test_a_bad_connection_string_says_what_is_wrong(kind: str, raw: str, says: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_connection(kind, raw)
    assert says in str(caught.value)


@given(kind=st.sampled_from(["scanner", "scale", "printer", "camera", "signal"]),
       raw=st.text(max_size=80))
def test_any_connection_text_parses_or_raises_value_error(kind: str, raw: str) -> None:
    try:
        conn = parse_connection(kind, raw)
    except ValueError:
        return
    assert conn.resource


def test_two_names_of_one_serial_port_are_one_resource(tmp_path: Path) -> None:
    port = PtyPort(tmp_path / "by-id-scale")
    try:
        real = port.path.resolve()
        a = parse_connection("scale", f"serial://{port.path}")
        b = parse_connection("scanner", f"serial://{real}?baud=115200")
        assert a.resource == b.resource
    finally:
        port.close()


def test_serial_transport_moves_bytes_and_holds_the_port_exclusively(tmp_path: Path) -> None:
    port = PtyPort(tmp_path / "ttyS-sim")

    async def scenario() -> None:
        conn = parse_connection("scale", f"serial://{port.path}?baud=9600&bytesize=7&parity=E")
        transport = await open_transport(conn, line=SerialLine(baud=2400))
        assert "9600 7E1" in transport.description
        await transport.write(b"W\r")
        assert await asyncio.to_thread(port.read, 2.0) == b"W\r"
        port.write(b"\x0201.250\r")
        assert await transport.read() == b"\x0201.250\r"
        with pytest.raises(DeviceError) as busy:
            await open_transport(conn)
        assert busy.value.code == "busy"
        port.unplug()
        with pytest.raises(DeviceError) as gone:
            await asyncio.wait_for(transport.read(), 5)
        assert gone.value.code == "disconnected"
        transport.close()
        with pytest.raises(DeviceError) as missing:
            await open_transport(conn)
        assert missing.value.code == "not_found"
        port.replug()
        again = await open_transport(conn)
        port.write(b"back")
        assert await again.read() == b"back"
        again.close()

    try:
        asyncio.run(scenario())
    finally:
        port.close()


def test_a_device_file_transport_reads_and_writes(tmp_path: Path) -> None:
    port = PtyPort(tmp_path / "lp0")

    async def scenario() -> None:
        transport = await open_transport(parse_connection("printer", f"file://{port.path}"))
        await transport.write(b"^XA^FDhello^FS^XZ")
        assert await asyncio.to_thread(port.read, 2.0) == b"^XA^FDhello^FS^XZ"
        port.write(b"status")
        assert await transport.read_for(2.0) == b"status"
        assert await transport.read_for(0.05) == b""
        transport.close()

    try:
        asyncio.run(scenario())
    finally:
        port.close()


def test_tcp_transport_reports_refused_and_a_closed_peer() -> None:
    async def scenario() -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            free = probe.getsockname()[1]
        with pytest.raises(DeviceError) as refused:
            await open_transport(parse_connection("printer", f"tcp://127.0.0.1:{free}"))
        assert refused.value.code == "refused"

        received: list[bytes] = []

        async def peer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            received.append(await reader.read(100))
            writer.write(b"PONG")
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(peer, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        transport = await open_transport(parse_connection("printer", f"tcp://127.0.0.1:{port}"))
        await transport.write(b"PING")
        assert await transport.read() == b"PONG"
        with pytest.raises(DeviceError) as closed:
            await asyncio.wait_for(transport.read(), 5)
        assert closed.value.code == "disconnected"
        assert received == [b"PING"]
        transport.close()
        server.close()

    asyncio.run(scenario())


def test_usb_transport_claims_the_interface_reads_writes_and_sees_an_unplug() -> None:
    scale = SimUsbDevice(0x0922, 0x8003, serial="SCALE-2", interface_class=0x03,
                         endpoint_type=3, has_out=False)
    other = SimUsbDevice(0x0922, 0x8003, serial="SCALE-1", interface_class=0x03,
                         endpoint_type=3, has_out=False)
    printer = SimUsbDevice(0x0A5F, 0x0166, serial="ZBR1")
    agent_usb.use_backend(SimBackend([other, scale, printer]))

    async def scenario() -> None:
        conn = parse_connection("scale", "usb://0922:8003?serial=SCALE-2")
        transport = await agent_usb.open_usb(conn, endpoint="interrupt", timeout_ms=50)
        assert not scale.kernel_driver and other.kernel_driver  # usbhid let go of ours only
        scale.feed(bytes([3, 4, 2, 0xFF, 0x34, 0x12]))
        assert await transport.read() == bytes([3, 4, 2, 0xFF, 0x34, 0x12])
        with pytest.raises(DeviceError) as no_out:
            await transport.write(b"x")
        assert no_out.value.code == "unsupported"
        scale.unplug()
        with pytest.raises(DeviceError) as gone:
            await asyncio.wait_for(transport.read(), 5)
        assert gone.value.code == "disconnected"
        transport.close()
        with pytest.raises(DeviceError) as missing:
            await agent_usb.open_usb(conn, endpoint="interrupt")
        assert missing.value.code == "not_found"

        label = await agent_usb.open_usb(parse_connection("printer", "usb://0a5f:0166"),
                                         endpoint="bulk")
        await label.write(b"^XA^FO50,50^FDok^FS^XZ")
        assert printer.written == [b"^XA^FO50,50^FDok^FS^XZ"]
        label.close()

    try:
        asyncio.run(scenario())
    finally:
        agent_usb.use_backend(None)


def test_discovery_recognises_usb_scales_and_printers_by_vid_pid_and_class() -> None:
    agent_usb.use_backend(SimBackend([
        SimUsbDevice(0x0922, 0x8003, serial="DY1", interface_class=0x03, endpoint_type=3),
        SimUsbDevice(0x1234, 0x0001, serial="GEN", interface_class=0x07),
        SimUsbDevice(0x1234, 0x0002, interface_class=0x03, endpoint_type=3),  # a mouse
    ]))
    try:
        found = {entry["usb"]: entry for entry in usb_devices()}
    finally:
        agent_usb.use_backend(None)
    assert found["0922:8003"]["kind"] == "scale"
    assert found["0922:8003"]["connection"] == "usb://0922:8003?serial=DY1"
    assert found["1234:0001"]["kind"] == "printer"
    assert "1234:0002" not in found


def test_discovery_lists_capture_nodes_with_their_stable_names(tmp_path: Path) -> None:
    sys_root, dev_root = tmp_path / "sys", tmp_path / "dev"
    for node, name, index in (("video0", "HD Pro Webcam C920", "0"),
                              ("video1", "HD Pro Webcam C920", "1")):
        folder = sys_root / "class" / "video4linux" / node
        folder.mkdir(parents=True)
        (folder / "name").write_text(name + "\n")
        (folder / "index").write_text(index + "\n")
    (dev_root / "v4l" / "by-id").mkdir(parents=True)
    (dev_root / "video0").touch()
    link = dev_root / "v4l" / "by-id" / "usb-046d_C920-video-index0"
    link.symlink_to(dev_root / "video0")
    found = video_devices(sys_root, dev_root)
    assert found == [{"kind": "camera", "what": "HD Pro Webcam C920",
                      "path": str(dev_root / "video0"), "stable_path": str(link),
                      "connection": str(link)}]
