"""``bench-agent``: run the daemon, check a config, discover hardware, print the version.

Exit codes: 0 success, 1 the daemon failed at run time, 2 bad usage or invalid config.
See ``docs/cli.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from collections.abc import Sequence

from agent import __version__
from agent.config import Config, load_config
from agent.errors import AgentError, ConfigError

DEFAULT_CONFIG = "/etc/bench-agent/config.toml"

log = logging.getLogger("agent.cli")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bench-agent", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"bench-agent {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    config_help = f"config file (default: $BENCH_AGENT_CONFIG or {DEFAULT_CONFIG})"
    run = sub.add_parser("run", help="run the bench daemon in the foreground")
    run.add_argument("-c", "--config", help=config_help)
    check = sub.add_parser("check-config", help="validate a config file without starting")
    check.add_argument("-c", "--config", help=config_help)
    check.add_argument("--json", action="store_true", help="print the result as JSON")
    found = sub.add_parser("discover", help="list candidate hardware: serial ports, USB scales "
                           "and printers, scanners, cameras (read-only, safe while running)")
    found.add_argument("--json", action="store_true", help="print the result as JSON")
    evidence = sub.add_parser("evidence", help="the evidence of a parcel, by order id or "
                              "waybill number (reads the bench's database; safe while running)")
    evidence.add_argument("key", help="an order id or a waybill number")
    evidence.add_argument("-c", "--config", help=config_help)
    evidence.add_argument("--json", action="store_true", help="print the records as JSON")
    version = sub.add_parser("version", help="print the agent version")
    version.add_argument("--json", action="store_true", help="print the result as JSON")
    return parser


def _config_path(arg: str | None) -> str:
    return arg or os.environ.get("BENCH_AGENT_CONFIG") or DEFAULT_CONFIG


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``bench-agent`` console script."""
    args = _parser().parse_args(argv)
    if args.command == "version":
        if args.json:
            print(json.dumps({"version": __version__}))
        else:
            print(f"bench-agent {__version__}")
        return 0
    if args.command == "discover":
        return _discover(as_json=args.json)
    if args.command == "evidence":
        return _evidence(_config_path(args.config), args.key, as_json=args.json)
    if args.command == "check-config":
        return _check_config(_config_path(args.config), as_json=args.json)
    return _run(_config_path(args.config))


def _check_config(path: str, *, as_json: bool) -> int:
    try:
        config = load_config(path)
    except ConfigError as exc:
        if as_json:
            print(json.dumps({"ok": False, "file": path, "errors": str(exc).splitlines()}))
        else:
            print(f"config invalid:\n{exc}", file=sys.stderr)
        return 2
    summary = _summary(config)
    if as_json:
        print(json.dumps({"ok": True, "file": path, **summary}))
    else:
        print(f"config ok: {path}")
        for key, value in summary.items():
            print(f"  {key}: {value}")
    return 0


def _discover(*, as_json: bool) -> int:
    from agent.devices.discovery import discover

    found = discover()
    if as_json:
        print(json.dumps(found))
        return 0
    titles = {"serial": "Serial ports", "usb": "USB scales and printers",
              "input": "Keyboard-type input devices (scanners)", "video": "Video devices"}
    for group, title in titles.items():
        print(f"{title}:")
        if not found[group]:
            print("  (none found)")
        for entry in found[group]:
            kind = entry["kind"] or "?"
            print(f"  {kind:8} {entry['what']}")
            print(f"           connection = \"{entry['connection']}\"")
    return 0


def _evidence(path: str, key: str, *, as_json: bool) -> int:
    """Exit 0 with the records, 1 when none is found, 2 for a bad config or database."""
    from agent.jobs.evidence import read_records

    try:
        config = load_config(path)
        records = read_records(config.storage.dir / "agent.db", key)
    except AgentError as exc:
        print(f"{exc}", file=sys.stderr)
        return 2
    if as_json:
        print(json.dumps({"key": key, "records": records}, ensure_ascii=False))
        return 0 if records else 1
    if not records:
        print(f"no evidence for {key!r} on this bench (an order id or waybill number)",
              file=sys.stderr)
        return 1
    for record in records:
        print(f"{record.get('kind', 'pack')} {record['evidence_id']}: {record.get('verdict')}"
              f"{' (' + str(record['reason']) + ')' if record.get('reason') else ''}")
        print(f"  orders {', '.join(record.get('order_ids', []))}, waybill "
              f"{record.get('waybill')}, packer {record.get('packer')}, "
              f"{record.get('started_at')} to {record.get('finished_at')}")
        print(f"  weight {record.get('stable_weight_g')} g, expected "
              f"{record.get('expected_weight_g')} g +/- {record.get('tolerance_g')} g")
        for order in record.get("orders", []):
            for line in order.get("lines", []):
                serials = f" serials {', '.join(line['serials'])}" if line.get("serials") else ""
                print(f"  {order['order_id']}: {line.get('packed')}/{line.get('expected')} x "
                      f"{line.get('sku')} {line.get('name', '')}{serials}")
        for override in record.get("overrides", []):
            print(f"  override: {override}")
        for photo in record.get("photos", []):
            print(f"  photo {photo.get('moment')}: {photo.get('path') or photo.get('error')}")
    return 0


def _summary(config: Config) -> dict[str, object]:
    return {
        "bench": f"{config.bench.site}/{config.bench.id}",
        "broker": f"{config.mqtt.host}:{config.mqtt.port} (TLS"
                  f"{', client certificate' if config.mqtt.tls.cert_file else ''})",
        "storage": str(config.storage.dir),
        "devices": ", ".join(f"{n} ({d.kind})" for n, d in config.devices.items()) or "none",
    }


def _run(path: str) -> int:
    # Imported here so that `check-config` and `version` start fast.
    from agent.daemon import Daemon
    from agent.logs import setup_logging

    try:
        config = load_config(path)
    except ConfigError as exc:
        print(f"config invalid:\n{exc}", file=sys.stderr)
        return 2
    setup_logging(config.log.level)
    try:
        return asyncio.run(Daemon(config).run())
    except AgentError as exc:
        log.critical("cannot run: %s", exc)
        return 1


if __name__ == "__main__":
    sys.exit(main())
