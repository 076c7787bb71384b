"""Evidence lookup by waybill or order id on a bench with years of parcels.

Run from the repository root::

    .venv/bin/python -m benchmarks.evidence_lookup [--records N] [--lookups N]

Fills a real ``agent.db`` (WAL, synchronous=FULL, under ``/var/tmp``) with ``--records``
pack evidence records of about 2 kB each (two orders, a waybill, 12 scans, weights,
photos), in batches, then looks up random waybills and order ids through
``EvidenceStore.find`` (the bench-store thread, as the CLI and commands will) and prints
p50/p99 of each lookup and the database size. Customer service needs an answer in under
a second.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import time
from pathlib import Path
from typing import Any

from agent.jobs.evidence import EvidenceLimits, EvidenceStore, insert_record, new_evidence_id
from agent.store import Store, Transaction
from benchmarks.rig import scratch_dir
from benchmarks.stats import machine, percentile


def record(n: int) -> dict[str, Any]:
    scans = [{"at": f"2026-12-03T10:00:{s:02d}.000Z", "data": f"69012345678{s:02d}",
              "outcome": "accepted", "line": f"SKU-{s % 4}"} for s in range(12)]
    return {"kind": "pack", "verdict": "pass", "order_ids": [f"SO-{n}", f"SO-{n}-B"],
            "waybill": f"SF{n:012d}", "packer": "EMP-17", "scans": scans,
            "weight": {"stable_g": 1234.5, "expected_g": 1200.0, "tolerance_g": 60.0},
            "photos": [{"moment": "open", "path": f"2026-12-03/{n}-open.jpg"},
                       {"moment": "closed", "path": f"2026-12-03/{n}-closed.jpg"}],
            "print_jobs": [f"SO-{n}-waybill", f"SO-{n}-packing_slip"]}


async def measure(root: Path, records: int, lookups: int) -> None:
    store = Store(root / "agent.db")
    await store.open()
    evidence = EvidenceStore(store, root / "photos", EvidenceLimits())
    await evidence.open()
    started = time.perf_counter()
    batch = 2000
    for first in range(0, records, batch):
        def _fill(db: Any, first: int = first) -> None:
            with Transaction(db):
                for n in range(first, min(records, first + batch)):
                    insert_record(db, new_evidence_id(), record(n))
        await store.run(_fill)
    print(f"stored {records:,} records in {time.perf_counter() - started:.1f} s; "
          f"database {(root / 'agent.db').stat().st_size / 1e6:,.0f} MB")
    for what, key in (("waybill", lambda n: f"SF{n:012d}"), ("order id", lambda n: f"SO-{n}")):
        times_ms = []
        for _ in range(lookups):
            n = random.randrange(records)
            began = time.perf_counter()
            found = await evidence.find(key(n))
            times_ms.append((time.perf_counter() - began) * 1000)
            assert found and found[0]["waybill"] == f"SF{n:012d}"
        print(f"find by {what}: p50 {statistics.median(times_ms):.2f} ms, "
              f"p99 {percentile(times_ms, 0.99):.2f} ms over {lookups} lookups")
    await store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--lookups", type=int, default=1000)
    args = parser.parse_args()
    print(machine())
    with scratch_dir() as root:
        asyncio.run(measure(root, args.records, args.lookups))


if __name__ == "__main__":
    main()
