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
