"""The durable outbox on a real SQLite file: order, sequence, bounds, eviction, alarms."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from agent.errors import OutboxFull
from agent.outbox import Outbox, Priority
from agent.store import Store

T = TypeVar("T")


def _run(tmp_path: Path, body: Callable[[Outbox], Awaitable[T]], **limits: int) -> T:
    async def main() -> T:
        store = Store(tmp_path / "agent.db")
        await store.open()
        outbox = Outbox(store, site="s", bench="b", event_topic=lambda k: f"t/{k}",
                        max_events=limits.get("max_events", 1000),
                        max_bytes=limits.get("max_bytes", 1 << 20))
        await outbox.load()
        try:
            return await body(outbox)
        finally:
            await store.close()
    return asyncio.run(main())


def _rows(tmp_path: Path) -> list[tuple[Any, ...]]:
    with sqlite3.connect(tmp_path / "agent.db") as db:
        return db.execute("SELECT seq, kind, priority FROM outbox ORDER BY seq").fetchall()


def test_events_get_increasing_seq_and_unique_time_ordered_ids(tmp_path: Path) -> None:
    async def body(outbox: Outbox) -> list[Any]:
        return [await outbox.enqueue("pack.result", {"n": n}) for n in range(5)]
    events = _run(tmp_path, body)
    assert [e.seq for e in events] == [1, 2, 3, 4, 5]
    assert [e.id for e in events] == sorted(e.id for e in events)
    assert len({e.id for e in events}) == 5


def test_seq_never_goes_backwards_even_after_the_outbox_emptied_and_restarted(
        tmp_path: Path) -> None:
    async def fill(outbox: Outbox) -> None:
        for n in range(3):
            await outbox.enqueue("x", {"n": n})
    _run(tmp_path, fill)
    with sqlite3.connect(tmp_path / "agent.db") as db:
        db.execute("DELETE FROM outbox")  # as if all were acknowledged

    async def more(outbox: Outbox) -> int:
        return (await outbox.enqueue("x", {})).seq  # type: ignore[union-attr]
    assert _run(tmp_path, more) == 4


def test_concurrent_enqueues_are_all_committed_in_call_order(tmp_path: Path) -> None:
    async def body(outbox: Outbox) -> None:
        await asyncio.gather(*(outbox.enqueue("x", {"n": n}) for n in range(200)))
    _run(tmp_path, body)
    rows = _rows(tmp_path)
    assert [r[0] for r in rows] == list(range(1, 201))


def test_when_full_the_oldest_telemetry_goes_first_then_normal_never_critical(
        tmp_path: Path) -> None:
    async def body(outbox: Outbox) -> dict[str, Any]:
        await outbox.enqueue("pack.result", {}, priority=Priority.CRITICAL)
        await outbox.enqueue("device.status", {}, priority=Priority.NORMAL)
        await outbox.enqueue("weight", {"n": 1}, priority=Priority.TELEMETRY)
        await outbox.enqueue("weight", {"n": 2}, priority=Priority.TELEMETRY)
        await outbox.enqueue("pack.result", {}, priority=Priority.CRITICAL)  # evicts n=1
        await outbox.enqueue("pack.result", {}, priority=Priority.CRITICAL)  # evicts n=2
        await outbox.enqueue("pack.result", {}, priority=Priority.CRITICAL)  # evicts normal
        with pytest.raises(OutboxFull, match="nothing less important to evict"):
            await outbox.enqueue("pack.result", {}, priority=Priority.CRITICAL)
        return await outbox.stats()
    stats = _run(tmp_path, body, max_events=4)
    assert [r[1] for r in _rows(tmp_path)] == ["pack.result"] * 4
    assert stats["dropped"] == {"telemetry": 2, "normal": 1}
    assert stats["refused"] == 1


def test_new_telemetry_is_dropped_rather_than_evicting_more_important_events(
        tmp_path: Path) -> None:
    async def body(outbox: Outbox) -> Any:
        await outbox.enqueue("device.status", {}, priority=Priority.NORMAL)
        await outbox.enqueue("device.status", {}, priority=Priority.NORMAL)
        return await outbox.enqueue("weight", {}, priority=Priority.TELEMETRY)
    assert _run(tmp_path, body, max_events=2) is None
    assert len(_rows(tmp_path)) == 2


def test_the_byte_limit_counts_too(tmp_path: Path) -> None:
    async def body(outbox: Outbox) -> None:
        for _ in range(3):
            await outbox.enqueue("weight", {"pad": "x" * 30_000}, priority=Priority.TELEMETRY)
    _run(tmp_path, body, max_bytes=64 * 1024)
    assert len(_rows(tmp_path)) == 2


def test_a_full_outbox_raises_an_alarm_that_says_what_was_lost_and_survives_restart(
        tmp_path: Path) -> None:
    async def body(outbox: Outbox) -> list[dict[str, Any]]:
        changes: list[int] = []
        outbox.on_alarm_change = lambda: changes.append(1)
        for _ in range(12):
            await outbox.enqueue("weight", {}, priority=Priority.TELEMETRY)
        await asyncio.sleep(0)
        assert changes, "the daemon must be told so that it republishes the status"
        return outbox.alarms()
    alarms = _run(tmp_path, body, max_events=10)
    assert alarms[0]["code"] == "outbox_full"
    assert "dropped 2 telemetry" in alarms[0]["message"]

    async def reopened(outbox: Outbox) -> dict[str, Any]:
        return await outbox.stats()
    assert _run(tmp_path, reopened, max_events=10)["dropped"]["telemetry"] == 2


def test_stats_report_backlog_depth_and_oldest_age(tmp_path: Path) -> None:
    async def body(outbox: Outbox) -> dict[str, Any]:
        await outbox.enqueue("a", {})
        await asyncio.sleep(0.2)
        await outbox.enqueue("b", {})
        return await outbox.stats()
    stats = _run(tmp_path, body)
    assert stats["pending"] == 2
    assert stats["oldest_age_s"] >= 0.2
    assert stats["oldest_created_at"].endswith("Z")


def test_the_published_envelope_carries_identity_times_and_the_replayed_flag(
        tmp_path: Path) -> None:
    async def body(outbox: Outbox) -> tuple[bytes, bytes]:
        before = await outbox.enqueue("x", {"k": "é"})
        outbox.on_connected()  # events stored before the connection are late
        after = await outbox.enqueue("x", {"k": 2})
        assert before is not None and after is not None
        return outbox.envelope(before), outbox.envelope(after)
    import json
    late, live = (json.loads(b) for b in _run(tmp_path, body))
    assert late["replayed"] is True and live["replayed"] is False
    assert late["data"] == {"k": "é"} and late["site"] == "s" and late["bench"] == "b"
    assert late["seq"] == 1 and live["seq"] == 2


def test_a_database_of_an_older_agent_is_upgraded_and_keeps_its_events(
        tmp_path: Path) -> None:
    """Schema 1 had no print_jobs.waybill: opening it adds the column, keeps the rows."""
    from agent.store import SCHEMA_VERSION, StorageError
    with sqlite3.connect(tmp_path / "agent.db") as db:
        db.executescript(
            "CREATE TABLE print_jobs (seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL"
            " UNIQUE, printer TEXT NOT NULL, document TEXT NOT NULL, copies INTEGER NOT NULL,"
            " size INTEGER NOT NULL, labels INTEGER, summary TEXT NOT NULL, received_at REAL"
            " NOT NULL, expires_at REAL, group_id TEXT, group_seq INTEGER, group_size INTEGER,"
            " state TEXT NOT NULL, code TEXT, message TEXT NOT NULL, attempt INTEGER NOT NULL,"
            " updated_at REAL NOT NULL, data BLOB);"
            "INSERT INTO print_jobs (id, printer, document, copies, size, summary, received_at,"
            " state, message, attempt, updated_at) VALUES ('J1', 'label', 'zpl', 1, 9, '', 1,"
            " 'printed', '', 1, 1);"
            "PRAGMA user_version=1;")

    async def body(outbox: Outbox) -> Any:
        await outbox.enqueue("a", {})
        return outbox.count
    assert _run(tmp_path, body) == 1
    with sqlite3.connect(tmp_path / "agent.db") as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert db.execute("SELECT id, waybill FROM print_jobs").fetchall() == [("J1", None)]
        db.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    with pytest.raises(StorageError, match="newer than this agent understands"):
        _run(tmp_path, body)


def test_a_schema_1_database_from_before_print_jobs_is_upgraded_too(tmp_path: Path) -> None:
    """The first agents' databases had no print_jobs table at all: it is created whole."""
    with sqlite3.connect(tmp_path / "agent.db") as db:
        db.executescript("CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);"
                         "PRAGMA user_version=1;")

    async def body(outbox: Outbox) -> Any:
        return await outbox.enqueue("a", {})
    assert _run(tmp_path, body) is not None
    with sqlite3.connect(tmp_path / "agent.db") as db:
        columns = {row[1] for row in db.execute("PRAGMA table_info(print_jobs)")}
        assert "waybill" in columns


def test_a_commit_the_full_disk_refuses_leaves_the_counts_as_the_rows(tmp_path: Path) -> None:
    """SQLITE_FULL (here from max_page_count, as from a full disk): nothing stored, nothing
    counted; once there is room the outbox takes events and enforces its limits again."""
    from agent.errors import StorageError

    async def body(outbox: Outbox) -> tuple[int, int, int]:
        await outbox.enqueue("a", {"n": 0})
        pages = await outbox._store.run(
            lambda db: db.execute("PRAGMA page_count").fetchone()[0])
        await outbox._store.run(lambda db: db.execute(f"PRAGMA max_page_count={pages}"))
        for n in range(10):
            with pytest.raises(StorageError, match="full"):
                await outbox.enqueue("big", {"pad": "x" * 20000, "n": n},
                                     priority=Priority.CRITICAL)
        assert (outbox.count, outbox.last_seq) == (1, 1)
        await outbox._store.run(lambda db: db.execute("PRAGMA max_page_count=1073741823"))
        for n in range(3):
            await outbox.enqueue("b", {"n": n}, priority=Priority.CRITICAL)
        rows = await outbox._store.run(
            lambda db: db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])
        return outbox.count, rows, outbox.last_seq
    count, rows, last_seq = _run(tmp_path, body, max_events=5)
    assert count == rows == 4 and last_seq == 4
