"""The fleet benchmark's other processes: the central system's consumers and commander,
and the benches' label printers.

* :func:`consumer_main`: one of the central system's event consumers, an MQTT 5 client
  in the shared subscription ``$share/central/benchagent/v1/+/+/events/#`` (persistent
  session, QoS 1). It notes each event's id, bench, seq and arrival time; nothing else.
* :func:`commander_main`: the central system's command side. It pushes every bench's
  orders ahead of its packer (``order.push``), and per bench every 30 s a ``status.get``
  and every 60 s a ``print.submit`` (a ZPL return label) to its printer; it times each
  reply (MQTT 5 Response Topic and Correlation Data) and counts the retained state and
  status messages it sees (plain subscriptions, as a dashboard would).
* :func:`printers_main`: one ZPL label printer simulator per bench (zero label time). A
  printer runs out of paper now and then (on average every 5 min, for 8 s): its bench
  reports ``device_state`` faulted and ready again, and holds a label meanwhile.
"""

from __future__ import annotations

import base64
import heapq
import json
import random
import ssl
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agent.mqtt import no_nagle, stop_network_thread
from benchmarks.fleet_bench import fleet_order, reports_failure
from benchmarks.procstat import cpu_s, rss_bytes
from simulators.printer import LabelPrinterSim

ROOT = "benchagent/v1"
EVENTS = f"$share/central/{ROOT}/+/+/events/#"
PUSH_EVERY_S = 30.0
STATUS_EVERY_S = 30.0
PRINT_EVERY_S = 60.0
PAPER_OUT_EVERY_S = 300.0
PAPER_OUT_FOR_S = 8.0


@dataclass(frozen=True)
class CentralPlan:
    broker_port: int
    ca: str
    cert: str
    key: str
    benches: list[tuple[str, str]]
    """(site, bench) of every bench."""
    rate_per_min: float
    seconds: float
    receipts: str
    """File the received event ids go to, one per line."""


def mqtt_client(plan: CentralPlan, client_id: str) -> paho.Client:
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                         protocol=paho.MQTTv5)
    context = ssl.create_default_context(cafile=plan.ca)
    context.load_cert_chain(plan.cert, plan.key)
    client.tls_set_context(context)
    client.max_inflight_messages_set(1000)
    return client


def connect(client: paho.Client, plan: CentralPlan, subscriptions: list[str]) -> None:
    """Connect with a persistent session, subscribe (QoS 1) and wait for the SUBACKs."""
    subscribed = threading.Event()
    pending = set()

    def on_subscribe(_c: Any, _u: Any, mid: int, _rc: Any, _p: Any) -> None:
        pending.discard(mid)
        if not pending:
            subscribed.set()

    def on_connect(c: paho.Client, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        if rc.is_failure:
            return
        for topic in subscriptions:
            pending.add(c.subscribe(topic, qos=1)[1])

    client.on_subscribe = on_subscribe
    client.on_connect = on_connect
    props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    props.SessionExpiryInterval = 3600
    client.connect("127.0.0.1", plan.broker_port, clean_start=True, properties=props)
    no_nagle(client)
    client.loop_start()
    if not subscribed.wait(30):
        raise RuntimeError(f"{client._client_id!r} could not subscribe to {subscriptions}")


def _finish(conn: Connection, receipts: list[tuple[str, float]], path: str,
            summary: dict[str, Any]) -> None:
    with open(path, "w") as out:
        out.writelines(f"{event_id} {at:.6f}\n" for event_id, at in receipts)
    conn.send(("done", {"cpu_s": cpu_s(), "rss": rss_bytes(), "received": len(receipts),
                        **summary}))


@reports_failure
def consumer_main(plan: CentralPlan, index: int, conn: Connection) -> None:
    """A member of the ``central`` share group; writes ``id arrival`` per event received."""
    receipts: list[tuple[str, float]] = []
    last_seq: dict[str, int] = {}
    kinds: Counter[str] = Counter()
    out_of_order = 0

    def on_message(_c: Any, _u: Any, message: paho.MQTTMessage) -> None:
        nonlocal out_of_order
        at = time.time()
        event = json.loads(message.payload)
        receipts.append((event["id"], at))
        kinds[event["kind"]] += 1
        bench = f"{event['site']}/{event['bench']}"
        if event["seq"] < last_seq.get(bench, 0):
            out_of_order += 1
        last_seq[bench] = max(event["seq"], last_seq.get(bench, 0))

    client = mqtt_client(plan, f"central-events-{index}")
    client.on_message = on_message
    connect(client, plan, [EVENTS])
    conn.send(("ready", {}))
    conn.recv()  # finish: the benches' outboxes are empty
    while True:  # until quiet: the broker may still be delivering
        count = len(receipts)
        time.sleep(0.5)
        if len(receipts) == count:
            break
    client.disconnect()
    stop_network_thread(client)
    _finish(conn, receipts, plan.receipts, {"kinds": dict(kinds), "out_of_order": out_of_order})


class Commander:
    """Sends the central system's commands to the benches and times the replies."""

    def __init__(self, plan: CentralPlan) -> None:
        self.plan = plan
        self.client = mqtt_client(plan, "central-commands")
        self.client.on_message = self._on_message
        self.sent: dict[bytes, tuple[str, float]] = {}
        self.round_trips: dict[str, list[float]] = {}
        self.failed: Counter[str] = Counter()
        self.receipts: list[tuple[str, float]] = []
        self.retained: Counter[str] = Counter()
        self.pushed = dict.fromkeys(plan.benches, 0)
        self._lock = threading.Lock()
        self._replied = threading.Condition(self._lock)

    def _on_message(self, _c: Any, _u: Any, message: paho.MQTTMessage) -> None:
        at = time.time()
        if message.topic.endswith(("/state", "/status")):
            self.retained[message.topic.rsplit("/", 1)[1]] += 1
            return
        reply = json.loads(message.payload)
        correlation = getattr(message.properties, "CorrelationData", None)
        with self._lock:
            self.receipts.append((reply["id"], at))
            name, sent_at = self.sent.pop(correlation, ("?", at))
            self.round_trips.setdefault(name, []).append(at - sent_at)
            if not reply["data"]["ok"]:
                self.failed[name] += 1
            self._replied.notify_all()

    def start(self) -> None:
        connect(self.client, self.plan, [f"{ROOT}/+/+/reply/central", f"{ROOT}/+/+/state",
                                         f"{ROOT}/+/+/status"])

    def send(self, site: str, bench: str, name: str, args: dict[str, Any]) -> None:
        command_id = uuid.uuid4().hex
        props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        props.ResponseTopic = f"{ROOT}/{site}/{bench}/reply/central"
        props.CorrelationData = command_id.encode()
        with self._lock:
            self.sent[props.CorrelationData] = (name, time.time())
        self.client.publish(f"{ROOT}/{site}/{bench}/cmd/{name}",
                            json.dumps({"id": command_id, "args": args}), qos=1,
                            properties=props)

    def push_orders(self, site: str, bench: str, until_s: float) -> None:
        """Push the bench's orders for its first ``until_s`` seconds (and two more)."""
        wanted = int(until_s * self.plan.rate_per_min / 60) + 2
        first = self.pushed[(site, bench)]
        if wanted > first:
            orders = [fleet_order(site, bench, n) for n in range(first, wanted)]
            self.send(site, bench, "order.push", {"orders": orders})
            self.pushed[(site, bench)] = wanted

    def wait_replies(self, timeout_s: float) -> None:
        with self._replied:
            if not self._replied.wait_for(lambda: not self.sent, timeout_s):
                raise RuntimeError(f"{len(self.sent)} commands unanswered in {timeout_s} s")

    def run(self, start: float) -> None:
        """Until ``seconds`` after ``start``: each bench's commands, spread over the period."""
        plan = self.plan
        due: list[tuple[float, int, str]] = []
        for index, _bench in enumerate(plan.benches):
            for what, every in (("order.push", PUSH_EVERY_S), ("status.get", STATUS_EVERY_S),
                                ("print.submit", PRINT_EVERY_S)):
                heapq.heappush(due, (start + random.uniform(0, every), index, what))
        printed = Counter[int]()
        while due:
            at, index, what = heapq.heappop(due)
            if at > start + plan.seconds:
                continue
            time.sleep(max(0.0, at - time.time()))
            site, bench = plan.benches[index]
            if what == "order.push":
                self.push_orders(site, bench, at - start + PUSH_EVERY_S + 30)
                every = PUSH_EVERY_S
            elif what == "status.get":
                self.send(site, bench, "status.get", {})
                every = STATUS_EVERY_S
            else:
                printed[index] += 1
                label = f"^XA^FO40,40^A0N,40,40^FDRETURN {bench} {printed[index]}^FS^XZ"
                self.send(site, bench, "print.submit", {
                    "job_id": f"ret-{bench}-{printed[index]}", "role": "label",
                    "document": {"format": "zpl", "data": _b64(label)}})
                every = PRINT_EVERY_S
            heapq.heappush(due, (at + every, index, what))


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


@reports_failure
def commander_main(plan: CentralPlan, conn: Connection) -> None:
    commander = Commander(plan)
    commander.start()
    for site, bench in plan.benches:  # the first minute's orders before the start
        commander.push_orders(site, bench, 60)
    commander.wait_replies(120)
    commander.round_trips.clear()
    commander.retained.clear()
    conn.send(("ready", {}))
    start = conn.recv()
    commander.run(start)
    conn.recv()  # finish
    commander.wait_replies(120)
    commander.client.disconnect()
    stop_network_thread(commander.client)
    trips = {name: sorted(values) for name, values in commander.round_trips.items()}
    _finish(conn, commander.receipts, plan.receipts, {
        "round_trips": trips, "failed": dict(commander.failed),
        "retained": dict(commander.retained)})


@reports_failure
def printers_main(count: int, conn: Connection) -> None:
    """``count`` ZPL printers; during the run, now and then one runs out of paper."""
    sims = [LabelPrinterSim("zpl", label_time_s=0.0).start() for _ in range(count)]
    conn.send(("ready", {"ports": [sim.port for sim in sims]}))
    start, seconds = conn.recv()  # go
    rng = random.Random(7)
    episodes = 0
    last = start + seconds - PAPER_OUT_FOR_S  # every printer has paper again at the end
    while True:
        at = time.time() + rng.expovariate(count / PAPER_OUT_EVERY_S)
        if at > last:
            break
        time.sleep(max(0.0, at - time.time()))
        sim = rng.choice(sims)
        if "paper_out" not in sim.faults:
            sim.set_fault("paper_out", True)
            threading.Timer(PAPER_OUT_FOR_S, sim.set_fault, ("paper_out", False)).start()
            episodes += 1
    conn.recv()  # finish
    for sim in sims:
        sim.stop()
    conn.send(("done", {"cpu_s": cpu_s(), "rss": rss_bytes(), "paper_out": episodes}))


def receipts_of(path: str | Path) -> list[tuple[str, float]]:
    with open(path) as lines:
        return [(event_id, float(at)) for event_id, at in (line.split() for line in lines)]
