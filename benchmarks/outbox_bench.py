"""How fast the durable outbox stores events, delivers them, and how long one takes.

Run from the repository root::

    .venv/bin/python -m benchmarks.outbox_bench [--events N]

Everything is real: a mosquitto it starts itself (TLS, on a free loopback port), the
agent's own ``Store``/``Outbox``/``Daemon`` with SQLite on disk (WAL, synchronous=FULL)
in a temporary folder under ``/var/tmp``, and paho clients over TLS. It measures:

1. enqueue rate: ``Outbox.enqueue`` awaited one at a time (one fsync each) and
   ``CONCURRENCY`` at once with ``asyncio.gather`` (group commit), with the link down;
2. delivery rate: a ``Daemon`` whose service enqueues N events from ``CONCURRENCY``
   producers as fast as it can, timed from the first ``enqueue()`` to the last arrival at
   a separate QoS 1 subscriber, and a plain paho QoS 1 publisher sending N payloads of the
   same size with the same number in flight; the two alternate for ``--rounds`` rounds and
   the medians are compared;
3. latency from the ``enqueue()`` call to the subscriber, at a steady rate well below
   capacity, beside the time ``enqueue()`` itself takes (the durable commit).

The subscriber runs in this same process, so ``time.monotonic`` is one clock for both
ends; it shares the GIL and the CPUs with whichever publisher is measured, alike for both.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import os
import platform
import shutil
import sqlite3
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import uuid6
from paho.mqtt import __version__ as paho_version
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from agent.config import Config, parse_config
from agent.daemon import Daemon
from agent.mqtt import stop_network_thread
from agent.outbox import Event, Outbox, iso_time
from agent.store import Store
from agent.topics import Topics
from simulators.broker import Broker
from simulators.pki import make_pki

TOPIC_ROOT = "benchagent/v1"
SITE = "perf"
AGENT_BENCH = "agent01"
PLAIN_BENCH = "plain01"  # same length as AGENT_BENCH: same topic size for both publishers
KIND = "pack_result"
CONCURRENCY = 100
WARMUP_EVENTS = 100
ARRIVAL_TIMEOUT_S = 60.0
CONNECT_TIMEOUT_S = 15.0

Arrival = tuple[float, bytes]
"""When a message reached the subscriber (``time.monotonic``) and its payload."""


def pack_result(n: int) -> dict[str, Any]:
    """A pack verification report, about 300 bytes of JSON like the real job sends."""
    return {
        "waybill": f"1Z999AA1{n:010d}",
        "order": f"SO-{n:08d}",
        "packing_slip": f"PS-{n:08d}",
        "verdict": "pass",
        "items": [
            {"sku": "SKU-104-2231", "qty": 2, "scanned": 2},
            {"sku": "SKU-881-0045", "qty": 1, "scanned": 1},
        ],
        "expected_weight_g": 1840,
        "stable_weight_g": 1852,
        "tolerance_g": 40,
        "carton": "C-M2",
        "operator": "op-0417",
        "duration_ms": 41230,
    }


def body_size(data: dict[str, Any]) -> int:
    return len(json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode())


def percentile(sorted_values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile of already sorted values."""
    rank = max(1, math.ceil(fraction * len(sorted_values)))
    return sorted_values[rank - 1]


# ------------------------------------------------------------------ machine facts
def filesystem_of(path: Path) -> str:
    """The filesystem type, device and mount options of the mount that holds ``path``."""
    path = path.resolve()
    best: tuple[str, str, str, str] = ("?", "?", "", "?")
    for line in Path("/proc/mounts").read_text().splitlines():
        device, mount, fstype, options = line.split()[:4]
        mount = mount.replace("\\040", " ")
        inside = path == Path(mount) or Path(mount) in path.parents
        if inside and len(mount) >= len(best[2]):
            best = (fstype, device, mount, options)
    fstype, device, mount, options = best
    return f"{fstype} ({device} on {mount}, {options})"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def mosquitto_version() -> str:
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    result = subprocess.run([binary, "-h"], capture_output=True, text=True, check=False)
    first = (result.stdout or result.stderr).splitlines()
    return first[0].strip() if first else "?"


def print_machine(storage: Path) -> None:
    usable = len(os.sched_getaffinity(0))
    print("machine")
    print(f"  cpus                 {os.cpu_count()} ({usable} usable), {cpu_model()}")
    print(f"  kernel               {platform.system()} {platform.release()}")
    print(f"  python               {sys.version.split()[0]} ({platform.python_implementation()})")
    print(f"  paho-mqtt            {paho_version}")
    print(f"  sqlite               {sqlite3.sqlite_version}")
    print(f"  openssl              {ssl.OPENSSL_VERSION}")
    print(f"  broker               {mosquitto_version()}")
    print(f"  storage dir          {storage}")
    print(f"  storage filesystem   {filesystem_of(storage)}")


# ------------------------------------------------------------------ MQTT clients
def mqtt5_client(client_id: str, ca_file: Path) -> paho.Client:
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                         protocol=paho.MQTTv5)
    client.tls_set_context(ssl.create_default_context(cafile=str(ca_file)))
    return client


def connect(client: paho.Client, port: int) -> None:
    """Connect (clean start) and start paho's thread; return once the broker accepted."""
    connack = threading.Event()

    def on_connect(_c: Any, _u: Any, _f: Any, rc: ReasonCode, _props: Any) -> None:
        if rc.value < 0x80:
            connack.set()

    client.on_connect = on_connect
    client.connect("127.0.0.1", port, clean_start=True)
    client.loop_start()
    if not connack.wait(CONNECT_TIMEOUT_S):
        raise RuntimeError(f"no successful CONNACK from 127.0.0.1:{port} in "
                           f"{CONNECT_TIMEOUT_S}s")


class Subscriber:
    """A separate MQTT 5 client that records each distinct QoS 1 message's arrival time."""

    def __init__(self, port: int, ca_file: Path, topic_filter: str) -> None:
        self._client = mqtt5_client("perf-subscriber", ca_file)
        self._client.on_message = self._on_message
        self._port = port
        self._topic_filter = topic_filter
        self._lock = threading.Lock()
        self._arrivals: list[Arrival] = []
        self._seen: set[bytes] = set()
        self._expected = 0
        self._complete = threading.Event()
        self.duplicates = 0

    def start(self) -> None:
        suback = threading.Event()
        self._client.on_subscribe = lambda *_args: suback.set()
        connect(self._client, self._port)
        self._client.subscribe(self._topic_filter, options=SubscribeOptions(qos=1))
        if not suback.wait(CONNECT_TIMEOUT_S):
            raise RuntimeError(f"no SUBACK for {self._topic_filter} in {CONNECT_TIMEOUT_S}s")

    def stop(self) -> None:
        self._client.disconnect()
        stop_network_thread(self._client)

    def _on_message(self, _c: Any, _u: Any, msg: paho.MQTTMessage) -> None:
        now = time.monotonic()
        payload = bytes(msg.payload)
        with self._lock:
            if payload in self._seen:
                self.duplicates += 1
                return
            self._seen.add(payload)
            self._arrivals.append((now, payload))
            if len(self._arrivals) >= self._expected:
                self._complete.set()

    def expect(self, count: int) -> None:
        """Forget earlier arrivals; :meth:`wait` returns once ``count`` new ones arrived."""
        with self._lock:
            self._arrivals, self._seen, self._expected = [], set(), count
            self.duplicates = 0
            self._complete.clear()

    def wait(self, timeout_s: float = ARRIVAL_TIMEOUT_S) -> list[Arrival]:
        if not self._complete.wait(timeout_s):
            raise RuntimeError(f"only {len(self._arrivals)} of {self._expected} messages "
                               f"reached the subscriber in {timeout_s}s")
        with self._lock:
            return list(self._arrivals)


# ------------------------------------------------------------------ 1. enqueue rate
async def enqueue_rate(config: Config, db: Path, bodies: list[dict[str, Any]],
                       concurrency: int) -> float:
    """Events/s stored by ``Outbox.enqueue``, ``concurrency`` awaits at a time (link down)."""
    store = Store(db)
    await store.open()
    outbox = Outbox(store, site=config.bench.site, bench=config.bench.id,
                    event_topic=Topics(TOPIC_ROOT, config.bench.site, config.bench.id).event,
                    max_events=config.storage.outbox_max_events,
                    max_bytes=config.storage.outbox_max_bytes)
    await outbox.load()
    try:
        start = time.monotonic()
        if concurrency == 1:
            for body in bodies:
                await outbox.enqueue(KIND, body)
        else:
            for first in range(0, len(bodies), concurrency):
                chunk = bodies[first:first + concurrency]
                await asyncio.gather(*(outbox.enqueue(KIND, body) for body in chunk))
        elapsed = time.monotonic() - start
        if outbox.count != len(bodies):
            raise RuntimeError(f"expected {len(bodies)} stored events, the outbox holds "
                               f"{outbox.count}")
    finally:
        await store.close()
    return len(bodies) / elapsed


# ------------------------------------------------------------------ 2. delivery rate
@dataclass(frozen=True)
class Burst:
    """One delivery run: ``events`` published as fast as possible, until all arrived."""

    events: int
    delivered_s: float
    """From the first ``enqueue()``/``publish()`` call to the last arrival."""
    committed_s: float
    """Until every ``enqueue()`` (all stored durably) or ``publish()`` call had returned."""
    cpu_s: float
    """CPU time of this whole process (every thread, the subscriber's too) meanwhile."""
    payload_bytes: float
    in_order: bool
    duplicates: int

    @property
    def rate(self) -> float:
        return self.events / self.delivered_s

    @property
    def cpu_per_event_us(self) -> float:
        return self.cpu_s / self.events * 1e6


def burst_result(start: float, committed_at: float, cpu_start: float,
                 arrivals: list[Arrival], duplicates: int) -> Burst:
    cpu_s = time.process_time() - cpu_start
    seqs = [json.loads(payload)["seq"] for _, payload in arrivals]
    return Burst(len(arrivals), arrivals[-1][0] - start, committed_at - start, cpu_s,
                 sum(len(payload) for _, payload in arrivals) / len(arrivals),
                 seqs == sorted(seqs), duplicates)


class PlainPublisher:
    """A plain paho QoS 1 publisher: the yardstick for the agent's delivery rate."""

    def __init__(self, port: int, ca_file: Path, subscriber: Subscriber, window: int) -> None:
        self._client = mqtt5_client("perf-plain", ca_file)
        self._client.max_inflight_messages_set(window)
        self._port = port
        self._subscriber = subscriber
        self._topic = Topics(TOPIC_ROOT, SITE, PLAIN_BENCH).event(KIND)
        self._properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        self._properties.ContentType = "application/json"

    def start(self) -> None:
        connect(self._client, self._port)

    def stop(self) -> None:
        self._client.disconnect()
        stop_network_thread(self._client)

    @staticmethod
    def envelope(seq: int) -> bytes:
        """The agent's envelope around the same body, so the payload has the same size."""
        head = json.dumps({"id": str(uuid6.uuid7()), "seq": seq, "kind": KIND,
                           "created_at": iso_time(time.time()), "site": SITE,
                           "bench": PLAIN_BENCH, "replayed": False}, separators=(",", ":"))
        body = json.dumps(pack_result(seq), separators=(",", ":"))
        return f'{head[:-1]},"data":{body}}}'.encode()

    def burst(self, seqs: range) -> Burst:
        payloads = [self.envelope(seq) for seq in seqs]
        self._subscriber.expect(len(payloads))
        cpu_start, start = time.process_time(), time.monotonic()
        infos = [self._client.publish(self._topic, payload, qos=1, properties=self._properties)
                 for payload in payloads]
        published_at = time.monotonic()
        arrivals = self._subscriber.wait()
        result = burst_result(start, published_at, cpu_start, arrivals,
                              self._subscriber.duplicates)
        for info in infos:
            info.wait_for_publish(ARRIVAL_TIMEOUT_S)
        return result


# ------------------------------------------------------------------ 2+3. through the agent
@dataclass(frozen=True)
class Latency:
    events: int
    rate: float
    achieved_rate: float
    end_to_end_ms: list[float]
    """Sorted: ``enqueue()`` call until the subscriber had the event."""
    commit_ms: list[float]
    """Sorted: ``enqueue()`` call until it returned (stored durably)."""


@dataclass
class AgentBench:
    """The service the benchmark runs inside a real :class:`Daemon`.

    Delivery rounds alternate the agent and the plain publisher (so a drift of the machine
    hits both alike), then the steady-rate latency run goes through the agent.
    """

    port: int
    ca_file: Path
    subscriber: Subscriber
    events: int
    rounds: int
    latency_events: int
    latency_rate: float
    name: str = "perf.producer"
    window: int = 0
    receive_maximum: int = 0
    agent: list[Burst] = field(default_factory=list)
    plain: list[Burst] = field(default_factory=list)
    latency: Latency | None = None
    error: Exception | None = None

    async def run(self, daemon: Daemon) -> None:
        try:
            await asyncio.wait_for(daemon.link.connected.wait(), CONNECT_TIMEOUT_S)
            self.window, self.receive_maximum = daemon.link.window, daemon.link.receive_maximum
            plain = PlainPublisher(self.port, self.ca_file, self.subscriber, self.window)
            await asyncio.to_thread(plain.start)
            try:
                await self._agent_burst(daemon, range(-WARMUP_EVENTS, 0))
                await asyncio.to_thread(plain.burst, range(-WARMUP_EVENTS, 0))
                for round_ in range(self.rounds):
                    seqs = range(round_ * self.events, (round_ + 1) * self.events)
                    self.agent.append(await self._agent_burst(daemon, seqs))
                    self.plain.append(await asyncio.to_thread(plain.burst, seqs))
            finally:
                await asyncio.to_thread(plain.stop)
            self.latency = await self._steady(daemon)
        except Exception as exc:
            self.error = exc
        finally:
            daemon.request_stop("benchmark finished")

    async def _agent_burst(self, daemon: Daemon, seqs: range) -> Burst:
        """Enqueue from ``CONCURRENCY`` producers at once; time until all arrived."""
        bodies = [pack_result(seq) for seq in seqs]
        self.subscriber.expect(len(bodies))
        pending = iter(bodies)

        async def producer() -> None:
            for body in pending:  # one shared iterator: each body is taken once
                await daemon.outbox.enqueue(KIND, body)

        cpu_start, start = time.process_time(), time.monotonic()
        await asyncio.gather(*(producer() for _ in range(CONCURRENCY)))
        committed_at = time.monotonic()
        arrivals = await asyncio.to_thread(self.subscriber.wait)
        result = burst_result(start, committed_at, cpu_start, arrivals,
                              self.subscriber.duplicates)
        # Let the PUBACKs' deletions finish, so they are not charged to the next run.
        if not await daemon.outbox.drain(ARRIVAL_TIMEOUT_S):
            raise RuntimeError(f"outbox not drained: {await daemon.outbox.stats()}")
        return result

    async def _steady(self, daemon: Daemon) -> Latency:
        """Enqueue at ``latency_rate`` on a fixed schedule (open loop); time each event."""
        bodies = [pack_result(-WARMUP_EVENTS - 1 - n) for n in range(self.latency_events)]
        self.subscriber.expect(len(bodies))
        called: dict[str, tuple[float, float]] = {}  # event id -> (enqueue call, returned)

        async def report(body: dict[str, Any]) -> None:
            called_at = time.monotonic()
            event: Event | None = await daemon.outbox.enqueue(KIND, body)
            if event is None:
                raise RuntimeError("a normal-priority event was dropped")
            called[event.id] = (called_at, time.monotonic())

        tasks: list[asyncio.Task[None]] = []
        start = time.monotonic()
        for n, body in enumerate(bodies):
            delay = start + n / self.latency_rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(report(body), name=f"perf.latency.{n}"))
        await asyncio.gather(*tasks)
        arrivals = await asyncio.to_thread(self.subscriber.wait)
        end_to_end, commit = [], []
        for arrived_at, payload in arrivals:
            called_at, returned_at = called[json.loads(payload)["id"]]
            end_to_end.append((arrived_at - called_at) * 1000)
            commit.append((returned_at - called_at) * 1000)
        call_times = sorted(called_at for called_at, _ in called.values())
        span_s = call_times[-1] - call_times[0]
        achieved = (len(call_times) - 1) / span_s if span_s > 0 else float("nan")
        return Latency(len(bodies), self.latency_rate, achieved, sorted(end_to_end),
                       sorted(commit))


# ------------------------------------------------------------------ the run
def agent_config(storage: Path, bench: str, port: int, ca_file: Path) -> Config:
    raw = {
        "bench": {"site": SITE, "id": bench},
        "mqtt": {"host": "127.0.0.1", "port": port, "tls": {"ca_file": str(ca_file)},
                 "topic_root": TOPIC_ROOT},
        "storage": {"dir": str(storage)},
    }
    return parse_config(raw, source=storage / "bench-agent.toml")


def rates(bursts: list[Burst]) -> str:
    return ", ".join(f"{burst.rate:.0f}" for burst in bursts)


def run(root: Path, events: int, rounds: int, latency_events: int,
        latency_rate: float) -> None:
    print_machine(root)
    print(f"  events per run       {events} (pack_result body {body_size(pack_result(0))} "
          f"bytes of JSON)")
    broker = Broker(root / "broker", make_pki(root / "broker" / "pki")).start()
    ca_file = broker.pki.ca
    try:
        store_config = agent_config(root / "store", "store01", broker.port, ca_file)
        bodies = [pack_result(n) for n in range(events)]
        sequential = asyncio.run(
            enqueue_rate(store_config, root / "store" / "sequential.db", bodies, 1))
        concurrent = asyncio.run(
            enqueue_rate(store_config, root / "store" / "concurrent.db", bodies, CONCURRENCY))
        print("\n1. durable enqueue (Store + Outbox, link down, SQLite WAL synchronous=FULL)")
        print(f"  one at a time        {sequential:9.0f} events/s  (a commit + fsync each)")
        print(f"  {CONCURRENCY} at once (gather) {concurrent:9.0f} events/s  (group commit)",
              flush=True)

        subscriber = Subscriber(broker.port, ca_file, f"{TOPIC_ROOT}/{SITE}/+/events/#")
        subscriber.start()
        try:
            bench = AgentBench(broker.port, ca_file, subscriber, events, rounds,
                               latency_events, latency_rate)
            daemon = Daemon(agent_config(root / "agent", AGENT_BENCH, broker.port, ca_file),
                            services=[bench])
            exit_code = asyncio.run(daemon.run())
        finally:
            subscriber.stop()
    finally:
        broker.stop()
    if bench.error is not None:
        raise RuntimeError(f"agent benchmark failed: {bench.error!r}") from bench.error
    if exit_code != 0 or bench.latency is None:
        raise RuntimeError(f"the benchmark did not finish (daemon exit code {exit_code})")

    agent_rate = statistics.median(burst.rate for burst in bench.agent)
    plain_rate = statistics.median(burst.rate for burst in bench.plain)
    committed_s = statistics.median(burst.committed_s for burst in bench.agent)
    print(f"\n2. delivery to the broker, QoS 1, {events} events per run, {rounds} rounds "
          f"alternating, at most {bench.window} in flight (broker Receive Maximum "
          f"{bench.receive_maximum})")
    print(f"  agent (Daemon)       {agent_rate:9.0f} events/s  median of {rates(bench.agent)}"
          f"; all enqueues returned after {committed_s:.2f}s (median)")
    print(f"  plain paho publisher {plain_rate:9.0f} msgs/s    median of {rates(bench.plain)}")
    print(f"  agent / plain        {agent_rate / plain_rate:9.2f}")
    agent_cpu = statistics.median(burst.cpu_per_event_us for burst in bench.agent)
    plain_cpu = statistics.median(burst.cpu_per_event_us for burst in bench.plain)
    print(f"  process CPU / event  agent {agent_cpu:.0f} us, plain {plain_cpu:.0f} us "
          f"(median; both include the subscriber)")
    print(f"  payload              agent {bench.agent[0].payload_bytes:.0f} bytes, plain "
          f"{bench.plain[0].payload_bytes:.0f} bytes")
    in_order = all(burst.in_order for burst in bench.agent)
    duplicates = sum(burst.duplicates for burst in bench.agent + bench.plain)
    print(f"  checks               agent seq order {'kept' if in_order else 'BROKEN'}, "
          f"{duplicates} duplicates")

    latency = bench.latency
    e2e, commit = latency.end_to_end_ms, latency.commit_ms
    achieved = ("n/a" if math.isnan(latency.achieved_rate)
                else f"{latency.achieved_rate:.0f}/s")
    print(f"\n3. latency, {latency.events} events at {latency.rate:.0f}/s (achieved "
          f"{achieved})")
    print(f"  enqueue -> received  p50 {percentile(e2e, 0.50):6.2f} ms   p99 "
          f"{percentile(e2e, 0.99):6.2f} ms   max {e2e[-1]:6.2f} ms")
    print(f"  enqueue -> returned  p50 {percentile(commit, 0.50):6.2f} ms   p99 "
          f"{percentile(commit, 0.99):6.2f} ms   max {commit[-1]:6.2f} ms  (stored durably)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=2000,
                        help="events per enqueue and delivery run (default 2000)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="delivery runs of each publisher, alternating (default 3)")
    parser.add_argument("--latency-events", type=int, default=1000,
                        help="events of the latency run (default 1000)")
    parser.add_argument("--latency-rate", type=float, default=200.0,
                        help="events/s of the latency run (default 200)")
    args = parser.parse_args()
    if min(args.events, args.rounds, args.latency_events) < 1 or args.latency_rate <= 0:
        parser.error("--events, --rounds and --latency-events must be at least 1, "
                     "--latency-rate above 0")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    root = Path(tempfile.mkdtemp(prefix="bench-agent-outbox-", dir="/var/tmp"))
    start = time.monotonic()
    try:
        run(root, args.events, args.rounds, args.latency_events, args.latency_rate)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(f"\nwhole run {time.monotonic() - start:.1f}s; {root} removed")


if __name__ == "__main__":
    main()
