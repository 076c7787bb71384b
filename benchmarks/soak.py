"""Soak: parcel after parcel through the real packing job; memory growth and losses.

Run from the repository root::

    .venv/bin/python -m benchmarks.soak [--parcels 100000] [--every 5000]

One process, one asyncio loop, the agent's own code (``benchmarks/soak_bench.py``):
the packing job, the order book, the print queue with a ZPL label printer (``~HS``
confirmation) and an ESC/POS slip printer (simulators in their own processes on TCP,
zero label time), the evidence store with two camera photos per parcel, the outbox and
SQLite on disk under ``/var/tmp`` (WAL, synchronous=FULL). Each parcel: the order
scanned, four items and the box, the settled weight, both labels printed, the waybill
scanned back, the parcel taken off the scale; every step waits for the state that shows
it, so parcels go as fast as the bench takes them.

There is no broker: the outbox publishes to an in-process consumer that acknowledges
every event at once. The soak is about the agent's memory and losses over a long run;
a broker would put paho's thread and TLS into the measured process and set the pace
(``benchmarks/fleet.py`` measures the broker path). The consumer keeps counters only.

Every ``--every`` parcels: the parcels since the last sample are checked (orders packed,
one evidence record each, one ``pack.result`` each), the retention paths run with a
cutoff at the previous sample (order book, print jobs' bytes and rows, evidence records,
photos by age and by ``--photo-quota-mb``), so a steady state is expected, and memory is
sampled: RSS, tracemalloc's traced total, the database and photo folder sizes. At the
end: the growth per 10k parcels (least squares over the samples after the first) and
tracemalloc's top growth since the first sample.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import shutil
import sqlite3
import tempfile
import time
import tracemalloc
from dataclasses import dataclass, field
from pathlib import Path

from agent import tasks
from agent.cli import limit_malloc_arenas
from agent.jobs import order_store, print_store
from benchmarks.procstat import (
    LogTally,
    cpu_s,
    folder_size,
    mb,
    rss_bytes,
    slope,
    trimmed_rss_bytes,
)
from benchmarks.soak_bench import Packer, SoakBench, order, order_id
from benchmarks.stats import machine

DAY_S = 86400.0
PUSH_BATCH = 500


@dataclass
class Sample:
    parcels: int
    at: float
    rss: int
    trimmed_rss: int
    traced: int
    db: int
    free_db: int
    wal: int
    photos: int
    photo_bytes: int


@dataclass
class Ledger:
    """What the checks found so far."""

    packed: int = 0
    records: int = 0
    pruned: dict[str, int] = field(default_factory=lambda: {
        "orders": 0, "print_jobs": 0, "records": 0, "photos": 0})


def _checked(db: sqlite3.Connection, low: str, high: str) -> tuple[int, int]:
    packed = db.execute("SELECT COUNT(*) FROM orders WHERE order_id >= ? AND order_id < ? "
                        "AND state = 'packed'", (low, high)).fetchone()[0]
    records = db.execute("SELECT COUNT(*) FROM evidence_keys WHERE key >= ? AND key < ?",
                         (low, high)).fetchone()[0]
    return packed, records


def _db_pages(db: sqlite3.Connection) -> tuple[int, int]:
    size = db.execute("PRAGMA page_size").fetchone()[0]
    pages = db.execute("PRAGMA page_count").fetchone()[0]
    free = db.execute("PRAGMA freelist_count").fetchone()[0]
    return pages * size, free * size


class Soak:
    def __init__(self, bench: SoakBench, parcels: int, every: int) -> None:
        self.bench, self.parcels, self.every = bench, parcels, every
        self.ledger = Ledger()
        self.samples: list[Sample] = []
        self.baseline: tracemalloc.Snapshot | None = None
        self.last_snapshot: tracemalloc.Snapshot | None = None
        self._cutoff: float | None = None
        self._pushed = 0

    async def push_until(self, n: int) -> None:
        while self._pushed < min(n, self.parcels):
            batch = range(self._pushed, min(self._pushed + PUSH_BATCH, self.parcels))
            await self.bench.book.push([order(i) for i in batch])
            self._pushed = batch.stop

    async def run(self) -> float:
        packer = Packer(self.bench)
        await self.push_until(PUSH_BATCH)
        await packer.log_in()
        await self.checkpoint(0)
        started = time.monotonic()
        for n in range(self.parcels):
            if n + PUSH_BATCH // 2 >= self._pushed:
                await self.push_until(n + PUSH_BATCH)
            await packer.parcel(n)
            if (n + 1) % self.every == 0 or n + 1 == self.parcels:
                await self.checkpoint(n + 1)
        return time.monotonic() - started

    async def checkpoint(self, done: int) -> None:
        """Check the parcels since the last one, prune, sample memory."""
        bench, consumer = self.bench, self.bench.consumer
        deadline = time.monotonic() + 30
        while consumer.results_received < done and time.monotonic() < deadline:
            await asyncio.sleep(0.02)  # the last reports wait for their photos
        previous = self.samples[-1].parcels if self.samples else 0
        packed, records = await bench.store.run(_checked, order_id(previous), order_id(done))
        self.ledger.packed += packed
        self.ledger.records += records
        now = time.time()
        if self._cutoff is not None:
            await self.prune(self._cutoff)
        self._cutoff = now
        pages, free = await bench.store.run(_db_pages)
        photos, photo_bytes = folder_size(bench.pack.evidence.photo_dir)
        gc.collect()  # cyclic garbage is not growth
        snapshot = tracemalloc.take_snapshot() if tracemalloc.is_tracing() else None
        if self.baseline is None and done > 0:
            self.baseline = snapshot
        self.last_snapshot = snapshot
        wal = bench.store.path.with_name("agent.db-wal")
        sample = Sample(done, time.monotonic(), rss_bytes(), trimmed_rss_bytes(),
                        tracemalloc.get_traced_memory()[0], pages, free,
                        wal.stat().st_size if wal.exists() else 0, photos, photo_bytes)
        self.samples.append(sample)
        self.print_sample(sample, packed - (done - previous), records - (done - previous))

    async def prune(self, cutoff: float) -> None:
        """The retention paths the agent runs hourly, with a cutoff at the last sample."""
        bench, pruned = self.bench, self.ledger.pruned
        pruned["orders"] += await bench.store.run(order_store.prune, cutoff)
        pruned["print_jobs"] += await bench.store.run(print_store.prune, cutoff, cutoff)
        gone = await bench.pack.evidence.prune(now=cutoff + DAY_S)
        pruned["records"] += gone["records"]
        pruned["photos"] += gone["photos"]

    def print_sample(self, sample: Sample, packed_off: int, records_off: int) -> None:
        rate = ""
        if len(self.samples) > 1:
            before = self.samples[-2]
            rate = (f"{(sample.parcels - before.parcels) / (sample.at - before.at):6.1f} "
                    f"parcels/s, ")
        internals = self.internals()
        off = "" if packed_off == records_off == 0 else \
            f"  CHECK FAILED: packed {packed_off:+d}, records {records_off:+d}"
        print(f"{sample.parcels:7d} parcels: {rate}RSS {mb(sample.rss)} (trimmed "
              f"{mb(sample.trimmed_rss)}), traced "
              f"{mb(sample.traced)}, db {mb(sample.db)} ({mb(sample.free_db)} free pages, WAL "
              f"{mb(sample.wal)}), "
              f"photos {sample.photos} = {mb(sample.photo_bytes)}; {internals}{off}",
              flush=True)

    def internals(self) -> str:
        """Sizes of the agent's in-memory collections that must not grow with parcels."""
        bench = self.bench
        return (f"tasks {len(asyncio.all_tasks())}, background {len(tasks._background)}, "
                f"print jobs {len(bench.printing.jobs)}, reports {len(bench.pack._reports)}, "
                f"photo tasks {len(bench.pack.photos._tasks)}, outbox in flight "
                f"{len(bench.outbox._inflight)}, outbox rows {bench.outbox.count}")


def report(soak: Soak, elapsed_s: float, cpu_used_s: float, sims_cpu_s: float,
           problems: LogTally) -> None:
    bench, consumer, ledger, parcels = soak.bench, soak.bench.consumer, soak.ledger, soak.parcels
    print(f"\nparcels: {parcels} in {elapsed_s:.0f} s = {parcels / elapsed_s:.1f} parcels/s; "
          f"agent process CPU {cpu_used_s:.0f} s ({cpu_used_s / parcels * 1000:.1f} ms a "
          f"parcel, tracemalloc {'on' if tracemalloc.is_tracing() else 'off'}), printer "
          f"simulators {sims_cpu_s:.0f} s")
    later = [s for s in soak.samples if s.parcels > 0][1:] or soak.samples[-1:]
    xs = [float(s.parcels) for s in later]
    for name, values in (("RSS", [s.rss for s in later]),
                         ("trimmed", [s.trimmed_rss for s in later]),
                         ("traced", [s.traced for s in later]),
                         ("database", [s.db for s in later]),
                         ("photos", [s.photo_bytes for s in later])):
        growth = slope(xs, [float(v) for v in values]) * 10_000
        print(f"  {name:9} first {mb(values[0])}, last {mb(values[-1])}, growth "
              f"{growth / 1024:+.0f} KB per 10k parcels (least squares over {len(xs)} samples)")
    if soak.baseline is not None and soak.last_snapshot is not None:
        print("  tracemalloc top growth since the first sample:")
        stats = soak.last_snapshot.compare_to(soak.baseline, "lineno")
        for stat in stats[:8]:
            frame = stat.traceback[0]
            print(f"    {stat.size_diff / 1024:+9.0f} KB {stat.count_diff:+7d} blocks  "
                  f"{frame.filename.split('/work/main/')[-1]}:{frame.lineno}")
    missing = sum(1 for count in consumer.results[:parcels] if count == 0)
    twice = sum(1 for count in consumer.results[:parcels] if count > 1)
    states = consumer.print_states
    print(f"losses: pack.result once for {parcels - missing - twice} of {parcels} parcels "
          f"(missing {missing}, more than once {twice}); orders marked packed "
          f"{ledger.packed}; evidence records {ledger.records}; verdicts "
          f"{dict(consumer.verdicts)}; waybills printed {states['printed']}, slips sent "
          f"{states['sent']}, jobs failed or uncertain "
          f"{states['failed'] + states['uncertain']}; events out of seq order "
          f"{consumer.out_of_order}; outbox left {bench.outbox.count}")
    print(f"  events {dict(consumer.kinds)}; print_job events by state {dict(states)}; "
          f"retained state updates {consumer.display.updates}; "
          f"pack.result mean {consumer.result_bytes / max(1, consumer.results_received):.0f} "
          f"bytes")
    print(f"  retention removed {ledger.pruned}")
    print(f"  agent log: {problems.total} warnings or errors"
          + "".join(f"\n    {line}" for line in problems.top()))


async def soak(root: Path, parcels: int, every: int, photo_quota_mb: float,
               photo_size: tuple[int, int]) -> Soak:
    problems = LogTally()
    logging.getLogger().addHandler(problems)
    bench = SoakBench(root, parcels, photo_quota_mb, photo_size)
    run = Soak(bench, parcels, every)
    try:
        await bench.start()
        cpu_start = cpu_s()
        elapsed = await run.run()
        cpu_used = cpu_s() - cpu_start
        sims_cpu = sum(cpu_s(pid) for pid in bench.sims_pids())
        await bench.outbox.drain(10)
        report(run, elapsed, cpu_used, sims_cpu, problems)
    finally:
        await bench.stop()
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parcels", type=int, default=100_000, help="parcels packed")
    parser.add_argument("--every", type=int, default=5000,
                        help="check, prune and sample memory every N parcels")
    parser.add_argument("--photo-quota-mb", type=float, default=256.0,
                        help="jobs.pack.photo_quota_mb: the photo folder's cap")
    parser.add_argument("--photo-size", default="640x480", help="camera frames, WxH")
    parser.add_argument("--default-arenas", action="store_true",
                        help="keep glibc's malloc arenas (the daemon caps them at two)")
    parser.add_argument("--no-tracemalloc", action="store_true",
                        help="RSS only: tracemalloc's own tables and snapshots cost memory")
    args = parser.parse_args()
    if not args.default_arenas:
        limit_malloc_arenas()  # as `bench-agent run` does, before any thread starts
    if args.parcels < 1 or args.every < 1:
        parser.error("--parcels and --every must be at least 1")
    width, height = (int(v) for v in args.photo_size.split("x"))
    # force: python-escpos calls logging.basicConfig() when it is imported.
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s",
                        force=True)
    print(machine())
    print(f"soak: {args.parcels} parcels, sample every {args.every}, photos {width}x{height} "
          f"capped at {args.photo_quota_mb:g} MB", flush=True)
    if not args.no_tracemalloc:
        tracemalloc.start(1)
    root = Path(tempfile.mkdtemp(prefix="bench-agent-soak-", dir="/var/tmp"))
    try:
        asyncio.run(soak(root, args.parcels, args.every, args.photo_quota_mb, (width, height)))
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
