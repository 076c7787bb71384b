"""Fixtures: a throwaway CA, a real mosquitto per test, the agent as a subprocess."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from simulators.broker import Broker
from simulators.central import CentralSystem
from simulators.pki import Pki, make_pki
from tests.harness import AgentProcess, bench_config, write_toml
from tests.test_pack_bench import Bench


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"), clients=("bench", "central"))


@pytest.fixture(scope="session")
def other_pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A second, unrelated CA: its broker certificate must be refused."""
    return make_pki(tmp_path_factory.mktemp("other-pki"), ca_name="an unrelated CA")


@pytest.fixture
def broker_factory(tmp_path: Path, pki: Pki) -> Iterator[Callable[..., Broker]]:
    brokers: list[Broker] = []

    def make(**options: Any) -> Broker:
        broker = Broker(tmp_path / f"broker{len(brokers)}", options.pop("pki", pki), **options)
        brokers.append(broker)
        return broker

    yield make
    for broker in brokers:
        broker.kill()


@pytest.fixture
def broker(broker_factory: Callable[..., Broker]) -> Broker:
    return broker_factory().start()


@pytest.fixture
def central_factory(pki: Pki) -> Iterator[Callable[..., CentralSystem]]:
    clients: list[CentralSystem] = []

    def make(broker: Broker, **options: Any) -> CentralSystem:
        client = CentralSystem(broker.port, pki.ca, **options)
        clients.append(client)
        return client.connect()

    yield make
    for client in clients:
        client.close()


@pytest.fixture
def central(broker: Broker, central_factory: Callable[..., CentralSystem]) -> CentralSystem:
    client = central_factory(broker)
    client.watch()
    return client


@pytest.fixture
def agent_factory(tmp_path: Path, pki: Pki) -> Iterator[Callable[..., AgentProcess]]:
    """Make an agent for a broker; each gets its own config file and log."""
    agents: list[AgentProcess] = []

    def make(broker: Broker, *, extra_args: list[str] | None = None,
             env: dict[str, str] | None = None, **overrides: Any) -> AgentProcess:
        n = len(agents)
        doc = bench_config(tmp_path, broker.port, pki.ca, **overrides)
        config = write_toml(tmp_path / f"agent{n}.toml", doc)
        agent = AgentProcess(config, tmp_path / f"agent{n}.log", extra_args or [], env or {})
        agents.append(agent)
        return agent

    yield make
    for agent in agents:
        if agent.process is not None and agent.process.poll() is None:
            agent.process.kill()
            agent.process.wait(10)


@pytest.fixture
def bench(tmp_path: Path) -> Iterator[Bench]:
    """A simulated packing bench (tests.test_pack_bench.Bench): scanner and scale on
    ptys, printers on TCP, a camera on image files, a relay stack light."""
    sims = Bench(tmp_path)
    yield sims
    sims.close()
