"""The bench's devices: built from the config, supervised, reported.

:class:`DeviceManager` is the daemon's ``devices`` service. It builds one driver per
enabled ``[devices.NAME]`` (an explicit kind -> builder dict), runs each driver's
supervisor as a named task (``bench[site/id].device.NAME``), and reports every state
change through the outbox as a ``device_state`` event (see ``docs/mqtt-api.md``) and in
the retained status. Jobs find devices here by name or by role.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from agent.bus import Bus
from agent.devices.base import Device
from agent.devices.camera import make_camera
from agent.devices.printer import make_printer
from agent.devices.readings import StateChange
from agent.devices.scale import make_scale
from agent.devices.scanner import make_scanner
from agent.devices.settings import DeviceSettingsBase
from agent.devices.signal import make_signal
from agent.tasks import task_name

log = logging.getLogger("agent.devices")

Builder = Callable[[str, Any, Bus], Device[Any]]
BUILDERS: dict[str, Builder] = {
    "scanner": make_scanner,
    "scale": make_scale,
    "printer": make_printer,
    "camera": make_camera,
    "signal": make_signal,
}
"""Every kind has a driver; ``signal`` devices are told what to show by the pack job."""


class DeviceManager:
    """Every driven device of the bench and the reporting of their states."""

    name = "devices"

    def __init__(self, devices: Mapping[str, DeviceSettingsBase], bus: Bus,
                 report: Callable[[StateChange, dict[str, Any]], Awaitable[None]]) -> None:
        self.bus = bus
        self.configured = devices
        self.devices: dict[str, Device[Any]] = {}
        self._report = report
        self._changes: asyncio.Queue[tuple[StateChange, dict[str, Any]]] = asyncio.Queue()
        for name, settings in devices.items():
            builder = BUILDERS.get(settings.kind_name)
            if settings.enabled and builder is not None:
                device = builder(name, settings, bus)
                device.on_change = self._changed
                self.devices[name] = device

    def get(self, name: str) -> Device[Any] | None:
        return self.devices.get(name)

    def by_role(self, role: str, kind: str | None = None) -> list[Device[Any]]:
        """The devices with ``role`` (and ``kind``), in config order."""
        return [d for d in self.devices.values()
                if d.settings.role == role and (kind is None or d.kind == kind)]

    def _changed(self, change: StateChange) -> None:
        device = self.devices[change.device]
        try:
            status = device.status()
        except Exception:
            log.exception("status of device %s failed; reporting its state only", device.name)
            status = {"name": device.name, "kind": device.kind, "state": change.state.value}
        self._changes.put_nowait((change, status))

    async def _report_changes(self) -> None:
        """One at a time, so the central system gets a device's states in order."""
        while True:
            change, status = await self._changes.get()
            try:
                await self._report(change, status)
            except Exception:
                log.exception("could not report the state of device %s", change.device)

    async def run(self, _daemon: object = None) -> None:
        """Supervise every driven device until cancelled."""
        async with asyncio.TaskGroup() as group:
            group.create_task(self._report_changes(), name=task_name("devices.report"))
            for name, device in self.devices.items():
                group.create_task(device.run(), name=task_name(f"device.{name}"))

    def status(self) -> list[dict[str, Any]]:
        """One entry per configured device, in config order (``schemas/status.json``)."""
        entries = []
        for name, settings in self.configured.items():
            device = self.devices.get(name)
            if device is not None:
                entry = device.status()
            else:
                entry = {"name": name, "kind": settings.kind_name, "role": settings.role,
                         "connection": settings.conn.describe(),
                         "state": "disabled" if not settings.enabled else "not_driven"}
            entry["enabled"] = settings.enabled
            entries.append(entry)
        return entries
