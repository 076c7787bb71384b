"""The agent drives its devices and tells the central system about them over MQTT."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from importlib import resources
from pathlib import Path

import jsonschema
import pytest

from simulators.broker import Broker
from simulators.central import CentralSystem, Received
from simulators.printer import LabelPrinterSim
from simulators.scale import MtSicsSimulator
from tests.harness import AgentProcess

SITE, BENCH = "sh01", "b07"


@pytest.fixture
def scale(tmp_path: Path) -> Iterator[MtSicsSimulator]:
    sim = MtSicsSimulator(tmp_path / "by-id-scale").start()
    yield sim
    sim.stop()


@pytest.fixture
def label() -> Iterator[LabelPrinterSim]:
    sim = LabelPrinterSim("zpl").start()
    yield sim
    sim.stop()


def _state(device: str, state: str) -> Callable[[Received], bool]:
    def match(message: Received) -> bool:
        if not message.topic.endswith("/events/device_state"):
            return False
        data = message.json["data"]
        return bool(data["device"] == device and data["state"] == state)
    return match


def _devices(scale: MtSicsSimulator, label: LabelPrinterSim) -> dict[str, object]:
    return {
        "scale": {"kind": "scale", "protocol": "mt-sics", "connection": f"serial://{scale.path}",
                  "reconnect_min_s": 0.2, "reconnect_max_s": 0.5},
        "label": {"kind": "printer", "language": "zpl", "role": "waybill",
                  "connection": f"tcp://127.0.0.1:{label.port}", "status_interval_s": 0.3},
        "spare": {"kind": "printer", "language": "tspl", "enabled": False,
                  "connection": "tcp://127.0.0.1:9"},
    }


def test_device_states_reach_the_central_system_in_order_across_an_unplug(
        broker: Broker, central: CentralSystem, agent_factory: Callable[..., AgentProcess],
        scale: MtSicsSimulator, label: LabelPrinterSim) -> None:
    """ready, then disconnected with a code when the cable is pulled, ready when it is back."""
    agent = agent_factory(broker, devices=_devices(scale, label)).start()
    central.wait_for(_state("scale", "ready"), timeout_s=20)
    central.wait_for(_state("label", "ready"), timeout_s=20)
    scale.unplug()
    gone = central.wait_for(_state("scale", "disconnected"), timeout_s=20)[0].json
    assert gone["data"]["code"] == "disconnected" and gone["data"]["message"]
    assert gone["data"]["status"]["state"] == "disconnected"
    scale.replug()
    central.wait_for(_state("scale", "ready"), count=2, timeout_s=20)
    label.set_fault("paper_out")
    faulted = central.wait_for(_state("label", "faulted"), timeout_s=20)[0].json["data"]
    assert faulted["code"] == "paper_out"
    label.set_fault("paper_out", on=False)
    back = central.wait_for(_state("label", "ready"), count=2, timeout_s=20)[1].json["data"]
    # Ready again, the status still says what went wrong last (for the technician).
    assert back["status"]["last_fault"]["code"] == "paper_out"
    assert back["status"]["last_fault"]["state"] == "faulted"
    scale_states = [m.json["data"]["state"] for m in central.messages
                    if m.topic.endswith("/events/device_state")
                    and m.json["data"]["device"] == "scale"]
    assert scale_states == ["ready", "disconnected", "ready"]  # one event per change
    assert agent.stop() == 0


def test_status_and_devices_list_carry_each_device_state(
        broker: Broker, central: CentralSystem, agent_factory: Callable[..., AgentProcess],
        scale: MtSicsSimulator, label: LabelPrinterSim) -> None:
    agent = agent_factory(broker, devices=_devices(scale, label)).start()
    central.wait_for(_state("scale", "ready"), timeout_s=20)
    central.wait_for(_state("label", "ready"), timeout_s=20)
    status = central.request(SITE, BENCH, "status.get")["result"]
    schema = json.loads(resources.files("agent.schemas").joinpath("status.json").read_text())
    jsonschema.validate(status, schema)
    by_name = {d["name"]: d for d in status["devices"]}
    # The harness's own disabled scale1 comes first, then the devices of this test.
    assert [d["name"] for d in status["devices"]] == ["scale1", "label", "scale", "spare"]
    assert by_name["scale"]["state"] == "ready" and by_name["scale"]["protocol"] == "mt-sics"
    assert by_name["label"]["role"] == "waybill" and by_name["label"]["language"] == "zpl"
    assert by_name["spare"]["state"] == "disabled" and by_name["spare"]["enabled"] is False
    listed = central.request(SITE, BENCH, "devices.list")["result"]["devices"]
    assert [d["state"] for d in listed] == ["disabled", "ready", "ready", "disabled"]
    found = central.request(SITE, BENCH, "devices.discover")["result"]
    assert set(found) == {"serial", "usb", "input", "video"}
    assert agent.stop() == 0


def test_a_device_missing_at_start_is_reported_and_the_agent_runs_on(
        broker: Broker, central: CentralSystem, agent_factory: Callable[..., AgentProcess],
        tmp_path: Path) -> None:
    """No scale plugged in: disconnected/not_found, the link and commands still work."""
    devices = {"scale": {"kind": "scale", "protocol": "toledo-8217",
                         "connection": f"serial://{tmp_path / 'no-such-port'}"}}
    agent = agent_factory(broker, devices=devices).start()
    missing = central.wait_for(_state("scale", "disconnected"), timeout_s=20)[0].json["data"]
    assert missing["code"] == "not_found" and "no-such-port" in missing["message"]
    listed = central.request(SITE, BENCH, "devices.list")["result"]["devices"]
    assert {d["name"]: d["state"] for d in listed}["scale"] == "disconnected"
    assert agent.stop() == 0
