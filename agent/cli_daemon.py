"""The technician's CLI commands: each asks the running daemon one command over the
control socket (or, with ``--direct``, runs it on devices the CLI opens itself), prints
the result and exits with a code that says whether the bench has a problem.

Exit codes (docs/cli.md): 0 ok; 1 the bench has a problem (a device error, a failed
selftest or MQTT check, nothing scanned or found, the daemon not answering in time); 2 bad
usage, an invalid config, args the daemon refused; 3 the daemon is not running; 4 the
daemon is busy (too many technicians connected: try again).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent import cli_output as out
from agent.config import DiagnosticsConfig, load_config
from agent.control_client import ControlClient, DaemonError, DaemonNotRunning
from agent.errors import AgentError

DEFAULT_CONFIG = "/etc/bench-agent/config.toml"
EXIT_OK, EXIT_PROBLEM, EXIT_USAGE, EXIT_NO_DAEMON, EXIT_BUSY = 0, 1, 2, 3, 4
USAGE_CODES = frozenset({
    "invalid_args", "unknown_command", "not_local", "malformed_request", "too_large",
    "device_not_found", "config_invalid", "permission_denied", "daemon_running",
})
"""Error codes that mean the command was asked wrongly (exit 2), not a bench problem."""
NO_DAEMON_CODES = frozenset({"daemon_not_running", "connection_lost"})
ANSWER_TIMEOUT_S = 150.0
"""Longest silence from the daemon during one command (``scanner.listen`` may wait 120 s)."""
TEST_PRINT_WAIT_S = 15.0
"""How long ``printer test`` follows its job before showing the state it is in."""

Result = dict[str, Any]
Progress = Callable[[Result], None]
Call = Callable[..., Result]


@dataclass(frozen=True)
class Action:
    """One CLI command: the daemon command it runs, and how its result is shown."""

    command: str
    args: Callable[[argparse.Namespace], Result]
    show: Callable[[Result], str]
    problems: Callable[[Result], list[str]] = lambda _result: []
    progress: Callable[[Result], str] | None = None
    """How a streamed item prints as it arrives."""
    direct: bool = False
    """Offered with ``--direct`` (the daemon not running)."""
    more: Callable[[Call, Result], Result] | None = None
    """Further calls on the same connection that complete the result."""
    keep: Callable[[Result, argparse.Namespace], Result] | None = None
    """What the CLI does with the result before showing it (the snapshot's file)."""


def config_path(arg: str | None) -> str:
    return arg or os.environ.get("BENCH_AGENT_CONFIG") or DEFAULT_CONFIG


def socket_path(ns: argparse.Namespace) -> Path:
    """``--socket``, else ``diagnostics.socket`` of the config file, else the default.

    Only that key is read: a technician's user may not read the files (the bench's TLS
    key) that validating the whole config opens.
    """
    if getattr(ns, "socket", None):
        return Path(ns.socket)
    default = DiagnosticsConfig().socket
    file = Path(config_path(getattr(ns, "config", None)))
    try:
        raw = tomllib.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        if getattr(ns, "config", None):
            print(f"bench-agent: {file}: no such config file; trying the default control "
                  f"socket {default}", file=sys.stderr)
        return default
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        print(f"bench-agent: cannot read {file} ({exc}); trying the default control socket "
              f"{default}", file=sys.stderr)
        return default
    value = (raw.get("diagnostics") or {}).get("socket")
    return file.parent / Path(value).expanduser() if isinstance(value, str) else default


def fail(ns: argparse.Namespace, error: AgentError, hint: str = "") -> int:
    """Say what went wrong (and as JSON with ``--json``); the exit code for it."""
    if getattr(ns, "json", False):
        print(json.dumps({"error": {"code": error.code, "message": error.message}},
                         ensure_ascii=False))
    code = "" if error.code in NO_DAEMON_CODES else f"{error.code}: "
    print(f"bench-agent: {code}{error.message}{hint}", file=sys.stderr)
    if error.code in NO_DAEMON_CODES:
        return EXIT_NO_DAEMON
    if error.code == "busy":
        return EXIT_BUSY
    return EXIT_USAGE if error.code in USAGE_CODES else EXIT_PROBLEM


def run_action(ns: argparse.Namespace, action: Action) -> int:
    """Run ``action`` through the daemon (or directly), print, return the exit code."""
    progress = None
    if action.progress is not None and not ns.json:
        shown = action.progress
        progress = lambda item: print(shown(item), flush=True)  # noqa: E731
    try:
        if getattr(ns, "direct", False):
            result = _run_direct(ns, action, progress)
        else:
            with ControlClient(socket_path(ns), timeout_s=ANSWER_TIMEOUT_S) as client:
                result = _fetch(client.call, ns, action, progress)
    except DaemonNotRunning as exc:
        hint = "; start it (systemctl start bench-agent)"
        if action.direct:
            hint += ", or check the hardware without it: add --direct"
        return fail(ns, exc, hint)
    except AgentError as exc:
        return fail(ns, exc)
    except KeyboardInterrupt:
        return 130
    if action.keep is not None:
        try:
            result = action.keep(result, ns)
        except OSError as exc:
            return fail(ns, AgentError(f"cannot write {exc.filename}: {exc.strerror}",
                                       code="cannot_write"))
    print(json.dumps(result, ensure_ascii=False) if ns.json else action.show(result))
    problems = action.problems(result)
    if problems and not ns.json:
        print(f"bench-agent: problem: {'; '.join(problems)}", file=sys.stderr)
    return EXIT_PROBLEM if problems else EXIT_OK


def _fetch(call: Call, ns: argparse.Namespace, action: Action,
           progress: Progress | None) -> Result:
    result = call(action.command, action.args(ns), on_progress=progress)
    return result if action.more is None else action.more(call, result)


def daemon_running(path: Path) -> bool:
    """Whether something answers on the control socket (or refuses this user)."""
    try:
        with ControlClient(path, timeout_s=2.0) as client:
            client.connect()
    except DaemonNotRunning:
        return False
    except DaemonError:
        return True
    return True


def _run_direct(ns: argparse.Namespace, action: Action, progress: Progress | None) -> Result:
    """The command on the devices it needs, opened here, while the storage lock says no
    daemon (nor another ``--direct`` check) runs on this bench, and holds it off."""
    from agent.direct import DirectBench
    from agent.logs import setup_logging
    from agent.storage_lock import StorageLock, StorageLocked

    path = socket_path(ns)
    if daemon_running(path):
        raise AgentError(f"the daemon is running (control socket {path}) and holds the "
                         f"devices; run the command without --direct to ask it",
                         code="daemon_running")
    config = load_config(config_path(ns.config))
    lock = StorageLock(config.storage.dir, "direct", create=False)
    try:
        lock.acquire()
    except StorageLocked as exc:
        then = "wait until it ends" if exc.role == "direct" else \
            "run the command without --direct to ask the daemon"
        raise AgentError(f"{exc.holder} runs on this bench ({lock.path} is locked) and holds "
                         f"the devices; {then}", code="daemon_running") from exc
    try:
        setup_logging("warning", stream=sys.stderr)  # the drivers' faults, as they happen
        with DirectBench(config, command=action.command,
                         device=action.args(ns).get("device")) as bench:
            return _fetch(bench.call, ns, action, progress)
    finally:
        lock.release()


# ---------------------------------------------------------------- the commands
def _no_args(_ns: argparse.Namespace) -> Result:
    return {}


def _given(ns: argparse.Namespace, **names: str) -> Result:
    """``device`` and the options the user gave (the daemon's defaults apply to others)."""
    args: Result = {"device": ns.device} if getattr(ns, "device", None) else {}
    args.update({key: getattr(ns, attr) for key, attr in names.items()
                 if getattr(ns, attr, None) is not None})
    return args


def _save_snapshot(result: Result, ns: argparse.Namespace) -> Result:
    """Writes the JPEG to ``-o FILE``; the shown result names the file instead of the bytes."""
    Path(ns.output).write_bytes(base64.b64decode(result.get("jpeg", "")))
    return {**{k: v for k, v in result.items() if k != "jpeg"}, "file": str(ns.output)}


def _discovered(call: Call, result: Result) -> Result:
    return {**result, "discovered": call("devices.discover", {})}


def _until_printed(call: Call, job: Result) -> Result:
    """A test print the daemon queued, followed until it printed, failed or is held (a
    direct one was sent already)."""
    deadline = time.monotonic() + TEST_PRINT_WAIT_S
    while job.get("job_id") and job.get("state") in ("accepted", "queued", "printing") \
            and time.monotonic() < deadline:
        time.sleep(0.2)
        job = call("print.get", {"job_id": job["job_id"]})
    return job


def _none_if(found: str, message: str) -> Callable[[Result], list[str]]:
    return lambda result: [] if result.get(found) else [message]


ACTIONS: dict[str, Action] = {
    "status": Action("status.get", _no_args, out.show_status, out.status_problems),
    "devices": Action("devices.list", _no_args, out.show_devices, out.device_problems,
                      direct=True, more=_discovered),
    "scale read": Action("scale.read", _given, out.show_scale, direct=True),
    "scale watch": Action("scale.watch", lambda ns: _given(ns, seconds="seconds"),
                          out.show_scale, progress=out.show_reading),
    "scale zero": Action("scale.zero", _given, out.show_scale),
    "scale tare": Action("scale.tare", lambda ns: _given(ns, clear="clear"), out.show_scale),
    "scanner listen": Action("scanner.listen",
                             lambda ns: _given(ns, count="count", timeout_s="timeout"),
                             out.show_listen, _none_if("scans", "no scans"),
                             progress=out.show_listened, direct=True),
    "printer status": Action("printer.status", _given, out.show_printer_status,
                             out.printer_problems, direct=True),
    "printer test": Action("printer.test", _given, out.show_print_job,
                           out.print_job_problems, direct=True, more=_until_printed),
    "camera snapshot": Action("camera.snapshot", _given, out.show_snapshot, direct=True,
                              keep=_save_snapshot),
    "camera decode": Action("camera.decode", _given, out.show_decode,
                            _none_if("barcodes", "no barcodes in view"), direct=True),
    "mqtt check": Action("mqtt.check", lambda ns: _given(ns, timeout_s="timeout"),
                         out.show_mqtt, _none_if("ok", "no round trip through the broker")),
    "outbox": Action("outbox.stats", _no_args, out.show_outbox,
                     lambda r: [f"alarm {a.get('code')}" for a in r.get("alarms") or []]),
    "selftest": Action("selftest", _no_args, out.show_selftest,
                       _none_if("passed", "selftest failed"), direct=True),
}
"""Keyed by the words typed after ``bench-agent``."""
