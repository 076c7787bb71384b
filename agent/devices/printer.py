"""Label and receipt printers: raw jobs out, the printer's own status in.

A :class:`Printer` owns one connection to one printer (raw TCP 9100, USB bulk endpoints,
a device file such as ``/dev/usb/lp0``, or a serial port) and speaks one language
(:mod:`agent.devices.printers`): ZPL, TSPL, EPL or ESC/POS. Its one primitive is
:meth:`Printer.send` (a job's raw bytes); :meth:`Printer.query_status` asks the printer
itself, never a spooler. Everything else (the print-job queue) is built on those two.

Raw TCP printers often serve one connection at a time and keep a second one waiting, so
the driver opens one connection and keeps it for every job and status request. A lock
serializes access: one job or one status request at a time, so a status reply is never
mixed into a job. One reader task takes every byte the printer sends (a closed connection
or a pulled cable shows at once); bytes that arrive unasked are dropped before the next
status request, and a reply may arrive in any number of pieces.

While idle, the status is asked every ``status_interval_s`` (a job's own requests reset
the timer) and its most important fault becomes the device's state: ``faulted`` with
``paper_out``, ``head_open``... or ``status_unknown`` when the printer does not answer
within ``status_timeout_ms``; ``ready`` again when the printer says so. A printer that
closes the connection or refuses it is ``disconnected``; the supervisor reconnects.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

from agent.bus import Bus
from agent.devices.base import GONE_CODES, Device
from agent.devices.printers import (
    PrinterLanguage,
    PrinterStatus,
    garbled_status,
    unknown_status,
)
from agent.devices.printers.epl import EplLanguage
from agent.devices.printers.escpos import EscposLanguage
from agent.devices.printers.tspl import TsplLanguage
from agent.devices.printers.zpl import ZplLanguage
from agent.devices.readings import BadInput, DeviceState
from agent.devices.settings import PrinterSettings
from agent.devices.transport import Transport, open_transport
from agent.devices.usb import open_usb
from agent.errors import DeviceError, ProtocolError
from agent.tasks import task_name

_RX_LIMIT = 64 * 1024
"""Unasked bytes kept at most until the next status request drops them."""
_CONNECT_TIMEOUT_S = 5.0
_ONE_WAY = "the printer has no return channel (no USB IN endpoint): it cannot report status"


LANGUAGES: dict[str, Callable[[PrinterSettings], PrinterLanguage]] = {
    "zpl": lambda settings: ZplLanguage(),
    "tspl": lambda settings: TsplLanguage(),
    "epl": lambda settings: EplLanguage(),
    "escpos": lambda settings: EscposLanguage(settings.escpos_profile),
}
"""``PrinterSettings.language`` -> the language the driver speaks."""


class Printer(Device[PrinterSettings]):
    """One printer: its connection, its language, its last status and job counters.

    Args:
        name: the device's name in the config (``[devices.NAME]``).
        settings: the validated ``PrinterSettings``.
        bus: where state changes and ``BadInput`` (garbled status replies) go.
        language: the :class:`PrinterLanguage` the printer speaks.
    """

    kind = "printer"

    def __init__(self, name: str, settings: PrinterSettings, bus: Bus,
                 language: PrinterLanguage) -> None:
        super().__init__(name, settings, bus)
        self.language = language
        self.last_status: PrinterStatus | None = None
        self.jobs_sent = 0
        self.bytes_sent = 0
        self.labels_sent = 0
        self.jobs_printed = 0
        """Jobs the printer confirmed printed (ZPL ``~HS``), counted by the print queue."""
        self.labels_printed = 0
        self._transport: Transport | None = None
        self._reader: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self._rx = bytearray()
        self._rx_changed = asyncio.Event()
        self._gone: DeviceError | None = None
        self._pending_status: PrinterStatus | None = None
        self._one_way = False
        self._last_query_s = 0.0

    # ------------------------------------------------------------ public API
    async def send(self, data: bytes) -> None:
        """Send one job's raw bytes to the printer, whole, between status requests.

        Raises:
            DeviceError: ``disconnected`` when the printer is not connected or went away,
                ``timeout`` when it took no data for 30 s; the connection is then dropped
                and reopened by the supervisor.
        """
        async with self._lock:
            await self._write(self._connected(), data)
        self.jobs_sent += 1
        self.bytes_sent += len(data)
        self.labels_sent += self.language.labels_in(data) or 0

    async def query_status(self) -> PrinterStatus:
        """Ask the printer for its status now, and update the device state from it.

        A printer that does not answer within ``status_timeout_ms`` is ``status_unknown``
        and a reply that does not parse is ``protocol_error`` (also published as
        :class:`BadInput`): both have ``ready`` ``None``, never ``True``.

        Raises:
            DeviceError: when the printer is not connected or went away.
        """
        async with self._lock:
            status = await self._ask_status()
        self._apply(status)
        return status

    @property
    def connected(self) -> bool:
        """Whether a connection is open and has not failed (a job can be sent now)."""
        return self._transport is not None and self._gone is None

    @property
    def can_report_status(self) -> bool:
        """``False`` for a printer without a return channel (USB without an IN endpoint)."""
        return not self._one_way

    @property
    def confirms_printing(self) -> bool:
        """Whether the printer says when a job's labels have printed (ZPL ``~HS``)."""
        return self.language.name == "zpl" and self.can_report_status

    def labels_in(self, job: bytes) -> int | None:
        """How many labels ``job`` prints in this printer's language (``None``: unknown)."""
        return self.language.labels_in(job)

    def details(self) -> dict[str, Any]:
        return {
            "language": self.language.name,
            "jobs_sent": self.jobs_sent,
            "bytes_sent": self.bytes_sent,
            "labels_sent": self.labels_sent,
            "jobs_printed": self.jobs_printed,
            "labels_printed": self.labels_printed,
            "status": self.last_status.as_dict(full=False) if self.last_status else None,
        }

    # ------------------------------------------------------------ Device
    async def _open(self) -> None:
        self._rx.clear()
        self._gone = None
        self._one_way = False
        if self.connection.scheme == "usb":
            transport: Transport = await open_usb(self.connection, endpoint="bulk")
        else:
            transport = await open_transport(self.connection, line=self.language.line,
                                             connect_timeout_s=_CONNECT_TIMEOUT_S)
        self._transport = transport
        self._reader = asyncio.create_task(self._read_forever(transport),
                                           name=task_name(f"{self.name}.printer.read"))
        async with self._lock:
            self._pending_status = await self._ask_status()

    async def _serve(self) -> None:
        status, self._pending_status = self._pending_status, None
        if status is not None:
            self._apply(status)
        loop = asyncio.get_running_loop()
        interval_s = self.settings.status_interval_s
        while True:
            delay_s = self._last_query_s + interval_s - loop.time()
            if delay_s > 0:
                if self._reader is not None and not self._reader.done():
                    await asyncio.wait({self._reader}, timeout=delay_s)
                else:
                    await asyncio.sleep(delay_s)  # a printer without a return channel
                self._raise_if_gone()
                continue
            await self.query_status()

    async def _close(self) -> None:
        reader, self._reader = self._reader, None
        if reader is not None:
            reader.cancel()
            await asyncio.wait({reader})
        transport, self._transport = self._transport, None
        if transport is not None:
            transport.close()
        self._rx.clear()

    # ------------------------------------------------------------ internals
    def _connected(self) -> Transport:
        self._raise_if_gone()
        if self._transport is None:
            raise DeviceError(f"{self.name} is not connected", code="disconnected")
        return self._transport

    def _raise_if_gone(self) -> None:
        if self._gone is not None:
            raise DeviceError(str(self._gone), code=self._gone.code)

    async def _read_forever(self, transport: Transport) -> None:
        try:
            while True:
                self._rx += await transport.read()
                if len(self._rx) > _RX_LIMIT:
                    del self._rx[:-_RX_LIMIT]
                self._rx_changed.set()
        except DeviceError as exc:
            if exc.code == "unsupported":
                # A USB printer without a bulk IN endpoint: it prints, it never answers.
                self._one_way = True
                self.log.info("%s: %s; its status stays unknown", self.name, exc)
            elif self._gone is None:
                self._gone = exc
            self._rx_changed.set()
        except Exception as exc:
            # A bug here must end the connection, not leave the printer "status unknown".
            self.log.exception("%s: reading the printer's replies failed", self.name)
            if self._gone is None:
                self._gone = DeviceError(f"reader failure: {exc!r}", code="device_error")
            self._rx_changed.set()

    async def _write(self, transport: Transport, data: bytes) -> None:
        try:
            await transport.write(data)
        except DeviceError as exc:
            # Half a job leaves the printer's parser mid-command: start a new connection.
            if self._gone is None:
                self._gone = exc if exc.code in GONE_CODES else DeviceError(
                    str(exc), code="disconnected")
            transport.close()
            raise

    async def _ask_status(self) -> PrinterStatus:
        """One status exchange; the caller holds the lock."""
        transport = self._connected()
        loop = asyncio.get_running_loop()
        timeout_ms = self.settings.status_timeout_ms
        if self._one_way:
            self._last_query_s = loop.time()
            return unknown_status(b"", _ONE_WAY)
        transport.discard_input()
        self._rx.clear()
        deadline = loop.time() + timeout_ms / 1000
        try:
            # A printer whose receive buffer is full (paused mid-batch) takes no bytes.
            async with asyncio.timeout(timeout_ms / 1000):
                await self._write(transport, self.language.status_request())
        except TimeoutError:
            # Part of the request may sit in a buffer: a new connection starts clean.
            self._last_query_s = loop.time()
            if self._gone is None:
                self._gone = DeviceError(f"the printer took no {self.language.status_command} "
                                         f"request within {timeout_ms} ms", code="timeout")
            transport.close()
            return unknown_status(b"", f"the printer took no {self.language.status_command} "
                                       f"request within {timeout_ms} ms (buffer full?)")
        try:
            while True:
                self._rx_changed.clear()
                self._raise_if_gone()
                reply = bytes(self._rx)
                if self._one_way:
                    status = unknown_status(reply, _ONE_WAY)
                    break
                if self.language.reply_complete(reply):
                    status = self.language.parse_status(reply)
                    break
                remaining_s = deadline - loop.time()
                if remaining_s <= 0:
                    status = self.language.reply_timed_out(reply, timeout_ms)
                    break
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(remaining_s):
                        await self._rx_changed.wait()
        except ProtocolError as exc:
            reply = bytes(self._rx)
            status = garbled_status(reply, exc)
            self.log.debug("%s: status reply does not parse: %s", self.name, exc)
            self.bus.publish(BadInput(self.name, "protocol_error", str(exc), reply))
        self._rx.clear()
        self._last_query_s = loop.time()
        return status

    def _apply(self, status: PrinterStatus) -> None:
        """The status becomes the device's state (only while connected)."""
        self.last_status = status
        if self.state not in (DeviceState.READY, DeviceState.FAULTED):
            self._pending_status = status
            return
        if status.ready is not None:
            self.seen()
        blocking = status.blocking_faults
        if blocking:
            self.fault(blocking[0], status.message)
        else:
            self.clear_fault()


def make_printer(name: str, settings: PrinterSettings, bus: Bus) -> Printer:
    """The printer driver for ``settings.language`` (zpl, tspl, epl, escpos).

    ``escpos_profile`` was checked when the config was loaded.
    """
    return Printer(name, settings, bus, LANGUAGES[settings.language](settings))
