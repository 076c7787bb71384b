"""The package's exceptions. Each carries a stable ``code`` that reaches logs and replies.

Third-party errors (paho, sqlite3, ssl, pydantic) are translated at the edge with
``raise ... from exc`` so that callers only ever handle these.
"""

from __future__ import annotations


class AgentError(Exception):
    """Base of every error the agent raises on purpose."""

    code = "agent_error"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code

    @property
    def message(self) -> str:
        return str(self)


class ConfigError(AgentError):
    """The config file is missing, unreadable or invalid. The message names the file and key."""

    code = "config_invalid"


class StorageError(AgentError):
    """The local store cannot be opened or written."""

    code = "storage_error"


class OutboxFull(StorageError):
    """An event that must never be dropped could not be stored because the outbox is full."""

    code = "outbox_full"


class CommandError(AgentError):
    """A command from the central system was refused; ``code`` says why."""

    code = "command_invalid"


class LinkError(AgentError):
    """The MQTT link failed in a way the caller must know about."""

    code = "link_error"


class DeviceError(AgentError):
    """A device cannot be reached or reports a fault; ``code`` is one of ``FAULT_CODES``.

    Raised by transports and drivers; the device supervisor turns it into the device's
    ``faulted`` or ``disconnected`` state and never lets it stop the agent.
    """

    code = "device_error"


class ProtocolError(DeviceError):
    """Bytes from a device that do not parse. The message says what was expected and got."""

    code = "protocol_error"


FAULT_CODES: dict[str, str] = {
    "not_found": "the device or its port is not there (unplugged, wrong path, VID:PID absent)",
    "permission_denied": "the agent's user may not open the port (udev rule or group missing)",
    "busy": "another process holds the port",
    "refused": "the network device refused the connection (switched off, wrong port)",
    "disconnected": "the device went away while in use",
    "timeout": "the device did not answer in time",
    "protocol_error": "the device sent bytes that do not parse",
    "device_error": "the device reported an error it does not explain",
    "offline": "the printer says it is offline",
    "paper_out": "the printer is out of paper or labels",
    "paper_near_end": "the printer's paper roll is nearly used up (a warning: it still prints)",
    "paper_jam": "paper or labels are jammed in the printer",
    "head_open": "the print head or cover is open",
    "ribbon_out": "the ribbon is out",
    "paused": "the printer is paused",
    "status_unknown": "the printer did not answer its status request",
    "cutter_error": "the printer's cutter failed",
    "overheated": "the print head is too hot",
    "command_failed": "the device refused a command (zero, tare) in its current state",
    "unsupported": "the device or its protocol has no such command",
}
"""Stable fault codes (``docs/devices.md`` lists them); new codes only get added."""
