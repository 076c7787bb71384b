"""The ``orders`` and ``order_codes`` tables: every function runs in the ``bench-store`` thread.

One row per order the bench knows, with its state (``open``, ``held``, ``cancelled``,
``packed``) and the :class:`~agent.jobs.orders.Order` as JSON. A hold or cancel may come
before the order itself: its row is a stub (``body`` NULL) that the later push fills in,
keeping the intercept. ``order_codes`` maps every barcode that opens a parcel (order id,
waybill numbers, pick codes, the waybill it was packed under) to its orders; one code may
name several orders (the waybill of a merged parcel, a tote used again next day).
:class:`Parcel` is what a scanned code opens: the records of one parcel.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from agent.jobs.orders import Order
from agent.outbox import iso_time
from agent.store import Transaction


class OrderState(StrEnum):
    OPEN = "open"
    HELD = "held"
    CANCELLED = "cancelled"
    PACKED = "packed"


INTERCEPTS = frozenset({OrderState.HELD, OrderState.CANCELLED})
"""States that stop a parcel when it is scanned (拦截)."""
DONE = frozenset({OrderState.PACKED, OrderState.CANCELLED})
"""Nothing more is packed for these; pruned after ``jobs.orders.retention_s``."""

_COLUMNS = ("order_id, merge_id, state, reason, body, received_at, updated_at, packed_at, "
            "waybill, evidence_id")


@dataclass(frozen=True)
class OrderRecord:
    """One order as the bench knows it: its state and, unless a stub, the order."""

    order_id: str
    state: OrderState
    reason: str | None
    order: Order | None
    """``None`` for a stub: a hold or cancel arrived before the order did."""
    merge_id: str | None
    received_at: float
    updated_at: float
    packed_at: float | None = None
    waybill: str | None = None
    evidence_id: str | None = None

    def view(self, *, with_order: bool = True) -> dict[str, Any]:
        """JSON form for command results (``order.get``) and ``order_state`` events."""
        view: dict[str, Any] = {
            "order_id": self.order_id,
            "state": self.state.value,
            "reason": self.reason,
            "merge_id": self.merge_id,
            "known": self.order is not None,
            "received_at": iso_time(self.received_at),
            "updated_at": iso_time(self.updated_at),
            "packed_at": None if self.packed_at is None else iso_time(self.packed_at),
            "waybill": self.waybill,
            "evidence_id": self.evidence_id,
        }
        if with_order:
            view["order"] = None if self.order is None else self.order.model_dump(mode="json")
        return view


@dataclass(frozen=True)
class Parcel:
    """The orders one scanned code opens: the order it names and its merged siblings."""

    code: str
    """The code that was scanned (order id, waybill number, pick code)."""
    records: tuple[OrderRecord, ...]
    """Every order of the parcel by order id, stubs (intercepts of unknown orders) too."""

    @property
    def orders(self) -> tuple[Order, ...]:
        """The orders to pack (stubs have none)."""
        return tuple(r.order for r in self.records if r.order is not None)

    @property
    def states(self) -> dict[str, tuple[OrderState, str | None]]:
        """``order_id -> (state, reason)`` for every order of the parcel."""
        return {r.order_id: (r.state, r.reason) for r in self.records}

    @property
    def order_ids(self) -> tuple[str, ...]:
        return tuple(r.order_id for r in self.records)

    @property
    def merge_id(self) -> str | None:
        return next((r.merge_id for r in self.records if r.merge_id), None)

    @property
    def codes(self) -> frozenset[str]:
        """Every code that opens this parcel (order ids, waybills, pick codes)."""
        found = {r.order_id for r in self.records}
        found |= {r.waybill for r in self.records if r.waybill}
        for order in self.orders:
            found |= order.codes()
        return frozenset(found)

    @property
    def unknown(self) -> tuple[str, ...]:
        """Order ids known only from an intercept: the order itself never arrived."""
        return tuple(r.order_id for r in self.records if r.order is None)

    @property
    def intercepted(self) -> bool:
        """Any order held or cancelled: the parcel must be stopped and set aside."""
        return any(r.state in INTERCEPTS for r in self.records)

    @property
    def why(self) -> str | None:
        """The intercepts in words (``None`` when there is none)."""
        parts = [f"order {r.order_id} is {r.state.value}: {r.reason or 'no reason given'}"
                 for r in self.records if r.state in INTERCEPTS]
        return "; ".join(parts) or None

    @property
    def packed(self) -> tuple[OrderRecord, ...]:
        """Orders of the parcel already packed (with ``waybill`` and ``packed_at``)."""
        return tuple(r for r in self.records if r.state is OrderState.PACKED)

    def view(self) -> dict[str, Any]:
        """JSON form (``order.get``)."""
        return {"code": self.code, "merge_id": self.merge_id, "order_ids": list(self.order_ids),
                "intercepted": self.intercepted, "why": self.why,
                "orders": [r.view() for r in self.records]}


def _record(row: tuple[Any, ...]) -> OrderRecord:
    return OrderRecord(order_id=row[0], merge_id=row[1], state=OrderState(row[2]),
                       reason=row[3],
                       order=None if row[4] is None else Order.model_validate_json(row[4]),
                       received_at=row[5], updated_at=row[6], packed_at=row[7], waybill=row[8],
                       evidence_id=row[9])


def get(db: sqlite3.Connection, order_id: str) -> OrderRecord | None:
    row = db.execute(f"SELECT {_COLUMNS} FROM orders WHERE order_id = ?", (order_id,)).fetchone()
    return None if row is None else _record(row)


def _index(db: sqlite3.Connection, order_id: str, codes: set[str]) -> None:
    db.executemany("INSERT OR IGNORE INTO order_codes (code, order_id) VALUES (?, ?)",
                   [(code, order_id) for code in sorted(codes)])


def push(db: sqlite3.Connection, orders: Sequence[Order], now: float
         ) -> list[tuple[OrderRecord, bool]]:
    """Store ``orders`` in one transaction; per order its record and whether it was stored.

    A new order is ``open``; a known one is replaced but keeps a hold or cancel (and its
    reason); a packed one is left alone (``False``).
    """
    results: list[tuple[OrderRecord, bool]] = []
    with Transaction(db):
        for order in orders:
            old = get(db, order.order_id)
            if old is not None and old.state is OrderState.PACKED:
                results.append((old, False))
                continue
            state = OrderState.OPEN if old is None else old.state
            record = OrderRecord(order_id=order.order_id, state=state,
                                 reason=None if old is None else old.reason, order=order,
                                 merge_id=order.merge_id,
                                 received_at=now if old is None or old.order is None
                                 else old.received_at, updated_at=now)
            db.execute(f"INSERT OR REPLACE INTO orders ({_COLUMNS}) VALUES "
                       f"({', '.join('?' * 10)})",
                       (record.order_id, record.merge_id, record.state.value, record.reason,
                        order.model_dump_json(), record.received_at, record.updated_at,
                        None, None, None))
            db.execute("DELETE FROM order_codes WHERE order_id = ?", (order.order_id,))
            _index(db, order.order_id, order.codes())
            results.append((record, True))
    return results


def set_state(db: sqlite3.Connection, order_id: str, state: OrderState, reason: str | None,
              now: float) -> None:
    """Set an order's state (inside the caller's transaction); a stub if it is unknown."""
    db.execute("INSERT INTO orders (order_id, state, reason, received_at, updated_at) "
               "VALUES (?, ?, ?, ?, ?) ON CONFLICT (order_id) DO UPDATE SET "
               "state = excluded.state, reason = excluded.reason, "
               "updated_at = excluded.updated_at",
               (order_id, state.value, reason, now, now))
    _index(db, order_id, {order_id})


def forget(db: sqlite3.Connection, order_id: str) -> None:
    """Drop an order's row and codes (a stub whose hold was released)."""
    db.execute("DELETE FROM orders WHERE order_id = ?", (order_id,))
    db.execute("DELETE FROM order_codes WHERE order_id = ?", (order_id,))


def mark_packed(db: sqlite3.Connection, order_ids: Sequence[str], waybill: str,
                evidence_id: str, now: float) -> None:
    """Mark orders packed under ``waybill`` (which then finds them too), in one transaction."""
    with Transaction(db):
        mark_packed_rows(db, order_ids, waybill, evidence_id, now)


def mark_packed_rows(db: sqlite3.Connection, order_ids: Sequence[str], waybill: str,
                     evidence_id: str, now: float) -> None:
    """:func:`mark_packed` inside the caller's transaction (the ``pack.result`` event's)."""
    for order_id in order_ids:
        db.execute("UPDATE orders SET state = ?, reason = NULL, packed_at = ?, "
                   "updated_at = ?, waybill = ?, evidence_id = ? WHERE order_id = ?",
                   (OrderState.PACKED.value, now, now, waybill, evidence_id, order_id))
        _index(db, order_id, {waybill})


def merged(db: sqlite3.Connection, merge_id: str) -> list[OrderRecord]:
    rows = db.execute(f"SELECT {_COLUMNS} FROM orders WHERE merge_id = ? ORDER BY order_id",
                      (merge_id,)).fetchall()
    return [_record(row) for row in rows]


def parcels(db: sqlite3.Connection, code: str) -> list[list[OrderRecord]]:
    """Every parcel ``code`` names: the orders it names with their merged siblings.

    Parcels are listed with the latest change first; orders within one by order id.
    """
    rows = db.execute(f"SELECT {', '.join('o.' + c for c in _COLUMNS.split(', '))} "
                      "FROM order_codes c JOIN orders o ON o.order_id = c.order_id "
                      "WHERE c.code = ?", (code,)).fetchall()
    groups: dict[str, dict[str, OrderRecord]] = {}
    for record in map(_record, rows):
        key = f"m:{record.merge_id}" if record.merge_id else f"o:{record.order_id}"
        group = groups.setdefault(key, {})
        if record.merge_id and not group:
            group.update((r.order_id, r) for r in merged(db, record.merge_id))
        group[record.order_id] = record
    found = [sorted(group.values(), key=lambda r: r.order_id) for group in groups.values()]
    found.sort(key=lambda group: max(r.updated_at for r in group), reverse=True)
    return found


def prune(db: sqlite3.Connection, before: float) -> int:
    """Forget packed and cancelled orders, and held stubs, last changed before ``before``."""
    with Transaction(db):
        ids = [row[0] for row in db.execute(
            "SELECT order_id FROM orders WHERE updated_at < ? AND (state IN (?, ?) OR "
            "(state = ? AND body IS NULL))",
            (before, OrderState.PACKED.value, OrderState.CANCELLED.value,
             OrderState.HELD.value)).fetchall()]
        for order_id in ids:
            forget(db, order_id)
    return len(ids)


def counts(db: sqlite3.Connection) -> dict[str, int]:
    """Orders per state (every state listed), for the bench status."""
    rows = dict(db.execute("SELECT state, COUNT(*) FROM orders GROUP BY state").fetchall())
    return {state.value: int(rows.get(state.value, 0)) for state in OrderState}
