"""``selftest``: every device and the agent's own plumbing checked without side effects.

Nothing prints, moves, zeroes or flashes: a scale is read, a printer asked its status, a
camera's frame looked at, the broker sent one echo. Checks run at the same time, each
within :data:`CHECK_TIMEOUT_S`, so one hung device cannot hide the others.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from agent.devices.base import Device
from agent.devices.camera import Camera
from agent.devices.printer import Printer
from agent.devices.readings import DeviceState, WeightCondition
from agent.devices.scale import Scale
from agent.errors import AgentError

if TYPE_CHECKING:
    from agent.diagnostics import Diagnostics

CHECK_TIMEOUT_S = 10.0
MIN_FREE_BYTES = 1 << 30
"""Below 1 GiB free (or 5 % of the disk) the storage check fails: photos and results
are about to be refused."""
MIN_FREE_SHARE = 0.05
DARK_MEAN, BRIGHT_MEAN = 8.0, 250.0
"""A frame darker or brighter than this on average shows nothing (lens cap, no light,
camera pointed at a lamp)."""
OUTBOX_STALE_S = 300.0
"""Results older than this still waiting while the broker is connected: piling up."""


@dataclass
class Check:
    name: str
    kind: str
    ok: bool = True
    reason: str = "ok"
    details: dict[str, Any] = field(default_factory=dict)

    def fail(self, reason: str) -> None:
        self.ok, self.reason = False, reason

    def view(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "ok": self.ok, "reason": self.reason,
                "details": self.details}


class SelfTest:
    """The ``selftest`` command of :class:`agent.diagnostics.Diagnostics`."""

    def __init__(self, diagnostics: Diagnostics) -> None:
        self.diag = diagnostics

    async def run(self, _args: dict[str, Any]) -> dict[str, Any]:
        d = self.diag
        checks: list[tuple[Check, Callable[[Check], Awaitable[None]]]] = []
        for device in d.devices.devices.values():
            checks.append((Check(device.name, device.kind), self._device_check(device)))
        if d.link is not None:
            checks.append((Check("mqtt", "broker"), self._mqtt))
        if d.outbox is not None:
            checks.append((Check("outbox", "agent"), self._outbox))
        checks.append((Check("storage", "agent"), self._storage))
        await asyncio.gather(*(self._bounded(check, run) for check, run in checks))
        views = [check.view() for check, _ in checks]
        return {"passed": all(v["ok"] for v in views), "checks": views,
                "failed": sum(1 for v in views if not v["ok"])}

    @staticmethod
    async def _bounded(check: Check, run: Callable[[Check], Awaitable[None]]) -> None:
        try:
            async with asyncio.timeout(CHECK_TIMEOUT_S):
                await run(check)
        except TimeoutError:
            check.fail(f"no answer within {CHECK_TIMEOUT_S:g} s")
        except AgentError as exc:
            check.fail(f"{exc.code}: {exc.message}")
        except Exception as exc:  # a check's own bug is a failed check, not a failed test
            check.fail(f"check failed: {type(exc).__name__}: {exc}")

    # ------------------------------------------------------------ devices
    def _device_check(self, device: Device[Any]) -> Callable[[Check], Awaitable[None]]:
        async def check(result: Check) -> None:
            result.details = {"state": device.state.value, "connection":
                              device.connection.describe()}
            if device.state in (DeviceState.CONNECTING, DeviceState.DISCONNECTED):
                why = f" ({device.code}: {device.message})" if device.code else ""
                result.fail(f"{device.state.value}{why}: check the cable, the power and "
                            f"the connection string")
                return
            if isinstance(device, Scale):
                await self._scale(device, result)
            elif isinstance(device, Printer):
                await self._printer(device, result)
            elif isinstance(device, Camera):
                await self._camera(device, result)
            elif device.state is DeviceState.FAULTED:
                result.fail(f"faulted: {device.code}: {device.message}")
            elif device.kind == "scanner":
                result.reason = ("connected; scan a barcode with `bench-agent scanner "
                                 "listen` to see it read")
            else:
                result.reason = "connected"
        return check

    @staticmethod
    async def _scale(scale: Scale, result: Check) -> None:
        reading = await scale.read_weight()
        result.details.update(condition=reading.condition.value, grams=reading.grams,
                              net=reading.net, stable=reading.stable)
        if reading.condition is not WeightCondition.WEIGHT:
            result.fail(f"the scale reports {reading.condition.value}: take everything off "
                        f"the pan and check its display")
        elif reading.net:
            result.fail("a tare is set (net weight): parcels are weighed gross; clear it "
                        "with `bench-agent scale tare --clear` or on the scale")
        else:
            result.reason = f"reads {reading.grams:g} g"

    @staticmethod
    async def _printer(printer: Printer, result: Check) -> None:
        status = await printer.query_status()
        result.details.update(faults=list(status.faults), notes=list(status.notes))
        if status.ready is None:
            result.fail("no status reply it could understand: check the printer's "
                        "language setting and that it is on")
        elif not status.ready:
            result.fail("; ".join(status.notes) or ", ".join(status.faults))
        else:
            result.reason = "; ".join(status.notes) or "ready"

    @staticmethod
    async def _camera(camera: Camera, result: Check) -> None:
        await camera.snapshot_jpeg()  # a fresh frame, encoded: the evidence path works
        frame = camera.latest_frame()
        if frame is None:
            result.fail("no frame")
            return
        mean = float(np.mean(frame.image))
        width, height = frame.resolution
        result.details.update(width=width, height=height, brightness=round(mean, 1))
        if mean < DARK_MEAN:
            result.fail(f"the picture is black (brightness {mean:.0f} of 255): lens cap, "
                        f"light or a covered lens")
        elif mean > BRIGHT_MEAN:
            result.fail(f"the picture is white (brightness {mean:.0f} of 255): overexposed "
                        f"or pointed at a light")
        else:
            result.reason = f"{width}x{height}, brightness {mean:.0f} of 255"

    # ------------------------------------------------------------ the agent
    async def _mqtt(self, result: Check) -> None:
        answer = await self.diag.mqtt_check({"timeout_s": 5})
        result.details.update(round_trip_ms=answer["round_trip_ms"], broker=answer["broker"])
        result.reason = f"round trip {answer['round_trip_ms']:.1f} ms via {answer['broker']}"

    async def _outbox(self, result: Check) -> None:
        outbox, link = self.diag.outbox, self.diag.link
        assert outbox is not None
        stats = await outbox.stats()
        alarms = outbox.alarms()
        result.details.update(pending=stats["pending"], oldest_age_s=stats["oldest_age_s"],
                              alarms=alarms)
        connected = link is not None and link.connected.is_set()
        if alarms:
            result.fail(alarms[0]["message"])
        elif connected and stats["oldest_age_s"] > OUTBOX_STALE_S:
            result.fail(f"{stats['pending']} events waiting, the oldest for "
                        f"{stats['oldest_age_s']:.0f} s although the broker is connected")
        else:
            result.reason = f"{stats['pending']} events waiting"

    async def _storage(self, result: Check) -> None:
        config = self.diag.config
        places = {"storage": config.storage.dir,
                  "photos": config.jobs.pack.photo_dir or config.storage.dir / "photos"}
        problems = []
        for what, path in places.items():
            usage = await asyncio.to_thread(_usage, path)
            if usage is None:
                problems.append(f"{what} folder {path} is missing or not writable")
                continue
            free, total = usage
            result.details[f"{what}_free_mb"] = free // (1 << 20)
            if free < MIN_FREE_BYTES or free < total * MIN_FREE_SHARE:
                problems.append(f"{what} folder {path}: only {free / (1 << 30):.1f} GiB "
                                f"free of {total / (1 << 30):.0f} GiB")
        if problems:
            result.fail("; ".join(problems))
        else:
            result.reason = f"{result.details['storage_free_mb']} MB free"


def _usage(path: Path) -> tuple[int, int] | None:
    """Free and total bytes where ``path`` lives; ``None`` if it is not a writable folder."""
    while not path.exists() and path != path.parent:
        path = path.parent  # not made yet: the agent creates it where it may write
    if not path.is_dir() or not os.access(path, os.W_OK):
        return None
    usage = shutil.disk_usage(path)
    return usage.free, usage.total
