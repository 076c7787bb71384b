"""The MQTT 5 link to the central system's broker (paho-mqtt 2.x), always over TLS.

Threads: ``paho-mqtt-client-*`` is paho's network thread (``loop_start``); it owns the
socket while a connection is up. The blocking TCP connect and TLS handshake run in the
``bench-mqtt-connect`` executor thread. Every paho callback only copies what arrived and
hands it to the asyncio loop with ``call_soon_threadsafe``; each is wrapped so that an
exception is logged and never reaches (and kills) paho's thread. All publishing,
subscribing and acknowledging is done from the loop thread while paho's thread runs,
which is paho's thread-safe mode (packets are queued, paho's thread writes them).

The session is persistent (clean start off, ``session_expiry_s``): commands queued at the
broker while the agent is away are delivered when it returns. Incoming QoS 1 messages are
acknowledged by the caller (:meth:`MqttLink.ack`) only after it stored them durably.
Reconnection uses jittered exponential backoff from the first attempt; a broker that is
down at boot is normal.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import socket
import ssl
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from agent.config import Config
from agent.outbox import iso_time
from agent.tasks import jittered_backoff_s, spawn

log = logging.getLogger("agent.mqtt")

F = TypeVar("F", bound=Callable[..., None])

MAX_INCOMING_PACKET_BYTES = 64 * 1024 * 1024
"""Maximum Packet Size the agent announces: the broker drops anything larger unseen."""


def _guarded(fn: F) -> F:
    """Log, never raise: an exception must not escape into paho's network thread."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        try:
            fn(*args, **kwargs)
        except Exception:
            log.exception("error in MQTT callback %s (ignored; the link keeps running)",
                          fn.__name__)

    return wrapper  # type: ignore[return-value]


def _quiet_paho(record: logging.LogRecord) -> bool:
    """paho 2.2 logs an ERROR from its loop after every socket close; the link already
    reports the disconnection with its reason, so that line would only confuse."""
    return not str(record.msg).startswith("Client is not connected")


def _properties(packet_type: int) -> Properties:
    return Properties(packet_type)  # type: ignore[no-untyped-call]


@dataclass(frozen=True)
class Inbound:
    """A message received from the broker, copied out of paho's thread."""

    topic: str
    payload: bytes
    qos: int
    mid: int
    retain: bool
    response_topic: str | None
    correlation: bytes | None
    expiry_s: int | None
    received_at: float
    connection: int
    """Which connection it came on: an ack is only valid on that same connection."""


def tls_context(config: Config) -> ssl.SSLContext:
    """Verify the broker against ``ca_file`` (hostname checked); client cert if given."""
    tls = config.mqtt.tls
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(tls.ca_file))
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if tls.cert_file is not None and tls.key_file is not None:
        context.load_cert_chain(str(tls.cert_file), str(tls.key_file))
    return context


def describe_error(exc: BaseException) -> str:
    """A technician-readable reason for a failed connection attempt."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS: broker certificate rejected: {exc.verify_message}"
    if isinstance(exc, ssl.SSLError):
        return f"TLS: {exc.reason or exc}"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused (broker not listening)"
    if isinstance(exc, TimeoutError):
        return "timed out connecting"
    if isinstance(exc, OSError):
        return f"{exc.strerror or exc}"
    return f"{type(exc).__name__}: {exc}"


def no_nagle(client: paho.Client) -> None:
    """Turn Nagle's algorithm off on the client's socket (paho leaves it on).

    With it on, a small packet (a PUBACK, the second of two events) waits until the
    broker acknowledged the previous one, and a receiver delays its ACK by up to 40 ms:
    measured, it added 40 ms to every print job (``benchmarks/print_latency.py``).
    """
    sock = client.socket()
    if isinstance(sock, socket.socket):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def stop_network_thread(client: paho.Client) -> None:
    """paho's ``loop_stop``, minus its race (eclipse-paho/paho.mqtt.python#872): after a
    DISCONNECT the network thread ends by itself and clears ``_thread`` as it goes; if
    that falls between loop_stop's ``is None`` check and its ``join``, paho raises
    AttributeError. The thread has ended then, which is all loop_stop waits for."""
    with contextlib.suppress(AttributeError):
        client.loop_stop()


class MqttLink:
    """Keeps one MQTT 5 session to the broker up for the agent's lifetime."""

    def __init__(
        self,
        config: Config,
        *,
        status_topic: str,
        will_payload: Callable[[], bytes],
        on_connected: Callable[[], Awaitable[None]],
        on_message: Callable[[Inbound], None],
        on_puback: Callable[[int, int, str], None],
    ) -> None:
        self._config = config
        self._mqtt = config.mqtt
        self._status_topic = status_topic
        self._will_payload = will_payload
        self._on_connected = on_connected
        self._on_message = on_message
        self._on_puback = on_puback
        self.connected = asyncio.Event()
        self.state = "connecting"
        self.last_error: str | None = None
        self.connected_at: float | None = None
        self.down_since = time.time()
        """When the link was last lost (the agent's start until the first connection)."""
        self.receive_maximum = 65535
        self.max_packet_size = 268_435_460  # MQTT's own limit until the broker says less
        self.connection = 0
        self._paho_connection = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._gone = asyncio.Event()
        self._closed = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        self._connect_executor = ThreadPoolExecutor(1, thread_name_prefix="bench-mqtt-connect")
        self._client = self._make_client()

    def _make_client(self) -> paho.Client:
        client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self._config.client_id,
            protocol=paho.MQTTv5,
            reconnect_on_failure=False,  # the supervisor below reconnects, with jitter
            manual_ack=True,
        )
        client.suppress_exceptions = True
        client.tls_set_context(tls_context(self._config))
        if self._mqtt.username is not None:
            password = self._mqtt.password.get_secret_value() if self._mqtt.password else None
            client.username_pw_set(self._mqtt.username, password)
        client.connect_timeout = self._mqtt.connect_timeout_s
        # paho refuses to change this cap once it has connected; the broker's Receive
        # Maximum is honoured by the outbox window below instead.
        client.max_inflight_messages_set(self._mqtt.max_inflight)
        client.on_connect = _guarded(self._paho_connect)
        client.on_disconnect = _guarded(self._paho_disconnect)
        client.on_message = _guarded(self._paho_message)
        client.on_publish = _guarded(self._paho_publish)
        paho_log = logging.getLogger("paho")
        paho_log.addFilter(_quiet_paho)
        client.enable_logger(paho_log)
        return client

    # ------------------------------------------------------------ paho thread
    def _to_loop(self, fn: Callable[..., None], *args: Any) -> None:
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(fn, *args)

    def _paho_connect(self, _c: Any, _u: Any, flags: Any, rc: ReasonCode,
                      props: Properties | None) -> None:
        receive_max = getattr(props, "ReceiveMaximum", 65535)
        packet_max = getattr(props, "MaximumPacketSize", 268_435_460)
        if not rc.is_failure:
            # Counted here, in paho's thread, so that messages arriving right behind the
            # CONNACK are stamped with this connection's number.
            self._paho_connection += 1
        self._to_loop(self._connack, rc.value, str(rc), bool(flags.session_present),
                      receive_max, packet_max, self._paho_connection)

    def _paho_disconnect(self, _c: Any, _u: Any, _flags: Any, rc: ReasonCode,
                         _props: Properties | None) -> None:
        self._to_loop(self._disconnected, rc.value, str(rc))

    def _paho_message(self, _c: Any, _u: Any, msg: paho.MQTTMessage) -> None:
        props = getattr(msg, "properties", None)
        inbound = Inbound(
            topic=msg.topic,
            payload=bytes(msg.payload),
            qos=msg.qos,
            mid=msg.mid,
            retain=bool(msg.retain),
            response_topic=getattr(props, "ResponseTopic", None),
            correlation=getattr(props, "CorrelationData", None),
            expiry_s=getattr(props, "MessageExpiryInterval", None),
            received_at=time.time(),
            connection=self._paho_connection,
        )
        self._to_loop(self._on_message, inbound)

    def _paho_publish(self, _c: Any, _u: Any, mid: int, rc: ReasonCode,
                      _props: Properties | None) -> None:
        self._to_loop(self._on_puback, mid, rc.value, str(rc))

    # ------------------------------------------------------------ loop thread
    def _connack(self, code: int, reason: str, session_present: bool, receive_max: int,
                 packet_max: int, connection: int) -> None:
        if code >= 0x80:
            self.last_error = f"broker refused the connection: {reason} ({code:#04x})"
            log.error("%s", self.last_error)
            return
        self.connection = connection
        self.receive_maximum = receive_max
        self.max_packet_size = packet_max
        self.state = "connected"
        self.connected_at = time.time()
        self._attempt = 0
        log.info("connected to %s:%d (session %s, receive maximum %d, max packet %d bytes)",
                 self._mqtt.host, self._mqtt.port,
                 "resumed" if session_present else "new", receive_max, packet_max)
        spawn(self._after_connack(), name="mqtt.birth")

    async def _after_connack(self) -> None:
        connection = self.connection
        await self._on_connected()
        if self.state == "connected" and self.connection == connection:
            self.last_error = None
            self.connected.set()

    def _disconnected(self, code: int, reason: str) -> None:
        was_connected = self.connected.is_set()
        self.connected.clear()
        if was_connected:
            self.down_since = time.time()
        if not self._closing:
            self.state = "disconnected"
            if code != 0:
                self.last_error = f"connection lost: {reason}"
            if was_connected:
                log.warning("disconnected from broker: %s", reason)
            elif self.connection != self._paho_connection or code != 0:
                log.warning("connection closed before the broker accepted it: %s", reason)
        self._gone.set()

    @property
    def window(self) -> int:
        """Outbox events that may be in flight: within ours and the broker's Receive
        Maximum, keeping one of the broker's slots for the retained status message."""
        return max(1, min(self._mqtt.max_inflight, self.receive_maximum - 1))

    def subscribe(self, topic_filter: str) -> None:
        self._client.subscribe(topic_filter, options=SubscribeOptions(qos=1))

    def publish_event(self, topic: str, payload: bytes, correlation: bytes | None) -> int:
        """Queue a QoS 1 PUBLISH and return its packet id (the PUBACK names it)."""
        props = _properties(PacketTypes.PUBLISH)
        props.ContentType = "application/json"
        if correlation is not None:
            props.CorrelationData = correlation
        info = self._client.publish(topic, payload, qos=1, properties=props)
        return int(info.mid)

    def publish_status(self, payload: bytes) -> paho.MQTTMessageInfo:
        """Publish the retained status message (not through the outbox: latest wins)."""
        return self.publish_retained(self._status_topic, payload)

    def publish_retained(self, topic: str, payload: bytes) -> paho.MQTTMessageInfo:
        """Publish a retained QoS 1 message whose latest value is all that matters."""
        props = _properties(PacketTypes.PUBLISH)
        props.ContentType = "application/json"
        return self._client.publish(topic, payload, qos=1, retain=True, properties=props)

    def ack(self, message: Inbound) -> None:
        """Acknowledge a QoS 1 message once it is stored; stale acks are skipped."""
        if message.qos == 0:
            return
        if message.connection != self.connection or self.state != "connected":
            # The broker redelivers it on the new connection; the id check catches it.
            return
        self._client.ack(message.mid, message.qos)

    # ------------------------------------------------------------ supervisor
    async def run(self) -> None:
        """Connect, wait for the connection to end, back off with jitter, until closed."""
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.current_task()
        self._attempt = 0
        while not self._closing:
            self.state = "connecting"
            self._gone.clear()
            try:
                await self._loop.run_in_executor(self._connect_executor, self._connect_blocking)
            except Exception as exc:
                self.last_error = describe_error(exc)
                self.state = "disconnected"
                log.warning("cannot connect to %s:%d: %s", self._mqtt.host, self._mqtt.port,
                            self.last_error)
            else:
                if self._closing:
                    # No network thread yet: paho writes the DISCONNECT and closes itself.
                    self._client.disconnect()
                    break
                self._client.loop_start()
                await self._await_connack()
                await self._gone.wait()
                await self._loop.run_in_executor(self._connect_executor, stop_network_thread,
                                                 self._client)
            if self._closing:
                break
            self._attempt += 1
            with contextlib.suppress(TimeoutError):
                delay_s = jittered_backoff_s(self._attempt, self._mqtt.reconnect_min_s,
                                             self._mqtt.reconnect_max_s)
                async with asyncio.timeout(delay_s):
                    await self._closed.wait()
        self.state = "stopped"

    def _connect_blocking(self) -> None:
        self._client.will_set(self._status_topic, self._will_payload(), qos=1, retain=True)
        props = _properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = self._mqtt.session_expiry_s
        props.ReceiveMaximum = self._mqtt.receive_maximum
        props.MaximumPacketSize = MAX_INCOMING_PACKET_BYTES
        self._client.connect(self._mqtt.host, self._mqtt.port, keepalive=self._mqtt.keepalive_s,
                             clean_start=False, properties=props)
        no_nagle(self._client)

    async def _await_connack(self) -> None:
        """Give up on a broker that took the TCP connection but sends no CONNACK."""
        connack = asyncio.ensure_future(self.connected.wait())
        gone = asyncio.ensure_future(self._gone.wait())
        done, _ = await asyncio.wait({connack, gone}, timeout=self._mqtt.connect_timeout_s * 2,
                                     return_when=asyncio.FIRST_COMPLETED)
        for waiter in (connack, gone):
            waiter.cancel()
        if not done:
            self.last_error = "no CONNACK from the broker in time"
            log.warning("%s; reconnecting", self.last_error)
            self._client.disconnect()

    async def close(self, offline_payload: bytes, timeout_s: float = 3.0) -> None:
        """Say offline (retained), wait for its PUBACK, disconnect cleanly (no Will).

        The supervisor in :meth:`run` does the rest (stopping paho's thread) and ends.
        """
        self._closing = True
        self._closed.set()
        if self.connected.is_set():
            info = self.publish_status(offline_payload)
            try:
                await asyncio.get_running_loop().run_in_executor(
                    self._connect_executor, info.wait_for_publish, timeout_s)
            except (RuntimeError, ValueError) as exc:
                # The connection ended before the asyncio side heard of it: the broker
                # publishes the Will (offline, connection_lost) instead.
                log.warning("could not say offline before disconnecting: %s", exc)
            self._client.disconnect()
            try:
                async with asyncio.timeout(timeout_s):
                    await self._gone.wait()
            except TimeoutError:
                log.warning("broker did not close the connection in %.0fs", timeout_s)
        self._gone.set()
        if self._task is not None:
            done, _ = await asyncio.wait({self._task}, timeout=self._mqtt.connect_timeout_s + 1)
            if not done:
                self._task.cancel()
        self.connected.clear()
        self._connect_executor.shutdown(wait=False)

    def status(self) -> dict[str, Any]:
        """The link's part of the bench status."""
        return {
            "state": self.state,
            "broker": f"{self._mqtt.host}:{self._mqtt.port}",
            "client_id": self._config.client_id,
            "last_error": self.last_error,
            "connected_at": iso_time(self.connected_at) if self.connected_at else None,
            "receive_maximum": self.receive_maximum,
            "max_packet_size": self.max_packet_size,
            "window": self.window,
        }
