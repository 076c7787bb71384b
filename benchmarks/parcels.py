"""The parcel the soak and fleet benchmarks pack, and the packer who packs it.

One order of three lines (four units) in a small box, with a ZPL waybill and, if asked,
an ESC/POS packing slip; the packer scans the order, the units and the box, puts the
parcel on the scale, waits for the labels, scans the waybill back and takes the parcel
off. Each step waits for the bench's retained state that shows it, as a packer waits for
the display, so parcels go as fast as the bench takes them.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Callable
from typing import Any

from agent.jobs.orders import Order

ITEM_SCANS = ("09506000134352", "MUG-RED", "6901234567892", "GIFT-CARD", "BOX-S")
"""Two mugs (by GTIN and by SKU), the tea, the gift card, then the box."""
EXPECTED_G = 2 * 350 + 110 + 10 + 120
View = dict[str, Any]


def parcel_order(order_id: str, waybill: str, *, slip: bool = True) -> Order:
    """The order behind one parcel; its print jobs are submitted once it is weighed."""
    label = f"^XA^FO40,40^BCN,120,Y^FD{waybill}^FS^XZ".encode()
    jobs: list[dict[str, Any]] = [
        {"role": "label", "waybill": waybill,
         "document": {"format": "zpl", "data": base64.b64encode(label).decode()}}]
    if slip:
        text = f"\x1b@Packing slip {order_id}\nRed mug x2\nGreen tea\nGift card\n\x1dV\x00"
        jobs.append({"role": "slip", "document": {
            "format": "escpos", "data": base64.b64encode(text.encode()).decode()}})
    return Order.model_validate({
        "order_id": order_id, "waybills": [waybill],
        "lines": [
            {"sku": "MUG-RED", "name": "Red mug", "barcodes": ["09506000134352", "MUG-RED"],
             "quantity": 2, "unit_weight_g": 350},
            {"sku": "TEA-100", "name": "Green tea, 100 g", "barcodes": ["6901234567892"],
             "quantity": 1, "unit_weight_g": 110},
            {"sku": "GIFT-CARD", "name": "Gift card", "barcodes": ["GIFT-CARD"],
             "quantity": 1, "unit_weight_g": 10, "gift": True}],
        "packaging": [{"code": "BOX-S", "name": "small box", "tare_g": 120},
                      {"code": "BOX-M", "name": "medium box", "tare_g": 200}],
        "note": "fragile: wrap the mugs",
        "print_jobs": jobs,
    })


class Display:
    """The bench's retained state as its display shows it: the latest, and waiting for one."""

    def __init__(self) -> None:
        self.state: View = {}
        self.updates = 0
        self._changed = asyncio.Event()

    def show(self, payload: bytes) -> None:
        self.state = json.loads(payload)
        self.updates += 1
        self._changed.set()

    async def wait(self, until: Callable[[View], bool], timeout_s: float = 30.0) -> View:
        """The current state, or the next one, that satisfies ``until``."""
        try:
            async with asyncio.timeout(timeout_s):
                while not until(self.state):
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            raise TimeoutError(f"no matching state in {timeout_s} s; last state: "
                               f"{self.state}") from None
        return self.state


async def pack_parcel(scan: Callable[[str], None], weigh: Callable[[float], None],
                      display: Display, order_id: str, waybill: str, extra_g: float = 0.0,
                      timeout_s: float = 30.0) -> None:
    """Open, fill, box, weigh, label and verify one parcel; take it off the scale."""
    def wait(until: Callable[[View], bool]) -> Any:
        return display.wait(until, timeout_s)

    scan(order_id)
    await wait(lambda s: s["state"] == "packing" and s["order_ids"] == [order_id])
    for code in ITEM_SCANS:
        scan(code)
    await wait(lambda s: s["state"] == "weighing" and s["order_ids"] == [order_id])
    weigh(EXPECTED_G + extra_g)
    await wait(lambda s: s["state"] == "verify_label" and s["order_ids"] == [order_id])
    scan(waybill)
    await wait(lambda s: s["state"] == "idle"
               and (s.get("last_parcel") or {}).get("order_ids") == [order_id])
    weigh(0.0)
