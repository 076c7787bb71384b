"""Config validation: every error names the file, the key and what is allowed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from agent.config import load_config
from agent.errors import ConfigError
from simulators.pki import Pki
from tests.harness import ROOT, bench_config, write_toml


def _write(tmp_path: Path, pki: Pki, **overrides: Any) -> Path:
    return write_toml(tmp_path / "bench.toml", bench_config(tmp_path, 8883, pki.ca, **overrides))


def _error(path: Path) -> str:
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    return str(caught.value)


def test_a_valid_config_loads_into_typed_values(tmp_path: Path, pki: Pki) -> None:
    config = load_config(_write(tmp_path, pki))
    assert config.bench.site == "sh01" and config.mqtt.port == 8883
    assert config.mqtt.tls.ca_file == pki.ca
    assert config.devices["label"].role == "label"
    assert config.client_id == "benchagent-sh01-b07"


def test_an_unknown_key_is_named_with_the_keys_allowed_there(tmp_path: Path, pki: Pki) -> None:
    message = _error(_write(tmp_path, pki, mqtt={"hots": "broker"}))
    assert f"{tmp_path / 'bench.toml'}: mqtt.hots: unknown key" in message
    assert "host, port, tls" in message


def test_an_unknown_device_key_lists_the_device_keys(tmp_path: Path, pki: Pki) -> None:
    devices = {"scale1": {"kind": "scale", "protocol": "mt-sics",
                          "connection": "serial:///dev/ttyS0", "baud": 9600}}
    message = _error(_write(tmp_path, pki, devices=devices))
    assert "devices.scale1.baud: unknown key; allowed here: kind, connection, role, enabled" \
        in message
    assert "protocol, poll_interval_ms" in message


def test_a_wrong_type_names_the_key_and_the_value(tmp_path: Path, pki: Pki) -> None:
    message = _error(_write(tmp_path, pki, mqtt={"port": "8883"}))
    assert "mqtt.port: Input should be a valid integer" in message and "'8883'" in message


def test_an_out_of_range_value_says_the_range(tmp_path: Path, pki: Pki) -> None:
    message = _error(_write(tmp_path, pki, mqtt={"port": 70000}))
    assert "mqtt.port: Input should be less than or equal to 65535" in message


def test_a_wrong_device_kind_lists_the_kinds(tmp_path: Path, pki: Pki) -> None:
    message = _error(_write(tmp_path, pki, devices={"x": {"kind": "toaster",
                                                          "connection": "tcp://h:1"}}))
    assert "devices.x.kind: must be one of scanner, scale, printer, camera, signal " \
        "(got 'toaster')" in message


def test_a_missing_required_key_is_named(tmp_path: Path, pki: Pki) -> None:
    doc = bench_config(tmp_path, 8883, pki.ca)
    del doc["bench"]["site"]
    message = _error(write_toml(tmp_path / "bench.toml", doc))
    assert "bench.site: required key is missing" in message


def test_a_missing_ca_file_is_named(tmp_path: Path, pki: Pki) -> None:
    message = _error(_write(tmp_path, pki, mqtt={"tls": {"ca_file": "nope/ca.crt"}}))
    assert f"mqtt.tls.ca_file: file {tmp_path / 'nope/ca.crt'} does not exist" in message


def test_there_is_no_plaintext_mode(tmp_path: Path, pki: Pki) -> None:
    doc = bench_config(tmp_path, 1883, pki.ca)
    del doc["mqtt"]["tls"]
    assert "mqtt.tls: required key is missing" in _error(write_toml(tmp_path / "b.toml", doc))


def test_a_client_certificate_needs_its_key(tmp_path: Path, pki: Pki) -> None:
    tls = {"ca_file": str(pki.ca), "cert_file": str(pki.clients["bench"].cert)}
    assert "cert_file and key_file must be given together" in _error(
        _write(tmp_path, pki, mqtt={"tls": tls}))


def test_the_password_comes_from_a_file_and_never_shows(tmp_path: Path, pki: Pki) -> None:
    (tmp_path / "secret").write_text("s3cret-pw\n")
    config = load_config(_write(tmp_path, pki, mqtt={"username": "bench",
                                                     "password_file": "secret"}))
    assert config.mqtt.password is not None
    assert config.mqtt.password.get_secret_value() == "s3cret-pw"
    assert "s3cret" not in repr(config) and "s3cret" not in str(config.model_dump())


def test_a_password_written_in_the_config_is_refused(tmp_path: Path, pki: Pki) -> None:
    message = _error(_write(tmp_path, pki, mqtt={"username": "bench", "password": "pw"}))
    assert "mqtt.password: unknown key" in message and "mqtt.password_file" in message


def test_a_toml_syntax_error_names_the_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.toml"
    path.write_text("[bench]\nsite = \n")
    message = _error(path)
    assert str(path) in message and "line 2" in message


def test_check_config_exits_0_for_a_good_file_and_2_naming_the_key_for_a_bad_one(
        tmp_path: Path, pki: Pki) -> None:
    good = _write(tmp_path, pki)
    run = [sys.executable, "-m", "agent.cli", "check-config", "--json", "-c"]
    result = subprocess.run([*run, str(good)], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["bench"] == "sh01/b07"
    bad = write_toml(tmp_path / "bad.toml",
                     bench_config(tmp_path, 8883, pki.ca, storage={"outbox_max_bytes": 10}))
    result = subprocess.run([*run, str(bad)], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 2
    errors = json.loads(result.stdout)["errors"]
    assert errors == [f"{bad}: storage.outbox_max_bytes: Input should be greater than or "
                      "equal to 65536 (got 10)"]


def test_the_daemon_refuses_to_start_on_a_bad_config(tmp_path: Path, pki: Pki) -> None:
    bad = _write(tmp_path, pki, log={"level": "chatty"})
    result = subprocess.run([sys.executable, "-m", "agent.cli", "run", "-c", str(bad)],
                            cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert "log.level" in result.stderr and "'debug', 'info', 'warning' or 'error'" \
        in result.stderr


def test_a_ca_file_that_is_not_pem_is_a_config_error_not_a_crash(tmp_path: Path,
                                                                  pki: Pki) -> None:
    (tmp_path / "ca.crt").write_text("this is not a certificate\n")
    message = _error(_write(tmp_path, pki, mqtt={"tls": {"ca_file": "ca.crt"}}))
    assert "mqtt.tls.ca_file" in message and "not a readable PEM CA certificate" in message


def test_a_rule_between_keys_reads_plainly(tmp_path: Path, pki: Pki) -> None:
    tls = {"ca_file": str(pki.ca), "cert_file": str(pki.clients["bench"].cert)}
    message = _error(_write(tmp_path, pki, mqtt={"tls": tls}))
    assert message.endswith("mqtt.tls: cert_file and key_file must be given together "
                            "(mutual TLS)")


def test_device_options_a_driver_cannot_honour_fail_at_load(tmp_path: Path, pki: Pki) -> None:
    """An unknown python-escpos profile or pyzbar asked for DataMatrix: refused at startup."""
    devices = {"slip": {"kind": "printer", "language": "escpos",
                        "connection": "tcp://10.0.0.8:9100", "escpos_profile": "TM-NOPE"},
               "cam": {"kind": "camera", "connection": "video:0", "decoder": "pyzbar",
                       "formats": ["ean13", "datamatrix"]}}
    message = _error(_write(tmp_path, pki, devices=devices))
    assert "devices.slip.escpos_profile: unknown python-escpos profile 'TM-NOPE'; known " \
        "profiles: " in message and "TM-T88V" in message
    assert 'devices.cam: decoder pyzbar cannot read datamatrix; use decoder = "zxing"' in message


def test_two_devices_on_one_port_are_refused(tmp_path: Path, pki: Pki) -> None:
    devices = {"scale": {"kind": "scale", "protocol": "mt-sics", "connection": "/dev/ttyS0"},
               "scanner": {"kind": "scanner", "connection": "serial:///dev/ttyS0?baud=9600"}}
    message = _error(_write(tmp_path, pki, devices=devices))
    assert message.endswith("bench.toml: devices.scanner.connection: serial:///dev/ttyS0"
                            "?baud=9600 is the port of device 'scale'; one driver owns a port")


def test_a_scale_protocol_must_match_its_connection(tmp_path: Path, pki: Pki) -> None:
    devices = {"scale": {"kind": "scale", "protocol": "hid-pos",
                         "connection": "serial:///dev/ttyUSB0"}}
    message = _error(_write(tmp_path, pki, devices=devices))
    assert "devices.scale: protocol hid-pos goes with a usb://VID:PID connection" in message


def test_the_example_config_documents_valid_job_settings() -> None:
    """config/bench-agent.example.toml is what installers copy: its [jobs] must load."""
    import tomllib

    from agent.config import JobsConfig
    from tests.harness import ROOT

    raw = tomllib.loads((ROOT / "config" / "bench-agent.example.toml").read_text())
    jobs = JobsConfig.model_validate(raw["jobs"])
    assert jobs.print.uncertain_policy == "ask" and jobs.pack.scanner_role == "items"
    assert jobs.pack.flow.badge_prefix == "EMP-" and jobs.orders.lookup_timeout_s == 5.0


def _credentials(tmp_path: Path, pki: Pki) -> Path:
    """What systemd's LoadCredential= leaves in $CREDENTIALS_DIRECTORY for the unit."""
    folder = tmp_path / "credentials"
    folder.mkdir()
    (folder / "bench.key").write_bytes(pki.clients["bench"].key.read_bytes())
    (folder / "mqtt-password").write_text("cr3d-pw\n")
    return folder


def test_file_keys_may_name_the_credentials_systemd_hands_over(
        tmp_path: Path, pki: Pki, monkeypatch: pytest.MonkeyPatch) -> None:
    """``credential:NAME`` is read from $CREDENTIALS_DIRECTORY (the unit's LoadCredential=)."""
    folder = _credentials(tmp_path, pki)
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(folder))
    tls = {"ca_file": str(pki.ca), "cert_file": str(pki.clients["bench"].cert),
           "key_file": "credential:bench.key"}
    config = load_config(_write(tmp_path, pki, mqtt={
        "username": "bench", "password_file": "credential:mqtt-password", "tls": tls}))
    assert config.mqtt.tls.key_file == folder / "bench.key"
    assert config.mqtt.password is not None
    assert config.mqtt.password.get_secret_value() == "cr3d-pw"
    assert config.mqtt.tls.ca_file == pki.ca


def test_a_credential_that_is_not_there_is_a_config_error_naming_the_unit_setting(
        tmp_path: Path, pki: Pki, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = _credentials(tmp_path, pki)
    tls = {"ca_file": str(pki.ca), "cert_file": str(pki.clients["bench"].cert),
           "key_file": "credential:bench.key"}
    path = _write(tmp_path, pki, mqtt={"tls": tls})
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    assert _error(path) == (
        f"{path}: mqtt.tls.key_file: credential:bench.key needs $CREDENTIALS_DIRECTORY, "
        "which systemd sets for a unit with LoadCredential=bench.key:FILE; it is not set "
        "(outside the service, as root while it runs: "
        "CREDENTIALS_DIRECTORY=/run/credentials/bench-agent.service)")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(folder))
    (folder / "bench.key").unlink()
    assert _error(path) == (
        f"{path}: mqtt.tls.key_file: credential 'bench.key' is not in "
        f"$CREDENTIALS_DIRECTORY ({folder}): the unit needs LoadCredential=bench.key:FILE")
    traversal = _write(tmp_path, pki, mqtt={"tls": {**tls, "key_file": "credential:../x"}})
    assert "mqtt.tls.key_file: 'credential:../x': write credential:NAME" in _error(traversal)
    storage = _write(tmp_path, pki, storage={"dir": "credential:state"})
    assert "storage.dir: 'credential:state': only mqtt.password_file, mqtt.tls.ca_file, " \
        "mqtt.tls.cert_file, mqtt.tls.key_file may name a credential" in _error(storage)


def test_check_config_outside_the_unit_says_which_credential_it_cannot_see(
        tmp_path: Path, pki: Pki) -> None:
    """An installer's check-config exits 2 naming the key; in the unit's environment, 0."""
    folder = _credentials(tmp_path, pki)
    tls = {"ca_file": str(pki.ca), "cert_file": str(pki.clients["bench"].cert),
           "key_file": "credential:bench.key"}
    path = _write(tmp_path, pki, mqtt={"tls": tls})
    run = [sys.executable, "-m", "agent.cli", "check-config", "--json", "-c", str(path)]
    env = {k: v for k, v in os.environ.items() if k != "CREDENTIALS_DIRECTORY"}
    outside = subprocess.run(run, cwd=ROOT, capture_output=True, text=True, env=env)
    assert outside.returncode == 2
    [error] = json.loads(outside.stdout)["errors"]
    assert error.startswith(f"{path}: mqtt.tls.key_file: credential:bench.key needs "
                            "$CREDENTIALS_DIRECTORY")
    inside = subprocess.run(run, cwd=ROOT, capture_output=True, text=True,
                            env={**env, "CREDENTIALS_DIRECTORY": str(folder)})
    assert inside.returncode == 0, inside.stdout + inside.stderr
    assert json.loads(inside.stdout)["broker"] == "localhost:8883 (TLS, client certificate)"
