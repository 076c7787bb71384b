"""Returns intake: what came back in a returned parcel, item by item, and in what state.

The returned parcel's waybill opens the original order(s); each item scanned is matched
to a line and then classified by a control scan (resellable, damaged, wrong item). What
was shipped and never scanned is ``missing``. An item that is not in the order, or one
unit more than was shipped, is recorded as ``wrong_item`` at once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from agent.devices.readings import Scan
from agent.jobs.pack_session import LineProgress, ParcelSession
from agent.outbox import iso_time

CLASSES = ("resellable", "damaged", "wrong_item")
"""What a returned unit may be classified as; ``missing`` is what was never scanned."""


@dataclass
class ReturnedUnit:
    """One unit that came back."""

    data: str
    at: float
    line: LineProgress | None
    condition: str | None = None

    def view(self) -> dict[str, Any]:
        return {"barcode": self.data, "at": iso_time(self.at),
                "order_id": self.line.order_id if self.line else None,
                "sku": self.line.line.sku if self.line else None,
                "condition": self.condition}


@dataclass
class ReturnCheck:
    """The return being checked: the original orders' session plus the units scanned."""

    session: ParcelSession
    units: list[ReturnedUnit] = field(default_factory=list)
    photo_taken: bool = False

    @property
    def pending(self) -> ReturnedUnit | None:
        """The unit scanned last, still waiting for its classification."""
        if self.units and self.units[-1].condition is None:
            return self.units[-1]
        return None

    def returned(self, line: LineProgress) -> int:
        return sum(1 for u in self.units if u.line is line)

    def add_unit(self, scan: Scan) -> tuple[ReturnedUnit, str]:
        """Record one scanned unit; says in words what it is and what to do next."""
        lines = self.session.lines_for(scan)
        open_lines = [p for p in lines if self.returned(p) < p.line.quantity]
        if open_lines:
            unit = ReturnedUnit(scan.data, scan.at, open_lines[0])
            self.units.append(unit)
            return unit, (f"{open_lines[0].label} came back: scan resellable, damaged or "
                          "wrong item")
        line = lines[0] if lines else None
        unit = ReturnedUnit(scan.data, scan.at, line, condition="wrong_item")
        self.units.append(unit)
        if line is None:
            return unit, f"{scan.data} is not in the order: recorded as wrong item"
        return unit, (f"only {line.line.quantity} of {line.label} were shipped: this one is "
                      "recorded as wrong item")

    def lines_view(self) -> list[dict[str, Any]]:
        out = []
        for p in self.session.lines:
            mine = [u for u in self.units if u.line is p]
            counts = {c: sum(1 for u in mine if u.condition == c) for c in CLASSES}
            returned = sum(counts.values()) - counts["wrong_item"]
            out.append({"order_id": p.order_id, "sku": p.line.sku, "name": p.line.name,
                        "shipped": p.line.quantity, **counts,
                        "missing": max(0, p.line.quantity - returned)})
        return out

    def evidence(self, verdict: str, at: float, reason: str | None = None) -> dict[str, Any]:
        """The returns record: the original orders, what came back and in what state."""
        record = self.session.evidence(verdict, at, expected_g=None, tolerance_g=None,
                                       reason=reason)
        record["kind"] = "return"
        record["waybill"] = self.session.opened_by
        record["missing"] = []
        record["items"] = self.lines_view()
        record["units"] = [u.view() for u in self.units]
        record["returned_weight_g"] = record.pop("stable_weight_g")
        for key in ("expected_weight_g", "tolerance_g", "box", "overrides", "print_jobs",
                    "waybill_verified"):
            record.pop(key, None)
        return record
