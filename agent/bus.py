"""In-process event bus: devices publish scans, weights and state changes; jobs subscribe.

Publishing never blocks a driver. Each subscriber has its own bounded queue; when a slow
subscriber's queue is full its oldest item is dropped and counted (``dropped``), so a
stuck job cannot stall a scanner or grow memory without bound.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, Generic, TypeVar

log = logging.getLogger("agent.bus")

T = TypeVar("T")


class Subscription(Generic[T]):
    """A queue of the items one subscriber asked for; iterate it or ``await get()``."""

    def __init__(self, bus: Bus, accept: Callable[[Any], bool], maxsize: int) -> None:
        self._bus = bus
        self._accept = accept
        self._queue: asyncio.Queue[T] = asyncio.Queue(maxsize)
        self.dropped = 0

    def _offer(self, item: Any) -> None:
        if not self._accept(item):
            return
        if self._queue.full():
            self._queue.get_nowait()
            self.dropped += 1
            if self.dropped in (1, 10, 100) or self.dropped % 1000 == 0:
                log.warning("a slow subscriber lost %d bus items", self.dropped)
        self._queue.put_nowait(item)

    async def get(self) -> T:
        return await self._queue.get()

    def get_nowait(self) -> T | None:
        try:
            return self._queue.get_nowait()
        except asyncio.QueueEmpty:
            return None

    def close(self) -> None:
        self._bus._subscriptions.discard(self)

    def __aiter__(self) -> Subscription[T]:
        return self

    async def __anext__(self) -> T:
        return await self._queue.get()

    def __enter__(self) -> Subscription[T]:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


class Bus:
    """Fan-out of device items to subscribers, on the loop thread only."""

    def __init__(self) -> None:
        self._subscriptions: set[Subscription[Any]] = set()

    def subscribe(self, kind: type[T], *, device: str | None = None,
                  maxsize: int = 1000) -> Subscription[T]:
        """Items of type ``kind`` (from ``device`` only, when given)."""
        def accept(item: Any) -> bool:
            if not isinstance(item, kind):
                return False
            return device is None or getattr(item, "device", None) == device

        subscription: Subscription[T] = Subscription(self, accept, maxsize)
        self._subscriptions.add(subscription)
        return subscription

    def publish(self, item: Any) -> None:
        for subscription in list(self._subscriptions):
            subscription._offer(item)
