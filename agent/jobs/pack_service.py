"""The packing job: the pure :class:`PackFlow` driven by the bench's devices and services.

The daemon's ``pack`` service. It feeds the flow, one event at a time from one queue:
scans from the scanners with ``jobs.pack.scanner_role``, readings of the parcel scale, a
tick every 0.5 s, and the answers to the flow's actions. It carries out the actions:

* ``LookupOrder``: the order book, then the central system (``order.request``);
* ``TakePhoto``: a JPEG from the camera with ``camera_role`` into the evidence folder;
* ``SubmitPrint`` / ``Reprint``: the print queue; its job states come back as events;
* ``RequestLabels``: a ``pack.labels_request`` event, answered by ``pack.labels``;
* ``ReportIntercept``: a ``pack.intercept`` event (critical);
* ``ReportResult``: the evidence record and the ``pack.result`` event in one transaction,
  then the orders marked packed;
* ``Signal``: shown on every signal device (stack light, buzzer) and in the state.

The flow's snapshot is published retained on ``{prefix}/state`` at every change (at
most every 0.2 s while only the live weight moves) and again after every reconnection.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent.bus import Bus
from agent.clock import ClockWatch
from agent.commands import CommandChannel
from agent.config import PackJobConfig
from agent.devices.manager import DeviceManager
from agent.devices.readings import Scan, WeightReading
from agent.devices.signal import SignalDevice
from agent.errors import AgentError, OutboxFull, StorageError
from agent.jobs.evidence import (
    EvidenceLimits,
    EvidenceStore,
    insert_record,
    journal,
    journaled,
    new_evidence_id,
    unjournal,
)
from agent.jobs.order_book import OrderBook, OrderError
from agent.jobs.order_store import Parcel
from agent.jobs.pack_events import (
    Action,
    Event,
    LabelsReady,
    LookupOrder,
    OrderFound,
    OrderIntercepted,
    OrderNotFound,
    OrderUpdated,
    ParcelInfo,
    PrintResult,
    ReportIntercept,
    ReportResult,
    Reprint,
    RequestLabels,
    Signal,
    SubmitPrint,
    TakePhoto,
    Tick,
)
from agent.jobs.pack_flow import PackFlow
from agent.jobs.pack_photos import ParcelPhotos
from agent.jobs.print_model import ATTACHED_JOB_SCHEMA
from agent.jobs.print_service import PrintService
from agent.mqtt import MqttLink
from agent.outbox import Outbox, Priority, dumps, iso_time
from agent.store import Store
from agent.tasks import spawn, task_name
from agent.topics import Topics

log = logging.getLogger("agent.jobs.pack")

_TICK_S = 0.5
_STATE_EVERY_S = 0.2
_RETENTION_EVERY_S = 3600.0
_RETRY_S = 1.0

LABELS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["order_ids"],
    "additionalProperties": False,
    "properties": {
        "order_ids": {"type": "array", "minItems": 1, "items": {"type": "string"}},
        "waybill": {"type": "string", "minLength": 1, "maxLength": 128},
        "jobs": {"type": "array", "maxItems": 10, "items": ATTACHED_JOB_SCHEMA},
    },
}
FIND_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["key"],
    "additionalProperties": False,
    "properties": {"key": {"type": "string", "minLength": 1, "maxLength": 128},
                   "limit": {"type": "integer", "minimum": 1, "maximum": 100}},
}


class PackService:
    """The packing flow on this bench's devices."""

    name = "pack"

    def __init__(self, config: PackJobConfig, *, storage_dir: Path, devices: DeviceManager,
                 bus: Bus, orders: OrderBook, printing: PrintService, store: Store,
                 outbox: Outbox, link: MqttLink, topics: Topics,
                 commands: CommandChannel, clock: ClockWatch | None = None) -> None:
        self.config = config
        self.clock = clock or ClockWatch()
        """The daemon's: a forward jump pauses age-based retention."""
        self.flow = PackFlow(config.flow)
        self.evidence = EvidenceStore(
            store, config.photo_dir or storage_dir / "photos",
            EvidenceLimits(config.photo_max_age_days, config.photo_quota_mb,
                           config.record_retention_days, config.photo_min_free_mb))
        self._devices, self._bus, self._orders, self._printing = devices, bus, orders, printing
        self._store = store
        self._outbox, self._link, self._topics = outbox, link, topics
        self._events: asyncio.Queue[Event] = asyncio.Queue()
        self._parcel_id: str | None = None
        self.photos = ParcelPhotos(devices, config, self.evidence, self._events.put_nowait)
        self._reports: set[asyncio.Task[None]] = set()
        self._reporting_orders: set[str] = set()
        """Orders of passing parcels whose report is not stored yet."""
        self._waiting: tuple[float, str] | None = None
        """Since when, and why, finished parcels wait for the store (full outbox or disk)."""
        self._state_dirty = asyncio.Event()
        self._state_urgent = asyncio.Event()
        """Set when something besides the live weight changed: published without waiting."""
        self.last_signal: str | None = None
        self._reporting = asyncio.Lock()
        self.alert: str | None = None
        """Something the packer must act on that the flow does not know (an intercept
        after the label, results that cannot be stored); cleared by the next scan."""
        orders.listeners.append(self._order_changed)
        orders.pushed.append(lambda order: self._events.put_nowait(
            OrderUpdated(order, time.time())))
        printing.listeners.append(self._job_changed)
        commands.register("pack.labels", self._cmd_labels, args_schema=LABELS_SCHEMA,
                          action=True)
        commands.register("pack.state", self._cmd_state, local=True)
        commands.register("evidence.find", self._cmd_find, args_schema=FIND_SCHEMA,
                          local=True)

    # ------------------------------------------------------------ service
    async def run(self, _daemon: object = None) -> None:
        await self.evidence.open()
        await self._resume_reports()
        scanners = {d.name for d in self._devices.by_role(self.config.scanner_role, "scanner")}
        if not scanners:
            log.warning("no scanner has role %r: the packing flow gets no scans",
                        self.config.scanner_role)
        scale = self.config.scale or next(
            (d.name for d in self._devices.devices.values() if d.kind == "scale"), None)
        try:
            await self._serve(scanners, scale)
        finally:
            # Stopping: the parcels already finished are stored before the store closes.
            if self._reports:
                await asyncio.wait(self._reports, timeout=self.config.photo_wait_s + 5)

    async def _serve(self, scanners: set[str], scale: str | None) -> None:
        async with asyncio.TaskGroup() as group:
            group.create_task(self._feed_scans(scanners), name=task_name("pack.scans"))
            group.create_task(self._feed_weights(scale), name=task_name("pack.weights"))
            group.create_task(self._tick(), name=task_name("pack.tick"))
            group.create_task(self._consume(), name=task_name("pack.flow"))
            group.create_task(self._publish_state(), name=task_name("pack.state"))
            group.create_task(self._retention(), name=task_name("pack.retention"))

    async def _feed_scans(self, scanners: set[str]) -> None:
        with self._bus.subscribe(Scan, maxsize=256) as scans:
            async for scan in scans:
                if scan.device in scanners:
                    self._events.put_nowait(scan)

    async def _feed_weights(self, scale: str | None) -> None:
        if scale is None:
            log.warning("no scale: the packing flow cannot weigh parcels")
            return
        with self._bus.subscribe(WeightReading, device=scale, maxsize=256) as readings:
            async for reading in readings:
                self._events.put_nowait(reading)

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(_TICK_S)
            self._events.put_nowait(Tick(time.time()))

    async def _retention(self) -> None:
        """Apply the evidence retention at start and then every hour."""
        while True:
            try:
                await self.evidence.prune(by_age=not self.clock.retention_paused)
            except (AgentError, OSError) as exc:
                log.error("evidence retention failed: %s", exc)
            await asyncio.sleep(_RETENTION_EVERY_S)

    async def _consume(self) -> None:
        before = self.flow.snapshot()
        while True:
            event = await self._events.get()
            try:
                actions = self.flow.handle(event, time.monotonic())
            except Exception:  # a bug in the flow must not stop the bench
                log.exception("packing flow failed on %s", type(event).__name__)
                continue
            if isinstance(event, Scan):
                self.alert = None  # the packer has moved on
            # A finished parcel is on disk before the packer sees "complete" (its photos
            # are asked for first: they are filed under its evidence id).
            actions.sort(key=lambda a: not isinstance(a, TakePhoto | ReportResult))
            for action in actions:
                try:
                    await self._carry_out(action)
                except Exception:  # one failed action must not stop the bench's scans
                    log.exception("packing action %s failed", type(action).__name__)
            now = self.flow.snapshot()
            if now != before:
                if _beyond_live_weight(now) != _beyond_live_weight(before):
                    self._state_urgent.set()
                before = now
                self._state_dirty.set()

    # ------------------------------------------------------------ actions
    async def _carry_out(self, action: Action) -> None:
        if isinstance(action, Signal):
            log.info("signal: %s", action.kind)
            self._show(action.kind)
        elif isinstance(action, LookupOrder):
            spawn(self._lookup(action.code), name="pack.lookup")
        elif isinstance(action, TakePhoto):
            # The parcel's evidence id is fixed now, in event order: a photo task that runs
            # late still files its picture under its own parcel.
            self._parcel_id = self._parcel_id or new_evidence_id()
            self.photos.take(action.moment, self._parcel_id, action.parcel)
        elif isinstance(action, SubmitPrint):
            spawn(self._submit_all(action.jobs), name="pack.print")  # rendering takes time
        elif isinstance(action, Reprint):
            for job_id in action.job_ids:
                await self._printing.reprint({"job_id": job_id, "reason": action.reason})
        elif isinstance(action, RequestLabels):
            await self._outbox.enqueue("pack.labels_request", action.as_dict(),
                                       priority=Priority.CRITICAL)
        elif isinstance(action, ReportIntercept):
            await self._outbox.enqueue("pack.intercept", action.record,
                                       priority=Priority.CRITICAL)
        elif isinstance(action, ReportResult):
            evidence_id, self._parcel_id = self._parcel_id or new_evidence_id(), None
            # Until stored, its orders count as packed: a second scan of the order must not
            # open it again while the report waits for a photo or for room in the outbox.
            orders = set(action.evidence.get("order_ids", ())) if _passing(action.evidence) \
                else set()
            self._reporting_orders |= orders
            try:
                await self._store.run(journal, evidence_id, action.evidence)
            except StorageError as exc:  # the report below keeps trying
                log.error("parcel %s could not be journaled: %s", evidence_id, exc)
            finally:  # whatever happened, the report is made
                self._start_report(action.evidence, evidence_id, orders)

    def _start_report(self, evidence: dict[str, Any], evidence_id: str,
                      orders: set[str]) -> None:
        # In a task, so scans go on while a full outbox makes it wait; in order.
        task = spawn(self._report_in_order(evidence, evidence_id, orders), name="pack.report")
        self._reports.add(task)
        task.add_done_callback(self._reports.discard)

    async def _resume_reports(self) -> None:
        """Report the parcels finished before the agent stopped but not stored then."""
        for evidence_id, evidence in await self._store.run(journaled):
            log.warning("parcel %s finished before the last stop; reporting it now",
                        evidence_id)
            evidence = await asyncio.to_thread(self.evidence.find_photos, evidence_id,
                                               evidence)
            orders = set(evidence.get("order_ids", ())) if _passing(evidence) else set()
            self._reporting_orders |= orders
            self._start_report(evidence, evidence_id, orders)

    async def _lookup(self, code: str) -> None:
        try:
            parcel = await self._orders.find(code) or await self._orders.request(code)
            info = _parcel_info(parcel, self._reporting_orders)
            self._events.put_nowait(OrderFound(code, info, time.time()))
        except AgentError as exc:
            self._events.put_nowait(OrderNotFound(code, exc.code, exc.message, time.time()))

    async def _submit_all(self, jobs: tuple[dict[str, Any], ...]) -> None:
        for job in jobs:  # in order: the waybill before its slip
            try:
                result = await self._printing.submit(job)
                if result.get("duplicate"):
                    # Printed (or tried) before, e.g. before a restart: not printed again,
                    # and no state change will follow. The flow learns where it stands
                    # (an uncertain one waits for the packer's reprint).
                    self._job_changed(result)
            except AgentError as exc:
                self._events.put_nowait(PrintResult(job.get("job_id", "?"), "failed",
                                                    time.time(), code=exc.code,
                                                    message=exc.message))

    async def _report_in_order(self, evidence: dict[str, Any], evidence_id: str,
                               orders: set[str]) -> None:
        try:
            async with self._reporting:  # asyncio.Lock is first come, first served
                await self._report(await self.photos.complete(evidence, evidence_id),
                                   evidence_id)
        finally:
            self._reporting_orders -= orders

    async def _report(self, evidence: dict[str, Any], evidence_id: str) -> None:
        """Store the parcel's evidence, its ``pack.result`` event and (for a passing parcel)
        its orders packed, in one transaction. An order held or cancelled since the packer
        last looked turns the parcel into an intercept: stop, signal, report."""
        passing = _passing(evidence)
        while True:
            try:
                if passing:
                    try:
                        await self._orders.commit_packed(
                            evidence["order_ids"], evidence.get("waybill") or "", evidence_id,
                            functools.partial(self._store_result, evidence, evidence_id))
                        return
                    except OrderError as exc:
                        evidence = await self._refused(evidence, exc)
                        passing = False
                await self._store_result(evidence, evidence_id, None)
                return
            except StorageError as exc:
                # Nothing may be lost: keep the record and try again (the flow moved on).
                why = ("the bench's outbox is full (is the broker reachable?)"
                       if isinstance(exc, OutboxFull) else str(exc))
                self._waiting = (self._waiting[0] if self._waiting else time.time(),
                                 f"finished parcels wait to be stored: {why}")
                self.alert = ("results are waiting to be stored: the bench's outbox is full "
                              "(is the broker reachable?)" if isinstance(exc, OutboxFull)
                              else f"results are waiting to be stored: {exc}")
                self._state_dirty.set()
                log.error("parcel %s not stored yet: %s; retrying", evidence_id, exc)
                await asyncio.sleep(_RETRY_S)

    async def _store_result(self, evidence: dict[str, Any], evidence_id: str,
                            mark: Callable[[sqlite3.Connection], None] | None) -> None:
        def also(db: sqlite3.Connection) -> None:
            insert_record(db, evidence_id, evidence)
            unjournal(db, evidence_id)
            if mark is not None:
                mark(db)

        await self._outbox.enqueue("pack.result", {**evidence, "evidence_id": evidence_id},
                                   priority=Priority.CRITICAL, also=also)
        self._waiting = None
        log.info("parcel %s: %s (orders %s, waybill %s)", evidence_id, evidence.get("verdict"),
                 ", ".join(evidence.get("order_ids", [])), evidence.get("waybill"))

    async def _refused(self, evidence: dict[str, Any], exc: OrderError) -> dict[str, Any]:
        """The order book refused to mark the parcel packed: tell the packer and the
        central system, and record why."""
        if exc.code == "intercepted":
            self.alert = (f"STOP: {exc.message}. Take this parcel off the line and set it "
                          f"aside")
            self._show("intercept")
            await self._outbox.enqueue("pack.intercept", {
                "order_ids": evidence.get("order_ids", []), "stage": "after_label",
                "waybill": evidence.get("waybill"), "packer": evidence.get("packer"),
                "reason": exc.message}, priority=Priority.CRITICAL)
            verdict = "intercepted"
        else:
            self.alert = f"this parcel was not recorded as packed: {exc.message}"
            self._show("bad")
            verdict = "not_recorded"
        self._state_dirty.set()
        log.warning("parcel of %s: %s", ", ".join(evidence.get("order_ids", [])), exc.message)
        return {**evidence, "verdict": verdict, "reason": f"after the label: {exc.message}"}

    def _show(self, signal: str) -> None:
        self.last_signal = signal
        for device in self._devices.devices.values():
            if isinstance(device, SignalDevice):
                device.show(signal)

    # ------------------------------------------------------------ listeners
    def _order_changed(self, order_id: str, state: str, reason: str | None) -> None:
        self._events.put_nowait(OrderIntercepted(order_id, state, reason, time.time()))

    def _job_changed(self, view: dict[str, Any]) -> None:
        group = view.get("group") or {}
        self._events.put_nowait(PrintResult(view["job_id"], view["state"], time.time(),
                                            printer=view["printer"], code=view["code"],
                                            message=view["message"], group=group.get("id"),
                                            waybill=view.get("waybill")))

    # ------------------------------------------------------------ state topic
    async def _publish_state(self) -> None:
        """Publish after every (re)connection and every change; at most every 0.2 s while
        only the live weight moves (a change the packer must see goes at once)."""
        while True:
            await self._link.connected.wait()
            connection = self._link.connection
            self._state_dirty.clear()
            self._state_urgent.clear()
            self._link.publish_retained(self._topics.state, dumps(self.state()))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(_STATE_EVERY_S):
                    await self._state_urgent.wait()
            while not self._state_dirty.is_set():
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(1.0):
                        await self._state_dirty.wait()
                if self._link.connection != connection or not self._link.connected.is_set():
                    break  # a new connection: publish again once it is up

    def alarms(self) -> list[dict[str, Any]]:
        """The packing job's alarms, in the status message's format."""
        found = []
        if self.photos.refused is not None:
            since, why = self.photos.refused
            found.append({"code": "photos_refused", "since": iso_time(since), "message": why})
        if self._waiting is not None:
            found.append({"code": "results_waiting", "since": iso_time(self._waiting[0]),
                          "message": self._waiting[1]})
        return found

    def state(self) -> dict[str, Any]:
        return {**self.flow.snapshot(), "signal": self.last_signal, "alert": self.alert}

    # ------------------------------------------------------------ commands
    async def _cmd_labels(self, args: dict[str, Any]) -> dict[str, Any]:
        self._events.put_nowait(LabelsReady(tuple(args["order_ids"]), time.time(),
                                            waybill=args.get("waybill"),
                                            jobs=tuple(args.get("jobs", ()))))
        return {"accepted": True}

    async def _cmd_state(self, _args: dict[str, Any]) -> dict[str, Any]:
        return self.state()

    async def _cmd_find(self, args: dict[str, Any]) -> dict[str, Any]:
        return {"records": await self.evidence.find(args["key"], args.get("limit", 20))}


def _beyond_live_weight(view: dict[str, Any]) -> dict[str, Any]:
    """The snapshot without what a moving weight alone changes."""
    return {k: v for k, v in view.items() if k not in ("last_weight_g", "changed_at")}


def _passing(evidence: dict[str, Any]) -> bool:
    """A packed parcel (not abandoned, intercepted or a return): its orders become packed."""
    return evidence.get("kind", "pack") == "pack" and str(
        evidence.get("verdict", "")).startswith("pass")


def _parcel_info(parcel: Parcel, reporting: set[str]) -> ParcelInfo:
    """The order book's parcel as the flow reads it; orders of a parcel whose report is
    still on its way to the store count as packed already."""
    packed: dict[str, tuple[float | None, str | None]] = {
        record.order_id: (record.packed_at, record.waybill)
        for record in parcel.records if record.packed_at is not None}
    states = {order_id: (state.value, reason)
              for order_id, (state, reason) in parcel.states.items()}
    for order_id in reporting & set(states):
        if states[order_id][0] not in ("held", "cancelled"):
            states[order_id] = ("packed", "being reported")
    return ParcelInfo(parcel.orders, states, packed)
