"""The systemd unit, its companion files and the udev rules, checked as CI can without
installing them: ``systemd-analyze verify`` and ``security``, a bench run by the agent under
the unit's seccomp filters (tests/unit_sandbox.py), ``systemd-sysusers`` on a scratch root,
and a strict parser of udev's rule syntax (``udevadm verify`` needs systemd 254; Debian 12
has 252)."""

from __future__ import annotations

import base64
import grp
import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from agent.config import DiagnosticsConfig
from agent.devices.discovery import KNOWN_USB
from simulators.broker import Broker
from simulators.central import CentralSystem, Received
from simulators.pki import Pki
from tests.harness import ROOT, bench_config, wait_until, write_toml
from tests.test_diagnostics import ok, ready
from tests.test_pack_bench import BENCH, SITE, Bench
from tests.test_print_jobs import _pdf_with_a_bar
from tests.unit_sandbox import service_settings

SYSTEMD = ROOT / "systemd"
UNIT = SYSTEMD / "bench-agent.service"
RULES = SYSTEMD / "70-bench-agent.rules"
EXPOSURE_MAX = 1.5
"""What `systemd-analyze security` rates the unit (2.0 before issue 7's sandboxing)."""


@pytest.fixture
def bench(tmp_path: Path) -> Iterator[Bench]:
    sims = Bench(tmp_path)
    yield sims
    sims.close()


def _analyze(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["systemd-analyze", *args], capture_output=True, text=True,
                          timeout=60, env={**os.environ, "SYSTEMD_PAGER": "cat"})


def _installable_unit(tmp_path: Path, text: str | None = None) -> Path:
    """The unit with its commands pointed at this checkout's bench-agent (/opt/bench-agent
    is where a bench has it, not CI)."""
    command = Path(sys.executable).parent / "bench-agent"
    assert command.is_file(), f"{command}: the project is not installed in this venv"
    unit = tmp_path / "bench-agent.service"
    text = UNIT.read_text() if text is None else text
    unit.write_text(text.replace("/opt/bench-agent/.venv/bin/bench-agent", str(command)))
    return unit


# ---------------------------------------------------------------- the unit
def test_the_unit_verifies_without_a_word_and_a_mistake_in_it_would_be_named(
        tmp_path: Path) -> None:
    unit = _installable_unit(tmp_path)
    result = _analyze("verify", str(unit))
    about_it = [line for line in result.stderr.splitlines() if "bench-agent" in line]
    assert result.returncode == 0 and about_it == [], result.stderr
    broken = _installable_unit(tmp_path, UNIT.read_text()
                               .replace("ProtectSystem=strict", "ProtectSystm=strict")
                               .replace("RestartSec=2", "RestartSec=two"))
    result = _analyze("verify", str(broken))
    assert "ProtectSystm" in result.stderr and "two" in result.stderr, result.stderr


def test_the_units_exposure_stays_at_or_below_what_issue_7_reached(tmp_path: Path) -> None:
    result = _analyze("security", "--offline=true", str(_installable_unit(tmp_path)))
    assert result.returncode == 0, result.stderr
    level = re.search(r"Overall exposure level for bench-agent\.service: (\d+\.\d+)",
                      result.stdout)
    assert level, result.stdout
    assert float(level[1]) <= EXPOSURE_MAX, result.stdout


def test_the_unit_notifies_restarts_drops_root_and_writes_where_the_config_points() -> None:
    """Type=notify with a watchdog, restart on failure, an unprivileged user, a config check
    first; the agent's default socket and the example config's paths lie in the folders the
    unit creates, and the example's key is the credential the unit hands over."""
    unit = service_settings(UNIT)
    assert unit["Type"] == ["notify"] and unit["Restart"] == ["on-failure"]
    assert int(unit["WatchdogSec"][0]) >= 10
    assert unit["User"] == ["bench-agent"] and unit["Group"] == ["bench-agent"]
    assert unit["NoNewPrivileges"] == ["yes"] and unit["CapabilityBoundingSet"] == [""]
    assert unit["ExecStartPre"][0].endswith(
        "/bench-agent check-config -c /etc/bench-agent/config.toml")
    example = tomllib.loads((ROOT / "config" / "bench-agent.example.toml").read_text())
    assert Path(example["storage"]["dir"]) == Path("/var/lib", *unit["StateDirectory"])
    assert DiagnosticsConfig().socket.parent == Path("/run", *unit["RuntimeDirectory"])
    assert Path(example["diagnostics"]["socket"]) == DiagnosticsConfig().socket
    assert example["diagnostics"]["socket_group"] == unit["Group"][0]
    credentials = dict(line.split(":", 1) for line in unit["LoadCredential"])
    assert example["mqtt"]["tls"]["key_file"] == "credential:bench.key"
    assert credentials["bench.key"] == "/etc/bench-agent/bench.key"


def test_the_stand_in_for_systemd_refuses_what_the_unit_refuses(tmp_path: Path) -> None:
    """tests/unit_sandbox.py bites: writable code pages, packet sockets, renicing and chown
    fail, and files are born with the unit's umask."""
    probe = """
import ctypes, json, os, socket
libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                      ctypes.c_int, ctypes.c_long]
found = {}
page = libc.mmap(None, 4096, 0x7, 0x22, -1, 0)  # PROT_READ|WRITE|EXEC, private anonymous
found["wx_page"] = (os.strerror(ctypes.get_errno()) if page == ctypes.c_void_p(-1).value
                    else "mapped")
for name, call in (("packet_socket", lambda: socket.socket(socket.AF_PACKET, socket.SOCK_RAW)),
                   ("renice", lambda: os.setpriority(os.PRIO_PROCESS, 0, 5)),
                   ("chown", lambda: os.chown(FILE, -1, os.getgid()))):
    try:
        call()
        found[name] = "allowed"
    except OSError as exc:
        found[name] = exc.strerror
found["mode"] = oct(os.stat(FILE).st_mode & 0o777)
print(json.dumps(found))
"""
    file = tmp_path / "made-here"
    code = f"FILE = {str(file)!r}\nopen(FILE, 'w').close()\n{probe}"
    result = subprocess.run([sys.executable, "-m", "tests.unit_sandbox", str(UNIT),
                             sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {
        "wx_page": "Operation not permitted", "packet_socket": "Address family not "
        "supported by protocol", "renice": "Operation not permitted",
        "chown": "Operation not permitted", "mode": "0o640"}


def test_the_agent_runs_a_bench_under_the_units_system_call_filters(
        tmp_path: Path, pki: Pki, broker_factory: Callable[..., Broker],
        central_factory: Callable[..., CentralSystem], bench: Bench) -> None:
    """Under the unit's SystemCallFilter, MemoryDenyWriteExecute and RestrictAddressFamilies:
    mutual TLS with the key taken from $CREDENTIALS_DIRECTORY, a scale and a relay board on
    serial ports, printers on TCP, OpenCV and zxing-cpp on camera frames, a PDF rendered by
    PDFium in the spawned render worker, and the control socket with its group."""
    broker = broker_factory(require_certificate=True).start()
    central = central_factory(broker, cert=pki.clients["central"].cert,
                              key=pki.clients["central"].key)
    central.watch()
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    shutil.copyfile(pki.clients["bench"].key, credentials / "bench.key")
    group = grp.getgrgid(os.getegid()).gr_name  # the unit's Group=: the socket is born with it
    tls = {"ca_file": str(pki.ca), "cert_file": str(pki.clients["bench"].cert),
           "key_file": "credential:bench.key"}
    config = write_toml(tmp_path / "bench.toml", bench_config(
        tmp_path, broker.port, pki.ca, mqtt={"tls": tls}, devices=bench.devices(),
        jobs={"pack": {"enabled": False}}, diagnostics={"socket_group": group}))
    socket_path = Path(tomllib.loads(config.read_text())["diagnostics"]["socket"])
    log = tmp_path / "agent.log"
    with log.open("wb") as out:
        agent = subprocess.Popen(
            [sys.executable, "-m", "tests.unit_sandbox", str(UNIT),
             sys.executable, "-m", "agent.cli", "run", "-c", str(config)],
            cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1",
                 "CREDENTIALS_DIRECTORY": str(credentials)})
    try:
        ready(central, "scanner", "scale", "label", "slip", "camera", "light")
        bench.scale.set_weight(1234.0)
        wait_until(lambda: ok(central, "scale.read")["reading"]["grams"] == 1234.0, 10)
        assert [b["data"] for b in ok(central, "camera.decode")["barcodes"]] == [
            "4006381333931"]

        pdf = {"format": "pdf", "data": base64.b64encode(_pdf_with_a_bar()).decode()}
        reply = central.request(SITE, BENCH, "print.submit",
                                {"job_id": "pdf-1", "printer": "label", "document": pdf},
                                timeout_s=20)
        assert reply["ok"] is True, reply

        def printed(message: Received) -> bool:
            return bool(message.topic.endswith("/events/print_job")
                        and message.json["data"]["job_id"] == "pdf-1"
                        and message.json["data"]["state"] == "printed")
        central.wait_for(printed, 30)
        [picture] = bench.label.graphics
        assert (picture.width, picture.height) == (408, 203)

        mode = os.stat(socket_path)
        assert stat.S_IMODE(mode.st_mode) == 0o660 and mode.st_gid == os.getegid()
        status = subprocess.run([sys.executable, "-m", "agent.cli", "status", "--json",
                                 "--socket", str(socket_path)], cwd=ROOT,
                                capture_output=True, text=True, timeout=30)
        assert status.returncode == 0, status.stdout + status.stderr
        assert json.loads(status.stdout)["link"]["state"] == "connected", status.stdout
        agent.send_signal(signal.SIGTERM)
        assert agent.wait(20) == 0
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait(10)
    output = log.read_text(errors="replace")
    for trouble in ("Traceback", "Operation not permitted", "Bad system call"):
        assert trouble not in output, output


# ---------------------------------------------------------------- companion files
def test_sysusers_makes_the_units_user_and_group(tmp_path: Path) -> None:
    config = (SYSTEMD / "bench-agent.sysusers.conf").read_text()
    (tmp_path / "etc").mkdir()
    result = subprocess.run(["systemd-sysusers", f"--root={tmp_path}", "-"], input=config,
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    [user] = [line.split(":") for line in (tmp_path / "etc/passwd").read_text().splitlines()]
    [group] = [line.split(":") for line in (tmp_path / "etc/group").read_text().splitlines()]
    assert user[0] == group[0] == "bench-agent" and user[3] == group[2]
    assert int(user[2]) < 1000 and user[5] == "/var/lib/bench-agent"
    assert user[6] == "/usr/sbin/nologin"


DEVICE_CLASS_DRIVERS = {"ttyS": None, "input": None, "ttyUSB": "usbserial",
                        "ttyACM": "cdc_acm", "video4linux": "videodev",
                        "usb_device": "usbcore", "usb": "usbcore"}
"""Who registers each device class (``/proc/devices``): None for what the kernel has
built in (8250 serial, the input core); else the module."""


def test_every_device_class_the_unit_allows_is_registered_before_it_starts() -> None:
    """DeviceAllow=char-NAME is looked up when the unit starts: the modules-load file loads
    the drivers of those classes at boot, whatever is plugged in."""
    modules = {line.strip() for line in
               (SYSTEMD / "bench-agent.modules-load.conf").read_text().splitlines()
               if line.strip() and not line.startswith("#")}
    allowed = [entry.split() for entry in service_settings(UNIT)["DeviceAllow"]]
    assert service_settings(UNIT)["DevicePolicy"] == ["closed"]
    names = [entry[0].removeprefix("char-") for entry in allowed]
    assert set(names) == set(DEVICE_CLASS_DRIVERS)
    assert {DEVICE_CLASS_DRIVERS[name] for name in names} - {None} == modules
    assert all(access == "rw" for _, access in allowed)


# ---------------------------------------------------------------- udev rules
MATCH, ASSIGN = frozenset({"==", "!="}), frozenset({"=", "+=", ":="})
UDEV_KEYS: dict[str, tuple[frozenset[str], str]] = {
    # key: (operators, its {attribute}: "no", "yes" or "optional"), as udev 252 takes them
    **{key: (MATCH, "no") for key in ("ACTION", "DEVPATH", "KERNEL", "SUBSYSTEM", "DRIVER",
                                      "KERNELS", "SUBSYSTEMS", "DRIVERS", "TAGS", "RESULT")},
    "ATTRS": (MATCH, "yes"), "CONST": (MATCH, "yes"), "TEST": (MATCH, "optional"),
    "PROGRAM": (MATCH | {"="}, "no"), "IMPORT": (MATCH | {"="}, "yes"),
    "SYMLINK": (MATCH | ASSIGN, "no"), "NAME": (MATCH | {"=", ":="}, "no"),
    "ENV": (MATCH | {"=", "+="}, "yes"), "TAG": (MATCH | {"=", "+=", "-="}, "no"),
    "ATTR": (MATCH | {"="}, "yes"), "SYSCTL": (MATCH | {"="}, "yes"),
    "OWNER": (frozenset({"=", ":="}), "no"), "GROUP": (frozenset({"=", ":="}), "no"),
    "MODE": (frozenset({"=", ":="}), "no"), "SECLABEL": (frozenset({"=", "+="}), "yes"),
    "RUN": (ASSIGN, "optional"), "OPTIONS": (ASSIGN, "no"),
    "GOTO": (frozenset({"="}), "no"), "LABEL": (frozenset({"="}), "no"),
}
UDEV_ATTRIBUTES = {"CONST": {"arch", "virt"}, "RUN": {"program", "builtin"},
                   "IMPORT": {"file", "program", "builtin", "db", "cmdline", "parent"}}
UDEV_BUILTINS = {"blkid", "btrfs", "hwdb", "input_id", "keyboard", "kmod", "net_id",
                 "net_setup_link", "path_id", "usb_id", "uaccess"}
_PAIR = re.compile(r'([A-Z]+)(?:\{([^{}"]*)\})?\s*(==|!=|\+=|-=|:=|=)\s*"((?:[^"\\]|\\.)*)"')

Pair = tuple[str, str | None, str, str]


def parse_udev_rules(text: str) -> list[tuple[int, list[Pair]]]:
    """Each rule's line number and its (key, attribute, operator, value) pairs.

    Raises:
        ValueError: naming the line and what is wrong with it.
    """
    rules: list[tuple[int, list[Pair]]] = []
    lines = text.split("\n")
    number = 0
    while number < len(lines):
        first, line = number + 1, lines[number]
        while line.endswith("\\"):
            number += 1
            if number == len(lines):
                raise ValueError(f"line {first}: continued past the end of the file")
            line = line[:-1] + lines[number]
        number += 1
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        rules.append((first, _parse_rule(line.strip(), first)))
    labels = [value for _, pairs in rules for key, _, _, value in pairs if key == "LABEL"]
    for at, pairs in rules:
        for key, _, _, value in pairs:
            if key == "GOTO" and value not in labels:
                raise ValueError(f"line {at}: GOTO=\"{value}\" has no LABEL")
    return rules


def _parse_rule(line: str, at: int) -> list[Pair]:
    pairs: list[Pair] = []
    position = 0
    while True:
        found = _PAIR.match(line, position)
        if not found:
            raise ValueError(f"line {at}: expected KEY{{attr}}OP\"value\" at: "
                             f"{line[position:position + 40]!r}")
        key, attr, op, value = found.groups()
        _check_pair(key, attr, op, value, at)
        pairs.append((key, attr, op, value))
        position = found.end()
        rest = line[position:]
        if not rest.strip():
            return pairs
        separator = re.match(r"\s*,\s*", rest)
        if not separator or position + separator.end() == len(line):
            raise ValueError(f"line {at}: a comma must separate the pairs, at: {rest[:40]!r}")
        position += separator.end()


def _check_pair(key: str, attr: str | None, op: str, value: str, at: int) -> None:
    if key not in UDEV_KEYS:
        raise ValueError(f"line {at}: unknown key {key}")
    operators, takes = UDEV_KEYS[key]
    if op not in operators:
        raise ValueError(f"line {at}: {key} takes {' '.join(sorted(operators))}, not {op}")
    if (takes == "no" and attr is not None) or (takes == "yes" and not attr):
        raise ValueError(f"line {at}: {key} {'takes no' if takes == 'no' else 'needs an'} "
                         f"{{attribute}}")
    if attr and key in UDEV_ATTRIBUTES and attr not in UDEV_ATTRIBUTES[key]:
        raise ValueError(f"line {at}: {key}{{{attr}}}: not one of "
                         f"{', '.join(sorted(UDEV_ATTRIBUTES[key]))}")
    if key in ("IMPORT", "RUN") and attr == "builtin" \
            and value.split()[0] not in UDEV_BUILTINS:
        raise ValueError(f"line {at}: unknown builtin {value.split()[0]!r}")
    if key == "MODE" and not re.fullmatch(r"0?[0-7]{3}", value):
        raise ValueError(f"line {at}: MODE must be octal, not {value!r}")
    if key in ("GOTO", "LABEL", "GROUP", "OWNER") and not re.fullmatch(r"[A-Za-z0-9_.-]+",
                                                                      value):
        raise ValueError(f"line {at}: {key}=\"{value}\" is not a name")


def _system_rule_files() -> list[Path]:
    files = {path.resolve() for folder in ("/usr/lib/udev/rules.d", "/lib/udev/rules.d")
             for path in Path(folder).glob("*.rules")}
    return sorted(files)


def test_the_udev_parser_takes_systemds_own_rules_and_refuses_broken_ones() -> None:
    """The parser is as strict as udev where it matters: it reads every rules file the
    systemd package ships, and names the line of each broken rule."""
    files = _system_rule_files()
    assert files, "systemd's rules.d is missing: scripts/bootstrap.sh installs systemd"
    for path in files:
        parse_udev_rules(path.read_text())
    broken = {
        'KERNEL="ttyUSB0", GROUP="bench-agent"': "KERNEL takes != ==, not =",
        'ATTRS{idVendor}=="0a5f" GROUP="bench-agent"': "a comma must separate the pairs",
        'SUBSYSTEM=="tty", GROPU="bench-agent"': "unknown key GROPU",
        'ENV{BENCH_AGENT_DEVICE}="scale': "expected KEY{attr}OP\"value\"",
        'SUBSYSTEM=="usb", GOTO="nowhere"': 'GOTO="nowhere" has no LABEL',
        'SUBSYSTEM=="usb", MODE="rw"': "MODE must be octal",
        'ATTR=="0a5f"': "ATTR needs an {attribute}",
        'SYMLINK-="bench/x"': "SYMLINK takes",
        'IMPORT{builtin}="path-id"': "unknown builtin 'path-id'",
        'SUBSYSTEM=="usb", \\': "continued past the end",
    }
    for rule, message in broken.items():
        with pytest.raises(ValueError, match=re.escape(f"line 2: {message}")):
            parse_udev_rules(f"# a comment\n{rule}")


def test_the_udev_rules_give_bench_devices_and_nothing_else_to_the_units_group() -> None:
    rules = parse_udev_rules(RULES.read_text())
    group = service_settings(UNIT)["Group"][0]
    assert rules[0][1] == [("ACTION", None, "==", "remove"), ("GOTO", None, "=", "bench_agent_end")]
    assert rules[-1][1] == [("LABEL", None, "=", "bench_agent_end")]
    kinds = set()
    for at, pairs in rules:
        for key, attr, op, value in pairs:
            if key == "GROUP":
                assert value == group, f"line {at}"
                assert ("ENV", "BENCH_AGENT_DEVICE", "==", "?*") in pairs, f"line {at}"
            if key == "MODE":
                assert int(value, 8) & 0o002 == 0, f"line {at}: world-writable"
            if key in ("ATTR", "ATTRS") and attr in ("idVendor", "idProduct"):
                for alternative in value.split("|"):  # sysfs writes them lower-case
                    assert re.fullmatch(r"[0-9a-f]{4}", alternative), f"line {at}"
            if key == "ENV" and attr == "BENCH_AGENT_DEVICE" and op == "=":
                kinds.add(value)
            if key == "SYMLINK":
                assert value.startswith("bench/"), f"line {at}"
            assert key not in ("RUN", "PROGRAM", "OWNER"), f"line {at}: {key}"
    assert kinds == {"serial", "scanner", "scale", "printer", "camera"}


def test_the_udev_rules_open_every_usb_scale_and_printer_discovery_knows() -> None:
    """agent/devices/discovery.py's VID:PIDs and the rules' are one list."""
    granted: dict[tuple[int, int | None], str] = {}
    for _, pairs in parse_udev_rules(RULES.read_text()):
        found = {(key, attr): value for key, attr, _, value in pairs}
        if found.get(("SUBSYSTEM", None)) == "usb" and ("ATTR", "idVendor") in found:
            product = found.get(("ATTR", "idProduct"))
            granted[(int(found[("ATTR", "idVendor")], 16),
                     int(product, 16) if product else None)] = found[("ENV",
                                                                      "BENCH_AGENT_DEVICE")]
    assert granted == {usb_id: kind for usb_id, (kind, _) in KNOWN_USB.items()}
