"""The durable outbox: every event the agent reports is stored first, then published.

An event is committed to SQLite (see :mod:`agent.store` for the fsync policy) before
:meth:`Outbox.enqueue` returns, published with QoS 1 in ``seq`` order, and deleted only
after the broker's PUBACK carries a success reason code. A PUBACK with a failure code
marks the event ``rejected``: it is kept on disk, counted in the status
(``outbox.rejected`` with ``last_rejection``) and logged as an error, and the events
behind it go on (one refused event must not stop the bench's reports).

Bound: ``storage.outbox_max_events`` and ``storage.outbox_max_bytes``. When a new event
does not fit, the oldest telemetry goes first, then the oldest normal events (never more
important than the new one). Critical events (pack results, print-job states, command
replies) are never evicted: when nothing more can go, enqueueing one raises
:class:`OutboxFull` so the caller refuses the work loudly instead of losing it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sqlite3
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import IntEnum
from typing import Any, Protocol

import uuid6

from agent.errors import OutboxFull, StorageError
from agent.store import Store, Transaction, meta_add, meta_get
from agent.tasks import spawn

log = logging.getLogger("agent.outbox")

_DELETE_GATHER_S = 0.02
_DELETE_RETRY_S = 1.0
"""How long acknowledged events wait to be deleted together in one transaction."""

_CLEAR_ALARM_FRACTION = 0.8
"""The ``outbox_full`` alarm clears once usage falls below this share of both limits."""


class Priority(IntEnum):
    """What may be evicted when the outbox is full: lower goes first."""

    TELEMETRY = 0
    NORMAL = 1
    CRITICAL = 2


class Link(Protocol):
    """What the outbox needs from the MQTT link."""

    connected: asyncio.Event

    @property
    def window(self) -> int: ...

    @property
    def max_packet_size(self) -> int: ...

    def publish_event(self, topic: str, payload: bytes, correlation: bytes | None) -> int: ...


@dataclass(frozen=True)
class Event:
    """One stored event. ``data`` is its JSON body, already serialised."""

    seq: int
    id: str
    kind: str
    topic: str
    priority: Priority
    created_at: float
    data: bytes
    correlation: bytes | None = None


def dumps(obj: Any) -> bytes:
    """Compact UTF-8 JSON, the encoding of every message the agent sends."""
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()


def iso_time(ts: float) -> str:
    """RFC 3339 UTC with milliseconds, the one time format of every message."""
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z"
    )


@dataclass
class _Request:
    kind: str
    topic: str
    priority: Priority
    data: bytes
    correlation: bytes | None
    also: Callable[[sqlite3.Connection], None] | None
    future: asyncio.Future[Event | None] = field(repr=False)


class Outbox:
    """Durable, bounded, ordered event queue in front of the MQTT link."""

    def __init__(
        self,
        store: Store,
        *,
        site: str,
        bench: str,
        event_topic: Callable[[str], str],
        max_events: int,
        max_bytes: int,
    ) -> None:
        self._store = store
        self._envelope_head = f'"site":{json.dumps(site)},"bench":{json.dumps(bench)}'
        self._event_topic = event_topic
        self.max_events = max_events
        self.max_bytes = max_bytes
        self.on_alarm_change: Callable[[], None] = lambda: None
        # Counters below are changed only in the store thread, read anywhere.
        self.count = 0
        self.bytes = 0
        self.dropped: dict[str, int] = {"telemetry": 0, "normal": 0}
        self.refused = 0
        self.rejected = 0
        self.last_seq = 0
        self.alarm: str | None = None
        self._alarm_since: float | None = None
        self._pending: list[_Request] = []
        self._flushing = False
        self._inflight: dict[int, int] = {}  # paho mid -> seq
        self._cursor = 0  # highest seq handed to the link
        self._late_until = 0  # events up to this seq were created before the connection
        self._wake = asyncio.Event()
        self._acked: list[int] = []
        self._alarm_changed = False

    async def load(self) -> None:
        """Read the backlog's size and counters; call once before :meth:`run`."""

        def _load(db: sqlite3.Connection) -> None:
            count, size = db.execute(
                "SELECT COUNT(*), COALESCE(SUM(size), 0) FROM outbox"
            ).fetchone()
            self.count, self.bytes = count, size
            self.rejected = db.execute(
                "SELECT COUNT(*) FROM outbox WHERE state = 'rejected'"
            ).fetchone()[0]
            row = db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'outbox'").fetchone()
            self.last_seq = row[0] if row else 0
            for key in self.dropped:
                self.dropped[key] = meta_get(db, f"outbox.dropped.{key}")
            self.refused = meta_get(db, "outbox.refused")

        await self._store.run(_load)
        self._late_until = self.last_seq
        if self.count:
            log.info("outbox holds %d events (%d bytes) from before this start", self.count,
                     self.bytes)

    # ----------------------------------------------------------------- enqueue
    async def enqueue(
        self,
        kind: str,
        data: dict[str, Any],
        *,
        priority: Priority = Priority.NORMAL,
        topic: str | None = None,
        correlation: bytes | None = None,
        also: Callable[[sqlite3.Connection], None] | None = None,
    ) -> Event | None:
        """Store an event durably and queue it for publishing.

        ``also`` runs in the same transaction (used to record a command's reply together
        with the event that carries it).

        Returns:
            The stored event, or ``None`` for telemetry dropped because the outbox is full.

        Raises:
            OutboxFull: a normal or critical event found no room (nothing evictable left).
        """
        body = dumps(data)
        loop = asyncio.get_running_loop()
        request = _Request(kind, topic or self._event_topic(kind), priority, body, correlation,
                           also, loop.create_future())
        self._pending.append(request)
        if not self._flushing:
            self._flushing = True
            spawn(self._flush(), name="outbox.commit")
        return await request.future

    async def _flush(self) -> None:
        """Commit every waiting request in one transaction (group commit)."""
        try:
            while self._pending:
                batch, self._pending = self._pending, []
                try:
                    results = await self._store.run(self._insert_batch, batch)
                except Exception as exc:
                    for request in batch:
                        if not request.future.done():
                            request.future.set_exception(exc)
                    continue
                for request, result in zip(batch, results, strict=True):
                    if isinstance(result, Exception):
                        request.future.set_exception(result)
                    else:
                        request.future.set_result(result)
                self._wake.set()
                self._update_alarm()
        finally:
            self._flushing = False

    def _insert_batch(
        self, db: sqlite3.Connection, batch: list[_Request]
    ) -> list[Event | Exception | None]:
        results: list[Event | Exception | None] = []
        with self._counters_kept(), Transaction(db):
            for request in batch:
                try:
                    results.append(self._insert(db, request))
                except OutboxFull as exc:
                    results.append(exc)
        return results

    @contextlib.contextmanager
    def _counters_kept(self) -> Iterator[None]:
        """The in-memory counts follow the rows: a transaction that fails (a full disk
        refusing the COMMIT) leaves them as they were."""
        saved = (self.count, self.bytes, self.last_seq, dict(self.dropped), self.refused)
        try:
            yield
        except BaseException:
            self.count, self.bytes, self.last_seq, self.dropped, self.refused = saved
            raise

    def _insert(self, db: sqlite3.Connection, request: _Request) -> Event | None:
        size = len(request.data) + len(request.topic)
        if not self._make_room(db, size, request.priority):
            if request.priority == Priority.TELEMETRY:
                self.dropped["telemetry"] = meta_add(db, "outbox.dropped.telemetry", 1)
                self._raise_alarm()
                return None
            self.refused = meta_add(db, "outbox.refused", 1)
            self._raise_alarm()
            raise OutboxFull(
                f"outbox full ({self.count} events, {self.bytes} bytes; limits "
                f"{self.max_events} events, {self.max_bytes} bytes) and nothing less important "
                f"to evict: {request.kind} event refused"
            )
        if request.also is not None:
            request.also(db)
        event_id = str(uuid6.uuid7())
        created_at = time.time()
        cursor = db.execute(
            "INSERT INTO outbox (id, kind, topic, priority, created_at, data, correlation, size)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (event_id, request.kind, request.topic, int(request.priority), created_at,
             request.data, request.correlation, size),
        )
        seq = int(cursor.lastrowid or 0)
        self.count += 1
        self.bytes += size
        self.last_seq = seq
        return Event(seq, event_id, request.kind, request.topic, request.priority, created_at,
                     request.data, request.correlation)

    def _make_room(self, db: sqlite3.Connection, size: int, priority: Priority) -> bool:
        """Evict the oldest least important events until ``size`` more bytes fit."""
        evictable = min(int(priority), int(Priority.NORMAL))
        while self.count + 1 > self.max_events or self.bytes + size > self.max_bytes:
            row = db.execute(
                "SELECT seq, size, priority FROM outbox WHERE state = 'pending' "
                "AND priority <= ? ORDER BY priority, seq LIMIT 1",
                (evictable,),
            ).fetchone()
            if row is None:
                return False
            db.execute("DELETE FROM outbox WHERE seq = ?", (row[0],))
            self.count -= 1
            self.bytes -= row[1]
            name = Priority(row[2]).name.lower()
            self.dropped[name] = meta_add(db, f"outbox.dropped.{name}", 1)
            self._raise_alarm()
        return True

    # ----------------------------------------------------------------- alarm
    def _raise_alarm(self) -> None:
        """Store thread: note that events were dropped or refused."""
        if self.alarm is None:
            self.alarm = "outbox_full"
            self._alarm_since = time.time()
            self._alarm_changed = True

    def _update_alarm(self) -> None:
        """Loop thread: report a new alarm, or clear it once the backlog has shrunk."""
        if self.alarm is not None and not self._alarm_changed:
            if (self.count < self.max_events * _CLEAR_ALARM_FRACTION
                    and self.bytes < self.max_bytes * _CLEAR_ALARM_FRACTION):
                self.alarm, self._alarm_since = None, None
                log.warning("outbox alarm cleared: %d events, %d bytes", self.count, self.bytes)
                self.on_alarm_change()
        elif self._alarm_changed:
            self._alarm_changed = False
            log.error(
                "outbox full: %d events, %d bytes (limits %d, %d); dropped %s, refused %d",
                self.count, self.bytes, self.max_events, self.max_bytes, self.dropped,
                self.refused,
            )
            self.on_alarm_change()

    def alarms(self) -> list[dict[str, Any]]:
        """The outbox's active alarm, in the status message's alarm format."""
        if self.alarm is None or self._alarm_since is None:
            return []
        return [{
            "code": self.alarm,
            "message": (
                f"outbox full: dropped {self.dropped['telemetry']} telemetry and "
                f"{self.dropped['normal']} normal events, refused {self.refused} that could "
                "not be dropped"
            ),
            "since": iso_time(self._alarm_since),
        }]

    # ----------------------------------------------------------------- publishing
    def on_connected(self) -> None:
        """Loop thread, after CONNACK: events stored until now go out as ``replayed``."""
        self._late_until = self.last_seq
        self._wake.set()

    async def run(self, link: Link) -> None:
        """Publish stored events in ``seq`` order while the link is up, forever."""
        while True:
            self._wake.clear()
            if not link.connected.is_set():
                await link.connected.wait()
                continue
            room = link.window - len(self._inflight)
            if self._inflight and room < max(1, link.window // 4):
                await self._wake.wait()  # refill in batches, not one read per PUBACK
                continue
            batch = await self._store.run(self._fetch, self._cursor, room) if room > 0 else []
            if not batch:
                await self._wake.wait()
                continue
            for event in batch:
                self._publish(link, event)

    def _fetch(self, db: sqlite3.Connection, after: int, limit: int) -> list[Event]:
        rows = db.execute(
            "SELECT seq, id, kind, topic, priority, created_at, data, correlation FROM outbox "
            "WHERE seq > ? AND state = 'pending' ORDER BY seq LIMIT ?",
            (after, limit),
        ).fetchall()
        return [Event(r[0], r[1], r[2], r[3], Priority(r[4]), r[5], r[6], r[7]) for r in rows]

    def envelope(self, event: Event) -> bytes:
        """The published bytes: the event's identity and times around its ``data``."""
        replayed = "true" if event.seq <= self._late_until else "false"
        head = (
            f'{{"id":"{event.id}","seq":{event.seq},"kind":{json.dumps(event.kind)},'
            f'"created_at":"{iso_time(event.created_at)}",{self._envelope_head},'
            f'"replayed":{replayed},"data":'
        )
        return head.encode() + event.data + b"}"

    def _publish(self, link: Link, event: Event) -> None:
        self._cursor = event.seq
        payload = self.envelope(event)
        # MQTT fixed header (5) + topic length (2) + packet id (2) + properties (~40 with
        # a correlation id): stay under the broker's Maximum Packet Size with margin.
        packet_size = len(payload) + len(event.topic.encode()) + 64 + len(event.correlation or b"")
        if packet_size > link.max_packet_size:
            self._reject(event.seq, f"too_large: {packet_size} bytes exceeds the broker's "
                                    f"Maximum Packet Size of {link.max_packet_size}")
            return
        mid = link.publish_event(event.topic, payload, event.correlation)
        self._inflight[mid] = event.seq

    def on_puback(self, mid: int, reason_code: int, reason: str) -> None:
        """Loop thread: the broker answered the PUBLISH with packet id ``mid``."""
        seq = self._inflight.pop(mid, None)
        if seq is None:
            return  # not an outbox message (the retained status)
        self._wake.set()
        if reason_code >= 0x80:
            self._reject(seq, f"broker refused: {reason} (reason code {reason_code:#04x})")
            return
        self._acked.append(seq)
        if len(self._acked) == 1:
            spawn(self._delete_acked(), name="outbox.delete")

    async def _delete_acked(self) -> None:
        await asyncio.sleep(_DELETE_GATHER_S)  # let a burst of PUBACKs share one transaction
        seqs, self._acked = self._acked, []
        try:
            await self._store.run(self._delete, seqs)
        except StorageError as exc:
            # A full disk refuses even a delete (the WAL must grow): keep the acknowledged
            # events in memory and try again; meanwhile they are not sent twice.
            log.error("could not delete %d acknowledged events, retrying: %s", len(seqs), exc)
            await asyncio.sleep(_DELETE_RETRY_S)
            self._acked[:0] = seqs
            spawn(self._delete_acked(), name="outbox.delete")
            return
        self._update_alarm()

    def _delete(self, db: sqlite3.Connection, seqs: list[int]) -> None:
        # A delete need not reach the disk at once: one lost to a power cut only means the
        # event is sent again (same id), which at-least-once delivery allows. So deletes
        # skip the fsync; the next insert's synchronous=FULL commit makes them durable.
        db.execute("PRAGMA synchronous=NORMAL")
        try:
            self._delete_rows(db, seqs)
        finally:
            db.execute("PRAGMA synchronous=FULL")

    def _delete_rows(self, db: sqlite3.Connection, seqs: list[int]) -> None:
        with self._counters_kept(), Transaction(db):
            for seq in seqs:
                row = db.execute("DELETE FROM outbox WHERE seq = ? RETURNING size",
                                 (seq,)).fetchone()
                if row is not None:  # an evicted event may still be acked
                    self.count -= 1
                    self.bytes -= row[0]

    def _reject(self, seq: int, error: str) -> None:
        log.error("outbox event seq %d not delivered and set aside: %s", seq, error)

        def _mark(db: sqlite3.Connection) -> None:
            updated = db.execute("UPDATE outbox SET state = 'rejected', error = ? WHERE seq = ?",
                                 (error, seq)).rowcount
            self.rejected += updated  # 0 when the event was evicted while in flight

        async def _mark_and_report() -> None:
            await self._store.run(_mark)
            self.on_alarm_change()

        spawn(_mark_and_report(), name="outbox.reject")

    async def drain(self, timeout_s: float) -> bool:
        """Wait until nothing is pending or in flight, up to ``timeout_s``; True if empty."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.count - self.rejected <= 0 and not self._inflight and not self._pending:
                return True
            await asyncio.sleep(0.05)
        return False

    async def stats(self) -> dict[str, Any]:
        """Backlog depth and age, in the status message's ``outbox`` format."""

        def _query(db: sqlite3.Connection) -> tuple[float | None, str | None]:
            oldest = db.execute(
                "SELECT MIN(created_at) FROM outbox WHERE state = 'pending'").fetchone()[0]
            rejection = db.execute(
                "SELECT error FROM outbox WHERE state = 'rejected' ORDER BY seq DESC LIMIT 1"
            ).fetchone()
            return oldest, rejection[0] if rejection else None

        oldest, last_rejection = await self._store.run(_query)
        return {
            "pending": self.count - self.rejected,
            "inflight": len(self._inflight),
            "bytes": self.bytes,
            "oldest_created_at": iso_time(oldest) if oldest else None,
            "oldest_age_s": round(time.time() - oldest, 3) if oldest else 0.0,
            "rejected": self.rejected,
            "last_rejection": last_rejection,
            "dropped": dict(self.dropped),
            "refused": self.refused,
            "last_seq": self.last_seq,
            "limit_events": self.max_events,
            "limit_bytes": self.max_bytes,
        }
