"""The packing job's cases end to end: missing and extra items, merged orders, serials, the
wrong label, broker outages, intercepts and returns, on the simulated bench of
``tests.test_pack_bench`` (scanner and scale on ptys, printers on TCP, a camera on files,
mosquitto, the central double, the agent as a subprocess).

Every step scans, then waits for the retained ``{prefix}/state`` message that shows its
effect before the next scan (a scan during ``looking_up`` is refused by design).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from simulators.broker import Broker
from simulators.central import CentralSystem, Received
from tests.harness import AgentProcess, wait_until
from tests.test_pack_bench import (
    BENCH,
    PREFIX,
    RESULT_SCHEMA,
    SITE,
    WAYBILL_ZPL,
    Bench,
    open_parcel,
    order,
    result_of,
    start,
)

STATE = f"{PREFIX}/state"
RESULT = f"{PREFIX}/events/pack.result"
GS = "\x1d"
PEACH = "6901234567892"  # the 2-unit line of order() SO-1, 500 g each
View = dict[str, Any]


# ---------------------------------------------------------------- helpers


def make_order(order_id: str, waybill: str | None, lines: list[dict[str, Any]], *,
               labels: bool = True, **extra: Any) -> dict[str, Any]:
    """An order with order()'s waybill and slip jobs (or none with ``labels=False``)."""
    body: dict[str, Any] = {"order_id": order_id, "waybills": [waybill] if waybill else [],
                            "lines": lines, **extra}
    if labels:
        body["print_jobs"] = order()["print_jobs"]
    return body


def line(sku: str, barcode: str, quantity: int, grams: float, **extra: Any) -> dict[str, Any]:
    return {"sku": sku, "name": sku.title(), "barcodes": [barcode], "quantity": quantity,
            "unit_weight_g": grams, **extra}


def push(central: CentralSystem, *orders: dict[str, Any]) -> None:
    pushed = central.request(SITE, BENCH, "order.push", {"orders": list(orders)})
    assert pushed["ok"] is True, pushed
    assert all(o["ok"] for o in pushed["result"]["orders"]), pushed


def state_after(central: CentralSystem, t0: float, until: Callable[[View], bool],
                timeout_s: float = 10.0) -> View:
    """The first state message received after ``t0`` (monotonic) that satisfies ``until``."""
    def match(m: Received) -> bool:
        return m.at >= t0 and m.topic == STATE and until(m.json)
    found: View = central.wait_for(match, timeout_s)[0].json
    return found


def scan(central: CentralSystem, bench: Bench, data: str, until: Callable[[View], bool], *,
         aim: str | None = None) -> View:
    """Scan ``data`` and return the state that shows its effect."""
    t0 = time.monotonic()
    bench.scanner.scan(data, aim=aim)
    return state_after(central, t0, until)


def in_state(name: str, **fields: Any) -> Callable[[View], bool]:
    return lambda s: s["state"] == name and all(s[k] == v for k, v in fields.items())


def scanned(name: str, counts: list[int]) -> Callable[[View], bool]:
    return lambda s: s["state"] == name and [p["scanned"] for p in s["lines"]] == counts


def rejected(code: str, before: View) -> Callable[[View], bool]:
    """A new refusal with ``code`` (not the one shown in ``before``)."""
    return lambda s: (s["last_rejection"] is not None and s["last_rejection"]["code"] == code
                      and s["last_rejection"] != before["last_rejection"])


def results(central: CentralSystem) -> list[View]:
    return [m.json["data"] for m in central.matching(lambda m: m.topic == RESULT)]


def order_view(central: CentralSystem, order_id: str) -> View:
    got = central.request(SITE, BENCH, "order.get", {"order_id": order_id})
    assert got["ok"] is True, got
    [record] = [r for r in got["result"]["orders"] if r["order_id"] == order_id]
    view: View = record
    return view


def outcomes(evidence: View) -> list[tuple[str, str | None]]:
    return [(s["outcome"], s.get("code")) for s in evidence["scans"]]


def log_count(agent: AgentProcess, text: str) -> int:
    return agent.output().count(text)


def wait_log(agent: AgentProcess, text: str, count: int, timeout_s: float = 10.0) -> None:
    wait_until(lambda: log_count(agent, text) >= count, timeout_s,
               what=f"{count} x {text!r} in the agent log")


def weigh_and_label(central: CentralSystem, bench: Bench, grams: float) -> View:
    """Put the parcel on the scale; return the state once the waybill is printed."""
    t0 = time.monotonic()
    bench.scale.set_weight(grams)
    return state_after(central, t0, in_state("verify_label"), 20)


# ---------------------------------------------------------------- cases


def test_missing_item_cancelled_by_the_packer_is_abandoned_and_lists_what_is_missing(
        broker: Broker, central: CentralSystem, agent_factory: Callable[..., AgentProcess],
        bench: Bench) -> None:
    agent = start(broker, central, agent_factory, bench)
    open_parcel(central, bench)
    one = scan(central, bench, PEACH, scanned("packing", [1]))
    assert one["signal"] == "good" and one["order_ids"] == ["SO-1"]
    assert one["message"].startswith("Peaches, box of 12: 1 of 2")
    bench.scale.set_weight(500.0)  # half the parcel on the scale: not weighed while packing
    time.sleep(0.5)
    idle = scan(central, bench, "CTL-CANCEL", in_state("idle"))
    assert idle["order_ids"] == [] and idle["lines"] == [] and idle["verdict"] is None
    assert "SO-1 abandoned: cancelled by the packer while packing" in idle["message"]
    evidence = result_of(central, "SO-1")
    assert evidence["kind"] == "pack" and evidence["verdict"] == "abandoned"
    assert evidence["reason"] == "cancelled by the packer while packing"
    assert evidence["missing"] == [{"order_id": "SO-1", "sku": "PEACH-12",
                                    "name": "Peaches, box of 12", "missing": 1}]
    [line_] = evidence["orders"][0]["lines"]
    assert (line_["expected"], line_["packed"]) == (2, 1)
    assert evidence["orders"][0]["packed_units"] == 1
    assert evidence["stable_weight_g"] is None and evidence["weights"] == []
    assert evidence["waybill"] is None and evidence["print_jobs"] == []
    assert outcomes(evidence) == [("accepted", None), ("control", None)]
    assert evidence["packer"] == "EMP-7" and evidence["opened_by"] == "SO-1"
    assert bench.label.jobs == []
    assert order_view(central, "SO-1")["state"] == "open", "an abandoned order stays to pack"
    assert len(results(central)) == 1
    assert agent.stop() == 0


def test_a_third_unit_of_a_two_unit_line_is_refused_with_the_reason_and_not_counted(
        broker: Broker, central: CentralSystem, agent_factory: Callable[..., AgentProcess],
        bench: Bench) -> None:
    agent = start(broker, central, agent_factory, bench)
    push(central, make_order("SO-Q", "SFQ", [line("MUG", "MUG-1", 2, 300.0),
                                             line("CARD", "CARD-1", 1, 20.0)]))
    bench.scanner.scan("EMP-7")
    central.wait_for(lambda m: m.topic == STATE and m.json["state"] == "idle", 15)
    scan(central, bench, "SO-Q", in_state("packing"))
    scan(central, bench, "MUG-1", scanned("packing", [1, 0]))
    two = scan(central, bench, "MUG-1", scanned("packing", [2, 0]))
    third = scan(central, bench, "MUG-1", rejected("over_quantity", two))
    assert third["state"] == "packing" and third["signal"] == "bad"
    assert third["last_rejection"]["reason"] == "already 2 of 2 Mug"
    assert [p["scanned"] for p in third["lines"]] == [2, 0]
    assert third["message"].startswith("already 2 of 2 Mug")
    scan(central, bench, "CARD-1", in_state("weighing"))
    extra = scan(central, bench, "MUG-1", lambda s: s["last_rejection"] is not None
                 and s["last_rejection"]["code"] == "over_quantity")
    assert extra["state"] == "weighing" and [p["scanned"] for p in extra["lines"]] == [2, 1]
    weigh_and_label(central, bench, 630.0)  # 620 g +/- 31 g
    scan(central, bench, "SFQ", in_state("idle"))
    evidence = result_of(central, "SO-Q")
    assert evidence["verdict"] == "pass" and evidence["waybill"] == "SFQ"
    assert [(p["sku"], p["expected"], p["packed"]) for p in evidence["orders"][0]["lines"]] == [
        ("MUG", 2, 2), ("CARD", 1, 1)]
    assert outcomes(evidence) == [("accepted", None), ("accepted", None),
                                  ("rejected", "over_quantity"), ("accepted", None),
                                  ("rejected", "over_quantity"), ("waybill", None)]
    refusal = evidence["scans"][2]
    assert refusal["data"] == "MUG-1" and refusal["reason"] == "already 2 of 2 Mug"
    assert evidence["expected_weight_g"] == pytest.approx(620.0)
    assert evidence["stable_weight_g"] == pytest.approx(630.0)
    # The central system changes an order while it is being packed: the parcel stops.
    push(central, make_order("SO-R", "SFR", [line("MUG", "MUG-1", 1, 300.0)]))
    scan(central, bench, "SO-R", in_state("packing"))
    t0 = time.monotonic()
    push(central, make_order("SO-R", "SFR", [line("MUG", "MUG-1", 2, 300.0)]))
    stopped = state_after(central, t0, in_state("idle"))
    assert stopped["last_rejection"]["code"] == "order_changed"
    assert "scan the order again" in stopped["message"]
    assert result_of(central, "SO-R")["verdict"] == "abandoned"
    reopened = scan(central, bench, "SO-R", in_state("packing"))
    assert [p["expected"] for p in reopened["lines"]] == [2]
    assert agent.stop() == 0


def test_merged_orders_open_together_from_either_code_and_report_one_result(
        broker: Broker, central: CentralSystem, agent_factory: Callable[..., AgentProcess],
        bench: Bench) -> None:
    agent = start(broker, central, agent_factory, bench)
    push(central,
         make_order("SO-M1", "SFM1", [line("TEA", "TEA-1", 1, 250.0)], merge_id="BUYER-9"),
         make_order("SO-M2", None, [line("CUP", "CUP-1", 2, 150.0)], labels=False,
                    merge_id="BUYER-9", packaging=[{"code": "BOX-M", "name": "carton M",
                                                    "tare_g": 100}]))
    merged = central.request(SITE, BENCH, "order.get", {"code": "SO-M1"})["result"]
    assert sorted(merged["order_ids"]) == ["SO-M1", "SO-M2"]
    bench.scanner.scan("EMP-7")
    central.wait_for(lambda m: m.topic == STATE and m.json["state"] == "idle", 15)
    opened = scan(central, bench, "SO-M2", in_state("packing"))  # the second one's code
    assert sorted(opened["order_ids"]) == ["SO-M1", "SO-M2"]
    assert sorted((p["order_id"], p["sku"], p["expected"], p["scanned"])
                  for p in opened["lines"]) == [("SO-M1", "TEA", 1, 0), ("SO-M2", "CUP", 2, 0)]
    assert opened["expected_weight_g"] == pytest.approx(550.0)
    scan(central, bench, "CUP-1", lambda s: sum(p["scanned"] for p in s["lines"]) == 1)
    scan(central, bench, "TEA-1", lambda s: sum(p["scanned"] for p in s["lines"]) == 2)
    packed = scan(central, bench, "CUP-1", lambda s: sum(p["scanned"] for p in s["lines"]) == 3)
    assert packed["state"] == "packing" and "scan the box" in packed["message"]
    boxed = scan(central, bench, "BOX-M", in_state("weighing"))
    assert boxed["box"] == {"code": "BOX-M", "name": "carton M", "tare_g": 100.0}
    assert boxed["expected_weight_g"] == pytest.approx(650.0)
    weigh_and_label(central, bench, 655.0)
    assert bench.label.jobs == [WAYBILL_ZPL], "SO-M1's waybill, once for the merged parcel"
    scan(central, bench, "SFM1", in_state("idle"))
    evidence = result_of(central, "SO-M1")
    assert evidence["verdict"] == "pass" and evidence["waybill"] == "SFM1"
    assert sorted(evidence["order_ids"]) == ["SO-M1", "SO-M2"]
    assert evidence["opened_by"] == "SO-M2"
    per_order = {o["order_id"]: o for o in evidence["orders"]}
    assert {k: (o["merge_id"], o["expected_units"], o["packed_units"])
            for k, o in per_order.items()} == {"SO-M1": ("BUYER-9", 1, 1),
                                               "SO-M2": ("BUYER-9", 2, 2)}
    assert [p["sku"] for p in per_order["SO-M2"]["lines"]] == ["CUP"]
    assert evidence["box"] == {"code": "BOX-M", "name": "carton M", "tare_g": 100.0}
    assert [j["job_id"] for j in evidence["print_jobs"]] == ["SO-M1-waybill",
                                                             "SO-M1-packing_slip"]
    for order_id in ("SO-M1", "SO-M2"):
        record = order_view(central, order_id)
        assert record["state"] == "packed" and record["waybill"] == "SFM1"
        assert record["evidence_id"] == evidence["evidence_id"]
    time.sleep(0.3)
    assert len(results(central)) == 1, "one pack.result for the merged parcel"
    assert agent.stop() == 0


def test_serials_from_a_gs1_scan_and_from_a_separate_scan_duplicates_refused(
        broker: Broker, central: CentralSystem, agent_factory: Callable[..., AgentProcess],
        bench: Bench) -> None:
    agent = start(broker, central, agent_factory, bench)
    push(central, make_order("SO-S", "SFS", [line("PHONE", "09506000134352", 2, 200.0,
                                                  serial_required=True)]))
    bench.scanner.scan("EMP-7")
    central.wait_for(lambda m: m.topic == STATE and m.json["state"] == "idle", 15)
    opened = scan(central, bench, "SO-S", in_state("packing"))
    assert opened["lines"][0]["serials"] == []
    gs1 = f"0109506000134352" f"10LOT-7{GS}" "21SN0042"  # GTIN, batch, serial
    first = scan(central, bench, gs1, scanned("packing", [1]), aim="]C1")
    assert first["lines"][0]["serials"] == ["SN0042"] and first["signal"] == "good"
    again = scan(central, bench, gs1, rejected("duplicate_serial", first), aim="]C1")
    assert again["last_rejection"]["reason"] == ("duplicate serial SN0042: already captured "
                                                 "in this parcel")
    assert again["lines"][0]["scanned"] == 1
    waiting = scan(central, bench, "9506000134352", lambda s: s["awaiting"] == "serial")
    assert waiting["message"] == "Phone scanned. Scan the serial number of Phone"
    assert waiting["lines"][0]["scanned"] == 1
    dup = scan(central, bench, "SN0042", rejected("duplicate_serial", waiting))
    assert dup["awaiting"] == "serial" and dup["lines"][0]["scanned"] == 1
    done = scan(central, bench, "SN0043", in_state("weighing"))
    assert done["lines"][0]["serials"] == ["SN0042", "SN0043"] and done["awaiting"] is None
    weigh_and_label(central, bench, 405.0)
    scan(central, bench, "SFS", in_state("idle"))
    evidence = result_of(central, "SO-S")
    assert evidence["verdict"] == "pass"
    [phone] = evidence["orders"][0]["lines"]
    assert phone["serials"] == ["SN0042", "SN0043"] and phone["packed"] == 2
    assert outcomes(evidence) == [("accepted", None), ("rejected", "duplicate_serial"),
                                  ("awaiting_serial", None), ("rejected", "duplicate_serial"),
                                  ("serial", None), ("waybill", None)]
    assert evidence["scans"][0]["data"] == gs1 and evidence["scans"][0]["serial"] == "SN0042"
    assert evidence["scans"][4]["serial"] == "SN0043"
    assert agent.stop() == 0


def test_a_wrong_label_scanned_back_is_refused_and_the_right_one_completes(
        broker: Broker, central: CentralSystem, agent_factory: Callable[..., AgentProcess],
        bench: Bench) -> None:
    agent = start(broker, central, agent_factory, bench)
    open_parcel(central, bench)
    scan(central, bench, PEACH, scanned("packing", [1]))
    scan(central, bench, PEACH, in_state("weighing"))
    verify = weigh_and_label(central, bench, 990.0)
    assert verify["message"].endswith("Stick the waybill label on the box and scan it")
    wrong = scan(central, bench, "YT9999999", rejected("wrong_label", verify))
    assert wrong["state"] == "verify_label" and wrong["signal"] == "bad"
    assert wrong["last_rejection"]["reason"] == ("wrong label: this box is for SF100, the "
                                                 "label says YT9999999")
    assert results(central) == [], "a wrong label completes nothing"
    idle = scan(central, bench, "SF100", in_state("idle"))
    assert idle["last_parcel"]["order_ids"] == ["SO-1"]
    assert idle["last_parcel"]["verdict"] == "pass"
    assert idle["last_parcel"]["waybill"] == "SF100"
    evidence = result_of(central, "SO-1")
    assert evidence["waybill"] == "SF100" and evidence["waybill_verified"] is True
    assert outcomes(evidence)[-2:] == [("rejected", "wrong_label"), ("waybill", None)]
    assert evidence["scans"][-2]["data"] == "YT9999999"
    assert bench.label.jobs == [WAYBILL_ZPL], "no reprint for a wrong scan"
    assert agent.stop() == 0


def test_with_the_broker_down_a_cached_order_is_packed_and_reported_once_it_is_back(
        broker: Broker, central: CentralSystem, central_factory: Callable[..., CentralSystem],
        agent_factory: Callable[..., AgentProcess], bench: Bench) -> None:
    # A persistent session: the broker keeps the result for this subscriber across its
    # restart, whichever of the agent and this client reconnects first.
    oms = central_factory(broker, client_id="central-persistent", session_expiry_s=600)
    oms.subscribe(f"{PREFIX}/events/#")
    oms.subscribe(STATE)
    agent = start(broker, central, agent_factory, bench)  # SO-1 pushed: in the order book
    bench.scanner.scan("EMP-7")
    central.wait_for(lambda m: m.topic == STATE and m.json["state"] == "idle", 15)
    broker.stop()
    wait_log(agent, "disconnected from broker", 1)
    goods = log_count(agent, "signal: good")
    bench.scanner.scan("SO-1")
    time.sleep(0.5)  # the lookup is local and takes milliseconds; nothing to watch offline
    for n in (1, 2):
        bench.scanner.scan(PEACH)
        wait_log(agent, "signal: good", goods + n)
    bench.scale.set_weight(1005.0)
    assert bench.label.wait_for(lambda: len(bench.label.jobs) == 1, 20), "label printed offline"
    wait_log(agent, "SO-1-waybill on label: printing -> printed", 1)  # the bench confirmed it
    time.sleep(0.2)
    bench.scanner.scan("SF100")
    wait_log(agent, "parcel ", 1)  # "parcel <id>: pass (orders SO-1, waybill SF100)"
    assert "pass (orders SO-1, waybill SF100)" in agent.output()
    assert not oms.matching(lambda m: m.topic == RESULT)
    broker.start()
    oms.connect()
    evidence = oms.wait_for(lambda m: m.topic == RESULT, 30)[0].json
    assert evidence["replayed"] is True, "stored while the broker was down"
    data = evidence["data"]
    assert data["verdict"] == "pass" and data["order_ids"] == ["SO-1"]
    assert data["waybill"] == "SF100" and data["waybill_verified"] is True
    assert data["stable_weight_g"] == pytest.approx(1005.0)
    assert outcomes(data) == [("accepted", None), ("accepted", None), ("waybill", None)]
    back = oms.wait_for(lambda m: m.topic == STATE and m.json["last_parcel"] is not None, 20)
    assert back[-1].json["state"] == "idle"
    assert back[-1].json["last_parcel"]["waybill"] == "SF100"
    record = order_view(oms, "SO-1")
    assert record["state"] == "packed" and record["evidence_id"] == data["evidence_id"]
    assert agent.stop() == 0


def test_with_the_broker_down_an_order_not_cached_shows_central_unreachable(
        broker: Broker, central: CentralSystem, agent_factory: Callable[..., AgentProcess],
        bench: Bench) -> None:
    agent = start(broker, central, agent_factory, bench)
    bench.scanner.scan("EMP-7")
    central.wait_for(lambda m: m.topic == STATE and m.json["state"] == "idle", 15)
    broker.stop()
    wait_log(agent, "disconnected from broker", 1)
    bench.scanner.scan("SO-404")
    wait_log(agent, "signal: bad", 1)
    t0 = time.monotonic()
    broker.start()
    central.connect()
    shown = state_after(central, t0, lambda s: s["last_rejection"] is not None, 30)
    assert shown["state"] == "idle" and shown["order_ids"] == []
    refusal = shown["last_rejection"]
    assert refusal["code"] == "central_unreachable"
    assert refusal["reason"].startswith("central system unreachable: cannot ask the central "
                                        "system for SO-404: the bench has not been connected "
                                        "to the broker since ")
    assert shown["message"].startswith(refusal["reason"])
    assert not central.matching(lambda m: m.topic.endswith("/events/order.request")), (
        "nothing is asked while the link is down")
    assert results(central) == [], "no parcel opened"
    assert agent.stop() == 0


def test_an_order_held_before_packing_is_intercepted_at_once_when_scanned(
        broker: Broker, central: CentralSystem, agent_factory: Callable[..., AgentProcess],
        bench: Bench) -> None:
    agent = start(broker, central, agent_factory, bench)
    held = central.request(SITE, BENCH, "order.hold",
                           {"order_id": "SO-1", "reason": "address change"})
    assert held["ok"] is True, held
    bench.scanner.scan("EMP-7")
    central.wait_for(lambda m: m.topic == STATE and m.json["state"] == "idle", 15)
    t0 = time.monotonic()
    stopped = scan(central, bench, "SO-1", in_state("intercepted"))
    assert not central.matching(lambda m: m.at >= t0 and m.topic == STATE
                                and m.json["state"] == "packing"), "never opened for packing"
    assert stopped["signal"] == "intercept" and stopped["verdict"] == "intercepted"
    assert stopped["message"].startswith("order SO-1 is held: address change. STOP")
    assert stopped["intercept"]["stage"] == "looking_up"
    report = central.wait_for(lambda m: m.topic == f"{PREFIX}/events/pack.intercept", 15)
    record = report[0].json["data"]
    assert {k: record[k] for k in ("order_id", "order_ids", "state", "reason", "packer",
                                   "code", "stage", "scanned_units")} == {
        "order_id": "SO-1", "order_ids": ["SO-1"], "state": "held",
        "reason": "address change", "packer": "EMP-7", "code": "SO-1",
        "stage": "looking_up", "scanned_units": 0}
    refused = scan(central, bench, PEACH, rejected("intercepted", stopped))
    assert refused["state"] == "intercepted" and refused["lines"][0]["scanned"] == 0
    scan(central, bench, "CTL-ASIDE", in_state("idle"))
    evidence = result_of(central, "SO-1")
    assert evidence["verdict"] == "abandoned"
    assert evidence["reason"] == "intercepted: order SO-1 is held; set aside"
    assert evidence["missing"] == [{"order_id": "SO-1", "sku": "PEACH-12",
                                    "name": "Peaches, box of 12", "missing": 2}]
    assert outcomes(evidence) == [("rejected", "intercepted"), ("control", None)]
    assert bench.label.jobs == [] and order_view(central, "SO-1")["state"] == "held"
    assert agent.stop() == 0


def test_a_return_is_matched_by_waybill_scanned_classified_weighed_and_reported(
        broker: Broker, central: CentralSystem, agent_factory: Callable[..., AgentProcess],
        bench: Bench, tmp_path: Path) -> None:
    agent = start(broker, central, agent_factory, bench)
    open_parcel(central, bench)
    scan(central, bench, PEACH, scanned("packing", [1]))
    scan(central, bench, PEACH, in_state("weighing"))
    weigh_and_label(central, bench, 1000.0)
    scan(central, bench, "SF100", in_state("idle"))
    packed = result_of(central, "SO-1")
    bench.scale.set_weight(0.0)
    returns = scan(central, bench, "CTL-RETURNS", in_state("returns"))
    assert returns["mode"] == "returns"
    assert returns["message"].startswith("Returns: scan the returned parcel's waybill")
    checking = scan(central, bench, "SF100", in_state("returns_checking"))
    assert checking["order_ids"] == ["SO-1"]
    unit = scan(central, bench, PEACH, lambda s: s["awaiting"] == "classification")
    assert unit["message"].startswith("Peaches, box of 12 came back: scan resellable, "
                                      "damaged or wrong item")
    classified = scan(central, bench, "CTL-DAMAGED", lambda s: s["awaiting"] is None)
    assert classified["returns"][0]["damaged"] == 1
    t0 = time.monotonic()
    bench.scale.set_weight(520.0)
    state_after(central, t0, lambda s: s["stable_weight_g"] == 520.0, 20)
    # The photo is taken at the first settled weight: let it land before closing the return.
    wait_until(lambda: list(tmp_path.glob("state/photos/**/*returned*")), 10, "the photo")
    time.sleep(0.2)
    done = scan(central, bench, "CTL-DONE", lambda s: s["last_parcel"] is not None
                and s["last_parcel"]["verdict"] == "returned")
    assert done["state"] == "returns" and done["mode"] == "returns"
    central.wait_for(lambda m: m.topic == RESULT, 20, count=2)
    back = results(central)[-1]
    jsonschema.validate(back, RESULT_SCHEMA)
    assert back["kind"] == "return" and back["verdict"] == "returned"
    assert back["order_ids"] == ["SO-1"] and back["waybill"] == "SF100"
    assert back["evidence_id"] != packed["evidence_id"]
    assert back["items"] == [{"order_id": "SO-1", "sku": "PEACH-12",
                              "name": "Peaches, box of 12", "shipped": 2, "resellable": 0,
                              "damaged": 1, "wrong_item": 0, "missing": 1}]
    assert [(u["barcode"], u["sku"], u["condition"]) for u in back["units"]] == [
        (PEACH, "PEACH-12", "damaged")]
    assert back["returned_weight_g"] == pytest.approx(520.0)
    assert [p["moment"] for p in back["photos"]] == ["returned"]
    assert back["photos"][0]["path"]
    assert outcomes(back) == [("returned", None), ("classified", None), ("control", None)]
    assert order_view(central, "SO-1")["state"] == "packed", "a return changes no order"
    found = central.request(SITE, BENCH, "evidence.find", {"key": "SF100"})["result"]
    assert [r["evidence_id"] for r in found["records"]] == [back["evidence_id"],
                                                            packed["evidence_id"]]
    scan(central, bench, "CTL-RETURNS", in_state("idle", mode="pack"))
    assert agent.stop() == 0


def test_item_scans_in_quick_succession_are_each_shown_at_once(
        broker: Broker, central: CentralSystem, agent_factory: Callable[..., AgentProcess],
        bench: Bench) -> None:
    """The 0.2 s limit on state messages is for the live weight alone: a packer scanning a
    row of items sees each one counted in milliseconds, not 0.2 s after the previous."""
    agent = start(broker, central, agent_factory, bench)
    push(central, make_order("SO-R", "SFR", [line("PEN", "PEN-1", 20, 10.0)]))
    bench.scanner.scan("EMP-7")
    central.wait_for(lambda m: m.topic == STATE and m.json["state"] == "idle", 15)
    scan(central, bench, "SO-R", in_state("packing"))
    delays_s = []
    for n in range(1, 8):
        t0 = time.monotonic()
        bench.scanner.scan("PEN-1")
        counted = central.wait_for(lambda m, t0=t0, n=n: m.at >= t0 and m.topic == STATE
                                   and m.json["lines"][0]["scanned"] == n, 10)[0]
        delays_s.append(counted.at - t0)
    # Each scan follows the previous state at once: the median shows the publisher's hold.
    assert sorted(delays_s)[len(delays_s) // 2] < 0.1, delays_s
    assert agent.stop() == 0
