"""What the ``bench-agent`` CLI prints: aligned tables and lines a technician reads in a
minute, and the rule of each command for exit code 1 (the bench has a problem).

Every ``show_*`` function takes a command's result (docs/diagnostics.md) and returns the
text; every ``*_problems`` function returns the problems found (none: exit 0). Fields a
result lacks print as ``-``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import datetime
from typing import Any

_NOT_A_PROBLEM = ("ready", "disabled", "not_driven")
"""Device states that are no problem in a status: the device works or is not driven."""


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Left-aligned columns, two spaces apart; ``None`` shows as ``-``."""
    cells = [[_cell(value) for value in row] for row in rows]
    widths = [max(len(h), *(len(row[i]) for row in cells)) for i, h in enumerate(headers)]
    lines = ["  ".join(h.upper().ljust(w) for h, w in zip(headers, widths, strict=True))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(line.rstrip() for line in lines)


def _cell(value: Any) -> str:
    if value is None or value == "":
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def duration(seconds: float | None) -> str:
    """``45 s``, ``12 min 5 s``, ``3 h 20 min``, ``2 d 4 h``."""
    if seconds is None:
        return "-"
    s = int(max(seconds, 0))
    if s < 60:
        return f"{seconds:.0f} s" if seconds >= 1 else f"{seconds:.1f} s"
    if s < 3600:
        return f"{s // 60} min {s % 60} s"
    if s < 86400:
        return f"{s // 3600} h {s % 3600 // 60} min"
    return f"{s // 86400} d {s % 86400 // 3600} h"


def _ago(unix: float | None) -> str:
    return "-" if unix is None else duration(time.time() - unix) + " ago"


def _iso_ago(iso: str | None) -> str:
    if not iso:
        return "-"
    try:
        unix = datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return iso
    return _ago(unix)


def _fault(entry: dict[str, Any]) -> str:
    """The device's fault now, else its last one (kept after it recovered)."""
    if entry.get("code") or entry.get("message"):
        return f"{entry.get('code') or '?'}: {entry.get('message') or ''}".rstrip(": ")
    last = entry.get("last_fault")
    if last:
        return f"- (last: {last.get('code') or last.get('state')} {_ago(last.get('at'))})"
    return "-"


# ---------------------------------------------------------------- status, devices
def show_status(status: dict[str, Any]) -> str:
    link, outbox = status.get("link") or {}, status.get("outbox") or {}
    control, jobs = status.get("control") or {}, (status.get("print") or {}).get("jobs") or {}
    description = f" ({status['description']})" if status.get("description") else ""
    lines = [
        f"bench     {status.get('site')}/{status.get('bench')}{description}",
        f"agent     bench-agent {status.get('agent_version')}, up "
        f"{duration(status.get('uptime_s'))} (since {status.get('started_at')})",
        f"mqtt      {link.get('state')} {link.get('broker')}"
        + (f", connected {_iso_ago(link.get('connected_at'))}"
           if link.get("state") == "connected" else "")
        + (f"; last error: {link['last_error']}" if link.get("last_error") else ""),
        f"outbox    {_backlog(outbox)}",
        "alarms    " + ("; ".join(f"{a['code']}: {a['message']}" for a in status["alarms"])
                        if status.get("alarms") else "none"),
        "print     " + (", ".join(f"{n} {s}" for s, n in jobs.items() if n) or "no jobs waiting"),
    ]
    if control:
        lines.append(f"control   {control.get('socket')} {control.get('state')}")
    return "\n".join(lines) + "\n\n" + show_devices({"devices": status.get("devices", [])})


def _backlog(outbox: dict[str, Any]) -> str:
    waiting = (f"{outbox.get('pending')} pending, the oldest "
               f"{duration(outbox.get('oldest_age_s'))} old" if outbox.get("pending")
               else "nothing waiting")
    return f"{waiting}, {outbox.get('inflight')} in flight, {outbox.get('rejected')} rejected"


def status_problems(status: dict[str, Any]) -> list[str]:
    link_state = (status.get("link") or {}).get("state")
    problems = [] if link_state == "connected" else [f"mqtt link {link_state}"]
    problems += [f"alarm {a.get('code')}" for a in status.get("alarms") or []]
    return problems + device_problems({"devices": status.get("devices", [])})


def show_devices(result: dict[str, Any]) -> str:
    rows = [(d.get("name"), d.get("kind"), d.get("role"), d.get("state"),
             _ago(d.get("since")) if d.get("since") else None, _fault(d), d.get("connection"))
            for d in result.get("devices", [])]
    text = table(("device", "kind", "role", "state", "since", "fault", "connection"), rows) \
        if rows else "no devices configured"
    if "discovered" in result:
        text += "\n\n" + show_discovered(result["discovered"])
    return text


def device_problems(result: dict[str, Any]) -> list[str]:
    return [f"{d.get('name')} {d.get('state')}" for d in result.get("devices", [])
            if d.get("state") not in _NOT_A_PROBLEM]


def show_discovered(found: dict[str, Any]) -> str:
    titles = {"serial": "Serial ports", "usb": "USB scales and printers",
              "input": "Keyboard-type input devices (scanners)", "video": "Video devices"}
    lines = []
    for group, title in titles.items():
        lines.append(f"{title}:")
        if not found.get(group):
            lines.append("  (none found)")
        for entry in found.get(group, []):
            lines.append(f"  {entry.get('kind') or '?':8} {entry.get('what')}")
            lines.append(f"           connection = \"{entry.get('connection')}\"")
    return "\n".join(lines)


# ---------------------------------------------------------------- scale
def show_reading(reading: dict[str, Any]) -> str:
    grams = reading.get("grams")
    weight = f"{grams:.1f} g" if isinstance(grams, int | float) else reading.get("condition", "?")
    flags = [word for word, on in (("stable", reading.get("stable")), ("net", reading.get("net")),
                                   ("settled", reading.get("settled"))) if on]
    if not reading.get("stable"):
        flags.insert(0, "moving")
    raw = f"  raw {reading['raw'].strip()!r}" if reading.get("raw") else ""
    return f"{reading.get('device')}: {weight} ({', '.join(flags)}){raw}"


def show_scale(result: dict[str, Any]) -> str:
    if "readings" in result:  # scale.watch: each reading was printed as it came
        return f"{result.get('device')}: {result.get('count', len(result['readings']))} " \
               f"readings"
    reading = result.get("reading")
    shown = show_reading(reading) if reading else f"{result.get('device')}: no reading"
    done = {"zero": "zeroed", "tare": "tared", "clear_tare": "tare cleared"}
    return f"{done.get(result['done'], result['done'])}; now\n{shown}" \
        if result.get("done") else shown


# ---------------------------------------------------------------- scanner, camera
def show_scan(scan: dict[str, Any]) -> str:
    what = scan.get("symbology_name") or scan.get("symbology") or "unknown symbology"
    line = f"{scan.get('device')}: {scan.get('data')!r} ({what})"
    gs1 = scan.get("gs1") or {}
    ais = [f"({ai}){value}" for ai, value in gs1.items() if ai[:1].isdigit()]
    if ais:  # the human-readable form printed under a GS1 barcode
        line += "\n    GS1 " + " ".join(ais)
    elif gs1:
        line += "\n    " + ", ".join(f"{name} {value}" for name, value in gs1.items())
    if scan.get("gs1_error"):
        line += f"\n    GS1 error: {scan['gs1_error']}"
    return line


def show_listened(item: dict[str, Any]) -> str:
    """A streamed ``scanner.listen`` item: a scan, or input the scanner threw away."""
    if "scan" in item:
        return show_scan(item["scan"])
    bad = item.get("discarded") or {}
    return f"{bad.get('device')}: discarded {bad.get('code')}: {bad.get('message')}"


def show_listen(result: dict[str, Any]) -> str:
    count, bad = len(result.get("scans", [])), len(result.get("discarded", []))
    return (f"{count} scan{'' if count == 1 else 's'} from "
            f"{', '.join(result.get('scanners', [])) or '-'}"
            + (f", {bad} discarded" if bad else "")
            + (", timed out" if result.get("timed_out") else ""))


def show_decode(result: dict[str, Any]) -> str:
    barcodes = result.get("barcodes", [])
    head = (f"{result.get('device')}: {len(barcodes)} barcode(s) in a "
            f"{result.get('width')}x{result.get('height')} frame")
    return "\n".join([head, *(f"  {show_scan(b)}" for b in barcodes)])


def show_snapshot(result: dict[str, Any]) -> str:
    return (f"{result.get('device')}: {result.get('width')}x{result.get('height')} JPEG, "
            f"{result.get('bytes')} bytes, written to {result.get('file')}")


# ---------------------------------------------------------------- printer
def show_printer_status(result: dict[str, Any]) -> str:
    status = result.get("status") or {}
    lines = [f"{result.get('device')}: {result.get('state')}"
             + (f" ({_fault(result)})" if result.get("code") else ""),
             f"  ready             {_cell(status.get('ready'))}",
             f"  faults            {', '.join(status.get('faults') or []) or 'none'}"]
    for key in ("labels_remaining", "formats_in_buffer", "printing"):
        if status.get(key) is not None:
            lines.append(f"  {key.replace('_', ' '):17} {_cell(status[key])}")
    lines += [f"  note              {note}" for note in status.get("notes") or []]
    return "\n".join(lines)


def printer_problems(result: dict[str, Any]) -> list[str]:
    status = result.get("status") or {}
    problems = list(status.get("faults") or [])
    if result.get("state") != "ready" and not problems:
        problems.append(f"{result.get('device')} {result.get('state')}")
    if status and status.get("ready") is False and not problems:
        problems.append("not ready")
    return problems


def show_print_job(job: dict[str, Any]) -> str:
    """A test print: the daemon's print job (``print.get``), or what ``--direct`` sent."""
    fault = f" ({job.get('code')}: {job.get('message')})" if job.get("code") else ""
    where = job.get("printer") or job.get("device")
    what = f"job {job['job_id']}" if job.get("job_id") else "straight to the printer"
    return f"test print on {where} ({what}, {job.get('summary')}): {job.get('state')}{fault}"


def print_job_problems(job: dict[str, Any]) -> list[str]:
    return [f"job {job.get('state')}"] if job.get("state") in (
        "held", "failed", "cancelled", "expired", "uncertain") else []


# ---------------------------------------------------------------- mqtt, outbox, agent
def show_mqtt(result: dict[str, Any]) -> str:
    link = result.get("link") or {}
    if result.get("ok"):
        return f"mqtt ok: round trip through {result.get('broker')} in " \
               f"{result.get('round_trip_ms')} ms"
    return f"mqtt check failed: {result.get('error') or link.get('last_error') or 'no echo'} " \
           f"(link {link.get('state')} {result.get('broker') or link.get('broker')})"


def show_outbox(result: dict[str, Any]) -> str:
    dropped = result.get("dropped") or {}
    rows = [("pending", result.get("pending")), ("in flight", result.get("inflight")),
            ("oldest", duration(result.get("oldest_age_s")) + " old"
             if result.get("pending") else "-"),
            ("bytes", f"{result.get('bytes')} of {result.get('limit_bytes')}"),
            ("events limit", result.get("limit_events")),
            ("rejected", result.get("rejected")), ("last rejection", result.get("last_rejection")),
            ("dropped", f"{dropped.get('telemetry', 0)} telemetry, {dropped.get('normal', 0)} "
                        f"normal"),
            ("refused", result.get("refused")), ("last seq", result.get("last_seq"))]
    alarms = result.get("alarms") or []
    rows += [("alarm", f"{a.get('code')}: {a.get('message')}") for a in alarms]
    return "\n".join(f"{name:15} {_cell(value)}" for name, value in rows)


def show_version(cli_version: str, daemon: dict[str, Any] | None, why: str | None) -> str:
    line = f"bench-agent {cli_version}"
    if daemon is not None:
        return f"{line}\ndaemon: bench-agent {daemon.get('version')} (python " \
               f"{daemon.get('python')}), up {duration(daemon.get('uptime_s'))}"
    return f"{line}\ndaemon: {why}"


def show_selftest(result: dict[str, Any]) -> str:
    rows = [(c.get("name"), c.get("kind"), "PASS" if c.get("ok") else "FAIL", c.get("reason"))
            for c in result.get("checks", [])]
    verdict = "selftest passed" if result.get("passed") else "selftest FAILED"
    return table(("check", "kind", "result", "reason"), rows) + f"\n\n{verdict}"


def show_config_check(local: dict[str, Any], daemon: dict[str, Any] | None,
                      why: str | None) -> str:
    lines = [f"config ok: {local['file']}",
             *(f"  {k}: {v}" for k, v in local.items() if k not in ("ok", "file", "daemon"))]
    if daemon is None:
        lines.append(f"daemon: {why}")
    elif not daemon.get("ok"):
        lines.append(f"daemon's file {daemon.get('file')} is invalid:")
        lines += [f"  {error}" for error in daemon.get("errors", [])]
    elif daemon.get("differs"):
        lines.append(f"daemon: runs a config that differs from {daemon.get('file')}; restart "
                     f"it to apply the file")
    else:
        lines.append(f"daemon: runs {daemon.get('file')} as it is")
    return "\n".join(lines)


# ---------------------------------------------------------------- evidence
def show_evidence(records: list[dict[str, Any]]) -> str:
    lines = []
    for record in records:
        reason = f" ({record['reason']})" if record.get("reason") else ""
        lines.append(f"{record.get('kind', 'pack')} {record['evidence_id']}: "
                     f"{record.get('verdict')}{reason}")
        lines.append(f"  orders {', '.join(record.get('order_ids', []))}, waybill "
                     f"{record.get('waybill')}, packer {record.get('packer')}, "
                     f"{record.get('started_at')} to {record.get('finished_at')}")
        lines.append(f"  weight {record.get('stable_weight_g')} g, expected "
                     f"{record.get('expected_weight_g')} g +/- {record.get('tolerance_g')} g")
        for order in record.get("orders", []):
            for line in order.get("lines", []):
                serials = f" serials {', '.join(line['serials'])}" if line.get("serials") else ""
                lines.append(f"  {order['order_id']}: {line.get('packed')}/"
                             f"{line.get('expected')} x {line.get('sku')} "
                             f"{line.get('name', '')}{serials}")
        lines += [f"  override: {override}" for override in record.get("overrides", [])]
        lines += [f"  photo {p.get('moment')}: {p.get('path') or p.get('error')}"
                  for p in record.get("photos", [])]
    return "\n".join(lines)
