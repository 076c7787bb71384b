"""``bench-agent``: run the daemon, and the technician's commands that talk to it.

The technician's commands (status, devices, scale, scanner, printer, camera, mqtt,
outbox, evidence, selftest...) ask the running daemon over its control socket, so they
never fight it for a port; a few run on the hardware directly with ``--direct`` when the
daemon is not running. Exit codes: 0 ok, 1 the bench has a problem, 2 bad usage or
invalid config, 3 the daemon is not running, 4 the daemon is busy (too many technicians
connected). See ``docs/cli.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import json
import logging
import sys
from collections.abc import Sequence

from agent import __version__
from agent import cli_output as out
from agent.cli_daemon import (
    ACTIONS,
    DEFAULT_CONFIG,
    EXIT_OK,
    EXIT_USAGE,
    config_path,
    fail,
    run_action,
    socket_path,
)
from agent.config import load_config, summary
from agent.control_client import ControlClient, DaemonError, DaemonNotRunning
from agent.errors import AgentError, ConfigError

log = logging.getLogger("agent.cli")



def _options(*, json_help: str = "print the result as JSON", direct: bool = False,
             socket: bool = True) -> argparse.ArgumentParser:
    """The options every technician's command takes."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-c", "--config", help=f"config file (default: $BENCH_AGENT_CONFIG "
                        f"or {DEFAULT_CONFIG}); the control socket is its diagnostics.socket")
    if socket:
        common.add_argument("--socket", help="the daemon's control socket (overrides the "
                            "config's diagnostics.socket)")
    common.add_argument("--json", action="store_true", help=json_help)
    if direct:
        common.add_argument("--direct", action="store_true", help="the daemon is not "
                            "running: open the configured devices from this command")
    return common


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bench-agent", description=__doc__.splitlines()[0].replace("``", ""),
        epilog="exit codes: 0 ok; 1 the bench has a problem; 2 bad usage, invalid config or "
               "refused args; 3 the daemon is not running; 4 the daemon is busy (too many "
               "technicians connected: try again) (docs/cli.md)")
    parser.add_argument("--version", action="version", version=f"bench-agent {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    plain, direct = _options(), _options(direct=True)
    run = sub.add_parser("run", help="run the bench daemon in the foreground")
    run.add_argument("-c", "--config", help=f"config file (default: $BENCH_AGENT_CONFIG or "
                     f"{DEFAULT_CONFIG})")
    sub.add_parser("status", parents=[plain], help="version, uptime, MQTT link, outbox "
                   "backlog, every device's state and fault")
    sub.add_parser("devices", parents=[direct], help="configured devices with their state, "
                   "and the hardware discovered on this computer")
    _device_commands(sub, plain, direct)
    mqtt = sub.add_parser("mqtt", help="the broker link").add_subparsers(
        dest="sub", required=True, metavar="SUBCOMMAND")
    check = mqtt.add_parser("check", parents=[plain], help="a message round trip through "
                            "the broker")
    check.add_argument("--timeout", type=float, help="seconds to wait for the echo (1-30, "
                       "default 5)")
    sub.add_parser("outbox", parents=[plain], help="outbox backlog, rejections, drops, alarms")
    evidence = sub.add_parser("evidence", parents=[plain], help="the evidence of a parcel by "
                              "order id or waybill number (read from the database directly "
                              "when the daemon is not running)")
    evidence.add_argument("key", help="an order id or a waybill number")
    config = sub.add_parser("config", help="the config file").add_subparsers(
        dest="sub", required=True, metavar="SUBCOMMAND")
    config.add_parser("check", parents=[plain], help="validate the config file, and compare "
                      "it with the config the daemon runs")
    sub.add_parser("check-config", parents=[plain], help="the same as 'config check'")
    sub.add_parser("version", parents=[plain], help="the CLI's version, and the daemon's")
    sub.add_parser("selftest", parents=[direct], help="check every device without side "
                   "effects, the broker link, the store and the outbox")
    sub.add_parser("discover", parents=[_options(socket=False)],
                   help="list candidate hardware: serial ports, USB scales and printers, "
                   "scanners, cameras (read-only, safe while running)")
    return parser


def _device_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser],
                     plain: argparse.ArgumentParser, direct: argparse.ArgumentParser) -> None:
    def group(kind: str, title: str) -> argparse._SubParsersAction[argparse.ArgumentParser]:
        return sub.add_parser(kind, help=title).add_subparsers(
            dest="sub", required=True, metavar="SUBCOMMAND")

    def command(words: argparse._SubParsersAction[argparse.ArgumentParser], name: str,
                parent: argparse.ArgumentParser, what: str, kind: str) -> argparse.ArgumentParser:
        parser = words.add_parser(name, parents=[parent], help=what)
        parser.add_argument("device", nargs="?", help=f"a [devices.NAME] {kind} (default: "
                            f"the first, or the one the packing job uses)")
        return parser

    scale = group("scale", "the scale: read, watch, zero, tare")
    command(scale, "read", direct, "one fresh reading", "scale")
    watch = command(scale, "watch", plain, "every reading for some seconds", "scale")
    watch.add_argument("--seconds", type=float, help="how long (1-60, default 10)")
    command(scale, "zero", plain, "zero the scale (an action)", "scale")
    tare = command(scale, "tare", plain, "tare the scale (an action)", "scale")
    tare.add_argument("--clear", action="store_true", default=None, help="clear the tare")
    scanner = group("scanner", "the scanners: listen for scans")
    listen = command(scanner, "listen", direct, "show the next scans with symbology and GS1 "
                     "fields (without a device: every scanner)", "scanner")
    listen.add_argument("--count", type=int, help="stop after this many scans (1-50, "
                        "default 1)")
    listen.add_argument("--timeout", type=float, help="seconds to wait (1-120, default 30)")
    printer = group("printer", "the printers: status, test print")
    command(printer, "status", direct, "ask the printer its status now", "printer")
    command(printer, "test", direct, "print a test label or slip (bench, printer, time)",
            "printer")
    camera = group("camera", "the cameras: snapshot, decode")
    snapshot = command(camera, "snapshot", direct, "a JPEG of what the camera sees", "camera")
    snapshot.add_argument("-o", "--output", required=True, help="the JPEG file to write")
    command(camera, "decode", direct, "the barcodes in view now", "camera")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``bench-agent`` console script."""
    args = _parser().parse_args(argv)
    command = " ".join(w for w in (args.command, getattr(args, "sub", None)) if w)
    if command == "run":
        return _run(config_path(args.config))
    if command in ("config check", "check-config"):
        return _check_config(args)
    if command == "discover":
        return _discover(as_json=args.json)
    if command == "version":
        return _version(args)
    if command == "evidence":
        return _evidence(args)
    return run_action(args, ACTIONS[command])


def _daemon_answer(args: argparse.Namespace, command: str, command_args: dict[str, object]
                   ) -> tuple[dict[str, object] | None, str | None]:
    """The daemon's result, or None and why (not running, refused)."""
    try:
        with ControlClient(socket_path(args), timeout_s=30.0) as client:
            return client.call(command, dict(command_args)), None
    except AgentError as exc:
        return None, exc.message


def _version(args: argparse.Namespace) -> int:
    daemon, why = _daemon_answer(args, "agent.version", {})
    if args.json:
        print(json.dumps({"version": __version__, **({"daemon": daemon} if daemon else {})}))
    else:
        print(out.show_version(__version__, daemon, why))
    return EXIT_OK


def _check_config(args: argparse.Namespace) -> int:
    """The file validated here (exit 2 when invalid); the daemon's own check when it runs."""
    path = config_path(args.config)
    try:
        config = load_config(path)
    except ConfigError as exc:
        if args.json:
            print(json.dumps({"ok": False, "file": path, "errors": str(exc).splitlines()}))
        else:
            print(f"config invalid:\n{exc}", file=sys.stderr)
        return EXIT_USAGE
    local = {"ok": True, "file": path, **summary(config)}
    daemon, why = _daemon_answer(args, "config.check", {})
    if args.json:
        print(json.dumps({**local, "daemon": daemon}, ensure_ascii=False))
    else:
        print(out.show_config_check(local, daemon, why))
    return EXIT_USAGE if daemon is not None and daemon.get("ok") is False else EXIT_OK


def _discover(*, as_json: bool) -> int:
    from agent.devices.discovery import discover

    found = discover()
    print(json.dumps(found) if as_json else out.show_discovered(found))
    return EXIT_OK


def _evidence(args: argparse.Namespace) -> int:
    """Through the daemon; from the database read-only when it is not running (or runs
    without the packing job). Exit 0 with records, 1 when none, 2 bad config or database."""
    try:
        with ControlClient(socket_path(args), timeout_s=30.0) as client:
            records = client.call("evidence.find", {"key": args.key})["records"]
    except DaemonNotRunning:
        records = None
    except DaemonError as exc:
        if exc.code != "unknown_command":
            return fail(args, exc)
        records = None
    if records is None:
        from agent.jobs.evidence import read_records

        try:
            records = read_records(load_config(config_path(args.config)).storage.dir
                                   / "agent.db", args.key)
        except AgentError as exc:  # a bad config, no database: wrongly asked
            fail(args, exc)
            return EXIT_USAGE
    if args.json:
        print(json.dumps({"key": args.key, "records": records}, ensure_ascii=False))
    elif records:
        print(out.show_evidence(records))
    else:
        print(f"no evidence for {args.key!r} on this bench (an order id or waybill number)",
              file=sys.stderr)
    return EXIT_OK if records else 1


def limit_malloc_arenas(arenas: int = 2) -> None:
    """Cap glibc's malloc arenas before the daemon starts its threads.

    glibc gives each thread that allocates its own arena (up to 8 per core); the daemon's
    store, camera, USB and executor threads then fragment memory the allocator never hands
    back: in the soak benchmark RSS grew ~16 MB per 5,000 parcels with the default and
    stayed flat (+0.4 MB from 3,000 to 5,000 parcels) with two arenas
    (``MALLOC_ARENA_MAX=2 python -m benchmarks.soak --parcels 8000 --every 1000``).
    ``M_ARENA_MAX`` is mallopt parameter -8; on a C library without it nothing changes.
    """
    try:
        libc = ctypes.CDLL(None)
        libc.mallopt(-8, arenas)
    except (OSError, AttributeError):
        pass


def _run(path: str) -> int:
    # Imported here so that the technician's commands start fast.
    from agent.daemon import Daemon
    from agent.logs import setup_logging

    try:
        config = load_config(path)
    except ConfigError as exc:
        print(f"config invalid:\n{exc}", file=sys.stderr)
        return EXIT_USAGE
    setup_logging(config.log.level)
    limit_malloc_arenas()
    try:
        daemon = Daemon(config)
    except ConfigError as exc:  # a rule across sections, e.g. diagnostics.remote_allow
        print(f"config invalid:\n{config.source}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        return asyncio.run(daemon.run())
    except AgentError as exc:
        log.critical("cannot run: %s", exc)
        return 1


if __name__ == "__main__":
    sys.exit(main())
