"""The command channel: commands from the central system, checked, run once, answered.

A command arrives on ``{prefix}/cmd/{name}`` as a JSON object (``schemas/command.json``).
Each is, in order: size-checked, parsed, validated, looked up by id (a repeated id runs
nothing and gets its stored reply again), checked for expiry (MQTT 5 Message Expiry and
``expires_at``), recorded durably, acknowledged to the broker, run, and answered. The
reply travels through the outbox to the MQTT 5 Response Topic (with the request's
Correlation Data) or the JSON ``reply_to``, either of which must lie under the bench's
``reply`` topic; without either it goes to ``{prefix}/reply``.

Commands recorded but not finished when the agent stopped are run at the next start.

Diagnostics commands (``diagnostic=True``) also answer the local control socket through
:meth:`CommandChannel.call_local`: one implementation for the technician's CLI and for
the central system. Over MQTT they obey ``[diagnostics]``: on or off, an allowlist,
actions on or off, a rate limit. Read-only commands of any kind answer locally too.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import re
import sqlite3
import time
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import datetime
from importlib import resources
from typing import Any

import jsonschema

from agent.clock import ClockWatch
from agent.config import DiagnosticsConfig
from agent.errors import AgentError, CommandError, StorageError
from agent.mqtt import Inbound
from agent.outbox import Outbox, Priority, iso_time
from agent.store import Store
from agent.tasks import spawn
from agent.topics import Topics

log = logging.getLogger("agent.commands")

Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]

ENVELOPE_SCHEMA: dict[str, Any] = json.loads(
    resources.files("agent.schemas").joinpath("command.json").read_text()
)
_NO_ARGS: dict[str, Any] = {"type": "object", "additionalProperties": False}
_PRUNE_EVERY_S = 3600.0
"""How often command ids older than ``storage.command_retention_s`` are forgotten."""
_RETRY_INTAKE_S = 5.0
"""A command the store could not take (a full disk) is taken again after this."""
_NOT_STORED = ("too_large", "malformed_json", "invalid_command", "rate_limited")
"""Refusals not remembered under the command id: the same id may be sent again."""

_progress: ContextVar[Callable[[dict[str, Any]], None] | None] = ContextVar(
    "command_progress", default=None)


_current_id: ContextVar[str | None] = ContextVar("command_id", default=None)


def current_command_id() -> str | None:
    """The id of the MQTT command being run (``None`` for a local call): a handler can
    derive ids from it so a command run again after a restart does the same thing once."""
    return _current_id.get()


def report_progress(item: dict[str, Any]) -> bool:
    """Stream ``item`` (a reading, a scan) to a local caller watching the running command.

    Returns whether anyone watches: over MQTT nobody does and the command's result must
    carry everything.
    """
    emit = _progress.get()
    if emit is None:
        return False
    emit(item)
    return True


@dataclass(frozen=True)
class Command:
    """A registered command: ``action`` commands change something (print, tare);
    ``diagnostic`` ones are the technician's (``[diagnostics]`` governs them over MQTT)."""

    name: str
    handler: Handler
    args_schema: dict[str, Any]
    action: bool
    diagnostic: bool = False
    local: bool = False
    """Runnable through the control socket (the technician's CLI): the diagnostics and
    the read-only commands registered with ``local=True``, nothing else."""


class _RateLimit:
    """A token bucket: ``per_min`` commands a minute, bursts of as many."""

    def __init__(self, per_min: int) -> None:
        self.per_min = per_min
        self.tokens = float(per_min)
        self.at = time.monotonic()

    def take(self) -> float:
        """0 when a command may run now, else the seconds until it may."""
        now = time.monotonic()
        self.tokens = min(self.per_min, self.tokens + (now - self.at) * self.per_min / 60)
        self.at = now
        if self.tokens >= 1:
            self.tokens -= 1
            return 0.0
        return (1 - self.tokens) * 60 / self.per_min


@dataclass
class _Request:
    name: str
    command_id: str | None
    received_at: float
    reply_topic: str
    correlation: bytes | None
    args: dict[str, Any]
    expires_at: float | None = None


def _validator(schema: dict[str, Any]) -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(schema)


def _first_error(validator: jsonschema.Draft202012Validator, instance: Any) -> str | None:
    error = jsonschema.exceptions.best_match(validator.iter_errors(instance))
    if error is None:
        return None
    where = "/".join(str(p) for p in error.absolute_path) or "(top level)"
    choices = error.validator_value if error.validator == "oneOf" else None
    if choices and all(isinstance(c, dict) and set(c) == {"required"} for c in choices):
        # "{...} is not valid under any of the given schemas" would not say which keys.
        keys = " or ".join(key for choice in choices for key in choice["required"])
        return f"{where}: give exactly one of {keys}"
    return f"{where}: {error.message}"


class CommandRegistry:
    """Commands by name, and running one for a local caller (the control socket, or the
    CLI's direct hardware checks when the daemon is not running)."""

    def __init__(self) -> None:
        self._commands: dict[str, Command] = {}

    def register(self, name: str, handler: Handler, *, args_schema: dict[str, Any] | None = None,
                 action: bool = False, diagnostic: bool = False,
                 local: bool | None = None) -> None:
        """Make ``name`` runnable; ``args_schema`` is the JSON Schema of its ``args``.
        ``local`` (default: ``diagnostic``) also offers it on the control socket."""
        self._commands[name] = Command(name, handler, args_schema or _NO_ARGS, action,
                                       diagnostic, diagnostic if local is None else local)

    @property
    def names(self) -> list[str]:
        return sorted(self._commands)

    def get(self, name: str) -> Command | None:
        return self._commands.get(name)

    async def call_local(self, name: str, args: dict[str, Any], *,
                         progress: Callable[[dict[str, Any]], None] | None = None
                         ) -> dict[str, Any]:
        """Run a command for the control socket: checked, run, not recorded (an
        interactive call is not repeated); ``progress`` receives streamed items.

        Raises:
            CommandError: ``unknown_command``, ``not_local`` or ``invalid_args``.
            AgentError: the command's own errors.
        """
        command = self._commands.get(name)
        if command is None:
            raise CommandError(f"unknown command {name!r}; the control socket runs: "
                               f"{', '.join(self.local_names)}", code="unknown_command")
        if not command.local:
            raise CommandError(f"{name} is for the central system and is only taken over "
                               f"MQTT; the control socket runs: "
                               f"{', '.join(self.local_names)}", code="not_local")
        problem = _first_error(_validator(command.args_schema), args)
        if problem is not None:
            raise CommandError(f"args of {name}: {problem}", code="invalid_args")
        token = _progress.set(progress)
        try:
            return await command.handler(args)
        finally:
            _progress.reset(token)

    @property
    def local_names(self) -> list[str]:
        return sorted(n for n, c in self._commands.items() if c.local)


class CommandChannel(CommandRegistry):
    """Validates, deduplicates, records, runs and answers commands."""

    def __init__(self, store: Store, outbox: Outbox, topics: Topics, *, max_bytes: int,
                 retention_s: int, ack: Callable[[Inbound], None],
                 policy: DiagnosticsConfig | None = None,
                 clock: ClockWatch | None = None) -> None:
        super().__init__()
        self._clock = clock
        self._store = store
        self.policy = policy or DiagnosticsConfig()
        self._rate = _RateLimit(self.policy.remote_rate_per_min)
        self._outbox = outbox
        self._topics = topics
        self._max_bytes = max_bytes
        self._retention_s = retention_s
        self._ack = ack
        self._envelope = _validator(ENVELOPE_SCHEMA)
        self._queue: asyncio.Queue[Inbound] = asyncio.Queue()
        self._running: set[asyncio.Task[None]] = set()
        self._duplicates: dict[str, list[_Request]] = {}  # delivered again while running
        self._accepting = True
        self._pruned_at = -_PRUNE_EVERY_S  # prune with the first command

    def submit(self, message: Inbound) -> None:
        """Loop thread: a message arrived on a command topic."""
        if self._accepting:
            self._queue.put_nowait(message)
        # When stopping, leave it unacknowledged: the broker delivers it again next time.

    async def run(self) -> None:
        """Handle messages one at a time (record order = arrival order); run them as tasks."""
        await self._resume_unfinished()
        while True:
            message = await self._queue.get()
            if not self._accepting:
                continue  # unacknowledged: the broker delivers it again next time
            if time.monotonic() - self._pruned_at > _PRUNE_EVERY_S:
                await self._prune()
            try:
                await self._receive(message)
            except StorageError as exc:  # a full outbox or a full disk
                log.error("command on %s not answered yet: %s; trying again in %.0f s",
                          message.topic, exc, _RETRY_INTAKE_S)
                spawn(self._intake_later(message), name="commands.retry")
            except Exception:
                log.exception("command on %s failed unexpectedly", message.topic)

    async def _intake_later(self, message: Inbound) -> None:
        """Take an unanswered command again once the store may have room (it stays
        unacknowledged meanwhile: after a reconnect the broker delivers it again too,
        and the command id makes the two one)."""
        await asyncio.sleep(_RETRY_INTAKE_S)
        if self._accepting:
            self._queue.put_nowait(message)

    async def stop(self, timeout_s: float) -> None:
        """Stop taking commands; give those running ``timeout_s`` to finish."""
        self._accepting = False
        if self._running:
            await asyncio.wait(self._running, timeout=timeout_s)

    # ------------------------------------------------------------ intake
    async def _receive(self, message: Inbound) -> None:
        name = self._topics.command_name(message.topic) or "?"
        request = _Request(name, None, message.received_at, self._topics.reply,
                           message.correlation, {})
        response_ok = message.response_topic is None or self._topics.is_reply_topic(
            message.response_topic)
        if message.response_topic is not None and response_ok:
            request.reply_topic = message.response_topic
        try:
            self._parse(message, request)
            if not response_ok:
                raise CommandError(f"Response Topic {message.response_topic!r} is outside "
                                   f"{self._topics.reply}/#", code="invalid_reply_topic")
        except CommandError as exc:
            await self._refuse(message, request, exc)
            return
        if request.command_id is not None:
            known, stored = await self._store.run(_lookup, request.command_id)
            if known:
                await self._answer_duplicate(message, request, stored)
                return
        try:
            command = self._check(request)
        except CommandError as exc:
            await self._refuse(message, request, exc)
            return
        assert request.command_id is not None
        await self._store.run(_record, request)
        self._ack(message)
        self._start(command, request)

    def _parse(self, message: Inbound, request: _Request) -> None:
        if len(message.payload) > self._max_bytes:
            raise CommandError(f"command is {len(message.payload)} bytes; the limit is "
                               f"{self._max_bytes}", code="too_large")
        body = read_json(message.payload)
        if isinstance(body, dict) and isinstance(body.get("id"), str):
            request.command_id = body["id"][:128]
        problem = _first_error(self._envelope, body)
        if problem is not None:
            raise CommandError(f"command does not match schemas/command.json: {problem}",
                               code="invalid_command")
        request.command_id = body["id"]
        request.args = body.get("args", {})
        if "reply_to" in body and message.response_topic is None:
            if not self._topics.is_reply_topic(body["reply_to"]):
                raise CommandError(f"reply_to {body['reply_to']!r} is outside "
                                   f"{self._topics.reply}/#", code="invalid_reply_topic")
            request.reply_topic = body["reply_to"]
        deadlines = []
        if message.expiry_s is not None:
            deadlines.append(message.received_at + message.expiry_s)
        if "expires_at" in body:
            deadlines.append(parse_time(body["expires_at"], "expires_at", "invalid_command"))
        request.expires_at = min(deadlines) if deadlines else None

    def _check(self, request: _Request, *, resumed: bool = False) -> Command:
        command = self._commands.get(request.name)
        if command is None:
            raise CommandError(f"unknown command {request.name!r}; this bench runs: "
                               f"{', '.join(self.names)}", code="unknown_command")
        _check_expiry(request)
        problem = _first_error(_validator(command.args_schema), request.args)
        if problem is not None:
            raise CommandError(f"args of {request.name}: {problem}", code="invalid_args")
        if command.diagnostic:
            self._check_remote(command, rate=not resumed)  # resumed: admitted already
        return command

    def _check_remote(self, command: Command, *, rate: bool = True) -> None:
        """``[diagnostics]`` over MQTT: on, allowed, action allowed, within the rate."""
        policy = self.policy
        if not policy.remote:
            raise CommandError(f"{command.name}: diagnostics over MQTT are off on this bench "
                               f"(diagnostics.remote)", code="remote_disabled")
        if policy.remote_allow is not None and command.name not in policy.remote_allow:
            raise CommandError(f"{command.name} is not allowed over MQTT on this bench "
                               f"(diagnostics.remote_allow)", code="not_allowed")
        if command.action and not policy.remote_actions:
            raise CommandError(f"{command.name} changes the bench and diagnostics actions "
                               f"over MQTT are off (diagnostics.remote_actions)",
                               code="action_disabled")
        wait_s = self._rate.take() if rate else 0.0
        if wait_s:
            raise CommandError(f"more than {policy.remote_rate_per_min} diagnostics commands "
                               f"a minute; try again in {wait_s:.1f} s", code="rate_limited")

    # ------------------------------------------------------------ running
    def _start(self, command: Command, request: _Request) -> None:
        task = spawn(self._execute(command, request), name=f"command.{request.name}")
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    async def _execute(self, command: Command, request: _Request) -> None:
        _current_id.set(request.command_id)  # this task's own context
        try:
            _check_expiry(request)
            result = await command.handler(request.args)
            reply = self._reply(request, ok=True, result=result)
        except AgentError as exc:
            reply = self._reply(request, ok=False, error=exc)
        except Exception as exc:
            log.exception("command %s (%s) failed", request.name, request.command_id)
            reply = self._reply(request, ok=False,
                                error=AgentError(f"{type(exc).__name__}: {exc}",
                                                 code="internal_error"))
        try:
            await self._send(request, reply, store=True)
            # Taken only now: a repeat whose lookup ran before the reply was stored is
            # waiting in the list by this point (the store thread answers in order).
            duplicates = self._duplicates.pop(request.command_id or "", [])
            for duplicate in duplicates:
                await self._send(duplicate, {**reply, "duplicate": True}, store=False)
        except AgentError as exc:
            # The command stays 'received' in the store and runs again at the next start.
            log.error("reply to command %s (%s) could not be stored: %s", request.name,
                      request.command_id, exc)

    async def _resume_unfinished(self) -> None:
        try:
            requests = await self._store.run(_unfinished)
        except StorageError as exc:
            log.error("commands recorded before the last stop not resumed: %s", exc)
            return
        for request in requests:
            log.info("running command %s (%s) recorded before the last stop", request.name,
                     request.command_id)
            try:
                command = self._check(request, resumed=True)
            except CommandError as exc:
                try:
                    await self._send(request, self._reply(request, ok=False, error=exc),
                                     store=True)
                except StorageError as full:  # stays recorded: refused at the next start
                    log.error("refusal of command %s not stored: %s", request.command_id, full)
                continue
            self._start(command, request)

    # ------------------------------------------------------------ replies
    def _reply(self, request: _Request, *, ok: bool, result: dict[str, Any] | None = None,
               error: AgentError | None = None) -> dict[str, Any]:
        reply: dict[str, Any] = {
            "command_id": request.command_id,
            "command": request.name,
            "ok": ok,
            "duplicate": False,
            "received_at": iso_time(request.received_at),
        }
        if ok:
            reply["result"] = result or {}
        elif error is not None:
            reply["error"] = {"code": error.code, "message": error.message}
        return reply

    async def _refuse(self, message: Inbound, request: _Request, error: CommandError) -> None:
        log.warning("command %s (%s) refused: %s: %s", request.name, request.command_id,
                    error.code, error.message)
        reply = self._reply(request, ok=False, error=error)
        # A refusal with an id is stored too, so a repeat gets the same answer.
        await self._send(request, reply, store=request.command_id is not None
                         and error.code not in _NOT_STORED)
        self._ack(message)

    async def _answer_duplicate(self, message: Inbound, request: _Request,
                                stored: dict[str, Any] | None) -> None:
        if stored is None:
            self._ack(message)
            log.info("command %s delivered again while still running; it gets the reply "
                     "when that run ends", request.command_id)
            self._duplicates.setdefault(request.command_id or "", []).append(request)
            return
        log.info("command %s delivered again; sending its stored reply", request.command_id)
        await self._send(request, {**stored, "duplicate": True}, store=False)
        self._ack(message)

    async def _send(self, request: _Request, reply: dict[str, Any], *, store: bool) -> None:
        also = None
        if store:
            def also(db: sqlite3.Connection) -> None:
                _store_reply(db, request, reply)
        await self._outbox.enqueue("command.reply", reply, priority=Priority.CRITICAL,
                                   topic=request.reply_topic, correlation=request.correlation,
                                   also=also)

    async def _prune(self) -> None:
        self._pruned_at = time.monotonic()
        if self._clock is not None and self._clock.retention_paused:
            return  # a clock set ahead would forget ids the broker can still deliver again
        cutoff = time.time() - self._retention_s
        await self._store.run(lambda db: db.execute(
            "DELETE FROM commands WHERE received_at < ? AND state = 'done'", (cutoff,)))


def read_json(payload: bytes) -> Any:
    """A command's JSON, as strict JSON parsers (the central system's) read it.

    Raises:
        CommandError: ``malformed_json`` for what is not UTF-8 JSON (``NaN``, a number out
            of range, a string escaping a lone surrogate) or nests deeper than Python reads.
    """
    try:
        text = payload.decode("utf-8")  # json.loads(bytes) would take UTF-16 and 32 too
        body = json.loads(text, parse_constant=_not_a_number, parse_float=_finite)
    except RecursionError as exc:
        raise CommandError("payload is not JSON the bench can read: arrays or objects "
                           "nested too deep", code="malformed_json") from exc
    except ValueError as exc:  # also UnicodeDecodeError, and integers over 4300 digits
        raise CommandError(f"payload is not JSON: {exc}", code="malformed_json") from exc
    if _SURROGATE_ESCAPE.search(payload) and _has_lone_surrogate(body):
        raise CommandError("payload is not UTF-8 JSON: a string escapes a lone surrogate "
                           "(\\ud800 to \\udfff without its pair), which is no character",
                           code="malformed_json")
    return body


_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def _not_a_number(token: str) -> Any:
    raise ValueError(f"{token} is not a JSON number")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text[:40]} is out of the range of a number")
    return value


def _has_lone_surrogate(body: Any) -> bool:
    stack = [body]  # not recursive: the body may nest as deep as json.loads allows
    while stack:
        value = stack.pop()
        if isinstance(value, str):
            try:
                value.encode()
            except UnicodeEncodeError:
                return True
        elif isinstance(value, dict):
            stack += [*value, *value.values()]
        elif isinstance(value, list):
            stack += value
    return False


def parse_time(value: str, what: str, code: str) -> float:
    """An RFC 3339 time with its UTC offset as Unix time.

    Raises:
        CommandError: with ``code``, naming ``what`` and the form expected.
    """
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError as exc:
        raise CommandError(f"{what} {value!r} is not an RFC 3339 time such as "
                           "2026-11-22T10:00:00Z", code=code) from exc
    if parsed.tzinfo is None:
        raise CommandError(f"{what} {value!r} has no UTC offset; add Z or +HH:MM", code=code)
    if not 1 < parsed.year < 9999:  # its UTC form must exist too (reports use it)
        raise CommandError(f"{what} {value!r} is outside the years 0002 to 9998", code=code)
    return parsed.timestamp()


def _check_expiry(request: _Request) -> None:
    if request.expires_at is not None and time.time() > request.expires_at:
        raise CommandError(f"command expired at {iso_time(request.expires_at)}", code="expired")


# ---------------------------------------------------------------- store thread
def _lookup(db: sqlite3.Connection, command_id: str) -> tuple[bool, dict[str, Any] | None]:
    """Whether the id was seen before, and its stored reply (``None`` while it runs)."""
    row = db.execute("SELECT state, reply FROM commands WHERE id = ?", (command_id,)).fetchone()
    if row is None:
        return False, None
    return True, (json.loads(row[1]) if row[0] == "done" else None)


def _record(db: sqlite3.Connection, request: _Request) -> None:
    db.execute(
        "INSERT OR IGNORE INTO commands (id, name, received_at, expires_at, args, reply_topic,"
        " correlation, state) VALUES (?, ?, ?, ?, ?, ?, ?, 'received')",
        (request.command_id, request.name, request.received_at, request.expires_at,
         json.dumps(request.args), request.reply_topic, request.correlation),
    )


def _store_reply(db: sqlite3.Connection, request: _Request, reply: dict[str, Any]) -> None:
    _record(db, request)
    db.execute("UPDATE commands SET state = 'done', reply = ? WHERE id = ?",
               (json.dumps(reply), request.command_id))


def _unfinished(db: sqlite3.Connection) -> list[_Request]:
    rows = db.execute(
        "SELECT id, name, received_at, expires_at, args, reply_topic, correlation FROM commands"
        " WHERE state = 'received' ORDER BY received_at"
    ).fetchall()
    return [_Request(r[1], r[0], r[2], r[5], r[6], json.loads(r[4]), r[3]) for r in rows]
