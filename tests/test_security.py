"""The broker closed to strangers, with the example config of ``config/mosquitto/``.

A real mosquitto runs that config (only its port and files swapped for the test's), the
ACL comes from ``scripts/make_acl.py`` and the bench certificates from
``scripts/make_bench_cert.py``; the agent runs as a subprocess. Then: no way in without a
certificate of the site CA, or in plaintext; another bench can neither command bench b07
nor read it; b07 itself works; revoked and removed benches lose access; secrets stay out
of every log and status; photo names from the config cannot leave their folder.
"""

from __future__ import annotations

import asyncio
import base64
import json
import queue
import re
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from agent.config import ConfigError, parse_config
from agent.errors import AgentError
from agent.jobs.evidence import EvidenceLimits, EvidenceStore
from agent.mqtt import stop_network_thread
from agent.store import Store
from simulators.broker import Broker, free_port
from simulators.central import CentralSystem
from simulators.pki import CertPair, Pki, issue_client
from simulators.printer import LabelPrinterSim
from tests.harness import ROOT, AgentProcess, bench_config, wait_until

EXAMPLE = ROOT / "config" / "mosquitto" / "mosquitto.conf"
SITE, BENCH = "sh01", "b07"
PREFIX = f"benchagent/v1/{SITE}/{BENCH}"


# ---------------------------------------------------------------- the site's tools
def run_script(name: str, *args: str | Path) -> str:
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / name), *map(str, args)],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    return done.stdout


def bench_cert(pki: Pki, out: Path, bench: str) -> CertPair:
    """A bench's certificate as a site issues it, with scripts/make_bench_cert.py."""
    run_script("make_bench_cert.py", "issue", "--ca-cert", pki.ca, "--ca-key", pki.ca_key,
               "--site", SITE, "--bench", bench, "--out", out)
    return CertPair(out / f"{SITE}.{bench}.crt", out / f"{SITE}.{bench}.key")


def write_acl(directory: Path, *benches: str) -> Path:
    """The site's ACL from its bench list, with scripts/make_acl.py."""
    listing = directory / "benches.txt"
    listing.write_text("# site bench\n" + "".join(f"{SITE} {b}\n" for b in benches))
    acl = directory / "bench-agent.acl"
    run_script("make_acl.py", listing, "-o", acl)
    return acl


def site_broker(broker_factory: Callable[..., Broker], acl: Path, **options: Any) -> Broker:
    """mosquitto running the example config (port and files swapped for the test's)."""
    return broker_factory(site_config=EXAMPLE, acl_file=acl, **options).start()


@dataclass
class Probe:
    """A bare MQTT 5 client: did it get in, which PUBACK codes, which messages."""

    port: int
    ca: Path
    cert: CertPair | None = None
    tls: bool = True
    username: tuple[str, str] | None = None
    will: tuple[str, bytes] | None = None
    messages: list[tuple[str, bytes]] = field(default_factory=list)
    client: paho.Client | None = None
    _events: queue.Queue[str] = field(default_factory=queue.Queue)
    _pubacks: dict[int, str] = field(default_factory=dict)
    _lock: threading.Condition = field(default_factory=threading.Condition)

    def connect(self, timeout_s: float = 5.0) -> str:
        """``connected``, or why not (the broker's reason or the socket's error)."""
        client = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5,
                             client_id=f"probe-{id(self):x}", reconnect_on_failure=False)
        if self.tls:
            context = ssl.create_default_context(cafile=str(self.ca))
            if self.cert is not None:
                context.load_cert_chain(str(self.cert.cert), str(self.cert.key))
            client.tls_set_context(context)
        if self.username is not None:
            client.username_pw_set(*self.username)
        if self.will is not None:
            client.will_set(*self.will, qos=1, retain=True)
        client.on_connect = lambda _c, _u, _f, rc, _p: self._events.put(
            "connected" if not rc.is_failure else f"refused: {rc}")
        client.on_disconnect = lambda _c, _u, _f, rc, _p: self._events.put(f"closed: {rc}")
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        self.client = client
        try:
            client.connect("localhost", self.port)
        except (OSError, ssl.SSLError) as exc:
            return f"failed: {exc}"
        client.loop_start()
        try:
            return self._events.get(timeout=timeout_s)
        except queue.Empty:
            return "no answer"

    def _on_publish(self, _c: Any, _u: Any, mid: int, rc: Any, _p: Any) -> None:
        with self._lock:  # "No matching subscribers" is a success too
            self._pubacks[mid] = str(rc) if rc.is_failure else "accepted"
            self._lock.notify_all()

    def _on_message(self, _c: Any, _u: Any, message: paho.MQTTMessage) -> None:
        with self._lock:
            self.messages.append((message.topic, bytes(message.payload)))

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> str:
        """Publish with QoS 1: ``accepted``, or the broker's PUBACK failure reason."""
        assert self.client is not None
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        with self._lock:
            assert self._lock.wait_for(lambda: info.mid in self._pubacks, 5), topic
            return self._pubacks[info.mid]

    def subscribe(self, *filters: str) -> None:
        assert self.client is not None
        for topic_filter in filters:
            self.client.subscribe(topic_filter, qos=1)
        time.sleep(0.1)  # the SUBACKs

    def die(self) -> None:
        """Lose the connection without DISCONNECT: the broker sends the Will, if allowed."""
        assert self.client is not None
        sock = self.client.socket()
        assert sock is not None
        sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        if self.client is not None:
            self.client.disconnect()
            stop_network_thread(self.client)


@pytest.fixture
def probes() -> Iterator[Callable[..., Probe]]:
    made: list[Probe] = []

    def make(broker: Broker, ca: Path, cert: CertPair | None = None, **options: Any) -> Probe:
        probe = Probe(broker.port, ca, cert, **options)
        made.append(probe)
        return probe

    yield make
    for probe in made:
        probe.close()


def settings(config: Path) -> list[tuple[str, str]]:
    """A mosquitto config's ``(key, value)`` lines, comments left out."""
    pairs = []
    for line in config.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.strip().partition(" ")
            pairs.append((key, value.strip()))
    return pairs


def secure_agent(agent_factory: Callable[..., AgentProcess], broker: Broker, pki: Pki,
                 cert: CertPair, **overrides: Any) -> AgentProcess:
    mqtt = {"tls": {"ca_file": str(pki.ca), "cert_file": str(cert.cert),
                    "key_file": str(cert.key)}, **overrides.pop("mqtt", {})}
    return agent_factory(broker, mqtt=mqtt, **overrides)


def printer_devices(label: LabelPrinterSim) -> dict[str, Any]:
    return {"label": {"kind": "printer", "language": "zpl", "role": "label",
                      "connection": f"tcp://127.0.0.1:{label.port}", "status_interval_s": 0.5,
                      "reconnect_min_s": 0.1, "reconnect_max_s": 0.3}}


@pytest.fixture
def label() -> Iterator[LabelPrinterSim]:
    sim = LabelPrinterSim("zpl").start()
    yield sim
    sim.stop()


def zpl(text: str) -> dict[str, str]:
    return {"format": "zpl", "data": base64.b64encode(text.encode()).decode()}


def _online(central: CentralSystem) -> dict[str, Any]:
    status: dict[str, Any] = central.wait_for(
        lambda m: m.topic == f"{PREFIX}/status" and m.json["state"] == "online", 15)[0].json
    return status


# ---------------------------------------------------------------- getting in
def test_only_tls_clients_with_a_certificate_of_the_site_ca_get_in(
        broker_factory: Callable[..., Broker], probes: Callable[..., Probe], pki: Pki,
        other_pki: Pki, tmp_path: Path) -> None:
    """The example config: one TLS listener, client certificates required, CN = user."""
    conf = settings(EXAMPLE)
    assert [v for k, v in conf if k == "listener"] == ["8883"], "one listener, the TLS one"
    for setting in (("require_certificate", "true"), ("use_identity_as_username", "true"),
                    ("allow_anonymous", "false"), ("per_listener_settings", "false")):
        assert setting in conf
    assert {"cafile", "certfile", "keyfile", "acl_file"} <= {k for k, _ in conf}
    assert not {"password_file", "include_dir", "websockets"} & {k for k, _ in conf}

    broker = site_broker(broker_factory, write_acl(tmp_path, BENCH))
    bench = probes(broker, pki.ca, bench_cert(pki, tmp_path, BENCH))
    assert bench.connect() == "connected"
    assert bench.publish(f"{PREFIX}/status", b"{}") == "accepted", "its CN is its user name"
    outcomes = [probes(broker, pki.ca, tls=False).connect(),
                probes(broker, pki.ca).connect(),
                probes(broker, pki.ca, other_pki.clients["bench"]).connect()]
    assert "connected" not in outcomes, outcomes
    broker.stop()  # mosquitto's log reaches its file
    log = (broker.directory / "mosquitto.log").read_text()
    for why in ("wrong version number",  # plaintext MQTT on the TLS port
                "peer did not return a certificate",
                "certificate verify failed"):  # signed by another CA
        assert why in log, (why, log)


def test_another_bench_can_neither_inject_a_print_job_nor_read_the_bench(
        broker_factory: Callable[..., Broker], central_factory: Callable[..., CentralSystem],
        agent_factory: Callable[..., AgentProcess], probes: Callable[..., Probe], pki: Pki,
        label: LabelPrinterSim, tmp_path: Path) -> None:
    broker = site_broker(broker_factory, write_acl(tmp_path, BENCH, "b08"))
    central = central_factory(broker, cert=pki.clients["central"].cert,
                              key=pki.clients["central"].key)
    central.watch(SITE, BENCH)
    central.subscribe(f"{PREFIX}/state")
    # b08's certificate; it even claims to be the central system in CONNECT, and leaves a
    # Will that would say b07 is gone.
    intruder = probes(broker, pki.ca, issue_client(pki, f"{SITE}.b08"),
                      username=("central", "guess"),
                      will=(f"{PREFIX}/status", b'{"state":"offline","forged":true}'))
    assert intruder.connect() == "connected"
    intruder.subscribe(f"{PREFIX}/#", "benchagent/v1/+/+/status", "#")

    agent = secure_agent(agent_factory, broker, pki, bench_cert(pki, tmp_path, BENCH),
                         devices=printer_devices(label),
                         jobs={"print": {"hold_poll_s": 0.2, "confirm_poll_s": 0.05}}).start()
    _online(central)
    central.wait_for(lambda m: m.topic.endswith("/events/device_state")
                     and m.json["data"]["state"] == "ready", 15)

    injected = {"id": "inj-1", "args": {"job_id": "inj-1", "printer": "label",
                                        "document": zpl("^XA^FDinjected^FS^XZ")}}
    assert intruder.publish(f"{PREFIX}/cmd/print.submit",
                            json.dumps(injected).encode()) == "Not authorized"
    for forged in ("status", "state", "events/print_job", "reply/wms", "cmd/status.get"):
        assert intruder.publish(f"{PREFIX}/{forged}", b"{}", retain=True) == "Not authorized"
    assert intruder.publish(f"benchagent/v1/{SITE}/b08/status", b"{}") == "accepted", \
        "b08 may publish under its own prefix only"

    # The central system's job prints; the injected one never ran anywhere.
    reply = central.request(SITE, BENCH, "print.submit", {
        "job_id": "legit-1", "printer": "label",
        "document": zpl("^XA^FDlegit^FS^XZ")}, timeout_s=20)
    assert reply["ok"] is True, reply
    central.wait_for(lambda m: m.topic.endswith("/events/print_job")
                     and m.json["data"]["state"] == "printed", 20)
    assert label.jobs == [b"^XA^FDlegit^FS^XZ"]
    jobs = central.request(SITE, BENCH, "print.list")["result"]["jobs"]
    assert [j["job_id"] for j in jobs] == ["legit-1"]
    assert not central.matching(lambda m: b"inj-1" in m.payload)
    status = central.request(SITE, BENCH, "status.get")["result"]
    assert status["outbox"]["rejected"] == 0
    assert "inj-1" not in agent.output()

    # b07 published its status, events, state and replies meanwhile: b08 got none.
    for level in ("status", "events/", "state", "reply/"):
        assert central.matching(lambda m, lv=level: m.topic.startswith(f"{PREFIX}/{lv}")), level
    assert not [t for t, _ in intruder.messages if t.startswith(PREFIX)], intruder.messages
    intruder.die()
    assert central.request(SITE, BENCH, "status.get")["ok"] is True
    time.sleep(0.3)
    assert not central.matching(lambda m: b"forged" in m.payload), "b08's Will is not sent"
    assert agent.stop() == 0


def test_the_bench_works_under_its_acl(
        broker_factory: Callable[..., Broker], central_factory: Callable[..., CentralSystem],
        agent_factory: Callable[..., AgentProcess], pki: Pki, label: LabelPrinterSim,
        tmp_path: Path) -> None:
    """Status, Will, events, state, commands, replies and mqtt.check: all inside the ACL."""
    broker = site_broker(broker_factory, write_acl(tmp_path, BENCH))
    central = central_factory(broker, cert=pki.clients["central"].cert,
                              key=pki.clients["central"].key)
    central.subscribe(f"{PREFIX}/state")
    central.watch(SITE, BENCH)
    agent = secure_agent(agent_factory, broker, pki, bench_cert(pki, tmp_path, BENCH),
                         devices=printer_devices(label)).start()
    assert _online(central)["link"]["client_id"] == "benchagent-sh01-b07"
    central.wait_for(lambda m: m.topic == f"{PREFIX}/events/device_state", 15)
    central.wait_for(lambda m: m.topic == f"{PREFIX}/state", 15)
    echo = central.request(SITE, BENCH, "mqtt.check")
    assert echo["ok"] is True and echo["result"]["ok"] is True, echo
    outbox = wait_until(lambda: (o := central.request(SITE, BENCH, "status.get")["result"][
        "outbox"])["pending"] == 0 and o, 10, "every event acknowledged")
    assert outbox["rejected"] == 0 and outbox["last_rejection"] is None
    agent.kill9()  # the Will, on the status topic, is the bench's to publish too
    central.wait_for(lambda m: m.topic == f"{PREFIX}/status"
                     and m.json.get("reason") == "connection_lost", 15)


# ---------------------------------------------------------------- revoking
def test_a_rotated_certificate_replaces_the_old_one_which_the_crl_then_shuts_out(
        broker_factory: Callable[..., Broker], probes: Callable[..., Probe], pki: Pki,
        tmp_path: Path) -> None:
    old = bench_cert(pki, tmp_path / "old", BENCH)
    new = bench_cert(pki, tmp_path / "new", BENCH)
    crl = tmp_path / "site-ca.crl"
    ca = ("--ca-cert", pki.ca, "--ca-key", pki.ca_key, "--crl", crl)
    run_script("make_bench_cert.py", "revoke", *ca)  # an empty CRL to start with
    broker = site_broker(broker_factory, write_acl(tmp_path, BENCH), crl_file=crl)
    assert probes(broker, pki.ca, old).connect() == "connected"
    assert "1 revoked" in run_script("make_bench_cert.py", "revoke", *ca, old.cert)
    broker.reload()  # systemctl reload mosquitto: the CRL applies to new connections
    wait_until(lambda: probes(broker, pki.ca, old).connect() != "connected", 5, "the CRL")
    fresh = probes(broker, pki.ca, new)
    assert fresh.connect() == "connected"
    assert fresh.publish(f"{PREFIX}/status", b"{}") == "accepted", "same CN, same rights"


def test_a_bench_taken_off_the_list_loses_its_rights_at_the_reload(
        broker_factory: Callable[..., Broker], probes: Callable[..., Probe], pki: Pki,
        tmp_path: Path) -> None:
    broker = site_broker(broker_factory, write_acl(tmp_path, BENCH, "b08"))
    stranger = probes(broker, pki.ca, pki.clients["bench"])  # site CA, CN not in the ACL
    assert stranger.connect() == "connected"
    stranger.subscribe("#")
    b08 = probes(broker, pki.ca, bench_cert(pki, tmp_path, "b08"))
    assert b08.connect() == "connected"
    assert b08.publish(f"benchagent/v1/{SITE}/b08/status", b"{}", retain=True) == "accepted"
    write_acl(tmp_path, BENCH)
    broker.reload()
    wait_until(lambda: b08.publish(f"benchagent/v1/{SITE}/b08/events/x", b"{}")
               == "Not authorized", 5, "the reloaded ACL")
    assert stranger.publish(f"{PREFIX}/cmd/status.get", b"{}") == "Not authorized"
    assert stranger.messages == [], "a name not in the ACL receives nothing either"


# ---------------------------------------------------------------- secrets
def test_secrets_never_reach_the_log_the_status_or_the_diagnostics(
        broker_factory: Callable[..., Broker], central_factory: Callable[..., CentralSystem],
        agent_factory: Callable[..., AgentProcess], pki: Pki, tmp_path: Path) -> None:
    broker = site_broker(broker_factory, write_acl(tmp_path, BENCH))
    cert = bench_cert(pki, tmp_path, BENCH)
    password = "Tr0ub4dor&3-horse-battery"
    secret_file = tmp_path / "mqtt-password"
    secret_file.write_text(password + "\n")
    camera_password = "Cam-s3cret-42"  # an IP camera's, inside its connection string
    camera = {"kind": "camera", "role": "packing", "reconnect_min_s": 0.2,
              "connection": f"rtsp://bench07:{camera_password}@127.0.0.1:{free_port()}/s1"}
    central = central_factory(broker, cert=pki.clients["central"].cert,
                              key=pki.clients["central"].key)
    central.watch(SITE, BENCH)
    agent = secure_agent(agent_factory, broker, pki, cert, log={"level": "debug"},
                         mqtt={"username": f"{SITE}.{BENCH}",
                               "password_file": str(secret_file)},
                         devices={"camera": camera}).start()
    _online(central)
    central.wait_for(lambda m: m.topic.endswith("/events/device_state")
                     and m.json["data"]["state"] == "disconnected", 15)  # nobody streams
    seen: list[str] = []
    for command in ("status.get", "devices.list", "config.check", "mqtt.check",
                    "outbox.stats", "agent.version"):
        reply = central.request(SITE, BENCH, command)
        assert reply["ok"] is True, (command, reply)
        seen.append(json.dumps(reply))
    for cli in (("status", "--json"), ("devices", "--json"), ("config", "check", "--json"),
                ("mqtt", "check")):
        done = subprocess.run([sys.executable, "-m", "agent.cli", *cli, "-c",
                               str(agent.config)], cwd=ROOT, capture_output=True, text=True,
                              timeout=60)
        assert done.returncode in (0, 1), (cli, done.stdout, done.stderr)  # 1: camera down
        seen += [done.stdout, done.stderr]
    assert agent.stop() == 0
    seen += [m.payload.decode() for m in central.matching(lambda m: True)]  # retained too
    seen += [agent.output(), (broker.directory / "mosquitto.log").read_text()]
    haystack = "\n".join(seen)
    # What is said about the link, the config and the camera is there, without secrets.
    for said in (str(agent.config), "benchagent-sh01-b07", "127.0.0.1", "/s1", "DEBUG"):
        assert said in haystack, said
    key = "".join(line for line in cert.key.read_text().splitlines() if "-----" not in line)
    needles = [password, camera_password, key,
               *(key[i:i + 24] for i in range(0, len(key) - 24, 24))]
    assert [n for n in needles if n in haystack] == [], "secret material in the output"


# ---------------------------------------------------------------- paths
def test_photo_names_from_the_config_or_an_id_cannot_leave_the_photo_folder(
        pki: Pki, tmp_path: Path) -> None:
    base = bench_config(tmp_path, 8883, pki.ca)
    for flow, key in (({"returns_photo_moment": "../../etc/cron.d/x"}, "returns_photo_moment"),
                      ({"photo_moments": {"../up": "packed"}}, "photo_moments")):
        doc = {**base, "jobs": {"pack": {"flow": flow}}}
        with pytest.raises(ConfigError, match=re.escape(f"jobs.pack.flow.{key}")):
            parse_config(doc, source=tmp_path / "agent.toml")

    async def ids() -> None:
        store = Store(tmp_path / "agent.db")
        await store.open()
        evidence = EvidenceStore(store, tmp_path / "photos", EvidenceLimits())
        try:
            for bad in ("../../etc/passwd", "..", "a/b", "/abs", "x\x00y"):
                with pytest.raises(AgentError) as refused:
                    evidence.photo_path(bad, "open")
                assert refused.value.code == "invalid_name"
            with pytest.raises(AgentError):  # a path not made by photo_path
                await evidence.write_photo(tmp_path / "photos" / ".." / "x.jpg", b"\xff")
        finally:
            await store.close()

    asyncio.run(asyncio.wait_for(ids(), 30))
    assert not (tmp_path / "x.jpg").exists()
