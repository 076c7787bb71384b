"""The packing job end to end on a simulated bench: scanner and scale on ptys, printers on
TCP, a camera on image files, mosquitto, the central double, the agent as a subprocess."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from simulators.broker import Broker
from simulators.camera import BarcodeSpec, CameraScene
from simulators.central import CentralSystem, Received
from simulators.printer import EscposPrinterSim, LabelPrinterSim
from simulators.scale import MtSicsSimulator
from simulators.scanner import SerialScannerSimulator
from simulators.signal import RelayBoardSim, lcus_frame
from tests.harness import ROOT, AgentProcess, wait_until

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
        self.light = RelayBoardSim(tmp / "light").start()  # green 1, red 2, red+buzzer 3

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
            "light": {"kind": "signal", "connection": f"serial://{self.light.path}",
                      **{signal: {"on": lcus_frame(relay, True).hex(" "),
                                  "off": lcus_frame(relay, False).hex(" "), "ms": 100}
                         for signal, relay in (("good", 1), ("bad", 2), ("intercept", 3))}},
        }

    def close(self) -> None:
        self.scale.stop()
        self.scanner.close()
        self.label.stop()
        self.slip.stop()
        self.light.close()


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
          bench: Bench, **overrides: Any) -> AgentProcess:
    central.subscribe(f"{PREFIX}/state")
    agent = agent_factory(broker, devices=bench.devices(), **overrides).start()
    for device in ("scanner", "scale", "label", "slip", "camera", "light"):
        central.wait_for(lambda m, d=device: m.topic.endswith("/events/device_state")
                         and m.json["data"]["device"] == d
                         and m.json["data"]["state"] == "ready", 30)
    pushed = central.request(SITE, BENCH, "order.push", {"orders": [order()]})
    assert pushed["ok"] is True, pushed
    return agent


def test_a_good_parcel_is_checked_weighed_photographed_labelled_verified_and_reported(
        broker: Broker, central: CentralSystem, agent_factory: Callable[..., AgentProcess],
        bench: Bench) -> None:
    moments = {"open": "packed", "closed": "weighed", "labelled": "labelled"}
    agent = start(broker, central, agent_factory, bench,
                  jobs={"pack": {"flow": {"photo_moments": moments}}})
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
    evidence = result_of(central, "SO-1")
    assert evidence["verdict"] == "pass" and evidence["waybill"] == "SF100"
    assert evidence["order_ids"] == ["SO-1"] and evidence["packer"] == "EMP-7"
    assert evidence["orders"][0]["lines"][0]["packed"] == 2
    assert evidence["stable_weight_g"] == pytest.approx(1010.0)
    assert evidence["expected_weight_g"] == pytest.approx(1000.0)
    outcomes = [scan["outcome"] for scan in evidence["scans"]]
    assert outcomes.count("accepted") == 2 and len(outcomes) >= 4
    photos = {photo["moment"]: photo for photo in evidence["photos"]}
    # The labelled photo is taken as the label is scanned: the record waits for it.
    assert set(photos) == set(moments) and all(p["path"] for p in photos.values())
    photo_dir = agent.config.parent / "state" / "photos"
    assert all((photo_dir / p["path"]).stat().st_size > 1000 for p in photos.values())
    # The slip follows the waybill; the packer may be quicker than the slip printer.
    assert bench.slip.wait_for(lambda: bytes(bench.slip.received) == SLIP, 5)
    found = central.request(SITE, BENCH, "evidence.find", {"key": "SF100"})["result"]
    assert [r["evidence_id"] for r in found["records"]] == [evidence["evidence_id"]]
    got = central.request(SITE, BENCH, "order.get", {"order_id": "SO-1"})["result"]
    assert "packed" in str(got)
    # Customer service at the bench: the CLI reads the database while the agent runs.
    cli = subprocess.run([sys.executable, "-m", "agent.cli", "evidence", "SO-1", "--json",
                          "-c", str(agent.config)], cwd=ROOT, capture_output=True, text=True,
                         timeout=30)
    assert cli.returncode == 0, cli.stderr
    [record] = json.loads(cli.stdout)["records"]
    assert record["evidence_id"] == evidence["evidence_id"] and record["waybill"] == "SF100"
    words = subprocess.run([sys.executable, "-m", "agent.cli", "evidence", "SF999",
                            "-c", str(agent.config)], cwd=ROOT, capture_output=True,
                           text=True, timeout=30)
    assert words.returncode == 1 and "no evidence for 'SF999'" in words.stderr
    central.wait_for(state_is("idle"), 15)
    shown = central.request(SITE, BENCH, "pack.state")["result"]
    assert shown["state"] == "idle" and shown["last_parcel"]["verdict"] == "pass"
    # The stack light: green for each good scan, red for the wrong item.
    wait_until(lambda: (2, True) in bench.light.switched(), 5, "the red light")
    switched = bench.light.switched()
    assert (1, True) in switched and (3, True) not in switched
    assert bench.light.bad_frames == 0
    assert agent.stop() == 0


def open_parcel(central: CentralSystem, bench: Bench) -> None:
    """The packer logs in and scans the order (a lookup takes a moment: scans wait)."""
    bench.scanner.scan("EMP-7")
    central.wait_for(state_is("idle"), 15)
    bench.scanner.scan("SO-1")
    central.wait_for(state_is("packing"), 15)


def _schema(name: str) -> dict[str, Any]:
    schema: dict[str, Any] = json.loads(
        resources.files("agent.schemas").joinpath(name).read_text())
    return schema


RESULT_SCHEMA, STATE_SCHEMA = _schema("pack_result.json"), _schema("bench_state.json")


def result_of(central: CentralSystem, order_id: str) -> dict[str, Any]:
    """The order's pack.result, checked against the published schema, and every bench
    state received so far too."""
    message = central.wait_for(lambda m: m.topic == f"{PREFIX}/events/pack.result"
                               and order_id in m.json["data"]["order_ids"], 20)[0]
    data: dict[str, Any] = message.json["data"]
    jsonschema.validate(data, RESULT_SCHEMA)
    for state in central.matching(lambda m: m.topic == f"{PREFIX}/state"):
        jsonschema.validate(state.json, STATE_SCHEMA)
    return data


def test_a_weight_mismatch_stops_the_parcel_until_a_supervisor_overrides_with_a_reason(
        broker: Broker, central: CentralSystem, agent_factory: Callable[..., AgentProcess],
        bench: Bench) -> None:
    agent = start(broker, central, agent_factory, bench)
    open_parcel(central, bench)
    for _ in range(2):
        bench.scanner.scan("6901234567892")
    central.wait_for(state_is("weighing"), 15)
    bench.scale.set_weight(1180.0)  # expected 1000 g +/- 50 g
    mismatch = central.wait_for(state_is("weight_mismatch"), 20)[-1].json
    assert mismatch["stable_weight_g"] == pytest.approx(1180.0)
    assert bench.label.jobs == [], "no label for a parcel that does not weigh right"
    bench.scanner.scan("EMP-8")  # not a supervisor
    central.wait_for(lambda m: state_is("weight_mismatch")(m)
                     and m.json["last_rejection"] is not None, 15)
    bench.scanner.scan("SUP-1")
    bench.scanner.scan("RSN-SCALE-CHECKED")
    central.wait_for(state_is("verify_label"), 30)
    bench.scanner.scan("SF100")
    evidence = result_of(central, "SO-1")
    assert evidence["verdict"] == "pass_with_override"
    [override] = evidence["overrides"]
    assert "SUP-1" in str(override) and "RSN-SCALE-CHECKED" in str(override)
    assert agent.stop() == 0


def test_an_intercept_during_packing_stops_the_parcel_loudly_and_it_is_set_aside(
        broker: Broker, central: CentralSystem, agent_factory: Callable[..., AgentProcess],
        bench: Bench) -> None:
    agent = start(broker, central, agent_factory, bench)
    open_parcel(central, bench)
    bench.scanner.scan("6901234567892")
    central.wait_for(lambda m: state_is("packing")(m) and m.json["signal"] == "good"
                     and m.json["lines"][0]["scanned"] == 1, 15)
    held = central.request(SITE, BENCH, "order.hold",
                           {"order_id": "SO-1", "reason": "buyer changed the address"})
    assert held["ok"] is True, held
    stopped = central.wait_for(state_is("intercepted"), 15)[-1].json
    assert stopped["signal"] == "intercept"
    assert "buyer changed the address" in str(stopped["intercept"])
    wait_until(lambda: (3, True) in bench.light.switched(), 5, "the red light and buzzer")
    report = central.wait_for(lambda m: m.topic == f"{PREFIX}/events/pack.intercept", 15)[0]
    assert "SO-1" in str(report.json["data"])
    bench.scanner.scan("6901234567892")  # nothing but set-aside is taken
    bench.scanner.scan("CTL-ASIDE")
    central.wait_for(state_is("idle"), 15)
    evidence = result_of(central, "SO-1")
    assert evidence["verdict"] == "abandoned" and "intercept" in str(evidence["reason"])
    assert bench.label.jobs == []
    assert agent.stop() == 0


def test_an_order_the_bench_lacks_is_asked_of_the_central_system(
        broker: Broker, central: CentralSystem, agent_factory: Callable[..., AgentProcess],
        bench: Bench) -> None:
    agent = start(broker, central, agent_factory, bench)
    other = {**order(), "order_id": "SO-2", "waybills": ["SF200"], "print_jobs": []}
    central.serve_orders({"SO-2": [other]})
    bench.scanner.scan("EMP-7")
    bench.scanner.scan("NOPE-1")
    refused = central.wait_for(lambda m: state_is("idle")(m)
                               and "NOPE-1" in str(m.json["last_rejection"]), 20)[-1].json
    assert "unknown" in str(refused["last_rejection"]).lower()
    bench.scanner.scan("SO-2")
    packing = central.wait_for(state_is("packing"), 20)[-1].json
    assert packing["order_ids"] == ["SO-2"]
    assert agent.stop() == 0


def test_labels_asked_of_the_central_system_once_the_weight_is_known(
        broker: Broker, central: CentralSystem, agent_factory: Callable[..., AgentProcess],
        bench: Bench) -> None:
    """An order without print jobs: the bench sends the real weight, the central system
    answers with the carrier's waybill (priced by that weight) and the bench prints it."""
    agent = start(broker, central, agent_factory, bench)
    bare = {**order(), "order_id": "SO-3", "waybills": [], "print_jobs": []}
    assert central.request(SITE, BENCH, "order.push", {"orders": [bare]})["ok"]
    bench.scanner.scan("EMP-7")
    central.wait_for(state_is("idle"), 15)
    bench.scanner.scan("SO-3")
    central.wait_for(state_is("packing"), 15)
    for _ in range(2):
        bench.scanner.scan("6901234567892")
    central.wait_for(state_is("weighing"), 15)
    bench.scale.set_weight(1004.0)
    asked = central.wait_for(lambda m: m.topic == f"{PREFIX}/events/pack.labels_request",
                             20)[0].json["data"]
    assert asked == {"order_ids": ["SO-3"], "weight_g": pytest.approx(1004.0)}
    waybill = b"^XA^FO40,40^BCN,120,Y^FDYT300^FS^XZ"
    answer = central.request(SITE, BENCH, "pack.labels", {
        "order_ids": ["SO-3"], "waybill": "YT300",
        "jobs": [{"role": "label", "document": {
            "format": "zpl", "data": base64.b64encode(waybill).decode()}}]})
    assert answer["ok"] is True, answer
    central.wait_for(state_is("verify_label"), 20)
    assert bench.label.jobs == [waybill]
    bench.scanner.scan("YT300")
    evidence = result_of(central, "SO-3")
    assert evidence["verdict"] == "pass" and evidence["waybill"] == "YT300"
    assert evidence["waybill_verified"] is True
    assert agent.stop() == 0
