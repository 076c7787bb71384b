"""The agent's local SQLite database, owned by one dedicated thread.

Durability policy (documented in ``docs/architecture.md``): the database runs in WAL mode
with ``synchronous=FULL``, so every committed transaction has been fsync'ed to the WAL
before the commit returns. A caller that awaited a write may rely on it surviving
``kill -9`` and power loss. Writes that arrive together are committed together (group
commit), which keeps one fsync per batch instead of one per event.

Thread: ``bench-store`` (a one-worker executor). SQLite calls block on disk, so they never
run on the asyncio loop; one thread means one connection and no locking between writers.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from agent.errors import StorageError

log = logging.getLogger("agent.store")

T = TypeVar("T")

SCHEMA_VERSION = 2
_FULL_ALARM_S = 60.0
"""The disk_full alarm stays this long after the last write the full disk refused."""

_MIGRATIONS: dict[int, tuple[tuple[str, str, str], ...]] = {
    2: (("print_jobs", "waybill", "TEXT"),),
}
"""Columns (table, column, type) each version added to tables an older agent may have
created. ``_SCHEMA`` has already created missing tables whole, so a column is added only
where its table lacks it."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,  -- AUTOINCREMENT: a seq is never reused
    id TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL,
    topic TEXT NOT NULL,
    priority INTEGER NOT NULL,
    created_at REAL NOT NULL,
    data BLOB NOT NULL,
    correlation BLOB,
    size INTEGER NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending',  -- pending | rejected
    error TEXT
);
CREATE INDEX IF NOT EXISTS outbox_evict ON outbox (priority, seq) WHERE state = 'pending';
CREATE TABLE IF NOT EXISTS commands (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    received_at REAL NOT NULL,
    expires_at REAL,
    args TEXT NOT NULL,
    reply_topic TEXT NOT NULL,
    correlation BLOB,
    state TEXT NOT NULL,                    -- received | done
    reply TEXT
);
CREATE INDEX IF NOT EXISTS commands_age ON commands (received_at);
CREATE TABLE IF NOT EXISTS print_jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,  -- arrival order: the queue's order
    id TEXT NOT NULL UNIQUE,
    printer TEXT NOT NULL,
    document TEXT NOT NULL,
    copies INTEGER NOT NULL,
    size INTEGER NOT NULL,
    labels INTEGER,
    summary TEXT NOT NULL,
    received_at REAL NOT NULL,
    expires_at REAL,
    group_id TEXT,
    group_seq INTEGER,
    group_size INTEGER,
    state TEXT NOT NULL,
    code TEXT,
    message TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    updated_at REAL NOT NULL,
    waybill TEXT,                           -- the waybill number on the label, if given
    data BLOB                               -- the bytes for the printer; NULL once dropped
);
CREATE INDEX IF NOT EXISTS print_jobs_state ON print_jobs (state, updated_at);
CREATE INDEX IF NOT EXISTS print_jobs_group ON print_jobs (group_id) WHERE group_id IS NOT NULL;
CREATE TABLE IF NOT EXISTS evidence (
    id TEXT PRIMARY KEY,                    -- UUIDv7: time-ordered
    kind TEXT NOT NULL,                     -- pack | returns
    verdict TEXT NOT NULL,
    created_at REAL NOT NULL,
    body TEXT NOT NULL                      -- the record, JSON (agent/jobs/evidence.py)
);
CREATE INDEX IF NOT EXISTS evidence_age ON evidence (created_at);
CREATE TABLE IF NOT EXISTS evidence_keys (
    key TEXT NOT NULL,                      -- an order id or a waybill number
    evidence_id TEXT NOT NULL REFERENCES evidence (id) ON DELETE CASCADE,
    PRIMARY KEY (key, evidence_id)
);
CREATE TABLE IF NOT EXISTS pending_results (
    evidence_id TEXT PRIMARY KEY,           -- a finished parcel whose pack.result is not
    body TEXT NOT NULL,                     -- stored yet: written before the packer sees
    created_at REAL NOT NULL                -- "complete", deleted with the event's insert
);
CREATE TABLE IF NOT EXISTS orders (
    order_id TEXT PRIMARY KEY,
    merge_id TEXT,                          -- orders sharing it are one parcel
    state TEXT NOT NULL,                    -- open | held | cancelled | packed
    reason TEXT,                            -- why held or cancelled
    body TEXT,                              -- the Order as JSON; NULL: an intercept came first
    received_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    packed_at REAL,
    waybill TEXT,                           -- the waybill it was packed under
    evidence_id TEXT
);
CREATE INDEX IF NOT EXISTS orders_merge ON orders (merge_id) WHERE merge_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS orders_age ON orders (state, updated_at);
CREATE TABLE IF NOT EXISTS order_codes (
    code TEXT NOT NULL,                     -- order id, waybill number or pick code
    order_id TEXT NOT NULL,
    PRIMARY KEY (code, order_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS order_codes_order ON order_codes (order_id);
"""


class Store:
    """One SQLite file; every query runs in the ``bench-store`` thread via :meth:`run`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bench-store")
        self._db: sqlite3.Connection | None = None
        self.full_at: float | None = None
        """When a write last failed because the disk (or the database) was full."""
        self.set_aside: dict[str, Any] | None = None
        """The corrupt database this run started without: ``{file, reason, at}``."""

    async def open(self) -> None:
        await self.run(lambda _db: None, _opening=True)

    async def run(self, fn: Callable[..., T], *args: Any, _opening: bool = False) -> T:
        """Run ``fn(db, *args)`` in the store thread and return its result."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._call, fn, args, _opening)

    def _call(self, fn: Callable[..., T], args: tuple[Any, ...], opening: bool) -> T:
        if self._db is None:
            if not opening:
                raise StorageError(f"{self.path}: store is closed")
            self._db = self._connect()
        try:
            return fn(self._db, *args)
        except sqlite3.Error as exc:
            if getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL:
                self.full_at = time.time()
            raise StorageError(f"{self.path}: {exc}") from exc

    def alarms(self) -> list[dict[str, Any]]:
        """Alarms in the status message's format: a full disk (a write failed in the last
        minute), a corrupt database set aside at start."""
        from agent.outbox import iso_time  # the outbox imports the store

        found = []
        if self.full_at is not None and time.time() - self.full_at < _FULL_ALARM_S:
            found.append({"code": "disk_full", "since": iso_time(self.full_at),
                          "message": f"the disk of {self.path} is full: results wait in "
                                     f"memory until there is room"})
        if self.set_aside is not None:
            found.append({"code": "store_reset", "since": iso_time(self.set_aside["at"]),
                          "message": f"the database was unreadable ({self.set_aside['reason']})"
                                     f" and was set aside as {self.set_aside['file']}; the "
                                     f"agent started with an empty one: events not sent "
                                     f"before and older evidence are in that file"})
        return found

    def _connect(self) -> sqlite3.Connection:
        try:
            return self._open_db()
        except sqlite3.DatabaseError as exc:
            if not _corrupt(exc):  # locked, I/O, permissions, a bug: nothing is moved
                raise StorageError(
                    f"{self.path}: cannot open the agent database: {exc}") from exc
            aside = self._put_aside(str(exc))
        try:
            db = self._open_db()
        except (sqlite3.Error, OSError) as exc:
            raise StorageError(f"{self.path}: cannot open a new agent database after "
                               f"setting the corrupt one aside as {aside}: {exc}") from exc
        return db

    def _put_aside(self, reason: str) -> Path:
        """Move a corrupt database (and its WAL) out of the way, loudly."""
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        aside = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
        # The WAL first: a crash between the renames must not leave a WAL beside a new,
        # empty database (SQLite would drop it) or beside none.
        for suffix in ("-wal", "-shm", ""):
            source = Path(f"{self.path}{suffix}")
            if source.exists():
                source.rename(Path(f"{aside}{suffix}"))
        self.set_aside = {"file": str(aside), "reason": reason, "at": time.time()}
        log.critical("the agent database %s is corrupt (%s): set aside as %s; starting with an "
                     "empty database", self.path, reason, aside)
        return aside

    def _open_db(self) -> sqlite3.Connection:
        """Open, check and bring the schema up to date. Raises ``sqlite3.DatabaseError``
        (not ``OperationalError``) when the file is not a sound database."""
        db: sqlite3.Connection | None = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.execute("PRAGMA busy_timeout=5000")
            problems = [row[0] for row in db.execute("PRAGMA quick_check(5)")]
            if problems != ["ok"]:
                raise _Corrupt(f"integrity check: {'; '.join(problems)}")
            db.executescript(_SCHEMA)
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version == 0:
                db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            elif version < SCHEMA_VERSION:
                _migrate(db, version)
            elif version != SCHEMA_VERSION:
                raise StorageError(
                    f"{self.path}: database schema {version} is newer than this agent "
                    f"understands ({SCHEMA_VERSION})"
                )
            # A write at start: a database (or WAL) the agent can read but not write stops
            # the start here, not at the first parcel.
            meta_add(db, "store.opens", 1)
        except BaseException as exc:
            if db is not None:
                db.close()
            if isinstance(exc, sqlite3.DatabaseError | StorageError):
                raise
            if isinstance(exc, sqlite3.Error | OSError):
                raise StorageError(f"{self.path}: cannot open the agent database: {exc}") \
                    from exc
            raise
        log.info("store %s open (WAL, synchronous=FULL)", self.path)
        return db

    async def close(self) -> None:
        def _close(db: sqlite3.Connection) -> None:
            db.close()
            self._db = None

        if self._db is not None:
            await self.run(_close)
        self._executor.shutdown(wait=True)


class Transaction:
    """``with Transaction(db):`` runs the block in one ``BEGIN IMMEDIATE`` ... ``COMMIT``."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> sqlite3.Connection:
        self._db.execute("BEGIN IMMEDIATE")
        return self._db

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type:
            if self._db.in_transaction:  # an error may have rolled it back already
                self._db.execute("ROLLBACK")
            return
        try:
            self._db.execute("COMMIT")
        except sqlite3.Error:
            # A COMMIT refused (a full disk) may leave the transaction open.
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise


def meta_get(db: sqlite3.Connection, key: str, default: int = 0) -> int:
    row = db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
    return int(row[0]) if row else default


def meta_add(db: sqlite3.Connection, key: str, delta: int) -> int:
    """Add ``delta`` to the counter ``key`` (inside the caller's transaction) and return it."""
    db.execute(
        "INSERT INTO meta (key, value) VALUES (?, ?) "
        "ON CONFLICT(key) DO UPDATE SET value = value + excluded.value",
        (key, delta),
    )
    return meta_get(db, key)


def _migrate(db: sqlite3.Connection, version: int) -> None:
    """Upgrade a database written by an older agent, in one transaction."""
    db.execute("BEGIN IMMEDIATE")
    try:
        for target in range(version + 1, SCHEMA_VERSION + 1):
            for table, column, kind in _MIGRATIONS[target]:
                columns = {row[1] for row in db.execute(f"PRAGMA table_info({table})")}
                if column not in columns:
                    db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")
        db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    log.warning("database upgraded from schema %d to %d", version, SCHEMA_VERSION)


class _Corrupt(sqlite3.DatabaseError):
    """``PRAGMA quick_check`` found damage."""


def _corrupt(exc: sqlite3.DatabaseError) -> bool:
    """The file is not a sound database (not: locked, unreadable, a full disk, a bug)."""
    return isinstance(exc, _Corrupt) or getattr(exc, "sqlite_errorcode", None) in (
        sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB)
