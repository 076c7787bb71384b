"""Print path: central publish -> first byte at the printer, and jobs/s into the queue.

Run from the repository root::

    .venv/bin/python -m benchmarks.print_latency [--jobs N] [--burst N]

Everything is real: mosquitto (TLS, a free loopback port), the agent as its own process
(``bench-agent run``) with its database on disk under ``/var/tmp``, a ZPL label printer
simulator on a TCP port and a central-system client (paho, TLS) in this process.

1. latency: one ``print.submit`` at a time (raw ZPL, about 60 bytes), timed from just
   before the central system's ``publish`` to the moment the first bytes of that job reach
   the simulator's socket; the next job goes after the agent reports the previous one
   ``printed``. The path: broker, command record (fsync), render, job + ``accepted`` and
   ``queued`` events (fsync), the printer's ``~HS`` before sending, ``printing`` (fsync),
   the bytes. One process holds both clocks (``perf_counter``).
2. the same for PDF waybills (a 4 x 6 in page drawn with boxes, text and bars), rendered
   to ZPL ``^GF`` in the render worker process: the first byte of the job's format;
3. intake: ``--burst`` jobs published back to back while the printer is paused (nothing
   prints), timed from the first publish to the ``queued`` event of the last one at the
   central system: jobs accepted into the durable queue per second, every one validated,
   stored with fsync and reported.
"""

from __future__ import annotations

import argparse
import base64
import io
import statistics
import threading
import time
from pathlib import Path

from benchmarks.rig import agent_and_central, scratch_dir
from benchmarks.stats import machine, percentile
from simulators.central import CentralSystem
from simulators.printer import LabelPrinterSim

SITE, BENCH = "sh01", "b07"


class TimedPrinter(LabelPrinterSim):
    """A ZPL printer simulator that notes when each job's first bytes arrive."""

    def __init__(self) -> None:
        super().__init__("zpl")
        self.first_byte: dict[bytes, float] = {}
        self.starts: list[float] = []
        self.arrived = threading.Condition()

    def receive(self, data: bytes) -> bytes:
        now = time.perf_counter()
        if data.startswith(b"^XA"):
            with self.arrived:
                self.starts.append(now)
                self.arrived.notify_all()
        start = data.find(b"^FDbench-")
        if data.startswith(b"^XA") and start >= 0:
            marker = data[start + 3:data.find(b"^FS", start)]
            with self.arrived:
                self.first_byte.setdefault(marker, now)
                self.arrived.notify_all()
        return super().receive(data)



def document(n: int) -> dict[str, str]:
    job = f"^XA^FO50,50^A0N,40,40^FDbench-{n}^FS^XZ".encode()
    return {"format": "zpl", "data": base64.b64encode(job).decode()}


def submit(central: CentralSystem, n: int, prefix: str = "job") -> None:
    central.send(SITE, BENCH, "print.submit",
                 {"id": f"cmd-{prefix}-{n}", "args": {"job_id": f"{prefix}-{n}",
                                                      "printer": "label",
                                                      "document": document(n)}})


def job_state(central: CentralSystem, job_id: str, state: str, timeout_s: float) -> None:
    central.wait_for(lambda m: m.topic.endswith("/events/print_job")
                     and m.json["data"]["job_id"] == job_id
                     and m.json["data"]["state"] == state, timeout_s)


def waybill_pdf() -> bytes:
    """A 4 x 6 inch waybill as a PDF page: boxes, text and a bar code, like a carrier's."""
    from PIL import Image, ImageDraw

    page = Image.new("L", (812, 1218), 255)  # 4 x 6 in at 203 dpi
    draw = ImageDraw.Draw(page)
    draw.rectangle((10, 10, 801, 1207), outline=0, width=4)
    for y in range(40, 400, 40):
        draw.text((30, y), f"Consignee line {y // 40}: Room 1203, No. 88 Example Road", fill=0)
    x = 60
    for n in range(95):  # bars of a Code 128-like pattern
        width = 2 + (n * 7) % 5
        if n % 2 == 0:
            draw.rectangle((x, 450, x + width, 700), fill=0)
        x += width
    draw.rectangle((30, 760, 780, 1180), outline=0, width=3)
    out = io.BytesIO()
    page.save(out, "PDF", resolution=203.0)
    return out.getvalue()


def pdf_latency(central: CentralSystem, printer: TimedPrinter, jobs: int) -> None:
    pdf = base64.b64encode(waybill_pdf()).decode()
    latencies_ms: list[float] = []
    for n in range(jobs + 3):  # the first three start the render worker and warm it
        with printer.arrived:
            before = len(printer.starts)
        started = time.perf_counter()
        central.send(SITE, BENCH, "print.submit",
                     {"id": f"cmd-pdf-{n}", "args": {"job_id": f"pdf-{n}", "printer": "label",
                                                     "document": {"format": "pdf",
                                                                  "data": pdf}}})
        with printer.arrived:
            assert printer.arrived.wait_for(lambda b=before: len(printer.starts) > b, 60)
            first = printer.starts[before]
        if n >= 3:
            latencies_ms.append((first - started) * 1000)
        job_state(central, f"pdf-{n}", "printed", 30)
    print(f"latency over {jobs} PDF waybills (4 x 6 in, {len(pdf) * 3 // 4:,} bytes, rendered "
          f"to ZPL ^GF in the render worker), publish -> first byte: "
          f"p50 {statistics.median(latencies_ms):.1f} ms, "
          f"p99 {percentile(latencies_ms, 0.99):.1f} ms")


def count_states(central: CentralSystem, prefix: str, state: str, count: int,
                 timeout_s: float) -> None:
    """Wait for ``count`` events in ``state`` of jobs named ``prefix...``, reading each
    message once (``CentralSystem.wait_for`` rescans them all at every arrival)."""
    deadline = time.monotonic() + timeout_s
    seen = found = 0
    while found < count:
        fresh = central.messages[seen:]
        seen += len(fresh)
        for message in fresh:
            if message.topic.endswith("/events/print_job"):
                data = message.json["data"]
                found += data["state"] == state and data["job_id"].startswith(prefix)
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {found} of {count} jobs {state} in {timeout_s} s")
        time.sleep(0.002)


def run(root: Path, jobs: int, burst: int) -> None:
    printer = TimedPrinter().start()
    devices = {"label": {"kind": "printer", "language": "zpl", "role": "label",
                         "connection": f"tcp://127.0.0.1:{printer.port}"}}
    jobs_config = {"print": {"max_queue": burst + jobs + 10, "confirm_poll_s": 0.05}}
    try:
        with agent_and_central(root, devices, jobs=jobs_config) as central:
            measure(central, printer, jobs, burst)
    finally:
        printer.stop()


def measure(central: CentralSystem, printer: TimedPrinter, jobs: int, burst: int) -> None:
    central.wait_for(lambda m: m.topic.endswith("/events/device_state")
                     and m.json["data"]["state"] == "ready", 30)
    for n in range(20):  # warm-up
        submit(central, n)
        job_state(central, f"job-{n}", "printed", 20)
    latencies_ms: list[float] = []
    for n in range(100, 100 + jobs):
        marker = f"bench-{n}".encode()
        started = time.perf_counter()
        submit(central, n)
        with printer.arrived:
            assert printer.arrived.wait_for(lambda m=marker: m in printer.first_byte, 20)
        latencies_ms.append((printer.first_byte[marker] - started) * 1000)
        job_state(central, f"job-{n}", "printed", 20)
    print(f"latency over {jobs} jobs, central publish -> first byte at the printer: "
          f"p50 {statistics.median(latencies_ms):.1f} ms, "
          f"p99 {percentile(latencies_ms, 0.99):.1f} ms, max {max(latencies_ms):.1f} ms")

    pdf_latency(central, printer, max(10, jobs // 10))

    printer.set_fault("paused")
    started = time.perf_counter()
    for n in range(burst):
        submit(central, n, prefix="burst")
    published_s = time.perf_counter() - started
    count_states(central, "burst-", "queued", burst, 300)
    elapsed_s = time.perf_counter() - started
    print(f"intake: {burst} jobs published in {published_s:.2f} s, all queued (validated, "
          f"stored with fsync, reported) after {elapsed_s:.2f} s = "
          f"{burst / elapsed_s:,.0f} jobs/s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=300, help="jobs timed one by one")
    parser.add_argument("--burst", type=int, default=1000, help="jobs published back to back")
    args = parser.parse_args()
    print(machine())
    with scratch_dir() as root:
        run(root, args.jobs, args.burst)


if __name__ == "__main__":
    main()
