"""Print jobs end to end: central system -> MQTT -> agent -> printer simulators, and back.

Every test runs the real agent as a subprocess against mosquitto and the printer
simulators over TCP, and checks the bytes that reached the printer and the ``print_job``
events the central system received.
"""

from __future__ import annotations

import base64
import io
import json
import time
import zlib
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from importlib import resources
from typing import Any

import jsonschema
import pytest

from simulators.broker import Broker
from simulators.central import CentralSystem, Received
from simulators.printer import EscposPrinterSim, LabelPrinterSim
from tests.harness import AgentProcess, wait_until

SITE, BENCH = "sh01", "b07"
JOB_SCHEMA = json.loads(resources.files("agent.schemas").joinpath("print_job.json").read_text())
STATUS_SCHEMA = json.loads(resources.files("agent.schemas").joinpath("status.json").read_text())


def zpl(text: str, quantity: int = 1) -> bytes:
    return f"^XA^FO50,50^A0N,40,40^FD{text}^FS^PQ{quantity}^XZ".encode()


def raw(fmt: str, data: bytes) -> dict[str, str]:
    return {"format": fmt, "data": base64.b64encode(data).decode()}


@pytest.fixture
def label() -> Iterator[LabelPrinterSim]:
    sim = LabelPrinterSim("zpl").start()
    yield sim
    sim.stop()


@pytest.fixture
def slip() -> Iterator[EscposPrinterSim]:
    sim = EscposPrinterSim().start()
    yield sim
    sim.stop()


@pytest.fixture
def bench(broker: Broker, agent_factory: Callable[..., AgentProcess], label: LabelPrinterSim,
          slip: EscposPrinterSim) -> Callable[..., AgentProcess]:
    """Start an agent with a ZPL label printer and an ESC/POS slip printer."""
    def start(**print_config: Any) -> AgentProcess:
        devices = {
            "label": {"kind": "printer", "language": "zpl", "role": "label",
                      "connection": f"tcp://127.0.0.1:{label.port}", "status_interval_s": 0.5,
                      "reconnect_min_s": 0.1, "reconnect_max_s": 0.3},
            "slip": {"kind": "printer", "language": "escpos", "role": "slip",
                     "connection": f"tcp://127.0.0.1:{slip.port}", "status_interval_s": 0.5,
                     "width_mm": 72.0, "reconnect_min_s": 0.1, "reconnect_max_s": 0.3},
        }
        jobs = {"print": {"hold_poll_s": 0.2, "confirm_poll_s": 0.05, **print_config}}
        return agent_factory(broker, devices=devices, jobs=jobs).start()
    return start


def events(central: CentralSystem, job_id: str) -> list[dict[str, Any]]:
    """The ``print_job`` events of ``job_id`` in arrival order (duplicate deliveries folded)."""
    seen: dict[str, dict[str, Any]] = {}
    for message in central.matching(_is_job(job_id)):
        seen.setdefault(message.json["id"], message.json["data"])
    return list(seen.values())


def states(central: CentralSystem, job_id: str) -> list[str]:
    return [e["state"] for e in events(central, job_id) if not e.get("duplicate")]


def _is_job(job_id: str, state: str | None = None) -> Callable[[Received], bool]:
    def match(message: Received) -> bool:
        if not message.topic.endswith("/events/print_job"):
            return False
        data = message.json["data"]
        return bool(data["job_id"] == job_id and (state is None or data["state"] == state))
    return match


def wait_state(central: CentralSystem, job_id: str, state: str,
               timeout_s: float = 20.0) -> dict[str, Any]:
    data: dict[str, Any] = central.wait_for(_is_job(job_id, state), timeout_s)[0].json["data"]
    jsonschema.validate(data, JOB_SCHEMA)
    return data


def submit(central: CentralSystem, job_id: str, document: dict[str, Any], *,
           printer: str | None = "label", **args: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"job_id": job_id, "document": document, **args}
    if printer is not None and "role" not in args:
        body["printer"] = printer
    return central.request(SITE, BENCH, "print.submit", body, timeout_s=20)


def ready(central: CentralSystem, *names: str) -> None:
    for name in names:
        central.wait_for(lambda m, n=name: m.topic.endswith("/events/device_state")
                         and m.json["data"]["device"] == n
                         and m.json["data"]["state"] == "ready", timeout_s=20)


def in_later(seconds: float) -> str:
    return (datetime.now(UTC) + timedelta(seconds=seconds)).isoformat()


# ---------------------------------------------------------------- the happy paths
def test_a_zpl_job_reaches_the_printer_byte_for_byte_and_is_confirmed_printed(
        central: CentralSystem, bench: Callable[..., AgentProcess],
        label: LabelPrinterSim) -> None:
    agent = bench()
    ready(central, "label")
    job = zpl("SF1234567890", quantity=2)
    reply = submit(central, "wb-1", raw("zpl", job), waybill="SF1234567890")
    assert reply["ok"] is True, reply
    jsonschema.validate(reply["result"], JOB_SCHEMA)
    assert reply["result"]["state"] == "queued" and reply["result"]["labels"] == 2
    assert reply["result"]["waybill"] == "SF1234567890"
    printed = wait_state(central, "wb-1", "printed")
    assert label.jobs == [job]
    assert label.printed() == 2
    assert printed["printer"] == "label" and printed["bytes"] == len(job)
    assert "nothing left in its buffer" in printed["message"]
    assert states(central, "wb-1") == ["accepted", "queued", "printing", "printed"]
    status = central.request(SITE, BENCH, "status.get")["result"]
    jsonschema.validate(status, STATUS_SCHEMA)
    assert status["print"]["printers"]["label"]["labels_printed"] == 2
    assert status["print"]["printers"]["label"]["jobs_printed"] == 1
    assert status["print"]["jobs"]["queued"] == 0
    got = central.request(SITE, BENCH, "print.get", {"job_id": "wb-1"})["result"]
    assert got["state"] == "printed" and got["waybill"] == "SF1234567890"
    assert agent.stop() == 0


def test_an_escpos_job_by_role_is_reported_sent_with_copies_repeated(
        central: CentralSystem, bench: Callable[..., AgentProcess],
        slip: EscposPrinterSim) -> None:
    agent = bench()
    ready(central, "slip")
    receipt = b"\x1b@Order 42\n\x1dV\x00"
    reply = submit(central, "slip-1", raw("escpos", receipt), role="slip", copies=2)
    assert reply["ok"] is True, reply
    sent = wait_state(central, "slip-1", "sent")
    assert sent["printer"] == "slip"
    assert "ESCPOS printers cannot report whether a label has printed" in sent["message"]
    wait_until(lambda: bytes(slip.received) == receipt * 2, 5, "both copies at the printer")
    assert states(central, "slip-1") == ["accepted", "queued", "printing", "sent"]
    assert agent.stop() == 0


# ---------------------------------------------------------------- the printer's own word
def test_paper_out_holds_the_queue_and_it_prints_in_order_after_recovery(
        central: CentralSystem, bench: Callable[..., AgentProcess],
        label: LabelPrinterSim) -> None:
    label.label_time_s = 1.0
    agent = bench()
    ready(central, "label")
    jobs = [zpl(f"parcel {n}") for n in range(3)]
    submit(central, "q-0", raw("zpl", jobs[0]))
    wait_state(central, "q-0", "printing")
    wait_until(lambda: len(label.jobs) == 1, 10, "the first job at the printer")
    label.set_fault("paper_out")  # runs out while the first label is printing
    for n in (1, 2):
        submit(central, f"q-{n}", raw("zpl", jobs[n]))
    stalled = central.wait_for(lambda m: _is_job("q-0", "printing")(m)
                               and m.json["data"]["code"] == "paper_out", 20)[0].json["data"]
    assert "paper out" in stalled["message"]
    assert "1 label(s) of the job still to print" in stalled["message"]
    time.sleep(1.0)
    assert label.jobs == jobs[:1], "nothing more is sent while the paper is out"
    assert "printing" not in states(central, "q-1")
    label.set_fault("paper_out", on=False)
    for n in range(3):
        wait_state(central, f"q-{n}", "printed")
    assert label.jobs == jobs
    assert states(central, "q-0") == ["accepted", "queued", "printing", "printing", "printing",
                                      "printed"]
    assert agent.stop() == 0


def test_a_job_waits_held_with_the_printers_reason_and_resumes(
        central: CentralSystem, bench: Callable[..., AgentProcess],
        label: LabelPrinterSim) -> None:
    agent = bench()
    ready(central, "label")
    label.set_fault("head_open")
    submit(central, "h-1", raw("zpl", zpl("held")))
    held = wait_state(central, "h-1", "held")
    assert held["code"] == "head_open" and "head open" in held["message"]
    status = central.request(SITE, BENCH, "status.get")["result"]
    assert status["print"]["jobs"]["held"] == 1
    assert status["print"]["printers"]["label"]["current_job"] == "h-1"
    label.set_fault("head_open", on=False)
    label.set_fault("paused")
    paused = central.wait_for(lambda m: _is_job("h-1", "held")(m)
                              and m.json["data"]["code"] == "paused", 20)[0].json["data"]
    assert paused["message"]
    assert label.jobs == []
    label.set_fault("paused", on=False)
    wait_state(central, "h-1", "printed")
    assert states(central, "h-1") == ["accepted", "queued", "held", "held", "printing",
                                      "printed"]
    assert agent.stop() == 0


def test_an_unplugged_printer_holds_jobs_and_a_cut_mid_job_is_uncertain_not_resent(
        central: CentralSystem, bench: Callable[..., AgentProcess],
        label: LabelPrinterSim) -> None:
    agent = bench()
    ready(central, "label")
    label.power(False)
    submit(central, "u-1", raw("zpl", zpl("while unplugged")))
    held = wait_state(central, "u-1", "held")
    assert held["code"] == "disconnected"
    label.power(True)
    wait_state(central, "u-1", "printed")
    # Now the cable goes while a three-label job prints.
    label.label_time_s = 1.0
    big = zpl("three labels", quantity=3)
    submit(central, "u-2", raw("zpl", big))
    wait_state(central, "u-2", "printing")
    wait_until(lambda: len(label.jobs) == 2, 10, "the job at the printer")
    label.power(False)
    uncertain = wait_state(central, "u-2", "uncertain")
    assert uncertain["code"] == "send_failed" and "print.reprint" in uncertain["message"]
    label.label_time_s = 0.0
    label.power(True)
    ready(central, "label")
    time.sleep(1.0)
    assert label.jobs.count(big) == 1, "an uncertain job is never printed again by itself"
    reprint = central.request(SITE, BENCH, "print.reprint",
                              {"job_id": "u-2", "reason": "parcel had no label"})
    assert reprint["ok"] is True and reprint["result"]["attempt"] == 2
    again = wait_state(central, "u-2", "printed")
    assert again["attempt"] == 2
    assert label.jobs.count(big) == 2
    assert agent.stop() == 0


# ---------------------------------------------------------------- crash, restart, duplicates
def test_kill9_with_jobs_in_flight_reports_uncertain_and_prints_the_rest_once(
        central: CentralSystem, bench: Callable[..., AgentProcess],
        label: LabelPrinterSim) -> None:
    label.label_time_s = 3.0
    agent = bench()
    ready(central, "label")
    jobs = {f"k-{n}": zpl(f"kill {n}") for n in range(3)}
    for job_id, data in jobs.items():
        submit(central, job_id, raw("zpl", data))
    wait_state(central, "k-0", "printing")
    wait_until(lambda: len(label.jobs) == 1, 10, "the first job at the printer")
    agent.kill9()
    label.label_time_s = 0.0
    restarted = bench()
    uncertain = wait_state(central, "k-0", "uncertain")
    assert uncertain["code"] == "agent_restarted"
    assert "may or may not have printed" in uncertain["message"]
    wait_state(central, "k-1", "printed")
    wait_state(central, "k-2", "printed")
    assert label.jobs == [jobs["k-0"], jobs["k-1"], jobs["k-2"]]
    status = central.request(SITE, BENCH, "status.get")["result"]
    assert status["print"]["jobs"]["uncertain"] == 1
    cancel = central.request(SITE, BENCH, "print.cancel", {"job_id": "k-0"})
    assert cancel["ok"] is True and cancel["result"]["state"] == "cancelled"
    time.sleep(0.5)
    assert label.jobs.count(jobs["k-0"]) == 1
    assert restarted.stop() == 0


def test_the_queue_survives_a_restart(
        central: CentralSystem, bench: Callable[..., AgentProcess],
        label: LabelPrinterSim) -> None:
    agent = bench()
    ready(central, "label")
    label.set_fault("paper_out")
    for n in range(2):
        submit(central, f"r-{n}", raw("zpl", zpl(f"restart {n}")))
    wait_state(central, "r-0", "held")
    assert agent.stop() == 0
    label.set_fault("paper_out", on=False)
    again = bench()
    wait_state(central, "r-0", "printed")
    wait_state(central, "r-1", "printed")
    assert label.jobs == [zpl("restart 0"), zpl("restart 1")]
    assert "uncertain" not in states(central, "r-0")
    assert again.stop() == 0


def test_a_repeated_job_id_is_not_printed_again_and_its_last_state_is_resent(
        central: CentralSystem, bench: Callable[..., AgentProcess],
        label: LabelPrinterSim) -> None:
    agent = bench()
    ready(central, "label")
    submit(central, "d-1", raw("zpl", zpl("once")))
    wait_state(central, "d-1", "printed")
    reply = submit(central, "d-1", raw("zpl", zpl("once")))  # a new command id, same job id
    assert reply["ok"] is True
    assert reply["result"]["duplicate"] is True and reply["result"]["state"] == "printed"
    resent = central.wait_for(lambda m: _is_job("d-1")(m)
                              and m.json["data"].get("duplicate") is True, 10)[0].json["data"]
    jsonschema.validate(resent, JOB_SCHEMA)
    assert resent["state"] == "printed"
    time.sleep(0.5)
    assert label.jobs == [zpl("once")]
    assert agent.stop() == 0


# ---------------------------------------------------------------- expiry, cancel, limits
def test_a_job_expires_while_held_and_one_expired_on_arrival_never_prints(
        central: CentralSystem, bench: Callable[..., AgentProcess],
        label: LabelPrinterSim) -> None:
    agent = bench()
    ready(central, "label")
    label.set_fault("paper_out")
    submit(central, "e-1", raw("zpl", zpl("late")), expires_at=in_later(2.0))
    expired = wait_state(central, "e-1", "expired")
    assert expired["code"] == "expired" and "before it could print" in expired["message"]
    reply = submit(central, "e-2", raw("zpl", zpl("too late")), expires_at=in_later(-5))
    assert reply["ok"] is True and reply["result"]["state"] == "expired"
    label.set_fault("paper_out", on=False)
    submit(central, "e-3", raw("zpl", zpl("on time")))
    wait_state(central, "e-3", "printed")
    assert label.jobs == [zpl("on time")]
    assert states(central, "e-1") == ["accepted", "queued", "held", "expired"]
    assert agent.stop() == 0


def test_cancel_removes_a_queued_job_and_refuses_what_cannot_be_cancelled(
        central: CentralSystem, bench: Callable[..., AgentProcess],
        label: LabelPrinterSim) -> None:
    agent = bench()
    ready(central, "label")
    label.set_fault("paper_out")
    submit(central, "c-1", raw("zpl", zpl("keep")))
    submit(central, "c-2", raw("zpl", zpl("cancel me")))
    wait_state(central, "c-2", "queued")
    reply = central.request(SITE, BENCH, "print.cancel", {"job_id": "c-2"})
    assert reply["ok"] is True and reply["result"]["state"] == "cancelled"
    wait_state(central, "c-2", "cancelled")
    again = central.request(SITE, BENCH, "print.cancel", {"job_id": "c-2"})
    assert again["ok"] is False and again["error"]["code"] == "not_cancellable"
    unknown = central.request(SITE, BENCH, "print.cancel", {"job_id": "nope"})
    assert unknown["ok"] is False and unknown["error"]["code"] == "unknown_job"
    label.set_fault("paper_out", on=False)
    wait_state(central, "c-1", "printed")
    time.sleep(0.5)
    assert label.jobs == [zpl("keep")]
    assert agent.stop() == 0


def test_bad_jobs_are_refused_with_a_clear_code_and_the_agent_goes_on(
        central: CentralSystem, bench: Callable[..., AgentProcess],
        label: LabelPrinterSim) -> None:
    agent = bench(max_queue=2, max_job_bytes=4096)
    ready(central, "label")
    cases = [
        ("b-1", raw("zpl", b"^XA^FDno end"), {}, "invalid_document"),
        ("b-2", raw("tspl", b"PRINT 1\r\n"), {}, "wrong_language"),
        ("b-3", raw("zpl", zpl("x")), {"printer": "nosuch"}, "unknown_printer"),
        ("b-4", raw("zpl", zpl("x")), {"printer": None, "role": "pallet"}, "unknown_printer"),
        ("b-5", raw("zpl", zpl("x" * 5000)), {}, "too_large"),
        ("b-6", {"format": "png", "data": base64.b64encode(b"not a png").decode()}, {},
         "invalid_document"),
    ]
    for job_id, document, extra, code in cases:
        reply = submit(central, job_id, document, **{"printer": "label", **extra})
        assert reply["ok"] is False and reply["error"]["code"] == code, (job_id, reply)
        failed = wait_state(central, job_id, "failed")
        assert failed["code"] == code and failed["message"] == reply["error"]["message"]
    invalid = central.request(SITE, BENCH, "print.submit", {"job_id": "b-7"})
    assert invalid["ok"] is False and invalid["error"]["code"] == "invalid_args"
    label.set_fault("paper_out")
    submit(central, "f-1", raw("zpl", zpl("1")))
    submit(central, "f-2", raw("zpl", zpl("2")))
    full = submit(central, "f-3", raw("zpl", zpl("3")))
    assert full["ok"] is False and full["error"]["code"] == "queue_full"
    assert "jobs.print.max_queue" in full["error"]["message"]
    label.set_fault("paper_out", on=False)
    wait_state(central, "f-2", "printed")
    retry = submit(central, "f-3", raw("zpl", zpl("3")))  # queue_full is not remembered
    assert retry["ok"] is True
    wait_state(central, "f-3", "printed")
    assert label.jobs == [zpl("1"), zpl("2"), zpl("3")]
    assert agent.stop() == 0


# ---------------------------------------------------------------- pairs on two printers
def test_a_waybill_and_its_slip_print_as_a_pair_in_order_on_two_printers(
        central: CentralSystem, bench: Callable[..., AgentProcess], label: LabelPrinterSim,
        slip: EscposPrinterSim) -> None:
    agent = bench()
    ready(central, "label", "slip")
    label.set_fault("paper_out")
    receipt = b"\x1b@slip for SF1\n\x1dV\x00"
    # The slip arrives first; it must still come out after the waybill.
    submit(central, "p-slip", raw("escpos", receipt), printer="slip",
           group={"id": "SF1", "seq": 2, "size": 2})
    waiting = wait_state(central, "p-slip", "held")
    assert waiting["code"] == "waiting_for_group"
    submit(central, "p-wb", raw("zpl", zpl("SF1")), group={"id": "SF1", "seq": 1, "size": 2})
    wait_state(central, "p-wb", "held")
    time.sleep(0.5)
    assert bytes(slip.received) == b"", "the slip waits while the waybill cannot print"
    label.set_fault("paper_out", on=False)
    printed = wait_state(central, "p-wb", "printed")
    sent = wait_state(central, "p-slip", "sent")
    assert printed["updated_at"] <= sent["updated_at"]
    printing_slip = next(e for e in events(central, "p-slip") if e["state"] == "printing")
    assert printing_slip["updated_at"] >= printed["updated_at"]
    assert label.jobs == [zpl("SF1")] and bytes(slip.received) == receipt
    # A group whose first job is cancelled does not print its second.
    label.set_fault("paper_out")
    submit(central, "x-wb", raw("zpl", zpl("SF2")), group={"id": "SF2", "seq": 1, "size": 2})
    submit(central, "x-slip", raw("escpos", receipt), printer="slip",
           group={"id": "SF2", "seq": 2, "size": 2})
    cancelled = central.request(SITE, BENCH, "print.cancel", {"group_id": "SF2"})
    assert sorted(cancelled["result"]["cancelled"]) == ["x-slip", "x-wb"]
    label.set_fault("paper_out", on=False)
    submit(central, "y-wb", raw("zpl", zpl("SF3")), group={"id": "SF3", "seq": 1})
    wait_state(central, "y-wb", "printed")
    assert label.jobs == [zpl("SF1"), zpl("SF3")] and bytes(slip.received) == receipt
    assert agent.stop() == 0


# ---------------------------------------------------------------- rendered documents
def _pdf_with_a_bar() -> bytes:
    """A 2 x 1 inch PDF page, white, with the left half black (Pillow writes the PDF)."""
    from PIL import Image

    page = Image.new("L", (144, 72), 255)  # 72 dpi: 2 x 1 inch
    page.paste(0, (0, 0, 72, 72))
    out = io.BytesIO()
    page.save(out, "PDF", resolution=72.0)
    return out.getvalue()


def test_a_pdf_waybill_reaches_the_label_printer_as_the_picture_that_was_sent(
        central: CentralSystem, bench: Callable[..., AgentProcess],
        label: LabelPrinterSim) -> None:
    agent = bench()
    ready(central, "label")
    pdf = _pdf_with_a_bar()
    reply = submit(central, "pdf-1", {"format": "pdf", "data": base64.b64encode(pdf).decode()})
    assert reply["ok"] is True, reply
    assert reply["result"]["pages"] == 1 and reply["result"]["document"] == "pdf"
    wait_state(central, "pdf-1", "printed")
    assert label.graphic_errors == []
    [picture] = label.graphics
    # 2 x 1 inch at the printer's 203 dpi: 406 x 203 dots, padded to whole bytes.
    assert (picture.width, picture.height) == (408, 203)
    row = picture.rows[:picture.width // 8]
    assert row[:25] == b"\xff" * 25 and row[26:] == bytes(len(row) - 26), row.hex()
    assert agent.stop() == 0


def test_a_packing_slip_with_chinese_text_reaches_the_receipt_printer_in_gb18030(
        central: CentralSystem, broker: Broker, agent_factory: Callable[..., AgentProcess],
        slip: EscposPrinterSim) -> None:
    devices = {"slip": {"kind": "printer", "language": "escpos", "role": "slip",
                        "connection": f"tcp://127.0.0.1:{slip.port}", "width_mm": 72.1,
                        "text_encoding": "gb18030"}}
    agent = agent_factory(broker, devices=devices).start()
    ready(central, "slip")
    fields = {"order_ids": ["SO-1"], "waybill": "SF1",
              "lines": [{"sku": "PEACH-12", "name": "水蜜桃 12个装", "quantity": 2}]}
    reply = submit(central, "slip-cn", {"format": "slip", "template": "packing_slip",
                                        "fields": fields}, printer="slip")
    assert reply["ok"] is True, reply
    wait_state(central, "slip-cn", "sent")
    received = bytes(slip.received)
    assert received.startswith(b"\x1b@") and b"\x1c&" in received  # reset, Chinese mode
    assert "水蜜桃 12个装".encode("gb18030") in received
    assert b"PEACH-12" in received and b"SO-1" in received
    assert agent.stop() == 0


def test_the_send_limit_grows_with_the_wire_time_of_a_serial_printer() -> None:
    """A big PDF label over a 9600 baud cable takes minutes: that is not a stalled printer."""
    from agent.bus import Bus
    from agent.config import PrintJobsConfig
    from agent.devices.printer import make_printer
    from agent.devices.settings import PrinterSettings
    from agent.jobs.spooler import Spooler

    config = PrintJobsConfig(send_timeout_s=30.0)

    def limit(connection: str, size: int) -> float:
        printer = make_printer("p", PrinterSettings(connection=connection, language="zpl"),
                               Bus())
        return Spooler(printer, None, config)._send_limit_s(size)  # type: ignore[arg-type]

    assert limit("serial:///dev/ttyS0?baud=9600", 96_000) == 130.0  # 10 bits a byte
    assert limit("serial:///dev/ttyS0", 9_600) == 40.0  # the language's 9600 default
    assert limit("serial:///dev/ttyS0?baud=115200", 115_200) == 40.0
    assert limit("tcp://127.0.0.1:9100", 10_000_000) == 30.0


def slow_pdf(fills: int) -> bytes:
    """A small PDF whose one page takes PDFium long to draw: ``fills`` overlapping filled
    paths in a deflated content stream (20,000 take about 10 s on the CI machine)."""
    content = zlib.compress(b"0.5 w " + b"10 10 m 280 420 l 20 400 l 270 15 l h f\n" * fills)
    objects = [b"<< /Type /Catalog /Pages 2 0 R >>",
               b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
               b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 288 432] /Contents 4 0 R >>",
               b"<< /Length %d /Filter /FlateDecode >>\nstream\n" % len(content) + content
               + b"\nendstream"]
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1, xref)
    return bytes(out)


def test_a_pdf_that_renders_too_long_is_stopped_and_the_next_one_prints(
        central: CentralSystem, bench: Callable[..., AgentProcess],
        label: LabelPrinterSim) -> None:
    agent = bench(render_timeout_s=1.0)
    ready(central, "label")
    started = time.monotonic()
    reply = submit(central, "slow-1", {"format": "pdf",
                                       "data": base64.b64encode(slow_pdf(40_000)).decode()})
    assert reply["ok"] is False and reply["error"]["code"] == "render_timeout", reply
    assert "jobs.print.render_timeout_s" in reply["error"]["message"]
    assert time.monotonic() - started < 8, "the render was stopped at its time limit"
    wait_state(central, "slow-1", "failed")
    ok = submit(central, "fast-1", {"format": "pdf",
                                    "data": base64.b64encode(_pdf_with_a_bar()).decode()})
    assert ok["ok"] is True, ok
    wait_state(central, "fast-1", "printed")
    assert len(label.graphics) == 1
    assert agent.stop() == 0


def test_a_cancel_that_arrives_while_the_job_is_rendered_is_not_lost(
        central: CentralSystem, bench: Callable[..., AgentProcess],
        label: LabelPrinterSim) -> None:
    agent = bench()
    ready(central, "label")
    submit(central, "warm", {"format": "pdf",  # starts the render worker
                             "data": base64.b64encode(_pdf_with_a_bar()).decode()})
    wait_state(central, "warm", "printed")
    pdf = base64.b64encode(slow_pdf(3_000)).decode()  # renders for a second or so
    central.send(SITE, BENCH, "print.submit",
                 {"id": "submit-r1", "args": {"job_id": "r-1", "printer": "label",
                                              "document": {"format": "pdf", "data": pdf}}})
    cancel = central.request(SITE, BENCH, "print.cancel", {"job_id": "r-1"}, timeout_s=30)
    assert cancel["ok"] is True and cancel["result"]["state"] == "cancelled", cancel
    time.sleep(1.0)
    assert states(central, "r-1") == ["accepted", "queued", "cancelled"]
    assert len(label.graphics) == 1, "only the warm-up job printed"
    assert agent.stop() == 0


def test_a_group_number_is_used_once_and_a_missing_first_job_fails_the_group_in_time(
        central: CentralSystem, bench: Callable[..., AgentProcess],
        slip: EscposPrinterSim) -> None:
    agent = bench(group_timeout_s=1.0)
    ready(central, "label", "slip")
    receipt = b"\x1b@slip\n"
    submit(central, "g-wb", raw("zpl", zpl("G1")), group={"id": "G1", "seq": 1, "size": 2})
    submit(central, "g-slip", raw("escpos", receipt), printer="slip",
           group={"id": "G1", "seq": 2, "size": 2})
    wait_state(central, "g-slip", "sent")
    again = submit(central, "g-wb-2", raw("zpl", zpl("G1 again")),
                   group={"id": "G1", "seq": 1, "size": 2})
    assert again["ok"] is False and again["error"]["code"] == "group_conflict", again
    assert "new group id" in again["error"]["message"]
    beyond = submit(central, "g-3", raw("zpl", zpl("x")), group={"id": "G9", "seq": 3, "size": 2})
    assert beyond["ok"] is False and beyond["error"]["code"] == "invalid_args"
    submit(central, "lonely", raw("escpos", receipt), printer="slip",
           group={"id": "G2", "seq": 2, "size": 2})
    failed = wait_state(central, "lonely", "failed")
    assert failed["code"] == "group_failed" and "group_timeout_s" in failed["message"]
    assert bytes(slip.received) == receipt
    assert agent.stop() == 0


def test_a_tspl_printer_gets_a_png_as_one_bitmap_job_and_a_receipt_printer_holds_on_paper_out(
        central: CentralSystem, broker: Broker, agent_factory: Callable[..., AgentProcess],
        slip: EscposPrinterSim) -> None:
    from PIL import Image

    tspl = LabelPrinterSim("tspl").start()
    try:
        devices = {
            "tsc": {"kind": "printer", "language": "tspl", "role": "label",
                    "connection": f"tcp://127.0.0.1:{tspl.port}", "width_mm": 50.0},
            "slip": {"kind": "printer", "language": "escpos", "role": "slip",
                     "connection": f"tcp://127.0.0.1:{slip.port}", "status_interval_s": 0.5},
        }
        agent = agent_factory(broker, devices=devices, jobs={"print": {"hold_poll_s": 0.2}})
        agent.start()
        ready(central, "tsc", "slip")
        picture = Image.new("1", (16, 3), 1)
        picture.paste(0, (0, 0, 8, 3))  # left byte black, right byte white, 3 rows
        out = io.BytesIO()
        picture.save(out, "PNG")
        png = {"format": "png", "data": base64.b64encode(out.getvalue()).decode()}
        reply = submit(central, "t-1", png, printer="tsc", copies=2)
        assert reply["ok"] is True, reply
        sent = wait_state(central, "t-1", "sent")
        assert "TSPL printers cannot report whether a label has printed" in sent["message"]
        [job] = tspl.jobs
        # TSPL BITMAP: 0 bits print black, so the black byte arrives as 00.
        assert b"\r\nBITMAP 0,0,2,3,0," + b"\x00\xff" * 3 + b"\r\nPRINT 1,2\r\n" in job
        assert tspl.printed() == 2
        slip.set_fault("paper_out")
        submit(central, "s-1", raw("escpos", b"\x1b@receipt\n"), printer="slip")
        held = wait_state(central, "s-1", "held")
        assert held["code"] == "paper_out"
        assert bytes(slip.received) == b""
        slip.set_fault("paper_out", on=False)
        wait_state(central, "s-1", "sent")
        assert bytes(slip.received) == b"\x1b@receipt\n"
        assert agent.stop() == 0
    finally:
        tspl.stop()


def test_with_the_reprint_policy_a_job_cut_off_by_a_crash_prints_again_and_says_so(
        central: CentralSystem, bench: Callable[..., AgentProcess],
        label: LabelPrinterSim) -> None:
    label.label_time_s = 3.0
    agent = bench(uncertain_policy="reprint")
    ready(central, "label")
    submit(central, "rp-1", raw("zpl", zpl("again")))
    wait_state(central, "rp-1", "printing")
    wait_until(lambda: len(label.jobs) == 1, 10, "the job at the printer")
    agent.kill9()
    label.label_time_s = 0.0
    restarted = bench(uncertain_policy="reprint")
    queued = central.wait_for(lambda m: _is_job("rp-1", "queued")(m)
                              and m.json["data"]["attempt"] == 2, 20)[0].json["data"]
    assert queued["code"] == "agent_restarted" and "uncertain_policy = reprint" in \
        queued["message"]
    printed = wait_state(central, "rp-1", "printed")
    assert printed["attempt"] == 2
    assert label.jobs == [zpl("again"), zpl("again")]
    listed = central.request(SITE, BENCH, "print.list", {"states": ["printed"]})["result"]
    assert [job["job_id"] for job in listed["jobs"]] == ["rp-1"]
    assert restarted.stop() == 0


def test_a_zpl_printer_that_stops_answering_mid_job_leaves_it_uncertain_in_time(
        central: CentralSystem, bench: Callable[..., AgentProcess],
        label: LabelPrinterSim) -> None:
    label.label_time_s = 10.0
    agent = bench(confirm_timeout_s=1.0)
    ready(central, "label")
    submit(central, "ct-1", raw("zpl", zpl("silent")))
    wait_state(central, "ct-1", "printing")
    wait_until(lambda: len(label.jobs) == 1, 10, "the job at the printer")
    label.no_reply = True  # connected, but ~HS gets no answer any more
    uncertain = wait_state(central, "ct-1", "uncertain")
    assert uncertain["code"] == "confirm_timeout"
    assert "without progress" in uncertain["message"]
    assert label.jobs == [zpl("silent")]
    assert agent.stop() == 0
