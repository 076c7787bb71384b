"""The control socket: the technician's CLI talks to the running daemon through it.

A Unix stream socket at ``diagnostics.socket`` (docs/diagnostics.md#the-control-socket).
Requests and answers are JSON objects, one per ``\\n``-terminated line: a request is
``{"command": NAME, "args": {...}}``; the daemon answers with zero or more
``{"progress": ITEM}`` lines, then one ``{"ok": true, "result": ...}`` or
``{"ok": false, "error": {"code", "message"}}`` line. Several requests may follow each
other on one connection; each runs through :meth:`CommandRegistry.call_local`, so the
socket runs read-only and diagnostics commands only (``not_local`` for the rest).

Limits, so that no client can exhaust the daemon or lock the technicians out: at most
``MAX_CONNECTIONS`` connections (one more is answered ``busy``); a request line of at most
``MAX_REQUEST_BYTES``, nested at most ``MAX_REQUEST_DEPTH`` deep; at most
``_QUEUED_REQUESTS`` requests read ahead while one runs (then the daemon stops reading, the
kernel's buffer fills and the client's writes block); a connection without a request for
``IDLE_TIMEOUT_S`` is closed (not while a command runs for it); a client that takes no
answer for ``DRAIN_TIMEOUT_S``, or lets ``MAX_UNSENT_BYTES`` of streamed lines pile up, is
dropped.

The socket file is created with mode 0600, or 0660 and the group ``socket_group``; its
permissions are set before ``listen()``, so nobody can connect in between. A socket file
nobody listens on (left by a daemon that was killed) is replaced; one a live process
listens on is left alone and reported. When the socket cannot be made the daemon logs why
and runs on without it: the bench's work does not depend on the technician's CLI.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import select
import socket
import struct
import time
from typing import Any

from agent.commands import CommandRegistry, read_json
from agent.config import DiagnosticsConfig
from agent.control_socket import MAX_CONNECTIONS, ControlError, bind_socket
from agent.errors import AgentError, CommandError
from agent.tasks import task_name

log = logging.getLogger("agent.control")

MAX_REQUEST_BYTES = 64 * 1024
"""Longest request line (without its ``\\n``); a longer one gets ``too_large``."""
MAX_REQUEST_DEPTH = 32
"""Deepest nesting of arrays and objects in a request (no command's args nest deeper)."""
IDLE_TIMEOUT_S = 60.0
"""A connection with no request for this long, and no command running, is closed."""
DRAIN_TIMEOUT_S = 10.0
"""Longest wait for a client to take an answer; one that does not read is dropped."""
MAX_UNSENT_BYTES = 1 << 20
"""Streamed progress lines a client may leave untaken before it is dropped."""
_QUEUED_REQUESTS = 2
"""Requests read ahead of the one running; then reading waits (memory stays bounded)."""
_HANGUP_POLL_S = 0.2
"""While a command runs, how often to look whether the client closed the connection."""
_CLOSE_S = 1.0
_TOO_LARGE = object()
_EOF = object()


def encode(message: dict[str, Any]) -> bytes:
    """One protocol line: compact UTF-8 JSON and ``\\n``."""
    return json.dumps(message, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"


def error_line(code: str, message: str) -> bytes:
    return encode({"ok": False, "error": {"code": code, "message": message}})


def _peer(sock: Any) -> str:
    """``uid U pid P`` of the connected process, from SO_PEERCRED."""
    try:
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except (OSError, AttributeError):
        return "peer unknown"
    pid, uid, _gid = struct.unpack("3i", creds)
    return f"uid {uid} pid {pid}"


def _hung_up(sock: Any) -> bool:
    """Whether the peer closed the connection both ways (POLLHUP), not only its sending
    side (``shutdown(SHUT_WR)`` after its request, as ``socat`` does)."""
    try:
        poller = select.poll()
        poller.register(sock.fileno(), select.POLLIN)
        return any(events & (select.POLLHUP | select.POLLERR | select.POLLNVAL)
                   for _fd, events in poller.poll(0))
    except (OSError, ValueError):
        return True


def parse_request(line: bytes) -> tuple[str, dict[str, Any]]:
    """``(command, args)`` of a request line.

    Raises:
        CommandError: ``malformed_request``, saying what a request looks like.
    """
    shape = 'a request is one JSON object per line: {"command": NAME, "args": {...}}'
    try:
        body = read_json(line)  # NaN, 1e999, lone surrogates, nesting past Python's stack
    except CommandError as exc:
        raise CommandError(f"{exc.message}; {shape}", code="malformed_request") from exc
    if _nesting(body) > MAX_REQUEST_DEPTH:  # the checks after would recurse that deep
        raise CommandError(f"arrays or objects nested deeper than {MAX_REQUEST_DEPTH}; "
                           f"{shape}", code="malformed_request")
    if not isinstance(body, dict):
        raise CommandError(f"not a JSON object; {shape}", code="malformed_request")
    unknown = sorted(set(body) - {"command", "args"})
    if unknown:
        raise CommandError(f"unknown keys {', '.join(unknown)}; {shape}",
                           code="malformed_request")
    name, args = body.get("command"), body.get("args", {})
    if not isinstance(name, str) or not name:
        raise CommandError(f"'command' must be a command name; {shape}",
                           code="malformed_request")
    if not isinstance(args, dict):
        raise CommandError(f"'args' must be an object; {shape}", code="malformed_request")
    return name, args


def _nesting(body: Any) -> int:
    """How deep arrays and objects nest in ``body`` (without recursing)."""
    deepest, stack = 0, [(body, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict | list):
            deepest = max(deepest, depth)
            items = value.values() if isinstance(value, dict) else value
            stack += [(item, depth + 1) for item in items]
    return deepest


# ---------------------------------------------------------------- the server
class ControlServer:
    """The daemon's ``control`` service: serves the control socket until cancelled.

    Args:
        settings: ``[diagnostics]`` (the socket's path and group).
        registry: the commands; each request runs through ``call_local``.
        max_connections, idle_timeout_s, drain_timeout_s: the limits (module constants).
    """

    name = "control"

    def __init__(self, settings: DiagnosticsConfig, registry: CommandRegistry, *,
                 max_connections: int = MAX_CONNECTIONS,
                 idle_timeout_s: float = IDLE_TIMEOUT_S,
                 drain_timeout_s: float = DRAIN_TIMEOUT_S) -> None:
        self.path = settings.socket
        self._group = settings.socket_group
        self._registry = registry
        self._max_connections = max_connections
        self._idle_timeout_s = idle_timeout_s
        self._drain_timeout_s = drain_timeout_s
        self._connections: set[asyncio.Task[Any]] = set()
        self.state = "starting"
        self.error: str | None = None
        self.requests = 0

    def status(self) -> dict[str, Any]:
        """The status message's ``control`` part."""
        return {"socket": str(self.path), "state": self.state, "error": self.error,
                "connections": len(self._connections), "requests": self.requests}

    async def run(self, _daemon: object = None) -> None:
        """Listen until cancelled; then close every connection and remove the socket."""
        try:
            sock = await asyncio.to_thread(bind_socket, self.path, self._group)
        except ControlError as exc:
            self.state, self.error = "failed", exc.message
            log.error("no control socket, the bench-agent CLI cannot reach this daemon (the "
                      "bench works on): %s", exc.message)
            return
        inode = os.stat(self.path).st_ino
        server = await asyncio.start_unix_server(self._connected, sock=sock,
                                                 limit=MAX_REQUEST_BYTES)
        self.state = "listening"
        log.info("control socket %s listening (mode %s)", self.path,
                 "0660, group " + self._group if self._group else "0600")
        try:
            await asyncio.Event().wait()
        finally:
            server.close()
            for task in list(self._connections):
                task.cancel()
            await asyncio.gather(*self._connections, return_exceptions=True)
            with contextlib.suppress(OSError):
                if os.stat(self.path).st_ino == inode:  # still ours, not a newer daemon's
                    self.path.unlink()
            self.state = "stopped"

    async def _connected(self, reader: asyncio.StreamReader,
                         writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        link = _Link(reader, writer, self._drain_timeout_s)
        try:
            await self._serve(link)
        except asyncio.CancelledError:
            # The daemon is stopping. Not raised on: asyncio's callback for this task would
            # log every connection open at SIGTERM as an error (Python 3.11).
            log.info("%s: connection closed, the daemon is stopping", link.peer)
            writer.transport.abort()
        finally:
            self._connections.discard(task)

    async def _serve(self, link: _Link) -> None:
        try:
            if len(self._connections) > self._max_connections:
                log.warning("%s refused: %d connections already", link.peer,
                            self._max_connections)
                await link.send(error_line(
                    "busy", f"too many technicians connected: the daemon serves "
                            f"{self._max_connections} control connections at once; try "
                            f"again in a minute"))
            else:
                await self._session(link)
        except _NotReading:
            log.warning("%s dropped: it took no answer for %g s (or left %d bytes "
                        "untaken)", link.peer, self._drain_timeout_s, MAX_UNSENT_BYTES)
            link.writer.transport.abort()
            return
        except ConnectionError:
            log.info("%s went away", link.peer)
        except Exception:
            log.exception("connection of %s failed", link.peer)
        link.writer.close()
        try:
            await asyncio.wait_for(link.writer.wait_closed(), _CLOSE_S)
        except Exception:  # its last answer untaken, or the peer gone: no matter
            link.writer.transport.abort()

    async def _session(self, link: _Link) -> None:
        """Requests one after the other; a full close of the peer cancels the running one."""
        lines: asyncio.Queue[Any] = asyncio.Queue(maxsize=_QUEUED_REQUESTS)
        reading = asyncio.create_task(_read_lines(link, lines),
                                      name=task_name("control.read"))
        try:
            while True:
                try:
                    line = await asyncio.wait_for(lines.get(), self._idle_timeout_s)
                except TimeoutError:
                    log.info("%s: no request for %g s, closing", link.peer,
                             self._idle_timeout_s)
                    await link.send(error_line(
                        "idle_timeout", f"no request for {self._idle_timeout_s:g} s; "
                                        f"closing (connect again)"))
                    return
                if line is _EOF:
                    return
                if line is _TOO_LARGE:
                    log.info("%s: request over %d bytes, closing", link.peer,
                             MAX_REQUEST_BYTES)
                    await link.send(error_line("too_large", f"a request is at most "
                                               f"{MAX_REQUEST_BYTES} bytes; closing"))
                    return
                await self._request(line, link)
                if link.gone.is_set():
                    return
        finally:
            reading.cancel()

    async def _request(self, line: bytes, link: _Link) -> None:
        started = time.monotonic()
        self.requests += 1
        try:
            name, args = parse_request(line)
        except CommandError as exc:
            log.info("%s: malformed request: %s", link.peer, exc.message)
            await link.send(error_line(exc.code, exc.message))
            return
        run = asyncio.create_task(self._registry.call_local(name, args,
                                                            progress=link.progress),
                                  name=task_name(f"control.{name}"))
        hangup = asyncio.create_task(link.watch(), name=task_name("control.hangup"))
        try:
            await asyncio.wait({run, hangup}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            hangup.cancel()
            if not run.done():
                run.cancel()
                await asyncio.gather(run, return_exceptions=True)
                log.info("%s: %s stopped: %s", link.peer, name,
                         "the client closed the connection" if link.gone.is_set()
                         else "the daemon is stopping")
        if link.not_reading:
            raise _NotReading
        if run.cancelled():
            return
        answer, outcome = _answer(run, name, link.peer)
        elapsed_ms = (time.monotonic() - started) * 1000
        log.info("%s: %s -> %s (%.0f ms)", link.peer, name, outcome, elapsed_ms)
        await link.send(answer)


class _NotReading(Exception):
    """The client takes no answers: it is dropped."""


class _Link:
    """One client connection: its streams, who it is, and whether it is gone."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 drain_timeout_s: float) -> None:
        self.reader, self.writer = reader, writer
        self.sock = writer.get_extra_info("socket")
        self.peer = _peer(self.sock)
        self.gone = asyncio.Event()
        """The peer closed the connection entirely, or takes no answers."""
        self.not_reading = False
        self._drain_timeout_s = drain_timeout_s

    async def send(self, line: bytes) -> None:
        """Write ``line`` and wait (bounded) until the client has taken it.

        Raises:
            _NotReading: the client took nothing for ``drain_timeout_s``.
        """
        self.writer.write(line)
        try:
            await asyncio.wait_for(self.writer.drain(), self._drain_timeout_s)
        except TimeoutError:
            self.not_reading = True
            raise _NotReading from None

    def progress(self, item: dict[str, Any]) -> None:
        """A streamed item of the running command (written without waiting)."""
        if self.not_reading or self.writer.is_closing():
            return
        self.writer.write(encode({"progress": item}))
        if self.writer.transport.get_write_buffer_size() > MAX_UNSENT_BYTES:
            self.not_reading = True
            self.gone.set()

    async def watch(self) -> None:
        """Returns once the peer closed the connection entirely (not only its sending
        side, as ``socat`` does after its request) or takes no answers."""
        while not self.gone.is_set():
            if _hung_up(self.sock):
                self.gone.set()
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.gone.wait(), _HANGUP_POLL_S)


def _answer(run: asyncio.Task[dict[str, Any]], name: str, peer: str) -> tuple[bytes, str]:
    """The final line of a finished command and the outcome to log."""
    try:
        return encode({"ok": True, "result": run.result()}), "ok"
    except AgentError as exc:
        return error_line(exc.code, exc.message), f"{exc.code}: {exc.message}"
    except Exception as exc:
        log.exception("%s: %s failed", peer, name)
        return error_line("internal_error", f"{type(exc).__name__}: {exc}"), "internal_error"


async def _read_lines(link: _Link, lines: asyncio.Queue[Any]) -> None:
    """Queue the request lines as they come (``_TOO_LARGE`` ends them, ``_EOF`` too).

    The queue is short: while it is full this waits, the stream's buffer fills, asyncio
    stops reading the socket and the client's writes block in the kernel.
    """
    while True:
        try:
            line = await link.reader.readuntil(b"\n")
        except asyncio.LimitOverrunError:
            await lines.put(_TOO_LARGE)
            return
        except asyncio.IncompleteReadError as exc:
            if exc.partial.strip():  # a last request without its newline
                await lines.put(exc.partial)
            await lines.put(_EOF)
            return
        except ConnectionError:
            link.gone.set()
            await lines.put(_EOF)
            return
        await lines.put(line)
