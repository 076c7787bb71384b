"""The technician's commands over MQTT, on a simulated bench (scale and scanner on ptys,
printers on TCP, a camera on image files, mosquitto, the agent as a subprocess), and the
remote policy: allowlist, actions off, rate limit. The same commands through the control
socket and the CLI: tests/test_control.py."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from importlib import resources
from typing import Any

import cv2
import jsonschema
import numpy as np

from agent import __version__
from simulators.broker import Broker
from simulators.central import CentralSystem
from tests.harness import AgentProcess, wait_until
from tests.test_pack_bench import BENCH, SITE, Bench


def ask(central: CentralSystem, name: str, args: dict[str, Any] | None = None,
        timeout_s: float = 15.0) -> dict[str, Any]:
    return central.request(SITE, BENCH, name, args or {}, timeout_s=timeout_s)


def ok(central: CentralSystem, name: str, args: dict[str, Any] | None = None,
       timeout_s: float = 15.0) -> dict[str, Any]:
    reply = ask(central, name, args, timeout_s)
    assert reply["ok"] is True, reply
    result: dict[str, Any] = reply["result"]
    return result


REPLY_SCHEMA = json.loads(resources.files("agent.schemas").joinpath("reply.json").read_text())


def refused(central: CentralSystem, name: str, args: dict[str, Any] | None = None
            ) -> dict[str, str]:
    reply = ask(central, name, args)
    assert reply["ok"] is False, reply
    jsonschema.validate(reply, REPLY_SCHEMA)
    error: dict[str, str] = reply["error"]
    return error


def ready(central: CentralSystem, *devices: str) -> None:
    for device in devices:
        central.wait_for(lambda m, d=device: m.topic.endswith("/events/device_state")
                         and m.json["data"]["device"] == d
                         and m.json["data"]["state"] == "ready", 30)


def test_every_diagnostics_command_over_mqtt_on_a_simulated_bench(
        broker: Broker, central: CentralSystem, agent_factory: Callable[..., AgentProcess],
        bench: Bench) -> None:
    agent = agent_factory(broker, devices=bench.devices(),
                          jobs={"pack": {"enabled": False}}).start()
    ready(central, "scanner", "scale", "label", "slip", "camera", "light")

    # Scale: a reading, a watch, tare then clear, zero.
    bench.scale.set_weight(1234.0)
    wait_until(lambda: ok(central, "scale.read")["reading"]["grams"] == 1234.0, 10)
    watched = ok(central, "scale.watch", {"seconds": 1})
    assert watched["device"] == "scale" and watched["count"] >= 1
    assert watched["readings"][-1]["grams"] == 1234.0
    tared = ok(central, "scale.tare")
    assert tared["done"] == "tare" and tared["reading"]["net"] is True
    assert tared["reading"]["grams"] == 0.0
    cleared = ok(central, "scale.tare", {"clear": True})
    assert cleared["reading"]["net"] is False and cleared["reading"]["grams"] == 1234.0
    bench.scale.set_weight(0.0)
    wait_until(lambda: ok(central, "scale.read")["reading"]["grams"] == 0.0, 10)
    assert ok(central, "scale.zero")["done"] == "zero"
    assert refused(central, "scale.read", {"device": "nope"})["code"] == "device_not_found"

    # Scanner: the next two scans, with symbology and GS1 fields.
    gs1 = "0109506000134352" + "21SN-42"

    def scan_soon() -> None:
        bench.scanner.scan("4006381333931", aim="]E0")
        bench.scanner.scan(gs1, aim="]C1")
    threading.Timer(1.0, scan_soon).start()
    heard = ok(central, "scanner.listen", {"count": 2, "timeout_s": 10}, timeout_s=20)
    assert heard["timed_out"] is False
    assert [s["data"] for s in heard["scans"]] == ["4006381333931", gs1]
    assert heard["scans"][0]["symbology"] == "]E0"
    assert heard["scans"][0]["symbology_name"].startswith("EAN-13")
    assert heard["scans"][1]["gs1"]["01"] == "09506000134352"
    assert heard["scans"][1]["gs1"]["21"] == "SN-42"
    quiet = ok(central, "scanner.listen", {"timeout_s": 1})
    assert quiet["timed_out"] is True and quiet["scans"] == []

    # Printers: status, a fault in the status and the selftest, then a test print.
    status = ok(central, "printer.status", {"device": "label"})
    assert status["status"]["ready"] is True and status["status"]["faults"] == []
    bench.label.set_fault("paper_out")
    paper = ok(central, "printer.status", {"device": "label"})
    assert paper["status"]["ready"] is False and "paper_out" in paper["status"]["faults"]
    test = ok(central, "selftest", timeout_s=30)
    checks = {c["name"]: c for c in test["checks"]}
    assert test["passed"] is False and checks["label"]["ok"] is False, checks
    assert "paper" in checks["label"]["reason"]
    for name in ("scale", "scanner", "slip", "camera", "light", "mqtt", "outbox", "storage"):
        assert checks[name]["ok"] is True, checks[name]
    assert checks["scale"]["reason"] == "reads 0 g"
    bench.label.set_fault("paper_out", False)
    job = ok(central, "printer.test", {"device": "label"})
    assert job["state"] in ("queued", "printing", "printed") and job["printer"] == "label"
    assert bench.label.wait_for(lambda: len(bench.label.jobs) == 1, 10)
    label = bench.label.jobs[0].decode()
    assert "bench sh01/b07" in label and "printer label" in label and "^XA" in label
    slip = ok(central, "printer.test", {"device": "slip"})
    assert slip["document"] == "slip"
    assert bench.slip.wait_for(lambda: b"printer slip" in bytes(bench.slip.received), 10)

    # Camera: a JPEG that decodes to the frame size, the barcode in view.
    snap = ok(central, "camera.snapshot")
    image = cv2.imdecode(np.frombuffer(base64.b64decode(snap["jpeg"]), np.uint8),
                         cv2.IMREAD_COLOR)
    assert image.shape[1] == snap["width"] == 320 and image.shape[0] == snap["height"]
    assert [b["data"] for b in ok(central, "camera.decode")["barcodes"]] == [
        "4006381333931"]

    # The agent: broker round trip, outbox, config, version.
    echo = ok(central, "mqtt.check")
    assert echo["ok"] is True and 0 < echo["round_trip_ms"] < 5000
    assert ok(central, "outbox.stats")["alarms"] == []
    assert ok(central, "config.check")["differs"] is False
    agent.config.write_text(agent.config.read_text().replace("interval_s = 5.0",
                                                             "interval_s = 7.0"))
    changed = ok(central, "config.check")
    assert changed["ok"] is True and changed["differs"] is True
    agent.config.write_text(agent.config.read_text() + "\n[nonsense]\n")
    broken = ok(central, "config.check")
    assert broken["ok"] is False and any("nonsense" in e for e in broken["errors"])
    version = ok(central, "agent.version")
    assert version["version"] == __version__ and version["uptime_s"] > 0
    assert agent.stop() == 0
    assert "Traceback" not in agent.output()


def test_the_remote_policy_allowlist_actions_and_rate_limit(
        broker: Broker, central: CentralSystem, agent_factory: Callable[..., AgentProcess],
        bench: Bench) -> None:
    agent = agent_factory(broker, devices=bench.devices(), jobs={"pack": {"enabled": False}},
                          diagnostics={"remote_allow": ["agent.version", "printer.test",
                                                        "selftest"],
                                       "remote_actions": False,
                                       "remote_rate_per_min": 3}).start()
    ready(central, "label")
    assert refused(central, "scale.read")["code"] == "not_allowed"
    error = refused(central, "printer.test", {"device": "label"})
    assert error["code"] == "action_disabled" and "remote_actions" in error["message"]
    assert bench.label.jobs == []
    for _ in range(3):
        ok(central, "agent.version")
    limited = refused(central, "agent.version")
    assert limited["code"] == "rate_limited" and "try again in" in limited["message"]
    # Business commands are not diagnostics: never rate limited.
    assert ask(central, "status.get")["ok"] is True
    assert agent.stop() == 0


def test_an_allowlist_naming_an_unknown_command_stops_the_start_with_the_key(
        broker: Broker, agent_factory: Callable[..., AgentProcess]) -> None:
    agent = agent_factory(broker, diagnostics={"remote_allow": ["scale.read", "rm -rf"]})
    run = subprocess.run([sys.executable, "-m", "agent.cli", "run", "-c", str(agent.config)],
                         capture_output=True, text=True, timeout=30)
    assert run.returncode == 2
    assert "diagnostics.remote_allow" in run.stderr and "rm -rf" in run.stderr


def test_the_registered_diagnostics_commands_are_the_ones_config_knows() -> None:
    """config.DIAGNOSTICS_COMMANDS validates remote_allow: it must name every one."""
    from agent.bus import Bus
    from agent.commands import CommandRegistry
    from agent.config import DIAGNOSTICS_COMMANDS, Config
    from agent.devices.manager import DeviceManager
    from agent.diagnostics import Diagnostics
    from agent.mqtt import MqttLink
    from agent.outbox import Outbox
    from agent.topics import Topics

    config = Config.model_construct()  # registration reads nothing of it
    registry = CommandRegistry()
    link = object.__new__(MqttLink)  # never used: only registration is looked at
    outbox = object.__new__(Outbox)
    Diagnostics(config, DeviceManager({}, Bus(), _no_report), Bus(), link=link,
                outbox=outbox, topics=Topics("r", "s", "b")).register(registry)
    assert tuple(registry.names) == DIAGNOSTICS_COMMANDS
    assert all(registry.get(n).diagnostic for n in registry.names)  # type: ignore[union-attr]


async def _no_report(*_args: Any) -> None:
    pass


def test_a_disconnected_device_is_not_ready_and_a_resent_test_print_prints_once(
        broker: Broker, central: CentralSystem, agent_factory: Callable[..., AgentProcess],
        bench: Bench) -> None:
    agent = agent_factory(broker, devices=bench.devices(),
                          jobs={"pack": {"enabled": False}}).start()
    ready(central, "scale", "label")
    bench.scale.unplug()
    central.wait_for(lambda m: m.topic.endswith("/events/device_state")
                     and m.json["data"]["device"] == "scale"
                     and m.json["data"]["state"] == "disconnected", 20)
    error = refused(central, "scale.read")
    assert error["code"] == "device_not_ready" and "scale is disconnected" in error["message"]
    check = {c["name"]: c for c in ok(central, "selftest", timeout_s=30)["checks"]}
    assert check["scale"]["ok"] is False and "disconnected" in check["scale"]["reason"]
    # The same command id twice (a retry, or a run again after a restart): one label.
    first = central.request(SITE, BENCH, "printer.test", {}, command_id="tp-1")
    again = central.request(SITE, BENCH, "printer.test", {}, command_id="tp-1")
    assert first["result"]["job_id"] == again["result"]["job_id"] == "test-label-tp-1"
    assert bench.label.wait_for(lambda: len(bench.label.jobs) == 1, 10)
    time.sleep(0.5)
    assert len(bench.label.jobs) == 1
    bench.scale.replug()
    assert agent.stop() == 0
