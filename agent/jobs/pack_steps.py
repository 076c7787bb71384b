"""The packing flow's state and the steps its transitions share.

:class:`Steps` holds what :class:`agent.jobs.pack_flow.PackFlow` knows between events
(state, packer, the open parcel) and the steps several states take: opening a parcel,
rejecting a scan, weighing, overriding, printing and completing.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from agent.devices.readings import Scan, WeightReading
from agent.jobs.pack_events import (
    Action,
    LabelsReady,
    OrderFound,
    PackConfig,
    PrintResult,
    ReportIntercept,
    ReportResult,
    Reprint,
    RequestLabels,
    Signal,
    SubmitPrint,
    TakePhoto,
)
from agent.jobs.pack_returns import ReturnCheck
from agent.jobs.pack_session import LineProgress, ParcelSession, fmt_g, scan_serial
from agent.outbox import iso_time


class PackState(StrEnum):
    """Where the bench is; ``docs/pack-flow.md`` has the diagram."""

    LOGGED_OUT = "logged_out"
    IDLE = "idle"
    LOOKING_UP = "looking_up"
    INTERCEPTED = "intercepted"
    PACKING = "packing"
    WEIGHING = "weighing"
    WEIGHT_MISMATCH = "weight_mismatch"
    LABELLING = "labelling"
    VERIFY_LABEL = "verify_label"
    RETURNS = "returns"
    RETURNS_CHECKING = "returns_checking"


OPEN_PARCEL = frozenset({PackState.PACKING, PackState.WEIGHING, PackState.WEIGHT_MISMATCH,
                         PackState.LABELLING, PackState.VERIFY_LABEL})
"""States with a parcel being packed: an intercept stops them."""


class Steps:
    """State of the flow and the steps shared by its transitions."""

    def __init__(self, config: PackConfig) -> None:
        self.config = config
        self.state: PackState = PackState.LOGGED_OUT
        self.state_since = 0.0
        """Wall time the state was entered (shown); its timers use ``state_mono``."""
        self.mono = 0.0
        """The monotonic time of the event being handled: every timer counts on it, so a
        wall clock that jumps (NTP, ``date -s``) abandons nothing."""
        self.state_mono = 0.0
        self.changed_at: float | None = None
        self.packer: str | None = None
        self.mode = "pack"
        self.news: str | None = None
        self.last_rejection: dict[str, Any] | None = None
        self.last_parcel: dict[str, Any] | None = None
        self.last_weight_g: float | None = None
        self.active_mono = 0.0
        """The packer's last scan (monotonic): the inactivity timeouts count from it."""
        self.opened = 0
        """Parcels and returns opened so far: numbers them for their photos."""
        self._last_settled: WeightReading | None = None
        self._last_settled_mono = 0.0
        self._clear()

    def _clear(self) -> None:
        self.session: ParcelSession | None = None
        self.returns: ReturnCheck | None = None
        self.pending_code: str | None = None
        self.lookup_mono: float | None = None
        self.pending_serial: LineProgress | None = None
        self.supervisor: str | None = None
        self.intercept: dict[str, Any] | None = None
        self.verdict: str | None = None
        self.weighing_prompted = False
        self.labels_prompted = False

    def _go(self, state: PackState, at: float) -> None:
        self.state, self.state_since, self.state_mono = state, at, self.mono
        self.weighing_prompted = self.labels_prompted = False

    def _session(self) -> ParcelSession:
        assert self.session is not None, f"no open parcel in {self.state}"
        return self.session

    # --- codes --------------------------------------------------------------------------

    def _is_supervisor(self, data: str) -> bool:
        prefix = self.config.supervisor_prefix
        return data in self.config.supervisor_badges or bool(prefix and data.startswith(prefix))

    def _is_badge(self, data: str) -> bool:
        return data.startswith(self.config.badge_prefix) or self._is_supervisor(data)

    def _is_control(self, data: str) -> bool:
        return (data in self.config.controls.model_dump().values()
                or data in self.config.reason_codes)

    @staticmethod
    def _gs1_serial(scan: Scan) -> str | None:
        return scan_serial(scan)

    # --- shared steps -------------------------------------------------------------------

    def _login(self, badge: str, at: float) -> list[Action]:
        self.packer = badge
        self.mode = "pack"
        self.news = f"{badge} logged in"
        self.last_rejection = None
        self._go(PackState.IDLE, at)
        return [Signal("good")]

    def _rejected(self, code: str, reason: str, at: float) -> None:
        self.news = reason
        self.last_rejection = {"code": code, "reason": reason, "at": iso_time(at)}

    def _reject(self, scan: Scan, code: str, reason: str) -> list[Action]:
        self._rejected(code, reason, scan.at)
        s = self.returns.session if self.returns else self.session
        if s is not None:
            s.record_scan(scan, "rejected", reason, code=code)
        return [Signal("bad")]

    def _refuse_common(self, scan: Scan, data: str, *, badges: bool = True,
                       reset: bool = True) -> list[Action] | None:
        """Badges and the reset code, the same in every state of an open parcel."""
        if badges and self._is_badge(data):
            return self._reject(scan, "badge_refused", "a badge logs in another packer only "
                                "between parcels: finish or cancel this parcel first")
        if data == self.config.controls.reset:
            if not reset:
                return self._reject(scan, "not_now", "the label is printing: scan cancel to "
                                    "abandon this parcel")
            s = self._session()
            s.reset_items()
            s.record_scan(scan, "control")
            self.pending_serial, self.supervisor, self.verdict = None, None, None
            self._go(PackState.PACKING, scan.at)
            self.news = "parcel started over: scan every item again"
            return []
        return None

    def _refuse_extra(self, scan: Scan, data: str, why: str) -> list[Action]:
        s = self._session()
        if self._is_control(data):
            return self._reject(scan, "not_now", f"{data} does nothing now")
        if data in s.packaging():
            return self._reject(scan, "box_locked", "the box can no longer change: scan "
                                "reset to start over")
        lines = s.lines_for(scan)
        if lines:
            p = lines[0]
            return self._reject(scan, "over_quantity", f"already {p.packed} of "
                                f"{p.line.quantity} {p.label}")
        if s.codes & {data}:
            return self._reject(scan, "already_open", f"{why}")
        return self._reject(scan, "wrong_item", f"{data} is not in this order")

    def _open_parcel(self, event: OrderFound) -> list[Action]:
        orders = event.parcel.orders
        if not orders:
            self._go(PackState.IDLE, event.at)
            self._rejected("unknown_order", f"order {event.code} is unknown", event.at)
            return [Signal("bad")]
        session = ParcelSession.open(orders, self.packer, event.code, event.at,
                                     kind="return" if self.mode == "returns" else "pack")
        self.opened += 1
        session.number = self.opened
        if self.mode == "returns":
            self.returns = ReturnCheck(session)
            self._go(PackState.RETURNS_CHECKING, event.at)
            self.news = f"return of {', '.join(session.order_ids)}"
            return [Signal("good")]
        states = event.parcel.states
        for order_id in session.order_ids:
            state, reason = states.get(order_id, ("open", None))
            if state in ("held", "cancelled"):
                self.session = session
                return self._intercept(order_id, state, reason, event.at)
        for order_id in session.order_ids:
            if states.get(order_id, ("open", None))[0] == "packed":
                packed_at, waybill = event.parcel.packed.get(order_id, (None, None))
                when = f" on {iso_time(packed_at)}" if packed_at is not None else ""
                waybill = waybill or ", ".join(orders[0].waybills) or "unknown"
                self._go(PackState.IDLE, event.at)
                self._rejected("already_packed", f"order {order_id} was already packed"
                               f"{when} with waybill {waybill}", event.at)
                return [Signal("bad")]
        self.session = session
        self._go(PackState.PACKING, event.at)
        flags = f" ({', '.join(session.flags)})" if session.flags else ""
        self.news = f"order {', '.join(session.order_ids)} opened{flags}"
        self.last_rejection = None
        return [*self._photos("opened"), *self._check_packed(event.at)]

    def _intercept(self, order_id: str, state: str, reason: str | None,
                   at: float) -> list[Action]:
        """Stop the parcel: only the set-aside (or cancel) code is accepted from here."""
        s = self._session()
        record = {"order_id": order_id, "order_ids": list(s.order_ids), "state": state,
                  "reason": reason, "packer": self.packer, "code": s.opened_by,
                  "stage": self.state.value, "scanned_units": sum(p.packed for p in s.lines),
                  "at": iso_time(at)}
        self.intercept = record
        self.pending_serial = self.supervisor = None
        self.verdict = "intercepted"
        self._go(PackState.INTERCEPTED, at)
        why = f": {reason}" if reason else ""
        self._rejected("intercepted", f"order {order_id} is {state}{why}", at)
        return [Signal("intercept"), ReportIntercept(record)]

    def _photos(self, trigger: str) -> list[Action]:
        s = self.returns.session if self.returns else self.session
        moments = [m for m, when in self.config.photo_moments.items() if when == trigger]
        if trigger == "returned" and self.config.returns_photo_moment:
            moments = [self.config.returns_photo_moment]
        if s is None:
            return []
        for moment in moments:
            s.photos[moment] = {"state": "pending"}
        return [TakePhoto(m, s.number) for m in moments]

    def _check_packed(self, at: float) -> list[Action]:
        """Every line complete and a box chosen (when the orders list any): weigh.

        A settled reading taken after the last item went in (the parcel already on the
        scale while the box code was scanned) is weighed at once.
        """
        s = self._session()
        if not s.all_packed() or (s.needs_box() and s.box is None):
            return []
        self._go(PackState.WEIGHING, at)
        actions = self._photos("packed")
        last = self._last_settled
        if (last is not None and last.grams is not None
                and self._last_settled_mono >= (s.last_item_mono or self.mono)):
            actions += self._weigh(last)
        return actions

    # --- weighing -----------------------------------------------------------------------

    def _on_weight(self, reading: WeightReading) -> list[Action]:
        self.last_weight_g = reading.grams
        if reading.grams is None or not (reading.settled and reading.stable):
            if (reading.grams is not None and reading.grams < self.config.empty_below_g
                    and self.state == PackState.WEIGHT_MISMATCH):
                return self._taken_off(reading.at)
            return []
        self._last_settled, self._last_settled_mono = reading, self.mono
        if self.state == PackState.WEIGHT_MISMATCH and reading.grams < self.config.empty_below_g:
            return self._taken_off(reading.at)
        if self.state == PackState.WEIGHING:
            return self._weigh(reading)
        if self.state == PackState.RETURNS_CHECKING and self.returns is not None:
            if reading.grams < self.config.empty_below_g:
                return []
            s = self.returns.session
            s.stable_weight_g = reading.grams
            s.add_weight(reading.grams, reading.at, self.config.max_weights)
            if not self.returns.photo_taken:
                self.returns.photo_taken = True
                return self._photos("returned")
        return []

    def _taken_off(self, at: float) -> list[Action]:
        self.supervisor = None
        self._go(PackState.WEIGHING, at)
        self.news = "parcel taken off the scale: put it back to weigh again"
        return []

    def _expected(self) -> tuple[float, float]:
        s = self._session()
        return (s.expected_weight_g(),
                s.tolerance_g(self.config.tolerance_abs_g, self.config.tolerance_rel_pct))

    def _weigh(self, reading: WeightReading) -> list[Action]:
        grams = reading.grams
        if grams is None or grams < self.config.empty_below_g:
            return []
        s = self._session()
        if reading.net:
            # A tare left on the scale takes weight off every parcel: an extra or a missing
            # item could hide in it. Only the gross weight is checked.
            if self.last_rejection is None or self.last_rejection.get("code") != "scale_tared":
                self._rejected("scale_tared", f"the scale shows a net weight ({fmt_g(grams)}): "
                               f"a tare is set; clear it on the scale and weigh again",
                               reading.at)
                return [Signal("bad")]
            return []
        s.add_weight(grams, reading.at, self.config.max_weights)
        s.stable_weight_g = grams
        expected, tolerance = self._expected()
        diff = grams - expected
        if abs(diff) <= tolerance:
            self.verdict = "pass"
            return self._weight_accepted(reading.at)
        self.verdict = "weight_mismatch"
        self._go(PackState.WEIGHT_MISMATCH, reading.at)
        self._rejected("weight_mismatch", f"weighs {fmt_g(grams)}, expected "
                       f"{fmt_g(expected)} +/- {fmt_g(tolerance)}: {fmt_g(abs(diff))} too "
                       f"{'heavy' if diff > 0 else 'light'}", reading.at)
        return [Signal("bad")]

    def _override(self, scan: Scan, reason_code: str) -> list[Action]:
        s = self._session()
        expected, tolerance = self._expected()
        s.overrides.append({"supervisor": self.supervisor, "reason": reason_code,
                            "reason_text": self.config.reason_codes[reason_code],
                            "at": iso_time(scan.at), "weight_g": s.stable_weight_g,
                            "expected_weight_g": expected, "tolerance_g": tolerance})
        s.record_scan(scan, "override", reason=None, supervisor=self.supervisor)
        self.news = f"weight accepted by {self.supervisor} ({reason_code})"
        self.supervisor = None
        self.verdict = "pass_with_override"
        return self._weight_accepted(scan.at)

    def _weight_accepted(self, at: float) -> list[Action]:
        s = self._session()
        self._go(PackState.LABELLING, at)
        self.last_rejection = None
        actions: list[Action] = [Signal("good"), *self._photos("weighed")]
        jobs = s.prepare_print_jobs()
        if jobs:
            actions.append(SubmitPrint(jobs))
        else:
            actions.append(RequestLabels(s.order_ids, s.stable_weight_g or 0.0))
        return actions

    def _evidence(self, verdict: str, at: float, reason: str | None = None) -> dict[str, Any]:
        expected, tolerance = self._expected()
        return self._session().evidence(verdict, at, expected_g=expected,
                                        tolerance_g=tolerance, reason=reason)

    def _complete(self, at: float) -> list[Action]:
        s = self._session()
        photos = self._photos("labelled")  # pending in the record; the daemon fills it in
        evidence = self._evidence(self.verdict or "pass", at)
        self.last_parcel = {"order_ids": list(s.order_ids), "verdict": evidence["verdict"],
                            "waybill": s.waybill, "at": iso_time(at)}
        self._clear()
        self._go(PackState.IDLE, at)
        self.news = f"{', '.join(evidence['order_ids'])} complete ({evidence['waybill']})"
        return [Signal("good"), *photos, ReportResult(evidence)]

    # --- printing -----------------------------------------------------------------------

    def _on_print(self, event: PrintResult) -> list[Action]:
        s = self.session
        if s is None or self.state not in (PackState.LABELLING, PackState.VERIFY_LABEL):
            return []
        if event.job_id not in s.print_jobs:
            # A job the central system submitted itself: the first is taken as the waybill.
            # Only a job of this parcel: its id or group names one of the parcel's orders
            # (another parcel's slip finishing now must not pass for this waybill).
            ours = any(order_id in f"{event.job_id} {event.group or ''}"
                       for order_id in s.order_ids)
            if not ours or not (s.external_labels or event.waybill):
                return []
            s.track_jobs([{"job_id": event.job_id}])
        job = s.print_jobs[event.job_id]
        job.update(state=event.state, code=event.code, at=iso_time(event.at))
        if event.waybill:
            self._learn_waybill(event.waybill)
        printer = event.printer or "printer"
        if event.state in ("failed", "uncertain", "cancelled", "expired"):
            reason = f"{printer}: {event.message or event.code or event.state}"
            self._rejected("print_failed", reason, event.at)
            return [Signal("bad")]
        if event.state == "held":
            if event.code != "waiting_for_group":  # the slip waiting for its waybill is normal
                self.news = f"{printer}: {event.message or event.code}"
            return []
        if self.news is not None and self.news.startswith(f"{printer}: "):
            self.news = None  # the printer goes on: its hold is over
        if self.state == PackState.LABELLING and s.labels_done():
            self._go(PackState.VERIFY_LABEL, event.at)
            if not s.waybills and self.config.unverified_label == "refuse":
                self._rejected("waybill_unknown", self._no_waybill_words(), event.at)
                return [Signal("bad")]
        return []

    def _learn_waybill(self, waybill: str) -> None:
        """One more waybill number the label scanned back may carry."""
        self._session().waybills.add(waybill)
        if self.last_rejection and self.last_rejection["code"] == "waybill_unknown":
            self.last_rejection = None
            self.news = f"waybill number {waybill} received: scan the label"

    def _no_waybill_words(self) -> str:
        return (f"the central system did not send the waybill number of "
                f"{', '.join(self._session().order_ids)}: the label cannot be checked; "
                f"scan cancel and set the parcel aside")

    def _on_labels(self, event: LabelsReady) -> list[Action]:
        s = self.session
        if (s is None or self.state not in (PackState.LABELLING, PackState.VERIFY_LABEL)
                or not set(event.order_ids) & set(s.order_ids)):
            return []
        if event.waybill:
            self._learn_waybill(event.waybill)
        if self.state == PackState.VERIFY_LABEL:
            return []  # the labels are printed: only the number was missing
        if not event.jobs:
            s.external_labels = True
            return []
        return [SubmitPrint(s.prepare_print_jobs([(event.order_ids[0], event.jobs)]))]

    def _reprint(self, scan: Scan) -> list[Action]:
        s = self._session()
        s.record_scan(scan, "control")
        failed = s.failed_jobs()
        if self.state == PackState.VERIFY_LABEL:
            failed = tuple(s.waybill_jobs) or tuple(s.print_jobs)
        if failed:
            self.news = "printing again"
            self.last_rejection = None
            return [Reprint(failed, "the packer scanned reprint")]
        if not s.print_jobs and s.stable_weight_g is not None:
            self.news = "labels asked for again"
            return [RequestLabels(s.order_ids, s.stable_weight_g)]
        return self._reject(scan, "not_now", "nothing failed to print: the labels are on "
                            "their way")
