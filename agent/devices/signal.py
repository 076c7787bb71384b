"""Signal devices: a stack light or buzzer behind a relay board, for the packer's eyes and ears.

Cheap relay boards take fixed byte commands over a serial port (USB-serial CH340 boards:
``A0 01 01 A2`` switches relay 1 on, ``A0 01 00 A1`` off, the last byte being the sum of
the first three) or a TCP socket (network relay modules take the same frames). Stack
lights with a built-in buzzer are wired to such relays. The driver knows no board: each
signal (``good``, ``bad``, ``intercept``) is a :class:`SignalPattern` in the config, the
``on`` bytes, then after ``ms`` the ``off`` bytes. A new signal replaces the one showing
(its ``off`` bytes go first), so the last verdict is what the packer sees.

Its one primitive is :meth:`Signal.show`. The boards do not answer, so the driver knows
the device is there when the port opens and each write is taken; a write that fails
ends the connection and the supervisor reconnects.
"""

from __future__ import annotations

import asyncio
from typing import Any

from agent.bus import Bus
from agent.devices.base import Device
from agent.devices.settings import SignalPattern, SignalSettings
from agent.devices.transport import SerialLine, Transport, open_transport
from agent.errors import DeviceError

SIGNALS = ("good", "bad", "intercept")
_LINE = SerialLine(9600)
"""CH340 relay boards: 9600 8N1."""
_CONNECT_TIMEOUT_S = 5.0


class SignalDevice(Device[SignalSettings]):
    """One relay board driving a stack light or buzzer."""

    kind = "signal"

    def __init__(self, name: str, settings: SignalSettings, bus: Bus) -> None:
        super().__init__(name, settings, bus)
        self._transport: Transport | None = None
        self._queue: asyncio.Queue[str] = asyncio.Queue(maxsize=8)
        self.shown = 0
        self.last_signal: str | None = None

    def show(self, signal: str) -> None:
        """Show ``good``, ``bad`` or ``intercept`` (ignored when not configured or offline)."""
        if self._pattern(signal) is None or self._transport is None:
            return
        if self._queue.full():  # a burst keeps the newest: the latest verdict matters
            self._queue.get_nowait()
        self._queue.put_nowait(signal)

    def _pattern(self, signal: str) -> SignalPattern | None:
        pattern: SignalPattern | None = getattr(self.settings, signal, None) \
            if signal in SIGNALS else None
        return pattern

    def details(self) -> dict[str, Any]:
        return {"signals": [s for s in SIGNALS if self._pattern(s) is not None],
                "shown": self.shown, "last_signal": self.last_signal}

    async def _open(self) -> None:
        if self.connection.scheme not in ("serial", "tcp"):
            raise DeviceError(f"{self.connection.raw}: signal devices are driven over "
                              f"serial:// or tcp:// relay boards", code="unsupported")
        self._transport = await open_transport(self.connection, line=_LINE,
                                               connect_timeout_s=_CONNECT_TIMEOUT_S)
        while not self._queue.empty():  # signals from before the device was back are stale
            self._queue.get_nowait()

    async def _serve(self) -> None:
        assert self._transport is not None
        transport = self._transport
        signal = await self._queue.get()
        while True:
            pattern = self._pattern(signal)
            assert pattern is not None
            await transport.write(pattern.on_bytes)
            self.shown += 1
            self.last_signal = signal
            self.seen()
            try:
                async with asyncio.timeout(pattern.ms / 1000):
                    signal = await self._queue.get()  # a newer signal cuts this one short
            except TimeoutError:
                if pattern.off_bytes:
                    await transport.write(pattern.off_bytes)
                signal = await self._queue.get()
                continue
            if pattern.off_bytes:
                await transport.write(pattern.off_bytes)

    async def _close(self) -> None:
        transport, self._transport = self._transport, None
        if transport is not None:
            transport.close()


def make_signal(name: str, settings: SignalSettings, bus: Bus) -> SignalDevice:
    return SignalDevice(name, settings, bus)
