"""How a finished parcel is stored: evidence, event and packed orders together, or an
intercept when the order was stopped after its label; nothing lost when the outbox is full.

The real Store, Outbox, OrderBook, PrintService and PackService, in process; events stay
in the outbox table (there is no broker), where the test reads them.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from agent.bus import Bus
from agent.config import OrdersConfig, PackJobConfig, PrintJobsConfig
from agent.devices.manager import DeviceManager
from agent.errors import OutboxFull
from agent.jobs.order_book import OrderBook
from agent.jobs.pack_service import PackService
from agent.jobs.print_service import PrintService
from agent.outbox import Outbox, Priority
from agent.store import Store
from agent.topics import Topics
from tests.test_orders import _Link
from tests.test_pack_flow import make_order


class _Commands:
    def register(self, *_args: Any, **_kwargs: Any) -> None:
        pass


async def _no_report(*_args: Any) -> None:
    pass


def evidence(verdict: str = "pass") -> dict[str, Any]:
    return {"kind": "pack", "verdict": verdict, "order_ids": ["SO-1001"],
            "waybill": "SF1234567890", "packer": "EMP-7", "orders": [], "photos": []}


def events(tmp: Path, kind: str) -> list[dict[str, Any]]:
    with sqlite3.connect(tmp / "agent.db") as db:
        rows = db.execute("SELECT data FROM outbox WHERE kind = ? ORDER BY seq", (kind,))
        return [json.loads(row[0]) for row in rows]


async def service(tmp: Path, max_events: int = 1000, *, push: bool = True
                  ) -> tuple[Store, Outbox, OrderBook, PackService]:
    store = Store(tmp / "agent.db")
    await store.open()
    outbox = Outbox(store, site="s", bench="b", event_topic=lambda kind: kind,
                    max_events=max_events, max_bytes=1 << 22)
    await outbox.load()
    devices = DeviceManager({}, Bus(), _no_report)
    book = OrderBook(OrdersConfig(), store, outbox, _Link())
    printing = PrintService(PrintJobsConfig(), devices, store, outbox,
                            _Commands())  # type: ignore[arg-type]
    pack = PackService(PackJobConfig(), storage_dir=tmp, devices=devices, bus=Bus(),
                       orders=book, printing=printing, store=store, outbox=outbox,
                       link=None, topics=Topics("r", "s", "b"),  # type: ignore[arg-type]
                       commands=_Commands())  # type: ignore[arg-type]
    await pack.evidence.open()
    if push:
        await book.push([make_order()])
    return store, outbox, book, pack


def test_a_passing_parcel_is_stored_with_its_orders_packed_in_one_go(tmp_path: Path) -> None:
    async def main() -> None:
        store, _outbox, book, pack = await service(tmp_path)
        await pack._report(evidence(), "0193-e1")
        [result] = events(tmp_path, "pack.result")
        assert result["verdict"] == "pass" and result["evidence_id"] == "0193-e1"
        parcel = await book.get("SO-1001")
        assert parcel is not None and parcel.records[0].state.value == "packed"
        assert parcel.records[0].evidence_id == "0193-e1"
        assert [r["evidence_id"] for r in await pack.evidence.find("SF1234567890")] == [
            "0193-e1"]
        await store.close()

    asyncio.run(asyncio.wait_for(main(), 20))


def test_an_order_held_after_its_label_turns_the_parcel_into_an_intercept(
        tmp_path: Path) -> None:
    async def main() -> None:
        store, _outbox, book, pack = await service(tmp_path)
        await book.hold("SO-1001", "buyer changed the address")  # lands before the report
        await pack._report(evidence(), "0193-e2")
        [result] = events(tmp_path, "pack.result")
        assert result["verdict"] == "intercepted"
        assert "buyer changed the address" in result["reason"]
        [stop] = events(tmp_path, "pack.intercept")
        assert stop["stage"] == "after_label" and stop["order_ids"] == ["SO-1001"]
        assert pack.alert is not None and pack.alert.startswith("STOP:")
        assert pack.last_signal == "intercept"
        parcel = await book.get("SO-1001")
        assert parcel is not None and parcel.records[0].state.value == "held"
        await store.close()

    asyncio.run(asyncio.wait_for(main(), 20))


def test_a_full_outbox_keeps_the_result_until_there_is_room(tmp_path: Path) -> None:
    async def main() -> None:
        store, outbox, book, pack = await service(tmp_path, max_events=20)
        with pytest.raises(OutboxFull):
            for n in range(100):
                await outbox.enqueue("filler", {"n": n}, priority=Priority.CRITICAL)
        report = asyncio.create_task(pack._report(evidence(), "0193-e3"))
        await asyncio.sleep(1.5)
        assert not report.done() and events(tmp_path, "pack.result") == []
        assert pack.alert is not None and "outbox is full" in pack.alert
        parcel = await book.get("SO-1001")
        assert parcel is not None and parcel.records[0].state.value == "open"
        seqs = await store.run(lambda db: [r[0] for r in db.execute("SELECT seq FROM outbox")])
        await store.run(outbox._delete, seqs)  # the broker took everything
        await asyncio.wait_for(report, 5)
        assert [e["evidence_id"] for e in events(tmp_path, "pack.result")] == ["0193-e3"]
        parcel = await book.get("SO-1001")
        assert parcel is not None and parcel.records[0].state.value == "packed"
        await store.close()

    asyncio.run(asyncio.wait_for(main(), 30))


def test_orders_count_as_packed_while_the_report_waits_for_a_photo_even_one_that_crashes(
        tmp_path: Path) -> None:
    """The closed-box photo is still being taken when the label is scanned: the report
    waits for it; meanwhile a second scan of the order is refused as packed; a photo
    task that dies of a bug costs the parcel nothing but that photo."""
    from agent.jobs.pack_events import OrderFound, ReportResult, TakePhoto

    async def main() -> None:
        store, _outbox, book, pack = await service(tmp_path)

        async def crashing_photo(*_args: Any) -> Any:
            await asyncio.sleep(0.5)
            raise RuntimeError("encoder bug")

        pack.photos._photo = crashing_photo  # type: ignore[method-assign]
        await pack._carry_out(TakePhoto("closed", 1))
        record = {**evidence(), "photos": [{"moment": "closed", "path": None, "at": None,
                                            "error": "no answer from the camera"}]}
        await pack._carry_out(ReportResult(record))
        await pack._lookup("SO-1001")
        [found] = [e for e in [pack._events.get_nowait() for _ in range(pack._events.qsize())]
                   if isinstance(e, OrderFound)]
        assert found.parcel.states["SO-1001"][0] == "packed"
        assert events(tmp_path, "pack.result") == [], "still waiting for the photo"
        await asyncio.wait_for(asyncio.gather(*pack._reports), 5)
        [result] = events(tmp_path, "pack.result")
        assert result["verdict"] == "pass" and result["photos"][0]["path"] is None
        parcel = await book.get("SO-1001")
        assert parcel is not None and parcel.records[0].state.value == "packed"
        assert pack._reporting_orders == set()
        await store.close()

    asyncio.run(asyncio.wait_for(main(), 20))


def test_a_parcel_finished_just_before_a_crash_is_reported_at_the_next_start(
        tmp_path: Path) -> None:
    """The record is on disk before the packer sees "complete": killed while its report
    waits (for a photo here), the agent reports it when it starts again, with the photo
    written meanwhile, once."""
    from agent.jobs.pack_events import ReportResult, TakePhoto

    async def main() -> None:
        store, _outbox, book, pack = await service(tmp_path)

        async def stuck_camera(*_args: Any) -> Any:
            await asyncio.sleep(3600)

        pack.photos._photo = stuck_camera  # type: ignore[method-assign]
        await pack._carry_out(TakePhoto("closed", 1))
        record = {**evidence(), "photos": [{"moment": "closed", "path": None, "at": None,
                                            "error": "no answer from the camera"}]}
        await pack._carry_out(ReportResult(record))
        with sqlite3.connect(tmp_path / "agent.db") as db:
            [(evidence_id,)] = db.execute("SELECT evidence_id FROM pending_results").fetchall()
        assert events(tmp_path, "pack.result") == []
        for task in pack._reports | {t for ts in pack.photos._tasks.values() for t in ts}:
            task.cancel()  # kill -9: nothing more happens in this process
        await store.close()
        # The camera had written the file before the power went.
        photo = pack.evidence.photo_path(evidence_id, "closed")
        photo.parent.mkdir(parents=True, exist_ok=True)
        photo.write_bytes(b"\xff\xd8jpeg")

        store, _outbox, book, pack = await service(tmp_path, push=False)
        await pack._resume_reports()
        await asyncio.wait_for(asyncio.gather(*pack._reports), 5)
        [result] = events(tmp_path, "pack.result")
        assert result["evidence_id"] == evidence_id and result["verdict"] == "pass"
        assert result["photos"][0]["path"].endswith(f"{evidence_id}-closed.jpg")
        parcel = await book.get("SO-1001")
        assert parcel is not None and parcel.records[0].state.value == "packed"
        with sqlite3.connect(tmp_path / "agent.db") as db:
            assert db.execute("SELECT COUNT(*) FROM pending_results").fetchone() == (0,)
        await pack._resume_reports()  # a second start reports nothing again
        assert len(events(tmp_path, "pack.result")) == 1
        await store.close()

    asyncio.run(asyncio.wait_for(main(), 20))
