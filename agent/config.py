"""The agent's one TOML config file, read and validated once at startup.

Nothing below :func:`load_config` sees the raw TOML: it gets typed, frozen objects. Any
wrong type, missing required key or unknown key fails startup with a :class:`ConfigError`
whose message names the file, the dotted key and what is allowed. Relative paths are
resolved against the config file's folder, ``credential:NAME`` against systemd's
``$CREDENTIALS_DIRECTORY``. Secrets (the MQTT password) are read from
their own file here and never appear in ``repr`` or logs.
"""

from __future__ import annotations

import os
import re
import ssl
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from agent.devices.settings import DEVICE_KINDS, SETTINGS_BY_KIND, DeviceSettings
from agent.errors import ConfigError
from agent.jobs.pack_events import PackConfig

_NAME = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,31}$"
"""Site, bench and device names: they become MQTT topic levels, so no ``/``, ``+``, ``#``."""

__all__ = ["DEVICE_KINDS", "Config", "ConfigError", "load_config", "parse_config"]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class BenchConfig(_Section):
    """Who this bench is: ``site`` and ``id`` name it in every topic and report."""

    site: Annotated[str, Field(pattern=_NAME)]
    id: Annotated[str, Field(pattern=_NAME)]
    description: str = ""


class TlsConfig(_Section):
    """TLS to the broker. There is no plaintext mode: ``ca_file`` is required."""

    ca_file: Path
    cert_file: Path | None = None
    key_file: Path | None = None

    @model_validator(mode="after")
    def _cert_and_key_together(self) -> TlsConfig:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file must be given together (mutual TLS)")
        return self


class MqttConfig(_Section):
    """The link to the central system's broker (MQTT 5 over TLS)."""

    host: str
    port: Annotated[int, Field(ge=1, le=65535)] = 8883
    tls: TlsConfig
    client_id: str | None = None
    username: str | None = None
    password_file: Path | None = None
    keepalive_s: Annotated[int, Field(ge=5, le=3600)] = 30
    session_expiry_s: Annotated[int, Field(ge=60, le=0xFFFFFFFF)] = 7 * 24 * 3600
    reconnect_min_s: Annotated[float, Field(gt=0, le=60)] = 1.0
    reconnect_max_s: Annotated[float, Field(gt=0, le=3600)] = 60.0
    connect_timeout_s: Annotated[float, Field(gt=0, le=120)] = 10.0
    max_inflight: Annotated[int, Field(ge=1, le=65535)] = 64
    """Outbox events in flight at once; the broker's Receive Maximum lowers it further."""
    receive_maximum: Annotated[int, Field(ge=1, le=65535)] = 32
    """Commands the broker may send before the agent acknowledges them (back-pressure)."""
    max_command_bytes: Annotated[int, Field(ge=1024, le=64 * 1024 * 1024)] = 4 * 1024 * 1024
    topic_root: Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]+(/[A-Za-z0-9_-]+)*$")] = (
        "benchagent/v1"
    )
    password: SecretStr | None = Field(default=None, exclude=True)
    """Filled from ``password_file`` by the loader; not a key of the file."""

    @model_validator(mode="after")
    def _reconnect_bounds(self) -> MqttConfig:
        if self.reconnect_max_s < self.reconnect_min_s:
            raise ValueError("reconnect_max_s must be at least reconnect_min_s")
        if self.password_file is not None and self.username is None:
            raise ValueError("password_file needs username")
        return self


class StorageConfig(_Section):
    """Where the agent keeps its durable state, and how large the outbox may grow."""

    dir: Path
    outbox_max_bytes: Annotated[int, Field(ge=64 * 1024)] = 256 * 1024 * 1024
    outbox_max_events: Annotated[int, Field(ge=10)] = 1_000_000
    command_retention_s: Annotated[int, Field(ge=60)] = 7 * 24 * 3600
    """How long command ids and their replies are kept to answer duplicates."""
    min_free_mb: Annotated[int, Field(ge=0)] = 1024
    """Below this free space on the disk of ``dir`` the status carries a ``disk_low``
    alarm, before anything fails."""


class LogConfig(_Section):
    level: Literal["debug", "info", "warning", "error"] = "info"


class StatusConfig(_Section):
    interval_s: Annotated[float, Field(gt=0, le=3600)] = 60.0
    """How often the retained status (with the outbox backlog) is refreshed."""


class AgentConfig(_Section):
    shutdown_flush_s: Annotated[float, Field(ge=0, le=300)] = 5.0
    """On SIGTERM, how long to keep delivering the outbox backlog before disconnecting."""


DIAGNOSTICS_COMMANDS = ("agent.version", "camera.decode", "camera.snapshot", "config.check",
                        "mqtt.check", "outbox.stats", "printer.status", "printer.test",
                        "scale.read", "scale.tare", "scale.watch", "scale.zero",
                        "scanner.listen", "selftest")
"""The diagnostics commands (agent/diagnostics.py registers exactly these)."""


class DiagnosticsConfig(_Section):
    """``[diagnostics]``: the technician's commands (docs/diagnostics.md), through the local
    control socket and over MQTT."""

    socket: Path = Path("/run/bench-agent/control.sock")
    """The control socket the ``bench-agent`` CLI talks to (at most 100 bytes long)."""
    socket_group: str | None = None
    """A group allowed to use the socket (mode 0660); none: only the agent's user (0600)."""
    remote: bool = True
    """Run diagnostics commands that arrive over MQTT at all."""
    remote_allow: list[str] | None = None
    """The diagnostics commands allowed over MQTT; none: every one."""
    remote_actions: bool = True
    """Allow the diagnostics actions (test print, zero, tare) over MQTT."""
    remote_rate_per_min: Annotated[int, Field(ge=1, le=600)] = 30
    """Diagnostics commands over MQTT per minute (bursts up to the same number)."""

    @field_validator("remote_allow")
    @classmethod
    def _known_commands(cls, value: list[str] | None) -> list[str] | None:
        unknown = [name for name in value or () if name not in DIAGNOSTICS_COMMANDS]
        if unknown:
            raise ValueError(f"not diagnostics commands: {', '.join(unknown)}; they are: "
                             f"{', '.join(DIAGNOSTICS_COMMANDS)}")
        return value

    @field_validator("socket")
    @classmethod
    def _short_enough(cls, value: Path) -> Path:
        # sockaddr_un.sun_path holds 108 bytes with its NUL on Linux.
        if len(str(value).encode()) > 100:
            raise ValueError(f"{value} is longer than 100 bytes: a Unix socket path must be "
                             f"shorter (sockaddr_un)")
        return value


class PrintJobsConfig(_Section):
    """``[jobs.print]``: the print-job queue (docs/print-jobs.md)."""

    max_job_bytes: Annotated[int, Field(ge=1024, le=64 * 1024 * 1024)] = 4 * 1024 * 1024
    """Largest document (after base64 decoding) and largest rendered job, each."""
    max_pages: Annotated[int, Field(ge=1, le=500)] = 20
    """Most pages a PDF job may have (one label or receipt block per page)."""
    max_queue: Annotated[int, Field(ge=1, le=100_000)] = 500
    """Most unfinished jobs (accepted, queued, held, printing) at once; more are refused."""
    render_timeout_s: Annotated[float, Field(gt=0, le=600)] = 20.0
    """Longest time rendering one PNG or PDF may take (in the render worker process)."""
    send_timeout_s: Annotated[float, Field(gt=0, le=600)] = 30.0
    """Longest time the bytes of one job may take to reach the printer."""
    confirm_timeout_s: Annotated[float, Field(gt=0, le=3600)] = 60.0
    """A ZPL printer that has made no progress on a job for this long while ready (time in
    a fault does not count) leaves the job ``uncertain``."""
    confirm_poll_s: Annotated[float, Field(ge=0.05, le=10)] = 0.25
    """How often a ZPL printer is asked (``~HS``) while a job prints."""
    hold_poll_s: Annotated[float, Field(ge=0.1, le=60)] = 2.0
    """How often a printer holding jobs (paper out, head open...) is asked again."""
    group_timeout_s: Annotated[float, Field(gt=0, le=7 * 24 * 3600)] = 900.0
    """How long a group's later job waits for an earlier one to arrive before it fails
    (``group_failed``); waiting for one that arrived and waits to print has no limit."""
    uncertain_policy: Literal["ask", "reprint"] = "ask"
    """A job that may have reached the printer before the agent stopped: ``ask`` reports it
    ``uncertain`` and prints it again only on ``print.reprint``; ``reprint`` prints it
    again at once (the parcel may get two labels)."""
    keep_data_s: Annotated[int, Field(ge=0)] = 24 * 3600
    """How long a finished job's bytes are kept for ``print.reprint``."""
    retention_s: Annotated[int, Field(ge=60)] = 7 * 24 * 3600
    """How long a finished job's id and state are kept to answer a repeated job id."""


class OrdersConfig(_Section):
    """``[jobs.orders]``: the bench's order book (docs/orders.md)."""

    lookup_timeout_s: Annotated[float, Field(gt=0, le=120)] = 5.0
    """How long a scan of an order the bench does not have waits for the central system's
    ``order.answer`` before the packer is told ``lookup_timeout``."""
    retention_s: Annotated[int, Field(ge=3600)] = 30 * 24 * 3600
    """How long packed and cancelled orders are kept (found by waybill, refused if pushed
    again) after their last change."""


class PackJobConfig(_Section):
    """``[jobs.pack]``: the packing job (docs/pack-flow.md); ``[jobs.pack.flow]`` holds the
    flow's codes, tolerances, photo moments and timeouts."""

    enabled: bool = True
    scanner_role: str = "items"
    """Scanners with this role feed the packing flow (badges, orders, items, controls)."""
    scale: str | None = None
    """The ``[devices.NAME]`` of the parcel scale; none: the first scale configured."""
    camera_role: str = "packing"
    photo_dir: Path | None = None
    """Where evidence photos go; none: ``photos`` under ``storage.dir``."""
    photo_max_age_days: Annotated[float, Field(gt=0)] = 180.0
    photo_quota_mb: Annotated[float, Field(gt=0)] = 4096.0
    record_retention_days: Annotated[float, Field(gt=0)] = 3 * 365.0
    photo_min_free_mb: Annotated[float, Field(ge=0)] = 512.0
    """No photo is written when the photo disk has less free space than this: results
    (a few kB each) keep their room; the status carries a ``photos_refused`` alarm."""
    photo_wait_s: Annotated[float, Field(gt=0, le=60)] = 10.0
    """A parcel's report waits this long for photos still being taken (a photo of the
    closed box as its label is scanned); one not taken by then is recorded with its
    error, the picture is never linked to the record."""
    flow: PackConfig = PackConfig()


class JobsConfig(_Section):
    """The bench's jobs: print jobs, the order book and the packing job."""

    print: PrintJobsConfig = PrintJobsConfig()
    orders: OrdersConfig = OrdersConfig()
    pack: PackJobConfig = PackJobConfig()


class Config(_Section):
    """The whole validated config; ``source`` is the file it came from."""

    bench: BenchConfig
    mqtt: MqttConfig
    storage: StorageConfig
    log: LogConfig = LogConfig()
    status: StatusConfig = StatusConfig()
    agent: AgentConfig = AgentConfig()
    devices: dict[str, DeviceSettings] = {}
    jobs: JobsConfig = JobsConfig()
    diagnostics: DiagnosticsConfig = DiagnosticsConfig()
    source: Path = Field(default=Path("<memory>"), exclude=True)

    @field_validator("devices")
    @classmethod
    def _device_names(cls, devices: dict[str, DeviceSettings]) -> dict[str, DeviceSettings]:
        for name in devices:
            if not re.match(_NAME, name):
                raise ValueError(f"device name {name!r} must match {_NAME}")
        return devices

    @model_validator(mode="after")
    def _one_driver_per_port(self) -> Config:
        owners: dict[str, str] = {}
        for name, device in self.devices.items():
            if not device.enabled:
                continue
            resource = device.conn.resource
            if resource in owners:
                raise ValueError(f"devices.{name}.connection: {device.connection} is the port "
                                 f"of device {owners[resource]!r}; one driver owns a port")
            owners[resource] = name
        return self

    @property
    def client_id(self) -> str:
        return self.mqtt.client_id or f"benchagent-{self.bench.site}-{self.bench.id}"


def load_config(path: str | Path) -> Config:
    """Read, validate and resolve the config file at ``path``.

    Raises:
        ConfigError: naming the file, the key and what is allowed.
    """
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ConfigError(f"{path}: config file not found") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read config file: {exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    return parse_config(raw, source=path)


def parse_config(raw: dict[str, Any], *, source: Path) -> Config:
    """Validate an already-parsed TOML document; see :func:`load_config`."""
    mqtt_raw = raw.get("mqtt")
    if isinstance(mqtt_raw, dict) and "password" in mqtt_raw:
        raise ConfigError(
            f"{source}: mqtt.password: unknown key; keep the password in its own file "
            "and name that file with mqtt.password_file"
        )
    _resolve_paths(raw, source)
    try:
        config = Config.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, source)) from exc
    config = config.model_copy(update={"source": source})
    _check_files(config)
    if config.mqtt.password_file is not None:
        password = _read_secret(source, "mqtt.password_file", config.mqtt.password_file)
        mqtt = config.mqtt.model_copy(update={"password": SecretStr(password)})
        config = config.model_copy(update={"mqtt": mqtt})
    return config


_PATH_KEYS = {
    ("mqtt", "password_file"),
    ("mqtt", "tls", "ca_file"),
    ("mqtt", "tls", "cert_file"),
    ("mqtt", "tls", "key_file"),
    ("storage", "dir"),
    ("jobs", "pack", "photo_dir"),
    ("diagnostics", "socket"),
}


_CREDENTIAL_KEYS = {key for key in _PATH_KEYS if key[0] == "mqtt"}
"""The file keys that may name a systemd credential: ``"credential:NAME"``."""


def _resolve_paths(raw: dict[str, Any], source: Path) -> None:
    """Turn the path keys' strings into paths relative to the config file's folder, and
    ``credential:NAME`` into the file systemd hands over (``LoadCredential=NAME:...``)."""
    for key_path in _PATH_KEYS:
        node: Any = raw
        for key in key_path[:-1]:
            node = node.get(key) if isinstance(node, dict) else None
        if isinstance(node, dict) and isinstance(node.get(key_path[-1]), str):
            value = node[key_path[-1]]
            if value.startswith("credential:"):
                node[key_path[-1]] = _credential(value, key_path, source)
            else:
                node[key_path[-1]] = source.parent / Path(value).expanduser()


def _credential(value: str, key_path: tuple[str, ...], source: Path) -> Path:
    """``$CREDENTIALS_DIRECTORY/NAME``, which systemd fills from the unit's
    ``LoadCredential=NAME:FILE`` for the service's processes only."""
    key, name = ".".join(key_path), value.removeprefix("credential:")
    if key_path not in _CREDENTIAL_KEYS:
        raise ConfigError(f"{source}: {key}: {value!r}: only "
                          f"{', '.join(sorted('.'.join(k) for k in _CREDENTIAL_KEYS))} "
                          f"may name a credential")
    if not name or "/" in name or name in (".", ".."):
        raise ConfigError(f"{source}: {key}: {value!r}: write credential:NAME, NAME being "
                          f"the credential's file name")
    folder = os.environ.get("CREDENTIALS_DIRECTORY")
    if not folder:
        raise ConfigError(f"{source}: {key}: {value} needs $CREDENTIALS_DIRECTORY, which "
                          f"systemd sets for a unit with LoadCredential={name}:FILE; it is "
                          f"not set (outside the service, as root while it runs: "
                          f"CREDENTIALS_DIRECTORY=/run/credentials/bench-agent.service)")
    file = Path(folder) / name
    if not file.is_file():
        raise ConfigError(f"{source}: {key}: credential {name!r} is not in "
                          f"$CREDENTIALS_DIRECTORY ({folder}): the unit needs "
                          f"LoadCredential={name}:FILE")
    return file


def _check_files(config: Config) -> None:
    """The TLS files exist and load: a bad PEM is a config error, not a crash later."""
    tls = config.mqtt.tls
    for key, file in (
        ("mqtt.tls.ca_file", tls.ca_file),
        ("mqtt.tls.cert_file", tls.cert_file),
        ("mqtt.tls.key_file", tls.key_file),
    ):
        if file is not None and not file.is_file():
            raise ConfigError(f"{config.source}: {key}: file {file} does not exist")
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=None)
    try:
        context.load_verify_locations(cafile=str(tls.ca_file))
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(f"{config.source}: mqtt.tls.ca_file: {tls.ca_file} is not a "
                          f"readable PEM CA certificate: {exc}") from exc
    if tls.cert_file is not None and tls.key_file is not None:
        try:
            context.load_cert_chain(str(tls.cert_file), str(tls.key_file), password=lambda: "")
        except (ssl.SSLError, OSError) as exc:
            raise ConfigError(f"{config.source}: mqtt.tls.cert_file/key_file: cannot load "
                              f"the client certificate and its unencrypted key: {exc}") from exc


def _read_secret(source: Path, key: str, file: Path) -> str:
    try:
        return file.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(f"{source}: {key}: cannot read {file}: {exc.strerror}") from exc


def _describe(exc: ValidationError, source: Path) -> str:
    """One line per problem: ``file: dotted.key: what is wrong; what is allowed``."""
    lines = []
    for error in exc.errors():
        loc = _strip_kind_tags(error["loc"])
        key = ".".join(loc) or "(top level)"
        kind = error["type"]
        if kind == "extra_forbidden":
            allowed = ", ".join(_allowed_keys(error["loc"][:-1])) or "(no keys yet)"
            lines.append(f"{source}: {key}: unknown key; allowed here: {allowed}")
        elif kind == "missing":
            lines.append(f"{source}: {key}: required key is missing")
        elif kind in ("union_tag_invalid", "union_tag_not_found"):
            got = error.get("input", {}).get("kind") if isinstance(error.get("input"), dict) \
                else None
            lines.append(f"{source}: {key}.kind: must be one of {', '.join(DEVICE_KINDS)} "
                         f"(got {got!r})")
        elif kind == "value_error" and not loc:  # a rule across sections names its own key
            lines.append(f"{source}: {error['msg'].removeprefix('Value error, ')}")
        else:
            message = error["msg"].removeprefix("Value error, ")
            if kind == "value_error":  # a rule between keys: the input is the whole section
                lines.append(f"{source}: {key}: {message}")
            else:
                lines.append(f"{source}: {key}: {message} (got {error.get('input')!r})")
    return "\n".join(lines)


def _strip_kind_tags(loc: tuple[int | str, ...]) -> list[str]:
    """Drop pydantic's union tag: ``devices.s1.scale.protocol`` -> ``devices.s1.protocol``."""
    parts = [str(part) for part in loc]
    if len(parts) >= 3 and parts[0] == "devices" and parts[2] in DEVICE_KINDS:
        del parts[2]
    return parts


def _allowed_keys(loc: tuple[int | str, ...]) -> list[str]:
    """The field names of the section at ``loc``, for 'unknown key' messages."""
    if len(loc) >= 3 and loc[0] == "devices" and str(loc[2]) in SETTINGS_BY_KIND:
        names = list(SETTINGS_BY_KIND[str(loc[2])].model_fields)
        return ["kind", *(name for name in names if name != "kind")]
    model: Any = Config
    for part in loc:
        field = model.model_fields.get(str(part)) if isinstance(part, str) else None
        if field is None:
            return []
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            model = annotation
        else:
            return []
    return [name for name, f in model.model_fields.items() if not f.exclude]


def summary(config: Config) -> dict[str, str]:
    """What a technician checks first, without secrets: bench, broker, storage, devices."""
    return {
        "bench": f"{config.bench.site}/{config.bench.id}",
        "broker": f"{config.mqtt.host}:{config.mqtt.port} (TLS"
                  f"{', client certificate' if config.mqtt.tls.cert_file else ''})",
        "storage": str(config.storage.dir),
        "devices": ", ".join(f"{n} ({d.kind})" for n, d in config.devices.items()) or "none",
    }
