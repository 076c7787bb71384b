"""Scan-to-event latency of the serial scanner driver, and how many scans a second it takes.

Run from the repository root::

    .venv/bin/python -m benchmarks.scanner_latency [--scans N] [--burst N]

Everything is real except the scanner itself: the scanner simulator writes each barcode
(AIM prefix, data, CR) into a pseudo-terminal, the agent's own driver (``make_scanner``:
pyserial-opened port watched by the asyncio loop, line framing, AIM and GS1 parsing with
biip) reads it, and the time is taken when the ``Scan`` comes out of a bus subscription.

1. latency: one barcode at a time, timed from just before the simulator's ``write`` to
   the ``Scan`` leaving the subscription (one process, one clock: ``perf_counter``);
2. throughput: a writer thread sends ``--burst`` barcodes back to back (the pty buffer
   paces it) and the rate is taken from the first write to the last ``Scan``.

The barcodes rotate through an EAN-13, a GS1-128 with GTIN, expiry, batch and serial,
and a Code 128 order number, so GS1 parsing is part of the cost.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import threading
import time
from pathlib import Path

from agent.bus import Bus
from agent.devices.readings import Scan
from agent.devices.scanner import Scanner, make_scanner
from agent.devices.settings import ScannerSettings
from benchmarks.stats import machine, percentile
from simulators.scanner import SerialScannerSimulator

BARCODES = (
    ("]E0", "4006381333931"),
    ("]C1", "0109506000134352" "17271130" "10LOT-{n}\x1d" "21SN{n:06d}"),
    ("]C0", "ORDER-2026-{n:06d}"),
)


def barcode(n: int) -> tuple[str, str]:
    aim, pattern = BARCODES[n % len(BARCODES)]
    return aim, pattern.format(n=n)



async def measure(link: Path, scans: int, burst: int) -> None:
    sim = SerialScannerSimulator(link, suffix="cr")
    settings = ScannerSettings(connection=f"serial://{link}?baud=115200", framing="cr")
    scanner: Scanner = make_scanner("bench-scanner", settings, Bus())
    task = asyncio.create_task(scanner.run(), name="scanner")
    try:
        await asyncio.wait_for(scanner.ready.wait(), 5)
        with scanner.bus.subscribe(Scan, maxsize=burst + 10) as subscription:
            # Warm-up: imports, biip tables, first allocations.
            for n in range(50):
                sim.scan(barcode(n)[1], aim=barcode(n)[0])
                await subscription.get()
            latencies_ms: list[float] = []
            for n in range(scans):
                aim, data = barcode(n)
                started = time.perf_counter()
                sim.scan(data, aim=aim)
                scan = await subscription.get()
                latencies_ms.append((time.perf_counter() - started) * 1000)
                assert scan.data == data, (scan.data, data)
            print(f"latency over {scans} scans, write -> Scan on the bus: "
                  f"p50 {statistics.median(latencies_ms):.3f} ms, "
                  f"p99 {percentile(latencies_ms, 0.99):.3f} ms, "
                  f"max {max(latencies_ms):.3f} ms")

            frames = [(barcode(n)[0] + barcode(n)[1] + "\r").encode() for n in range(burst)]
            def send_all() -> None:
                for frame in frames:
                    sim.send(frame)

            writer = threading.Thread(target=send_all, name="scanner-simulator")
            started = time.perf_counter()
            writer.start()
            for n in range(burst):
                scan = await subscription.get()
                assert scan.data == barcode(n)[1]
            elapsed_s = time.perf_counter() - started
            writer.join()
            print(f"throughput: {burst} scans back to back in {elapsed_s:.3f} s = "
                  f"{burst / elapsed_s:,.0f} scans/s; discarded: {scanner.details()['discarded']}")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        sim.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scans", type=int, default=2000, help="scans timed one by one")
    parser.add_argument("--burst", type=int, default=5000, help="scans sent back to back")
    args = parser.parse_args()
    print(machine())
    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(measure(Path(tmp) / "scanner0", args.scans, args.burst))


if __name__ == "__main__":
    main()
