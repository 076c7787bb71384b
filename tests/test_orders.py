"""The order book end to end: central system -> MQTT -> agent -> SQLite, and back.

Every end-to-end test runs the real agent as a subprocess against mosquitto. The packing
job's in-process API (``OrderBook.request``, ``mark_packed``) has no MQTT command, so the
agent here runs with a test-only driver: this module, run as
``python -m tests.test_orders CONFIG PORT``, starts the daemon plus a service that takes
one JSON line per TCP connection on 127.0.0.1:PORT (``{"op": "request", "code": ...,
"timeout_s": ...}`` or ``{"op": "mark_packed", "order_ids": [...], "waybill": ...,
"evidence_id": ...}``) and answers one JSON line (``{"ok": true, "result": ...}`` or
``{"ok": false, "error": {"code", "message"}}``). The last tests drive the book in
process against a real store.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from agent.config import OrdersConfig
from agent.errors import AgentError
from agent.jobs import order_store
from agent.jobs.order_book import OrderBook, OrderError
from agent.jobs.orders import ORDER_SCHEMA, Order
from agent.outbox import Outbox
from agent.store import Store
from simulators.broker import Broker, free_port
from simulators.central import CentralSystem
from simulators.pki import Pki
from tests.harness import ROOT, AgentProcess, bench_config, write_toml

SITE, BENCH = "sh01", "b07"
STATE_SCHEMA = json.loads(resources.files("agent.schemas").joinpath("order_state.json")
                          .read_text())


def order(order_id: str, **fields: Any) -> dict[str, Any]:
    """A valid order: two lines (a phone case and a gift sticker) and one box."""
    body: dict[str, Any] = {
        "order_id": order_id,
        "waybills": [f"SF{order_id}"],
        "pick_codes": [f"PL-{order_id}"],
        "lines": [
            {"sku": "CASE-BLK-M", "name": "手机壳 黑色 M", "barcodes": ["6901234567892", "CB-M"],
             "quantity": 2, "unit_weight_g": 48.5},
            {"sku": "STICKER", "barcodes": ["6909876543210"], "quantity": 1,
             "unit_weight_g": 3, "gift": True},
        ],
        "packaging": [{"code": "BOX-S", "tare_g": 35}],
        "note": "fragile",
    }
    body.update(fields)
    return body


# ---------------------------------------------------------------- the agent with a driver
@dataclass
class DrivenAgent(AgentProcess):
    """The agent plus the test-only driver of its order book (see the module docstring)."""

    driver_port: int = 0

    def start(self, *args: str) -> DrivenAgent:
        command = [sys.executable, "-m", "tests.test_orders", str(self.config),
                   str(self.driver_port)]
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(command, cwd=ROOT, stdout=log,
                                            stderr=subprocess.STDOUT,
                                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
        return self

    def drive(self, op: str, wait_s: float = 15.0, **args: Any) -> dict[str, Any]:
        deadline = time.monotonic() + wait_s
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.driver_port), 1) as sock:
                    sock.settimeout(wait_s)
                    sock.sendall(json.dumps({"op": op, **args}).encode() + b"\n")
                    answer: dict[str, Any] = json.loads(sock.makefile().readline())
                    return answer
            except ConnectionRefusedError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)


@pytest.fixture
def bench(broker: Broker, central: CentralSystem, tmp_path: Path, pki: Pki
          ) -> Iterator[Callable[..., DrivenAgent]]:
    """Start (or start again, same database) the agent; wait until it is online."""
    agents: list[DrivenAgent] = []
    port = free_port()

    def start(**orders_config: Any) -> DrivenAgent:
        started = time.monotonic()
        doc = bench_config(tmp_path, broker.port, pki.ca,
                           jobs={"orders": {"lookup_timeout_s": 3.0, **orders_config}})
        config = write_toml(tmp_path / "agent.toml", doc)
        agent = DrivenAgent(config, tmp_path / "agent.log", driver_port=port).start()
        agents.append(agent)
        central.wait_for(lambda m: m.topic.endswith("/status") and m.json["state"] == "online"
                         and m.at > started, 15)
        return agent

    yield start
    for agent in agents:
        if agent.process is not None and agent.process.poll() is None:
            agent.process.kill()
            agent.process.wait(10)


def call(central: CentralSystem, name: str, args: dict[str, Any]) -> dict[str, Any]:
    return central.request(SITE, BENCH, name, args, timeout_s=15)


def push(central: CentralSystem, *orders: dict[str, Any]) -> dict[str, Any]:
    return call(central, "order.push", {"orders": list(orders)})


def result(reply: dict[str, Any]) -> dict[str, Any]:
    assert reply["ok"] is True, reply
    data: dict[str, Any] = reply["result"]
    return data


def error(reply: dict[str, Any]) -> dict[str, Any]:
    assert reply["ok"] is False, reply
    data: dict[str, Any] = reply["error"]
    return data


def states_of(parcel: dict[str, Any]) -> dict[str, tuple[str, str | None]]:
    return {o["order_id"]: (o["state"], o["reason"]) for o in parcel["orders"]}


def order_states(central: CentralSystem, order_id: str) -> list[dict[str, Any]]:
    """The ``order_state`` events of ``order_id``, duplicates folded, each schema-checked."""
    seen: dict[str, dict[str, Any]] = {}
    for message in central.matching(lambda m: m.topic.endswith("/events/order_state")):
        if message.json["data"]["order_id"] == order_id:
            seen.setdefault(message.json["id"], message.json["data"])
    for data in seen.values():
        jsonschema.validate(data, STATE_SCHEMA)
    return list(seen.values())


def wait_order_states(central: CentralSystem, order_id: str, count: int
                      ) -> list[dict[str, Any]]:
    central.wait_for(lambda m: m.topic.endswith("/events/order_state")
                     and m.json["data"]["order_id"] == order_id, 10, count)
    return order_states(central, order_id)


# ---------------------------------------------------------------- orders in, orders found
def test_a_pushed_order_is_found_by_its_order_id_waybill_and_pick_code(
        central: CentralSystem, bench: Callable[..., DrivenAgent]) -> None:
    bench()
    pushed = result(push(central, order("A1"), order("A2", waybills=[], pick_codes=[])))
    assert pushed == {"orders": [
        {"order_id": "A1", "ok": True, "state": "open", "reason": None},
        {"order_id": "A2", "ok": True, "state": "open", "reason": None}]}
    for args in ({"order_id": "A1"}, {"code": "A1"}, {"code": "SFA1"}, {"code": "PL-A1"}):
        parcel = result(call(central, "order.get", args))
        assert parcel["order_ids"] == ["A1"] and parcel["intercepted"] is False, args
        got = parcel["orders"][0]
        assert (got["state"], got["known"], got["merge_id"]) == ("open", True, None)
        assert got["order"]["lines"][0]["name"] == "手机壳 黑色 M"
        assert Order.model_validate(got["order"]) == Order.model_validate(order("A1"))
    missing = error(call(central, "order.get", {"code": "6901234567892"}))
    assert missing["code"] == "unknown_order"
    assert "no order, waybill or pick code 6901234567892 on this bench" in missing["message"]
    assert "jobs.orders.retention_s = 2592000 s" in missing["message"]


def test_merged_orders_are_one_parcel_found_by_any_of_their_codes(
        central: CentralSystem, bench: Callable[..., DrivenAgent]) -> None:
    bench()
    result(push(central, order("M1", merge_id="BUYER-7"), order("M2", merge_id="BUYER-7"),
                order("LONE")))
    for code in ("M1", "SFM2", "PL-M1"):
        parcel = result(call(central, "order.get", {"code": code}))
        assert parcel["order_ids"] == ["M1", "M2"], code
        assert parcel["merge_id"] == "BUYER-7"
    result(call(central, "order.hold", {"order_id": "M2", "reason": "address changed"}))
    parcel = result(call(central, "order.get", {"order_id": "M1"}))
    assert parcel["intercepted"] is True
    assert parcel["why"] == "order M2 is held: address changed"
    assert result(call(central, "order.get", {"code": "LONE"}))["order_ids"] == ["LONE"]


def test_a_second_push_replaces_an_open_order_and_its_codes(
        central: CentralSystem, bench: Callable[..., DrivenAgent]) -> None:
    bench()
    result(push(central, order("R1")))
    changed = order("R1", pick_codes=["TOTE-9"], note="add a gift card")
    changed["lines"][0]["quantity"] = 3
    assert result(push(central, changed))["orders"][0]["state"] == "open"
    got = result(call(central, "order.get", {"code": "TOTE-9"}))["orders"][0]["order"]
    assert got["lines"][0]["quantity"] == 3 and got["note"] == "add a gift card"
    assert error(call(central, "order.get", {"code": "PL-R1"}))["code"] == "unknown_order"


# ---------------------------------------------------------------- intercepts
def test_a_hold_before_the_order_arrives_is_kept_when_it_is_pushed(
        central: CentralSystem, bench: Callable[..., DrivenAgent]) -> None:
    bench()
    held = result(call(central, "order.hold", {"order_id": "H1", "reason": "buyer asks to "
                                                                          "change address"}))
    jsonschema.validate(held, STATE_SCHEMA)
    assert (held["state"], held["previous"], held["known"], held["changed"]) == (
        "held", None, False, True)
    assert "keeps this state when it arrives" in held["note"]
    stub = result(call(central, "order.get", {"code": "H1"}))
    assert stub["intercepted"] is True and stub["orders"][0]["order"] is None
    pushed = result(push(central, order("H1")))["orders"][0]
    assert (pushed["state"], pushed["reason"]) == ("held", "buyer asks to change address")
    parcel = result(call(central, "order.get", {"code": "SFH1"}))
    assert states_of(parcel) == {"H1": ("held", "buyer asks to change address")}
    assert parcel["orders"][0]["known"] is True
    released = result(call(central, "order.release", {"order_id": "H1"}))
    assert (released["state"], released["previous"], released["reason"]) == (
        "open", "held", None)
    events = wait_order_states(central, "H1", 2)
    assert [(e["command"], e["state"], e["known"]) for e in events] == [
        ("order.hold", "held", False), ("order.release", "open", True)]


def test_cancel_stops_an_order_a_later_hold_does_not_undo_it_and_release_reopens_it(
        central: CentralSystem, bench: Callable[..., DrivenAgent]) -> None:
    bench()
    result(push(central, order("C1")))
    cancelled = result(call(central, "order.cancel", {"order_id": "C1",
                                                      "reason": "buyer cancelled"}))
    assert (cancelled["state"], cancelled["previous"], cancelled["changed"]) == (
        "cancelled", "open", True)
    late_hold = result(call(central, "order.hold", {"order_id": "C1", "reason": "check"}))
    assert (late_hold["state"], late_hold["changed"]) == ("cancelled", False)
    assert "cancelled, which stops it already" in late_hold["note"]
    assert result(push(central, order("C1")))["orders"][0]["state"] == "cancelled"
    reopened = result(call(central, "order.release", {"order_id": "C1", "reason": "paid"}))
    assert (reopened["state"], reopened["previous"]) == ("open", "cancelled")
    events = wait_order_states(central, "C1", 3)
    assert [(e["command"], e["state"], e["changed"]) for e in events] == [
        ("order.cancel", "cancelled", True), ("order.hold", "cancelled", False),
        ("order.release", "open", True)]
    unknown = error(call(central, "order.release", {"order_id": "NOPE"}))
    assert unknown["code"] == "unknown_order"
    assert "only held or cancelled orders can be released" in unknown["message"]


def test_a_packed_order_refuses_push_hold_and_cancel_naming_when_and_which_waybill(
        central: CentralSystem, bench: Callable[..., DrivenAgent]) -> None:
    agent = bench()
    result(push(central, order("P1", merge_id="MP"), order("P2", merge_id="MP")))
    marked = agent.drive("mark_packed", order_ids=["P1", "P2"], waybill="YT0001",
                         evidence_id="ev-1")
    assert marked["ok"] is True, marked
    parcel = result(call(central, "order.get", {"code": "YT0001"}))
    assert states_of(parcel) == {"P1": ("packed", None), "P2": ("packed", None)}
    assert parcel["orders"][0]["waybill"] == "YT0001"
    assert parcel["orders"][0]["evidence_id"] == "ev-1"
    refused = result(push(central, order("P1"), order("P3")))["orders"]
    assert refused[0]["ok"] is False and refused[0]["state"] == "packed"
    assert refused[0]["error"]["code"] == "already_packed"
    assert refused[1] == {"order_id": "P3", "ok": True, "state": "open", "reason": None}
    for name in ("order.hold", "order.cancel"):
        late = error(call(central, name, {"order_id": "P2", "reason": "buyer cancelled"}))
        assert late["code"] == "already_packed"
        assert "packed at 20" in late["message"] and "under waybill YT0001" in late["message"]
        assert "only the carrier can intercept it now" in late["message"]
    again = agent.drive("mark_packed", order_ids=["P1", "P2"], waybill="YT0001",
                        evidence_id="ev-1")
    assert again["ok"] is True, "marking again with the same waybill changes nothing"
    other = agent.drive("mark_packed", order_ids=["P1"], waybill="YT0002", evidence_id="ev-2")
    assert other["error"]["code"] == "already_packed"


# ---------------------------------------------------------------- asking the central system
def test_a_lookup_asks_the_central_system_and_stores_its_answer(
        central: CentralSystem, bench: Callable[..., DrivenAgent]) -> None:
    central.serve_orders({"SFQ1": [order("Q1", merge_id="MQ"), order("Q2", merge_id="MQ")]})
    agent = bench()
    found = agent.drive("request", code="SFQ1")
    assert found["ok"] is True, found
    assert found["result"]["order_ids"] == ["Q1", "Q2"]
    request = central.wait_for(lambda m: m.topic.endswith("/events/order.request"))[0].json
    assert set(request["data"]) == {"request_id", "code"}
    assert request["data"]["code"] == "SFQ1"
    answer = central.wait_for(lambda m: m.topic.endswith("/reply")
                              and m.json["data"]["command"] == "order.answer")[0]
    assert answer.json["data"]["result"]["waiting"] is True
    assert result(call(central, "order.get", {"code": "PL-Q2"}))["order_ids"] == ["Q1", "Q2"]


def test_a_lookup_of_a_code_the_central_system_does_not_know_says_unknown_order(
        central: CentralSystem, bench: Callable[..., DrivenAgent]) -> None:
    central.serve_orders({"BAD": [order("X1", lines=[])]})
    agent = bench()
    unknown = agent.drive("request", code="NOSUCH")
    assert unknown["error"] == {"code": "unknown_order", "message": "the central system does "
                                "not know NOSUCH: no order, waybill or pick list NOSUCH in the "
                                "OMS"}
    invalid = agent.drive("request", code="BAD")
    assert invalid["error"]["code"] == "invalid_answer"
    message = invalid["error"]["message"]
    assert message.startswith("the central system's answer to order.request "), message
    assert message.endswith(" was refused: orders/0 (order X1): lines: [] should be "
                            "non-empty"), message


def test_a_lookup_times_out_and_the_late_answer_is_stored(
        central: CentralSystem, bench: Callable[..., DrivenAgent]) -> None:
    central.serve_orders({"SLOW": [order("S1", pick_codes=["SLOW"])]}, delay_s=1.5)
    agent = bench()
    started = time.monotonic()
    late = agent.drive("request", code="SLOW", timeout_s=0.5)
    assert 0.4 < time.monotonic() - started < 1.4
    assert late["error"]["code"] == "lookup_timeout"
    assert "the central system did not answer within 0.5 s" in late["error"]["message"]
    central.wait_for(lambda m: m.topic.endswith("/reply")
                     and m.json["data"]["command"] == "order.answer", 10)
    assert result(call(central, "order.get", {"code": "SLOW"}))["order_ids"] == ["S1"]
    central.serve_orders({}, unknown=set())  # answers nothing at all now
    silent = agent.drive("request", code="NEVER", timeout_s=0.3)
    assert silent["error"]["code"] == "lookup_timeout"


def test_a_lookup_while_the_broker_is_down_says_central_unreachable_since_when(
        broker: Broker, central: CentralSystem, bench: Callable[..., DrivenAgent]) -> None:
    agent = bench()
    broker.stop()
    stopped = time.time()
    time.sleep(0.6)  # the link notices at once (TCP closed); its watcher within 0.2 s
    down = agent.drive("request", code="SFZ9")
    assert down["error"]["code"] == "central_unreachable"
    message = down["error"]["message"]
    assert "cannot ask the central system for SFZ9" in message
    assert "last error: connection " in message, message
    since = message.split(" since ")[1].split(" ")[0]
    since_s = time.mktime(time.strptime(since[:19], "%Y-%m-%dT%H:%M:%S")) - time.timezone
    assert abs(since_s - stopped) < 2, (since, stopped)
    broker.start()


def test_invalid_orders_are_refused_naming_the_field_and_none_is_stored(
        central: CentralSystem, bench: Callable[..., DrivenAgent]) -> None:
    bench()
    twice = order("V1")
    twice["lines"][1]["sku"] = "CASE-BLK-M"
    ambiguous = order("V2")
    ambiguous["lines"][1]["barcodes"] = ["CB-M"]
    cases = {
        "duplicate sku": ([order("OK1"), twice], "orders/1 (order V1): lines: every sku "
                                                  "may appear once; add the quantities"),
        "ambiguous barcode": ([ambiguous], "orders/0 (order V2): barcode CB-M identifies "
                                           "both CASE-BLK-M and STICKER: a scan would be "
                                           "ambiguous"),
        "missing lines": ([{k: v for k, v in order("V3").items() if k != "lines"}],
                          "orders/0: 'lines' is a required property"),
        "zero quantity": ([order("V4", lines=[{"sku": "A", "barcodes": ["1"], "quantity": 0,
                                               "unit_weight_g": 1}])],
                          "orders/0/lines/0/quantity: 0 is less than the minimum of 1"),
        "same order twice": ([order("V5"), order("V5")],
                             "orders/1 (order V5): order V5 is also orders/0; send each "
                             "order once"),
    }
    for name, (orders, message) in cases.items():
        refused = error(push(central, *orders))
        assert refused["code"] == "invalid_args", name
        assert message in refused["message"], (name, refused["message"])
    assert error(call(central, "order.get", {"code": "OK1"}))["code"] == "unknown_order"
    neither = error(call(central, "order.get", {}))
    assert neither["message"] == "args of order.get: give exactly one of order_id or code " \
                                 "(got neither)"
    no_reason = error(call(central, "order.hold", {"order_id": "OK1"}))
    assert no_reason["message"] == "args of order.hold: (top level): 'reason' is a required " \
                                   "property"


def test_orders_and_intercepts_survive_an_agent_restart(
        central: CentralSystem, bench: Callable[..., DrivenAgent]) -> None:
    agent = bench()
    result(push(central, order("K1"), order("K2", merge_id="MK"), order("K3", merge_id="MK")))
    result(call(central, "order.cancel", {"order_id": "K2", "reason": "out of stock"}))
    result(call(central, "order.hold", {"order_id": "K9", "reason": "fraud check"}))
    assert agent.stop() == 0
    bench()
    assert states_of(result(call(central, "order.get", {"code": "PL-K3"}))) == {
        "K2": ("cancelled", "out of stock"), "K3": ("open", None)}
    assert result(call(central, "order.get", {"code": "SFK1"}))["order_ids"] == ["K1"]
    assert result(push(central, order("K9")))["orders"][0]["state"] == "held"


# ---------------------------------------------------------------- in process
class _Link:
    def __init__(self) -> None:
        self.connected = asyncio.Event()
        self.down_since = time.time()

    def status(self) -> dict[str, Any]:
        return {"state": "disconnected", "last_error": None}


async def _with_book(tmp: Path, body: Callable[[OrderBook, Store], Any]) -> None:
    store = Store(tmp / "agent.db")
    await store.open()
    outbox = Outbox(store, site=SITE, bench=BENCH, event_topic=lambda k: k, max_events=1000,
                    max_bytes=1 << 20)
    await outbox.load()
    try:
        await body(OrderBook(OrdersConfig(), store, outbox, _Link()), store)
    finally:
        await store.close()


def test_the_book_in_process_prunes_finds_the_open_parcel_of_a_reused_code_and_refuses(
        tmp_path: Path) -> None:
    async def body(book: OrderBook, store: Store) -> None:
        old, new, other = (Order.model_validate(order(i, pick_codes=["TOTE-1"]))
                           for i in ("T1", "T2", "T3"))
        await book.push([old])
        await book.mark_packed(["T1"], "WB-1", "ev")
        await book.push([new])
        parcel = await book.find("TOTE-1")
        assert parcel is not None and parcel.order_ids == ("T2",), "the open one wins"
        assert parcel.orders == (new,) and not parcel.intercepted
        await book.push([other])
        with pytest.raises(OrderError) as ambiguous:
            await book.find("TOTE-1")
        assert ambiguous.value.code == "ambiguous_code"
        await book.cancel("T3", "duplicate order")
        await book.hold("T2", "address")
        with pytest.raises(OrderError) as intercepted:
            await book.mark_packed(["T2"], "WB-2", "ev")
        assert intercepted.value.code == "intercepted"
        with pytest.raises(AgentError) as unreachable:
            await book.request("TOTE-1")
        assert unreachable.value.code == "central_unreachable"
        await store.run(lambda db: db.execute("UPDATE orders SET updated_at = 0 "
                                              "WHERE order_id IN ('T1', 'T3')"))
        assert await store.run(order_store.prune, time.time() - 60) == 2
        assert await book.counts() == {"open": 0, "held": 1, "cancelled": 0, "packed": 0}
        assert await book.find("WB-1") is None

    asyncio.run(_with_book(tmp_path, body))


def test_the_published_order_schema_is_the_models() -> None:
    published = json.loads(resources.files("agent.schemas").joinpath("order.json").read_text())
    published.pop("$schema"), published.pop("$id")
    assert published == json.loads(json.dumps(ORDER_SCHEMA))


# ---------------------------------------------------------------- the driver (subprocess)
class _Driver:
    """Test-only service: runs the book's in-process API on request over TCP."""

    name = "test.orders_driver"

    def __init__(self, port: int) -> None:
        self.port = port

    async def run(self, daemon: Any) -> None:
        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            ask = json.loads(await reader.readline())
            book: OrderBook = daemon.orders
            try:
                if ask["op"] == "request":
                    parcel = await book.request(ask["code"], ask.get("timeout_s"))
                    answer: dict[str, Any] = {"ok": True, "result": parcel.view()}
                else:
                    records = await book.mark_packed(ask["order_ids"], ask["waybill"],
                                                     ask["evidence_id"])
                    answer = {"ok": True, "result": [r.view() for r in records]}
            except AgentError as exc:
                answer = {"ok": False, "error": {"code": exc.code, "message": exc.message}}
            writer.write(json.dumps(answer).encode() + b"\n")
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(serve, "127.0.0.1", self.port)
        async with server:
            await server.serve_forever()


def _main() -> int:
    from agent.config import load_config
    from agent.daemon import Daemon
    from agent.logs import setup_logging

    config = load_config(sys.argv[1])
    setup_logging(config.log.level)
    return asyncio.run(Daemon(config, [_Driver(int(sys.argv[2]))]).run())


if __name__ == "__main__":
    sys.exit(_main())
