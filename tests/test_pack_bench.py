"""The packing job end to end on a simulated bench: scanner and scale on ptys, printers on
TCP, a camera on image files, mosquitto, the central double, the agent as a subprocess."""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from simulators.broker import Broker
from simulators.camera import BarcodeSpec, CameraScene
from simulators.central import CentralSystem, Received
from simulators.printer import EscposPrinterSim, LabelPrinterSim
from simulators.scale import MtSicsSimulator
from simulators.scanner import SerialScannerSimulator
from tests.harness import AgentProcess

SITE, BENCH = "sh01", "b07"
PREFIX = f"benchagent/v1/{SITE}/{BENCH}"
WAYBILL_ZPL = b"^XA^FO40,40^BCN,120,Y^FDSF100^FS^XZ"
SLIP = b"\x1b@Packing slip SO-1\n\x1dV\x00"


class Bench:
    def __init__(self, tmp: Path) -> None:
        self.scale = MtSicsSimulator(tmp / "scale").start()
        self.scanner = SerialScannerSimulator(tmp / "scanner")
        self.label = LabelPrinterSim("zpl").start()
        self.slip = EscposPrinterSim().start()
        self.camera = CameraScene([BarcodeSpec("ean13", "4006381333931")],
                                  (320, 240)).write_sequence(tmp / "camera", frames=3)

    def devices(self) -> dict[str, Any]:
        return {
            "scanner": {"kind": "scanner", "role": "items",
                        "connection": f"serial://{self.scanner.path}"},
            "scale": {"kind": "scale", "protocol": "mt-sics",
                      "connection": f"serial://{self.scale.path}"},
            "label": {"kind": "printer", "language": "zpl", "role": "label",
                      "connection": f"tcp://127.0.0.1:{self.label.port}"},
            "slip": {"kind": "printer", "language": "escpos", "role": "slip",
                     "connection": f"tcp://127.0.0.1:{self.slip.port}"},
            "camera": {"kind": "camera", "role": "packing", "connection": self.camera},
        }

    def close(self) -> None:
        self.scale.stop()
        self.scanner.close()
        self.label.stop()
        self.slip.stop()


@pytest.fixture
def bench(tmp_path: Path) -> Iterator[Bench]:
    sims = Bench(tmp_path)
    yield sims
    sims.close()


def order() -> dict[str, Any]:
    return {
        "order_id": "SO-1", "waybills": ["SF100"],
        "lines": [{"sku": "PEACH-12", "name": "Peaches, box of 12",
                   "barcodes": ["6901234567892"], "quantity": 2, "unit_weight_g": 500.0}],
        "note": "fragile",
        "print_jobs": [
            {"role": "label", "document": {"format": "zpl",
                                           "data": base64.b64encode(WAYBILL_ZPL).decode()}},
            {"role": "slip", "document": {"format": "escpos",
                                          "data": base64.b64encode(SLIP).decode()}},
        ],
    }


def state_is(name: str) -> Callable[[Received], bool]:
    return lambda m: m.topic == f"{PREFIX}/state" and m.json["state"] == name


def start(broker: Broker, central: CentralSystem, agent_factory: Callable[..., AgentProcess],
          bench: Bench) -> AgentProcess:
    central.subscribe(f"{PREFIX}/state")
    agent = agent_factory(broker, devices=bench.devices()).start()
    for device in ("scanner", "scale", "label", "slip", "camera"):
        central.wait_for(lambda m, d=device: m.topic.endswith("/events/device_state")
                         and m.json["data"]["device"] == d
                         and m.json["data"]["state"] == "ready", 30)
    pushed = central.request(SITE, BENCH, "order.push", {"orders": [order()]})
    assert pushed["ok"] is True, pushed
    return agent


def test_a_good_parcel_is_checked_weighed_photographed_labelled_verified_and_reported(
        broker: Broker, central: CentralSystem, agent_factory: Callable[..., AgentProcess],
        bench: Bench) -> None:
    agent = start(broker, central, agent_factory, bench)
    bench.scanner.scan("EMP-7")
    central.wait_for(state_is("idle"), 15)
    bench.scanner.scan("SO-1")
    packing = central.wait_for(state_is("packing"), 15)[-1].json
    assert packing["order_ids"] == ["SO-1"] and packing["packer"] == "EMP-7"
    bench.scanner.scan("6901234567892")
    bench.scanner.scan("4006381333931")  # not in this order
    rejected = central.wait_for(lambda m: state_is("packing")(m)
                                and m.json["last_rejection"] is not None, 15)[-1].json
    assert "4006381333931" in str(rejected["last_rejection"])
    bench.scanner.scan("6901234567892")
    central.wait_for(state_is("weighing"), 15)
    bench.scale.set_weight(1010.0)  # 2 x 500 g, inside 20 g / 5 %
    central.wait_for(state_is("verify_label"), 30)
    assert bench.label.jobs == [WAYBILL_ZPL]
    bench.scanner.scan("SF100")
    result = central.wait_for(lambda m: m.topic == f"{PREFIX}/events/pack.result", 20)[0]
    evidence = result.json["data"]
    assert evidence["verdict"] == "pass" and evidence["waybill"] == "SF100"
    assert evidence["order_ids"] == ["SO-1"] and evidence["packer"] == "EMP-7"
    assert evidence["orders"][0]["lines"][0]["packed"] == 2
    assert evidence["stable_weight_g"] == pytest.approx(1010.0)
    assert evidence["expected_weight_g"] == pytest.approx(1000.0)
    outcomes = [scan["outcome"] for scan in evidence["scans"]]
    assert outcomes.count("accepted") == 2 and len(outcomes) >= 4
    photos = {photo["moment"]: photo for photo in evidence["photos"]}
    assert set(photos) == {"open", "closed"} and all(p["path"] for p in photos.values())
    assert bytes(bench.slip.received) == SLIP
    found = central.request(SITE, BENCH, "evidence.find", {"key": "SF100"})["result"]
    assert [r["evidence_id"] for r in found["records"]] == [evidence["evidence_id"]]
    got = central.request(SITE, BENCH, "order.get", {"order_id": "SO-1"})["result"]
    assert "packed" in str(got)
    central.wait_for(state_is("idle"), 15)
    assert agent.stop() == 0
