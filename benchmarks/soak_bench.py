"""The soak's bench: the agent's packing job assembled in process, a packer, a consumer.

Used by :mod:`benchmarks.soak`. The agent's own classes, as the daemon wires them
(``agent/daemon.py``): ``Store``, ``Outbox``, ``DeviceManager`` (a serial scanner on a
pty, a ZPL label printer and an ESC/POS slip printer on TCP, a camera on image files),
``OrderBook``, ``PrintService`` and ``PackService``. What stands in for the rest:

* :class:`Consumer` is the link the outbox, the order book and the packing job publish
  to: it takes each event, checks it and acknowledges it at once (a PUBACK with success),
  keeping counters only, so its own memory does not grow with the run;
* :class:`Packer` scans through the scanner's pty and puts the parcel scale's settled
  readings on the bus, as the scale driver does once its stability rule is met (a real
  scale needs three equal polls, 150 ms or more, which would set the pace instead of the
  agent). Each step waits for the retained state that shows it, as the packer waits for
  the display.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent.bus import Bus
from agent.commands import CommandChannel
from agent.config import Config, DiagnosticsConfig, parse_config
from agent.devices.manager import DeviceManager
from agent.devices.readings import StateChange, WeightCondition, WeightReading
from agent.jobs.order_book import OrderBook
from agent.jobs.orders import Order
from agent.jobs.pack_service import PackService
from agent.jobs.print_service import PrintService
from agent.outbox import Outbox
from agent.store import Store
from agent.topics import Topics
from benchmarks.parcels import Display, pack_parcel, parcel_order
from simulators.camera import BarcodeSpec, CameraScene
from simulators.pki import make_pki
from simulators.scanner import SerialScannerSimulator

SITE, BENCH = "soak", "b01"
SCALE = "parcel_scale"
"""The scale the packing job listens to; its readings are put on the bus by the packer."""
def order_id(n: int) -> str:
    return f"SOAK-{n:07d}"


def waybill(n: int) -> str:
    return f"SF{n:010d}"


def order(n: int) -> Order:
    return parcel_order(order_id(n), waybill(n))


class PrinterProcess:
    """A printer simulator in its own process (its memory is not the agent's)."""

    def __init__(self, language: str, log: Path) -> None:
        with log.open("ab") as errors:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "simulators.printer", "--language", language,
                 "--port", "0", "--label-time-s", "0"],
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=errors, text=True)
        assert self.process.stdout is not None
        line = self.process.stdout.readline()  # "... listening on 127.0.0.1:PORT"
        try:
            self.port = int(line.rsplit(":", 1)[1])
        except (IndexError, ValueError):
            self.stop()
            raise RuntimeError(f"the {language} printer simulator did not start; see "
                               f"{log}") from None

    def stop(self) -> None:
        self.process.kill()
        self.process.wait(10)


class Consumer:
    """The central system: every event the outbox publishes is checked and acknowledged.

    The link the outbox expects (``connected``, ``window``, ``max_packet_size``,
    ``publish_event``), the order book's (``status``, ``down_since``) and the packing
    job's (``connection``, ``publish_retained`` for the retained state).
    """

    def __init__(self, parcels: int) -> None:
        self.connected = asyncio.Event()
        self.connected.set()
        self.connection = 1
        self.down_since = time.time()
        self.window = 64
        self.max_packet_size = 268_435_460
        self.on_puback: Callable[[int, int, str], None] = lambda *_: None
        self._mid = 0
        self.last_seq = 0
        self.out_of_order = 0
        self.kinds: Counter[str] = Counter()
        self.verdicts: Counter[str] = Counter()
        self.print_states: Counter[str] = Counter()
        self.results = bytearray(parcels)
        """``pack.result`` events per parcel (saturating at 255)."""
        self.results_received = 0
        self.result_bytes = 0
        self.display = Display()

    def status(self) -> dict[str, Any]:
        return {"state": "connected", "last_error": None}

    def publish_event(self, _topic: str, payload: bytes, _correlation: bytes | None) -> int:
        envelope = json.loads(payload)
        if envelope["seq"] <= self.last_seq:
            self.out_of_order += 1
        self.last_seq = max(self.last_seq, envelope["seq"])
        kind, data = envelope["kind"], envelope["data"]
        self.kinds[kind] += 1
        if kind == "pack.result":
            self.results_received += 1
            self.result_bytes += len(payload)
            self.verdicts[data["verdict"]] += 1
            for oid in data["order_ids"]:
                n = int(oid.removeprefix("SOAK-"))
                self.results[n] = min(255, self.results[n] + 1)
        elif kind == "print_job":
            self.print_states[data["state"]] += 1
        self._mid = self._mid % 65535 + 1
        asyncio.get_running_loop().call_soon(self.on_puback, self._mid, 0, "Success")
        return self._mid

    def publish_retained(self, _topic: str, payload: bytes) -> None:
        self.display.show(payload)  # the only retained message here: the bench's state


class SoakBench:
    """The packing job of one bench and everything it needs, in this process."""

    def __init__(self, root: Path, parcels: int, photo_quota_mb: float,
                 photo_size: tuple[int, int]) -> None:
        self.root = root
        camera = CameraScene([BarcodeSpec("ean13", "4006381333931")], photo_size
                             ).write_sequence(root / "camera", frames=3)
        self.label = PrinterProcess("zpl", root / "printers.log")
        try:
            self.slip = PrinterProcess("escpos", root / "printers.log")
            self.scanner = SerialScannerSimulator(root / "scanner")
            self.config = config(root, self.scanner.connection, self.label.port,
                                 self.slip.port, camera, photo_quota_mb)
        except Exception:
            self.label.stop()
            if hasattr(self, "slip"):
                self.slip.stop()
            raise
        self.consumer = Consumer(parcels)
        self.store = Store(self.config.storage.dir / "agent.db")
        self.bus = Bus()
        self.outbox = Outbox(self.store, site=SITE, bench=BENCH,
                             event_topic=Topics("benchagent/v1", SITE, BENCH).event,
                             max_events=self.config.storage.outbox_max_events,
                             max_bytes=self.config.storage.outbox_max_bytes)
        self.consumer.on_puback = self.outbox.on_puback
        self.devices = DeviceManager(self.config.devices, self.bus, self._report_device)
        topics = Topics("benchagent/v1", SITE, BENCH)
        commands = CommandChannel(self.store, self.outbox, topics, max_bytes=1 << 20,
                                  retention_s=3600, ack=lambda _m: None,
                                  policy=DiagnosticsConfig())
        jobs = self.config.jobs
        self.printing = PrintService(jobs.print, self.devices, self.store, self.outbox,
                                     commands)
        self.book = OrderBook(jobs.orders, self.store, self.outbox,
                              self.consumer)  # type: ignore[arg-type]
        self.pack = PackService(jobs.pack, storage_dir=self.config.storage.dir,
                                devices=self.devices, bus=self.bus, orders=self.book,
                                printing=self.printing, store=self.store, outbox=self.outbox,
                                link=self.consumer, topics=topics,  # type: ignore[arg-type]
                                commands=commands)
        self._tasks: list[asyncio.Task[None]] = []

    async def _report_device(self, change: StateChange, status: dict[str, Any]) -> None:
        await self.outbox.enqueue("device_state", {**change.as_dict(), "status": status})

    async def start(self) -> None:
        await self.store.open()
        await self.outbox.load()
        for name, work in (("outbox", self.outbox.run(self.consumer)),  # type: ignore[arg-type]
                           ("devices", self.devices.run()), ("print", self.printing.run()),
                           ("orders", self.book.run()), ("pack", self.pack.run())):
            self._tasks.append(asyncio.create_task(work, name=f"soak.{name}"))
        deadline = time.monotonic() + 20
        while any(d.state.value != "ready" for d in self.devices.devices.values()):
            if time.monotonic() > deadline:
                states = {n: d.state.value for n, d in self.devices.devices.items()}
                raise RuntimeError(f"devices not ready in 20 s: {states}")
            await asyncio.sleep(0.05)

    async def stop(self) -> None:
        for task in reversed(self._tasks):
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        await self.store.close()
        self.scanner.close()
        self.label.stop()
        self.slip.stop()

    def sims_pids(self) -> list[int]:
        return [self.label.process.pid, self.slip.process.pid]


class Packer:
    """Packs parcel after parcel on the bench as fast as the bench takes them."""

    def __init__(self, bench: SoakBench) -> None:
        self.bench = bench
        self.display = bench.consumer.display

    def weigh(self, grams: float) -> None:
        self.bench.bus.publish(WeightReading(SCALE, WeightCondition.WEIGHT, grams, stable=True,
                                             settled=True))

    async def log_in(self) -> None:
        self.bench.scanner.scan("EMP-042")
        await self.display.wait(lambda s: s.get("state") == "idle")

    async def parcel(self, n: int) -> None:
        await pack_parcel(self.bench.scanner.scan, self.weigh, self.display, order_id(n),
                          waybill(n), extra_g=n % 7)


def config(root: Path, scanner: str, label_port: int, slip_port: int, camera: str,
           photo_quota_mb: float) -> Config:
    """The bench's config: its devices, and retention the soak applies itself. The MQTT
    section is required but unused: the link is the consumer."""
    raw = {
        "bench": {"site": SITE, "id": BENCH},
        "mqtt": {"host": "127.0.0.1", "tls": {"ca_file": str(make_pki(root / "pki").ca)}},
        "storage": {"dir": str(root / "state")},
        "devices": {
            "scanner": {"kind": "scanner", "role": "items", "connection": scanner},
            "label": {"kind": "printer", "language": "zpl", "role": "label",
                      "connection": f"tcp://127.0.0.1:{label_port}"},
            "slip": {"kind": "printer", "language": "escpos", "role": "slip",
                     "connection": f"tcp://127.0.0.1:{slip_port}"},
            "camera": {"kind": "camera", "role": "packing", "connection": camera},
        },
        "jobs": {
            "print": {"confirm_poll_s": 0.05},
            # One day of each: the soak prunes with cutoffs it shifts by a day.
            "pack": {"scale": SCALE, "photo_max_age_days": 1, "record_retention_days": 1,
                     "photo_quota_mb": photo_quota_mb},
        },
    }
    return parse_config(raw, source=root / "soak.toml")
