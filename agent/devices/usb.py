"""USB devices through pyusb: label printers (bulk endpoints) and HID POS scales (interrupt).

:func:`open_usb` finds the device by ``usb://VID:PID`` (and ``?serial=`` when several
identical devices hang on one bench), detaches the kernel driver that bound it
(``usblp`` for printers, ``usbhid`` for scales: only one driver may own the interface),
claims the interface and returns a :class:`UsbTransport`: ``read`` returns one packet
(a HID report for a scale), ``write`` sends to the OUT endpoint.

pyusb calls block (libusb transfers with a timeout), so each claimed USB device gets two
threads: ``bench-usb-VID:PID-in`` reads the IN endpoint continuously into a buffer (a
scale reports on every change, a printer answers status requests), and the one-worker
executor ``bench-usb-VID:PID`` opens, writes and releases; the loop only awaits them.
An unplugged device makes libusb fail with ``ENODEV`` (``LIBUSB_ERROR_NO_DEVICE``):
that is ``disconnected``.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal

import usb.core
import usb.util

from agent.devices.connection import Connection
from agent.devices.transport import Inbox, Transport
from agent.errors import DeviceError

_backend: Any = None
"""The pyusb backend; ``None`` lets pyusb pick libusb1. Tests install a simulated one."""

_ENDPOINT_TYPES = {
    "bulk": usb.util.ENDPOINT_TYPE_BULK,
    "interrupt": usb.util.ENDPOINT_TYPE_INTR,
}


def use_backend(backend: Any) -> None:
    """Use ``backend`` (a ``usb.backend.IBackend``) for every later :func:`open_usb`."""
    global _backend
    _backend = backend


def usb_error(exc: usb.core.USBError, what: str) -> DeviceError:
    """Translate a pyusb error into a :class:`DeviceError` with a stable code."""
    if isinstance(exc, usb.core.USBTimeoutError):
        return DeviceError(f"{what}: timed out", code="timeout")
    code = {
        errno.ENODEV: "disconnected",
        errno.ENOENT: "not_found",
        errno.EACCES: "permission_denied",
        errno.EPERM: "permission_denied",
        errno.EBUSY: "busy",
        errno.EPIPE: "device_error",  # a stalled endpoint
        errno.EIO: "disconnected",
    }.get(exc.errno or 0, "device_error")
    return DeviceError(f"{what}: {exc.strerror or exc}", code=code)


def find_devices(vid: int | None = None, pid: int | None = None) -> list[Any]:
    """Every USB device visible to pyusb (optionally one VID:PID); empty without libusb."""
    try:
        found = usb.core.find(find_all=True, backend=_backend, **{
            key: value for key, value in (("idVendor", vid), ("idProduct", pid))
            if value is not None})
        return list(found or [])
    except (usb.core.NoBackendError, usb.core.USBError, ValueError):
        return []


class UsbTransport(Transport):
    """A claimed USB interface: one IN endpoint (and an OUT endpoint when there is one)."""

    def __init__(self, conn: Connection, endpoint: Literal["bulk", "interrupt"],
                 timeout_ms: int) -> None:
        self.description = f"USB {conn.vid:04x}:{conn.pid:04x}"
        self._conn = conn
        self._kind = _ENDPOINT_TYPES[endpoint]
        self._timeout_ms = timeout_ms
        self._interface = int(conn.params.get("interface", "0"))
        self._thread_name = f"bench-usb-{conn.vid:04x}:{conn.pid:04x}"
        self._thread = ThreadPoolExecutor(1, thread_name_prefix=self._thread_name)
        self._device: Any = None
        self._in: Any = None
        self._out: Any = None
        self._inbox = Inbox(self.description)
        self._loop = asyncio.get_running_loop()
        self._reader: threading.Thread | None = None
        self._detached = False
        self._closed = False

    async def _call(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._thread, fn, *args)

    def _open_blocking(self) -> None:
        serial = self._conn.params.get("serial")

        def matches(device: Any) -> bool:
            if serial is None:
                return True
            try:
                return bool(device.serial_number == serial)
            except (usb.core.USBError, ValueError):
                return False

        try:
            device = usb.core.find(idVendor=self._conn.vid, idProduct=self._conn.pid,
                                   custom_match=matches, backend=_backend)
        except usb.core.NoBackendError as exc:
            raise DeviceError("no libusb found on this machine (install libusb-1.0-0)",
                              code="not_found") from exc
        if device is None:
            suffix = f" with serial {serial}" if serial else ""
            raise DeviceError(f"no USB device {self._conn.vid:04x}:{self._conn.pid:04x}"
                              f"{suffix} is plugged in", code="not_found")
        what = self.description
        self._device = device  # from here on, _release undoes what was done
        try:
            if device.is_kernel_driver_active(self._interface):
                device.detach_kernel_driver(self._interface)
                self._detached = True
            try:
                config = device.get_active_configuration()
            except usb.core.USBError:
                device.set_configuration()
                config = device.get_active_configuration()
            interface = config[(self._interface, 0)]
            usb.util.claim_interface(device, self._interface)
        except usb.core.USBError as exc:
            raise usb_error(exc, f"claiming {what} interface {self._interface}") from exc
        except (KeyError, IndexError) as exc:
            raise DeviceError(f"{what} has no interface {self._interface}",
                              code="device_error") from exc

        def endpoint(direction: int) -> Any:
            return usb.util.find_descriptor(interface, custom_match=lambda e: (
                usb.util.endpoint_direction(e.bEndpointAddress) == direction
                and usb.util.endpoint_type(e.bmAttributes) == self._kind))

        self._in = endpoint(usb.util.ENDPOINT_IN)
        self._out = endpoint(usb.util.ENDPOINT_OUT)
        if self._in is None and self._out is None:
            raise DeviceError(f"{what} interface {self._interface} has no endpoint of the "
                              "expected type", code="device_error")

    async def open(self) -> None:
        await self._call(self._open_blocking)
        if self._in is not None:
            self._reader = threading.Thread(target=self._read_forever, daemon=True,
                                            name=f"{self._thread_name}-in")
            self._reader.start()

    def _read_forever(self) -> None:
        """Reader thread: every packet into the inbox, until closed or the device is gone."""
        while not self._closed:
            try:
                data = self._in.read(self._in.wMaxPacketSize, self._timeout_ms)
            except usb.core.USBTimeoutError:
                continue  # nothing sent yet: a HID scale reports only on change
            except Exception as exc:
                # USBError (unplugged: ENODEV) or anything else: the stream ends here and
                # the driver reconnects, rather than re-reading a stale last report.
                if isinstance(exc, usb.core.USBError):
                    message = str(usb_error(exc, f"reading {self.description}"))
                else:
                    message = f"reading {self.description} failed: {exc!r}"
                with contextlib.suppress(RuntimeError):  # the loop is already closed
                    self._loop.call_soon_threadsafe(self._inbox.fail, message)
                return
            if len(data) and not self._closed:
                try:
                    self._loop.call_soon_threadsafe(self._inbox.feed, bytes(data))
                except RuntimeError:  # the loop is closed: the agent is stopping
                    return

    async def read(self) -> bytes:
        if self._in is None:
            raise DeviceError(f"{self.description} has no IN endpoint to read",
                              code="unsupported")
        return await self._inbox.read()

    def discard_input(self) -> None:
        self._inbox.buffer.clear()

    def _write_blocking(self, data: bytes) -> None:
        try:
            self._out.write(data, max(self._timeout_ms, 1000 + len(data) // 10))
        except usb.core.USBError as exc:
            raise usb_error(exc, f"writing to {self.description}") from exc

    async def write(self, data: bytes) -> None:
        if self._out is None:
            raise DeviceError(f"{self.description} has no OUT endpoint to write",
                              code="unsupported")
        await self._call(self._write_blocking, data)

    def _release(self) -> None:
        # The reader's transfer must end before the handle goes (libusb would free memory
        # a pending transfer still uses); it ends within timeout_ms once _closed is set.
        if self._reader is not None:
            self._reader.join()
        if self._device is None:
            return
        with contextlib.suppress(usb.core.USBError, NotImplementedError):
            usb.util.release_interface(self._device, self._interface)
        if self._detached:
            # Give the interface back to usblp/usbhid (the device is usable without us).
            with contextlib.suppress(usb.core.USBError, NotImplementedError):
                self._device.attach_kernel_driver(self._interface)
        with contextlib.suppress(usb.core.USBError):
            usb.util.dispose_resources(self._device)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._inbox.fail(f"{self.description} is closed")
        self._thread.submit(self._release)
        self._thread.shutdown(wait=False)


async def open_usb(conn: Connection, *, endpoint: Literal["bulk", "interrupt"],
                   timeout_ms: int = 1000) -> UsbTransport:
    """Find, claim and return the USB device named by ``conn``.

    Raises:
        DeviceError: ``not_found`` (not plugged in, no libusb), ``permission_denied``
            (no udev rule), ``busy`` (another program claimed it), ``device_error``.
    """
    transport = UsbTransport(conn, endpoint, timeout_ms)
    try:
        await transport.open()
    except BaseException:
        transport.close()
        raise
    return transport
