"""The MQTT link against a real mosquitto: birth, Will, outages, kill -9, limits."""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import Callable
from importlib import resources
from pathlib import Path

import jsonschema

from agent.config import load_config
from agent.mqtt import Inbound, MqttLink
from simulators.broker import Broker
from simulators.central import CentralSystem, Received
from simulators.pki import Pki
from tests.harness import AgentProcess, bench_config, wait_until, write_toml

STATUS = "benchagent/v1/sh01/b07/status"
TICKS = "benchagent/v1/sh01/b07/events/test.tick"
EVENT_SCHEMA = json.loads(resources.files("agent.schemas").joinpath("event.json").read_text())


def _status(state: str, session: int | None = None) -> Callable[[Received], bool]:
    def match(m: Received) -> bool:
        if m.topic != STATUS:
            return False
        body = m.json
        return bool(body["state"] == state and (session is None or body["session"] == session))
    return match


def _ticks(central: CentralSystem) -> list[dict[str, object]]:
    return [m.json for m in central.matching(lambda m: m.topic == TICKS)]


def _assert_complete_in_order(events: list[dict[str, object]], count: int) -> None:
    """Every tick 1..count arrived; first arrivals are in order; duplicates share the id."""
    first_seen: dict[int, dict[str, object]] = {}
    order = []
    for event in events:
        jsonschema.validate(event, EVENT_SCHEMA)
        n = event["data"]["n"]  # type: ignore[index]
        if n in first_seen:
            assert first_seen[n]["id"] == event["id"], "a duplicate must carry the same id"
            assert first_seen[n]["seq"] == event["seq"]
            continue
        first_seen[n] = event
        order.append(n)
    assert sorted(first_seen) == list(range(1, count + 1)), "events were lost"
    assert order == sorted(order), "events arrived out of order"
    seqs = [first_seen[n]["seq"] for n in order]
    assert seqs == sorted(seqs)


def test_birth_is_retained_online_with_version_bench_devices_and_session(
        broker: Broker, central_factory: Callable[..., CentralSystem],
        agent_factory: Callable[..., AgentProcess]) -> None:
    """A central system that subscribes later still sees the retained online status."""
    agent = agent_factory(broker).start()
    first = central_factory(broker)
    first.subscribe(STATUS)
    first.wait_for(_status("online"))
    late = central_factory(broker)
    late.subscribe(STATUS)
    retained = late.wait_for(_status("online"))[0]
    assert retained.retain
    body = retained.json
    schema = json.loads(resources.files("agent.schemas").joinpath("status.json").read_text())
    jsonschema.validate(body, schema)
    assert body["agent_version"]
    assert (body["site"], body["bench"]) == ("sh01", "b07")
    assert body["session"] == 1
    assert [d["name"] for d in body["devices"]] == ["scale1", "label"]
    assert body["link"]["state"] == "connected"
    assert body["outbox"]["pending"] == 0
    assert agent.stop() == 0


def test_session_counter_increases_with_every_connect_and_survives_restarts(
        broker: Broker, central: CentralSystem,
        agent_factory: Callable[..., AgentProcess]) -> None:
    agent = agent_factory(broker)
    agent.start()
    central.wait_for(_status("online", session=1))
    assert agent.stop() == 0
    agent.start()
    central.wait_for(_status("online", session=2))
    broker.stop()  # a broker outage is a new connect, too
    broker.start()
    central.connect()
    central.wait_for(_status("online", session=3), timeout_s=15)
    assert agent.stop() == 0


def test_kill_9_of_the_agent_makes_the_will_say_offline(
        broker: Broker, central: CentralSystem,
        agent_factory: Callable[..., AgentProcess]) -> None:
    agent = agent_factory(broker).start()
    central.wait_for(_status("online", session=1))
    agent.kill9()
    will = central.wait_for(_status("offline"))[0].json
    assert will["reason"] == "connection_lost"
    assert will["session"] == 1
    assert (will["site"], will["bench"]) == ("sh01", "b07")


def test_sigterm_says_offline_before_disconnecting_and_exits_0(
        broker: Broker, central: CentralSystem, central_factory: Callable[..., CentralSystem],
        agent_factory: Callable[..., AgentProcess]) -> None:
    agent = agent_factory(broker).start()
    central.wait_for(_status("online"))
    assert agent.stop() == 0
    offline = central.wait_for(_status("offline"))
    assert [m.json["reason"] for m in offline] == ["shutdown"], "the Will must not fire"
    late = central_factory(broker)
    late.subscribe(STATUS)
    retained = late.wait_for(_status("offline"))[0]
    assert retained.retain and retained.json["reason"] == "shutdown"


def test_broker_down_at_boot_is_normal_and_the_agent_connects_when_it_comes(
        broker_factory: Callable[..., Broker], central_factory: Callable[..., CentralSystem],
        agent_factory: Callable[..., AgentProcess]) -> None:
    broker = broker_factory()
    agent = agent_factory(broker).start()
    wait_until(lambda: "cannot connect" in agent.output(), what="a failed connect attempt")
    broker.start()
    central = central_factory(broker)
    central.subscribe(STATUS)
    central.wait_for(_status("online"), timeout_s=15)
    assert agent.process is not None and agent.process.poll() is None
    assert agent.stop() == 0


def test_broker_restart_while_producing_loses_nothing_and_keeps_order(
        broker: Broker, central_factory: Callable[..., CentralSystem],
        agent_factory: Callable[..., AgentProcess], tmp_path: Path) -> None:
    """Events produced before, during and after a broker outage all arrive, in order."""
    # A persistent session: the broker queues the subscriber's messages across its restart.
    central = central_factory(broker, client_id="central-persistent", session_expiry_s=600)
    central.subscribe(TICKS)
    progress = tmp_path / "progress"
    count = 150
    agent = agent_factory(broker, extra_args=["--count", str(count), "--interval", "0.02",
                                              "--progress", str(progress)]).start()
    wait_until(lambda: progress.exists() and int(progress.read_text() or 0) >= 30,
               what="first events produced")
    broker.stop()
    wait_until(lambda: int(progress.read_text() or 0) >= 80, what="events during the outage")
    broker.start()
    central.connect()
    central.wait_for(lambda m: m.topic == TICKS and m.json["data"]["n"] == count, timeout_s=30)
    _assert_complete_in_order(_ticks(central), count)
    late = [e for e in _ticks(central) if e["replayed"]]
    assert late, "events stored during the outage must be flagged replayed"
    assert agent.stop() == 0


def test_kill_9_with_a_backlog_delivers_everything_after_restart(
        broker_factory: Callable[..., Broker], central_factory: Callable[..., CentralSystem],
        agent_factory: Callable[..., AgentProcess], tmp_path: Path) -> None:
    broker = broker_factory()  # not started: every event stays in the outbox
    progress = tmp_path / "progress"
    agent = agent_factory(broker, extra_args=["--progress", str(progress)])
    agent.start("--count", "40")
    wait_until(lambda: progress.exists() and progress.read_text() == "40", what="40 stored")
    agent.kill9()
    broker.start()
    central = central_factory(broker)
    central.subscribe(TICKS)
    agent.start()  # the same bench restarted, producing nothing new
    central.wait_for(lambda m: m.topic == TICKS, count=40, timeout_s=20)
    events = _ticks(central)
    _assert_complete_in_order(events, 40)
    assert all(e["replayed"] for e in events)
    assert agent.stop() == 0


def test_broker_receive_maximum_limits_the_events_in_flight(
        broker_factory: Callable[..., Broker], central_factory: Callable[..., CentralSystem],
        agent_factory: Callable[..., AgentProcess]) -> None:
    broker = broker_factory(max_inflight_messages=2).start()
    central = central_factory(broker)
    central.watch()
    agent = agent_factory(broker, extra_args=["--count", "60"]).start()
    central.wait_for(lambda m: m.topic == TICKS, count=60, timeout_s=20)
    _assert_complete_in_order(_ticks(central), 60)
    status = central.wait_for(_status("online"))[0].json
    assert status["link"]["receive_maximum"] == 2
    assert status["link"]["window"] == 1, "one slot is kept for the status message"
    assert "Receive Maximum" not in agent.output() and "Traceback" not in agent.output()
    assert agent.stop() == 0


def test_event_larger_than_the_broker_allows_is_set_aside_and_the_rest_flow(
        broker_factory: Callable[..., Broker], central_factory: Callable[..., CentralSystem],
        agent_factory: Callable[..., AgentProcess]) -> None:
    """An oversized event is kept as rejected, reported, and does not block the queue."""
    broker = broker_factory(max_packet_size=4096).start()
    central = central_factory(broker)
    central.watch()
    big = agent_factory(broker, extra_args=["--count", "1", "--size", "8000"])
    big.start()
    wait_until(lambda: "too_large" in big.output(), what="the oversized event refused")
    assert big.stop() == 0
    small = agent_factory(broker, extra_args=["--count", "5"]).start()
    central.wait_for(lambda m: m.topic == TICKS, count=5)
    assert all(e["data"]["n"] in range(1, 6) and len(json.dumps(e)) < 4096
               for e in _ticks(central))
    status = central.request("sh01", "b07", "status.get")["result"]
    assert status["outbox"]["rejected"] == 1
    assert "Maximum Packet Size" in status["outbox"]["last_rejection"]
    small.signal(signal.SIGTERM)
    assert small.stop() == 0


def test_the_connection_ending_just_as_the_agent_stops_does_not_fail_the_stop(
        broker: Broker, pki: Pki, tmp_path: Path) -> None:
    """The broker goes away between "still connected" and the goodbye: the offline status
    cannot be sent (the broker publishes the Will instead) and the stop still succeeds."""
    config = load_config(write_toml(tmp_path / "agent.toml",
                                    bench_config(tmp_path, broker.port, pki.ca)))

    async def connected_hook() -> None:
        return None

    def ignore(_message: Inbound) -> None:
        return None

    async def scenario() -> None:
        link = MqttLink(config, status_topic=STATUS, will_payload=lambda: b"{}",
                        on_connected=connected_hook, on_message=ignore,
                        on_puback=lambda _mid, _reason, _text: None)
        runner = asyncio.create_task(link.run())
        await asyncio.wait_for(link.connected.wait(), 10)
        broker.kill()
        # The event loop is held here as a busy agent's can be: paho's thread has seen the
        # connection end, the agent's side has not heard of it yet.
        wait_until(lambda: not link._client.is_connected(), 10, "paho to see the end")
        assert link.connected.is_set()
        await link.close(b'{"state": "offline"}', timeout_s=1.0)
        await asyncio.wait_for(runner, 10)
        assert link.state == "stopped"

    asyncio.run(scenario())
