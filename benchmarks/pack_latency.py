"""Packing: scan -> state event latency through the whole path, and parcels per second.

Run from the repository root::

    .venv/bin/python -m benchmarks.pack_latency [--scans N] [--parcels N] [--gap-s S]

Everything is real: mosquitto (TLS, a free loopback port), the agent as its own process
(``bench-agent run``) with its database on disk under ``/var/tmp``, the simulated bench
of ``tests.test_pack_bench`` (a serial scanner and an MT-SICS scale on pseudo-terminals, a
ZPL label printer at zero label time and an ESC/POS receipt printer on TCP, a camera on
image files) and a central-system client (paho, TLS) in this process.

1. latency: one order with a line of 100000 units stays in ``packing``; each item scan is
   timed from just before the scanner simulator writes the barcode into its pty to the
   arrival, at the MQTT subscriber, of the retained ``{prefix}/state`` message whose
   scanned count went up. The path: pty, the agent's serial driver (framing, AIM, GS1),
   the bus, the packing flow, the state publisher, mosquitto, the subscriber. The next
   scan goes ``--gap-s`` after the previous state arrived (0: at once, like a packer
   scanning a row of identical items). One process holds both clocks (``monotonic``).
2. parcels per second: scripted complete parcels as fast as the flow allows: the badge
   once, then per parcel the order scan, two item scans, the parcel put on the scale
   (taken off after the previous one), the waybill and packing slip printed, the waybill
   scanned back. Each step waits for the state that shows it. The time per parcel is split
   into its phases. Device settings that bound it are printed with the result.
"""

from __future__ import annotations

import argparse
import base64
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.rig import agent_and_central, scratch_dir
from benchmarks.stats import machine, percentile
from simulators.central import CentralSystem
from tests.test_pack_bench import SLIP, WAYBILL_ZPL, Bench

SITE, BENCH = "sh01", "b07"
PREFIX = f"benchagent/v1/{SITE}/{BENCH}"
STATE = f"{PREFIX}/state"
SCALE_POLL_MS = 50
CONFIRM_POLL_S = 0.05
View = dict[str, Any]


class States:
    """Reads the central's message log once, in order, for state messages."""

    def __init__(self, central: CentralSystem) -> None:
        self.central = central
        self.seen = len(central.messages)

    def skip(self) -> None:
        self.seen = len(self.central.messages)

    def wait(self, until: Callable[[View], bool], timeout_s: float = 20.0
             ) -> tuple[float, View]:
        """The next state message that satisfies ``until``: its arrival time and body."""
        deadline = time.monotonic() + timeout_s
        central = self.central
        with central._cond:
            while True:
                while self.seen < len(central.messages):
                    message = central.messages[self.seen]
                    self.seen += 1
                    if message.topic == STATE:
                        view = message.json
                        if until(view):
                            return message.at, view
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no matching state in {timeout_s} s")
                central._cond.wait(left)


def jobs() -> list[dict[str, Any]]:
    return [{"role": "label", "document": {"format": "zpl",
                                           "data": base64.b64encode(WAYBILL_ZPL).decode()}},
            {"role": "slip", "document": {"format": "escpos",
                                          "data": base64.b64encode(SLIP).decode()}}]


def parcel_order(n: int) -> dict[str, Any]:
    return {"order_id": f"P-{n}", "waybills": [f"W{n:06d}"],
            "lines": [{"sku": "MUG", "name": "Mug", "barcodes": ["4006381333931"],
                       "quantity": 2, "unit_weight_g": 500.0}],
            "print_jobs": jobs()}


def push(central: CentralSystem, orders: list[dict[str, Any]]) -> None:
    for start in range(0, len(orders), 200):
        reply = central.request(SITE, BENCH, "order.push",
                                {"orders": orders[start:start + 200]}, timeout_s=60)
        assert reply["ok"] is True, reply


def scan(bench: Bench, states: States, data: str, until: Callable[[View], bool]
         ) -> tuple[float, float, View]:
    """Scan ``data``; return when it was sent, when its state arrived, and the state."""
    states.skip()
    sent = time.monotonic()
    bench.scanner.scan(data)
    arrived, view = states.wait(until)
    return sent, arrived, view


def latency(bench: Bench, states: States, scans: int, gap_s: float) -> None:
    warmup = 20
    latencies_ms: list[float] = []
    for n in range(1, warmup + scans + 1):
        sent, arrived, _ = scan(bench, states, "6901234567892",
                                lambda s, n=n: bool(s["lines"])
                                and s["lines"][0]["scanned"] == n)
        if n > warmup:
            latencies_ms.append((arrived - sent) * 1000)
        if gap_s:
            time.sleep(gap_s)
    print(f"scan -> state event over {scans} item scans (serial scanner pty -> driver -> "
          f"flow -> retained state -> MQTT subscriber), next scan {gap_s:g} s after the "
          f"state: p50 {statistics.median(latencies_ms):.1f} ms, "
          f"p99 {percentile(latencies_ms, 0.99):.1f} ms, max {max(latencies_ms):.1f} ms")


def parcels_per_second(bench: Bench, states: States, parcels: int) -> None:
    phases: dict[str, list[float]] = {"open": [], "items": [], "weigh+print": [],
                                      "verify": [], "pan emptied": []}
    warmup = 3
    started = 0.0
    for n in range(warmup + parcels):
        if n == warmup:
            started = time.monotonic()
        t0, t1, _ = scan(bench, states, f"P-{n}",
                         lambda s, n=n: s["state"] == "packing" and s["order_ids"] == [f"P-{n}"])
        scan(bench, states, "4006381333931",
             lambda s: s["state"] == "packing" and s["lines"][0]["scanned"] == 1)
        _, t2, _ = scan(bench, states, "4006381333931", lambda s: s["state"] == "weighing")
        states.skip()
        t3 = time.monotonic()
        bench.scale.set_weight(1000.0 + n % 7)  # inside 1000 g +/- 50 g
        t4, _ = states.wait(lambda s: s["state"] == "verify_label")
        _, t5, _ = scan(bench, states, f"W{n:06d}",
                        lambda s, n=n: s["state"] == "idle" and s["last_parcel"] is not None
                        and s["last_parcel"]["order_ids"] == [f"P-{n}"])
        states.skip()
        t6 = time.monotonic()
        bench.scale.set_weight(0.0)  # the packer takes the parcel off
        t7, _ = states.wait(lambda s: s["state"] == "idle" and s["last_weight_g"] == 0.0)
        if n >= warmup:
            for name, (a, b) in {"open": (t0, t1), "items": (t1, t2), "weigh+print": (t3, t4),
                                 "verify": (t4, t5), "pan emptied": (t6, t7)}.items():
                phases[name].append(b - a)
    elapsed = time.monotonic() - started
    split = ", ".join(f"{name} {statistics.mean(values) * 1000:.0f} ms"
                      for name, values in phases.items())
    print(f"parcels: {parcels} complete parcels in {elapsed:.1f} s = "
          f"{parcels / elapsed:.2f} parcels/s ({elapsed / parcels * 1000:.0f} ms each); "
          f"mean per parcel: {split}")
    print(f"  (scale polled every {SCALE_POLL_MS} ms, settled after 3 equal readings; "
          f"label printer asked ~HS every {CONFIRM_POLL_S:g} s while printing, zero label "
          f"time; a JPEG photo at 'packed' and 'weighed')")


def run(root: Path, scans: int, parcels: int, gap_s: float) -> None:
    bench = Bench(root)
    devices = bench.devices()
    devices["scale"]["poll_interval_ms"] = SCALE_POLL_MS
    try:
        with agent_and_central(root, devices,
                               jobs={"print": {"confirm_poll_s": CONFIRM_POLL_S}}) as central:
            measure(central, bench, scans, parcels, gap_s)
    finally:
        bench.close()


def measure(central: CentralSystem, bench: Bench, scans: int, parcels: int,
            gap_s: float) -> None:
    central.subscribe(STATE)
    for device in ("scanner", "scale", "label", "slip", "camera"):
        central.wait_for(lambda m, d=device: m.topic.endswith("/events/device_state")
                         and m.json["data"]["device"] == d
                         and m.json["data"]["state"] == "ready", 30)
    push(central, [{"order_id": "LAT-1", "waybills": ["SFLAT1"],
                    "lines": [{"sku": "PEACH", "name": "Peach",
                               "barcodes": ["6901234567892"], "quantity": 100000,
                               "unit_weight_g": 1.0}]}]
         + [parcel_order(n) for n in range(parcels + 3)])
    states = States(central)
    scan(bench, states, "EMP-7", lambda s: s["state"] == "idle")
    scan(bench, states, "LAT-1", lambda s: s["state"] == "packing")
    latency(bench, states, scans, gap_s)
    scan(bench, states, "CTL-CANCEL", lambda s: s["state"] == "idle")
    parcels_per_second(bench, states, parcels)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scans", type=int, default=300, help="item scans timed")
    parser.add_argument("--parcels", type=int, default=40, help="complete parcels timed")
    parser.add_argument("--gap-s", type=float, default=0.0,
                        help="pause after each state before the next scan")
    args = parser.parse_args()
    print(machine())
    with scratch_dir() as root:
        run(root, args.scans, args.parcels, args.gap_s)


if __name__ == "__main__":
    main()
