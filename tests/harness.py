"""Test harness: bench configs, the agent as a real subprocess, waiting helpers."""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def write_toml(path: Path, doc: dict[str, Any]) -> Path:
    """Write nested dicts as TOML tables (enough for agent configs)."""
    lines: list[str] = []

    def table(prefix: str, node: dict[str, Any]) -> None:
        scalars = {k: v for k, v in node.items() if not isinstance(v, dict)}
        tables = {k: v for k, v in node.items() if isinstance(v, dict)}
        if prefix and (scalars or not tables):
            lines.append(f"[{prefix}]")
        for key, value in scalars.items():
            lines.append(f"{key} = {toml_value(value)}")
        for key, value in tables.items():
            table(f"{prefix}.{key}" if prefix else key, value)

    table("", doc)
    path.write_text("\n".join(lines) + "\n")
    return path


def short_socket_path() -> Path:
    """A control socket path of its own, short enough for ``sockaddr_un`` (pytest's
    ``tmp_path`` can be longer than the 100 bytes a socket path may have)."""
    folder = tempfile.mkdtemp(prefix="ba-")
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return Path(folder) / "control.sock"


def bench_config(tmp: Path, port: int, ca: Path, *, site: str = "sh01", bench: str = "b07",
                 **overrides: Any) -> dict[str, Any]:
    """A valid config dict for a bench on the test broker; ``overrides`` merge per section."""
    doc: dict[str, Any] = {
        "bench": {"site": site, "id": bench},
        "mqtt": {"host": "localhost", "port": port, "reconnect_min_s": 0.1,
                 "reconnect_max_s": 0.5, "keepalive_s": 5, "tls": {"ca_file": str(ca)}},
        "storage": {"dir": str(tmp / "state")},
        "status": {"interval_s": 5.0},
        "agent": {"shutdown_flush_s": 3.0},
        "diagnostics": {"socket": str(short_socket_path())},
        # Listed in the status but not driven: tests of devices configure their own.
        "devices": {"scale1": {"kind": "scale", "protocol": "mt-sics", "enabled": False,
                               "connection": "serial:///dev/ttyUSB0?baud=9600"},
                    "label": {"kind": "printer", "language": "zpl", "enabled": False,
                              "connection": "tcp://127.0.0.1:9100", "role": "label"}},
    }
    for section, values in overrides.items():
        if isinstance(values, dict) and isinstance(doc.get(section), dict):
            doc[section] = {**doc[section], **values}
        else:
            doc[section] = values
    return doc


@dataclass
class AgentProcess:
    """``bench-agent run`` (or the producer variant) as a child process."""

    config: Path
    log: Path
    extra_args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None

    def start(self, *args: str) -> AgentProcess:
        module = ["-m", "tests.producer_agent", str(self.config), *self.extra_args, *args]
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.env}
        with self.log.open("ab") as log:
            self.process = subprocess.Popen([sys.executable, *module], cwd=ROOT, stdout=log,
                                            stderr=subprocess.STDOUT, env=env)
        return self

    def signal(self, sig: signal.Signals) -> None:
        assert self.process is not None
        self.process.send_signal(sig)

    def kill9(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait(10)

    def stop(self, timeout_s: float = 15.0) -> int:
        """SIGTERM and wait; returns the exit code."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout_s)
        if code != 0:  # pytest shows this with the failing assertion on the exit code
            print(f"agent exited with {code}; the end of its log:\n{self.output()[-6000:]}")
        return code

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def wait_until(predicate: Callable[[], Any], timeout_s: float = 10.0, what: str = "") -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise TimeoutError(f"timed out after {timeout_s}s waiting for {what or predicate}")
