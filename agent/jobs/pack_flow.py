"""The packing flow: a pure state machine from scans and weights to a verified parcel.

``PackFlow.handle(event) -> list[Action]`` is the whole interface, with ``snapshot()``
for the bench display. No clock is read and nothing is done here: the daemon carries out
the actions (look an order up, light the stack light, take a photo, print, report) and
feeds their answers back as events. ``docs/pack-flow.md`` has the state diagram and the
words the packer sees.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from agent.devices.readings import Scan, WeightReading
from agent.jobs.orders import Order
from agent.jobs.pack_events import (
    Action,
    Event,
    LabelsReady,
    LookupOrder,
    OrderFound,
    OrderIntercepted,
    OrderNotFound,
    OrderUpdated,
    PackConfig,
    PhotoFailed,
    PhotoTaken,
    PrintResult,
    ReportResult,
    Signal,
    Tick,
)
from agent.jobs.pack_session import LineProgress, fmt_g
from agent.jobs.pack_steps import OPEN_PARCEL, PackState, Steps
from agent.jobs.pack_view import bench_view
from agent.outbox import iso_time


class PackFlow(Steps):
    """The packing bench's state machine.

    Args:
        config: the bench's codes, tolerances, photo moments and timeouts.
    """

    def __init__(self, config: PackConfig | None = None) -> None:
        super().__init__(config or PackConfig())

    def handle(self, event: Event, mono: float | None = None) -> list[Action]:
        """Apply one event; return what the daemon must do, in order.

        ``mono`` is the monotonic time it is handled at (``time.monotonic()``); the
        timers count on it. Without it the event's wall time ``at`` is used (a test's
        steady clock).
        """
        self.mono = event.at if mono is None else mono
        before = self._view()
        handler = self._handlers().get(type(event))
        actions = handler(event) if handler else []
        if self._view() != before:
            self.changed_at = event.at
        return actions

    def snapshot(self) -> dict[str, Any]:
        """The bench state for displays: JSON-safe, small, published at every change."""
        view = self._view()
        view["changed_at"] = None if self.changed_at is None else iso_time(self.changed_at)
        return view

    def _view(self) -> dict[str, Any]:
        return bench_view(self)

    def _handlers(self) -> dict[type, Callable[[Any], list[Action]]]:
        return {Scan: self._on_scan, WeightReading: self._on_weight, Tick: self._on_tick,
                OrderFound: self._on_found, OrderNotFound: self._on_not_found,
                OrderIntercepted: self._on_intercepted, OrderUpdated: self._on_updated,
                PhotoTaken: self._on_photo,
                PhotoFailed: self._on_photo, PrintResult: self._on_print,
                LabelsReady: self._on_labels}

    # --- scans --------------------------------------------------------------------------

    def _on_scan(self, scan: Scan) -> list[Action]:
        self.news = None
        self.active_mono = self.mono
        data = scan.data.strip()
        if self.state == PackState.LOGGED_OUT:
            if self._is_badge(data):
                return self._login(data, scan.at)
            return self._reject(scan, "not_logged_in", "nobody is logged in")
        if data == self.config.controls.cancel:
            return self._cancel(scan)
        handler = {
            PackState.IDLE: self._scan_idle,
            PackState.LOOKING_UP: self._scan_looking_up,
            PackState.INTERCEPTED: self._scan_intercepted,
            PackState.PACKING: self._scan_packing,
            PackState.WEIGHING: self._scan_weighing,
            PackState.WEIGHT_MISMATCH: self._scan_mismatch,
            PackState.LABELLING: self._scan_labelling,
            PackState.VERIFY_LABEL: self._scan_verify,
            PackState.RETURNS: self._scan_idle,
            PackState.RETURNS_CHECKING: self._scan_returns,
        }[self.state]
        return handler(scan, data)

    def _scan_idle(self, scan: Scan, data: str) -> list[Action]:
        c = self.config.controls
        if self._is_badge(data):
            return self._login(data, scan.at)
        if data == c.returns:
            returns = self.state == PackState.IDLE
            self._go(PackState.RETURNS if returns else PackState.IDLE, scan.at)
            self.mode = "returns" if returns else "pack"
            return [Signal("good")]
        if data == c.logout:
            self.packer, self.mode = None, "pack"
            self._go(PackState.LOGGED_OUT, scan.at)
            return [Signal("good")]
        if self._is_control(data):
            return self._reject(scan, "not_now", f"{data} does nothing now")
        self.pending_code, self.lookup_mono = data, self.mono
        self._go(PackState.LOOKING_UP, scan.at)
        return [LookupOrder(data)]

    def _scan_looking_up(self, scan: Scan, data: str) -> list[Action]:
        return self._reject(scan, "busy", f"still looking up {self.pending_code}")

    def _scan_intercepted(self, scan: Scan, data: str) -> list[Action]:
        if data == self.config.controls.set_aside:
            return self._cancel(scan)
        return self._reject(scan, "intercepted", "this parcel is intercepted: nothing else "
                            "is accepted")

    def _scan_packing(self, scan: Scan, data: str) -> list[Action]:
        s = self._session()
        if (refused := self._refuse_common(scan, data)) is not None:
            return refused
        if self.pending_serial is not None:
            return self._take_serial(scan, data)
        box = s.packaging().get(data)
        if box is not None:
            s.box = box
            s.record_scan(scan, "box", box=box.code)
            named = f" ({box.name})" if box.name else ""
            self.news = f"box {box.code}{named} selected, tare {fmt_g(box.tare_g)}"
            return [Signal("good"), *self._check_packed(scan.at)]
        if data in s.codes:
            return self._reject(scan, "already_open", f"order {data} is already open")
        lines = s.lines_for(scan)
        if not lines:
            return self._reject(scan, "wrong_item", f"{data} is not in this order")
        open_lines = [p for p in lines if not p.complete]
        if not open_lines:
            p = lines[0]
            return self._reject(scan, "over_quantity", f"already {p.packed} of "
                                f"{p.line.quantity} {p.label}")
        line = open_lines[0]
        if line.line.serial_required:
            serial = self._gs1_serial(scan)
            if serial is None:
                self.pending_serial = line
                s.record_scan(scan, "awaiting_serial", order_id=line.order_id,
                              sku=line.line.sku)
                self.news = f"{line.label} scanned"
                return []
            return self._count(scan, line, serial, "accepted")
        return self._count(scan, line, None, "accepted")

    def _count(self, scan: Scan, line: LineProgress, serial: str | None,
               outcome: str) -> list[Action]:
        """One more unit of ``line`` (with its ``serial``, unless already in the parcel)."""
        s = self._session()
        if serial is not None:
            if s.serial_taken(serial):
                return self._reject(scan, "duplicate_serial", f"duplicate serial {serial}: "
                                    "already captured in this parcel")
            line.serials.append(serial)
            if outcome == "serial":
                self.pending_serial = None
        line.packed += 1
        s.last_item_mono = self.mono
        s.record_scan(scan, outcome, order_id=line.order_id, sku=line.line.sku, serial=serial)
        self.news = f"{line.label}: {line.packed} of {line.line.quantity}" + (
            f", serial {serial}" if outcome == "serial" else "")
        return [Signal("good"), *self._check_packed(scan.at)]

    def _not_a_serial(self, scan: Scan, data: str) -> bool:
        """A scan that is something else: a badge, a control or reason code, or a product
        (a GS1 GTIN, or all digits of a GTIN's length: EAN-8, UPC-A, EAN-13, GTIN-14)."""
        if self._is_badge(data) or data in self.config.reason_codes:
            return True
        if data in self.config.controls.model_dump().values():
            return True
        if scan.gs1 and ("01" in scan.gs1 or "gtin" in scan.gs1):
            return True
        return data.isdigit() and len(data) in (8, 12, 13, 14)

    def _take_serial(self, scan: Scan, data: str) -> list[Action]:
        s, line = self._session(), self.pending_serial
        assert line is not None
        if s.lines_for(scan) or data in s.packaging() or data in s.codes \
                or self._not_a_serial(scan, data):
            return self._reject(scan, "serial_expected", f"{data} is a barcode, not a "
                                f"serial number: scan the serial number of {line.label}")
        return self._count(scan, line, data, "serial")

    def _scan_weighing(self, scan: Scan, data: str) -> list[Action]:
        if (refused := self._refuse_common(scan, data)) is not None:
            return refused
        if data == self.config.controls.reweigh:
            self._session().record_scan(scan, "control")
            self.weighing_prompted = False
            self.news = "weighing again"
            return []
        return self._refuse_extra(scan, data, "every item is in: put the parcel on the "
                                  "scale")

    def _scan_mismatch(self, scan: Scan, data: str) -> list[Action]:
        c, s = self.config.controls, self._session()
        if (refused := self._refuse_common(scan, data, badges=False)) is not None:
            return refused
        if data == c.reweigh:
            s.record_scan(scan, "control")
            self.supervisor = None
            self._go(PackState.WEIGHING, scan.at)
            self.news = "weighing again: the next settled weight counts"
            return []
        if self.supervisor is not None:
            if data in self.config.reason_codes:
                return self._override(scan, data)
            return self._reject(scan, "not_a_reason", f"{data} is not an override reason "
                                "code")
        if self._is_badge(data):
            if not self._is_supervisor(data):
                return self._reject(scan, "not_supervisor", f"{data} is not a supervisor "
                                    "badge")
            self.supervisor = data
            s.record_scan(scan, "supervisor")
            self.news = f"supervisor {data}: scan the reason code"
            return []
        return self._refuse_extra(scan, data, "the weight is off")

    def _scan_labelling(self, scan: Scan, data: str) -> list[Action]:
        if (refused := self._refuse_common(scan, data, reset=False)) is not None:
            return refused
        if data == self.config.controls.reprint:
            return self._reprint(scan)
        return self._reject(scan, "not_now", "the label is not printed yet")

    def _scan_verify(self, scan: Scan, data: str) -> list[Action]:
        s = self._session()
        if (refused := self._refuse_common(scan, data, reset=False)) is not None:
            return refused
        if data == self.config.controls.reprint:
            return self._reprint(scan)
        if data in s.waybills:
            s.waybill, s.waybill_verified = data, True
            s.record_scan(scan, "waybill", waybill=data)
            return self._complete(scan.at)
        if (self._is_control(data) or s.lines_for(scan) or data in s.codes
                or data in s.packaging()):
            return self._reject(scan, "not_waybill", f"{data} is not a waybill label")
        if not s.waybills:
            if self.config.unverified_label == "refuse":
                return self._reject(scan, "waybill_unknown", self._no_waybill_words())
            # The bench may not check it: record what was scanned, unverified.
            s.waybill, s.waybill_verified = data, False
            s.record_scan(scan, "waybill", waybill=data)
            return self._complete(scan.at)
        return self._reject(scan, "wrong_label", f"wrong label: this box is for "
                            f"{' or '.join(sorted(s.waybills))}, the label says {data}")

    def _scan_returns(self, scan: Scan, data: str) -> list[Action]:
        c, check = self.config.controls, self.returns
        assert check is not None
        if self._is_badge(data):
            return self._reject(scan, "badge_refused", "finish or cancel this return first")
        classes = {c.resellable: "resellable", c.damaged: "damaged",
                   c.wrong_item: "wrong_item"}
        pending = check.pending
        if data in classes:
            if pending is None:
                return self._reject(scan, "nothing_to_classify", "scan an item first")
            pending.condition = classes[data]
            check.session.record_scan(scan, "classified", condition=pending.condition)
            self.news = f"recorded as {pending.condition.replace('_', ' ')}"
            return [Signal("good")]
        if pending is not None:
            name = pending.line.label if pending.line else pending.data
            return self._reject(scan, "classify_first", f"classify {name} first")
        if data == c.done:
            check.session.record_scan(scan, "control")
            return self._finish_return(scan.at)
        if self._is_control(data):
            return self._reject(scan, "not_now", f"{data} does nothing now")
        unit, self.news = check.add_unit(scan)
        check.session.record_scan(scan, "returned", sku=unit.line.line.sku if unit.line
                                  else None, condition=unit.condition)
        return [Signal("good" if unit.condition is None else "bad")]

    # --- other events -------------------------------------------------------------------

    def _on_found(self, event: OrderFound) -> list[Action]:
        if self.state != PackState.LOOKING_UP or event.code != self.pending_code:
            return []
        return self._open_parcel(event)

    def _on_not_found(self, event: OrderNotFound) -> list[Action]:
        if self.state != PackState.LOOKING_UP or event.code != self.pending_code:
            return []
        words = {"unknown_order": f"order {event.code} is unknown to the central system",
                 "central_unreachable": f"central system unreachable: {event.message}",
                 "lookup_timeout": f"the central system did not answer about {event.code}: "
                                   f"{event.message}"}
        return self._lookup_failed(event.at, event.error_code,
                                   words.get(event.error_code, event.message))

    def _on_tick(self, event: Tick) -> list[Action]:
        waited = self.mono - self.state_mono
        quiet = self.mono - max(self.active_mono, self.state_mono)
        c = self.config
        if (c.abandon_after_s is not None and quiet >= c.abandon_after_s
                and (self.session is not None or self.returns is not None)
                and self.state != PackState.INTERCEPTED):
            # Left open (the packer walked away): a clean bench for whoever comes next.
            return [Signal("bad"), *self._abandon(
                event.at, f"nothing happened for {c.abandon_after_s / 60:g} min while "
                f"{self.state.value}")]
        if (c.logout_after_s is not None and quiet >= c.logout_after_s
                and self.state in (PackState.IDLE, PackState.RETURNS)):
            self.news = (f"{self.packer} logged out after {c.logout_after_s / 60:g} min "
                         f"without a scan")
            self.packer, self.mode = None, "pack"
            self._go(PackState.LOGGED_OUT, event.at)
            return []
        if (self.state == PackState.LOOKING_UP and self.lookup_mono is not None
                and self.mono - self.lookup_mono >= self.config.lookup_timeout_s):
            return self._lookup_failed(
                event.at, "lookup_timeout", f"no answer about order {self.pending_code} "
                f"within {self.config.lookup_timeout_s:g} s")
        if (self.state == PackState.WEIGHING and not self.weighing_prompted
                and waited >= self.config.weighing_prompt_s):
            self.weighing_prompted = True
            self.news = "no weight yet: put the parcel on the scale"
        if (self.state == PackState.LABELLING and not self.labels_prompted
                and waited >= self.config.labels_prompt_s):
            self.labels_prompted = True
            self.news = f"no label after {waited:.0f} s: check the label printer"
        return []

    def _on_intercepted(self, event: OrderIntercepted) -> list[Action]:
        s = self.session
        if (self.state in OPEN_PARCEL and s is not None and event.order_id in s.order_ids
                and event.state in ("held", "cancelled")):
            return self._intercept(event.order_id, event.state, event.reason, event.at)
        return []

    def _on_updated(self, event: OrderUpdated) -> list[Action]:
        """A new version of an order being packed, or a new order of its merged parcel:
        what was checked no longer holds. The parcel is abandoned (reported) and the
        packer scans the order again, which loads what the central system sent."""
        s, new = self.session, event.order
        if self.state not in OPEN_PARCEL or s is None:
            return []
        mine = next((o for o in s.orders if o.order_id == new.order_id), None)
        if mine is not None:
            if _checked(mine) == _checked(new):
                # Nothing checked so far changed (a waybill number, the note, print jobs):
                # the parcel goes on with the new version.
                s.orders = tuple(new if o.order_id == new.order_id else o for o in s.orders)
                for waybill in new.waybills:
                    self._learn_waybill(waybill)
                return []
            why = f"order {new.order_id} was changed by the central system"
        elif new.merge_id is not None and new.merge_id in {o.merge_id for o in s.orders}:
            why = f"order {new.order_id} joined this merged parcel"
        else:
            return []
        actions = self._abandon(event.at, f"{why} while {self.state.value}")
        self._rejected("order_changed", f"{why}: unpack the parcel and scan the order again",
                       event.at)
        return [Signal("bad"), *actions]

    def _on_photo(self, event: PhotoTaken | PhotoFailed) -> list[Action]:
        s = self.returns.session if self.returns else self.session
        if s is None or event.moment not in s.photos or event.parcel not in (None, s.number):
            return []
        if isinstance(event, PhotoTaken):
            s.photos[event.moment] = {"path": event.path, "at": iso_time(event.at)}
        else:
            s.photos[event.moment] = {"path": None, "at": iso_time(event.at),
                                      "error": event.reason}
            self.news = f"photo {event.moment} failed: {event.reason}"
        return []

    def _lookup_failed(self, at: float, code: str, reason: str) -> list[Action]:
        self._go(PackState.RETURNS if self.mode == "returns" else PackState.IDLE, at)
        self._rejected(code, reason, at)
        return [Signal("bad")]

    def _finish_return(self, at: float) -> list[Action]:
        check = self.returns
        assert check is not None
        evidence = check.evidence("returned", at)
        self.last_parcel = {"order_ids": list(check.session.order_ids), "verdict": "returned",
                            "waybill": check.session.opened_by, "at": iso_time(at)}
        self._clear()
        self._go(PackState.RETURNS, at)
        self.news = f"return of {', '.join(evidence['order_ids'])} recorded"
        return [Signal("good"), ReportResult(evidence)]

    def _cancel(self, scan: Scan) -> list[Action]:
        s = self.returns.session if self.returns else self.session
        if s is None:
            if self.state == PackState.LOOKING_UP:
                self.news = f"lookup of {self.pending_code} cancelled"
            self._clear()
            self.mode = "pack"
            self._go(PackState.IDLE, scan.at)
            return []
        s.record_scan(scan, "control")
        if self.state == PackState.INTERCEPTED and self.intercept:
            reason = (f"intercepted: order {self.intercept['order_id']} is "
                      f"{self.intercept['state']}; set aside")
        else:
            reason = f"cancelled by the packer while {self.state.value}"
        actions = self._abandon(scan.at, reason)
        self.mode = "pack"
        self._go(PackState.IDLE, scan.at)
        return actions

    def _abandon(self, at: float, reason: str) -> list[Action]:
        """End the open parcel or return unfinished: reported as ``abandoned`` with
        ``reason``; the bench goes back to ``idle`` (``returns`` in returns mode)."""
        s = self.returns.session if self.returns else self.session
        assert s is not None
        if self.returns:
            evidence = self.returns.evidence("abandoned", at, reason=reason)
        else:
            evidence = self._evidence("abandoned", at, reason)
        self.news = f"{', '.join(s.order_ids)} abandoned: {reason}"
        self._clear()
        self._go(PackState.RETURNS if self.mode == "returns" else PackState.IDLE, at)
        return [ReportResult(evidence)]


def _checked(order: Order) -> tuple[Any, ...]:
    """What the packer's scans and the weight were checked against."""
    return order.lines, order.packaging, order.tolerance, order.merge_id
