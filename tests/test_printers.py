"""The printer driver against its simulators, over real TCP sockets, a pty and pyusb."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import settings as settings_
from hypothesis import strategies as st

from agent.bus import Bus
from agent.devices import usb
from agent.devices.printer import Printer, make_printer
from agent.devices.printers.escpos import EscposJob
from agent.devices.readings import BadInput, DeviceState, StateChange
from agent.devices.settings import PrinterSettings
from agent.errors import FAULT_CODES, DeviceError
from simulators.printer import EscposPrinterSim, LabelPrinterSim, PrinterSim, PtyLink
from simulators.usb_backend import SimBackend, SimUsbDevice

ROOT = Path(__file__).resolve().parent.parent


def settings(connection: str, language: str, **options: Any) -> PrinterSettings:
    values: dict[str, Any] = {"language": language, "status_interval_s": 0.2,
                              "status_timeout_ms": 300, "reconnect_min_s": 0.05,
                              "reconnect_max_s": 0.2}
    values.update(options)
    return PrinterSettings(connection=connection, **values)


@pytest.fixture
def sims() -> Iterator[Callable[..., PrinterSim]]:
    started: list[PrinterSim] = []

    def make(language: str = "zpl", **options: Any) -> PrinterSim:
        sim: PrinterSim = (EscposPrinterSim() if language == "escpos"
                           else LabelPrinterSim(language, **options))
        started.append(sim.start())
        return sim

    yield make
    for sim in started:
        sim.stop()


@asynccontextmanager
async def running(printer: Printer, *, ready: bool = True) -> AsyncIterator[Printer]:
    task = asyncio.create_task(printer.run())
    try:
        if ready:
            await asyncio.wait_for(printer.ready.wait(), 5)
        yield printer
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def until(predicate: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


def tcp_printer(sim: PrinterSim, language: str, bus: Bus | None = None,
                **options: Any) -> Printer:
    return make_printer("label", settings(f"tcp://127.0.0.1:{sim.port}", language, **options),
                        bus or Bus())


# ---------------------------------------------------------------- exact bytes
def test_zpl_job_reaches_the_printer_byte_for_byte_on_one_connection(sims: Any) -> None:
    """Jobs and status requests share the one TCP connection; the job arrives intact."""
    sim = sims("zpl")
    job = b"^XA^CI28^FO50,50^A0N,40,40^FDSF1234567890^FS^BY3^FO50,120^BCN,100,Y,N,N" \
          b"^FD>;1234567890^FS^PQ2^XZ"

    async def main() -> None:
        async with running(tcp_printer(sim, "zpl")) as printer:
            await printer.send(job)
            await printer.send(job)
            status = await printer.query_status()
            assert status.ready is True
            assert printer.details()["jobs_sent"] == 2
            assert printer.details()["labels_sent"] == 4
            assert printer.details()["bytes_sent"] == 2 * len(job)

    asyncio.run(main())
    assert sim.jobs == [job, job]
    assert sim.printed() == 4
    assert sim.connections == 1
    assert bytes(sim.raw) == b"~HS~HQES" + job + job + b"~HS~HQES"


def test_tspl_job_bytes_arrive_exactly_and_labels_print(sims: Any) -> None:
    sim = sims("tspl")
    job = (b"SIZE 100 mm,150 mm\r\nGAP 3 mm,0 mm\r\nCLS\r\n"
           b"TEXT 50,50,\"3\",0,1,1,\"SF1234567890\"\r\n"
           b"BARCODE 50,120,\"128\",100,1,0,2,2,\"SF1234567890\"\r\nPRINT 1,2\r\n")

    async def main() -> None:
        async with running(tcp_printer(sim, "tspl")) as printer:
            await printer.send(job)
            assert (await printer.query_status()).ready is True

    asyncio.run(main())
    assert sim.jobs == [job]
    assert sim.printed() == 2
    assert bytes(sim.raw) == b"\x1b!?" + job + b"\x1b!?"


def test_epl_job_bytes_arrive_exactly_and_status_comes_from_ee(sims: Any) -> None:
    sim = sims("epl")
    job = (b"\r\nN\r\nq812\r\nA50,50,0,4,1,1,N,\"SF1234567890\"\r\n"
           b"B50,100,0,1,2,4,100,B,\"12\"\r\nP1\r\n")

    async def main() -> None:
        async with running(tcp_printer(sim, "epl")) as printer:
            await printer.send(job)
            assert (await printer.query_status()).ready is True
            sim.set_fault("head_open")
            status = await printer.query_status()
            assert status.faults == ("head_open",)
            assert (printer.state, printer.code) == (DeviceState.FAULTED, "head_open")

    asyncio.run(main())
    assert sim.jobs == [job]
    assert bytes(sim.raw).count(b"^ee\r\n") == 3


def test_escpos_receipt_built_with_python_escpos_arrives_exactly(sims: Any) -> None:
    """Text, bold, cut from python-escpos: the printer gets exactly those bytes."""
    sim = sims("escpos")
    assert isinstance(sim, EscposPrinterSim)

    async def main() -> None:
        printer = tcp_printer(sim, "escpos", escpos_profile="TM-T88V")
        async with running(printer):
            job = EscposJob("TM-T88V")
            job.set(bold=True)
            job.text("Order 1234\n")
            job.cut()
            await printer.send(job.output)
            assert (await printer.query_status()).ready is True

    asyncio.run(main())
    assert bytes(sim.received) == b"\x1bE\x01\x1bt\x00Order 1234\n\x1bd\x06\x1dV\x00"
    status_request = b"\x10\x04\x01\x10\x04\x02\x10\x04\x03\x10\x04\x04"
    assert bytes(sim.raw).startswith(status_request)
    assert bytes(sim.raw).endswith(status_request)


# ---------------------------------------------------------------- status and faults
@pytest.mark.parametrize("fault", ["paper_out", "head_open", "ribbon_out", "paused"])
def test_zpl_printer_fault_becomes_the_device_state_and_clears(sims: Any, fault: str) -> None:
    """The poll reports the fault as the device's code; ready again when it clears."""
    sim = sims("zpl")
    bus = Bus()
    changes = bus.subscribe(StateChange)

    async def main() -> None:
        async with running(tcp_printer(sim, "zpl", bus)) as printer:
            sim.set_fault(fault)
            await until(lambda: printer.state is DeviceState.FAULTED)
            assert printer.code == fault
            assert printer.last_status is not None and printer.last_status.ready is False
            sim.set_fault(fault, on=False)
            await until(lambda: printer.state is DeviceState.READY)
        seen = []
        while (change := changes.get_nowait()) is not None:
            seen.append((change.state, change.code))
        assert (DeviceState.FAULTED, fault) in seen

    asyncio.run(main())


def test_zpl_printer_silent_in_fault_is_read_through_hqes(sims: Any) -> None:
    """A Zebra that ignores ~HS with the head open still says so in ~HQES."""
    sim = sims("zpl", silent_in_fault=True)

    async def main() -> None:
        async with running(tcp_printer(sim, "zpl")) as printer:
            sim.set_fault("head_open")
            status = await printer.query_status()
            assert status.faults == ("head_open",) and status.labels_remaining is None
            assert printer.code == "head_open"

    asyncio.run(main())


def test_printer_silent_in_fault_without_hqes_is_status_unknown_never_ready(sims: Any) -> None:
    """Older firmware, media out, no reply at all: status_unknown, not ok."""
    sim = sims("zpl", silent_in_fault=True, extended_status=False)

    async def main() -> None:
        async with running(tcp_printer(sim, "zpl")) as printer:
            assert (await printer.query_status()).ready is True  # learnt: no ~HQES
            sim.set_fault("paper_out")
            status = await printer.query_status()
            assert status.ready is None and status.faults == ("status_unknown",)
            assert (printer.state, printer.code) == (DeviceState.FAULTED, "status_unknown")
            assert bytes(sim.raw).endswith(b"~HS")

    asyncio.run(main())


@pytest.mark.parametrize("language", ["zpl", "tspl", "epl", "escpos"])
def test_no_reply_is_status_unknown_never_ok(sims: Any, language: str) -> None:
    """Connected but silent: every language reports status_unknown within the timeout."""
    sim = sims(language)

    async def main() -> None:
        async with running(tcp_printer(sim, language)) as printer:
            sim.no_reply = True
            started = time.monotonic()
            status = await printer.query_status()
            assert 0.25 < time.monotonic() - started < 1.0
            assert status.ready is None and status.faults == ("status_unknown",)
            assert printer.code == "status_unknown"
            sim.no_reply = False
            await until(lambda: printer.state is DeviceState.READY)

    asyncio.run(main())


@pytest.mark.parametrize("language", ["zpl", "epl", "escpos"])
def test_garbage_status_reply_is_reported_and_the_driver_keeps_running(
        sims: Any, language: str) -> None:
    """A reply that does not parse: BadInput protocol_error, faulted, then ready again."""
    sim = sims(language)
    bus = Bus()
    bad = bus.subscribe(BadInput)

    async def main() -> None:
        async with running(tcp_printer(sim, language, bus)) as printer:
            sim.garbage = b"\xffGARBAGE\x00\r\n"
            status = await printer.query_status()
            assert status.ready is None and status.faults == ("protocol_error",)
            assert printer.code == "protocol_error"
            item = await asyncio.wait_for(bad.get(), 1)
            assert item.code == "protocol_error" and b"GARBAGE" in item.raw
            sim.garbage = None
            await until(lambda: printer.state is DeviceState.READY)
            assert printer.connects == 1

    asyncio.run(main())


@settings_(max_examples=20, deadline=None)
@given(st.sampled_from(["zpl", "tspl", "epl", "escpos"]), st.binary(min_size=1, max_size=80))
def test_a_driver_fed_random_status_bytes_keeps_running(language: str, garbage: bytes) -> None:
    """Any reply bytes: a status or protocol_error with BadInput, never a crash or reconnect."""
    sim = LabelPrinterSim(language) if language != "escpos" else EscposPrinterSim()
    sim.start()
    bus = Bus()
    bad = bus.subscribe(BadInput)

    async def main() -> None:
        async with running(tcp_printer(sim, language, bus, status_interval_s=60,
                                       status_timeout_ms=100)) as printer:
            sim.garbage = garbage
            status = await printer.query_status()
            assert set(status.faults) <= set(FAULT_CODES)
            if "protocol_error" in status.faults:
                assert (await asyncio.wait_for(bad.get(), 1)).code == "protocol_error"
            sim.garbage = None
            await asyncio.sleep(0.02)  # the rest of a long garbage reply arrives, stale
            assert (await printer.query_status()).ready is True
            assert printer.connects == 1 and printer.state is DeviceState.READY

    try:
        asyncio.run(main())
    finally:
        sim.stop()


def test_tspl_status_byte_through_the_simulator(sims: Any) -> None:
    sim = sims("tspl")

    async def main() -> None:
        async with running(tcp_printer(sim, "tspl")) as printer:
            sim.set_fault("paper_jam")
            sim.set_fault("ribbon_out")
            status = await printer.query_status()
            assert status.faults == ("paper_jam", "ribbon_out")
            assert status.raw == b"\x0a"
            assert printer.message == "paper jam; out of ribbon"

    asyncio.run(main())


def test_escpos_cover_open_paper_near_end_and_paper_end(sims: Any) -> None:
    """DLE EOT from the receipt printer: near end keeps it ready, end and cover do not."""
    sim = sims("escpos")

    async def main() -> None:
        async with running(tcp_printer(sim, "escpos")) as printer:
            sim.set_fault("paper_near_end")
            status = await printer.query_status()
            assert status.ready is True and status.faults == ("paper_near_end",)
            assert printer.state is DeviceState.READY
            sim.set_fault("paper_out")
            status = await printer.query_status()
            assert status.faults == ("paper_out", "offline", "paper_near_end")
            assert printer.code == "paper_out"
            sim.set_fault("head_open")
            assert (await printer.query_status()).faults[0] == "head_open"

    asyncio.run(main())


def test_labels_remaining_counts_down_while_printing(sims: Any) -> None:
    """~HS labels remaining and formats in buffer confirm a batch printed."""
    sim = sims("zpl", label_time_s=0.05)

    async def main() -> None:
        async with running(tcp_printer(sim, "zpl", status_interval_s=60)) as printer:
            await printer.send(b"^XA^FO10,10^FDA^FS^PQ6^XZ^XA^FO10,10^FDB^FS^XZ")
            first = await printer.query_status()
            assert first.printing is True and first.labels_remaining is not None
            assert 1 <= first.labels_remaining <= 6 and first.formats_in_buffer == 1
            sim.set_fault("paper_out")
            stuck = await printer.query_status()
            await asyncio.sleep(0.15)
            assert (await printer.query_status()).labels_remaining == stuck.labels_remaining
            sim.set_fault("paper_out", on=False)
            await until(lambda: sim.printed() == 7)
            done = await printer.query_status()
            assert (done.labels_remaining, done.formats_in_buffer, done.printing) == (0, 0, False)

    asyncio.run(main())


def test_fragmented_and_stale_replies_still_parse(sims: Any) -> None:
    """Replies in 3-byte TCP pieces parse; bytes sent unasked are dropped first."""
    sim = sims("zpl")
    sim.chunk_size = 3
    sim.chunk_delay_s = 0.001

    async def main() -> None:
        async with running(tcp_printer(sim, "zpl", status_interval_s=60,
                                       status_timeout_ms=2000)) as printer:
            sim.push(b"\x02stale line\x03\r\nGARBAGE")
            await asyncio.sleep(0.05)
            sim.set_fault("ribbon_out")
            status = await printer.query_status()
            assert status.faults == ("ribbon_out",)

    asyncio.run(main())


def test_a_job_and_a_status_request_never_interleave(sims: Any) -> None:
    """Concurrent callers: the status request goes before or after the whole job."""
    sim = sims("zpl")
    job = b"^XA" + b"^FO10,10^FD" + b"X" * 200_000 + b"^FS^XZ"

    async def main() -> None:
        async with running(tcp_printer(sim, "zpl", status_interval_s=60)) as printer:
            await asyncio.gather(printer.send(job), printer.query_status(),
                                 printer.send(job), printer.query_status())

    asyncio.run(main())
    assert sim.jobs == [job, job]
    assert bytes(sim.raw) == b"~HS~HQES" + job + b"~HS~HQES" + job + b"~HS~HQES"


# ---------------------------------------------------------------- going away, coming back
def test_refused_connection_is_disconnected_and_recovers_without_restart(sims: Any) -> None:
    """Printer switched off: disconnected (refused); switched on: ready, jobs print."""
    sim = sims("zpl")

    async def main() -> None:
        async with running(tcp_printer(sim, "zpl")) as printer:
            sim.power(False)
            await until(lambda: printer.code == "refused")
            assert printer.state is DeviceState.DISCONNECTED
            with pytest.raises(DeviceError) as error:
                await printer.send(b"^XA^XZ")
            assert error.value.code == "disconnected"
            sim.power(True)
            await until(lambda: printer.state is DeviceState.READY)
            await printer.send(b"^XA^FO1,1^FDback^FS^XZ")
            assert printer.connects == 2

    asyncio.run(main())
    assert sim.wait_for(lambda: b"^FDback" in sim.raw)


def test_connection_closed_by_the_printer_reconnects(sims: Any) -> None:
    sim = sims("tspl")

    async def main() -> None:
        async with running(tcp_printer(sim, "tspl")) as printer:
            sim.drop_connections()
            await until(lambda: printer.state is not DeviceState.READY)
            await until(lambda: printer.state is DeviceState.READY)
            assert printer.connects == 2

    asyncio.run(main())
    assert sim.connections == 2


def test_device_file_printer_on_a_pty_prints_reports_and_survives_unplug(
        tmp_path: Path) -> None:
    """file:// (like /dev/usb/lp0): job bytes, ~HS status, unplug, replug."""
    sim = LabelPrinterSim("zpl")
    link = PtyLink(sim, tmp_path / "lp0")
    printer = make_printer("label", settings(f"file://{tmp_path}/lp0", "zpl"), Bus())
    job = b"^XA^FO20,20^FDpty^FS^XZ"

    async def main() -> None:
        async with running(printer):
            await printer.send(job)
            sim.set_fault("paper_out")
            assert (await printer.query_status()).faults == ("paper_out",)
            link.port.unplug()
            await until(lambda: printer.state is DeviceState.DISCONNECTED)
            sim.set_fault("paper_out", on=False)
            link.port.replug()
            await until(lambda: printer.state is DeviceState.READY)

    try:
        asyncio.run(main())
    finally:
        link.stop()
    assert sim.jobs == [job]


def test_usb_printer_through_pyusb_bulk_endpoints() -> None:
    """usb://VID:PID: jobs on the OUT endpoint, ~HS replies in 64-byte IN packets."""
    sim = LabelPrinterSim("zpl")
    device = SimUsbDevice(0x0A5F, 0x0166, product="ZD421")

    def answer(chunk: bytes) -> None:
        reply = sim.receive(chunk)
        for start in range(0, len(reply), device.max_packet):
            device.feed(reply[start:start + device.max_packet])

    device.on_write = answer
    usb.use_backend(SimBackend([device]))
    job = b"^XA^FO20,20^FDusb^FS^XZ"

    async def main() -> None:
        printer = make_printer("label", settings("usb://0a5f:0166", "zpl"), Bus())
        async with running(printer):
            await printer.send(job)
            sim.set_fault("head_open")
            assert (await printer.query_status()).faults == ("head_open",)

    try:
        asyncio.run(main())
    finally:
        usb.use_backend(None)
    assert sim.jobs == [job]
    assert b"".join(device.written).startswith(b"~HS~HQES")


def test_send_to_a_printer_that_never_connected_is_disconnected() -> None:
    printer = make_printer("label", settings("tcp://127.0.0.1:9", "zpl"), Bus())
    with pytest.raises(DeviceError) as error:
        asyncio.run(printer.send(b"^XA^XZ"))
    assert error.value.code == "disconnected"


def test_simulator_runs_as_a_process_with_stdin_control() -> None:
    """python -m simulators.printer: listen, answer ~HS, take 'paper_out on' on stdin."""
    process = subprocess.Popen(
        [sys.executable, "-m", "simulators.printer", "--language", "zpl", "--port", "0"],
        cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None and process.stdin is not None
        port = int(process.stdout.readline().rsplit(":", 1)[1])
        process.stdin.write("paper_out on\n")
        process.stdin.flush()
        assert process.stdout.readline().strip() == "ok"

        async def main() -> None:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"~HS")
            reply = await asyncio.wait_for(reader.readuntil(b"1234,0\x03\r\n"), 5)
            assert reply.startswith(b"\x02030,1,0,")
            writer.close()

        asyncio.run(main())
        process.stdin.write("quit\n")
        process.stdin.flush()
        assert process.wait(5) == 0
    finally:
        process.kill()
        process.wait()
