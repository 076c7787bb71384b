"""What goes into and comes out of the packing flow: its config, events and actions.

:class:`agent.jobs.pack_flow.PackFlow` is a pure state machine: the daemon feeds it
events (scans and weight readings as the devices report them, plus the answers to the
actions it asked for) and carries out the actions it returns. Every event carries its
time ``at`` (Unix seconds); the flow never reads a clock. All types here are frozen and
JSON-safe through ``as_dict()``.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from agent.devices.readings import Scan, WeightReading
from agent.jobs.orders import Order

PHOTO_TRIGGERS = ("opened", "packed", "weighed", "labelled")
"""When a configured photo moment is taken (returns have ``returns_photo_moment``)."""


# --- config -----------------------------------------------------------------------------


class ControlCodes(BaseModel):
    """The control barcodes printed on the bench's card; each value is the barcode."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    cancel: str = "CTL-CANCEL"
    """Abandon the parcel (reported as such) and go back to a clean ``idle``."""
    reset: str = "CTL-RESET"
    """Start the open parcel over: every scanned item, serial and the box are cleared."""
    set_aside: str = "CTL-ASIDE"
    """Confirm an intercepted parcel was put aside."""
    reweigh: str = "CTL-REWEIGH"
    reprint: str = "CTL-REPRINT"
    returns: str = "CTL-RETURNS"
    """Switch ``idle`` <-> ``returns``."""
    done: str = "CTL-DONE"
    """Close a return."""
    resellable: str = "CTL-RESELLABLE"
    damaged: str = "CTL-DAMAGED"
    wrong_item: str = "CTL-WRONG-ITEM"
    logout: str = "CTL-LOGOUT"


class PackConfig(BaseModel):
    """How one bench runs the packing flow; every field has a working default."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    badge_prefix: str = "EMP-"
    """A scan starting with this is a packer's badge."""
    supervisor_badges: tuple[str, ...] = ()
    supervisor_prefix: str | None = "SUP-"
    """A badge in ``supervisor_badges`` or starting with this may override a weight."""
    reason_codes: dict[str, str] = Field(default_factory=lambda: {
        "RSN-PACKAGING-VARIANCE": "packaging weighs more or less than its tare",
        "RSN-ITEM-WEIGHT-VARIANCE": "the item's real weight differs from the catalogue",
        "RSN-SCALE-CHECKED": "scale checked with a test weight",
    })
    """Override reason barcodes and what they mean."""
    controls: ControlCodes = ControlCodes()
    tolerance_abs_g: Annotated[float, Field(ge=0)] = 20.0
    tolerance_rel_pct: Annotated[float, Field(ge=0, le=100)] = 5.0
    empty_below_g: Annotated[float, Field(ge=0)] = 5.0
    """A reading under this is an empty pan: the parcel was taken off."""
    photo_moments: dict[str, str] = Field(
        default_factory=lambda: {"open": "packed", "closed": "weighed"})
    """Photo moment -> when it is taken: ``opened`` (the parcel opens), ``packed`` (every
    item in), ``weighed`` (weight accepted) or ``labelled`` (the label scanned back is
    accepted: the closed box with its label). Moments are 1-64 letters, digits, _ or -."""

    @field_validator("photo_moments")
    @classmethod
    def _known_triggers(cls, value: dict[str, str]) -> dict[str, str]:
        for moment, when in value.items():
            if when not in PHOTO_TRIGGERS:
                raise ValueError(f"photo moment {moment!r}: {when!r} is not one of "
                                 f"{', '.join(PHOTO_TRIGGERS)}")
            if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", moment):
                raise ValueError(f"photo moment {moment!r} may hold only letters, digits, "
                                 f"_ and - (it names the photo file)")
        return value
    returns_photo_moment: Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")] | None = (
        "returned")
    """Taken at the first settled weight of a return; ``None``: no photo."""
    lookup_timeout_s: Annotated[float, Field(gt=0)] = 15.0
    """Give up waiting for ``OrderFound``/``OrderNotFound`` after this."""
    weighing_prompt_s: Annotated[float, Field(gt=0)] = 20.0
    """In ``weighing`` this long without a weight: say "put the parcel on the scale"."""
    labels_prompt_s: Annotated[float, Field(gt=0)] = 30.0
    """In ``labelling`` this long without a printed waybill: say so, offer reprint."""
    abandon_after_s: Annotated[float, Field(gt=0)] | None = 1800.0
    """A parcel or return with no scan and no change for this long is abandoned
    (reported, with the reason) so the bench is clean for whoever comes next; an
    intercepted parcel waits for set-aside however long it takes. ``None``: never."""
    logout_after_s: Annotated[float, Field(gt=0)] | None = 3600.0
    """The packer is logged out after this long between parcels without a scan, so the
    next packer's parcels are not recorded under their name. ``None``: never."""
    max_weights: Annotated[int, Field(ge=1)] = 50
    """Settled readings kept in one evidence record."""
    unverified_label: Literal["refuse", "accept"] = "refuse"
    """When nothing told the bench the parcel's waybill number (the order's ``waybills``,
    a print job's ``waybill``, ``pack.labels``), the label scanned back cannot be checked.
    ``refuse``: the parcel cannot complete (the packer cancels it, or the central system
    sends the number with ``pack.labels``); ``accept``: the scanned label is recorded
    with ``waybill_verified: false``."""


# --- events -------------------------------------------------------------------------------


class _JsonSafe:
    __slots__ = ()

    def as_dict(self) -> dict[str, Any]:
        return {f.name: _plain(getattr(self, f.name))
                for f in dataclasses.fields(self)}  # type: ignore[arg-type]


def _plain(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return value


@dataclass(frozen=True, slots=True)
class ParcelInfo(_JsonSafe):
    """The orders one scan opened (one, or several merged), as the order book knows them.

    ``states`` maps each order id to ``(state, reason)``: state is ``open``, ``held``,
    ``cancelled`` or ``packed``. ``packed`` maps a packed order id to ``(packed_at,
    waybill)`` when the book knows them.
    """

    orders: tuple[Order, ...]
    states: dict[str, tuple[str, str | None]] = field(default_factory=dict)
    packed: dict[str, tuple[float | None, str | None]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Tick(_JsonSafe):
    """Time passed: timeouts are checked here."""

    at: float


@dataclass(frozen=True, slots=True)
class OrderFound(_JsonSafe):
    """The answer to :class:`LookupOrder`: the parcel ``code`` opens."""

    code: str
    parcel: ParcelInfo
    at: float


@dataclass(frozen=True, slots=True)
class OrderNotFound(_JsonSafe):
    """The lookup failed: ``unknown_order``, ``central_unreachable`` or ``lookup_timeout``."""

    code: str
    error_code: str
    message: str
    at: float


@dataclass(frozen=True, slots=True)
class OrderIntercepted(_JsonSafe):
    """The central system held or cancelled an order (``state``: held, cancelled, open)."""

    order_id: str
    state: str
    reason: str | None
    at: float


@dataclass(frozen=True, slots=True)
class OrderUpdated(_JsonSafe):
    """The central system pushed this order again (or a new order of a merged parcel)."""

    order: Order
    at: float


@dataclass(frozen=True, slots=True)
class PhotoTaken(_JsonSafe):
    moment: str
    path: str
    at: float
    parcel: int | None = None
    """The ``TakePhoto.parcel`` it answers; a photo of another parcel is ignored."""


@dataclass(frozen=True, slots=True)
class PhotoFailed(_JsonSafe):
    moment: str
    reason: str
    at: float
    parcel: int | None = None


@dataclass(frozen=True, slots=True)
class PrintResult(_JsonSafe):
    """A print job's new state (``agent.jobs.print_model.JobState`` values).

    ``waybill`` is the waybill number when the print service or the central system knows
    it; ``printer`` and ``message`` explain a hold or failure (``paper out``).
    """

    job_id: str
    state: str
    at: float
    waybill: str | None = None
    printer: str = ""
    code: str | None = None
    message: str = ""
    group: str | None = None
    """The job's ``group.id``, if it has one."""


@dataclass(frozen=True, slots=True)
class LabelsReady(_JsonSafe):
    """The central system's answer to :class:`RequestLabels`.

    ``jobs`` (``print.submit`` args) are submitted by the flow; empty when the central
    system submitted them itself and only :class:`PrintResult` events will follow.
    """

    order_ids: tuple[str, ...]
    at: float
    waybill: str | None = None
    jobs: tuple[dict[str, Any], ...] = ()


Event = (Scan | WeightReading | Tick | OrderFound | OrderNotFound | OrderIntercepted
         | OrderUpdated | PhotoTaken | PhotoFailed | PrintResult | LabelsReady)


# --- actions ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Signal(_JsonSafe):
    """Light/buzz the signal device: ``good``, ``bad`` or ``intercept``."""

    kind: str


@dataclass(frozen=True, slots=True)
class LookupOrder(_JsonSafe):
    """Find the parcel ``code`` opens; answer with OrderFound or OrderNotFound."""

    code: str


@dataclass(frozen=True, slots=True)
class ReportIntercept(_JsonSafe):
    """Tell the central system an intercepted parcel was stopped at the bench."""

    record: dict[str, Any]


@dataclass(frozen=True, slots=True)
class TakePhoto(_JsonSafe):
    """Take a photo for ``moment``; answer with PhotoTaken or PhotoFailed carrying
    ``parcel`` (which parcel of this run of the flow asked: a late answer for a parcel
    that ended is not filed under the next one)."""

    moment: str
    parcel: int = field(default=0, compare=False)


@dataclass(frozen=True, slots=True)
class SubmitPrint(_JsonSafe):
    """Submit these ``print.submit`` args (each with a ``job_id``), waybill first."""

    jobs: tuple[dict[str, Any], ...]


@dataclass(frozen=True, slots=True)
class RequestLabels(_JsonSafe):
    """Ask the central system for the labels now the weight is known."""

    order_ids: tuple[str, ...]
    weight_g: float


@dataclass(frozen=True, slots=True)
class Reprint(_JsonSafe):
    """``print.reprint`` these jobs (the packer scanned the reprint code)."""

    job_ids: tuple[str, ...]
    reason: str


@dataclass(frozen=True, slots=True)
class ReportResult(_JsonSafe):
    """The parcel is finished (packed, abandoned or returned): its evidence record."""

    evidence: dict[str, Any]


Action = (Signal | LookupOrder | ReportIntercept | TakePhoto | SubmitPrint | RequestLabels
          | Reprint | ReportResult)
