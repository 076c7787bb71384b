"""The bench daemon: one asyncio loop, named tasks, clean shutdown, systemd integration.

Tasks (``asyncio.TaskGroup``, named ``bench[SITE/ID].*`` so a stack dump tells who is
who): the MQTT link's supervisor, the outbox publisher, the command channel, the status
refresher, the systemd watchdog, and one task per service (device drivers and jobs, as
they land). Threads are listed in ``docs/architecture.md``.

On SIGTERM or SIGINT the daemon stops taking commands, stops its services, keeps
delivering the outbox for ``agent.shutdown_flush_s``, publishes a retained ``offline``
status, disconnects cleanly (so the broker does not publish the Will) and exits 0.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import signal
import sqlite3
import time
from collections.abc import Sequence
from typing import Any, Protocol

from agent import __version__
from agent.bus import Bus
from agent.clock import ClockWatch
from agent.commands import CommandChannel
from agent.config import Config
from agent.control import ControlServer
from agent.devices.discovery import discover
from agent.devices.manager import DeviceManager
from agent.devices.readings import StateChange
from agent.diagnostics import Diagnostics
from agent.errors import OutboxFull
from agent.jobs import order_commands
from agent.jobs.order_book import OrderBook
from agent.jobs.pack_service import PackService
from agent.jobs.print_service import PrintService
from agent.mqtt import Inbound, MqttLink
from agent.outbox import Outbox, dumps, iso_time
from agent.storage_lock import StorageLock
from agent.store import Store, meta_add, meta_get
from agent.systemd import Notifier
from agent.tasks import set_prefix, spawn, task_name
from agent.topics import Topics

log = logging.getLogger("agent.daemon")


class Service(Protocol):
    """Long-lived work started with the daemon (a device driver, a job)."""

    name: str

    async def run(self, daemon: Daemon) -> None: ...


class Daemon:
    """Owns the store, outbox, MQTT link and command channel of one bench."""

    def __init__(self, config: Config, services: Sequence[Service] = ()) -> None:
        self.config = config
        self.bus = Bus()
        self.devices = DeviceManager(config.devices, self.bus, self._report_device)
        self.services = [self.devices, *services]
        bench = config.bench
        self.task_prefix = f"bench[{bench.site}/{bench.id}]"
        set_prefix(self.task_prefix)
        self.topics = Topics(config.mqtt.topic_root, bench.site, bench.id)
        self.store = Store(config.storage.dir / "agent.db")
        self.outbox = Outbox(
            self.store,
            site=bench.site,
            bench=bench.id,
            event_topic=self.topics.event,
            max_events=config.storage.outbox_max_events,
            max_bytes=config.storage.outbox_max_bytes,
        )
        self.link = MqttLink(
            config,
            status_topic=self.topics.status,
            will_payload=self._will_payload,
            on_connected=self._on_connected,
            on_message=self._on_message,
            on_puback=self.outbox.on_puback,
        )
        self.clock = ClockWatch()
        self.commands = CommandChannel(
            self.store, self.outbox, self.topics,
            max_bytes=config.mqtt.max_command_bytes,
            retention_s=config.storage.command_retention_s,
            ack=self.link.ack,
            policy=config.diagnostics,
            clock=self.clock,
        )
        self.printing = PrintService(config.jobs.print, self.devices, self.store, self.outbox,
                                     self.commands, self.clock)
        self.services.insert(1, self.printing)
        self.services.append(self.clock)
        self.orders = OrderBook(config.jobs.orders, self.store, self.outbox, self.link,
                                self.clock)
        order_commands.register(self.commands, self.orders)
        self.services.insert(2, self.orders)
        if config.jobs.pack.enabled:
            self.packing: PackService | None = PackService(
                config.jobs.pack, storage_dir=config.storage.dir, devices=self.devices,
                bus=self.bus, orders=self.orders, printing=self.printing, store=self.store,
                outbox=self.outbox, link=self.link, topics=self.topics,
                commands=self.commands, clock=self.clock)
            self.services.insert(3, self.packing)
        else:
            self.packing = None
        self.commands.register("state.resend", self._cmd_state_resend)
        self.commands.register("status.get", self._cmd_status_get, local=True)
        self.commands.register("devices.list", self._cmd_devices_list, local=True)
        self.commands.register("devices.discover", self._cmd_devices_discover,
                               local=True)
        self.diagnostics = Diagnostics(config, self.devices, self.bus, printing=self.printing,
                                       outbox=self.outbox, link=self.link, topics=self.topics)
        self.diagnostics.register(self.commands)
        # The technician's CLI: local, read-only and diagnostics commands (docs/cli.md).
        self.control = ControlServer(config.diagnostics, self.commands)
        self.services.append(self.control)
        self.outbox.on_alarm_change = self._status_soon
        self.notifier = Notifier()
        self.started_at = time.time()
        self.session = 0
        self._stop = asyncio.Event()
        self._disk_low_since: float | None = None

    # ------------------------------------------------------------ lifecycle
    async def run(self) -> int:
        """Run until SIGTERM/SIGINT; return the process exit code.

        Raises:
            StorageLocked: another bench-agent runs on ``storage.dir`` (its lock file).
        """
        with StorageLock(self.config.storage.dir, "daemon"):
            return await self._run()

    async def _run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop, sig.name)
        await self.store.open()
        await self.outbox.load()
        self.session = await self.store.run(meta_get, "mqtt.session")
        failed = False
        try:
            async with asyncio.TaskGroup() as group:
                tasks = [
                    group.create_task(self.link.run(), name=task_name("mqtt.link")),
                    group.create_task(self.outbox.run(self.link), name=task_name("outbox")),
                    group.create_task(self.commands.run(), name=task_name("commands")),
                    group.create_task(self._refresh_status(), name=task_name("status")),
                    group.create_task(self._watchdog(), name=task_name("watchdog")),
                ]
                services = [group.create_task(s.run(self), name=task_name(s.name))
                            for s in self.services]
                self.notifier.notify("READY=1", f"STATUS=bench {self.task_prefix} running")
                log.info("bench-agent %s started for %s (config %s)", __version__,
                         self.task_prefix, self.config.source)
                await self._stop.wait()
                await self._shutdown(services)
                for task in tasks:
                    task.cancel()
        except* Exception as group_error:
            for exc in group_error.exceptions:
                log.critical("task failed, stopping the agent: %r", exc, exc_info=exc)
            failed = True
        await self.store.close()
        self.notifier.close()
        log.info("bench-agent stopped%s", " after a failure" if failed else "")
        return 1 if failed else 0

    def request_stop(self, reason: str = "requested") -> None:
        if not self._stop.is_set():
            log.info("stopping (%s)", reason)
            self._stop.set()

    async def _shutdown(self, services: list[asyncio.Task[None]]) -> None:
        self.notifier.notify("STOPPING=1")
        flush_s = self.config.agent.shutdown_flush_s
        await self.commands.stop(timeout_s=flush_s)
        for task in services:
            task.cancel()
        if self.link.connected.is_set() and not await self.outbox.drain(flush_s):
            log.warning("stopping with %d events still in the outbox; they are sent at the "
                        "next start", self.outbox.count)
        await self.link.close(dumps(await self.status_snapshot("offline", "shutdown")))

    async def _watchdog(self) -> None:
        interval = self.notifier.watchdog_interval_s()
        if interval is None:
            return
        while True:
            self.notifier.notify("WATCHDOG=1")
            await asyncio.sleep(interval)

    # ------------------------------------------------------------ MQTT hooks
    def _will_payload(self) -> bytes:
        """The Will: published by the broker if the connection dies without a goodbye."""
        return dumps({
            "state": "offline",
            "reason": "connection_lost",
            "agent_version": __version__,
            "site": self.config.bench.site,
            "bench": self.config.bench.id,
            "session": self.session + 1,
        })

    async def _on_connected(self) -> None:
        def _bump(db: sqlite3.Connection) -> int:
            return meta_add(db, "mqtt.session", 1)

        self.session = await self.store.run(_bump)
        self.link.subscribe(self.topics.commands)
        self.link.subscribe(self.topics.echo)
        self.outbox.on_connected()
        await self.publish_status()

    def _on_message(self, message: Inbound) -> None:
        if self.topics.command_name(message.topic) is not None:
            self.commands.submit(message)
        elif message.topic == self.topics.echo:
            self.diagnostics.echo_received(message.payload)
            self.link.ack(message)
        else:
            log.warning("ignoring message on unexpected topic %s", message.topic)
            self.link.ack(message)

    # ------------------------------------------------------------ status
    async def status_snapshot(self, state: str = "online", reason: str | None = None
                              ) -> dict[str, Any]:
        """The retained status message (``schemas/status.json``)."""
        now = time.time()
        bench = self.config.bench
        return {
            "state": state,
            "reason": reason,
            "agent_version": __version__,
            "site": bench.site,
            "bench": bench.id,
            "description": bench.description,
            "session": self.session,
            "started_at": iso_time(self.started_at),
            "uptime_s": round(now - self.started_at, 3),
            "time": iso_time(now),
            "devices": self.devices.status(),
            "print": self.printing.status(),
            "commands": self.commands.names,
            "link": self.link.status(),
            "outbox": await self.outbox.stats(),
            "alarms": self.alarms(),
            "control": self.control.status(),
        }

    def alarms(self) -> list[dict[str, Any]]:
        """Every active alarm: outbox, store, disk space, packing job."""
        found = [*self.outbox.alarms(), *self.store.alarms(), *self.clock.alarms()]
        try:
            free = shutil.disk_usage(self.config.storage.dir).free
        except OSError:
            free = None
        low = free is not None and free < self.config.storage.min_free_mb * (1 << 20)
        self._disk_low_since = (self._disk_low_since or time.time()) if low else None
        if free is not None and self._disk_low_since is not None:
            found.append({"code": "disk_low", "since": iso_time(self._disk_low_since),
                          "message": f"{free / (1 << 20):.0f} MB free on the disk of "
                                     f"{self.config.storage.dir} (alarm below "
                                     f"{self.config.storage.min_free_mb} MB)"})
        if self.packing is not None:
            found += self.packing.alarms()
        return found

    async def publish_status(self) -> None:
        self.link.publish_status(dumps(await self.status_snapshot()))

    def _status_soon(self) -> None:
        if self.link.connected.is_set():
            spawn(self.publish_status(), name="status.alarm")

    async def _refresh_status(self) -> None:
        while True:
            await asyncio.sleep(self.config.status.interval_s)
            if self.link.connected.is_set():
                await self.publish_status()

    async def _report_device(self, change: StateChange, status: dict[str, Any]) -> None:
        """A device changed state: a ``device_state`` event, then a fresh status."""
        try:
            await self.outbox.enqueue("device_state", {**change.as_dict(), "status": status})
        except OutboxFull as exc:
            log.error("device %s is %s but the outbox is full: %s", change.device,
                      change.state.value, exc)
        self._status_soon()

    # ------------------------------------------------------------ built-in commands
    async def _cmd_state_resend(self, _args: dict[str, Any]) -> dict[str, Any]:
        if not self.link.connected.is_set():
            # Only reachable for a command recorded before a restart; the birth message
            # after the next CONNACK is the resend.
            return {"republished": [], "note": "not connected; the birth message follows"}
        await self.publish_status()
        return {"republished": ["status"]}

    async def _cmd_status_get(self, _args: dict[str, Any]) -> dict[str, Any]:
        return await self.status_snapshot()

    async def _cmd_devices_list(self, _args: dict[str, Any]) -> dict[str, Any]:
        return {"devices": self.devices.status()}

    async def _cmd_devices_discover(self, _args: dict[str, Any]) -> dict[str, Any]:
        # Reads sysfs, /dev links and USB descriptors: blocking, so in a thread.
        found: dict[str, Any] = await asyncio.to_thread(discover)
        return found
