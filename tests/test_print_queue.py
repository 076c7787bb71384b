"""The print queue in process, with a full outbox: nothing is lost, nothing stops.

The real ``Store``, ``Outbox``, ``DeviceManager`` and ``PrintService`` run against a ZPL
printer simulator on TCP; there is no broker, so events stay in the outbox table, where
the test reads them, and "the broker acknowledged everything" is deleting those rows.
"""

from __future__ import annotations

import asyncio
import base64
import json
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from agent.bus import Bus
from agent.config import PrintJobsConfig
from agent.devices.manager import DeviceManager
from agent.devices.settings import PrinterSettings
from agent.errors import OutboxFull
from agent.jobs.print_service import PrintService
from agent.outbox import Outbox, Priority
from agent.store import Store
from simulators.printer import LabelPrinterSim

Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


class Commands:
    """What PrintService needs of the command channel: a place to register handlers."""

    def __init__(self) -> None:
        self.handlers: dict[str, Handler] = {}

    def register(self, name: str, handler: Handler, **_options: Any) -> None:
        self.handlers[name] = handler


async def _no_report(*_args: Any) -> None:
    pass


def zpl(text: str, quantity: int = 1) -> dict[str, str]:
    job = f"^XA^FO50,50^FD{text}^FS^PQ{quantity}^XZ".encode()
    return {"format": "zpl", "data": base64.b64encode(job).decode()}


@asynccontextmanager
async def queue(tmp: Path, sim: LabelPrinterSim, max_events: int
                ) -> AsyncIterator[tuple[Store, Outbox, PrintService, Commands]]:
    store = Store(tmp / "agent.db")
    await store.open()
    outbox = Outbox(store, site="s", bench="b", event_topic=lambda kind: f"t/{kind}",
                    max_events=max_events, max_bytes=1 << 24)
    await outbox.load()
    printer = PrinterSettings(language="zpl", connection=f"tcp://127.0.0.1:{sim.port}",
                              status_interval_s=0.5)
    devices = DeviceManager({"label": printer}, Bus(), _no_report)
    commands = Commands()
    service = PrintService(PrintJobsConfig(hold_poll_s=0.2, confirm_poll_s=0.05), devices,
                           store, outbox, commands)  # type: ignore[arg-type]
    tasks = [asyncio.create_task(devices.run()), asyncio.create_task(service.run())]
    try:
        yield store, outbox, service, commands
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await store.close()


async def fill(outbox: Outbox) -> None:
    """Fill the outbox with critical events until it refuses the next one."""
    with pytest.raises(OutboxFull):
        for n in range(10_000):
            await outbox.enqueue("filler", {"n": n}, priority=Priority.CRITICAL)


async def drain(store: Store, outbox: Outbox) -> None:
    """The broker is back and acknowledged everything."""
    seqs = await store.run(lambda db: [row[0] for row in db.execute("SELECT seq FROM outbox")])
    await store.run(outbox._delete, seqs)


def job_states(tmp: Path, job_id: str) -> list[str]:
    with sqlite3.connect(tmp / "agent.db") as db:
        rows = db.execute("SELECT data FROM outbox WHERE kind = 'print_job' ORDER BY seq")
        return [e["state"] for e in map(json.loads, (r[0] for r in rows))
                if e["job_id"] == job_id]


async def until(predicate: Callable[[], bool], timeout_s: float = 10.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not predicate():
            await asyncio.sleep(0.05)


@pytest.fixture
def sim() -> Any:
    printer = LabelPrinterSim("zpl", label_time_s=0.5).start()
    yield printer
    printer.stop()


def test_a_job_that_printed_while_the_outbox_was_full_is_reported_printed_later(
        tmp_path: Path, sim: LabelPrinterSim) -> None:
    asyncio.run(asyncio.wait_for(_printed_later(tmp_path, sim), 30))


async def _printed_later(tmp_path: Path, sim: LabelPrinterSim) -> None:
    async with queue(tmp_path, sim, max_events=30) as (store, outbox, service, commands):
        await until(lambda: service.spoolers["label"].printer.connected)
        await commands.handlers["print.submit"]({"job_id": "j1", "printer": "label",
                                                 "document": zpl("A", 2)})
        await until(lambda: service.jobs["j1"].state.value == "printing")
        await fill(outbox)  # the broker is away; the outbox fills up with critical events
        await until(lambda: sim.printed() == 2)
        await asyncio.sleep(0.5)
        assert service.jobs["j1"].state.value == "printing", "nothing stored yet"
        await drain(store, outbox)
        await until(lambda: "j1" not in service.jobs)
        assert job_states(tmp_path, "j1") == ["printed"]  # the others were delivered
        assert service.spoolers["label"].printer.labels_printed == 2
        assert sim.jobs == [base64.b64decode(zpl("A", 2)["data"])], "printed once"


def test_a_full_outbox_at_expiry_stops_nothing_and_the_job_expires_once_there_is_room(
        tmp_path: Path, sim: LabelPrinterSim) -> None:
    asyncio.run(asyncio.wait_for(_expires_later(tmp_path, sim), 30))


async def _expires_later(tmp_path: Path, sim: LabelPrinterSim) -> None:
    async with queue(tmp_path, sim, max_events=20) as (store, outbox, service, commands):
        await until(lambda: service.spoolers["label"].printer.connected)
        sim.set_fault("paper_out")
        await commands.handlers["print.submit"]({"job_id": "j1", "printer": "label",
                                                 "document": zpl("B")})
        await until(lambda: service.jobs["j1"].state.value == "held")
        service.jobs["j1"].expires_at = 946684800.0  # the job's expiry passes ...
        await fill(outbox)  # ... while the broker is away
        await asyncio.sleep(1.5)
        running = [t for t in asyncio.all_tasks() if not t.done()]
        assert len(running) > 3, "the queue's tasks are still running"
        assert service.jobs["j1"].state.value == "held"
        await drain(store, outbox)
        await until(lambda: "j1" not in service.jobs)
        assert job_states(tmp_path, "j1") == ["expired"]
        sim.set_fault("paper_out", on=False)
        await commands.handlers["print.submit"]({"job_id": "j2", "printer": "label",
                                                 "document": zpl("C")})
        await until(lambda: "j2" not in service.jobs)
        assert sim.jobs == [base64.b64decode(zpl("C")["data"])]


def test_finished_jobs_lose_their_bytes_then_their_ids_as_retention_says(
        tmp_path: Path, sim: LabelPrinterSim) -> None:
    asyncio.run(asyncio.wait_for(_retention(tmp_path, sim), 30))


async def _retention(tmp_path: Path, sim: LabelPrinterSim) -> None:
    from agent.errors import CommandError
    from agent.jobs import print_store

    sim.label_time_s = 0.0
    async with queue(tmp_path, sim, max_events=1000) as (store, _outbox, service, commands):
        await until(lambda: service.spoolers["label"].printer.connected)
        await commands.handlers["print.submit"]({"job_id": "j1", "printer": "label",
                                                 "document": zpl("D")})
        await until(lambda: "j1" not in service.jobs)
        later = time.time() + 1
        # keep_data_s passed, retention_s not yet: the id is known, the bytes are gone.
        assert await store.run(print_store.prune, later, later - 3600) == 0
        with pytest.raises(CommandError) as gone:
            await commands.handlers["print.reprint"]({"job_id": "j1"})
        assert gone.value.code == "data_expired"
        again = await commands.handlers["print.submit"]({"job_id": "j1", "printer": "label",
                                                         "document": zpl("D")})
        assert again["duplicate"] is True
        # retention_s passed too: the job is forgotten.
        assert await store.run(print_store.prune, later, later) == 1
        with pytest.raises(CommandError) as unknown:
            await commands.handlers["print.get"]({"job_id": "j1"})
        assert unknown.value.code == "unknown_job"
