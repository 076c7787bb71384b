"""The bench's order book: the orders it may pack, their intercepts, and lookups.

The daemon's ``orders`` service. The central system pushes orders (``order.push``) and
holds, releases and cancels them (:mod:`agent.jobs.order_commands`); the packing job
finds the parcel a scanned code opens (:meth:`OrderBook.find`), asks the central system
for one the bench does not have (:meth:`OrderBook.request`) and marks parcels packed
(:meth:`OrderBook.mark_packed`). Everything is stored (:mod:`agent.jobs.order_store`);
every hold, release and cancel is an ``order_state`` event (critical) written in the same
transaction as the order's new state. ``docs/orders.md`` tells the whole story.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from agent.clock import ClockWatch
from agent.config import OrdersConfig
from agent.errors import AgentError
from agent.jobs import order_store
from agent.jobs.order_store import DONE, INTERCEPTS, OrderRecord, OrderState, Parcel
from agent.jobs.orders import Order
from agent.outbox import Outbox, Priority, iso_time
from agent.store import Store

log = logging.getLogger("agent.jobs.orders")

_PRUNE_EVERY_S = 3600.0


class OrderError(AgentError):
    """An order operation was refused; ``code`` says why (``already_packed``...)."""

    code = "order_error"


class OrderLookupError(OrderError):
    """A scanned code could not be resolved to an order: ``central_unreachable``,
    ``lookup_timeout``, ``unknown_order``, ``lookup_failed`` or ``invalid_answer``."""

    code = "lookup_failed"


class Link(Protocol):
    """What the book needs from the MQTT link."""

    connected: asyncio.Event
    down_since: float

    def status(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class _Decision:
    """What a hold, cancel or release does to an order; ``write``: store it."""

    state: OrderState
    reason: str | None
    write: bool


@dataclass(frozen=True)
class _Answer:
    error: tuple[str, str] | None = None
    order_ids: tuple[str, ...] = ()


def already_packed(record: OrderRecord) -> OrderError:
    packed_at = "?" if record.packed_at is None else iso_time(record.packed_at)
    return OrderError(f"order {record.order_id} was packed at {packed_at} under waybill "
                      f"{record.waybill}: the parcel has left the bench, so only the carrier "
                      f"can intercept it now", code="already_packed")


class OrderBook:
    """Every order of the bench, durable; the API the packing job uses."""

    name = "orders"

    def __init__(self, config: OrdersConfig, store: Store, outbox: Outbox, link: Link,
                 clock: ClockWatch | None = None) -> None:
        self.config = config
        self.clock = clock or ClockWatch()
        """A forward jump of the wall clock pauses the pruning of packed orders (a clock
        set ahead must not let a packed order be pushed and packed again)."""
        self._store = store
        self._outbox = outbox
        self._link = link
        self._changes = asyncio.Lock()
        """Held while a state is decided and stored: one change at a time."""
        self._pending: dict[str, asyncio.Future[_Answer]] = {}
        self.listeners: list[Callable[[str, str, str | None], None]] = []
        """Called with (order_id, state, reason) after a hold, cancel or release is stored
        (the packing job stops a parcel being packed)."""
        self.pushed: list[Callable[[Order], None]] = []
        """Called with every order stored by a push (the packing job stops a parcel packed
        against an older version of it)."""

    @staticmethod
    def now() -> float:
        return time.time()

    # ------------------------------------------------------------ service
    async def run(self, _daemon: object = None) -> None:
        await self._housekeeping()

    async def _housekeeping(self) -> None:
        while True:
            try:
                forgotten = 0 if self.clock.retention_paused else await self._store.run(
                    order_store.prune, self.now() - self.config.retention_s)
                if forgotten:
                    log.info("forgot %d packed or cancelled orders older than %d s",
                             forgotten, self.config.retention_s)
            except AgentError as exc:
                log.error("order book housekeeping: %s", exc)
            await asyncio.sleep(_PRUNE_EVERY_S)

    # ------------------------------------------------------------ orders in
    async def push(self, orders: Sequence[Order]) -> list[dict[str, Any]]:
        """Store orders (new ones open; known ones replaced, keeping a hold or cancel).

        Returns:
            Per order ``{"order_id", "ok", "state", "reason"}``, and ``error`` (code
            ``already_packed``) for an order packed before: it is not replaced.
        """
        async with self._changes:
            stored = await self._store.run(order_store.push, orders, self.now())
        results: list[dict[str, Any]] = []
        for record, ok in stored:
            result: dict[str, Any] = {"order_id": record.order_id, "ok": ok,
                                      "state": record.state.value, "reason": record.reason}
            if not ok:
                error = already_packed(record)
                result["error"] = {"code": error.code, "message": error.message}
            elif record.state in INTERCEPTS:
                log.warning("order %s arrived %s (%s): the intercept stays", record.order_id,
                            record.state.value, record.reason)
            results.append(result)
            if ok and record.order is not None:
                for listener in self.pushed:
                    listener(record.order)
        kept = sum(1 for r in results if r["ok"] and r["state"] != OrderState.OPEN)
        refused = sum(1 for r in results if not r["ok"])
        log.info("%d orders stored (%d keep a hold or cancel), %d refused as already packed",
                 len(results) - refused, kept, refused)
        return results

    async def hold(self, order_id: str, reason: str) -> dict[str, Any]:
        """Hold an order (an unknown one too: its push keeps the hold)."""
        return await self._change(order_id, OrderState.HELD, reason, "order.hold")

    async def cancel(self, order_id: str, reason: str) -> dict[str, Any]:
        """Cancel an order (an unknown one too: its push keeps the cancel)."""
        return await self._change(order_id, OrderState.CANCELLED, reason, "order.cancel")

    async def release(self, order_id: str, reason: str | None = None) -> dict[str, Any]:
        """Lift a hold or cancel: the order is open again."""
        return await self._change(order_id, OrderState.OPEN, reason, "order.release")

    async def _change(self, order_id: str, state: OrderState, reason: str | None,
                      command: str) -> dict[str, Any]:
        """Decide, store and report one hold, cancel or release.

        Returns:
            The order's view after it, with ``previous`` (``None`` for an order the bench
            did not know) and ``changed``.

        Raises:
            OrderError: ``already_packed``; ``unknown_order`` for a release.
            OutboxFull: nothing was changed.
        """
        async with self._changes:
            old = await self._store.run(order_store.get, order_id)
            if old is not None and old.state is OrderState.PACKED:
                if state is OrderState.OPEN:
                    return {**old.view(with_order=False), "previous": "packed",
                            "changed": False, "command": command,
                            "note": "the order is packed; there is no hold to release"}
                raise already_packed(old)
            if old is None and state is OrderState.OPEN:
                raise OrderError(f"no order {order_id} on this bench to release; only held or "
                                 f"cancelled orders can be released", code="unknown_order")
            now = self.now()
            new, note = self._decide(old, state, reason)
            record = OrderRecord(order_id=order_id, state=new.state, reason=new.reason,
                                 order=None if old is None else old.order,
                                 merge_id=None if old is None else old.merge_id,
                                 received_at=now if old is None else old.received_at,
                                 updated_at=now if new.write or old is None
                                 else old.updated_at)
            view = {**record.view(with_order=False),
                    "previous": None if old is None else old.state.value,
                    "changed": old is None or (old.state, old.reason) != (new.state,
                                                                          new.reason),
                    "command": command, "note": note}
            forget = state is OrderState.OPEN and old is not None and old.order is None
            await self._outbox.enqueue("order_state", view, priority=Priority.CRITICAL,
                                       also=lambda db: self._write(db, record, new.write,
                                                                   forget))
        log.log(logging.WARNING if record.state in INTERCEPTS else logging.INFO,
                "%s %s: %s -> %s (%s)%s", command, order_id, view["previous"],
                record.state.value, record.reason, f"; {note}" if note else "")
        if view["changed"]:
            for listener in self.listeners:
                listener(order_id, record.state.value, record.reason)
        return view

    @staticmethod
    def _decide(old: OrderRecord | None, state: OrderState, reason: str | None
                ) -> tuple[_Decision, str | None]:
        if old is None:
            return _Decision(state, reason, True), (
                "the order itself is not on the bench yet; it keeps this state when it "
                "arrives")
        if state is OrderState.HELD and old.state is OrderState.CANCELLED:
            return _Decision(old.state, old.reason, False), (
                "the order is cancelled, which stops it already; release it first to hold "
                "it instead")
        if state is OrderState.OPEN and old.state is OrderState.OPEN:
            return _Decision(old.state, old.reason, False), "the order was not held"
        if state is OrderState.OPEN and old.order is None:
            return _Decision(state, None, True), (
                "the order itself never arrived; the bench forgets it until it is pushed")
        return _Decision(state, None if state is OrderState.OPEN else reason, True), None

    @staticmethod
    def _write(db: sqlite3.Connection, record: OrderRecord, write: bool, forget: bool) -> None:
        if forget:
            order_store.forget(db, record.order_id)
        elif write:
            order_store.set_state(db, record.order_id, record.state, record.reason,
                                  record.updated_at)

    # ------------------------------------------------------------ the packing job's API
    async def find(self, code: str) -> Parcel | None:
        """The parcel ``code`` opens, from the bench's own book; ``None`` if unknown.

        A code naming several parcels (a tote used again, a waybill reused) finds the one
        not yet packed or cancelled; the latest changed one if all are.

        Raises:
            OrderError: ``ambiguous_code`` when it names more than one parcel still open.
        """
        groups = await self._store.run(order_store.parcels, code)
        if not groups:
            return None
        live = [g for g in groups if any(r.state not in DONE for r in g)]
        if len(live) > 1:
            names = " and ".join("+".join(r.order_id for r in g) for g in live)
            raise OrderError(f"code {code} names {len(live)} parcels not yet packed "
                             f"({names}); scan the order id or the pick list instead",
                             code="ambiguous_code")
        return Parcel(code, tuple((live or groups)[0]))

    async def get(self, order_id: str) -> Parcel | None:
        """The parcel of one order id (with its merged siblings); ``None`` if unknown."""
        record = await self._store.run(order_store.get, order_id)
        if record is None:
            return None
        if record.merge_id is None:
            return Parcel(order_id, (record,))
        return Parcel(order_id, tuple(await self._store.run(order_store.merged,
                                                            record.merge_id)))

    async def mark_packed(self, order_ids: Sequence[str], waybill: str,
                          evidence_id: str) -> list[OrderRecord]:
        """Mark a parcel's orders packed under ``waybill``; all or none.

        Marking again with the same waybill changes nothing.

        Raises:
            OrderError: ``unknown_order`` (not on the bench, or only its intercept is),
                ``intercepted`` (held or cancelled meanwhile), ``already_packed`` (under
                another waybill).
        """
        async with self._changes:
            todo = await self._packable(order_ids, waybill)
            if todo:
                await self._store.run(order_store.mark_packed, todo, waybill, evidence_id,
                                      self.now())
            log.info("orders %s packed under waybill %s (evidence %s)", ", ".join(order_ids),
                     waybill, evidence_id)
            return [r for r in [await self._store.run(order_store.get, i) for i in order_ids]
                    if r is not None]

    async def _packable(self, order_ids: Sequence[str], waybill: str) -> list[str]:
        """The orders still to mark packed; raises as :meth:`mark_packed` says."""
        records = []
        for order_id in order_ids:
            record = await self._store.run(order_store.get, order_id)
            if record is None or record.order is None:
                raise OrderError(f"order {order_id} is not on this bench; only pushed "
                                 f"orders can be packed", code="unknown_order")
            if record.state in INTERCEPTS:
                raise OrderError(f"order {order_id} is {record.state.value} "
                                 f"({record.reason}); an intercepted order is not packed",
                                 code="intercepted")
            if record.state is OrderState.PACKED and record.waybill != waybill:
                raise already_packed(record)
            records.append(record)
        return [r.order_id for r in records if r.state is not OrderState.PACKED]

    async def commit_packed(self, order_ids: Sequence[str], waybill: str, evidence_id: str,
                            write: Callable[[Callable[[sqlite3.Connection], None]],
                                            Awaitable[None]]) -> None:
        """Check the orders may be packed and call ``write(mark)``, where ``mark`` marks
        them packed inside the caller's transaction (the ``pack.result`` event's). The
        book's lock is held throughout, so no hold or cancel slips in between.

        Raises:
            OrderError: as :meth:`mark_packed`; nothing is written then.
        """
        async with self._changes:
            todo = await self._packable(order_ids, waybill)
            now = self.now()

            def mark(db: sqlite3.Connection) -> None:
                order_store.mark_packed_rows(db, todo, waybill, evidence_id, now)

            await write(mark)

    # ------------------------------------------------------------ asking the central system
    async def request(self, code: str, timeout_s: float | None = None) -> Parcel:
        """Ask the central system for the order(s) ``code`` names; store and return them.

        Publishes an ``order.request`` event and waits for the ``order.answer`` command.

        Raises:
            OrderLookupError: ``central_unreachable`` (the link is down: nothing is
                asked), ``lookup_timeout``, ``unknown_order``, ``lookup_failed`` (the
                central system answered another error) or ``invalid_answer``.
        """
        timeout_s = self.config.lookup_timeout_s if timeout_s is None else timeout_s
        if not self._link.connected.is_set():
            link = self._link.status()
            raise OrderLookupError(
                f"cannot ask the central system for {code}: the bench has not been connected "
                f"to the broker since {iso_time(self._link.down_since)} (link "
                f"{link.get('state')}, last error: {link.get('last_error') or 'none'}); push "
                f"the order to the bench or scan again once the link is back",
                code="central_unreachable")
        request_id = str(uuid.uuid4())
        future: asyncio.Future[_Answer] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        try:
            await self._outbox.enqueue("order.request", {"request_id": request_id,
                                                         "code": code})
            log.info("asked the central system for %s (order.request %s)", code, request_id)
            answer = await asyncio.wait_for(future, timeout_s)
        except TimeoutError:
            raise OrderLookupError(
                f"the central system did not answer within {timeout_s:g} s (order.request "
                f"{request_id} for {code}); an answer that comes later is stored, so the next "
                f"scan finds the order", code="lookup_timeout") from None
        finally:
            self._pending.pop(request_id, None)
        if answer.error is not None:
            error_code, message = answer.error
            if error_code == "unknown_order":
                raise OrderLookupError(f"the central system does not know {code}: {message}",
                                       code="unknown_order")
            raise OrderLookupError(f"the central system could not look up {code}: "
                                   f"{error_code}: {message}", code="lookup_failed")
        parcel = await self.find(code)
        if parcel is None:
            sent = ", ".join(answer.order_ids) or "no orders"
            raise OrderLookupError(f"the central system answered order.request {request_id} "
                                   f"with {sent}, none of which {code} names",
                                   code="unknown_order")
        return parcel

    def answered(self, request_id: str, *, order_ids: Sequence[str] = (),
                 error: tuple[str, str] | None = None,
                 refused: AgentError | None = None) -> bool:
        """An ``order.answer`` arrived (its orders already stored); ``True`` if a scan was
        still waiting for it."""
        future = self._pending.pop(request_id, None)
        if future is None or future.done():
            log.info("no scan is waiting for order.answer %s (it came late, or the request "
                     "is not this bench's); its orders are stored", request_id)
            return False
        if refused is not None:
            future.set_exception(OrderLookupError(
                f"the central system's answer to order.request {request_id} was refused: "
                f"{refused.message}", code="invalid_answer"))
        else:
            future.set_result(_Answer(error, tuple(order_ids)))
        return True

    async def counts(self) -> dict[str, int]:
        """Orders per state."""
        return await self._store.run(order_store.counts)
