"""The CLI's side of the control socket: a small blocking client.

It sends ``{"command", "args"}`` lines and reads the daemon's progress lines and final
answer (docs/diagnostics.md#the-control-socket). It imports nothing of the daemon, so the
CLI starts fast.
"""

from __future__ import annotations

import contextlib
import json
import socket
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

from agent.errors import AgentError


class DaemonNotRunning(AgentError):
    """Nobody answers on the control socket: no socket file, or nobody listening."""

    code = "daemon_not_running"


class DaemonError(AgentError):
    """The daemon refused or failed the command; ``code`` and ``message`` are its own."""

    code = "daemon_error"


class ControlClient:
    """Calls commands of the running daemon; one connection for all calls until
    :meth:`close` (or the end of a ``with`` block).

    Args:
        path: the control socket (``diagnostics.socket``).
        timeout_s: longest wait for any line of an answer; none waits as long as the
            command runs (``scanner.listen`` may take its whole ``timeout_s``).
    """

    def __init__(self, path: str | Path, *, timeout_s: float | None = None) -> None:
        self.path = Path(path)
        self._timeout_s = timeout_s
        self._sock: socket.socket | None = None
        self._lines: Any = None

    def __enter__(self) -> ControlClient:
        return self

    def __exit__(self, _type: type[BaseException] | None, _exc: BaseException | None,
                 _tb: TracebackType | None) -> None:
        self.close()

    def connect(self) -> None:
        """Connect now (``call`` connects by itself).

        Raises:
            DaemonNotRunning: no socket file, or nobody listening on it.
            DaemonError: ``permission_denied`` or another reason not to reach it.
        """
        if self._sock is not None:
            return
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self._timeout_s)
        try:
            sock.connect(str(self.path))
        except TimeoutError as exc:  # its backlog full: it does not accept connections
            sock.close()
            raise DaemonError(f"the daemon did not take the connection on {self.path} "
                              f"within {self._timeout_s:g} s (it may hang; see its log)",
                              code="timeout") from exc
        except (FileNotFoundError, NotADirectoryError) as exc:
            sock.close()
            raise DaemonNotRunning(f"the bench-agent daemon is not running: no control "
                                   f"socket at {self.path}") from exc
        except ConnectionRefusedError as exc:
            sock.close()
            raise DaemonNotRunning(f"the bench-agent daemon is not running: nobody listens on "
                                   f"{self.path} (left by a daemon that stopped)") from exc
        except PermissionError as exc:
            sock.close()
            raise DaemonError(f"this user may not use the control socket {self.path}: run as "
                              f"root or as a member of diagnostics.socket_group",
                              code="permission_denied") from exc
        except OSError as exc:
            sock.close()
            raise DaemonError(f"cannot connect to the control socket {self.path}: {exc}",
                              code="connection_failed") from exc
        self._sock = sock
        self._lines = sock.makefile("rb")

    def close(self) -> None:
        if self._lines is not None:
            self._lines.close()
            self._lines = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def call(self, command: str, args: dict[str, Any] | None = None, *,
             on_progress: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
        """Run ``command`` in the daemon and return its result.

        Raises:
            DaemonNotRunning: see :meth:`connect`.
            DaemonError: the daemon's refusal or failure, with its code and message;
                ``timeout`` when it sent nothing for ``timeout_s`` (it hangs, it is not
                stopped), ``bad_answer`` for a line that is not the protocol's,
                ``connection_lost`` when the connection ended before the answer.
        """
        self.connect()
        assert self._sock is not None
        request = json.dumps({"command": command, "args": args or {}}).encode() + b"\n"
        try:
            # Closed at once: its reason (busy) may still wait to be read.
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                self._sock.sendall(request)
            while True:
                answer = self._next_line(command)
                if "progress" in answer:
                    if on_progress is not None:
                        on_progress(answer["progress"])
                    continue
                if answer.get("ok") is True:
                    result: dict[str, Any] = answer.get("result") or {}
                    return result
                error = answer.get("error")
                error = error if isinstance(error, dict) else {}
                raise DaemonError(str(error.get("message", answer)),
                                  code=str(error.get("code", "daemon_error")))
        except TimeoutError as exc:
            self.close()
            raise DaemonError(f"the daemon did not answer {command} within "
                              f"{self._timeout_s:g} s: it runs but may hang (see its log: "
                              f"journalctl -u bench-agent)", code="timeout") from exc
        except OSError as exc:
            self.close()
            raise DaemonError(f"the control connection to {self.path} failed: {exc}",
                              code="connection_lost") from exc

    def _next_line(self, command: str) -> dict[str, Any]:
        """The daemon's next line as a JSON object."""
        line = self._lines.readline()
        if not line:
            self.close()
            raise DaemonError(f"the daemon closed the connection before answering {command} "
                              f"(it may be stopping)", code="connection_lost")
        try:
            answer = json.loads(line)
        except ValueError:
            answer = None
        if not isinstance(answer, dict):
            self.close()
            raise DaemonError(f"the daemon's answer to {command} is not a JSON object line: "
                              f"{line[:200]!r}", code="bad_answer")
        return answer
