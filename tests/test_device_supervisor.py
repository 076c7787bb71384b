"""The device supervisor and resource release: what keeps a bench up through bad hardware."""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import time
from pathlib import Path

import pytest

from agent.bus import Bus
from agent.devices import usb as agent_usb
from agent.devices.base import Device
from agent.devices.connection import parse_connection
from agent.devices.readings import DeviceState, StateChange
from agent.devices.settings import ScaleSettings
from agent.devices.transport import TcpTransport, open_transport
from agent.errors import DeviceError
from simulators.ptyport import PtyPort
from simulators.usb_backend import SimBackend, SimUsbDevice


class Flapping(Device):
    """A device on a real pty that answers at open and is gone right after (a bad cable)."""

    kind = "scale"

    def __init__(self, port: PtyPort, settings: ScaleSettings, bus: Bus) -> None:
        super().__init__("flappy", settings, bus)
        self.port = port
        self.opened_at: list[float] = []
        self.transport = None

    async def _open(self) -> None:
        self.opened_at.append(time.monotonic())
        self.transport = await open_transport(self.connection)

    async def _serve(self) -> None:
        self.port.unplug()  # the cable drops as soon as the device was reached
        assert self.transport is not None
        await self.transport.read()

    async def _close(self) -> None:
        if self.transport is not None:
            self.transport.close()
        self.port.replug()


def test_a_flapping_device_backs_off_instead_of_reconnecting_at_full_speed(
        tmp_path: Path) -> None:
    port = PtyPort(tmp_path / "flappy")
    settings = ScaleSettings(protocol="mt-sics", connection=f"serial://{port.path}",
                             reconnect_min_s=0.05, reconnect_max_s=0.4)
    bus = Bus()
    device = Flapping(port, settings, bus)
    changes = bus.subscribe(StateChange)

    async def main() -> None:
        task = asyncio.create_task(device.run())
        await asyncio.sleep(1.6)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    try:
        asyncio.run(main())
    finally:
        port.close()
    gaps = [b - a for a, b in zip(device.opened_at, device.opened_at[1:], strict=False)]
    # 0.05 s doubling to 0.4 s (with jitter): far fewer attempts than 1.6 s / 0.05 s.
    assert 4 <= len(device.opened_at) <= 12, device.opened_at
    assert max(gaps[-2:]) >= 0.2
    assert device.failures == len(device.opened_at) - (device.state is DeviceState.READY)
    states = []
    while (item := changes.get_nowait()) is not None:
        states.append(item.state)
    assert states[:2] == [DeviceState.READY, DeviceState.DISCONNECTED]


def test_a_failing_state_report_does_not_stop_the_device(tmp_path: Path) -> None:
    port = PtyPort(tmp_path / "flappy")
    settings = ScaleSettings(protocol="mt-sics", connection=f"serial://{port.path}",
                             reconnect_min_s=0.05, reconnect_max_s=0.1)
    device = Flapping(port, settings, Bus())

    def broken(_change: StateChange) -> None:
        raise RuntimeError("reporting is broken")

    device.on_change = broken

    async def main() -> None:
        task = asyncio.create_task(device.run())
        await asyncio.sleep(0.5)
        assert not task.done()
        task.cancel()

    try:
        asyncio.run(main())
    finally:
        port.close()
    assert device.connects >= 2


def test_closing_a_tcp_transport_to_a_stalled_printer_frees_the_socket() -> None:
    """The peer reads nothing; close() must not wait to flush a half-sent job."""
    server = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []
    threading.Thread(target=lambda: accepted.append(server.accept()[0]), daemon=True).start()

    async def main() -> None:
        conn = parse_connection("printer", f"tcp://127.0.0.1:{server.getsockname()[1]}")
        transport = await TcpTransport.connect(conn, 2.0)
        transport._transport.write(b"^XA" + b"x" * 8_000_000)  # far more than the buffers
        transport.close()
        await asyncio.sleep(0.1)
        with pytest.raises(DeviceError):
            await transport.read()

    try:
        asyncio.run(main())
        peer = accepted[0]
        peer.settimeout(5)
        received = 0
        while chunk := peer.recv(1 << 20):  # ends: the connection was aborted, not drained
            received += len(chunk)
        assert received < 8_000_000
    except ConnectionResetError:
        pass  # the abort arrived as a reset: also not drained
    finally:
        server.close()
        for peer in accepted:
            peer.close()


def test_a_plain_file_at_a_printer_path_is_refused_without_leaking_a_descriptor(
        tmp_path: Path) -> None:
    """`cat > /dev/usb/lp0` with the printer unplugged leaves a file there."""
    stray = tmp_path / "lp0"
    stray.write_bytes(b"^XA^XZ")
    conn = parse_connection("printer", f"file://{stray}")

    async def main() -> None:
        for _ in range(5):
            with pytest.raises(DeviceError) as refused:
                await open_transport(conn)
            assert refused.value.code == "device_error"
            assert "not a character device" in str(refused.value)

    before = len(os.listdir("/proc/self/fd"))
    asyncio.run(main())
    assert len(os.listdir("/proc/self/fd")) <= before


def test_closing_a_usb_device_ends_its_reader_and_gives_it_back_to_the_kernel() -> None:
    scale = SimUsbDevice(0x0922, 0x8003, interface_class=0x03, endpoint_type=3,
                         has_out=False)
    agent_usb.use_backend(SimBackend([scale]))

    async def main() -> None:
        conn = parse_connection("scale", "usb://0922:8003")
        transport = await agent_usb.open_usb(conn, endpoint="interrupt", timeout_ms=50)
        assert not scale.kernel_driver  # usbhid was detached to claim the interface
        transport.close()

    def readers() -> list[str]:
        return [t.name for t in threading.enumerate() if t.name.startswith("bench-usb-")]

    try:
        asyncio.run(main())
        deadline = time.monotonic() + 3
        while (readers() or not scale.kernel_driver) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert readers() == []
        assert scale.kernel_driver  # usbhid has the scale back
    finally:
        agent_usb.use_backend(None)
