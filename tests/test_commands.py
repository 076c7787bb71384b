"""The command channel through a real broker: validation, replies, dedup, expiry."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from importlib import resources

import jsonschema
import paho.mqtt.client as paho
import pytest

from simulators.broker import Broker
from simulators.central import CentralSystem
from tests.harness import AgentProcess

SITE, BENCH = "sh01", "b07"
PREFIX = f"benchagent/v1/{SITE}/{BENCH}"
REPLY = f"{PREFIX}/reply/central"
REPLY_SCHEMA = json.loads(resources.files("agent.schemas").joinpath("reply.json").read_text())


@pytest.fixture
def online(broker: Broker, central: CentralSystem,
           agent_factory: Callable[..., AgentProcess]) -> Iterator[AgentProcess]:
    agent = agent_factory(broker, mqtt={"max_command_bytes": 2048}).start()
    central.wait_for(lambda m: m.topic == f"{PREFIX}/status" and m.json["state"] == "online")
    yield agent
    assert agent.stop() == 0
    assert "Traceback" not in agent.output()


def _replies(central: CentralSystem, correlation: bytes, count: int = 1) -> list[dict[str, object]]:
    found = central.wait_for(lambda m: m.topic == REPLY and m.correlation == correlation,
                             count=count)
    for message in found:
        jsonschema.validate(message.json["data"], REPLY_SCHEMA)
    return [m.json["data"] for m in found]


def _error(central: CentralSystem, name: str, body: dict[str, object] | bytes,
           correlation: bytes) -> dict[str, str]:
    central.send(SITE, BENCH, name, body, response_topic=REPLY, correlation=correlation)
    reply = _replies(central, correlation)[0]
    assert reply["ok"] is False
    return reply["error"]  # type: ignore[return-value]


def test_status_get_answers_on_the_response_topic_with_the_correlation_data(
        online: AgentProcess, central: CentralSystem) -> None:
    central.send(SITE, BENCH, "status.get", {"id": "c-1"}, response_topic=REPLY,
                 correlation=b"\x00corr\xff")
    reply = _replies(central, b"\x00corr\xff")[0]
    assert reply["ok"] is True and reply["command_id"] == "c-1"
    assert reply["result"]["bench"] == BENCH  # type: ignore[index]
    assert reply["result"]["link"]["state"] == "connected"  # type: ignore[index]


def test_state_resend_republishes_the_birth_message(online: AgentProcess,
                                                    central: CentralSystem) -> None:
    before = len(central.matching(lambda m: m.topic == f"{PREFIX}/status"))
    reply = central.request(SITE, BENCH, "state.resend")
    assert reply["ok"] is True
    central.wait_for(lambda m: m.topic == f"{PREFIX}/status", count=before + 1)


@pytest.mark.parametrize(("name", "body", "code", "says"), [
    ("status.get", b"{not json", "malformed_json", "not JSON"),
    ("status.get", b"\xff\xfe", "malformed_json", "not JSON"),
    ("status.get", {"args": {}}, "invalid_command", "'id' is a required property"),
    ("status.get", {"id": "x", "colour": "red"}, "invalid_command", "colour"),
    ("status.get", {"id": "bad id with spaces"}, "invalid_command", "does not match"),
    ("status.get", ["a", "list"], "invalid_command", "is not of type 'object'"),
    ("printer.melt", {"id": "u-1"}, "unknown_command", "state.resend, status.get"),
    ("status.get", {"id": "a-1", "args": {"verbose": True}}, "invalid_args", "verbose"),
    ("status.get", {"id": "e-1", "expires_at": "2020-01-01T00:00:00Z"}, "expired",
     "2020-01-01T00:00:00"),
    ("status.get", {"id": "e-2", "expires_at": "next tuesday"}, "invalid_command", "RFC 3339"),
    ("status.get", {"id": "e-3", "expires_at": "2030-01-01T00:00:00"}, "invalid_command",
     "no UTC offset"),
    ("status.get", {"id": "big", "args": {"pad": "x" * 4000}}, "too_large", "limit is 2048"),
])
def test_bad_commands_get_an_error_reply_that_says_what_was_wrong(
        online: AgentProcess, central: CentralSystem, name: str, body: dict[str, object] | bytes,
        code: str, says: str) -> None:
    error = _error(central, name, body, correlation=code.encode() + says[:5].encode())
    assert error["code"] == code
    assert says in error["message"]
    # ... and the agent keeps running and answering.
    assert central.request(SITE, BENCH, "status.get")["ok"] is True


def test_a_command_whose_message_expiry_passed_while_the_agent_was_down_never_runs(
        broker: Broker, central: CentralSystem,
        agent_factory: Callable[..., AgentProcess]) -> None:
    agent = agent_factory(broker).start()
    online = lambda m: m.topic == f"{PREFIX}/status" and m.json["state"] == "online"  # noqa: E731
    central.wait_for(online)
    assert agent.stop() == 0
    central.send(SITE, BENCH, "state.resend", {"id": "stale"}, response_topic=REPLY,
                 correlation=b"stale", expiry_s=1)
    time.sleep(2.5)  # mosquitto counts expiry in whole seconds
    agent.start()
    central.wait_for(online, count=2)
    central.request(SITE, BENCH, "status.get")  # a barrier: queued commands came first
    assert central.matching(lambda m: m.correlation == b"stale") == []
    assert agent.stop() == 0


def test_a_response_topic_outside_the_bench_reply_topic_is_refused(
        online: AgentProcess, central: CentralSystem) -> None:
    central.send(SITE, BENCH, "status.get", {"id": "r-1"},
                 response_topic="benchagent/v1/sh01/OTHER/reply", correlation=b"r-1")
    reply = central.wait_for(lambda m: m.topic == f"{PREFIX}/reply" and m.correlation == b"r-1")
    data = reply[0].json["data"]
    assert data["command_id"] == "r-1"
    assert data["error"]["code"] == "invalid_reply_topic"
    assert "OTHER" in data["error"]["message"]


def test_a_duplicate_command_runs_once_and_gets_the_stored_reply_again(
        online: AgentProcess, central: CentralSystem) -> None:
    statuses = lambda: central.matching(lambda m: m.topic == f"{PREFIX}/status")  # noqa: E731
    before = len(statuses())
    for _ in range(2):
        central.send(SITE, BENCH, "state.resend", {"id": "dup-1"}, response_topic=REPLY,
                     correlation=b"dup")
    first, second = _replies(central, b"dup", count=2)
    assert first["duplicate"] is False and second["duplicate"] is True
    assert {**second, "duplicate": False} == first
    central.request(SITE, BENCH, "status.get")  # a barrier: both were handled before it
    assert len(statuses()) == before + 1, "state.resend ran twice"


def test_mqtt_311_clients_use_reply_to(broker: Broker, online: AgentProcess,
                                       central_factory: Callable[..., CentralSystem]) -> None:
    old = central_factory(broker, protocol=paho.MQTTv311)
    old.subscribe(f"{PREFIX}/reply/#")
    old.send(SITE, BENCH, "status.get", {"id": "v3-1", "reply_to": f"{PREFIX}/reply/legacy"})
    reply = old.wait_for(lambda m: m.topic == f"{PREFIX}/reply/legacy")[0].json
    assert reply["data"]["command_id"] == "v3-1" and reply["data"]["ok"] is True


def test_a_command_sent_while_the_agent_is_down_runs_once_when_it_returns(
        broker: Broker, central: CentralSystem,
        agent_factory: Callable[..., AgentProcess]) -> None:
    agent = agent_factory(broker)
    agent.start()  # first run: creates the persistent session and its subscription
    online = lambda m: m.topic == f"{PREFIX}/status" and m.json["state"] == "online"  # noqa: E731
    central.wait_for(online)
    assert agent.stop() == 0
    central.send(SITE, BENCH, "state.resend", {"id": "while-down"}, response_topic=REPLY,
                 correlation=b"down")
    agent.start()
    reply = _replies(central, b"down")[0]
    assert reply["ok"] is True and reply["command_id"] == "while-down"
    assert agent.stop() == 0
    agent.start()  # a third run must not run it again
    central.wait_for(online, count=3)
    central.request(SITE, BENCH, "status.get")
    assert len(central.matching(lambda m: m.correlation == b"down")) == 1
    assert agent.stop() == 0
