"""Orders as the central system sends them: what must go into one parcel.

An order names its lines (a SKU, every barcode that identifies it, the quantity, the
unit weight, whether a serial number must be captured, whether it is a gift), the boxes
it may be packed in with their tare weights, an optional weight tolerance, flags
(presale, priority) and a note for the packer. Orders with the same ``merge_id`` (one
buyer, one address, one day: 合单) are packed as one parcel.

The models are the one validation of an order: ``order.push`` checks its args against
:data:`ORDER_SCHEMA` (generated from them) and builds :class:`Order` with
``Order.model_validate``; both say which field is wrong.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from agent.jobs.print_model import ATTACHED_JOB_SCHEMA

_ID = r"^[\x21-\x7e]{1,128}$"
"""Order ids, waybill numbers, SKUs and barcodes: printable ASCII, no spaces."""

Code = Annotated[str, Field(pattern=_ID)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class OrderLine(_Model):
    """One line of an order: ``quantity`` units of one SKU."""

    sku: Code
    name: Annotated[str, Field(max_length=200)] = ""
    barcodes: Annotated[tuple[Code, ...], Field(min_length=1, max_length=32)]
    """Every barcode that identifies the item: EAN/GTIN, UPC, internal codes."""
    quantity: Annotated[int, Field(ge=1, le=100_000)]
    unit_weight_g: Annotated[float, Field(ge=0, le=1_000_000)]
    serial_required: bool = False
    """A serial number (GS1 AI 21, or a separate scan) must be captured for each unit."""
    gift: bool = False
    """A free item (赠品) promised with the order: it must be packed like any other."""


class Packaging(_Model):
    """A box or bag the order may be packed in; scanning ``code`` selects it."""

    code: Code
    name: Annotated[str, Field(max_length=100)] = ""
    tare_g: Annotated[float, Field(ge=0, le=100_000)]


class Tolerance(_Model):
    """Weight tolerance: the larger of ``abs_g`` and ``rel_pct`` percent of the expected."""

    abs_g: Annotated[float, Field(ge=0, le=100_000)] | None = None
    rel_pct: Annotated[float, Field(ge=0, le=100)] | None = None


class Order(_Model):
    """One order as pushed by the central system (``order.push``)."""

    order_id: Code
    waybills: Annotated[tuple[Code, ...], Field(max_length=16)] = ()
    """Waybill numbers already known (pre-printed waybills open the parcel too)."""
    pick_codes: Annotated[tuple[Code, ...], Field(max_length=16)] = ()
    """Pick list or tote barcodes that identify the order at the bench."""
    merge_id: Code | None = None
    """Orders with the same ``merge_id`` are one parcel (合单)."""
    lines: Annotated[tuple[OrderLine, ...], Field(min_length=1, max_length=500)]
    packaging: Annotated[tuple[Packaging, ...], Field(max_length=50)] = ()
    tolerance: Tolerance | None = None
    presale: bool = False
    priority: bool = False
    note: Annotated[str, Field(max_length=500)] = ""
    """Shown to the packer when the parcel opens."""
    print_jobs: Annotated[tuple[dict[str, Any], ...], Field(
        max_length=10, json_schema_extra={"items": ATTACHED_JOB_SCHEMA})] = ()
    """``print.submit`` args (waybill, packing slip) printed once the parcel passes; the
    JSON Schema checks them (the model takes any object)."""

    @model_validator(mode="after")
    def _unambiguous(self) -> Order:
        skus = [line.sku for line in self.lines]
        if len(set(skus)) != len(skus):
            raise ValueError("lines: every sku may appear once; add the quantities")
        owner: dict[str, str] = {}
        for line in self.lines:
            for code in line.barcodes:
                if owner.setdefault(code, line.sku) != line.sku:
                    raise ValueError(f"barcode {code} identifies both {owner[code]} and "
                                     f"{line.sku}: a scan would be ambiguous")
        for box in self.packaging:
            if box.code in owner:
                raise ValueError(f"packaging code {box.code} is also the barcode of "
                                 f"{owner[box.code]}")
        return self

    def codes(self) -> set[str]:
        """The barcodes that open this order's parcel: order id, waybills, pick codes."""
        return {self.order_id, *self.waybills, *self.pick_codes}


ORDER_SCHEMA: dict[str, Any] = Order.model_json_schema()
"""JSON Schema of one order (draft 2020-12, generated from :class:`Order`)."""
