"""Byte transports: the one primitive every device is built on.

A :class:`Transport` moves raw bytes: ``read`` what the device sent, ``write`` what it
should get, ``close``. Drivers speak their protocol on top and never know whether the
bytes travel over a serial port, a TCP socket, a device file or USB. The transport is
picked from the connection string by :func:`open_transport` (an explicit dict).

Serial ports and device files are file descriptors watched by the asyncio loop
(``loop.add_reader``/``add_writer``), so no thread is needed for them; pyserial only
opens the port, sets the line (baud, 7E1...) and takes the exclusive lock (``TIOCEXCL``
plus ``flock``), which is how "one driver owns a port" holds even against other
processes. Every OS error becomes a :class:`DeviceError` with a stable code.
"""

from __future__ import annotations

import asyncio
import errno
import os
import socket
import stat
import termios
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass

import serial

from agent.devices.connection import Connection
from agent.errors import DeviceError

_READ_CHUNK = 4096
_WRITE_TIMEOUT_S = 30.0
"""A device that takes no bytes for this long (printer stalled, line blocked) faults."""


@dataclass(frozen=True)
class SerialLine:
    """A serial line's settings; the connection string's options override a driver's."""

    baud: int = 9600
    bytesize: int = 8
    parity: str = "N"
    stopbits: float = 1
    rtscts: bool = False
    xonxoff: bool = False

    def merged(self, params: dict[str, str]) -> SerialLine:
        return SerialLine(
            baud=int(params.get("baud", self.baud)),
            bytesize=int(params.get("bytesize", self.bytesize)),
            parity=params.get("parity", self.parity),
            stopbits=float(params.get("stopbits", self.stopbits)),
            rtscts=params.get("rtscts", "1" if self.rtscts else "0") == "1",
            xonxoff=params.get("xonxoff", "1" if self.xonxoff else "0") == "1",
        )


class Transport(ABC):
    """Raw bytes to and from one device."""

    description = ""

    @abstractmethod
    async def read(self) -> bytes:
        """Wait for and return the next bytes (never empty).

        Raises:
            DeviceError: ``disconnected`` when the device went away.
        """

    @abstractmethod
    async def write(self, data: bytes) -> None:
        """Send all of ``data``. Raises :class:`DeviceError` when the device went away."""

    @abstractmethod
    def close(self) -> None:
        """Release the port; safe to call twice."""

    async def read_for(self, timeout_s: float) -> bytes:
        """The next bytes, or ``b""`` if none came within ``timeout_s``.

        ``asyncio.timeout``, not ``wait_for``, here and in every device module: Python
        3.11's ``wait_for`` can lose a cancellation that arrives as the awaited thing
        completes, and a driver that misses its cancellation never stops.
        """
        try:
            async with asyncio.timeout(timeout_s):
                return await self.read()
        except TimeoutError:
            return b""

    def discard_input(self) -> None:  # noqa: B027 - optional for transports
        """Drop bytes received but not read yet (stale replies)."""


def os_error(exc: OSError, what: str) -> DeviceError:
    """Translate an OS error on ``what`` into a :class:`DeviceError` with a stable code."""
    code = {
        errno.ENOENT: "not_found",
        errno.ENODEV: "not_found",
        errno.ENXIO: "not_found",
        errno.EACCES: "permission_denied",
        errno.EPERM: "permission_denied",
        errno.EBUSY: "busy",
        errno.EAGAIN: "busy",
        errno.ECONNREFUSED: "refused",
        errno.ETIMEDOUT: "timeout",
        errno.EHOSTUNREACH: "not_found",
        errno.ENETUNREACH: "not_found",
    }.get(exc.errno or 0, "disconnected")
    return DeviceError(f"{what}: {exc.strerror or exc}", code=code)


class Inbox:
    """Bytes received and not read yet, plus the error that ended the stream."""

    def __init__(self, description: str) -> None:
        self.description = description
        self.buffer = bytearray()
        self.error: DeviceError | None = None
        self.arrived = asyncio.Event()

    def feed(self, data: bytes) -> None:
        self.buffer += data
        self.arrived.set()

    def fail(self, message: str) -> None:
        if self.error is None:
            self.error = DeviceError(message, code="disconnected")
        self.arrived.set()

    async def read(self) -> bytes:
        while not self.buffer:
            if self.error is not None:
                raise self.error
            self.arrived.clear()
            await self.arrived.wait()
        data = bytes(self.buffer)
        self.buffer.clear()
        return data


class FdTransport(Transport):
    """A non-blocking file descriptor watched by the loop (serial ports, device files)."""

    def __init__(self, fd: int, description: str, on_close: Callable[[], None]) -> None:
        self.description = description
        self._fd = fd
        self._on_close = on_close
        self._loop = asyncio.get_running_loop()
        self._inbox = Inbox(description)
        self._closed = False
        try:
            self._loop.add_reader(fd, self._on_readable)
        except (OSError, ValueError) as exc:
            # epoll refuses regular files: a printer path that became a plain file (someone
            # ran `cat > /dev/usb/lp0` while it was unplugged).
            on_close()
            raise DeviceError(f"{description} is not a device the agent can watch: {exc}",
                              code="device_error") from exc

    def _on_readable(self) -> None:
        try:
            data = os.read(self._fd, _READ_CHUNK)
        except BlockingIOError:
            return
        except OSError as exc:
            # A pty whose other side closed, or an unplugged USB serial adapter: EIO.
            self._fail(f"reading {self.description}: {exc.strerror or exc}")
            return
        if data:
            self._inbox.feed(data)
        else:
            self._fail(f"{self.description} reports end of file")

    def _fail(self, message: str) -> None:
        self._loop.remove_reader(self._fd)
        self._inbox.fail(message)

    async def read(self) -> bytes:
        return await self._inbox.read()

    async def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            if self._inbox.error is not None:
                raise self._inbox.error
            try:
                sent = os.write(self._fd, view)
            except BlockingIOError:
                await self._writable()
                continue
            except OSError as exc:
                self._fail(f"writing to {self.description}: {exc.strerror or exc}")
                raise DeviceError(str(self._inbox.error), code="disconnected") from exc
            view = view[sent:]

    async def _writable(self) -> None:
        ready: asyncio.Future[None] = self._loop.create_future()

        def _ready() -> None:
            if not ready.done():
                ready.set_result(None)

        self._loop.add_writer(self._fd, _ready)
        try:
            async with asyncio.timeout(_WRITE_TIMEOUT_S):
                await ready
        except TimeoutError as exc:
            raise DeviceError(f"{self.description} took no data for {_WRITE_TIMEOUT_S:g} s",
                              code="timeout") from exc
        finally:
            self._loop.remove_writer(self._fd)

    def discard_input(self) -> None:
        self._inbox.buffer.clear()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._loop.remove_reader(self._fd)
        self._inbox.fail(f"{self.description} is closed")
        self._on_close()


def open_serial(conn: Connection, line: SerialLine) -> FdTransport:
    """Open a serial port exclusively with the driver's line settings (URL overrides)."""
    settings = line.merged(conn.params)
    try:
        port = serial.Serial(
            conn.path, baudrate=settings.baud, bytesize=settings.bytesize,
            parity=settings.parity, stopbits=settings.stopbits, rtscts=settings.rtscts,
            xonxoff=settings.xonxoff, timeout=0, exclusive=True,
        )
    except serial.SerialException as exc:
        cause = exc.__cause__ if isinstance(exc.__cause__, OSError) else None
        if cause is None and exc.errno is not None:
            cause = OSError(exc.errno, exc.strerror)
        if cause is not None:
            raise os_error(cause, f"opening {conn.path}") from exc
        if "lock" in str(exc).lower():
            raise DeviceError(f"{conn.path} is held by another process",
                              code="busy") from exc
        raise DeviceError(f"opening {conn.path}: {exc}", code="not_found") from exc
    except termios.error as exc:
        # Raised by tcsetattr when the port refuses the line settings (a pty reopened
        # with 7E1 does: EINVAL).
        raise DeviceError(f"{conn.path}: line settings refused: {exc}",
                          code="device_error") from exc
    except (OSError, ValueError) as exc:
        if isinstance(exc, OSError):
            raise os_error(exc, f"opening {conn.path}") from exc
        raise DeviceError(f"{conn.path}: bad line settings: {exc}",
                          code="device_error") from exc
    description = f"{conn.path} ({settings.baud} {settings.bytesize}{settings.parity}" \
                  f"{settings.stopbits:g})"
    return FdTransport(port.fileno(), description, port.close)


def open_device_file(conn: Connection) -> FdTransport:
    """Open a printer's device file (``/dev/usb/lp0``) read-write, non-blocking.

    usblp allows one open at a time (a second gets EBUSY), and bidirectional printers
    answer status requests on the same file.
    """
    try:
        fd = os.open(conn.path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
    except OSError as exc:
        raise os_error(exc, f"opening {conn.path}") from exc
    if not stat.S_ISCHR(os.fstat(fd).st_mode):
        os.close(fd)
        raise DeviceError(f"{conn.path} is not a character device (a plain file left where "
                          "the printer's device file belongs?)", code="device_error")
    return FdTransport(fd, conn.path, lambda: os.close(fd))


class TcpTransport(Transport, asyncio.Protocol):
    """A raw TCP connection (JetDirect port 9100, network scales and scanners)."""

    def __init__(self, description: str) -> None:
        self.description = description
        self._inbox = Inbox(description)
        self._transport: asyncio.WriteTransport | None = None
        self._drained = asyncio.Event()
        self._drained.set()

    @classmethod
    async def connect(cls, conn: Connection, timeout_s: float) -> TcpTransport:
        what = f"{conn.host}:{conn.port}"
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout_s):
                _, protocol = await loop.create_connection(lambda: cls(what), conn.host,
                                                           conn.port)
        except TimeoutError as exc:
            raise DeviceError(f"no TCP connection to {what} within {timeout_s:g} s",
                              code="timeout") from exc
        except OSError as exc:
            raise os_error(exc, f"connecting to {what}") from exc
        return protocol

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.WriteTransport)
        self._transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            # A device that loses power sends no FIN; keepalive notices within ~30 s, so a
            # listen-only connection (a TCP scanner) does not stay "ready" forever.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            for option, value in (("TCP_KEEPIDLE", 10), ("TCP_KEEPINTVL", 5),
                                  ("TCP_KEEPCNT", 4)):
                if hasattr(socket, option):
                    sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, option), value)

    def data_received(self, data: bytes) -> None:
        self._inbox.feed(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self._inbox.fail(f"{self.description} closed the connection"
                         + (f": {exc}" if exc else ""))
        self._drained.set()

    def pause_writing(self) -> None:
        self._drained.clear()

    def resume_writing(self) -> None:
        self._drained.set()

    # Transport
    async def read(self) -> bytes:
        return await self._inbox.read()

    async def write(self, data: bytes) -> None:
        if self._inbox.error is not None or self._transport is None:
            raise self._inbox.error or DeviceError("not connected", code="disconnected")
        self._transport.write(data)
        try:
            async with asyncio.timeout(_WRITE_TIMEOUT_S):
                await self._drained.wait()
        except TimeoutError as exc:
            raise DeviceError(f"{self.description} took no data for {_WRITE_TIMEOUT_S:g} s",
                              code="timeout") from exc
        if self._inbox.error is not None:
            raise self._inbox.error

    def discard_input(self) -> None:
        self._inbox.buffer.clear()

    def close(self) -> None:
        # abort, not close: close() waits to send what is buffered, and a stalled printer
        # takes nothing, so the socket (and half a job) would linger.
        if self._transport is not None:
            self._transport.abort()
        self._inbox.fail(f"{self.description} is closed")


async def open_transport(conn: Connection, *, line: SerialLine = SerialLine(),
                         connect_timeout_s: float = 5.0) -> Transport:
    """Open the byte transport named by ``conn`` (not USB: see :mod:`agent.devices.usb`)."""
    if conn.scheme == "serial":
        return open_serial(conn, line)
    if conn.scheme == "file":
        return open_device_file(conn)
    if conn.scheme == "tcp":
        return await TcpTransport.connect(conn, connect_timeout_s)
    raise DeviceError(f"{conn.raw}: no byte transport for {conn.scheme!r}", code="device_error")
