"""One worker process of the fleet benchmark: many benches, each a real agent daemon.

Every bench is an :class:`agent.daemon.Daemon` with its own state folder (SQLite on
disk), client certificate and MQTT session, its print queue driving a ZPL label printer
(a simulator in the printer process, on TCP) and its packing job. The daemons share this
process and its event loop (each keeps its own ``bench-store``, ``bench-mqtt-connect``
and paho threads). A :class:`FleetPacker` service in each daemon packs parcels on a fixed
schedule (``--rate`` a minute, starting at a random phase): the scans go into the packing
job's event queue as its scanner task would put them, the settled weight onto the bus as
the scale driver would, and each step waits for the retained state the bench publishes.

Every event a bench's outbox stores is recorded (id, kind, when ``enqueue()`` was
called) so that the benchmark can find each one at the consumers.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import os
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from agent.config import Config, parse_config
from agent.daemon import Daemon
from agent.devices.readings import DeviceState, Scan, WeightCondition, WeightReading
from agent.outbox import Event, Outbox
from benchmarks.parcels import Display, pack_parcel, parcel_order
from benchmarks.procstat import LogTally, rss_bytes

SCALE = "parcel_scale"
STARTS_PER_S = 25.0
"""Benches a worker starts a second."""
log = logging.getLogger("benchmarks.fleet")
tally = LogTally()


@dataclass(frozen=True)
class BenchSpec:
    site: str
    bench: str
    state_dir: str
    socket: str
    cert: str
    key: str
    printer_port: int


@dataclass(frozen=True)
class WorkerPlan:
    benches: list[BenchSpec]
    broker_port: int
    ca: str
    rate_per_min: float
    seconds: float
    records: str
    """File the recorded events are written to, one per line."""


def order_id(site: str, bench: str, n: int) -> str:
    return f"{site}-{bench}-{n:05d}"


def waybill(site: str, bench: str, n: int) -> str:
    return f"SF{site}{bench}{n:05d}".upper()


def fleet_order(site: str, bench: str, n: int) -> dict[str, Any]:
    """The ``order.push`` form of parcel ``n`` of a bench (a waybill label only)."""
    order = parcel_order(order_id(site, bench, n), waybill(site, bench, n), slip=False)
    return order.model_dump(mode="json", exclude_defaults=True)


def bench_config(plan: WorkerPlan, spec: BenchSpec) -> Config:
    raw = {
        "bench": {"site": spec.site, "id": spec.bench,
                  "description": f"fleet benchmark bench {spec.site}/{spec.bench}"},
        "mqtt": {"host": "127.0.0.1", "port": plan.broker_port,
                 "tls": {"ca_file": plan.ca, "cert_file": spec.cert, "key_file": spec.key}},
        "storage": {"dir": spec.state_dir},
        "diagnostics": {"socket": spec.socket},
        "devices": {"label": {"kind": "printer", "language": "zpl", "role": "label",
                              "connection": f"tcp://127.0.0.1:{spec.printer_port}",
                              "status_interval_s": 5.0}},
        # No camera: 200 grabber threads decoding image files would be the load.
        "jobs": {"pack": {"scale": SCALE, "flow": {"photo_moments": {}}}},
    }
    return parse_config(raw, source=Path(spec.state_dir) / "bench.toml")


@dataclass
class Recorded:
    """What one bench did, for the benchmark's accounting."""

    events: list[tuple[str, str, str, float]] = field(default_factory=list)
    """(event id, bench, kind, when ``enqueue()`` was called)."""
    parcels: int = 0
    late: int = 0
    failed: int = 0
    waited_for_orders: int = 0


def record_events(outbox: Outbox, bench: str, recorded: Recorded) -> None:
    """Note every event ``outbox`` stores (wraps its ``enqueue``)."""
    enqueue = outbox.enqueue

    async def enqueue_recorded(kind: str, data: dict[str, Any], **options: Any) -> Event | None:
        called = time.time()
        event = await enqueue(kind, data, **options)
        if event is not None:
            recorded.events.append((event.id, bench, kind, called))
        return event

    outbox.enqueue = enqueue_recorded  # type: ignore[method-assign]


def tap_display(daemon: Daemon) -> Display:
    """The retained states the bench publishes, as its display would show them."""
    display = Display()
    publish = daemon.link.publish_retained
    state_topic = daemon.topics.state

    def publish_and_show(topic: str, payload: bytes) -> Any:
        info = publish(topic, payload)
        if topic == state_topic:
            display.show(payload)
        return info

    daemon.link.publish_retained = publish_and_show  # type: ignore[method-assign]
    return display


class FleetPacker:
    """The packer at one bench: a parcel every ``60 / rate`` seconds from the start."""

    name = "fleet.packer"

    def __init__(self, spec: BenchSpec, plan: WorkerPlan, go: asyncio.Future[float],
                 recorded: Recorded) -> None:
        self.spec, self.plan, self.go, self.recorded = spec, plan, go, recorded
        self.ready = asyncio.Event()
        self.finished = asyncio.Event()
        self.display: Display | None = None

    async def run(self, daemon: Daemon) -> None:
        try:
            await self._run(daemon)
        finally:
            self.finished.set()

    async def _run(self, daemon: Daemon) -> None:
        pack = daemon.packing
        assert pack is not None
        display = self.display = tap_display(daemon)
        printer = daemon.devices.devices["label"]
        while not (daemon.link.connected.is_set() and printer.state is DeviceState.READY):
            await asyncio.sleep(0.1)
        self.ready.set()
        start = await self.go
        display.updates = 0  # count the run's states only
        spec, interval = self.spec, 60.0 / self.plan.rate_per_min

        def scan(code: str) -> None:
            pack._events.put_nowait(Scan("scanner", code))

        def weigh(grams: float) -> None:
            daemon.bus.publish(WeightReading(SCALE, WeightCondition.WEIGHT, grams,
                                             stable=True, settled=True))

        scan("EMP-042")
        await display.wait(lambda s: s.get("state") == "idle", 60)
        phase = random.uniform(0, interval)
        for n in itertools.count():
            due = start + phase + n * interval
            if due > start + self.plan.seconds:
                break
            if due > time.time():
                await asyncio.sleep(due - time.time())
            else:
                self.recorded.late += 1
            oid = order_id(spec.site, spec.bench, n)
            while await daemon.orders.get(oid) is None:  # not pushed yet
                self.recorded.waited_for_orders += 1
                await asyncio.sleep(1.0)
            try:
                await pack_parcel(scan, weigh, display, oid, waybill(spec.site, spec.bench, n),
                                  extra_g=n % 7, timeout_s=60)
                self.recorded.parcels += 1
            except TimeoutError as exc:
                self.recorded.failed += 1
                log.error("bench %s parcel %s: %s", spec.bench, oid, exc)
                scan("CTL-CANCEL")


async def _until_all(events: list[asyncio.Event], timeout_s: float, what: str) -> None:
    try:
        async with asyncio.timeout(timeout_s):
            await asyncio.gather(*(event.wait() for event in events))
    except TimeoutError:
        left = sum(1 for event in events if not event.is_set())
        raise RuntimeError(f"{left} of {len(events)} benches not {what} in {timeout_s} s"
                           ) from None


async def _run_worker(plan: WorkerPlan, conn: Connection) -> None:
    loop = asyncio.get_running_loop()
    baseline_rss = rss_bytes()
    go: asyncio.Future[float] = loop.create_future()
    recorded = [Recorded() for _ in plan.benches]
    packers = [FleetPacker(spec, plan, go, rec) for spec, rec in zip(plan.benches, recorded,
                                                                      strict=True)]
    daemons = [Daemon(bench_config(plan, spec), services=[packer])
               for spec, packer in zip(plan.benches, packers, strict=True)]
    for daemon, spec, rec in zip(daemons, plan.benches, recorded, strict=True):
        record_events(daemon.outbox, spec.bench, rec)
    runs = []
    for daemon, spec in zip(daemons, plan.benches, strict=True):
        runs.append(asyncio.create_task(daemon.run(), name=f"fleet.{spec.bench}"))
        # Benches boot one by one, not all in the same instant: a hundred daemons opening
        # their databases at once on one loop would hold up each other's first CONNACK.
        await asyncio.sleep(1 / STARTS_PER_S)
    try:
        try:
            await _until_all([p.ready for p in packers], 120, "connected with their printer")
        except RuntimeError as exc:
            links = Counter(d.link.state for d in daemons)
            printers = Counter(d.devices.devices["label"].state.value for d in daemons)
            raise RuntimeError(f"{exc}: links {dict(links)}, printers {dict(printers)}; "
                               f"logged {tally.top(3)}") from None
        conn.send(("ready", {"rss": rss_bytes(), "baseline_rss": baseline_rss,
                             "fds": len(os.listdir("/proc/self/fd"))}))
        go.set_result(await loop.run_in_executor(None, conn.recv))
        await _until_all([p.finished for p in packers], plan.seconds + 300, "finished")
        conn.send(("finished", {}))
        await loop.run_in_executor(None, conn.recv)  # the central system has its replies
        drained = await asyncio.gather(*(d.outbox.drain(120) for d in daemons))
        with open(plan.records, "w") as out:
            for rec in recorded:
                out.writelines(f"{i} {b} {k} {t:.6f}\n" for i, b, k, t in rec.events)
        summary = {"rss": rss_bytes(),
                   "undrained": sum(1 for ok in drained if not ok),
                   **{key: sum(getattr(r, key) for r in recorded)
                      for key in ("parcels", "late", "failed", "waited_for_orders")},
                   "states": sum(p.display.updates for p in packers if p.display),
                   "log": tally.summary()}
    finally:
        for daemon in daemons:
            daemon.request_stop("fleet benchmark finished")
        await asyncio.gather(*runs, return_exceptions=True)
    conn.send(("done", summary))


def reports_failure(main: Callable[..., None]) -> Callable[..., None]:
    """A process's main function that tells the benchmark (its last argument, a pipe) why
    it failed before it exits."""
    @functools.wraps(main)
    def guarded(*args: Any) -> None:
        try:
            main(*args)
        except BaseException as exc:
            args[-1].send(("failed", f"{type(exc).__name__}: {exc}"))
            raise

    return guarded


@reports_failure
def worker_main(plan: WorkerPlan, conn: Connection) -> None:
    """The worker process: run the benches of ``plan``; talk to the benchmark on ``conn``."""
    # Counted, not printed: 200 benches' printers running out of paper would flood the
    # terminal. The packer puts its scans straight into the packing job's queue, so that
    # "no scanner has role" is expected and not counted. force: python-escpos calls
    # logging.basicConfig() when it is imported.
    tally.addFilter(lambda record: not str(record.msg).startswith("no scanner has role"))
    logging.basicConfig(level=logging.WARNING, handlers=[tally], force=True)
    asyncio.run(_run_worker(plan, conn))
