"""Fleet: many benches against one broker; events per second, latency, losses, CPU, memory.

Run from the repository root::

    .venv/bin/python -m benchmarks.fleet [--benches 200] [--seconds 60] [--rate 2]
                                         [--workers 4] [--consumers 2]

One mosquitto (TLS, a client certificate required, one per bench), and in their own
processes (``multiprocessing``, spawn):

* ``--workers`` processes sharing the benches (``benchmarks/fleet_bench.py``): each bench
  is the real :class:`agent.daemon.Daemon` (store on disk under ``/var/tmp``, outbox, MQTT
  link, command channel, print queue with a ZPL label printer, order book, packing job)
  with its own identity; its packer packs ``--rate`` parcels a minute: the order, four
  units and a box scanned, the weight, the waybill printed and scanned back, a
  ``pack.result`` with the parcel's evidence record;
* the central system (``benchmarks/fleet_peers.py``): ``--consumers`` members of the
  shared subscription ``$share/central/benchagent/v1/+/+/events/#``, and a commander
  sending ``order.push``, ``status.get`` and ``print.submit`` and watching replies,
  retained states and statuses;
* one ZPL printer simulator per bench (running out of paper now and then).

Printed: the events every outbox stored during the run and their arrival at a consumer
(events per second, latency from the ``enqueue()`` call to the consumer's callback, one
clock, ``time.time()``, for all processes), losses (every stored event id looked up
among those received: missing, received more than once, unknown), the commands' round
trips, CPU of each part during the run (and of the whole machine), resident memory per
bench and of the broker.
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import os
import shutil
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from benchmarks.fleet_bench import BenchSpec, WorkerPlan, worker_main
from benchmarks.fleet_peers import (
    CentralPlan,
    commander_main,
    consumer_main,
    printers_main,
    receipts_of,
)
from benchmarks.outbox_bench import mosquitto_version
from benchmarks.procstat import cpu_s, mb, rss_bytes
from benchmarks.stats import machine, percentile
from simulators.broker import Broker
from simulators.pki import Pki, make_pki

BENCHES_PER_SITE = 50
BENCHES_PER_WORKER = 100
"""paho-mqtt waits for its socket with select(), which cannot watch a file descriptor
above 1023; a bench holds about 9 (database, WAL, shared memory, broker socket and paho's
wake-up pair, printer, control socket...), so a worker process takes at most about 100."""
FDS_SAFE_PER_PROCESS = 400
"""Printer simulators per process: each holds two descriptors, watched with select()."""
READY_TIMEOUT_S = 300.0
_TICKS_S = os.sysconf("SC_CLK_TCK")


class Peer:
    """One process of the benchmark and the pipe it reports on."""

    def __init__(self, name: str, target: Any, *args: Any) -> None:
        context = multiprocessing.get_context("spawn")
        self.conn, child = context.Pipe()
        self.name = name
        self.process = context.Process(target=target, args=(*args, child), name=name)
        self.process.start()

    @property
    def pid(self) -> int:
        assert self.process.pid is not None
        return self.process.pid

    def send(self, message: Any) -> None:
        self.conn.send(message)

    def expect(self, what: str, timeout_s: float) -> dict[str, Any]:
        if not self.conn.poll(timeout_s):
            raise RuntimeError(f"{self.name}: not {what} within {timeout_s:.0f} s")
        tag, body = self.conn.recv()
        if tag != what:
            raise RuntimeError(f"{self.name} {tag}: {body}")
        result: dict[str, Any] = body
        return result

    def stop(self) -> None:
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(10)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(10)


def machine_busy_s() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, every core."""
    fields = [float(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:8]]
    idle = fields[3] + fields[4]  # idle, iowait
    return (sum(fields) - idle) / _TICKS_S, sum(fields) / _TICKS_S


@dataclass
class Fleet:
    benches: int
    seconds: float
    rate: float
    workers: int
    consumers: int


@dataclass
class Peers:
    """The benchmark's processes, in the order they start."""

    printers: list[Peer] = field(default_factory=list)
    consumers: list[Peer] = field(default_factory=list)
    workers: list[Peer] = field(default_factory=list)
    commander: list[Peer] = field(default_factory=list)

    def all(self) -> list[Peer]:
        return [*self.printers, *self.consumers, *self.workers, *self.commander]


@dataclass
class Window:
    """What was measured during the run, from outside the processes."""

    start: float
    cpu_s: dict[str, float]
    busy: list[float]
    broker_rss: int


def start_peers(root: Path, fleet: Fleet, broker: Broker, pki: Pki,
                names: list[tuple[str, str]], peers: Peers) -> list[dict[str, Any]]:
    """Printers and consumers, then the benches, then the commander (it pushes orders to
    benches that are connected); returns the workers' ready reports."""
    shards = -(-fleet.benches // FDS_SAFE_PER_PROCESS)
    peers.printers += [Peer(f"printers{i}", printers_main, len(range(i, fleet.benches, shards)))
                       for i in range(shards)]
    central = CentralPlan(broker.port, str(pki.ca), str(pki.clients["central"].cert),
                          str(pki.clients["central"].key), names, fleet.rate, fleet.seconds,
                          "")
    peers.consumers += [Peer(f"consumer{i}", consumer_main,
                             replace(central, receipts=str(root / f"consumer{i}.txt")), i)
                        for i in range(fleet.consumers)]
    sharded = [peer.expect("ready", READY_TIMEOUT_S)["ports"] for peer in peers.printers]
    ports = [sharded[n % shards][n // shards] for n in range(fleet.benches)]
    for peer in peers.consumers:
        peer.expect("ready", READY_TIMEOUT_S)
    (root / "s").mkdir()
    specs = [BenchSpec(site, bench, str(root / "benches" / bench),
                       str(root / "s" / f"{bench}.sock"),
                       str(pki.clients[f"{site}-{bench}"].cert),
                       str(pki.clients[f"{site}-{bench}"].key), port)
             for (site, bench), port in zip(names, ports, strict=True)]
    peers.workers += [Peer(f"worker{i}", worker_main, WorkerPlan(
        specs[i::fleet.workers], broker.port, str(pki.ca), fleet.rate, fleet.seconds,
        str(root / f"worker{i}.txt"))) for i in range(fleet.workers)]
    ready = [peer.expect("ready", READY_TIMEOUT_S) for peer in peers.workers]
    peers.commander.append(Peer("commander", commander_main,
                                replace(central, receipts=str(root / "commander.txt"))))
    peers.commander[0].expect("ready", READY_TIMEOUT_S)
    return ready


def measure(fleet: Fleet, broker: Broker, peers: Peers) -> Window:
    """Start everybody at once; CPU of each part and of the machine during the run."""
    assert broker.process is not None
    pids = {name: [p.pid for p in group] for name, group in (
        ("benches", peers.workers), ("consumers", peers.consumers),
        ("commander", peers.commander), ("printers", peers.printers))}
    pids["broker"] = [broker.process.pid]
    start = time.time() + 1.0
    for peer in (*peers.workers, *peers.commander):
        peer.send(start)
    for peer in peers.printers:
        peer.send((start, fleet.seconds))
    time.sleep(max(0.0, start - time.time()))
    cpu_before = {name: sum(cpu_s(pid) for pid in group) for name, group in pids.items()}
    busy_before = machine_busy_s()
    time.sleep(max(0.0, start + fleet.seconds - time.time()))
    cpu = {name: sum(cpu_s(pid) for pid in group) - cpu_before[name]
           for name, group in pids.items()}
    busy = [after - before for after, before in zip(machine_busy_s(), busy_before,
                                                     strict=True)]
    return Window(start, cpu, busy, rss_bytes(broker.process.pid))


def wind_down(peers: Peers) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]]]:
    """The commander's last replies, then the benches' outboxes drained and their records
    written, then the consumers' receipts: the workers' and the others' reports."""
    for peer in peers.workers:
        peer.expect("finished", 600)
    commander = peers.commander[0]
    commander.send("finish")
    talk = {"commander": commander.expect("done", 300)}
    for peer in peers.workers:
        peer.send("stop")
    done = [peer.expect("done", 300) for peer in peers.workers]
    for peer in (*peers.consumers, *peers.printers):
        peer.send("finish")
    talk |= {peer.name: peer.expect("done", 300) for peer in (*peers.consumers,
                                                                *peers.printers)}
    return done, talk


def run(root: Path, fleet: Fleet) -> None:
    names = [(f"s{n // BENCHES_PER_SITE:02d}", f"b{n:03d}") for n in range(fleet.benches)]
    pki = make_pki(root / "pki", clients=("central", *(f"{s}-{b}" for s, b in names)))
    broker = Broker(root / "broker", pki, require_certificate=True, persistence=False).start()
    peers = Peers()
    try:
        ready = start_peers(root, fleet, broker, pki, names, peers)
        window = measure(fleet, broker, peers)
        done, talk = wind_down(peers)
    finally:
        for peer in peers.all():
            peer.stop()
        broker.kill()
    report(root, fleet, window, ready, done, talk)


def _records(root: Path, workers: int) -> dict[str, tuple[str, str, float]]:
    records = {}
    for i in range(workers):
        with open(root / f"worker{i}.txt") as lines:
            for line in lines:
                event_id, bench, kind, called = line.split()
                records[event_id] = (bench, kind, float(called))
    return records


def _deliveries(root: Path, consumers: int) -> tuple[dict[str, float], Counter[str]]:
    """When each event id first reached the central system, and how often it did."""
    receipts = [r for i in range(consumers) for r in receipts_of(root / f"consumer{i}.txt")]
    receipts += receipts_of(root / "commander.txt")
    first: dict[str, float] = {}
    deliveries: Counter[str] = Counter()
    for event_id, at in receipts:
        deliveries[event_id] += 1
        first[event_id] = min(at, first.get(event_id, at))
    return first, deliveries


def report(root: Path, fleet: Fleet, window: Window, ready: list[dict[str, Any]],
           done: list[dict[str, Any]], talk: dict[str, dict[str, Any]]) -> None:
    start, cpu, busy = window.start, window.cpu_s, window.busy
    records = _records(root, fleet.workers)
    first, deliveries = _deliveries(root, fleet.consumers)
    missing = [i for i in records if i not in deliveries]
    unknown = [i for i in deliveries if i not in records]
    twice = sum(count - 1 for count in deliveries.values() if count > 1)
    end = start + fleet.seconds
    in_run = {i: r for i, r in records.items() if start <= r[2] < end}
    latency_ms = sorted((first[i] - r[2]) * 1000 for i, r in in_run.items() if i in first)
    by_kind: dict[str, list[float]] = {}
    for i, (_bench, kind, called) in in_run.items():
        if i in first:
            by_kind.setdefault(kind, []).append((first[i] - called) * 1000)
    parcels = sum(d["parcels"] for d in done)
    expected = fleet.benches * fleet.rate * fleet.seconds / 60

    print(f"\nfleet: {fleet.benches} benches in {fleet.workers} processes, {fleet.seconds:g} s "
          f"at {fleet.rate:g} parcels/min each; {mosquitto_version()}, TLS with a client "
          f"certificate per bench; {fleet.consumers} consumers in $share/central")
    print(f"parcels: {parcels} packed (schedule {expected:.0f}), failed "
          f"{sum(d['failed'] for d in done)}, started late {sum(d['late'] for d in done)}, "
          f"waited for their order {sum(d['waited_for_orders'] for d in done)}; printers "
          f"out of paper {sum(t.get('paper_out', 0) for t in talk.values())} times")
    latency = (f"latency p50 {percentile(latency_ms, 0.5):.1f} ms, p99 "
               f"{percentile(latency_ms, 0.99):.1f} ms, max {latency_ms[-1]:.1f} ms"
               if latency_ms else "no latency: nothing arrived")
    print(f"events end to end (outbox enqueue() -> consumer): {len(in_run)} stored during "
          f"the run = {len(in_run) / fleet.seconds:.0f} events/s; {latency}")
    for kind, values in sorted(by_kind.items(), key=lambda kv: -len(kv[1])):
        print(f"  {kind:14} {len(values):7d} ({len(values) / fleet.seconds:6.1f}/s)  p50 "
              f"{percentile(values, 0.5):7.1f} ms  p99 {percentile(values, 0.99):7.1f} ms")
    out_of_order = sum(talk[f"consumer{i}"]["out_of_order"] for i in range(fleet.consumers))
    print(f"losses: {len(records)} events stored in all (start-up and drain included), "
          f"missing {len(missing)}, delivered more than once {twice} (same id), unknown ids "
          f"{len(unknown)}; outboxes not drained {sum(d['undrained'] for d in done)}; "
          f"seq going back within a consumer {out_of_order}")
    commander = talk["commander"]
    trips = ", ".join(f"{name} {len(v)} (p50 {percentile(v, 0.5) * 1000:.0f} ms, p99 "
                      f"{percentile(v, 0.99) * 1000:.0f} ms)"
                      for name, v in commander["round_trips"].items())
    print(f"commands: {trips}; refused {commander['failed'] or 'none'}")
    print(f"retained: {sum(d['states'] for d in done)} state updates published, "
          f"{commander['retained'].get('state', 0)} received; "
          f"{commander['retained'].get('status', 0)} status messages received")
    machine_share = busy[0] / busy[1] * multiprocessing.cpu_count() * 100
    print("CPU during the run (100% = one core): "
          + ", ".join(f"{name} {seconds / fleet.seconds * 100:.0f}%"
                      for name, seconds in cpu.items())
          + f"; machine busy {machine_share:.0f}% of {multiprocessing.cpu_count() * 100}%; "
          f"benches {cpu['benches'] / max(1, parcels) * 1000:.0f} ms CPU a parcel")
    per_bench = sum(r["rss"] - r["baseline_rss"] for r in ready) / fleet.benches
    logged: Counter[str] = Counter()
    for d in done:
        logged.update(d["log"])
    print(f"agents' log: {sum(logged.values())} warnings or errors"
          + "".join(f"\n  {count} x {what}" for what, count in logged.most_common(6)))
    print(f"memory: {mb(per_bench)} RSS per bench (a worker's growth from its start-up, "
          f"{mb(sum(r['baseline_rss'] for r in ready) / len(ready))} before its benches), "
          f"workers at the end {mb(sum(d['rss'] for d in done))} in all; broker "
          f"{mb(window.broker_rss)}; open files per bench "
          f"{sum(r['fds'] for r in ready) / fleet.benches:.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--benches", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=60.0, help="length of the run")
    parser.add_argument("--rate", type=float, default=2.0, help="parcels a minute per bench")
    parser.add_argument("--workers", type=int, default=0,
                        help="processes the benches share (default: 4, or one per "
                             f"{BENCHES_PER_WORKER} benches)")
    parser.add_argument("--consumers", type=int, default=2,
                        help="members of the central system's shared subscription")
    args = parser.parse_args()
    workers = args.workers or max(4, -(-args.benches // BENCHES_PER_WORKER))
    if min(args.benches, workers, args.consumers) < 1 or args.seconds <= 0 or args.rate <= 0:
        parser.error("--benches, --workers, --consumers must be at least 1, --seconds and "
                     "--rate above 0")
    if args.benches > workers * BENCHES_PER_WORKER:
        parser.error(f"at most {BENCHES_PER_WORKER} benches a worker process (paho-mqtt's "
                     f"select() sees file descriptors below 1024 only): use --workers "
                     f"{-(-args.benches // BENCHES_PER_WORKER)} or more")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    print(machine(), flush=True)
    root = Path(tempfile.mkdtemp(prefix="bench-agent-fleet-", dir="/var/tmp"))
    try:
        run(root, Fleet(args.benches, args.seconds, args.rate, min(workers, args.benches),
                        args.consumers))
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
