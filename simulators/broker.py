"""A local mosquitto broker with a TLS listener, for the demo, the tests and benchmarks.

``Broker`` writes a mosquitto config into its own folder, starts ``mosquitto`` on a free
loopback port and can be stopped, killed and restarted on the same port (with its
persistence file, so sessions and queued messages survive like on a real broker).
Run ``python -m simulators.broker DIR`` to keep one running in the foreground.
"""

from __future__ import annotations

import argparse
import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from simulators.pki import Pki, make_pki


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Broker:
    """One mosquitto process; ``port`` stays the same across restarts."""

    directory: Path
    pki: Pki
    port: int = field(default_factory=free_port)
    require_certificate: bool = False
    allow_anonymous: bool = True
    password_file: Path | None = None
    max_inflight_messages: int | None = None
    max_packet_size: int | None = None
    persistence: bool = True
    extra: str = ""
    process: subprocess.Popen[bytes] | None = None

    def config_text(self) -> str:
        lines = [
            f"listener {self.port} 127.0.0.1",
            f"cafile {self.pki.ca}",
            f"certfile {self.pki.server.cert}",
            f"keyfile {self.pki.server.key}",
            f"require_certificate {'true' if self.require_certificate else 'false'}",
            f"allow_anonymous {'true' if self.allow_anonymous else 'false'}",
            "max_queued_messages 1000000",
            # Nagle's algorithm on the broker's sockets holds a small packet back until the
            # previous one is acknowledged, and the receiver delays its ACK by up to 40 ms:
            # every command and PUBACK would wait for it. Production brokers want it too.
            "set_tcp_nodelay true",
            "log_dest stdout",
            "log_type error",
            "log_type warning",
            "log_type notice",
        ]
        if os.geteuid() == 0:
            # mosquitto drops root for user "mosquitto" unless told who to be.
            lines.append(f"user {pwd.getpwuid(os.geteuid()).pw_name}")
        if self.password_file is not None:
            lines.append(f"password_file {self.password_file}")
        if self.max_inflight_messages is not None:
            lines.append(f"max_inflight_messages {self.max_inflight_messages}")
        if self.max_packet_size is not None:
            lines.append(f"max_packet_size {self.max_packet_size}")
        if self.persistence:
            lines += ["persistence true", f"persistence_location {self.directory}/",
                      "autosave_interval 1"]
        return "\n".join(lines) + "\n" + self.extra

    def start(self, timeout_s: float = 10.0) -> Broker:
        binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        self.directory.mkdir(parents=True, exist_ok=True)
        conf = self.directory / "mosquitto.conf"
        conf.write_text(self.config_text())
        log = (self.directory / "mosquitto.log").open("ab")
        self.process = subprocess.Popen([binary, "-c", str(conf)], stdout=log, stderr=log)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"mosquitto exited with {self.process.returncode}; see "
                                   f"{self.directory / 'mosquitto.log'}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"mosquitto did not listen on {self.port} in {timeout_s}s")

    def stop(self) -> None:
        """Stop like a service stop (SIGTERM: mosquitto saves its persistence file)."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(10)
        self.process = None

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        self.process = None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directory", type=Path)
    parser.add_argument("--port", type=int, default=8883)
    args = parser.parse_args()
    pki = make_pki(args.directory / "pki")
    broker = Broker(args.directory, pki, port=args.port).start()
    print(f"mosquitto on 127.0.0.1:{broker.port} (TLS, CA {pki.ca}); Ctrl-C stops it")
    try:
        assert broker.process is not None
        broker.process.wait()
    except KeyboardInterrupt:
        broker.stop()


if __name__ == "__main__":
    main()
