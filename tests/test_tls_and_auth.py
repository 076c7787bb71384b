"""TLS is the only transport: a wrong CA is refused, mutual TLS and passwords work."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

from simulators.broker import Broker
from simulators.central import CentralSystem
from simulators.pki import Pki
from tests.harness import AgentProcess, wait_until

STATUS = "benchagent/v1/sh01/b07/status"


def _online(central: CentralSystem, timeout_s: float = 10.0) -> None:
    central.wait_for(lambda m: m.topic == STATUS and m.json["state"] == "online", timeout_s)


def test_a_broker_certificate_from_another_ca_is_refused(
        broker: Broker, central: CentralSystem, other_pki: Pki,
        agent_factory: Callable[..., AgentProcess]) -> None:
    agent = agent_factory(broker, mqtt={"tls": {"ca_file": str(other_pki.ca)}}).start()
    wait_until(lambda: agent.output().count("cannot connect") >= 2, what="refused attempts")
    assert "TLS: broker certificate rejected" in agent.output()
    assert central.matching(lambda m: m.topic == STATUS) == [], "it must never get through"
    assert agent.process is not None and agent.process.poll() is None, "and keeps trying"
    assert agent.stop() == 0


def test_mutual_tls_with_the_bench_certificate(
        broker_factory: Callable[..., Broker], central_factory: Callable[..., CentralSystem],
        agent_factory: Callable[..., AgentProcess], pki: Pki) -> None:
    broker = broker_factory(require_certificate=True).start()
    central = central_factory(broker, cert=pki.clients["central"].cert,
                              key=pki.clients["central"].key)
    central.subscribe(STATUS)
    without = agent_factory(broker).start()
    wait_until(lambda: "connection closed before the broker accepted it" in without.output(),
               what="a refused connection without a certificate")
    assert without.stop() == 0
    assert central.matching(lambda m: m.topic == STATUS) == []
    tls = {"ca_file": str(pki.ca), "cert_file": str(pki.clients["bench"].cert),
           "key_file": str(pki.clients["bench"].key)}
    agent = agent_factory(broker, mqtt={"tls": tls}).start()
    _online(central)
    assert agent.stop() == 0


def test_username_and_password_from_a_file(
        broker_factory: Callable[..., Broker], central_factory: Callable[..., CentralSystem],
        agent_factory: Callable[..., AgentProcess], pki: Pki, tmp_path: Path) -> None:
    passwords = tmp_path / "passwd"
    for user, password in (("bench-b07", "right horse"), ("central", "battery staple")):
        flags = ["-c"] if not passwords.exists() else []
        subprocess.run(["mosquitto_passwd", *flags, "-b", str(passwords), user, password],
                       check=True)
    broker = broker_factory(allow_anonymous=False, password_file=passwords).start()
    central = central_factory(broker, username=("central", "battery staple"))
    central.subscribe(STATUS)
    (tmp_path / "wrong").write_text("wrong horse\n")
    wrong = agent_factory(broker, mqtt={"username": "bench-b07",
                                        "password_file": str(tmp_path / "wrong")}).start()
    wait_until(lambda: "broker refused the connection: Not authorized" in wrong.output()
               or "Bad user name or password" in wrong.output(), what="a refused login")
    assert "wrong horse" not in wrong.output(), "a secret must never be logged"
    assert wrong.stop() == 0
    (tmp_path / "right").write_text("right horse\n")
    agent = agent_factory(broker, mqtt={"username": "bench-b07",
                                        "password_file": str(tmp_path / "right")}).start()
    _online(central)
    assert agent.stop() == 0
    assert "right horse" not in agent.output()
