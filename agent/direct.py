"""Direct hardware checks (``bench-agent ... --direct``): the CLI drives the devices itself.

For installation day, when the daemon is not running: the CLI builds the bench's devices
from the config exactly as the daemon does (a :class:`Bus`, a :class:`DeviceManager`),
runs their drivers for the duration of the check, and runs the same diagnostics commands
(``agent/diagnostics.py``) through :meth:`CommandRegistry.call_local`. Only the devices
the command needs are opened: the named one, else those of the command's kind (all of
them for ``devices.list`` and ``selftest``). There is no print queue, outbox or MQTT link:
commands that need them say so. Never used while the daemon runs (the CLI holds the
storage lock, ``agent/storage_lock.py``): two drivers on one serial port would garble each
other.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
from collections.abc import Callable, Coroutine, Mapping
from types import TracebackType
from typing import Any, TypeVar

from agent.bus import Bus
from agent.commands import CommandRegistry
from agent.config import Config
from agent.devices.discovery import discover
from agent.devices.manager import DeviceManager
from agent.devices.readings import DeviceState, StateChange
from agent.devices.settings import DeviceSettingsBase

log = logging.getLogger("agent.direct")

T = TypeVar("T")

SETTLE_S = 5.0
"""Longest wait for the devices to connect (or fail) before the command runs."""
_STOP_S = 10.0
DEVICE_KINDS = ("scale", "scanner", "printer", "camera")
"""Commands named ``KIND.verb`` need devices of that kind only."""


async def _not_reported(_change: StateChange, _status: dict[str, Any]) -> None:
    """Device states have nobody to go to: the drivers log them."""


class DirectBench:
    """The configured devices driven by the CLI, with the diagnostics commands on them.

    A context manager: entering starts an event loop in a thread (``bench-direct``),
    starts the drivers of the devices ``command`` needs (:func:`needed_devices`) and waits
    up to ``settle_s`` until each one is ready or has failed; :meth:`call` runs one
    command; leaving stops the drivers.
    """

    def __init__(self, config: Config, *, command: str | None = None,
                 device: str | None = None, settle_s: float = SETTLE_S) -> None:
        self.config = config
        self.needed = needed_devices(config.devices, command, device)
        self.settle_s = settle_s
        self.registry = CommandRegistry()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="bench-direct",
                                        daemon=True)
        self._devices: DeviceManager | None = None
        self._running: asyncio.Task[None] | None = None

    def __enter__(self) -> DirectBench:
        self._thread.start()
        try:
            self._wait(self._start())
        except BaseException:
            self._close()
            raise
        return self

    def __exit__(self, _type: type[BaseException] | None, _exc: BaseException | None,
                 _tb: TracebackType | None) -> None:
        self._close()

    def call(self, command: str, args: dict[str, Any], *,
             on_progress: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
        """Run ``command`` on the devices; raises its :class:`AgentError` as the daemon
        would answer it."""
        return self._wait(self.registry.call_local(command, args, progress=on_progress))

    # ------------------------------------------------------------ loop thread
    async def _start(self) -> None:
        from agent.diagnostics import Diagnostics  # the commands: imported only when used

        bus = Bus()
        self._devices = DeviceManager(self.needed, bus, _not_reported)
        Diagnostics(self.config, self._devices, bus, started_at=time.time()).register(
            self.registry)
        self.registry.register("devices.list", self._devices_list, local=True)
        self.registry.register("devices.discover", self._devices_discover, local=True)
        self._running = asyncio.create_task(self._devices.run(), name="direct.devices")
        deadline = time.monotonic() + self.settle_s
        while time.monotonic() < deadline and any(
                d.state is DeviceState.CONNECTING for d in self._devices.devices.values()):
            await asyncio.sleep(0.05)

    async def _devices_list(self, _args: dict[str, Any]) -> dict[str, Any]:
        assert self._devices is not None
        return {"devices": self._devices.status()}

    async def _devices_discover(self, _args: dict[str, Any]) -> dict[str, Any]:
        found: dict[str, Any] = await asyncio.to_thread(discover)
        return found

    async def _stop(self) -> None:
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # ------------------------------------------------------------ caller's thread
    def _wait(self, coro: Coroutine[Any, Any, T]) -> T:
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result()
        except BaseException:  # Ctrl-C: stop the command too
            future.cancel()
            raise

    def _close(self) -> None:
        if self._thread.is_alive():
            try:
                asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(_STOP_S)
            except (concurrent.futures.TimeoutError, RuntimeError):
                log.warning("the devices did not stop within %.0f s", _STOP_S)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(_STOP_S)
        if not self._loop.is_running():
            self._loop.close()


def needed_devices(configured: Mapping[str, DeviceSettingsBase], command: str | None,
                   device: str | None) -> dict[str, DeviceSettingsBase]:
    """The devices ``command`` uses: ``device`` when it is one of the command's kind, else
    every device of that kind (the command picks its default among them, or names them
    when ``device`` is not one); every device for other commands."""
    kind = (command or "").partition(".")[0]
    if kind not in DEVICE_KINDS:
        return dict(configured)
    if device and (named := configured.get(device)) is not None and named.kind_name == kind:
        return {device: named}
    return {name: settings for name, settings in configured.items()
            if settings.kind_name == kind}
