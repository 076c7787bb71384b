"""Scales: one driver for every protocol, the stability rule, and ``make_scale``.

:class:`Scale` talks to a scale through a :class:`~agent.devices.scales.ScaleProtocol`
(MT-SICS, Toledo 8217, SCP-01, continuous output, HID POS): it polls the polled ones
every ``poll_interval_ms`` or listens to the ones that send on their own, turns every
frame into a :class:`WeightReading` in grams on the bus, reports every frame that does
not parse as :class:`BadInput` and keeps going, and offers ``read_weight``, ``zero``,
``tare`` and ``clear_tare`` to jobs and the technician's CLI.

One exchange at a time: the poll loop, ``read_weight`` and the commands take turns on a
lock, and each reads the port until its answer arrives, so bytes that came in between
(junk, a late reply) are parsed and reported on the way.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import Any

from agent.bus import Bus
from agent.devices.base import Device
from agent.devices.readings import BadInput, WeightCondition, WeightReading
from agent.devices.scales import Action, Framer, ScaleFrame, ScaleProtocol
from agent.devices.scales.continuous import Continuous
from agent.devices.scales.hid_pos import HidPos
from agent.devices.scales.mt_sics import MtSics
from agent.devices.scales.scp01 import Scp01
from agent.devices.scales.toledo_8217 import Toledo8217
from agent.devices.settings import ScaleSettings
from agent.devices.transport import Transport
from agent.errors import DeviceError, ProtocolError

MISSED_POLLS = 3
"""A polled scale that leaves this many polls in a row unanswered is ``timeout``; a
streaming scale is ``timeout`` after this many ``reply_timeout_ms`` without a frame."""
COMMAND_TIMEOUT_MIN_S = 3.0
"""Zero and tare wait for the pan to settle (MT-SICS up to the balance's own timeout)."""
CONNECT_TIMEOUT_S = 5.0
"""TCP connection to a network scale."""

PROTOCOLS: dict[str, type[ScaleProtocol[Any]]] = {
    "mt-sics": MtSics,
    "toledo-8217": Toledo8217,
    "scp-01": Scp01,
    "continuous": Continuous,
    "hid-pos": HidPos,
}


class StabilityTracker:
    """Decides which readings are ``settled``: one per parcel placed on the pan.

    A reading is a *candidate* when the protocol's stable flag was set on
    ``stable_count`` weight readings in a row (this one the last) whose grams all lie
    within ``stable_band_g`` of each other, and it is not below ``empty_below_g`` (an
    empty pan is not a parcel). A candidate settles when the pan was emptied since the
    last settled reading (a weight reading below ``empty_below_g``, or a condition that
    is not a weight: under zero, overload, underload) or when it lies more than
    ``stable_band_g`` away from the last settled weight (the weight left the band and
    settled again). Otherwise it is the same placement, already reported.

    So two parcels of the same weight, one after the other with the pan emptied between,
    give two settled readings; a parcel left on the pan gives one, however long it
    stays; an item added to a settled parcel gives a new settled reading.
    """

    def __init__(self, stable_count: int, stable_band_g: float, empty_below_g: float) -> None:
        self.stable_count = stable_count
        self.stable_band_g = stable_band_g
        self.empty_below_g = empty_below_g
        self.emptied = True
        self.settled_g: float | None = None
        self._run: deque[float] = deque()

    def restart(self) -> None:
        """The readings stopped (reconnection): the next run starts afresh."""
        self._run.clear()

    def update(self, condition: WeightCondition, grams: float | None, stable: bool) -> bool:
        """Take one reading; ``True`` when it is the settled reading of a placement."""
        if condition is not WeightCondition.WEIGHT:
            self._run.clear()
            self.emptied = True
            return False
        if grams is not None and grams < self.empty_below_g:
            self.emptied = True
        if grams is None or not stable:
            self._run.clear()
            return False
        self._run.append(grams)
        while max(self._run) - min(self._run) > self.stable_band_g:
            self._run.popleft()
        if len(self._run) < self.stable_count or grams < self.empty_below_g:
            return False
        moved = self.settled_g is None or abs(grams - self.settled_g) > self.stable_band_g
        if not (self.emptied or moved):
            return False
        self.emptied = False
        self.settled_g = grams
        return True


class Scale(Device[ScaleSettings]):
    """A scale on the bench, whichever protocol it speaks.

    Attributes:
        latest: the last reading of any condition.
        last_settled: the last settled reading (the last parcel's weight).
        frames: frames that parsed; ``bad_frames``: frames reported as ``BadInput``.
    """

    kind = "scale"

    def __init__(self, name: str, settings: ScaleSettings, bus: Bus,
                 protocol: ScaleProtocol[Any]) -> None:
        super().__init__(name, settings, bus)
        self.protocol = protocol
        self.tracker = StabilityTracker(settings.stable_count, settings.stable_band_g,
                                        settings.empty_below_g)
        self.latest: WeightReading | None = None
        self.last_settled: WeightReading | None = None
        self.frames = 0
        self.bad_frames = 0
        self._reply_timeout_s = settings.reply_timeout_ms / 1000
        self._transport: Transport | None = None
        self._framer: Framer = protocol.framer()
        self._chunks: deque[bytes] = deque()
        self._lock = asyncio.Lock()
        self._waiters: list[asyncio.Future[WeightReading]] = []
        self._misses = 0
        self._held: tuple[ScaleFrame, bytes] | None = None

    # ------------------------------------------------------------ public API
    async def read_weight(self) -> WeightReading:
        """A fresh reading, within ``reply_timeout_ms``.

        A polled scale is asked at once; a streaming scale's next frame is awaited (a
        HID scale's last report is read again every ``poll_interval_ms``).

        Raises:
            DeviceError: ``timeout`` when none came in time, or the disconnect's code.
        """
        if self.protocol.weigh_request is not None:
            reading = await self._poll()
            if reading is None:
                raise DeviceError(f"{self.name}: no weight within "
                                  f"{self.settings.reply_timeout_ms} ms", code="timeout")
            return reading
        self._require_transport()
        waiter: asyncio.Future[WeightReading] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            async with asyncio.timeout(self._reply_timeout_s):
                return await waiter
        except TimeoutError:
            raise DeviceError(f"{self.name}: no weight within "
                              f"{self.settings.reply_timeout_ms} ms",
                              code="timeout") from None
        finally:
            if waiter in self._waiters:
                self._waiters.remove(waiter)

    async def zero(self) -> None:
        """Zero the scale (empty pan).

        Raises:
            DeviceError: ``unsupported``, ``command_failed`` (moving, out of the zero
                range), ``timeout``, or the disconnect's code.
        """
        await self._command("zero")

    async def tare(self) -> None:
        """Tare the weight on the pan (the box): later readings are net.

        Raises:
            DeviceError: as :meth:`zero`.
        """
        await self._command("tare")

    async def clear_tare(self) -> None:
        """Clear the tare: later readings are gross.

        Raises:
            DeviceError: as :meth:`zero`.
        """
        await self._command("clear_tare")

    def details(self) -> dict[str, Any]:
        """Protocol, frame counters, the last reading and the last settled reading."""
        return {
            "protocol": self.protocol.name,
            "frames": self.frames,
            "bad_frames": self.bad_frames,
            "last_reading": _summary(self.latest),
            "last_settled": _summary(self.last_settled),
        }

    # ------------------------------------------------------------ Device
    async def _open(self) -> None:
        self._transport = await self.protocol.open(self.connection, CONNECT_TIMEOUT_S)
        self._framer = self.protocol.framer()
        self._chunks.clear()
        self._misses = 0
        self._held = None
        self.tracker.restart()
        if self.protocol.weigh_request is not None:
            if await self._poll() is None:
                raise DeviceError(f"{self.name} did not answer {self.protocol.weigh_request!r} "
                                  f"within {self.settings.reply_timeout_ms} ms "
                                  f"(is it a {self.protocol.name} scale, line settings?)",
                                  code="timeout")
        elif not self.protocol.reports_on_change:
            await self._listen_once()

    async def _serve(self) -> None:
        if self.protocol.weigh_request is not None:
            await self._poll_forever()
        else:
            while True:
                await self._listen_once()

    async def _close(self) -> None:
        transport, self._transport = self._transport, None
        if transport is not None:
            transport.close()
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_exception(DeviceError(f"{self.name} went away",
                                                 code="disconnected"))
        self._waiters.clear()

    # ------------------------------------------------------------ exchanges
    async def _poll_forever(self) -> None:
        loop = asyncio.get_running_loop()
        interval_s = self.settings.poll_interval_ms / 1000
        while True:
            started = loop.time()
            await self._poll()
            await asyncio.sleep(max(0.0, interval_s - (loop.time() - started)))

    async def _poll(self) -> WeightReading | None:
        """Ask for one weight: the reading, or ``None`` if none came in time.

        Raises:
            DeviceError: ``timeout`` on the :data:`MISSED_POLLS`-th miss in a row.
        """
        request = self.protocol.weigh_request
        assert request is not None
        async with self._lock:
            transport = self._require_transport()
            await transport.write(request)
            deadline = asyncio.get_running_loop().time() + self._reply_timeout_s
            while (got := await self._next_reply(deadline)) is not None:
                reading = self._weigh(*got)
                if reading is not None:
                    self._misses = 0
                    return reading
        self._misses += 1
        if self._misses >= MISSED_POLLS:
            raise DeviceError(f"{self.name}: no weight reply to {request!r} within "
                              f"{self.settings.reply_timeout_ms} ms, {self._misses} "
                              f"polls in a row", code="timeout")
        return None

    async def _listen_once(self) -> None:
        """Wait for the next frame of a scale that sends on its own.

        A scale that reports only changes (HID POS) still holds its last report: when
        none comes for ``poll_interval_ms`` that report is read again, so a parcel
        resting on the pan gives a run of equal readings as on a polled scale.
        """
        loop = asyncio.get_running_loop()
        if self.protocol.reports_on_change:
            wait_s = self.settings.poll_interval_ms / 1000
            got = await self._next_reply(loop.time() + wait_s)
            if got is None:
                if self._held is not None:
                    self._publish(*self._held)
                return
        else:
            silence_s = MISSED_POLLS * self._reply_timeout_s
            got = await self._next_reply(loop.time() + silence_s)
            if got is None:
                raise DeviceError(f"{self.name}: no valid frame for {silence_s:g} s "
                                  f"({self.bad_frames} bad frames so far: line settings?)",
                                  code="timeout")
        self._weigh(*got)

    async def _command(self, action: Action) -> None:
        request = self.protocol.request(action)
        timeout_s = max(self._reply_timeout_s, COMMAND_TIMEOUT_MIN_S)
        async with self._lock:
            transport = self._require_transport()
            self.log.info("%s: %s (%r)", self.name, action, request)
            await transport.write(request)
            deadline = asyncio.get_running_loop().time() + timeout_s
            while (got := await self._next_reply(deadline)) is not None:
                chunk, reply = got
                if self.protocol.outcome(action, reply):
                    return
                self._weigh(chunk, reply)  # a weight that came in between
        raise DeviceError(f"{self.name}: no answer to {action.replace('_', ' ')} within "
                          f"{timeout_s:g} s", code="timeout")

    async def _next_reply(self, deadline: float | None) -> tuple[bytes, Any] | None:
        """The next frame that parses, with its bytes; ``None`` after ``deadline``.

        Frames that do not parse on the way are reported as :class:`BadInput`.
        """
        transport = self._require_transport()
        loop = asyncio.get_running_loop()
        while True:
            while self._chunks:
                chunk = self._chunks.popleft()
                try:
                    reply = self.protocol.parse(chunk)
                except ProtocolError as exc:
                    self._bad(chunk, exc)
                    continue
                self.frames += 1
                self.seen()
                return chunk, reply
            if deadline is not None and deadline <= loop.time():
                return None
            # asyncio.timeout, not wait_for: Python 3.11's wait_for can swallow the
            # cancellation that stops the driver when a read completes at that moment.
            try:
                async with asyncio.timeout_at(deadline):
                    data = await transport.read()
            except TimeoutError:
                return None
            self._chunks.extend(self._framer.feed(data))

    def _require_transport(self) -> Transport:
        if self._transport is None:
            raise DeviceError(f"{self.name} is not connected ({self.state.value})",
                              code=self.code or "disconnected")
        return self._transport

    # ------------------------------------------------------------ frames to readings
    def _weigh(self, chunk: bytes, reply: Any) -> WeightReading | None:
        try:
            frame = self.protocol.weight(reply)
        except ProtocolError as exc:
            self._bad(chunk, exc)
            return None
        return None if frame is None else self._publish(frame, chunk)

    def _publish(self, frame: ScaleFrame, raw: bytes) -> WeightReading:
        if frame.fault is not None:
            self.fault("device_error", f"{self.name}: {frame.fault}")
        else:
            self.clear_fault()
        settled = self.tracker.update(frame.condition, frame.grams, frame.stable)
        reading = WeightReading(self.name, frame.condition, frame.grams, frame.stable,
                                frame.net, settled, raw)
        self.latest = reading
        self._held = (frame, raw)
        if settled:
            self.last_settled = reading
            self.log.info("%s: settled at %g g%s", self.name, reading.grams,
                          " net" if reading.net else "")
        self.bus.publish(reading)
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(reading)
        return reading

    def _bad(self, raw: bytes, error: ProtocolError) -> None:
        self.bad_frames += 1
        level = logging.WARNING if self.bad_frames == 1 or self.bad_frames % 100 == 0 \
            else logging.DEBUG
        self.log.log(level, "%s: bad frame %d: %s", self.name, self.bad_frames, error)
        self.bus.publish(BadInput(self.name, "protocol_error", str(error), raw))


def _summary(reading: WeightReading | None) -> dict[str, Any] | None:
    if reading is None:
        return None
    return {"condition": reading.condition.value, "grams": reading.grams,
            "stable": reading.stable, "net": reading.net, "settled": reading.settled,
            "at": reading.at}


def make_scale(name: str, settings: ScaleSettings, bus: Bus) -> Scale:
    """The scale driver for ``settings.protocol``."""
    return Scale(name, settings, bus, PROTOCOLS[settings.protocol]())
