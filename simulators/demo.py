"""The demo: a bench agent on simulated hardware, a local TLS broker, a central system.

``scripts/demo.sh`` runs this. The simulated bench: an MT-SICS scale and a serial
scanner on pseudo-terminals, a ZPL label printer and an ESC/POS receipt printer on TCP,
a camera reading generated frames with barcodes. The demo then plays a few things that
happen on a real bench (a scan, a parcel on the scale, the label printer running out of
paper while a waybill and its packing slip wait to print, the scale's cable pulled and
plugged back) and prints what the central system
sees. It keeps its state in ``.demo/`` (certificates, broker persistence, the agent's
database), so a second run resumes the same bench: the session counter goes up and
anything left in the outbox is delivered. Ctrl-C (or ``--duration``, counted after the
scripted part) stops the agent cleanly, then the simulators and the broker.
"""

from __future__ import annotations

import argparse
import base64
import json
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from simulators.broker import Broker, free_port
from simulators.camera import BarcodeSpec, CameraScene
from simulators.central import CentralSystem, Received
from simulators.demo_parcels import describe as describe_packing
from simulators.demo_parcels import play_parcels
from simulators.pki import ensure_pki
from simulators.printer import EscposPrinterSim, LabelPrinterSim
from simulators.scale import MtSicsSimulator
from simulators.scanner import SerialScannerSimulator
from simulators.signal import RelayBoardSim

SITE, BENCH = "demo", "bench01"


class Bench:
    """The simulated hardware of the demo bench."""

    def __init__(self, directory: Path) -> None:
        devices = directory / "devices"
        devices.mkdir(parents=True, exist_ok=True)
        self.scale = MtSicsSimulator(devices / "scale").start()
        self.scanner = SerialScannerSimulator(devices / "scanner", aim="]E0")
        self.label = LabelPrinterSim("zpl").start()
        self.slip = EscposPrinterSim().start()
        scene = CameraScene([BarcodeSpec("ean13", "4006381333931"),
                             BarcodeSpec("qrcode", "SF1234567890")], (640, 480))
        self.camera = scene.write_sequence(devices / "camera", frames=5)
        self.light = RelayBoardSim(devices / "light").start()  # green 1, red 2, buzzer 3

    def close(self) -> None:
        self.scale.stop()
        self.scanner.close()
        self.light.close()
        self.label.stop()
        self.slip.stop()


def _socket(directory: Path) -> Path:
    """The control socket next to the demo's state (any user may create it there), or in
    a fresh /tmp folder when that path is too long for a Unix socket (100 bytes)."""
    path = directory / "control.sock"
    if len(str(path).encode()) <= 100:
        return path
    return Path(tempfile.mkdtemp(prefix="ba-demo-")) / "control.sock"


def _config(directory: Path, port: int, bench: Bench) -> Path:
    path = directory / "config.toml"
    path.write_text(f"""\
# Written by simulators/demo.py; see docs/configuration.md for every key.
[bench]
site = "{SITE}"
id = "{BENCH}"
description = "demo bench on simulated hardware"

[mqtt]
host = "localhost"
port = {port}
reconnect_min_s = 0.5
reconnect_max_s = 5.0

[mqtt.tls]
ca_file = "pki/ca.crt"
cert_file = "pki/bench.crt"
key_file = "pki/bench.key"

[storage]
dir = "state"

[status]
interval_s = 10.0

[diagnostics]
socket = "{_socket(directory)}"

[devices.scale]
kind = "scale"
protocol = "mt-sics"
connection = "serial://{bench.scale.path}"
reconnect_min_s = 0.5
reconnect_max_s = 2.0

[devices.scanner]
kind = "scanner"
role = "items"
connection = "serial://{bench.scanner.path}"

[devices.label]
kind = "printer"
language = "zpl"
role = "waybill"
connection = "tcp://127.0.0.1:{bench.label.port}"
status_interval_s = 0.5

[devices.slip]
kind = "printer"
language = "escpos"
role = "packing_slip"
connection = "tcp://127.0.0.1:{bench.slip.port}"
width_mm = 72.0
text_encoding = "gb18030"

[devices.light]
kind = "signal"
connection = "serial://{bench.light.path}"
good = {{ on = "A0 01 01 A2", off = "A0 01 00 A1", ms = 300 }}
bad = {{ on = "A0 02 01 A3", off = "A0 02 00 A2", ms = 800 }}
intercept = {{ on = "A0 03 01 A4", off = "A0 03 00 A3", ms = 2000 }}

[devices.camera]
kind = "camera"
role = "packing"
connection = "{bench.camera}"
""")
    return path


def _describe(message: Received) -> str:
    try:
        body = message.json
    except ValueError:
        return f"{message.topic}: {message.payload[:200]!r}"
    level = message.topic.split("/", 4)[-1]
    packing = describe_packing(message, body)
    if packing is not None:
        return packing
    if level == "status":
        backlog = body.get("outbox", {})
        return (f"status {body['state']} (session {body['session']}, "
                f"reason {body.get('reason')}, backlog {backlog.get('pending', '-')})")
    data = body.get("data", {})
    if body.get("kind") == "device_state":
        fault = f" {data['code']}: {data['message']}" if data.get("code") else ""
        return f"device {data['device']} ({data['kind']}) {data['state']}{fault}"
    if body.get("kind") == "print_job":
        why = f" {data['code']}" if data.get("code") else ""
        again = " (duplicate)" if data.get("duplicate") else ""
        return (f"print job {data['job_id']} on {data['printer']} {data['state']}{why}{again}: "
                f"{data['message']}")
    if body.get("kind") == "command.reply":
        outcome = "ok" if data.get("ok") else f"error {data.get('error')}"
        return f"reply to {data.get('command')} {data.get('command_id')}: {outcome}"
    return f"{level} seq {body.get('seq')}: {json.dumps(data)[:160]}"


def _print_messages(central: CentralSystem, stop: threading.Event) -> None:
    seen = 0
    while not stop.is_set():
        for message in central.messages[seen:]:
            print(f"[central] {_describe(message)}", flush=True)
        seen = len(central.messages)
        time.sleep(0.1)


def _device_state(central: CentralSystem, device: str, state: str, *, new: bool = True,
                  timeout_s: float = 20) -> None:
    """Wait for a ``device_state`` event of ``device`` in ``state`` (a new one if ``new``)."""
    def match(m: Received) -> bool:
        return (m.topic.endswith("/events/device_state")
                and m.json["data"]["device"] == device and m.json["data"]["state"] == state)

    before = len(central.matching(match)) if new else 0
    central.wait_for(match, timeout_s=timeout_s, count=before + 1)


def _ready_later(central: CentralSystem, device: str) -> Callable[[], None]:
    """Count ``ready`` events of ``device`` now; the returned call waits for one more."""
    def match(m: Received) -> bool:
        return (m.topic.endswith("/events/device_state")
                and m.json["data"]["device"] == device and m.json["data"]["state"] == "ready")

    before = len(central.matching(match))
    return lambda: central.wait_for(match, timeout_s=20, count=before + 1) and None


def _send_pair(central: CentralSystem, waybill: str) -> None:
    """A waybill (ZPL) and its packing slip (fields, Chinese included) as one group."""
    label = (f"^XA^CI28^FO40,40^A0N,40,40^FDSF Express^FS^FO40,100^BY3^BCN,160,Y,N,N"
             f"^FD{waybill}^FS^XZ").encode()
    central.request(SITE, BENCH, "print.submit", {
        "job_id": f"{waybill}-waybill", "role": "waybill",
        "document": {"format": "zpl", "data": base64.b64encode(label).decode()},
        "group": {"id": waybill, "seq": 1, "size": 2}})
    central.request(SITE, BENCH, "print.submit", {
        "job_id": f"{waybill}-slip", "role": "packing_slip",
        "document": {"format": "slip", "template": "packing_slip", "fields": {
            "shop": "Orchard Fresh 果园鲜", "order_ids": ["SO-2026-120301"],
            "waybill": waybill, "buyer": "Li Wei",
            "lines": [{"sku": "PEACH-12", "name": "水蜜桃 12个装", "quantity": 1},
                      {"sku": "BOX-S", "name": "Gift box", "quantity": 1}],
            "note": "Handle with care", "barcode": waybill}},
        "group": {"id": waybill, "seq": 2, "size": 2}})


def _job_state(central: CentralSystem, job_id: str, state: str) -> None:
    central.wait_for(lambda m: m.topic.endswith("/events/print_job")
                     and m.json["data"]["job_id"] == job_id
                     and m.json["data"]["state"] == state, timeout_s=20)


def _play(central: CentralSystem, bench: Bench) -> None:
    """A few minutes of a bench's life, in seconds."""
    for device in ("scale", "scanner", "label", "slip", "camera", "light"):
        _device_state(central, device, "ready", new=False)
    print("[demo] every device is ready; a packer scans an item and puts a parcel on the scale")
    bench.scanner.scan("4006381333931")
    bench.scale.set_weight(1234.5)
    time.sleep(1.0)
    bench.scale.set_weight(0.0)
    time.sleep(1.0)
    play_parcels(central, bench, SITE, BENCH)
    colours = {1: "green", 2: "red", 3: "red + buzzer"}
    shown = [colours[relay] for relay, on in bench.light.switched() if on]
    print(f"[demo] the stack light showed: {', '.join(shown)}")
    print("[demo] the label printer runs out of labels")
    ready_label = _ready_later(central, "label")
    bench.label.set_fault("paper_out")
    _device_state(central, "label", "faulted")
    print("[demo] the central system sends the parcel's waybill and packing slip as a pair")
    waybill = time.strftime("SF%y%m%d%H%M%S")  # a new parcel every run: the bench prints
    _send_pair(central, waybill)                # a job id once, even across runs
    _job_state(central, f"{waybill}-waybill", "held")
    print("[demo] labels loaded again: the waybill prints, then the slip")
    bench.label.set_fault("paper_out", on=False)
    ready_label()
    _job_state(central, f"{waybill}-waybill", "printed")
    _job_state(central, f"{waybill}-slip", "sent")
    print(f"[demo] the label printer holds {len(bench.label.jobs)} job(s); the slip printer "
          f"took {len(bench.slip.received)} bytes")
    print("[demo] the scale's USB cable is pulled")
    ready_scale = _ready_later(central, "scale")
    bench.scale.unplug()
    _device_state(central, "scale", "disconnected")
    print("[demo] and plugged back in")
    bench.scale.replug()
    ready_scale()
    reply = central.request(SITE, BENCH, "devices.list")
    states = ", ".join(f"{d['name']} {d['state']}" for d in reply["result"]["devices"])
    print(f"[demo] devices.list: {states}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=Path(".demo"))
    parser.add_argument("--duration", type=float, help="stop after this many seconds")
    args = parser.parse_args()
    directory: Path = args.dir.resolve()
    pki_dir = directory / "pki"
    pki = ensure_pki(pki_dir, ("bench", "central"))
    port_file = directory / "broker-port"
    port = int(port_file.read_text()) if port_file.exists() else free_port()
    port_file.write_text(str(port))
    broker = Broker(directory / "broker", pki, port=port, require_certificate=True).start()
    print(f"[demo] mosquitto on localhost:{port} (TLS, client certificates required)")
    bench = Bench(directory)
    print("[demo] simulated bench: MT-SICS scale and serial scanner on ptys, ZPL label "
          f"printer on :{bench.label.port}, ESC/POS printer on :{bench.slip.port}, camera "
          "on generated frames")
    config = _config(directory, port, bench)
    agent = subprocess.Popen([sys.executable, "-m", "agent.cli", "run", "-c", str(config)])
    central = CentralSystem(port, pki.ca, cert=pki.clients["central"].cert,
                            key=pki.clients["central"].key)
    stop = threading.Event()
    try:
        central.connect()
        central.watch(SITE, BENCH)
        threading.Thread(target=_print_messages, args=(central, stop), daemon=True).start()
        central.wait_for(lambda m: m.topic.endswith("/status") and m.json["state"] == "online",
                         timeout_s=30)
        print("[demo] bench online; asking for its status and a state resend")
        central.request(SITE, BENCH, "status.get")
        central.request(SITE, BENCH, "state.resend")
        _play(central, bench)
        print(f"[demo] the technician's view: .venv/bin/bench-agent status -c {config} "
              f"(also devices, selftest, scale read, scanner listen...; docs/cli.md)")
        print("[demo] running; Ctrl-C stops the agent (it says offline) and the broker")
        deadline = time.monotonic() + args.duration if args.duration else None
        while agent.poll() is None and (deadline is None or time.monotonic() < deadline):
            time.sleep(0.2)
    except KeyboardInterrupt:
        pass
    finally:
        if agent.poll() is None:
            agent.send_signal(signal.SIGTERM)
        code = agent.wait(30)
        time.sleep(0.3)
        stop.set()
        central.close()
        bench.close()
        broker.stop()
        print(f"[demo] agent exited with {code}; broker stopped")
    return 0 if code == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
