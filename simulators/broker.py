"""A local mosquitto broker with a TLS listener, for the demo, the tests and benchmarks.

``Broker`` writes a mosquitto config into its own folder, starts ``mosquitto`` on a free
loopback port and can be stopped, killed and restarted on the same port (with its
persistence file, so sessions and queued messages survive like on a real broker).
With ``site_config`` it runs a site's mosquitto config instead (the example in
``config/mosquitto/``): every setting as written, only its listener moved to the free
port and its files swapped for the test's (CA, broker certificate, ACL, CRL, folder).
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
    site_config: Path | None = None
    """A site's mosquitto.conf to run as it is (see the module's docstring)."""
    acl_file: Path | None = None
    """The ACL file standing in for the site config's ``acl_file``."""
    crl_file: Path | None = None
    """A CRL for the listener (``crlfile``), also when the site config has it commented out."""

    def config_text(self) -> str:
        if self.site_config is not None:
            return self._site_config_text(self.site_config)
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

    def _site_config_text(self, site_config: Path) -> str:
        swapped = {"cafile": self.pki.ca, "certfile": self.pki.server.cert,
                   "keyfile": self.pki.server.key, "acl_file": self.acl_file,
                   "crlfile": self.crl_file, "persistence_location": f"{self.directory}/"}
        lines: list[str] = []
        listeners = 0
        for line in site_config.read_text().splitlines():
            key = line.split(maxsplit=1)[0] if line.strip() else "#"
            if key.startswith("#") or key in ("log_dest", "pid_file", "user"):
                continue
            if key == "listener":
                listeners += 1
                lines.append(f"listener {self.port} 127.0.0.1")
            elif key in swapped:
                if swapped[key] is None:
                    raise ValueError(f"{site_config}: {key}: give the broker a stand-in")
                lines.append(f"{key} {swapped.pop(key)}")
            elif key in ("include_dir", "password_file", "capath", "psk_file", "plugin",
                         "auth_plugin"):
                raise ValueError(f"{site_config}: {key}: no stand-in for this file here")
            else:
                lines.append(line.strip())
        if listeners != 1:
            raise ValueError(f"{site_config}: {listeners} listeners; the test broker runs one")
        if swapped.get("crlfile") is not None:  # commented out in the example
            lines.append(f"crlfile {swapped['crlfile']}")  # applies to the listener above
        lines.append("log_dest stdout")
        if os.geteuid() == 0:
            lines.append(f"user {pwd.getpwuid(os.geteuid()).pw_name}")
        return "\n".join(lines) + "\n" + self.extra

    def reload(self) -> None:
        """SIGHUP, as ``systemctl reload``: mosquitto re-reads its ACL, password and CRL files."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGHUP)

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
