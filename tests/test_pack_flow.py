"""The packing flow as a pure state machine: events in, actions and snapshots out."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from agent.devices.readings import Scan, WeightCondition, WeightReading
from agent.jobs.orders import Order
from agent.jobs.pack_events import (
    Action,
    LabelsReady,
    LookupOrder,
    OrderFound,
    OrderIntercepted,
    OrderNotFound,
    OrderUpdated,
    PackConfig,
    ParcelInfo,
    PhotoFailed,
    PhotoTaken,
    PrintResult,
    ReportIntercept,
    ReportResult,
    Reprint,
    RequestLabels,
    Signal,
    SubmitPrint,
    TakePhoto,
    Tick,
)
from agent.jobs.pack_flow import PackFlow
from agent.outbox import iso_time

T0 = 1_700_000_000.0

WAYBILL_JOB = {"role": "label", "document": {"format": "zpl", "data": "XlhBXlha"}}
SLIP_JOB = {"role": "slip", "document": {"format": "slip", "template": "default",
                                         "fields": {}}}


def make_order(order_id: str = "SO-1001", **extra: Any) -> Order:
    body: dict[str, Any] = {
        "order_id": order_id,
        "waybills": ["SF1234567890"],
        "lines": [
            {"sku": "MUG-RED", "name": "Red mug", "barcodes": ["09506000134352", "MUG-RED"],
             "quantity": 2, "unit_weight_g": 350},
            {"sku": "GIFT-CARD", "name": "Gift card", "barcodes": ["GIFT-CARD"],
             "quantity": 1, "unit_weight_g": 10, "gift": True},
        ],
        "packaging": [{"code": "BOX-S", "name": "small box", "tare_g": 120},
                      {"code": "BOX-M", "name": "medium box", "tare_g": 200}],
        "note": "fragile: wrap the mugs",
        "print_jobs": [SLIP_JOB, WAYBILL_JOB],
    }
    body.update(extra)
    return Order.model_validate(body)


class Bench:
    """Drives a PackFlow with events one second apart and keeps every action."""

    def __init__(self, config: PackConfig | None = None) -> None:
        self.flow = PackFlow(config)
        self.t = T0
        self.wall_offset = 0.0
        """How far the wall clock (events' ``at``) is off the steady clock (``t``)."""
        self.actions: list[Action] = []

    def _send(self, event: Any) -> list[Action]:
        out = self.flow.handle(event, mono=self.t)
        self.actions += out
        json.dumps(self.flow.snapshot())
        return out

    def now(self, dt: float = 1.0) -> float:
        self.t += dt
        return self.t + self.wall_offset

    def scan(self, data: str, gs1: dict[str, str] | None = None) -> list[Action]:
        return self._send(Scan("scanner1", data, gs1=gs1, at=self.now()))

    def weigh(self, grams: float | None, settled: bool = True) -> list[Action]:
        condition = WeightCondition.WEIGHT if grams is not None else WeightCondition.OVERLOAD
        return self._send(WeightReading("scale1", condition, grams, stable=settled,
                                        settled=settled, at=self.now()))

    def found(self, *orders: Order, states: dict[str, tuple[str, str | None]] | None = None,
              packed: dict[str, tuple[float | None, str | None]] | None = None,
              code: str | None = None) -> list[Action]:
        code = code or self.flow.pending_code or ""
        parcel = ParcelInfo(orders, states or {}, packed or {})
        return self._send(OrderFound(code, parcel, self.now()))

    def send(self, event_type: Any, *args: Any, **kwargs: Any) -> list[Action]:
        return self._send(event_type(*args, at=self.now(), **kwargs))

    def tick(self, dt: float) -> list[Action]:
        return self._send(Tick(self.now(dt)))

    @property
    def snap(self) -> dict[str, Any]:
        return self.flow.snapshot()

    def results(self) -> list[dict[str, Any]]:
        return [a.evidence for a in self.actions if isinstance(a, ReportResult)]

    def open(self, *orders: Order, code: str = "SO-1001") -> None:
        self.scan("EMP-042")
        assert self.scan(code) == [LookupOrder(code)]
        self.found(*(orders or (make_order(),)))

    def pack_all(self) -> None:
        self.pack_all_actions()

    def pack_all_actions(self) -> list[Action]:
        return [a for code in ("9506000134352", "MUG-RED", "GIFT-CARD", "BOX-S")
                for a in self.scan(code)]


def lines(snap: dict[str, Any]) -> dict[str, tuple[int, int]]:
    return {f"{p['order_id']}/{p['sku']}": (p["scanned"], p["expected"]) for p in snap["lines"]}


def test_good_parcel_goes_from_badge_to_verified_label_and_reports_evidence() -> None:
    """A parcel passes every check: weighed in tolerance, printed, label scanned back."""
    bench = Bench()
    assert bench.snap["state"] == "logged_out"
    assert bench.scan("EMP-042") == [Signal("good")]
    assert bench.snap["packer"] == "EMP-042" and bench.snap["state"] == "idle"
    assert bench.scan("SO-1001") == [LookupOrder("SO-1001")]
    assert bench.snap["state"] == "looking_up"
    assert bench.found(make_order()) == []
    snap = bench.snap
    assert snap["state"] == "packing" and snap["note"] == "fragile: wrap the mugs"
    assert lines(snap) == {"SO-1001/MUG-RED": (0, 2), "SO-1001/GIFT-CARD": (0, 1)}
    assert snap["expected_weight_g"] == 710 and snap["tolerance_g"] == 35.5
    # EAN-13 without its leading zero is the same GTIN as the line's GTIN-14.
    assert bench.scan("9506000134352") == [Signal("good")]
    assert bench.scan("MUG-RED") == [Signal("good")]
    assert bench.scan("GIFT-CARD") == [Signal("good")]
    assert bench.snap["state"] == "packing" and "scan the box" in bench.snap["message"]
    assert bench.scan("BOX-S") == [Signal("good"), TakePhoto("open")]
    snap = bench.snap
    assert snap["state"] == "weighing" and snap["box"]["code"] == "BOX-S"
    assert snap["expected_weight_g"] == 830 and snap["tolerance_g"] == 41.5
    assert bench.send(PhotoTaken, "open", "/photos/open.jpg") == []
    assert bench.weigh(2.0) == []
    assert bench.weigh(700.0, settled=False) == []
    out = bench.weigh(845.0)
    assert out[:2] == [Signal("good"), TakePhoto("closed")]
    submit = out[2]
    assert isinstance(submit, SubmitPrint)
    assert [j["job_id"] for j in submit.jobs] == ["SO-1001-waybill", "SO-1001-packing_slip"]
    assert [j["group"] for j in submit.jobs] == [
        {"id": "SO-1001-labels", "seq": 1, "size": 2},
        {"id": "SO-1001-labels", "seq": 2, "size": 2}]
    assert bench.snap["state"] == "labelling" and bench.snap["verdict"] == "pass"
    bench.send(PhotoTaken, "closed", "/photos/closed.jpg")
    bench.send(PrintResult, "SO-1001-waybill", "printed", printer="label")
    assert bench.snap["state"] == "verify_label"
    out = bench.scan("SF1234567890")
    assert out[0] == Signal("good") and isinstance(out[1], ReportResult)
    snap = bench.snap
    assert snap["state"] == "idle" and snap["order_ids"] == [] and snap["lines"] == []
    assert snap["last_parcel"]["verdict"] == "pass"
    evidence = out[1].evidence
    assert evidence["verdict"] == "pass" and evidence["kind"] == "pack"
    assert evidence["waybill"] == "SF1234567890" and evidence["waybill_verified"] is True
    assert evidence["packer"] == "EMP-042" and evidence["order_ids"] == ["SO-1001"]
    assert evidence["stable_weight_g"] == 845.0
    assert evidence["expected_weight_g"] == 830 and evidence["tolerance_g"] == 41.5
    assert evidence["weights"] == [{"at": evidence["weights"][0]["at"], "grams": 845.0}]
    assert evidence["photos"] == [
        {"moment": "open", "path": "/photos/open.jpg", "at": evidence["photos"][0]["at"]},
        {"moment": "closed", "path": "/photos/closed.jpg", "at": evidence["photos"][1]["at"]}]
    assert [j["job_id"] for j in evidence["print_jobs"]] == ["SO-1001-waybill",
                                                             "SO-1001-packing_slip"]
    assert [s["outcome"] for s in evidence["scans"]] == [
        "accepted", "accepted", "accepted", "box", "waybill"]
    assert evidence["orders"][0]["packed_units"] == 3 and evidence["overrides"] == []
    assert evidence["started_at"] < evidence["finished_at"]
    json.dumps(evidence)


def test_wrong_item_is_rejected_at_once_and_not_counted() -> None:
    bench = Bench()
    bench.open()
    assert bench.scan("6901234567892") == [Signal("bad")]
    snap = bench.snap
    assert snap["last_rejection"]["code"] == "wrong_item"
    assert snap["last_rejection"]["reason"] == "6901234567892 is not in this order"
    assert snap["message"].startswith("6901234567892 is not in this order. Scan the next")
    assert lines(snap)["SO-1001/MUG-RED"] == (0, 2)


def test_over_quantity_is_rejected_with_the_count() -> None:
    bench = Bench()
    bench.open()
    bench.scan("MUG-RED")
    bench.scan("MUG-RED")
    assert bench.scan("09506000134352") == [Signal("bad")]
    assert bench.snap["last_rejection"]["reason"] == "already 2 of 2 Red mug"
    assert lines(bench.snap)["SO-1001/MUG-RED"] == (2, 2)


def test_missing_item_never_reaches_weighing_and_cancel_reports_it_abandoned() -> None:
    bench = Bench()
    bench.open()
    bench.scan("MUG-RED")
    bench.scan("GIFT-CARD")
    bench.scan("BOX-S")
    assert bench.weigh(500.0) == []
    assert bench.snap["state"] == "packing"
    out = bench.scan("CTL-CANCEL")
    assert len(out) == 1 and isinstance(out[0], ReportResult)
    evidence = out[0].evidence
    assert evidence["verdict"] == "abandoned"
    assert evidence["reason"] == "cancelled by the packer while packing"
    assert evidence["missing"] == [{"order_id": "SO-1001", "sku": "MUG-RED",
                                    "name": "Red mug", "missing": 1}]
    snap = bench.snap
    assert snap["state"] == "idle" and snap["order_ids"] == [] and snap["box"] is None


def test_weight_mismatch_then_supervisor_override_is_recorded() -> None:
    bench = Bench()
    bench.open()
    bench.pack_all()
    assert bench.weigh(964.0) == [Signal("bad")]
    snap = bench.snap
    assert snap["state"] == "weight_mismatch" and snap["verdict"] == "weight_mismatch"
    assert snap["last_rejection"]["reason"] == (
        "weighs 964 g, expected 830 g +/- 42 g: 134 g too heavy")
    assert bench.scan("EMP-007") == [Signal("bad")]
    assert bench.snap["last_rejection"]["reason"] == "EMP-007 is not a supervisor badge"
    assert bench.scan("SUP-01") == []
    assert bench.snap["awaiting"] == "reason_code"
    assert bench.scan("MUG-RED") == [Signal("bad")]
    assert bench.snap["last_rejection"]["code"] == "not_a_reason"
    out = bench.scan("RSN-PACKAGING-VARIANCE")
    assert out[:2] == [Signal("good"), TakePhoto("closed")] and isinstance(out[2], SubmitPrint)
    assert bench.snap["verdict"] == "pass_with_override"
    bench.send(PrintResult, "SO-1001-waybill", "sent")
    evidence = bench.scan("SF1234567890")[1]
    assert isinstance(evidence, ReportResult)
    record = evidence.evidence
    assert record["verdict"] == "pass_with_override"
    override = record["overrides"][0]
    assert override["supervisor"] == "SUP-01" and override["reason"] == "RSN-PACKAGING-VARIANCE"
    assert override["weight_g"] == 964.0 and override["expected_weight_g"] == 830
    assert override["tolerance_g"] == 41.5
    assert record["photos"][1] == {"moment": "closed", "path": None, "at": None,
                                   "error": "no answer from the camera before the parcel "
                                            "finished"}


def test_reweigh_by_control_code_or_by_taking_the_parcel_off() -> None:
    bench = Bench()
    bench.open()
    bench.pack_all()
    bench.weigh(700.0)
    assert bench.snap["last_rejection"]["reason"].endswith("130 g too light")
    bench.scan("CTL-REWEIGH")
    assert bench.snap["state"] == "weighing"
    bench.weigh(650.0)
    assert bench.snap["state"] == "weight_mismatch"
    bench.weigh(0.0)
    assert bench.snap["state"] == "weighing"
    out = bench.weigh(820.0)
    assert Signal("good") in out and bench.snap["state"] == "labelling"
    assert [w["grams"] for w in bench.flow._session().weights] == [700.0, 650.0, 820.0]


def test_intercept_before_packing_stops_until_set_aside() -> None:
    bench = Bench()
    bench.scan("EMP-042")
    bench.scan("SF1234567890")
    out = bench.found(make_order(), states={"SO-1001": ("held", "address change")})
    assert out[0] == Signal("intercept") and isinstance(out[1], ReportIntercept)
    record = out[1].record
    assert record["order_id"] == "SO-1001" and record["state"] == "held"
    assert record["reason"] == "address change" and record["packer"] == "EMP-042"
    assert record["code"] == "SF1234567890" and record["stage"] == "looking_up"
    assert bench.snap["state"] == "intercepted"
    assert bench.snap["message"].startswith("order SO-1001 is held: address change. STOP")
    for code in ("MUG-RED", "CTL-REWEIGH", "EMP-009", "SO-1001"):
        assert bench.scan(code) == [Signal("bad")]
        assert bench.snap["state"] == "intercepted"
    out = bench.scan("CTL-ASIDE")
    assert isinstance(out[0], ReportResult)
    assert out[0].evidence["reason"] == "intercepted: order SO-1001 is held; set aside"
    assert bench.snap["state"] == "idle"


def test_intercept_during_packing_moves_to_intercepted_at_once() -> None:
    bench = Bench()
    bench.open()
    bench.scan("MUG-RED")
    assert bench.send(OrderIntercepted, "SO-9999", "cancelled", "other order") == []
    out = bench.send(OrderIntercepted, "SO-1001", "cancelled", "buyer cancelled")
    assert out[0] == Signal("intercept")
    assert isinstance(out[1], ReportIntercept) and out[1].record["stage"] == "packing"
    assert out[1].record["scanned_units"] == 1
    assert bench.snap["state"] == "intercepted" and bench.snap["verdict"] == "intercepted"
    out = bench.scan("CTL-CANCEL")
    assert isinstance(out[0], ReportResult) and out[0].evidence["verdict"] == "abandoned"


def test_already_packed_order_is_refused_with_date_and_waybill() -> None:
    bench = Bench()
    bench.scan("EMP-042")
    bench.scan("SO-1001")
    assert bench.found(make_order(), states={"SO-1001": ("packed", None)},
                       packed={"SO-1001": (T0 - 3600, "SF1234567890")}) == [Signal("bad")]
    assert bench.snap["state"] == "idle"
    assert bench.snap["last_rejection"]["reason"] == (
        "order SO-1001 was already packed on 2023-11-14T21:13:20.000Z with waybill "
        "SF1234567890")


def test_merged_orders_pack_as_one_parcel_with_lines_per_order() -> None:
    first = make_order("SO-1", merge_id="M-7", print_jobs=[])
    second = make_order("SO-2", merge_id="M-7", waybills=[], packaging=[], print_jobs=[],
                        lines=[{"sku": "MUG-RED", "name": "Red mug",
                                "barcodes": ["09506000134352"], "quantity": 1,
                                "unit_weight_g": 350}])
    bench = Bench()
    bench.open(first, second, code="SO-1")
    assert bench.snap["order_ids"] == ["SO-1", "SO-2"]
    for code in ("MUG-RED", "MUG-RED", "09506000134352", "GIFT-CARD"):
        assert bench.scan(code) == [Signal("good")]
    assert lines(bench.snap) == {"SO-1/MUG-RED": (2, 2), "SO-1/GIFT-CARD": (1, 1),
                                 "SO-2/MUG-RED": (1, 1)}
    bench.scan("BOX-M")
    assert bench.snap["expected_weight_g"] == 3 * 350 + 10 + 200
    out = bench.weigh(1265.0)
    assert out[-1] == RequestLabels(("SO-1", "SO-2"), 1265.0)
    bench.send(LabelsReady, ("SO-1", "SO-2"), waybill="ZTO555", jobs=(WAYBILL_JOB,))
    assert isinstance(bench.actions[-1], SubmitPrint)
    assert bench.actions[-1].jobs[0]["job_id"] == "SO-1-waybill"
    bench.send(PrintResult, "SO-1-waybill", "printed")
    out = bench.scan("ZTO555")
    assert isinstance(out[1], ReportResult)
    orders = out[1].evidence["orders"]
    assert [(o["order_id"], o["expected_units"], o["packed_units"]) for o in orders] == [
        ("SO-1", 3, 3), ("SO-2", 1, 1)]
    assert out[1].evidence["waybill"] == "ZTO555"


def test_serials_from_gs1_ai_21_or_a_separate_scan_and_duplicates_refused() -> None:
    order = make_order(packaging=[], print_jobs=[], lines=[
        {"sku": "PHONE", "name": "Phone", "barcodes": ["09506000134352"], "quantity": 3,
         "unit_weight_g": 200, "serial_required": True}])
    bench = Bench()
    bench.open(order)
    gs1 = {"01": "09506000134352", "gtin": "09506000134352", "21": "SN0042"}
    assert bench.scan("0109506000134352\x1d21SN0042", gs1=gs1) == [Signal("good")]
    assert bench.scan("0109506000134352\x1d21SN0042", gs1=gs1) == [Signal("bad")]
    assert bench.snap["last_rejection"]["reason"] == (
        "duplicate serial SN0042: already captured in this parcel")
    assert bench.scan("9506000134352") == []
    assert bench.snap["awaiting"] == "serial"
    assert bench.snap["message"] == "Phone scanned. Scan the serial number of Phone"
    assert bench.scan("09506000134352") == [Signal("bad")]
    assert bench.snap["last_rejection"]["code"] == "serial_expected"
    assert bench.scan("SN0042") == [Signal("bad")]
    assert bench.snap["last_rejection"]["code"] == "duplicate_serial"
    assert bench.scan("SN0043") == [Signal("good")]
    assert bench.snap["lines"][0]["serials"] == ["SN0042", "SN0043"]
    bench.scan("9506000134352")
    assert bench.scan("SN0044") == [Signal("good"), TakePhoto("open")]
    assert bench.snap["state"] == "weighing" and bench.snap["expected_weight_g"] == 600


def test_packaging_scan_selects_the_box_and_its_tare_until_weighing() -> None:
    bench = Bench()
    bench.open()
    assert bench.snap["expected_weight_g"] == 710
    bench.scan("BOX-M")
    assert bench.snap["box"] == {"code": "BOX-M", "name": "medium box", "tare_g": 200.0}
    assert bench.snap["expected_weight_g"] == 910
    bench.scan("BOX-S")
    assert bench.snap["expected_weight_g"] == 830
    bench.scan("MUG-RED")
    bench.scan("MUG-RED")
    bench.scan("GIFT-CARD")
    assert bench.snap["state"] == "weighing"
    assert bench.scan("BOX-M") == [Signal("bad")]
    assert bench.snap["last_rejection"]["code"] == "box_locked"
    assert bench.snap["box"]["code"] == "BOX-S"


def test_a_parcel_settled_on_the_scale_before_the_box_scan_is_weighed_at_once() -> None:
    bench = Bench()
    bench.open()
    bench.scan("MUG-RED")
    bench.weigh(380.0)
    bench.scan("MUG-RED")
    bench.scan("GIFT-CARD")
    assert bench.weigh(835.0) == []
    out = bench.scan("BOX-S")
    assert out[:4] == [Signal("good"), TakePhoto("open"), Signal("good"), TakePhoto("closed")]
    assert bench.snap["state"] == "labelling" and bench.snap["stable_weight_g"] == 835.0
    assert [w["grams"] for w in bench.flow._session().weights] == [835.0]


def test_without_a_known_waybill_the_label_cannot_pass_until_the_number_comes() -> None:
    """Only this parcel's central-system jobs count as its labels; with no waybill number
    known the label scanned back cannot be checked: refused (the default) until the
    central system sends the number."""
    bench = Bench()
    bench.open(make_order(waybills=[], print_jobs=[]))
    bench.pack_all()
    assert isinstance(bench.weigh(830.0)[-1], RequestLabels)
    assert bench.scan("CTL-REPRINT") == [RequestLabels(("SO-1001",), 830.0)]
    bench.send(PrintResult, "SO-1001-central-1", "printed")
    assert bench.snap["state"] == "labelling"
    assert bench.send(LabelsReady, ("SO-1001",)) == []
    bench.send(PrintResult, "SO-0999-packing_slip", "sent")  # another parcel's job
    bench.send(PrintResult, "central-job-7", "printed", group="SO-0999")
    assert bench.snap["state"] == "labelling", "only this parcel's jobs count"
    assert bench.send(PrintResult, "central-job-8", "printed",
                      group="SO-1001-labels") == [Signal("bad")]
    assert bench.snap["state"] == "verify_label"
    assert bench.snap["last_rejection"]["code"] == "waybill_unknown"
    assert "did not send the waybill number of SO-1001" in bench.snap["message"]
    assert bench.scan("MUG-RED") == [Signal("bad")]
    assert bench.snap["last_rejection"]["code"] == "not_waybill"
    assert bench.scan("ZTO777") == [Signal("bad")]
    assert bench.snap["last_rejection"]["code"] == "waybill_unknown"
    assert bench.results() == []
    bench.send(LabelsReady, ("SO-1001",), waybill="ZTO777")
    assert bench.snap["last_rejection"] is None and "ZTO777" in bench.snap["message"]
    out = bench.scan("ZTO777")
    assert isinstance(out[1], ReportResult)
    assert out[1].evidence["waybill"] == "ZTO777"
    assert out[1].evidence["waybill_verified"] is True


def test_a_waybill_number_given_with_a_print_job_checks_the_label() -> None:
    job = {**WAYBILL_JOB, "waybill": "YT555"}
    bench = Bench()
    bench.open(make_order(waybills=[], print_jobs=[job]))
    bench.pack_all()
    [submit] = [a for a in bench.weigh(830.0) if isinstance(a, SubmitPrint)]
    assert submit.jobs[0]["waybill"] == "YT555"
    bench.send(PrintResult, submit.jobs[0]["job_id"], "printed")
    assert bench.snap["state"] == "verify_label" and bench.snap["last_rejection"] is None
    assert bench.scan("YT556") == [Signal("bad")]
    assert bench.snap["last_rejection"]["code"] == "wrong_label"
    assert bench.scan("YT555")[0] == Signal("good")
    assert bench.results()[-1]["waybill_verified"] is True


def test_accept_records_an_unchecked_label_as_unverified() -> None:
    bench = Bench(PackConfig(unverified_label="accept"))
    bench.open(make_order(waybills=[], print_jobs=[WAYBILL_JOB]))
    bench.pack_all()
    [submit] = [a for a in bench.weigh(830.0) if isinstance(a, SubmitPrint)]
    assert bench.send(PrintResult, submit.jobs[0]["job_id"], "printed") == []
    assert bench.snap["state"] == "verify_label" and bench.snap["last_rejection"] is None
    out = bench.scan("ZTO777")
    assert isinstance(out[1], ReportResult)
    assert out[1].evidence["waybill"] == "ZTO777"
    assert out[1].evidence["waybill_verified"] is False


def test_wrong_label_scanned_back_is_rejected_and_stays() -> None:
    bench = Bench()
    bench.open()
    bench.pack_all()
    bench.weigh(830.0)
    bench.send(PrintResult, "SO-1001-waybill", "printed")
    assert bench.scan("YT9999999") == [Signal("bad")]
    assert bench.snap["state"] == "verify_label"
    assert bench.snap["last_rejection"]["reason"] == (
        "wrong label: this box is for SF1234567890, the label says YT9999999")


def test_print_failure_is_shown_and_reprint_asks_again() -> None:
    bench = Bench()
    bench.open()
    bench.pack_all()
    bench.weigh(830.0)
    bench.send(PrintResult, "SO-1001-waybill", "held", printer="label", code="paper_out",
               message="paper out")
    assert bench.snap["message"].startswith("label: paper out")
    out = bench.send(PrintResult, "SO-1001-waybill", "failed", printer="label printer",
                     code="paper_out", message="paper out")
    assert out == [Signal("bad")]
    assert bench.snap["last_rejection"]["reason"] == "label printer: paper out"
    assert bench.snap["state"] == "labelling"
    assert bench.scan("CTL-REPRINT") == [Reprint(("SO-1001-waybill",),
                                                 "the packer scanned reprint")]
    bench.send(PrintResult, "SO-1001-waybill", "printed")
    assert bench.snap["state"] == "verify_label"


def test_lookup_failures_say_why_and_return_to_idle() -> None:
    bench = Bench()
    bench.scan("EMP-042")
    bench.scan("SO-404")
    assert bench.scan("MUG-RED") == [Signal("bad")]
    assert bench.snap["last_rejection"]["code"] == "busy"
    bench.send(OrderNotFound, "SO-404", "unknown_order", "no such order")
    assert bench.snap["state"] == "idle"
    assert bench.snap["last_rejection"]["reason"] == (
        "order SO-404 is unknown to the central system")
    bench.scan("SO-500")
    bench.send(OrderNotFound, "SO-500", "central_unreachable", "link down since 10:02")
    assert bench.snap["last_rejection"]["reason"] == (
        "central system unreachable: link down since 10:02")
    bench.scan("SO-600")
    assert bench.tick(5) == []
    assert bench.snap["state"] == "looking_up"
    assert bench.tick(15) == [Signal("bad")]
    assert bench.snap["state"] == "idle"
    assert bench.snap["last_rejection"] == {
        "code": "lookup_timeout", "reason": "no answer about order SO-600 within 15 s",
        "at": bench.snap["last_rejection"]["at"]}
    assert bench.found(make_order(), code="SO-600") == []
    assert bench.snap["state"] == "idle"


def test_badge_logs_in_another_packer_only_between_parcels() -> None:
    bench = Bench()
    assert bench.scan("SO-1001") == [Signal("bad")]
    bench.open()
    assert bench.scan("EMP-777") == [Signal("bad")]
    assert bench.snap["packer"] == "EMP-042"
    assert "finish or cancel this parcel first" in bench.snap["message"]
    bench.scan("CTL-CANCEL")
    assert bench.scan("EMP-777") == [Signal("good")]
    assert bench.snap["packer"] == "EMP-777"


def test_weighing_prompt_after_timeout_and_photo_failure_does_not_block() -> None:
    bench = Bench()
    bench.open()
    bench.pack_all()
    bench.send(PhotoFailed, "open", "camera disconnected")
    bench.tick(25)
    assert bench.snap["message"].startswith("no weight yet: put the parcel on the scale")
    bench.weigh(830.0)
    bench.send(PrintResult, "SO-1001-waybill", "printed")
    evidence = bench.scan("SF1234567890")[1]
    assert isinstance(evidence, ReportResult)
    assert evidence.evidence["photos"][0]["error"] == "camera disconnected"


def test_reset_starts_the_parcel_over() -> None:
    bench = Bench()
    bench.open()
    bench.pack_all()
    assert bench.snap["state"] == "weighing"
    assert bench.scan("CTL-RESET") == []
    assert bench.snap["state"] == "packing" and bench.snap["box"] is None
    assert lines(bench.snap)["SO-1001/MUG-RED"] == (0, 2)


def test_returns_are_scanned_classified_weighed_and_reported() -> None:
    bench = Bench()
    bench.scan("EMP-042")
    bench.scan("CTL-RETURNS")
    assert bench.snap["state"] == "returns" and bench.snap["mode"] == "returns"
    assert bench.scan("SF1234567890") == [LookupOrder("SF1234567890")]
    bench.found(make_order())
    assert bench.snap["state"] == "returns_checking"
    assert bench.scan("MUG-RED") == [Signal("good")]
    assert bench.snap["awaiting"] == "classification"
    assert bench.scan("GIFT-CARD") == [Signal("bad")]
    assert bench.scan("CTL-DAMAGED") == [Signal("good")]
    assert bench.scan("6901234567892") == [Signal("bad")]
    assert bench.weigh(480.0) == [TakePhoto("returned")]
    bench.send(PhotoTaken, "returned", "/photos/return.jpg")
    out = bench.scan("CTL-DONE")
    assert out[0] == Signal("good") and isinstance(out[1], ReportResult)
    record = out[1].evidence
    assert record["kind"] == "return" and record["verdict"] == "returned"
    assert record["waybill"] == "SF1234567890" and record["returned_weight_g"] == 480.0
    assert record["items"][0] == {"order_id": "SO-1001", "sku": "MUG-RED",
                                  "name": "Red mug", "shipped": 2, "resellable": 0,
                                  "damaged": 1, "wrong_item": 0, "missing": 1}
    assert record["items"][1]["missing"] == 1
    assert [u["condition"] for u in record["units"]] == ["damaged", "wrong_item"]
    assert record["photos"][0]["path"] == "/photos/return.jpg"
    assert bench.snap["state"] == "returns"
    bench.scan("CTL-RETURNS")
    assert bench.snap["state"] == "idle" and bench.snap["mode"] == "pack"


CODES = ["EMP-1", "SUP-1", "SO-1001", "SF1234567890", "MUG-RED", "9506000134352",
         "GIFT-CARD", "BOX-S", "BOX-M", "XYZ", "SN1", "RSN-PACKAGING-VARIANCE",
         "CTL-ASIDE", "CTL-RESET", "CTL-REWEIGH", "CTL-REPRINT", "CTL-RETURNS",
         "CTL-DONE", "CTL-DAMAGED", "CTL-RESELLABLE", "CTL-WRONG-ITEM", "CTL-LOGOUT"]

events = st.one_of(
    st.builds(lambda c: ("scan", c), st.sampled_from(CODES)),
    st.builds(lambda g, s: ("weigh", g, s), st.one_of(st.none(), st.floats(-50, 3000)),
              st.booleans()),
    st.builds(lambda dt: ("tick", dt), st.floats(0, 100)),
    st.just(("found",)), st.just(("held",)), st.just(("not_found",)),
    st.builds(lambda s: ("print", s), st.sampled_from(["printed", "failed", "held"])),
    st.builds(lambda m: ("photo", m), st.sampled_from(["open", "closed", "returned"])),
    st.just(("labels",)),
)


@settings(max_examples=150, deadline=None)
@given(st.lists(events, max_size=40))
def test_random_event_sequences_never_raise_and_cancel_always_reaches_idle(
        sequence: list[tuple[Any, ...]]) -> None:
    """Whatever arrives in whatever order, one cancel scan brings back a clean idle."""
    bench = Bench()
    bench.scan("EMP-042")
    for event in sequence:
        kind = event[0]
        if kind == "scan":
            bench.scan(event[1])
        elif kind == "weigh":
            bench.weigh(event[1], settled=event[2])
        elif kind == "tick":
            bench.tick(event[1])
        elif kind == "found":
            bench.found(make_order())
        elif kind == "held":
            bench.send(OrderIntercepted, "SO-1001", "held", "address change")
        elif kind == "not_found":
            bench.send(OrderNotFound, bench.flow.pending_code or "", "unknown_order", "no")
        elif kind == "print":
            bench.send(PrintResult, "SO-1001-waybill", event[1], waybill="SF1234567890")
        elif kind == "photo":
            bench.send(PhotoTaken, event[1], "/p.jpg")
        else:
            bench.send(LabelsReady, ("SO-1001",), waybill="SF1", jobs=(WAYBILL_JOB,))
    if bench.snap["state"] == "logged_out":
        bench.scan("EMP-042")
    bench.scan("CTL-CANCEL")
    snap = bench.snap
    assert snap["state"] == "idle" and snap["mode"] == "pack"
    assert snap["order_ids"] == [] and snap["lines"] == [] and snap["awaiting"] is None
    assert len(json.dumps(snap)) < 4000
    for evidence in bench.results():
        json.dumps(evidence)


def test_a_slip_waiting_for_its_waybill_is_no_news_and_a_printer_hold_clears_when_it_goes_on(
) -> None:
    bench = Bench()
    bench.open()
    bench.pack_all()
    bench.weigh(830.0)
    assert bench.snap["state"] == "labelling"
    session = bench.flow.session
    assert session is not None
    slip = next(job_id for job_id in session.print_jobs if job_id.endswith("slip"))
    bench.send(PrintResult, slip, "held", printer="slip", code="waiting_for_group",
               message="waits for job SO-1001-waybill (number 1 of group SO-1001-labels)")
    assert "waits for job" not in bench.snap["message"]
    bench.send(PrintResult, "SO-1001-waybill", "held", printer="label", code="paper_out",
               message="paper out")
    assert bench.snap["message"].startswith("label: paper out")
    bench.send(PrintResult, "SO-1001-waybill", "printing", printer="label")
    assert "paper out" not in bench.snap["message"]


def test_while_a_serial_is_awaited_other_codes_and_products_are_not_taken_as_it() -> None:
    phone = {"sku": "PHONE", "name": "Phone", "barcodes": ["6901234567892"], "quantity": 1,
             "unit_weight_g": 200.0, "serial_required": True}
    bench = Bench()
    bench.open(make_order(lines=[phone]), code="SO-1001")
    bench.scan("6901234567892")
    assert bench.snap["awaiting"] == "serial"
    for not_serial in ("CTL-REWEIGH", "RSN-SCALE-CHECKED", "EMP-9", "4006381333931",
                       "12345670"):
        out = bench.scan(not_serial)
        assert out == [Signal("bad")], not_serial
        assert bench.snap["last_rejection"]["code"] in ("serial_expected", "badge_refused")
        assert bench.snap["awaiting"] == "serial"
    bench.scan("SN-PHONE-0001")
    assert bench.snap["awaiting"] is None and lines(bench.snap)["SO-1001/PHONE"] == (1, 1)


def test_a_net_weight_is_refused_until_the_scale_shows_the_gross_weight() -> None:
    bench = Bench()
    bench.open()
    bench.pack_all()
    assert bench.snap["state"] == "weighing"
    out = bench._send(WeightReading("scale1", WeightCondition.WEIGHT, 830.0, stable=True,
                                    net=True, settled=True, at=bench.now()))
    assert out == [Signal("bad")] and bench.snap["state"] == "weighing"
    assert bench.snap["last_rejection"]["code"] == "scale_tared"
    assert "a tare is set" in bench.snap["last_rejection"]["reason"]
    bench.weigh(830.0)  # gross
    assert bench.snap["state"] == "labelling"


def test_priority_and_presale_orders_are_shown_and_recorded() -> None:
    bench = Bench()
    bench.open(make_order(priority=True, presale=True))
    assert bench.snap["flags"] == ["priority", "presale"]
    assert "opened (priority, presale)" in bench.snap["message"]
    bench.scan("CTL-CANCEL")
    [record] = bench.results()
    assert record["orders"][0]["priority"] is True and record["orders"][0]["presale"] is True
    assert bench.snap["flags"] == []


def test_a_new_version_of_an_open_order_abandons_the_parcel_and_asks_for_a_rescan() -> None:
    bench = Bench()
    bench.open(make_order(merge_id="M-1"))
    bench.scan("MUG-RED")
    assert bench.send(OrderUpdated, make_order(merge_id="M-1")) == [], "the same order again"
    assert bench.send(OrderUpdated, make_order("SO-77")) == [], "another buyer's order"
    assert bench.snap["state"] == "packing"
    # A waybill number and a new note change nothing checked: the parcel goes on.
    told = make_order(merge_id="M-1", note="gift wrap", waybills=["SF1234567890", "SF2"])
    assert bench.send(OrderUpdated, told) == []
    assert bench.snap["state"] == "packing" and bench.snap["note"] == "gift wrap"
    assert "SF2" in bench.flow._session().waybills
    changed = make_order(merge_id="M-1", lines=[
        {"sku": "MUG-RED", "barcodes": ["MUG-RED"], "quantity": 3, "unit_weight_g": 350}])
    out = bench.send(OrderUpdated, changed)
    assert out[0] == Signal("bad") and isinstance(out[1], ReportResult)
    assert out[1].evidence["verdict"] == "abandoned"
    assert out[1].evidence["reason"] == ("order SO-1001 was changed by the central system "
                                         "while packing")
    assert out[1].evidence["orders"][0]["packed_units"] == 1
    assert bench.snap["state"] == "idle"
    assert bench.snap["last_rejection"]["code"] == "order_changed"
    assert "scan the order again" in bench.snap["message"]
    bench.open(changed)
    joined = make_order("SO-1002", merge_id="M-1")
    assert bench.send(OrderUpdated, joined)[0] == Signal("bad")
    assert bench.results()[-1]["reason"].startswith("order SO-1002 joined this merged parcel")


def test_a_parcel_left_open_is_abandoned_and_an_idle_packer_logged_out() -> None:
    bench = Bench(PackConfig(abandon_after_s=600, logout_after_s=900))
    bench.open()
    bench.scan("MUG-RED")
    assert bench.tick(590) == []
    bench.scan("MUG-RED")  # a scan starts the count again
    assert bench.tick(590) == [] and bench.snap["state"] == "packing"
    out = bench.tick(20)
    assert out[0] == Signal("bad") and isinstance(out[1], ReportResult)
    assert out[1].evidence["verdict"] == "abandoned"
    assert out[1].evidence["reason"] == "nothing happened for 10 min while packing"
    assert bench.snap["state"] == "idle" and bench.snap["packer"] == "EMP-042"
    assert bench.tick(880) == [] and bench.snap["state"] == "idle"
    bench.tick(30)
    assert bench.snap["state"] == "logged_out" and bench.snap["packer"] is None
    assert "EMP-042 logged out after 15 min" in bench.snap["message"]


def test_an_intercepted_parcel_waits_for_set_aside_however_long() -> None:
    bench = Bench(PackConfig(abandon_after_s=60))
    bench.open()
    bench.send(OrderIntercepted, "SO-1001", "cancelled", "buyer cancelled")
    assert bench.tick(3600) == [] and bench.snap["state"] == "intercepted"
    assert bench.scan("CTL-ASIDE") == [ReportResult(bench.results()[-1])]
    assert bench.snap["state"] == "idle"


def test_another_parcels_label_with_its_waybill_does_not_pass_for_this_one() -> None:
    bench = Bench()
    bench.open(make_order(waybills=[], print_jobs=[]))
    bench.pack_all()
    bench.weigh(830.0)
    # Customer service reprints another parcel's waybill meanwhile.
    assert bench.send(PrintResult, "SO-0999-waybill", "printed", waybill="SF999") == []
    assert bench.snap["state"] == "labelling"
    bench.send(PrintResult, "SO-1001-waybill", "printed", waybill="SF1001")
    assert bench.snap["state"] == "verify_label" and bench.snap["last_rejection"] is None
    assert bench.scan("SF999") == [Signal("bad")]
    assert bench.snap["last_rejection"]["code"] == "wrong_label"
    assert bench.scan("SF1001")[0] == Signal("good")


def test_a_late_photo_of_an_abandoned_parcel_is_not_filed_under_the_next() -> None:
    bench = Bench()
    bench.open()
    old = next(a for a in bench.pack_all_actions() if isinstance(a, TakePhoto))
    bench.scan("CTL-CANCEL")
    bench.open()
    new = next(a for a in bench.pack_all_actions() if isinstance(a, TakePhoto))
    assert old.parcel != new.parcel
    bench.send(PhotoTaken, old.moment, "old.jpg", parcel=old.parcel)
    assert bench.flow._session().photos[new.moment] == {"state": "pending"}
    bench.send(PhotoTaken, new.moment, "new.jpg", parcel=new.parcel)
    assert bench.flow._session().photos[new.moment]["path"] == "new.jpg"


def test_a_wall_clock_jump_abandons_nothing_and_logs_nobody_out() -> None:
    """Timers count on the monotonic clock; records carry the wall clock's time."""
    bench = Bench(PackConfig(abandon_after_s=600, logout_after_s=900))
    bench.open()
    bench.scan("MUG-RED")
    bench.wall_offset += 7200  # NTP steps the clock two hours ahead
    assert bench.tick(60) == [] and bench.snap["state"] == "packing"
    settled = bench.weigh(830.0)  # a reading before the last item: not the parcel's
    bench.pack_all()
    assert bench.snap["state"] == "weighing", "the reading came before the items"
    assert settled == []
    out = bench.tick(600)  # a real 10 minutes without a scan still counts
    assert isinstance(out[1], ReportResult)
    record = out[1].evidence
    assert record["reason"] == "nothing happened for 10 min while weighing"
    assert record["finished_at"] == iso_time(bench.t + 7200), "the wall clock's time"
    bench.wall_offset -= 86400  # and back a day: nobody is logged out early
    assert bench.tick(800) == [] and bench.snap["packer"] == "EMP-042"
    bench.tick(200)
    assert bench.snap["state"] == "logged_out"
