"""What every device driver shares: its state, its fault handling, its reconnect loop.

A driver subclasses :class:`Device` and implements three coroutines: ``_open`` (reach
the device and check it answers), ``_serve`` (talk to it until it goes away, raising
:class:`DeviceError`) and ``_close``. :meth:`Device.run` is the supervisor: it opens,
serves, and on any error records the fault, closes, waits with jittered exponential
backoff and tries again, forever, so an unplugged device comes back without a restart.

Every fault goes through :meth:`Device._set_state` (Klipper routes hardware faults
through one function too): the state, a stable code and a human message, published on
the bus as a :class:`StateChange` only when something changed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, ClassVar, Generic, TypeVar

from agent.bus import Bus
from agent.devices.connection import Connection
from agent.devices.readings import DeviceState, StateChange
from agent.devices.settings import DeviceSettingsBase
from agent.errors import DeviceError
from agent.tasks import jittered_backoff_s

log = logging.getLogger("agent.devices")

GONE_CODES = frozenset({"not_found", "disconnected", "refused", "timeout"})
"""Codes that mean the device is not reachable (``disconnected``) rather than faulted."""


SettingsT = TypeVar("SettingsT", bound=DeviceSettingsBase)


class Device(ABC, Generic[SettingsT]):
    """One configured device and its driver's supervisor; ``settings`` is its kind's."""

    kind: ClassVar[str]

    def __init__(self, name: str, settings: SettingsT, bus: Bus) -> None:
        self.name = name
        self.settings = settings
        self.connection: Connection = settings.conn
        self.bus = bus
        self.state = DeviceState.CONNECTING
        self.code: str | None = None
        self.message: str | None = None
        self.since = time.time()
        self.last_seen: float | None = None
        self.connects = 0
        self.failures = 0
        self.retry_at: float | None = None
        self.last_fault: dict[str, Any] | None = None
        """The latest fault or disconnect ``{code, message, at}``, kept after recovery: what
        a technician asks first about a device that works again."""
        self.ready = asyncio.Event()
        self.on_change: Callable[[StateChange], None] | None = None
        self.log = logging.LoggerAdapter(log, {"device": name})

    # ------------------------------------------------------------ to implement
    @abstractmethod
    async def _open(self) -> None:
        """Reach the device and check that it answers; raise :class:`DeviceError` if not."""

    @abstractmethod
    async def _serve(self) -> None:
        """Talk to the device until it goes away; end by raising :class:`DeviceError`."""

    @abstractmethod
    async def _close(self) -> None:
        """Release the port. Called after every ``_open`` attempt, even a failed one."""

    def details(self) -> dict[str, Any]:
        """Kind-specific facts for the status (model, last reading, counters)."""
        return {}

    # ------------------------------------------------------------ supervisor
    async def run(self) -> None:
        """Open, serve, recover; until cancelled. Never raises a device's error.

        The state starts ``connecting``; after a failure it stays ``disconnected`` or
        ``faulted`` through the retries and turns ``ready`` when an attempt succeeds.
        """
        attempt = 0
        while True:
            # Retries keep the failed state (and its code) until the device is back, so an
            # unplugged device is one `disconnected` event, not one per attempt.
            opened_at: float | None = None
            try:
                await self._open()
                opened_at = time.monotonic()
                self.connects += 1
                self.seen()
                self._set_state(DeviceState.READY)
                await self._serve()
                raise DeviceError("the driver stopped serving", code="disconnected")
            except DeviceError as exc:
                self.fail(exc)
            except Exception as exc:
                # A driver bug must not stop the bench: fault, log the trace, retry.
                self.log.exception("%s: driver failure", self.name)
                self.fail(DeviceError(f"driver failure: {exc!r}", code="device_error"))
            finally:
                self.ready.clear()
                try:
                    await self._close()
                except Exception:
                    self.log.exception("%s: error while closing", self.name)
            # The backoff starts over only after the device worked for a while: one that
            # answers and drops at once (a flapping cable) keeps backing off.
            if opened_at is not None and \
                    time.monotonic() - opened_at >= self.settings.reconnect_max_s:
                attempt = 0
            attempt += 1
            self.failures += 1
            delay = jittered_backoff_s(attempt, self.settings.reconnect_min_s,
                                       self.settings.reconnect_max_s)
            self.retry_at = time.time() + delay
            self.log.debug("%s: retrying in %.1f s", self.name, delay)
            await asyncio.sleep(delay)
            self.retry_at = None

    def fail(self, error: DeviceError) -> None:
        """Record ``error`` as the device's state: disconnected or faulted, by its code."""
        state = DeviceState.DISCONNECTED if error.code in GONE_CODES else DeviceState.FAULTED
        self._set_state(state, error.code, str(error))

    def fault(self, code: str, message: str) -> None:
        """The device is connected but reports a fault (paper out, head open...)."""
        self._set_state(DeviceState.FAULTED, code, message)

    def clear_fault(self) -> None:
        """The device reported no fault any more."""
        if self.state is DeviceState.FAULTED:
            self._set_state(DeviceState.READY)

    def seen(self) -> None:
        """The device just said something valid."""
        self.last_seen = time.time()

    def _set_state(self, state: DeviceState, code: str | None = None,
                   message: str | None = None) -> None:
        if (state, code, message) == (self.state, self.code, self.message):
            return
        self.state, self.code, self.message = state, code, message
        self.since = time.time()
        if state is DeviceState.READY:
            self.ready.set()
            self.log.info("%s (%s) ready on %s", self.name, self.kind, self.connection.describe())
        else:
            self.ready.clear()
        if state in (DeviceState.DISCONNECTED, DeviceState.FAULTED):
            self.last_fault = {"state": state.value, "code": code, "message": message,
                               "at": self.since}
            level = logging.WARNING if state is DeviceState.DISCONNECTED else logging.ERROR
            self.log.log(level, "%s (%s) %s: %s: %s", self.name, self.kind, state.value,
                         code, message)
        change = StateChange(self.name, self.kind, state, code, message)
        self.bus.publish(change)
        if self.on_change is not None:
            try:
                self.on_change(change)
            except Exception:
                # Reporting must not take the supervisor (and the bench) down.
                self.log.exception("%s: could not report the state change", self.name)

    def status(self) -> dict[str, Any]:
        """JSON-safe status: state, fault, when, and the driver's details."""
        return {
            "name": self.name,
            "kind": self.kind,
            "role": self.settings.role,
            "connection": self.connection.describe(),
            "state": self.state.value,
            "code": self.code,
            "message": self.message,
            "since": self.since,
            "last_seen": self.last_seen,
            "connects": self.connects,
            "failures": self.failures,
            "retry_at": self.retry_at,
            "last_fault": self.last_fault,
            **self.details(),
        }
