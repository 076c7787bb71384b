"""A double of the central system: an MQTT 5 client that watches benches and commands them.

Used by the tests, the demo and technicians (``python -m simulators.central --help``):
it subscribes to a bench's status, events and replies, keeps every message it received,
and sends commands with a Response Topic and Correlation Data like a real integrator.
With :meth:`CentralSystem.serve_orders` it also answers the benches' ``order.request``
events with ``order.answer`` commands, like an order management system.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import ssl
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agent.mqtt import no_nagle, stop_network_thread


@dataclass(frozen=True)
class Received:
    topic: str
    payload: bytes
    retain: bool
    correlation: bytes | None
    at: float

    @property
    def json(self) -> Any:
        return json.loads(self.payload)


class CentralSystem:
    """One MQTT connection to the broker, over TLS; thread-safe message log."""

    def __init__(self, port: int, ca: Path, *, host: str = "localhost",
                 client_id: str | None = None, cert: Path | None = None,
                 key: Path | None = None, protocol: int = paho.MQTTv5,
                 username: tuple[str, str] | None = None,
                 session_expiry_s: int = 0, root: str = "benchagent/v1") -> None:
        self.root = root
        self._host, self._port = host, port
        self._protocol = protocol
        self._session_expiry_s = session_expiry_s
        self.client = paho.Client(CallbackAPIVersion.VERSION2,
                                  client_id=client_id or f"central-{uuid.uuid4().hex[:8]}",
                                  protocol=protocol)
        context = ssl.create_default_context(cafile=str(ca))
        if cert and key:
            context.load_cert_chain(str(cert), str(key))
        self.client.tls_set_context(context)
        if username is not None:
            self.client.username_pw_set(*username)
        self.messages: list[Received] = []
        self._cond = threading.Condition()
        self._connected = threading.Event()
        self._subscriptions: list[str] = []
        self._orders: dict[str, list[dict[str, Any]]] | None = None
        self._unknown: set[str] | None = None
        self._answer_delay_s = 0.0
        self._answered: set[str] = set()
        self.client.on_message = self._on_message
        self.client.on_connect = self._on_connect

    def _on_connect(self, client: paho.Client, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        if not rc.is_failure:
            for topic in self._subscriptions:
                client.subscribe(topic, qos=1)
            self._connected.set()

    def _on_message(self, _c: paho.Client, _u: Any, msg: paho.MQTTMessage) -> None:
        props = getattr(msg, "properties", None)
        received = Received(msg.topic, bytes(msg.payload), bool(msg.retain),
                            getattr(props, "CorrelationData", None), time.monotonic())
        with self._cond:
            self.messages.append(received)
            self._cond.notify_all()
        if self._orders is not None and msg.topic.endswith("/events/order.request"):
            self._answer_order_request(received)

    def connect(self, timeout_s: float = 10.0) -> CentralSystem:
        if self._protocol == paho.MQTTv5:
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = self._session_expiry_s
            self.client.connect(self._host, self._port, clean_start=self._session_expiry_s == 0,
                                properties=props)
        else:
            self.client.connect(self._host, self._port)
        no_nagle(self.client)
        self.client.loop_start()
        if not self._connected.wait(timeout_s):
            raise TimeoutError(f"central system could not connect to {self._port}")
        return self

    def subscribe(self, topic: str) -> None:
        self._subscriptions.append(topic)
        info = self.client.subscribe(topic, qos=1)
        if info[0] != 0:
            raise RuntimeError(f"subscribe to {topic} failed: {info}")
        time.sleep(0.05)  # let the SUBACK land before the caller relies on it

    def prefix(self, site: str, bench: str) -> str:
        return f"{self.root}/{site}/{bench}"

    def watch(self, site: str = "+", bench: str = "+") -> None:
        """Subscribe to everything a bench publishes."""
        for level in ("status", "events/#", "reply/#"):  # reply/# matches reply too
            self.subscribe(f"{self.prefix(site, bench)}/{level}")

    def wait_for(self, predicate: Callable[[Received], bool], timeout_s: float = 10.0,
                 count: int = 1) -> list[Received]:
        """Block until ``count`` received messages match ``predicate``; return them."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while True:
                found = [m for m in self.messages if predicate(m)]
                if len(found) >= count:
                    return found
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"only {len(found)} of {count} expected messages in "
                                       f"{timeout_s}s; last: {self.messages[-3:]}")
                self._cond.wait(left)

    def matching(self, predicate: Callable[[Received], bool]) -> list[Received]:
        with self._cond:
            return [m for m in self.messages if predicate(m)]

    def send(self, site: str, bench: str, name: str, body: dict[str, Any] | bytes, *,
             response_topic: str | None = None, correlation: bytes | None = None,
             expiry_s: int | None = None, qos: int = 1) -> None:
        """Publish a command and wait for the broker's PUBACK."""
        payload = body if isinstance(body, bytes) else json.dumps(body).encode()
        props = None
        if self._protocol == paho.MQTTv5:
            props = Properties(PacketTypes.PUBLISH)
            if response_topic:
                props.ResponseTopic = response_topic
            if correlation:
                props.CorrelationData = correlation
            if expiry_s is not None:
                props.MessageExpiryInterval = expiry_s
        info = self.client.publish(f"{self.prefix(site, bench)}/cmd/{name}", payload, qos=qos,
                                   properties=props)
        info.wait_for_publish(10)

    def request(self, site: str, bench: str, name: str, args: dict[str, Any] | None = None,
                *, command_id: str | None = None, timeout_s: float = 10.0) -> dict[str, Any]:
        """Send a command and return its reply's ``data`` (MQTT 5 request/response)."""
        command_id = command_id or uuid.uuid4().hex
        reply_topic = f"{self.prefix(site, bench)}/reply/{self.client._client_id.decode()}"
        if not any(paho.topic_matches_sub(s, reply_topic) for s in self._subscriptions):
            self.subscribe(reply_topic)
        correlation = command_id.encode()
        body: dict[str, Any] = {"id": command_id}
        if args is not None:
            body["args"] = args
        self.send(site, bench, name, body, response_topic=reply_topic, correlation=correlation)
        reply = self.wait_for(lambda m: m.topic == reply_topic and m.correlation == correlation,
                              timeout_s)[0]
        data: dict[str, Any] = reply.json["data"]
        return data

    def serve_orders(self, orders: dict[str, list[dict[str, Any]]], *,
                     unknown: set[str] | None = None, delay_s: float = 0.0) -> None:
        """Answer every bench's ``order.request`` events with ``order.answer`` commands.

        ``orders`` maps a code (order id, waybill, pick code) to the orders it names. A code
        not in it is answered ``unknown_order`` when ``unknown`` is ``None`` or holds it;
        otherwise it is not answered at all (the bench's lookup times out). Each answer
        leaves ``delay_s`` after the request arrived, from its own thread (paho's callback
        thread must not wait for a PUBACK). Calling it again replaces the orders.
        Benches must be watched (:meth:`watch`) for their requests to arrive.
        """
        self._unknown = None if unknown is None else set(unknown)
        self._answer_delay_s = delay_s
        self._orders = {code: [dict(order) for order in found] for code, found in orders.items()}

    def _answer_order_request(self, received: Received) -> None:
        try:
            event = received.json
            request_id, code = event["data"]["request_id"], event["data"]["code"]
        except (ValueError, KeyError, TypeError):
            return
        if event.get("id") in self._answered:
            return  # a second delivery of the same event
        self._answered.add(event.get("id"))
        assert self._orders is not None
        args: dict[str, Any] = {"request_id": request_id}
        if code in self._orders:
            args["orders"] = self._orders[code]
        elif self._unknown is None or code in self._unknown:
            args["error"] = {"code": "unknown_order",
                             "message": f"no order, waybill or pick list {code} in the OMS"}
        else:
            return
        prefix, _, _ = received.topic.rpartition("/events/")
        _root, site, bench = prefix.rsplit("/", 2)

        def answer() -> None:
            time.sleep(self._answer_delay_s)
            # Closed or cut off meanwhile: the bench's lookup times out, as it would.
            with contextlib.suppress(RuntimeError):
                self.send(site, bench, "order.answer", {"id": f"answer-{request_id}",
                                                        "args": args})

        threading.Thread(target=answer, name="central-order-answer", daemon=True).start()

    def close(self) -> None:
        self.client.disconnect()
        stop_network_thread(self.client)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--ca", type=Path, required=True)
    parser.add_argument("--site", default="+")
    parser.add_argument("--bench", default="+")
    args = parser.parse_args()
    central = CentralSystem(args.port, args.ca)
    central.connect()
    central.watch(args.site, args.bench)
    seen = 0
    try:
        while True:
            time.sleep(0.2)
            for message in central.messages[seen:]:
                print(f"{message.topic} {message.payload.decode(errors='replace')}", flush=True)
            seen = len(central.messages)
    except KeyboardInterrupt:
        central.close()


if __name__ == "__main__":
    main()
