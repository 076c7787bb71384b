"""The demo's packing script: a shift's worth of parcels in a minute.

The central double pushes five orders (each carrying its waybill and packing slip as
print jobs) and the packer, through the simulated scanner and scale, packs:

1. a good parcel;
2. a wrong item (rejected), then a weight mismatch a supervisor overrides with a reason;
3. an order the central system holds while it waits on the bench: intercepted, set aside;
4. a merged parcel (two orders of one buyer in one box).

Every step waits for the bench's retained state, as a packer waits for the display.
Order ids and waybills carry the run's time: the bench never packs an order twice.
"""

from __future__ import annotations

import base64
import time
from typing import Any, Protocol

from simulators.central import CentralSystem, Received

PEACH, TEA, BOX_S = "6901234567892", "6920000000017", "BOX-S"


class DemoBench(Protocol):
    scanner: Any
    scale: Any


def _order(order_id: str, waybill: str, lines: list[dict[str, Any]],
           merge_id: str | None = None) -> dict[str, Any]:
    label = (f"^XA^CI28^FO40,40^A0N,40,40^FDSF Express^FS^FO40,100^BY3^BCN,160,Y,N,N"
             f"^FD{waybill}^FS^FO40,320^A0N,30,30^FD{order_id}^FS^XZ").encode()
    return {
        "order_id": order_id, "waybills": [waybill], "merge_id": merge_id, "lines": lines,
        "packaging": [{"code": BOX_S, "name": "small box", "tare_g": 80.0}],
        "note": "peaches: pack the tray flat",
        "print_jobs": [
            {"role": "waybill", "document": {"format": "zpl",
                                             "data": base64.b64encode(label).decode()}},
            {"role": "packing_slip", "document": {
                "format": "slip", "template": "packing_slip", "fields": {
                    "shop": "Orchard Fresh 果园鲜", "order_ids": [order_id],
                    "waybill": waybill,
                    "lines": [{"sku": line["sku"], "name": line["name"],
                               "quantity": line["quantity"]} for line in lines],
                    "barcode": waybill}}},
        ],
    }


def _peaches(quantity: int = 2) -> dict[str, Any]:
    return {"sku": "PEACH-12", "name": "水蜜桃 12个装", "barcodes": [PEACH],
            "quantity": quantity, "unit_weight_g": 500.0}


def _tea() -> dict[str, Any]:
    return {"sku": "TEA-250", "name": "Longjing tea 250 g", "barcodes": [TEA],
            "quantity": 1, "unit_weight_g": 300.0, "gift": True}


class Packer:
    """Scans and weighs like a packer, waiting for the bench's state between steps."""

    def __init__(self, central: CentralSystem, bench: DemoBench, prefix: str) -> None:
        self.central, self.bench = central, bench
        self.state_topic = f"{prefix}/state"

    def _states(self, name: str) -> int:
        return len(self.central.matching(self._is(name)))

    def _is(self, name: str) -> Any:
        return lambda m: m.topic == self.state_topic and m.json["state"] == name

    def scan(self, code: str, then: str | None = None) -> None:
        before = self._states(then) if then else 0
        aim = "]E0" if code.isdigit() and len(code) == 13 else "]C0"
        print(f"[packer] scans {code}", flush=True)
        self.bench.scanner.scan(code, aim=aim)
        if then:
            self.central.wait_for(self._is(then), timeout_s=20, count=before + 1)
        else:
            time.sleep(0.3)

    def weigh(self, grams: float, then: str) -> None:
        before = self._states(then)
        print(f"[packer] puts the parcel on the scale ({grams:g} g)", flush=True)
        self.bench.scale.set_weight(grams)
        self.central.wait_for(self._is(then), timeout_s=30, count=before + 1)

    def clear_scale(self) -> None:
        self.bench.scale.set_weight(0.0)
        time.sleep(1.0)  # the pan reads empty: the next weight is a new parcel


def describe(message: Received, body: dict[str, Any]) -> str | None:
    """The demo's line for a packing message, or ``None`` when it is not one."""
    if message.topic.endswith("/state"):
        return f"bench {body['state']}: {body['message']}"
    data = body.get("data", {})
    if body.get("kind") == "pack.result":
        weight = data.get("stable_weight_g")
        return (f"pack result {data['verdict']} for {', '.join(data['order_ids'])} waybill "
                f"{data.get('waybill')}: {len(data.get('scans', []))} scans, weight "
                f"{weight} g (expected {data.get('expected_weight_g')} g +/- "
                f"{data.get('tolerance_g')} g), {len(data.get('photos', []))} photos"
                + (f", overrides {data['overrides']}" if data.get("overrides") else "")
                + (f", reason: {data['reason']}" if data.get("reason") else ""))
    if body.get("kind") == "pack.intercept":
        return f"pack intercept: {data}"
    return None


def play_parcels(central: CentralSystem, bench: DemoBench, site: str, bench_id: str) -> None:
    """Push the orders to bench ``site/bench_id``, then pack them (module docstring)."""
    prefix = central.prefix(site, bench_id)
    tag = time.strftime("%H%M%S")
    good, mismatch, held = f"SO-{tag}-1", f"SO-{tag}-2", f"SO-{tag}-3"
    merged = (f"SO-{tag}-4", f"SO-{tag}-5")
    orders = [_order(good, f"SF{tag}01", [_peaches()]),
              _order(mismatch, f"SF{tag}02", [_peaches()]),
              _order(held, f"SF{tag}03", [_peaches(1)]),
              _order(merged[0], f"SF{tag}04", [_peaches(1), _tea()], merge_id=f"M-{tag}"),
              _order(merged[1], f"SF{tag}04", [_tea()], merge_id=f"M-{tag}")]
    # One box, one waybill and one slip: the first order carries them for both.
    orders[3]["lines"] = orders[3]["lines"][:1]
    orders[4] = {**orders[4], "waybills": [], "print_jobs": []}
    central.subscribe(f"{prefix}/state")
    central.request(site, bench_id, "order.push", {"orders": orders})
    print(f"[demo] the central system pushed 5 orders ({good} ... {merged[1]})")
    packer = Packer(central, bench, prefix)
    packer.scan("EMP-7", then="idle")

    print(f"[demo] parcel 1: a good parcel ({good})")
    packer.scan(good, then="packing")
    packer.scan(BOX_S)
    packer.scan(PEACH)
    packer.scan(PEACH, then="weighing")
    packer.weigh(1085.0, then="verify_label")
    packer.scan(f"SF{tag}01", then="idle")
    packer.clear_scale()

    print(f"[demo] parcel 2: a wrong item, then a weight a supervisor overrides ({mismatch})")
    packer.scan(mismatch, then="packing")
    packer.scan(BOX_S)
    packer.scan(TEA)  # not in this order: rejected at once
    packer.scan(PEACH)
    packer.scan(PEACH, then="weighing")
    packer.weigh(1300.0, then="weight_mismatch")
    packer.scan("SUP-3")
    packer.scan("RSN-PACKAGING-VARIANCE", then="verify_label")
    packer.scan(f"SF{tag}02", then="idle")
    packer.clear_scale()

    print(f"[demo] parcel 3: the buyer changed the address; the central system holds {held}")
    central.request(site, bench_id, "order.hold", {"order_id": held,
                                                "reason": "buyer changed the address"})
    packer.scan(held, then="intercepted")
    packer.scan("CTL-ASIDE", then="idle")

    print(f"[demo] parcel 4: two orders of one buyer in one box ({' + '.join(merged)})")
    packer.scan(merged[1], then="packing")
    packer.scan(BOX_S)
    packer.scan(PEACH)
    packer.scan(TEA, then="weighing")
    packer.weigh(885.0, then="verify_label")  # 500 + 300 + 80 g box
    packer.scan(f"SF{tag}04", then="idle")
    packer.clear_scale()
    found = central.request(site, bench_id, "evidence.find", {"key": f"SF{tag}02"})["result"]
    record = found["records"][0]
    print(f"[demo] customer service looks up waybill SF{tag}02: {record['verdict']}, packed by "
          f"{record['packer']}, {record['stable_weight_g']} g, photos "
          f"{[p['path'] for p in record['photos']]}")
