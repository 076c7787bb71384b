"""Daemon lifecycle: systemd notifications, journald logging, callback isolation."""

from __future__ import annotations

import logging
import signal
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from agent.mqtt import _guarded
from simulators.broker import Broker
from simulators.central import CentralSystem
from tests.harness import AgentProcess, wait_until


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(10)
    yield sock, path
    sock.close()


def _datagrams(sock: socket.socket, until: str) -> list[str]:
    seen: list[str] = []
    while not any(until in d for d in seen):
        seen.append(sock.recv(4096).decode())
    return seen


def test_sd_notify_ready_watchdog_and_stopping(
        broker: Broker, central: CentralSystem, agent_factory: Callable[..., AgentProcess],
        notify_socket: tuple[socket.socket, str]) -> None:
    sock, path = notify_socket
    agent = agent_factory(broker, env={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "400000"})
    agent.start()
    seen = _datagrams(sock, "READY=1")
    assert any(d.startswith("READY=1") for d in seen)
    watchdog = _datagrams(sock, "WATCHDOG=1")
    assert watchdog, "WATCHDOG=1 must be sent at half of WatchdogSec"
    agent.signal(signal.SIGTERM)
    assert any("STOPPING=1" in d for d in _datagrams(sock, "STOPPING=1"))
    assert agent.stop() == 0


def test_under_journald_lines_carry_syslog_priorities(
        broker: Broker, agent_factory: Callable[..., AgentProcess]) -> None:
    agent = agent_factory(broker, env={"JOURNAL_STREAM": "8:1234"}).start()
    wait_until(lambda: "connected to" in agent.output(), what="a connect")
    assert agent.stop() == 0
    lines = [line for line in agent.output().splitlines() if line.strip()]
    assert lines and all(line.startswith("<") for line in lines), lines[:3]
    assert any(line.startswith("<6>agent.mqtt: connected to") for line in lines)


def test_sigint_stops_cleanly_like_sigterm(
        broker: Broker, central: CentralSystem,
        agent_factory: Callable[..., AgentProcess]) -> None:
    agent = agent_factory(broker).start()
    central.wait_for(lambda m: m.topic.endswith("/status") and m.json["state"] == "online")
    agent.signal(signal.SIGINT)
    assert agent.stop() == 0
    central.wait_for(lambda m: m.topic.endswith("/status") and m.json["reason"] == "shutdown")


def test_an_exception_in_a_paho_callback_is_logged_and_never_raised(
        caplog: pytest.LogCaptureFixture) -> None:
    calls = []

    def callback(value: int) -> None:
        calls.append(value)
        raise ValueError("boom")

    with caplog.at_level(logging.ERROR, logger="agent.mqtt"):
        _guarded(callback)(7)  # must not raise into paho's network thread
    assert calls == [7]
    assert "error in MQTT callback callback" in caplog.text and "boom" in caplog.text


def test_sigterm_while_the_broker_is_unreachable_exits_0_promptly(
        broker_factory: Callable[..., Broker], agent_factory: Callable[..., AgentProcess]) -> None:
    agent = agent_factory(broker_factory()).start()  # the broker never starts
    wait_until(lambda: "cannot connect" in agent.output(), what="a failed attempt")
    assert agent.stop(timeout_s=8) == 0
    assert "Traceback" not in agent.output()
