"""The technician's commands, one implementation for the control socket, MQTT and the
CLI's direct hardware checks (``docs/diagnostics.md``).

Every command is registered with ``diagnostic=True``: over MQTT the ``[diagnostics]``
remote policy governs it. None runs a shell, and none reads or writes a file the caller
names (a snapshot comes back as bytes; the config check reads the daemon's own file).
"""

from __future__ import annotations

import asyncio
import base64
import platform
import secrets
import time
from datetime import UTC, datetime
from typing import Any

from agent import __version__
from agent.bus import Bus
from agent.commands import CommandRegistry, current_command_id, report_progress
from agent.config import Config, load_config, summary
from agent.devices.base import Device
from agent.devices.camera import Camera
from agent.devices.manager import DeviceManager
from agent.devices.printer import Printer
from agent.devices.readings import BadInput, DeviceState, Scan, WeightReading
from agent.devices.scale import Scale
from agent.devices.settings import PrinterSettings
from agent.errors import AgentError, ConfigError, DeviceError
from agent.jobs.documents import Limits, render
from agent.jobs.print_service import PrintService
from agent.mqtt import MqttLink
from agent.outbox import Outbox, iso_time
from agent.selftest import SelfTest
from agent.topics import Topics

_DEVICE = {"type": "string", "minLength": 1, "maxLength": 64}
_ONE_DEVICE: dict[str, Any] = {"type": "object", "additionalProperties": False,
                               "properties": {"device": _DEVICE}}
_GONE = (DeviceState.CONNECTING, DeviceState.DISCONNECTED)
"""Not reachable: nothing can be asked of it (a faulted device is asked: a printer out of
paper still answers its status)."""
MAX_WATCHED = 600
"""Readings a ``scale.watch`` result keeps (a streaming scale sends up to ~10 a second)."""


def _schema(**properties: Any) -> dict[str, Any]:
    return {"type": "object", "additionalProperties": False,
            "properties": {"device": _DEVICE, **properties}}


class Diagnostics:
    """The diagnostics commands of one bench.

    Args:
        config: the running config (its ``source`` is the file ``config.check`` reads).
        devices, bus: the bench's devices and their event bus.
        printing: the print queue (test prints go through it); ``None`` in direct mode,
            where the test print is sent to the printer itself.
        outbox, link, topics: the daemon's; ``None`` in direct mode (then ``mqtt.check``
            and ``outbox.stats`` are not offered).
    """

    def __init__(self, config: Config, devices: DeviceManager, bus: Bus, *,
                 printing: PrintService | None = None, outbox: Outbox | None = None,
                 link: MqttLink | None = None, topics: Topics | None = None,
                 started_at: float | None = None) -> None:
        self.config, self.devices, self.bus = config, devices, bus
        self.printing, self.outbox, self.link, self.topics = printing, outbox, link, topics
        self.started_at = started_at or time.time()
        self._echoes: dict[bytes, asyncio.Future[float]] = {}
        self.selftest = SelfTest(self)

    def register(self, registry: CommandRegistry) -> None:
        def add(name: str, handler: Any, schema: dict[str, Any] | None = None,
                action: bool = False) -> None:
            registry.register(name, handler, args_schema=schema, action=action,
                              diagnostic=True)

        add("scale.read", self.scale_read, _ONE_DEVICE)
        add("scale.watch", self.scale_watch,
            _schema(seconds={"type": "number", "minimum": 1, "maximum": 60}))
        add("scale.zero", self.scale_zero, _ONE_DEVICE, action=True)
        add("scale.tare", self.scale_tare, _schema(clear={"type": "boolean"}), action=True)
        add("scanner.listen", self.scanner_listen, _schema(
            count={"type": "integer", "minimum": 1, "maximum": 50},
            timeout_s={"type": "number", "minimum": 1, "maximum": 120}))
        add("printer.status", self.printer_status, _ONE_DEVICE)
        add("printer.test", self.printer_test, _ONE_DEVICE, action=True)
        add("camera.snapshot", self.camera_snapshot, _ONE_DEVICE)
        add("camera.decode", self.camera_decode, _ONE_DEVICE)
        add("config.check", self.config_check)
        add("agent.version", self.version)
        add("selftest", self.selftest.run)
        if self.link is not None and self.topics is not None:
            add("mqtt.check", self.mqtt_check, {
                "type": "object", "additionalProperties": False,
                "properties": {"timeout_s": {"type": "number", "minimum": 1, "maximum": 30}}})
        if self.outbox is not None:
            add("outbox.stats", self.outbox_stats)

    # ------------------------------------------------------------ devices
    def find(self, kind: str, name: str | None, *, role: str | None = None) -> Device[Any]:
        """The device ``name`` of ``kind``; by default the one with ``role``, else the first.

        Raises:
            AgentError: ``device_not_found``, naming the devices of that kind.
        """
        of_kind = [d for d in self.devices.devices.values() if d.kind == kind]
        if name is not None:
            device = self.devices.get(name)
            if device is not None and device.kind == kind:
                return device
        else:
            preferred = [d for d in of_kind if role is not None and d.settings.role == role]
            if preferred or of_kind:
                return (preferred or of_kind)[0]
        names = ", ".join(d.name for d in of_kind) or "none is configured (or enabled)"
        wanted = f"no {kind} named {name!r}" if name is not None else f"no {kind}"
        raise AgentError(f"{wanted}; the {kind}s: {names}", code="device_not_found")

    @staticmethod
    def require_connected(device: Device[Any]) -> None:
        """A device that is not connected cannot be asked anything.

        Raises:
            AgentError: ``device_not_ready`` with its state, code and message.
        """
        if device.state in _GONE:
            why = f": {device.code}: {device.message}" if device.code else ""
            raise AgentError(f"{device.name} is {device.state.value}{why}",
                             code="device_not_ready")

    def _scale(self, args: dict[str, Any]) -> Scale:
        device = self.find("scale", args.get("device") or self.config.jobs.pack.scale)
        self.require_connected(device)
        assert isinstance(device, Scale)
        return device

    # ------------------------------------------------------------ scale
    async def scale_read(self, args: dict[str, Any]) -> dict[str, Any]:
        scale = self._scale(args)
        return {"device": scale.name, "reading": reading_view(await scale.read_weight())}

    async def scale_watch(self, args: dict[str, Any]) -> dict[str, Any]:
        scale = self._scale(args)
        readings: list[dict[str, Any]] = []
        deadline = time.monotonic() + float(args.get("seconds", 10))
        with self.bus.subscribe(WeightReading, device=scale.name, maxsize=256) as feed:
            while (left := deadline - time.monotonic()) > 0:
                try:
                    async with asyncio.timeout(left):
                        reading = await feed.get()
                except TimeoutError:
                    break
                view = reading_view(reading)
                report_progress(view)
                readings.append(view)
        return {"device": scale.name, "readings": readings[-MAX_WATCHED:],
                "count": len(readings)}

    async def scale_zero(self, args: dict[str, Any]) -> dict[str, Any]:
        scale = self._scale(args)
        await scale.zero()
        return {"device": scale.name, "done": "zero", "reading": await _after(scale)}

    async def scale_tare(self, args: dict[str, Any]) -> dict[str, Any]:
        scale = self._scale(args)
        if args.get("clear"):
            await scale.clear_tare()
        else:
            await scale.tare()
        return {"device": scale.name, "done": "clear_tare" if args.get("clear") else "tare",
                "reading": await _after(scale)}

    # ------------------------------------------------------------ scanner
    async def scanner_listen(self, args: dict[str, Any]) -> dict[str, Any]:
        """The next scans (and discarded input, which says why a scan went missing)."""
        if args.get("device") is not None:
            named = self.find("scanner", args["device"])
            self.require_connected(named)
            scanners = {named.name}
        else:
            every = [d for d in self.devices.devices.values() if d.kind == "scanner"]
            if not every:
                self.find("scanner", None)  # raises device_not_found
            connected = [d for d in every if d.state not in _GONE]
            if not connected:
                self.require_connected(every[0])  # raises device_not_ready, says why
            scanners = {d.name for d in connected}
        count = int(args.get("count", 1))
        scans: list[dict[str, Any]] = []
        discarded: list[dict[str, Any]] = []
        deadline = time.monotonic() + float(args.get("timeout_s", 30))
        timed_out = False
        with self.bus.subscribe(object, maxsize=256) as feed:
            while len(scans) < count:
                try:
                    async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                        item = await feed.get()
                except TimeoutError:
                    timed_out = True
                    break
                if isinstance(item, Scan) and item.device in scanners:
                    view = scan_view(item)
                    scans.append(view)
                    report_progress({"scan": view})
                elif isinstance(item, BadInput) and item.device in scanners:
                    bad = {"device": item.device, "code": item.code, "message": item.message,
                           "raw": item.raw.decode("latin-1"), "at": iso_time(item.at)}
                    discarded.append(bad)
                    report_progress({"discarded": bad})
        return {"scanners": sorted(scanners), "scans": scans, "discarded": discarded,
                "timed_out": timed_out}

    # ------------------------------------------------------------ printer
    async def printer_status(self, args: dict[str, Any]) -> dict[str, Any]:
        printer = self.find("printer", args.get("device"), role="label")
        self.require_connected(printer)
        assert isinstance(printer, Printer)
        status = await printer.query_status()
        return {"device": printer.name, "state": printer.state.value, "code": printer.code,
                "message": printer.message, "status": {
                    "ready": status.ready, "faults": list(status.faults),
                    "labels_remaining": status.labels_remaining,
                    "formats_in_buffer": status.formats_in_buffer,
                    "printing": status.printing, "notes": list(status.notes),
                    "fields": dict(status.fields), "raw": status.raw.decode("latin-1")},
                "details": printer.details()}

    async def printer_test(self, args: dict[str, Any]) -> dict[str, Any]:
        """A test label or slip: bench id, printer name, time; through the print queue."""
        printer = self.find("printer", args.get("device"), role="label")
        assert isinstance(printer, Printer)
        now = time.time()
        bench = f"{self.config.bench.site}/{self.config.bench.id}"
        document = test_document(printer.settings, bench, printer.name, now)
        if self.printing is not None:
            # Over MQTT the job id comes from the command id: the same command run again
            # after a restart is the same job, printed once (the queue knows its id).
            command_id = current_command_id()
            job_id = (f"test-{printer.name}-{command_id}" if command_id
                      else f"test-{printer.name}-{int(now * 1000)}")[:128]
            return await self.printing.submit({"job_id": job_id, "printer": printer.name,
                                               "document": document})
        self.require_connected(printer)  # direct mode: straight to the printer
        rendered = await asyncio.to_thread(render, document, printer.settings,
                                           limits=Limits())
        await printer.send(rendered.data)
        return {"device": printer.name, "state": "sent", "bytes": len(rendered.data),
                "summary": rendered.summary}

    # ------------------------------------------------------------ camera
    def _camera(self, args: dict[str, Any]) -> Camera:
        camera = self.find("camera", args.get("device"), role=self.config.jobs.pack.camera_role)
        self.require_connected(camera)
        assert isinstance(camera, Camera)
        return camera

    async def camera_snapshot(self, args: dict[str, Any]) -> dict[str, Any]:
        camera = self._camera(args)
        jpeg = await camera.snapshot_jpeg()
        frame = camera.latest_frame()
        width, height = frame.resolution if frame is not None else (None, None)
        return {"device": camera.name, "jpeg": base64.b64encode(jpeg).decode(),
                "bytes": len(jpeg), "width": width, "height": height,
                "at": iso_time(time.time())}

    async def camera_decode(self, args: dict[str, Any]) -> dict[str, Any]:
        camera = self._camera(args)
        scans = await camera.decode()
        frame = camera.latest_frame()
        width, height = frame.resolution if frame is not None else (None, None)
        return {"device": camera.name, "barcodes": [scan_view(s) for s in scans],
                "width": width, "height": height, "at": iso_time(time.time())}

    # ------------------------------------------------------------ the agent
    async def mqtt_check(self, args: dict[str, Any]) -> dict[str, Any]:
        """A message through the broker and back: publish to ``{prefix}/diag/echo``."""
        link, topics = self.link, self.topics
        assert link is not None and topics is not None
        if not link.connected.is_set():
            raise AgentError(f"not connected to {link.status()['broker']}: "
                             f"{link.last_error or 'connecting'}", code="not_connected")
        nonce = secrets.token_hex(8).encode()
        arrived: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self._echoes[nonce] = arrived
        started = time.monotonic()
        timeout_s = float(args.get("timeout_s", 5))
        try:
            link.publish_event(topics.echo, nonce, None)
            async with asyncio.timeout(timeout_s):
                back = await arrived
        except TimeoutError:
            raise AgentError(f"the message published to {topics.echo} did not come back "
                             f"within {timeout_s:g} s: the broker is slow, or its ACL does "
                             f"not let this bench read its diag topic",
                             code="round_trip_failed") from None
        finally:
            self._echoes.pop(nonce, None)
        return {"ok": True, "round_trip_ms": round((back - started) * 1000, 2),
                "broker": link.status()["broker"], "link": link.status()}

    def echo_received(self, payload: bytes) -> None:
        """The daemon got a message on the echo topic."""
        waiting = self._echoes.get(payload)
        if waiting is not None and not waiting.done():
            waiting.set_result(time.monotonic())

    async def outbox_stats(self, _args: dict[str, Any]) -> dict[str, Any]:
        assert self.outbox is not None
        return {**await self.outbox.stats(), "alarms": self.outbox.alarms()}

    async def config_check(self, _args: dict[str, Any]) -> dict[str, Any]:
        """The daemon's own config file validated again and compared with the running one."""
        path = self.config.source
        running = summary(self.config)
        try:
            on_disk = await asyncio.to_thread(load_config, path)
        except ConfigError as exc:
            return {"file": str(path), "ok": False, "errors": str(exc).splitlines(),
                    "running": running, "differs": True}
        differs = on_disk.model_dump(mode="json") != self.config.model_dump(mode="json")
        return {"file": str(path), "ok": True, "errors": [], "running": running,
                "differs": differs,
                "note": "the file changed since the agent started: restart it to apply"
                if differs else "the running config is the file's"}

    async def version(self, _args: dict[str, Any]) -> dict[str, Any]:
        return {"version": __version__, "python": platform.python_version(),
                "started_at": iso_time(self.started_at),
                "uptime_s": round(time.time() - self.started_at, 3)}


async def _after(scale: Scale) -> dict[str, Any] | None:
    """The reading after a zero or tare, or ``None`` when the scale gives none in time."""
    try:
        return reading_view(await scale.read_weight())
    except DeviceError:
        return None


def reading_view(reading: WeightReading) -> dict[str, Any]:
    return {"device": reading.device, "condition": reading.condition.value,
            "grams": reading.grams, "stable": reading.stable, "net": reading.net,
            "settled": reading.settled, "raw": reading.raw.decode("latin-1"),
            "at": iso_time(reading.at)}


def scan_view(scan: Scan) -> dict[str, Any]:
    return {"device": scan.device, "data": scan.data, "symbology": scan.symbology,
            "symbology_name": scan.symbology_name, "gs1": scan.gs1,
            "gs1_error": scan.gs1_error, "at": iso_time(scan.at)}


def test_document(settings: PrinterSettings, bench: str, printer: str,
                  at: float) -> dict[str, Any]:
    """A test print in the printer's own language: who printed it, where, when.

    The label commands only print (no ``^JU``, no ``SIZE``): the printer's media setup is
    left as the technician found it.
    """
    when = datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    lines = ["bench-agent test print", f"bench {bench}", f"printer {printer}", when]
    code = f"TEST-{int(at)}"
    if settings.language == "escpos":
        return {"format": "slip", "template": "packing_slip", "fields": {
            "title": lines[0], "shop": lines[1], "order_ids": [code],
            "lines": [{"sku": "TEST", "name": lines[2], "quantity": 1}],
            "created_at": when, "barcode": code, "footer": f"bench-agent {__version__}"}}
    if settings.language == "zpl":
        body = "".join(f"^FO40,{40 + 60 * n}^A0N,40,40^FD{text}^FS"
                       for n, text in enumerate(lines))
        data = f"^XA{body}^FO40,300^BCN,80,Y,N,N^FD{code}^FS^XZ"
    elif settings.language == "tspl":
        body = "".join(f'TEXT 20,{20 + 40 * n},"3",0,1,1,"{text}"\r\n'
                       for n, text in enumerate(lines))
        data = f'CLS\r\n{body}BARCODE 20,200,"128",60,1,0,2,2,"{code}"\r\nPRINT 1\r\n'
    else:  # EPL
        body = "".join(f'A20,{20 + 40 * n},0,3,1,1,N,"{text}"\n'
                       for n, text in enumerate(lines))
        data = f'\nN\n{body}B20,200,0,1,2,4,60,B,"{code}"\nP1\n'
    return {"format": settings.language, "data": base64.b64encode(data.encode()).decode()}
