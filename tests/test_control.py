"""The control socket and the technician's CLI, through the real socket of a real agent
on a simulated bench (scale and scanner on ptys, printers on TCP, a camera on image
files); the CLI without a daemon, and ``--direct`` on the hardware. The same commands
over MQTT: tests/test_diagnostics.py."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import re
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import cv2
import jsonschema
import pytest

from agent import __version__
from agent.cli_daemon import fail
from agent.commands import CommandRegistry, report_progress
from agent.config import DiagnosticsConfig
from agent.control import MAX_REQUEST_BYTES, ControlError, ControlServer, bind_socket
from agent.control_client import ControlClient, DaemonError
from agent.storage_lock import StorageLock
from simulators.broker import Broker
from simulators.pki import Pki
from simulators.printer import LabelPrinterSim
from simulators.scale import MtSicsSimulator
from tests.harness import (
    ROOT,
    AgentProcess,
    bench_config,
    short_socket_path,
    wait_until,
    write_toml,
)
from tests.test_pack_bench import Bench

STATUS_SCHEMA = json.loads(resources.files("agent.schemas").joinpath("status.json").read_text())


class Line:
    """One connection to the control socket, speaking JSON lines."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(20)
        self.sock.connect(str(path))
        self.lines = self.sock.makefile("rb")

    def send(self, request: dict[str, Any] | bytes) -> None:
        data = request if isinstance(request, bytes) else json.dumps(request).encode() + b"\n"
        self.sock.sendall(data)

    def read(self) -> dict[str, Any]:
        line = self.lines.readline()
        assert line, "the daemon closed the connection"
        answer: dict[str, Any] = json.loads(line)
        return answer

    def ask(self, command: str, args: dict[str, Any] | None = None
            ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """The progress items and the final answer."""
        self.send({"command": command, "args": args or {}})
        progress = []
        while "progress" in (answer := self.read()):
            progress.append(answer["progress"])
        return progress, answer

    def close(self) -> None:
        self.lines.close()
        self.sock.close()


def cli(*args: str, timeout_s: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agent.cli", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout_s)


@dataclass
class Rig:
    bench: Bench
    agent: AgentProcess
    socket: Path

    def cli(self, *args: str, timeout_s: float = 60) -> subprocess.CompletedProcess[str]:
        """``bench-agent ARGS -c CONFIG`` against the rig's daemon."""
        return cli(*args, "-c", str(self.agent.config), timeout_s=timeout_s)

    def json(self, *args: str, code: int = 0) -> dict[str, Any]:
        run = self.cli(*args, "--json")
        assert run.returncode == code, (args, run.stdout, run.stderr)
        result: dict[str, Any] = json.loads(run.stdout)
        return result


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> Iterator[Rig]:
    """One agent for the module, its socket in the group ``root`` (mode 0660)."""
    tmp = tmp_path_factory.mktemp("control")
    broker = Broker(tmp / "broker", pki).start()
    bench = Bench(tmp)
    path = short_socket_path()
    doc = bench_config(tmp, broker.port, pki.ca, devices=bench.devices(),
                       diagnostics={"socket": str(path), "socket_group": "root"})
    agent = AgentProcess(write_toml(tmp / "agent.toml", doc), tmp / "agent.log").start()
    try:
        wait_until(path.exists, 20, "the control socket")
        with ControlClient(path) as client:
            wait_until(lambda: all(d["state"] in ("ready", "disabled")
                                   for d in client.call("devices.list")["devices"]), 30,
                       "every device ready")
            wait_until(lambda: client.call("status.get")["link"]["state"] == "connected", 20,
                       "the broker link")
        yield Rig(bench, agent, path)
        assert agent.stop() == 0
        assert not path.exists(), "the socket file is removed at shutdown"
        assert "Traceback" not in agent.output()
    finally:
        if agent.process is not None and agent.process.poll() is None:
            agent.kill9()
        bench.close()
        broker.kill()


def test_the_socket_answers_json_lines_several_per_connection_and_refuses_bad_requests(
        rig: Rig) -> None:
    mode = os.stat(rig.socket)
    assert stat.S_ISSOCK(mode.st_mode) and stat.S_IMODE(mode.st_mode) == 0o660
    assert mode.st_gid == 0  # socket_group = "root"
    line = Line(rig.socket)
    _, status = line.ask("status.get")
    assert status["ok"] is True
    jsonschema.validate(status["result"], STATUS_SCHEMA)
    assert status["result"]["control"]["state"] == "listening"
    assert status["result"]["control"]["socket"] == str(rig.socket)
    _, devices = line.ask("devices.list")
    assert {d["name"]: d["state"] for d in devices["result"]["devices"]} == {
        "scale1": "disabled", "scanner": "ready", "scale": "ready", "label": "ready",
        "slip": "ready", "camera": "ready", "light": "ready"}
    _, found = line.ask("evidence.find", {"key": "SF-NONE"})
    assert found == {"ok": True, "result": {"records": []}}
    _, submit = line.ask("print.submit", {"job_id": "j1", "printer": "label"})
    assert submit["error"]["code"] == "not_local"
    _, unknown = line.ask("label.print")
    assert unknown["error"]["code"] == "unknown_command"
    assert "scale.read" in unknown["error"]["message"]
    _, bad_args = line.ask("scale.watch", {"seconds": 600})
    assert bad_args["error"]["code"] == "invalid_args"
    deep = b'{"command": "status.get", "args": {"a": ' + b"[" * 30000 + b"]" * 30000 + b"}}\n"
    nested = b'{"command": "scale.read", "args": {"device": ' + b"[" * 40 + b"]" * 40 + b"}}\n"
    for malformed in (b"hello\n", b"[1, 2]\n", b'{"command": "status.get", "arg": {}}\n',
                      b'{"command": "agent.version", "args": {"x": NaN}}\n', deep, nested):
        line.send(malformed)
        assert line.read()["error"]["code"] == "malformed_request", malformed[:60]
    assert line.ask("agent.version")[1]["ok"] is True, "the connection stays open"
    # Progress lines, then the final one: a watch of one second.
    rig.bench.scale.set_weight(250.0)
    readings, watched = line.ask("scale.watch", {"seconds": 1})
    assert watched["ok"] is True and len(readings) == watched["result"]["count"] >= 1
    assert readings[-1]["device"] == "scale"
    # Two requests sent at once are answered in order.
    line.send(b'{"command": "agent.version"}\n{"command": "outbox.stats"}\n')
    assert line.read()["result"]["version"] == __version__
    assert "pending" in line.read()["result"]
    line.close()

    too_large = Line(rig.socket)
    too_large.send(b'{"command": "status.get", "args": {"pad": "' + b"x" * MAX_REQUEST_BYTES
                   + b'"}}\n')
    assert too_large.read()["error"]["code"] == "too_large"
    assert too_large.lines.readline() == b"", "closed after too_large"
    too_large.close()

    # A client that shuts its sending side after the request still gets its answer.
    half = Line(rig.socket)
    half.send({"command": "agent.version"})
    half.sock.shutdown(socket.SHUT_WR)
    assert half.read()["ok"] is True
    half.close()

    # Closing the connection stops the command running for it (Ctrl-C on a listen).
    gone = Line(rig.socket)
    gone.send({"command": "scanner.listen", "args": {"timeout_s": 60}})
    wait_until(lambda: "-> ok" in rig.agent.output(), 5)  # the log has requests by now
    gone.close()
    wait_until(lambda: "scanner.listen stopped: the client closed the connection"
               in rig.agent.output(), 5, "the listen cancelled")
    log = rig.agent.output()
    assert f"uid {os.getuid()} pid " in log and "status.get -> ok" in log
    assert "print.submit -> not_local" in log


def test_the_cli_answers_every_command_from_the_daemon_with_json_and_exit_codes(
        rig: Rig) -> None:
    # Read-only commands side by side (the daemon serves several connections).
    words = [("status",), ("devices",), ("version",), ("config", "check"), ("outbox",),
             ("mqtt", "check"), ("check-config",), ("selftest",), ("evidence", "SF-NONE")]
    with ThreadPoolExecutor(6) as pool:
        human = dict(zip(words, pool.map(lambda w: rig.cli(*w), words), strict=True))
        as_json = dict(zip(words, pool.map(lambda w: rig.cli(*w, "--json"), words),
                           strict=True))
    for command in words:
        expected = 1 if command[0] == "evidence" else 0
        assert human[command].returncode == expected, (command, human[command].stderr)
        assert as_json[command].returncode == expected, (command, as_json[command].stderr)
    text = {command: run.stdout for command, run in human.items()}
    data = {command: json.loads(run.stdout) for command, run in as_json.items()}

    assert "bench     sh01/b07" in text[("status",)]
    assert "mqtt      connected" in text[("status",)]
    assert f"bench-agent {__version__}, up" in text[("status",)]
    assert re.search(r"\nlabel +printer +label +ready ", text[("status",)])  # a table row
    jsonschema.validate(data[("status",)], STATUS_SCHEMA)
    assert {"devices", "discovered"} <= set(data[("devices",)])
    assert "Serial ports:" in text[("devices",)] and "DEVICE" in text[("devices",)]
    assert data[("version",)]["version"] == __version__
    assert data[("version",)]["daemon"]["version"] == __version__
    assert "daemon: bench-agent" in text[("version",)]
    assert data[("config", "check")]["daemon"]["differs"] is False
    assert data[("check-config",)]["bench"] == "sh01/b07"
    assert "daemon: runs" in text[("config", "check")]
    assert data[("outbox",)]["alarms"] == [] and "pending" in text[("outbox",)]
    assert data[("mqtt", "check")]["ok"] is True and "mqtt ok" in text[("mqtt", "check")]
    assert data[("selftest",)]["passed"] is True and "selftest passed" in text[("selftest",)]
    assert "PASS" in text[("selftest",)]
    assert data[("evidence", "SF-NONE")] == {"key": "SF-NONE", "records": []}

    # Usage errors exit 2: args the daemon refuses, a device that is not there.
    refused = rig.cli("scale", "watch", "--seconds", "600")
    assert refused.returncode == 2 and "invalid_args" in refused.stderr
    missing = rig.cli("scale", "read", "nope", "--json")
    assert missing.returncode == 2
    assert json.loads(missing.stdout)["error"]["code"] == "device_not_found"
    direct = rig.cli("scale", "read", "--direct")
    assert direct.returncode == 2 and "daemon is running" in direct.stderr


def test_the_cli_reads_weighs_listens_prints_and_photographs_through_the_daemon(
        rig: Rig, tmp_path: Path) -> None:
    bench = rig.bench
    bench.scale.set_weight(1234.0)
    wait_until(lambda: rig.json("scale", "read")["reading"]["grams"] == 1234.0, 10)
    shown = rig.cli("scale", "read")
    assert shown.returncode == 0 and "scale: 1234.0 g (stable" in shown.stdout
    watch = rig.cli("scale", "watch", "--seconds", "1")
    assert watch.returncode == 0
    assert watch.stdout.count("1234.0 g") >= 2 and "readings" in watch.stdout
    assert rig.json("scale", "tare")["reading"]["net"] is True
    cleared = rig.cli("scale", "tare", "--clear")
    assert cleared.returncode == 0 and "tare cleared; now" in cleared.stdout
    bench.scale.set_weight(0.0)
    wait_until(lambda: rig.json("scale", "read")["reading"]["grams"] == 0.0, 10)
    assert rig.json("scale", "zero")["done"] == "zero"

    gs1 = "0109506000134352" + "21SN-42"

    def scan_soon() -> None:
        bench.scanner.scan("4006381333931", aim="]E0")
        bench.scanner.scan(gs1, aim="]C1")
    threading.Timer(1.0, scan_soon).start()
    heard = rig.cli("scanner", "listen", "--count", "2", "--timeout", "10")
    assert heard.returncode == 0, heard.stderr
    first, second = [s for s in heard.stdout.splitlines() if s.startswith("scanner:")]
    assert first.startswith("scanner: '4006381333931' (EAN-13")
    assert second.startswith(f"scanner: '{gs1}' (GS1-128")
    assert "GS1 (01)09506000134352 (21)SN-42" in heard.stdout
    assert "2 scans from scanner" in heard.stdout
    quiet = rig.cli("scanner", "listen", "--timeout", "1", "--json")
    assert quiet.returncode == 1 and json.loads(quiet.stdout)["timed_out"] is True

    printer = rig.json("printer", "status", "label")
    assert printer["status"]["ready"] is True and printer["status"]["faults"] == []
    test = rig.cli("printer", "test", "label")
    assert test.returncode == 0 and ": printed" in test.stdout, test.stdout + test.stderr
    assert bench.label.wait_for(lambda: len(bench.label.jobs) == 1, 5)
    assert "printer label" in bench.label.jobs[0].decode()

    # A device in fault: the printer out of labels is a bench problem (exit 1).
    bench.label.set_fault("paper_out")
    try:
        out = rig.cli("printer", "status", "label")
        assert out.returncode == 1 and "paper_out" in out.stdout + out.stderr
        failed = rig.json("selftest", code=1)
        checks = {c["name"]: c for c in failed["checks"]}
        assert failed["passed"] is False and checks["label"]["ok"] is False
        table = rig.cli("selftest")
        assert table.returncode == 1 and "FAIL" in table.stdout
        assert "selftest FAILED" in table.stdout
    finally:
        bench.label.set_fault("paper_out", False)

    jpeg = tmp_path / "view.jpg"
    snap = rig.json("camera", "snapshot", "-o", str(jpeg))
    assert "jpeg" not in snap and snap["file"] == str(jpeg)
    image = cv2.imread(str(jpeg))
    assert image.shape[1] == snap["width"] == 320 and image.shape[0] == snap["height"]
    decoded = rig.cli("camera", "decode")
    assert decoded.returncode == 0 and "'4006381333931' (EAN-13" in decoded.stdout

    # A disconnected device: exit 1 with the daemon's reason.
    def scale_state(client: ControlClient) -> str:
        states = {d["name"]: d["state"] for d in client.call("devices.list")["devices"]}
        return str(states["scale"])

    with ControlClient(rig.socket) as client:
        bench.scale.unplug()
        wait_until(lambda: scale_state(client) == "disconnected", 10, "the scale unplugged")
        unplugged = rig.cli("scale", "read", "--json")
        assert unplugged.returncode == 1, unplugged.stderr
        assert json.loads(unplugged.stdout)["error"]["code"] == "device_not_ready"
        assert re.search(r"^bench-agent: device_not_ready: scale is disconnected: \w+: ",
                         unplugged.stderr), unplugged.stderr
        bench.scale.replug()
        wait_until(lambda: scale_state(client) == "ready", 15, "the scale back")


def test_without_a_daemon_the_cli_says_so_and_checks_the_hardware_directly(
        tmp_path: Path, pki: Pki) -> None:
    scale = MtSicsSimulator(tmp_path / "scale").start()
    label = LabelPrinterSim("zpl").start()
    try:
        scale.set_weight(812.5)
        label.set_fault("paper_out")
        doc = bench_config(tmp_path, 1883, pki.ca, devices={
            "scale": {"kind": "scale", "protocol": "mt-sics",
                      "connection": f"serial://{scale.path}"},
            "label": {"kind": "printer", "language": "zpl",
                      "connection": f"tcp://127.0.0.1:{label.port}"}})
        config = str(write_toml(tmp_path / "agent.toml", doc))
        path = doc["diagnostics"]["socket"]

        status = cli("status", "-c", config)
        assert status.returncode == 3
        assert f"daemon is not running: no control socket at {path}" in status.stderr
        as_json = cli("status", "--json", "-c", config)
        assert as_json.returncode == 3
        assert json.loads(as_json.stdout)["error"]["code"] == "daemon_not_running"
        offered = cli("scale", "read", "-c", config)
        assert offered.returncode == 3 and "--direct" in offered.stderr
        version = cli("version", "--json", "-c", config)
        assert version.returncode == 0 and json.loads(version.stdout) == {
            "version": __version__}
        checked = cli("config", "check", "--json", "-c", config)
        assert checked.returncode == 0 and json.loads(checked.stdout)["daemon"] is None
        # evidence reads the database itself: there is none before the first run.
        evidence = cli("evidence", "SF1", "-c", config)
        assert evidence.returncode == 2 and "no agent database" in evidence.stderr

        read = cli("scale", "read", "--direct", "--json", "-c", config)
        assert read.returncode == 0, read.stderr
        assert json.loads(read.stdout)["reading"]["grams"] == 812.5
        assert label.connections == 0, "only the scale is opened to read the scale"
        asked = len(scale.requests)
        printer = cli("printer", "status", "--direct", "-c", config)
        assert printer.returncode == 1 and "paper_out" in printer.stdout
        assert label.connections == 1 and len(scale.requests) == asked, "only the printer"
        devices = cli("devices", "--direct", "--json", "-c", config)
        states = {d["name"]: d["state"] for d in json.loads(devices.stdout)["devices"]}
        assert devices.returncode == 1
        assert states == {"scale1": "disabled", "scale": "ready", "label": "faulted"}
    finally:
        scale.stop()
        label.stop()


def test_one_daemon_per_socket_and_storage_dir_and_a_quiet_stop_with_connections_open(
        broker: Broker, agent_factory: Any, tmp_path: Path) -> None:
    """The socket file is 0600, a stale one is replaced, a live one kept; a second daemon
    on the same storage dir refuses to start, and --direct refuses while the daemon holds
    it (whatever socket it is given); SIGTERM with connections open ends them quietly."""
    stale = short_socket_path()
    leftover = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    leftover.bind(str(stale))  # bound, never listening, never unlinked: a killed daemon's
    leftover.close()
    live = short_socket_path()
    squatter = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    squatter.bind(str(live))
    squatter.listen(1)
    first = agent_factory(broker, diagnostics={"socket": str(stale)}).start()
    second = agent_factory(broker, diagnostics={"socket": str(live)},
                           storage={"dir": str(tmp_path / "second")}).start()
    twin = agent_factory(broker).config  # the first's storage dir, a socket of its own
    try:
        wait_until(lambda: "control socket" in first.output()
                   and "listening" in first.output(), 20, "the first agent's socket")
        assert stat.S_IMODE(os.stat(stale).st_mode) == 0o600
        assert "removing the stale control socket" in first.output()
        with ControlClient(stale) as client:
            assert client.call("agent.version")["version"] == __version__
        assert first.process is not None
        storage = tmp_path / "state"
        assert (storage / "agent.lock").read_text() == f"{first.process.pid} daemon\n"
        direct = cli("devices", "--direct", "--socket", str(tmp_path / "no.sock"),
                     "-c", str(first.config))
        assert direct.returncode == 2, direct.stderr
        assert (f"daemon_running: the bench-agent daemon (pid {first.process.pid}) runs on "
                f"this bench ({storage}/agent.lock is locked)") in direct.stderr
        refused = cli("run", "-c", str(twin))
        assert refused.returncode == 1
        assert (f"cannot run: the bench-agent daemon (pid {first.process.pid}) runs on "
                f"{storage} (it holds {storage}/agent.lock); stop it first, or give this "
                f"daemon its own storage.dir") in refused.stdout
        wait_until(lambda: "another process (a second bench-agent?) is listening on "
                   f"{live}" in second.output(), 20, "the second agent's complaint")
        assert second.process is not None and second.process.poll() is None

        idle, partial = Line(stale), Line(stale)
        partial.send(b'{"command": "agent.vers')
        with ControlClient(stale) as client:  # both served (and this one)
            wait_until(lambda: client.call("status.get")["control"]["connections"] == 3, 5)
        assert first.stop() == 0 and not stale.exists()
        for line in (idle, partial):
            assert line.lines.readline() == b"", "closed by the daemon's stop"
            line.close()
        log = first.output()
        assert "connection closed, the daemon is stopping" in log
        assert "Traceback" not in log and not re.search(r"ERROR\s+asyncio", log), log
        with StorageLock(storage, "direct", create=False):
            pass  # released at the daemon's exit
        # No daemon: evidence reads the database itself.
        words = cli("evidence", "SF1", "-c", str(first.config))
        assert words.returncode == 1 and "no evidence for 'SF1'" in words.stderr
        assert second.stop() == 0 and live.exists(), "another's socket is left alone"
    finally:
        squatter.close()


def test_an_unknown_socket_group_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ControlError, match="no group 'no-such-group'"):
        bind_socket(tmp_path / "c.sock", "no-such-group")
    with pytest.raises(ControlError, match="is not a socket"):
        (tmp_path / "file").write_text("")
        bind_socket(tmp_path / "file", None)


def _registry() -> CommandRegistry:
    """Commands for an in-process server: a crash, a wait, a stream, a 4 MB answer, a
    flood of progress lines."""
    registry = CommandRegistry()

    async def crash(_args: dict[str, Any]) -> dict[str, Any]:
        raise ZeroDivisionError("boom")

    async def hold(args: dict[str, Any]) -> dict[str, Any]:
        await asyncio.sleep(args.get("seconds", 0))
        return {"held_s": args.get("seconds", 0)}

    async def stream(args: dict[str, Any]) -> dict[str, Any]:
        count = round(args["seconds"] / 0.1)
        for n in range(count):
            report_progress({"n": n})
            await asyncio.sleep(0.1)
        return {"count": count}

    async def big(_args: dict[str, Any]) -> dict[str, Any]:
        return {"pad": "x" * (4 << 20)}

    async def flood(_args: dict[str, Any]) -> dict[str, Any]:
        for _ in range(1000):
            report_progress({"pad": "x" * 10_000})
            await asyncio.sleep(0)
        await asyncio.sleep(30)
        return {}

    for handler in (crash, hold, stream, big, flood):
        registry.register(handler.__name__, handler, args_schema={"type": "object"},
                          local=True)
    return registry


def serve(client_side: Callable[[Path, ControlServer], None], **limits: Any) -> None:
    """Run ``client_side(socket, server)`` in a thread against an in-process server with
    ``limits``; then stop the server, which removes its socket."""
    path = short_socket_path()

    async def scenario() -> None:
        server = ControlServer(DiagnosticsConfig(socket=path), _registry(), **limits)
        serving = asyncio.create_task(server.run())
        while server.state != "listening":
            await asyncio.sleep(0.01)
        try:
            await asyncio.to_thread(client_side, path, server)
        finally:
            serving.cancel()
            await asyncio.gather(serving, return_exceptions=True)
        assert not path.exists() and server.state == "stopped"

    asyncio.run(scenario())


def test_a_failing_command_is_an_internal_error_and_connections_are_capped() -> None:
    """A handler's crash answers internal_error and the server goes on; a connection
    beyond the cap is answered busy."""
    def client_side(path: Path, _server: ControlServer) -> None:
        with ControlClient(path) as client:
            for _ in range(2):  # the server goes on after a crash
                with pytest.raises(DaemonError) as crashed:
                    client.call("crash")
                assert crashed.value.code == "internal_error"
                assert "ZeroDivisionError: boom" in crashed.value.message
            with ControlClient(path) as other, pytest.raises(DaemonError) as busy:
                other.call("crash")
            assert busy.value.code == "busy"

    serve(client_side, max_connections=1)


def test_a_client_that_sends_without_reading_is_held_back_then_dropped(
        caplog: pytest.LogCaptureFixture) -> None:
    """Requests piped behind a running one are read two ahead: the rest waits in the
    kernel and the client's writes block (the daemon's memory stays bounded). A client
    that takes no answer, or leaves 1 MB of progress lines untaken, is dropped."""
    caplog.set_level(logging.INFO, "agent.control")

    def client_side(path: Path, server: ControlServer) -> None:
        piped = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        piped.connect(str(path))
        piped.sendall(b'{"command": "hold", "args": {"seconds": 30}}\n')
        request = json.dumps({"command": "hold", "args": {"pad": "x" * 1000}}).encode()
        chunk, sent = (request + b"\n") * 64, 0
        piped.settimeout(1.0)
        with contextlib.suppress(TimeoutError):
            while sent < 32 << 20:
                piped.sendall(chunk)
                sent += len(chunk)
        assert sent < 2 << 20, f"{sent} bytes taken while a command runs"
        piped.close()  # stops the running hold
        wait_until(lambda: server.status()["connections"] == 0, 5, "the piped client gone")

        for command in ("big", "flood"):
            deaf = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            deaf.connect(str(path))
            deaf.sendall(json.dumps({"command": command}).encode() + b"\n")
            wait_until(lambda name=command: f"{name} -> " in caplog.text
                       or f"{name} stopped" in caplog.text, 5, f"{command} run")
            wait_until(lambda: server.status()["connections"] == 0, 5, f"{command} dropped")
            deaf.close()
        assert caplog.text.count("dropped: it took no answer for 0.4 s (or left 1048576 "
                                 "bytes untaken)") == 2
        with ControlClient(path) as client:  # the server goes on
            assert client.call("hold") == {"held_s": 0}

    serve(client_side, drain_timeout_s=0.4)


def test_idle_connections_are_closed_and_one_too_many_is_told_to_try_again() -> None:
    """Two connections of two allowed: a third (the CLI) is busy, exit 4; a streaming
    command twice as long as the idle timeout runs to its end; then the connection,
    idle, is closed after the idle timeout."""
    def client_side(path: Path, server: ControlServer) -> None:
        first, second = Line(path), Line(path)
        for line in (first, second):
            line.send({"command": "hold", "args": {"seconds": 30}})
        busy = cli("status", "--socket", str(path))
        assert busy.returncode == 4, busy.stderr
        assert ("bench-agent: busy: too many technicians connected: the daemon serves 2 "
                "control connections at once; try again in a minute") in busy.stderr
        first.close()
        second.close()  # their holds stop
        wait_until(lambda: server.status()["connections"] == 0, 5, "both closed")
        streaming = Line(path)
        streaming.send({"command": "stream", "args": {"seconds": 1.0}})
        progress = []
        while "progress" in (answer := streaming.read()):
            progress.append(answer["progress"])
        assert answer == {"ok": True, "result": {"count": 10}} and len(progress) == 10
        started = time.monotonic()
        closed = streaming.read()
        assert closed["error"] == {"code": "idle_timeout",
                                   "message": "no request for 0.5 s; closing (connect again)"}
        assert 0.4 < time.monotonic() - started < 2
        assert streaming.lines.readline() == b"", "closed after idle_timeout"
        streaming.close()
        with ControlClient(path) as client:
            assert client.call("hold") == {"held_s": 0}

    serve(client_side, max_connections=2, idle_timeout_s=0.5)


def test_a_daemon_that_does_not_answer_in_time_is_a_timeout_not_a_stopped_daemon(
        capsys: pytest.CaptureFixture[str]) -> None:
    """A hanging daemon is ``timeout`` (exit 1), a line that is not the protocol's is
    ``bad_answer`` (exit 1): neither is "the daemon is not running" (exit 3)."""
    as_text = argparse.Namespace(json=False)

    def client_side(path: Path, _server: ControlServer) -> None:
        with ControlClient(path, timeout_s=0.3) as client, \
                pytest.raises(DaemonError) as late:
            client.call("hold", {"seconds": 5})
        assert late.value.code == "timeout"
        assert fail(as_text, late.value) == 1

    serve(client_side)
    assert ("bench-agent: timeout: the daemon did not answer hold within 0.3 s: it runs but "
            "may hang") in capsys.readouterr().err

    path = short_socket_path()
    stranger = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stranger.bind(str(path))
    stranger.listen(1)

    def answer_html() -> None:
        conn, _ = stranger.accept()
        conn.recv(1000)
        conn.sendall(b"<html>\n")
        conn.close()

    threading.Thread(target=answer_html, daemon=True).start()
    try:
        with ControlClient(path, timeout_s=5) as client, pytest.raises(DaemonError) as bad:
            client.call("status.get")
    finally:
        stranger.close()
    assert bad.value.code == "bad_answer"
    assert fail(as_text, bad.value) == 1
    assert ("bad_answer: the daemon's answer to status.get is not a JSON object line: "
            "b'<html>\\n'") in capsys.readouterr().err
