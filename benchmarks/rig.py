"""The set-up the end-to-end benchmarks share: broker, agent process, central client.

Everything is real: a TLS mosquitto on a free loopback port, the agent as its own process
(``bench-agent run``, its log in ``ROOT/agent.log``, level from ``$BENCH_LOG_LEVEL``,
default ``warning``) and a central-system client (paho, TLS) watching the bench.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from simulators.broker import Broker
from simulators.central import CentralSystem
from simulators.pki import make_pki
from tests.harness import bench_config, write_toml


@contextmanager
def agent_and_central(root: Path, devices: dict[str, Any],
                      **overrides: Any) -> Iterator[CentralSystem]:
    """Run the agent with ``devices`` (and config ``overrides`` per section) until exit."""
    pki = make_pki(root / "pki", clients=("bench", "central"))
    broker = Broker(root / "broker", pki).start()
    try:
        doc = bench_config(root, broker.port, pki.ca, devices=devices,
                           log={"level": os.environ.get("BENCH_LOG_LEVEL", "warning")},
                           **overrides)
        config = write_toml(root / "agent.toml", doc)
        agent = subprocess.Popen(
            [sys.executable, "-m", "agent.cli", "run", "-c", str(config)],
            stdout=(root / "agent.log").open("wb"), stderr=subprocess.STDOUT)
        try:
            central = CentralSystem(broker.port, pki.ca).connect()
            try:
                central.watch()
                yield central
            finally:
                central.close()
        finally:
            agent.terminate()
            agent.wait(30)
    finally:
        broker.kill()


@contextmanager
def scratch_dir() -> Iterator[Path]:
    """A temporary folder on disk (``/var/tmp``, not a tmpfs: fsync costs what it costs)."""
    base = Path("/var/tmp") if Path("/var/tmp").is_dir() else None
    with tempfile.TemporaryDirectory(dir=base) as tmp:
        yield Path(tmp)
