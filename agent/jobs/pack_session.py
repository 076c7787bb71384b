"""One parcel at the bench: what must go in, what went in, and the evidence of it.

:class:`ParcelSession` holds the facts of the open parcel (lines and their progress,
serial numbers, the box, weights, overrides, photos, print jobs, every scan with its
outcome) and builds its evidence record. It decides nothing about the flow's state;
:mod:`agent.jobs.pack_flow` does.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from agent.devices.readings import Scan
from agent.jobs.orders import Order, OrderLine, Packaging
from agent.outbox import iso_time

_GTIN_LENGTHS = (8, 12, 13, 14)
"""GTIN-8 (EAN-8), GTIN-12 (UPC-A), GTIN-13 (EAN-13), GTIN-14: all-digit codes of these
lengths are the same GTIN once left-padded with zeros to 14 digits (GS1 General
Specifications 3.3.2), so EAN-13 ``9506000134352`` is GTIN-14 ``09506000134352``."""


def gtin_key(code: str) -> str:
    """The form a barcode is compared in: a GTIN as 14 digits, anything else as is."""
    if code.isascii() and code.isdigit() and len(code) in _GTIN_LENGTHS:
        return code.zfill(14)
    return code


def scan_keys(scan: Scan) -> set[str]:
    """Every form under which an item scan may match a line's barcode."""
    keys = {gtin_key(scan.data)}
    gs1 = scan.gs1 or {}
    # AI 01 is the GTIN (14 digits); the scanner layer adds "gtin" for plain EAN/UPC too.
    for ai in ("01", "gtin"):
        if gs1.get(ai):
            keys.add(gtin_key(gs1[ai]))
    return keys


def scan_serial(scan: Scan) -> str | None:
    """The unit's serial number from GS1 AI 21, if the item scan carries one."""
    gs1 = scan.gs1 or {}
    return gs1.get("21") or gs1.get("serial") or None


def fmt_g(grams: float) -> str:
    """Grams for the packer: ``1,234 g``."""
    return f"{round(grams):,} g"


@dataclass
class LineProgress:
    """One order line and how many of its units are in the box."""

    order_id: str
    line: OrderLine
    keys: frozenset[str]
    packed: int = 0
    serials: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return self.packed >= self.line.quantity

    @property
    def label(self) -> str:
        return self.line.name or self.line.sku

    def view(self) -> dict[str, Any]:
        out: dict[str, Any] = {"order_id": self.order_id, "sku": self.line.sku,
                               "name": self.line.name, "expected": self.line.quantity,
                               "scanned": self.packed, "gift": self.line.gift}
        if self.line.serial_required:
            out["serials"] = list(self.serials)
        return out


@dataclass
class ParcelSession:
    """The open parcel: built from the orders a lookup found."""

    orders: tuple[Order, ...]
    packer: str | None
    opened_by: str
    started_at: float
    kind: str = "pack"
    lines: list[LineProgress] = field(default_factory=list)
    box: Packaging | None = None
    scans: list[dict[str, Any]] = field(default_factory=list)
    weights: list[dict[str, Any]] = field(default_factory=list)
    stable_weight_g: float | None = None
    overrides: list[dict[str, Any]] = field(default_factory=list)
    photos: dict[str, dict[str, Any]] = field(default_factory=dict)
    print_jobs: dict[str, dict[str, Any]] = field(default_factory=dict)
    waybill_jobs: list[str] = field(default_factory=list)
    waybills: set[str] = field(default_factory=set)
    waybill: str | None = None
    waybill_verified: bool = False
    external_labels: bool = False
    """The central system submits the labels itself; its print results are tracked."""
    last_item_mono: float | None = None
    """Monotonic time of the last unit counted: a settled weight from after it is the
    parcel's."""
    number: int = 0
    """Which parcel of this run of the flow (photos are matched to it)."""

    @classmethod
    def open(cls, orders: tuple[Order, ...], packer: str | None, code: str,
             at: float, kind: str = "pack") -> ParcelSession:
        session = cls(orders=orders, packer=packer, opened_by=code, started_at=at, kind=kind)
        for order in orders:
            session.waybills.update(order.waybills)
            for line in order.lines:
                keys = frozenset(gtin_key(b) for b in line.barcodes)
                session.lines.append(LineProgress(order.order_id, line, keys))
        return session

    # --- facts about the orders -------------------------------------------------------

    @property
    def order_ids(self) -> tuple[str, ...]:
        return tuple(o.order_id for o in self.orders)

    @property
    def note(self) -> str:
        return " / ".join(o.note for o in self.orders if o.note)

    @property
    def flags(self) -> list[str]:
        """``priority`` (pack it first) and ``presale`` (sold before the stock arrived)
        when any of the orders says so: shown to the packer, kept in the evidence."""
        return [flag for flag in ("priority", "presale")
                if any(getattr(o, flag) for o in self.orders)]

    @property
    def codes(self) -> set[str]:
        return set().union(*(o.codes() for o in self.orders))

    def packaging(self) -> dict[str, Packaging]:
        """Boxes any of the orders may go in, by code (the first order's wins)."""
        boxes: dict[str, Packaging] = {}
        for order in self.orders:
            for box in order.packaging:
                boxes.setdefault(box.code, box)
        return boxes

    def needs_box(self) -> bool:
        return any(o.packaging for o in self.orders)

    def lines_for(self, scan: Scan) -> list[LineProgress]:
        keys = scan_keys(scan)
        return [p for p in self.lines if p.keys & keys]

    def serial_taken(self, serial: str) -> bool:
        return any(serial in p.serials for p in self.lines)

    def all_packed(self) -> bool:
        return all(p.complete for p in self.lines)

    def missing(self) -> list[dict[str, Any]]:
        return [{"order_id": p.order_id, "sku": p.line.sku, "name": p.line.name,
                 "missing": p.line.quantity - p.packed} for p in self.lines if not p.complete]

    # --- weight -----------------------------------------------------------------------

    def expected_weight_g(self) -> float:
        items = sum(p.line.unit_weight_g * p.line.quantity for p in self.lines)
        return items + (self.box.tare_g if self.box else 0.0)

    def tolerance_g(self, default_abs_g: float, default_rel_pct: float) -> float:
        """max(abs, rel% x expected); an order's Tolerance overrides the bench default.

        For a merged parcel the loosest value any order sets is used, field by field.
        """
        abs_set = [o.tolerance.abs_g for o in self.orders
                   if o.tolerance and o.tolerance.abs_g is not None]
        rel_set = [o.tolerance.rel_pct for o in self.orders
                   if o.tolerance and o.tolerance.rel_pct is not None]
        abs_g = max(abs_set) if abs_set else default_abs_g
        rel_pct = max(rel_set) if rel_set else default_rel_pct
        return max(abs_g, rel_pct / 100 * self.expected_weight_g())

    def add_weight(self, grams: float, at: float, limit: int) -> None:
        if len(self.weights) < limit:
            self.weights.append({"at": iso_time(at), "grams": grams})

    # --- scans ------------------------------------------------------------------------

    def record_scan(self, scan: Scan, outcome: str, reason: str | None = None,
                    **facts: Any) -> None:
        entry: dict[str, Any] = {"at": iso_time(scan.at), "data": scan.data,
                                 "device": scan.device, "outcome": outcome}
        if reason:
            entry["reason"] = reason
        entry.update({k: v for k, v in facts.items() if v is not None})
        self.scans.append(entry)

    def reset_items(self) -> None:
        for p in self.lines:
            p.packed = 0
            p.serials.clear()
        self.box = None
        self.stable_weight_g = None
        self.last_item_mono = None

    # --- printing ---------------------------------------------------------------------

    def prepare_print_jobs(
        self, attached: list[tuple[str, tuple[dict[str, Any], ...]]] | None = None,
    ) -> tuple[dict[str, Any], ...]:
        """Print jobs with job ids, grouped per order so the waybill prints first.

        ``attached`` is ``(order_id, jobs)`` pairs; by default every order's
        ``print_jobs``. A job without ``job_id`` gets ``<order_id>-<purpose>``. A job with
        ``role`` ``label`` (or no role) is the waybill; role ``slip`` or an ESC/POS or
        ``slip`` document is the packing slip. Several jobs of one order form a
        ``print.submit`` group (``<order_id>-labels``), waybill as seq 1.
        """
        if attached is None:
            attached = [(o.order_id, o.print_jobs) for o in self.orders]
        out: list[dict[str, Any]] = []
        for order_id, order_jobs in attached:
            jobs = sorted((dict(j) for j in order_jobs),
                          key=lambda j: _purpose(j) != "waybill")
            used = set(self.print_jobs)
            for seq, job in enumerate(jobs, start=1):
                purpose = _purpose(job)
                if "job_id" not in job:
                    job_id, n = f"{order_id}-{purpose}", 2
                    while job_id in used:
                        job_id, n = f"{order_id}-{purpose}-{n}", n + 1
                    job["job_id"] = job_id
                used.add(job["job_id"])
                if len(jobs) > 1 and "group" not in job:
                    job["group"] = {"id": f"{order_id}-labels", "seq": seq,
                                    "size": len(jobs)}
                out.append(job)
        self.track_jobs(out)
        return tuple(out)

    def track_jobs(self, jobs: tuple[dict[str, Any], ...] | list[dict[str, Any]]) -> None:
        for job in jobs:
            job_id = str(job["job_id"])
            purpose = _purpose(job)
            if purpose == "waybill" and "role" not in job and self.waybill_jobs:
                purpose = "document"
            self.print_jobs[job_id] = {"job_id": job_id, "purpose": purpose,
                                       "state": "submitted"}
            if job.get("waybill"):
                self.waybills.add(str(job["waybill"]))
            if purpose == "waybill":
                self.waybill_jobs.append(job_id)

    def labels_done(self) -> bool:
        """Every waybill job printed or sent (every job, when none is a waybill)."""
        ids = self.waybill_jobs or list(self.print_jobs)
        return bool(ids) and all(self.print_jobs[i]["state"] in ("printed", "sent")
                                 for i in ids)

    def failed_jobs(self) -> tuple[str, ...]:
        return tuple(i for i, j in self.print_jobs.items()
                     if j["state"] in ("failed", "uncertain", "cancelled", "expired"))

    # --- evidence ---------------------------------------------------------------------

    def evidence(self, verdict: str, at: float, *, expected_g: float | None,
                 tolerance_g: float | None, reason: str | None = None) -> dict[str, Any]:
        """The parcel's record: what customer service reads when a buyer complains."""
        orders = []
        for order in self.orders:
            lines = [p for p in self.lines if p.order_id == order.order_id]
            orders.append({
                "order_id": order.order_id, "merge_id": order.merge_id,
                "priority": order.priority, "presale": order.presale,
                "lines": [{"sku": p.line.sku, "name": p.line.name,
                           "expected": p.line.quantity, "packed": p.packed,
                           "unit_weight_g": p.line.unit_weight_g, "gift": p.line.gift,
                           "serials": list(p.serials)} for p in lines],
                "expected_units": sum(p.line.quantity for p in lines),
                "packed_units": sum(p.packed for p in lines),
            })
        return {
            "kind": self.kind,
            "verdict": verdict,
            "reason": reason,
            "order_ids": list(self.order_ids),
            "orders": orders,
            "opened_by": self.opened_by,
            "waybill": self.waybill,
            "waybill_verified": self.waybill_verified,
            "packer": self.packer,
            "box": None if self.box is None else self.box.model_dump(mode="json"),
            "expected_weight_g": expected_g,
            "tolerance_g": tolerance_g,
            "stable_weight_g": self.stable_weight_g,
            "weights": list(self.weights),
            "overrides": list(self.overrides),
            "photos": [_photo_view(m, p) for m, p in self.photos.items()],
            "print_jobs": [dict(j) for j in self.print_jobs.values()],
            "missing": self.missing() if verdict == "abandoned" else [],
            "scans": list(self.scans),
            "started_at": iso_time(self.started_at),
            "finished_at": iso_time(at),
        }


def _purpose(job: dict[str, Any]) -> str:
    role = job.get("role")
    document = job.get("document")
    fmt = document.get("format") if isinstance(document, dict) else None
    if role == "slip" or fmt in ("escpos", "slip"):
        return "packing_slip"
    if role in (None, "label"):
        return "waybill"
    return str(role)


def _photo_view(moment: str, photo: dict[str, Any]) -> dict[str, Any]:
    if photo.get("state") == "pending":
        return {"moment": moment, "path": None, "at": photo.get("at"),
                "error": "no answer from the camera before the parcel finished"}
    return {"moment": moment, **{k: v for k, v in photo.items() if k != "state"}}
