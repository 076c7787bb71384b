"""The demo: a bench agent on simulated hardware, a local TLS broker, a central system.

``scripts/demo.sh`` runs this. It keeps its state in ``.demo/`` (certificates, broker
persistence, the agent's database), so a second run resumes the same bench: the session
counter goes up and anything left in the outbox is delivered. It prints what the central
system sees; Ctrl-C (or ``--duration``) stops the agent cleanly, then the broker.
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from simulators.broker import Broker, free_port
from simulators.central import CentralSystem, Received
from simulators.pki import ensure_pki

SITE, BENCH = "demo", "bench01"


def _config(directory: Path, port: int) -> Path:
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

[devices.scale]
kind = "scale"
connection = "serial:///dev/ttyUSB0?baud=9600"

[devices.label]
kind = "printer"
role = "label"
connection = "tcp://127.0.0.1:9100"
""")
    return path


def _describe(message: Received) -> str:
    try:
        body = message.json
    except ValueError:
        return f"{message.topic}: {message.payload[:200]!r}"
    level = message.topic.split("/", 4)[-1]
    if level == "status":
        backlog = body.get("outbox", {})
        return (f"status {body['state']} (session {body['session']}, "
                f"reason {body.get('reason')}, backlog {backlog.get('pending', '-')})")
    data = body.get("data", {})
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
    config = _config(directory, port)
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
        broker.stop()
        print(f"[demo] agent exited with {code}; broker stopped")
    return 0 if code == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
