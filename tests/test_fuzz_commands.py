"""Fuzzing what the central system sends: command payloads, every command's args, orders.

In process, each payload goes through the command channel's intake (size, JSON, envelope,
reply topic, expiry, duplicates, name, args schema, ``[diagnostics]`` policy) with a real
store and outbox: it gets exactly one acknowledgement and at most one reply, valid JSON
with a code from docs/mqtt-api.md "Error codes" and a message naming what was wrong; what
is accepted then passes the handlers' own checks (orders, the print jobs of orders and of
``pack.labels``) or fails them with such a code. Print documents are fuzzed in
test_fuzz_printers.py. One test sends random payloads to a running agent through mosquitto.
``BENCH_FUZZ_SCALE=N`` runs N times the examples (``docs/architecture.md``, "Fuzzing").
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import time
from collections.abc import Callable, Iterator
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.config import parse_config
from agent.daemon import Daemon
from agent.errors import FAULT_CODES, AgentError, CommandError
from agent.jobs.order_commands import parse_orders
from agent.jobs.print_model import SUBMIT_SCHEMA
from agent.mqtt import Inbound
from simulators.broker import Broker
from simulators.central import CentralSystem
from simulators.pki import Pki
from tests.harness import AgentProcess, bench_config
from tests.test_fuzz_devices import FUZZ_SCALE, fuzz

ROOT = Path(__file__).resolve().parent.parent
SITE, BENCH = "sh01", "b07"
PREFIX = f"benchagent/v1/{SITE}/{BENCH}"
REPLY_SCHEMA = json.loads(resources.files("agent.schemas").joinpath("reply.json").read_text())


def documented_codes() -> set[str]:
    """The error codes of the docs/mqtt-api.md "Error codes" table, and device faults."""
    text = (ROOT / "docs" / "mqtt-api.md").read_text()
    table = text.split("### Error codes", 1)[1].split("\n## ", 1)[0]
    codes = set(FAULT_CODES)
    for row in table.splitlines():
        cells = row.split("|")
        if len(cells) > 3:  # a code, or a group ("print codes") listing its codes
            named = re.findall(r"`([a-z][a-z_]+)`", cells[1])
            codes |= set(named or re.findall(r"`([a-z][a-z_]+)`", cells[2]))
    return codes


CODES = documented_codes()


def strict_json(raw: bytes) -> Any:
    """JSON as a strict parser reads it: no NaN or Infinity, UTF-8 only."""
    def refuse(token: str) -> None:
        raise ValueError(f"{token} is not JSON")
    return json.loads(raw.decode("utf-8"), parse_constant=refuse)


# ---------------------------------------------------------------- payloads
_text = st.text(st.characters(exclude_categories=()), max_size=20)  # lone surrogates too
_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | _text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_text, inner, max_size=4),
    max_leaves=12)
_TRICKY = [b'"\\ud800"', b"NaN", b"-Infinity", b"1e999", b'"a\\udfffb"', b'"\\u0000"',
           b"9" * 5000, b"[" * 3000 + b"]" * 3000, b'{"a":' * 2000 + b"1" + b"}" * 2000,
           b"0.1e-99999", b'"' + b"x" * 3000 + b'"']
_command_id = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,20}", fullmatch=True)


def _order(lines: int = 1) -> dict[str, Any]:
    return {"order_id": "O-1", "lines": [
        {"sku": f"SKU-{n}", "barcodes": [f"690{n:010d}"], "quantity": 1, "unit_weight_g": 120.5}
        for n in range(lines)]}


def _like(schema: dict[str, Any]) -> st.SearchStrategy[Any]:
    """Values shaped by a JSON Schema (its types, enums, properties), or anything at all."""
    if "enum" in schema or "const" in schema:
        return st.sampled_from(schema.get("enum") or [schema.get("const")]) | _json
    kind = schema.get("type")
    if kind == "object" and "properties" in schema:
        properties = schema["properties"]
        return st.dictionaries(st.sampled_from(sorted(properties)) | _text,
                               st.deferred(lambda: _json), max_size=4).flatmap(
            lambda keys: st.fixed_dictionaries(
                {k: _like(properties.get(k, {})) for k in keys})) | _json
    if kind == "array":
        return st.lists(_like(schema.get("items", {})), max_size=3) | _json
    shaped = {"string": _text | _command_id, "integer": st.integers(-2, 200),
              "number": st.floats(-1, 200), "boolean": st.booleans()}.get(str(kind))
    return _json if shaped is None else shaped | shaped | _json


def _args() -> dict[str, st.SearchStrategy[Any]]:
    """Args for the commands whose schemas nest (orders, print jobs), near valid ones."""
    job = _like(SUBMIT_SCHEMA) | st.just({"role": "label", "document": {
        "format": "zpl", "data": "XlhBXlha"}})
    order = st.builds(lambda jobs: {**_order(2), "print_jobs": jobs}, st.lists(job, max_size=2))
    return {
        "order.push": st.fixed_dictionaries({"orders": st.lists(
            order | st.dictionaries(st.sampled_from(["order_id", "lines", "note", "x"]), _json),
            min_size=1, max_size=2)}),
        "pack.labels": st.fixed_dictionaries(
            {"order_ids": st.lists(_command_id | _text, min_size=1, max_size=2)},
            optional={"waybill": _command_id | _text, "jobs": st.lists(job, max_size=2)}),
    }


_ARGS = _args()


@st.composite
def _envelope(draw: st.DrawFn, schemas: dict[str, dict[str, Any]]) -> tuple[str, bytes]:
    topic_level = st.text(max_size=20)  # topics are UTF-8: no lone surrogates
    name = draw(st.sampled_from(sorted(schemas)) | st.sampled_from(sorted(schemas)) | topic_level)
    body: dict[str, Any] = {"id": draw(_command_id | _command_id | _json)}
    if draw(st.integers(0, 4)) != 3:  # hypothesis draws 0 more often than the others
        body["args"] = draw(_ARGS[name] if name in _ARGS else _like(schemas.get(name, {})))
    for key, value in (("expires_at", st.sampled_from(["2099-01-01T00:00:00Z",
                                                       "2020-01-01T00:00:00+08:00",
                                                       "tomorrow", "2030-01-01T00:00:00"])
                        | _text), ("reply_to", st.just(f"{PREFIX}/reply/x") | _text),
                       ("colour", _json)):
        if draw(st.integers(0, 7)) == 5:
            body[key] = draw(value)
    return name, json.dumps(body).encode()


def _payloads(schemas: dict[str, dict[str, Any]]) -> st.SearchStrategy[tuple[str, bytes]]:
    names = st.sampled_from(sorted(schemas))
    return st.one_of(
        _envelope(schemas), _envelope(schemas), _envelope(schemas),
        st.tuples(names, st.sampled_from(_TRICKY).map(  # a token where a value was
            lambda token: b'{"id":"t-1","args":{"v":%s}}' % token) | st.sampled_from(_TRICKY)),
        st.tuples(names, st.binary(max_size=64) | _json.map(lambda v: json.dumps(v).encode())))


# ---------------------------------------------------------------- in process
class Intake:
    """A daemon's command channel with a real store and outbox, on its own loop; accepted
    commands are kept instead of run, acknowledgements counted."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon, self.channel = daemon, daemon.commands
        self.schemas = {name: command.args_schema for name in self.channel.names
                        if (command := self.channel.get(name)) is not None}
        self.loop = asyncio.new_event_loop()
        self.acks: list[Inbound] = []
        self.accepted: list[tuple[str, dict[str, Any]]] = []
        channel: Any = self.channel
        channel._ack = self.acks.append
        channel._start = lambda command, request: self.accepted.append(
            (command.name, request.args))
        self.loop.run_until_complete(daemon.store.open())
        self.loop.run_until_complete(daemon.outbox.load())

    def receive(self, name: str, payload: bytes, **options: Any) -> list[dict[str, Any]]:
        """Hand one message to the channel; the replies it stored."""
        last = self._rows(0)[-1][0] if self._rows(0) else 0
        message = Inbound(topic=f"{PREFIX}/cmd/{name}", payload=payload, qos=1, mid=1,
                          retain=False, response_topic=options.get("response_topic"),
                          correlation=b"c", expiry_s=options.get("expiry_s"),
                          received_at=time.time(), connection=1)
        self.loop.run_until_complete(self.channel._receive(message))
        return [{"topic": topic, "data": strict_json(data)} for _, topic, data in
                self._rows(last)]

    def _rows(self, after: int) -> list[tuple[int, str, bytes]]:
        return self.loop.run_until_complete(self.daemon.store.run(lambda db: db.execute(
            "SELECT seq, topic, data FROM outbox WHERE seq > ? ORDER BY seq",
            (after,)).fetchall()))

    def close(self) -> None:
        self.loop.run_until_complete(self.daemon.store.close())
        self.loop.close()


@pytest.fixture(scope="module")
def intake(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> Iterator[Intake]:
    tmp = tmp_path_factory.mktemp("intake")
    raw = bench_config(tmp, 1883, pki.ca, mqtt={"max_command_bytes": 65536})
    bench = Intake(Daemon(parse_config(raw, source=tmp / "bench.toml")))
    yield bench
    bench.close()


def _check_reply(reply: dict[str, Any]) -> dict[str, Any]:
    data = reply["data"]
    jsonschema.validate(data, REPLY_SCHEMA)
    assert reply["topic"] == f"{PREFIX}/reply" or reply["topic"].startswith(f"{PREFIX}/reply/")
    if data["ok"]:
        return data
    code, message = data["error"]["code"], data["error"]["message"]
    assert code in CODES, (code, message)
    assert message.strip(), code
    if code == "invalid_args" and message.startswith("args of"):
        assert re.match(rf"args of {re.escape(data['command'])}: (\(top level\): |[^:\s]+: "
                        r"|give exactly one of )\S", message), message
    if code == "invalid_command":
        assert "command.json" in message or "expires_at" in message, message
    return data


@fuzz(300)
@given(data=st.data())
def test_any_payload_is_acknowledged_once_and_answered_in_documented_words(
        intake: Intake, data: st.DataObject) -> None:
    """Random bytes, random JSON, envelopes with random args for every command, tokens
    JSON parsers trip on (NaN, 1e999, lone surrogates, deep nesting, huge numbers)."""
    name, payload = data.draw(_payloads(intake.schemas), label="message")
    response_topic = data.draw(st.sampled_from([None, f"{PREFIX}/reply/wms",
                                                "benchagent/v1/sh01/OTHER/reply"]))
    acks, accepted = len(intake.acks), len(intake.accepted)
    replies = intake.receive(name, payload, response_topic=response_topic,
                             expiry_s=data.draw(st.sampled_from([None, 0, 60])))
    assert len(intake.acks) == acks + 1
    assert len(replies) + len(intake.accepted) - accepted <= 1
    for reply in replies:
        _check_reply(reply)
    for command, args in intake.accepted[accepted:]:
        _run_checks(command, args)


_ids = itertools.count()


@fuzz(300)
@given(data=st.data())
def test_any_args_of_every_command_are_taken_or_refused_naming_the_field(
        intake: Intake, data: st.DataObject) -> None:
    """A valid envelope around args shaped like each command's schema, or not at all."""
    name = data.draw(st.sampled_from(sorted(intake.schemas)), label="command")
    args = data.draw(_ARGS[name] if name in _ARGS else _like(intake.schemas[name]),
                     label="args")
    accepted = len(intake.accepted)
    replies = intake.receive(name, json.dumps({"id": f"a-{next(_ids)}", "args": args}).encode())
    if len(intake.accepted) > accepted:
        assert not replies
        _run_checks(name, args)
        return
    [reply] = replies
    error = _check_reply(reply)["error"]
    assert error["code"] in ("invalid_args", "invalid_command", "malformed_json",
                             "rate_limited"), error


def _run_checks(command: str, args: dict[str, Any]) -> None:
    """What the handlers check of accepted args before acting: refusals in package words."""
    try:
        if command in ("order.push", "order.answer") and "orders" in args:
            for order in parse_orders(args["orders"]):
                for job in order.print_jobs:
                    jsonschema.validate({"job_id": "j", **job}, SUBMIT_SCHEMA)
        if command == "pack.labels":
            for job in args.get("jobs", ()):
                jsonschema.validate({"job_id": "j", **job}, SUBMIT_SCHEMA)
    except AgentError as exc:
        assert exc.code in CODES and str(exc).strip()


# ---------------------------------------------------------------- orders
_ORDER_LEAVES = ["order_id", "waybills", "pick_codes", "merge_id", "lines", "lines/0",
                 "lines/0/sku", "lines/0/name", "lines/0/barcodes", "lines/0/barcodes/0",
                 "lines/0/quantity", "lines/0/unit_weight_g", "lines/0/serial_required",
                 "lines/0/gift", "packaging", "packaging/0/code", "packaging/0/tare_g",
                 "tolerance", "tolerance/abs_g", "tolerance/rel_pct", "presale", "priority",
                 "note", "print_jobs", "print_jobs/0", "print_jobs/0/document",
                 "print_jobs/0/copies", "lines/1/sku", "lines/1/barcodes/0"]


def _set(order: Any, path: str, value: Any) -> None:
    *parents, last = path.split("/")
    for key in parents:
        order = order[int(key)] if isinstance(order, list) else order[key]
    if isinstance(order, list):
        order[int(last)] = value
    else:
        order[last] = value


@fuzz(300)
@given(path=st.sampled_from(_ORDER_LEAVES), value=_json | st.sampled_from(
    [float("nan"), float("inf"), -1, 10**30, "", " ", "a b", "x" * 600, [], {}, "SKU-0",
     "6900000000001"]))
def test_an_order_with_any_field_value_is_taken_or_refused_naming_the_field(
        path: str, value: Any) -> None:
    order = {**_order(2), "waybills": ["W1"], "pick_codes": ["P1"], "merge_id": "M1",
             "packaging": [{"code": "BOX-S", "tare_g": 80}],
             "tolerance": {"abs_g": 20, "rel_pct": 5}, "note": "fragile",
             "print_jobs": [{"role": "label", "document": {"format": "zpl",
                                                           "data": "XlhBXlha"}}]}
    _set(order, path, value)
    try:
        parse_orders([order])
    except CommandError as exc:
        message = str(exc)
        assert exc.code == "invalid_args" and message.startswith("orders/0")
        named = [key for key in path.split("/") if not key.isdigit()]
        assert any(key in message for key in named) or "barcode" in message, message


# ---------------------------------------------------------------- through mosquitto
_BATCH = 30


def test_a_running_agent_answers_every_random_command_and_stays_up(
        intake: Intake, broker: Broker, central: CentralSystem,
        agent_factory: Callable[..., AgentProcess]) -> None:
    """Batches of random payloads on real command topics: one valid reply each; the agent
    keeps running, logs no traceback and stops cleanly."""
    agent = agent_factory(broker, mqtt={"max_command_bytes": 65536}, diagnostics={
        "remote_allow": ["agent.version", "config.check", "outbox.stats"]}).start()
    central.wait_for(lambda m: m.topic == f"{PREFIX}/status" and m.json["state"] == "online")
    names = st.sampled_from([*intake.schemas, "printer.melt"])  # cmd/ alone is no command

    @settings(max_examples=10 * FUZZ_SCALE, deadline=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(batch=st.lists(_payloads(intake.schemas).flatmap(
        lambda message: st.tuples(names, st.just(message[1]))), min_size=_BATCH,
        max_size=_BATCH))
    def send(batch: list[tuple[str, bytes]]) -> None:
        first = next(_ids)
        tags = [b"fuzz-%d-%d" % (first, n) for n in range(_BATCH)]
        for tag, (name, payload) in zip(tags, batch, strict=True):
            central.send(SITE, BENCH, name, payload, response_topic=f"{PREFIX}/reply/fuzz",
                         correlation=tag)
        for reply in central.wait_for(lambda m: m.correlation in tags, count=_BATCH):
            event = strict_json(reply.payload)
            _check_reply({"topic": reply.topic, "data": event["data"]})
            assert event["data"].get("error", {}).get("code") != "internal_error", event
        assert agent.process is not None and agent.process.poll() is None

    send()
    assert central.request(SITE, BENCH, "status.get")["ok"] is True
    assert agent.stop() == 0
    assert "Traceback" not in agent.output()
