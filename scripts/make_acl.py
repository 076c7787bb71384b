#!/usr/bin/env python3
"""Write the mosquitto ACL file of a site from its list of benches.

Each bench connects with a client certificate whose Common Name is ``{site}.{bench}``
(``scripts/make_bench_cert.py`` issues it); the broker (``use_identity_as_username``)
makes that CN the user name, and this file gives that user the rights of
docs/mqtt-api.md "Broker ACL for a bench" and nothing else. Central-system users (one
per consumer service, CN without a dot) may command every bench and read everything
the benches report.

Why a block per bench rather than one ``pattern`` line: a pattern's ``%u`` fills one
topic level, while a bench's prefix is two (``sh01/b07``), so it would need CNs holding
``/``. Explicit blocks make the bench list an allowlist (a certificate for a name not on
it has no rights; removing a line revokes a bench at the next reload, even connected),
read and diff like any file, and keep ``/`` out of CNs (docs/security.md).

Usage::

    scripts/make_acl.py benches.txt -o /etc/mosquitto/bench-agent.acl
    systemctl reload mosquitto          # mosquitto re-reads the ACL on SIGHUP

``benches.txt`` holds one bench a line, ``site bench`` (or ``site/bench``, ``site.bench``);
``#`` starts a comment. ``-`` reads the list from stdin. ``--append FILE`` adds
hand-written blocks (an administrator, a display reading one bench's ``state``) at the
end. Standard library only, so it runs on the broker host without the agent installed.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
from pathlib import Path

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,31}$")
"""Site and bench names, as the agent's config allows them: never ``.``, ``/``, ``+``, ``#``."""
ROOT = re.compile(r"^[A-Za-z0-9_-]+(/[A-Za-z0-9_-]+)*$")
USER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
"""Central-system user names: no dot, so they can never be taken for a bench's CN."""

BENCH_RIGHTS = (
    ("write", "status"),  # the retained status and the Will
    ("write", "state"),  # the packing bench's state, retained
    ("write", "events/#"),
    ("write", "reply/#"),  # matches {prefix}/reply too
    ("read", "cmd/+"),
    ("readwrite", "diag/echo"),  # mqtt.check's round trip through the broker
)
CENTRAL_RIGHTS = (
    ("write", "cmd/+"),
    ("read", "status"),
    ("read", "state"),
    ("read", "events/#"),
    ("read", "reply/#"),
)


def bench_user(site: str, bench: str) -> str:
    """The certificate CN, and so the MQTT user name, of a bench."""
    return f"{site}.{bench}"


def parse_benches(text: str, source: str = "benches") -> list[tuple[str, str]]:
    """``(site, bench)`` pairs from the list; raises ``ValueError`` naming the line."""
    benches: list[tuple[str, str]] = []
    seen: set[tuple[str, str]] = set()
    for number, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        parts = re.split(r"[\s/.]+", line)
        if len(parts) != 2 or not all(NAME.match(part) for part in parts):
            raise ValueError(f"{source}:{number}: {line!r}: expected 'SITE BENCH', each 1-32 "
                             f"letters, digits, _ or - starting with a letter or digit")
        pair = (parts[0], parts[1])
        if pair in seen:
            raise ValueError(f"{source}:{number}: {'/'.join(pair)} is listed twice")
        seen.add(pair)
        benches.append(pair)
    return benches


def acl_text(benches: list[tuple[str, str]], central: list[str],
             topic_root: str = "benchagent/v1", appended: str = "") -> str:
    """The ACL file's text: the central users' blocks, one block per bench, ``appended``."""
    if not ROOT.match(topic_root):
        raise ValueError(f"topic root {topic_root!r}: levels of letters, digits, _ and -")
    for user in central:
        if not USER.match(user):
            raise ValueError(f"central user {user!r}: 1-64 letters, digits, _ or -, no dot "
                             f"(a dot would make it look like a bench)")
    lines = [
        "# mosquitto ACL for bench-agent, written by scripts/make_acl.py: edit the bench list",
        "# and run the script again rather than editing this file (docs/security.md).",
        f"# {len(benches)} benches; user names are the client certificates' CNs.",
        "# Topics and access are those of docs/mqtt-api.md \"Broker ACL for a bench\".",
    ]
    for user in central:
        lines += ["", f"user {user}"]
        lines += [f"topic {access} {topic_root}/+/+/{level}" for access, level in CENTRAL_RIGHTS]
    for site, bench in benches:
        lines += ["", f"user {bench_user(site, bench)}"]
        lines += [f"topic {access} {topic_root}/{site}/{bench}/{level}"
                  for access, level in BENCH_RIGHTS]
    if appended.strip():
        lines += ["", "# appended as written", appended.strip()]
    return "\n".join(lines) + "\n"


def write_atomically(path: Path, text: str) -> None:
    """Replace ``path`` in one rename, so a reload never reads half a file."""
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("benches", help="the bench list: 'SITE BENCH' per line, or - for stdin")
    parser.add_argument("-o", "--output", type=Path,
                        help="the ACL file to write (replaced atomically); default: stdout")
    parser.add_argument("--central", action="append", metavar="USER",
                        help="a central-system user (its certificate's CN); repeatable; "
                             "default: central")
    parser.add_argument("--topic-root", default="benchagent/v1",
                        help="the benches' mqtt.topic_root (default: benchagent/v1)")
    parser.add_argument("--append", type=Path, metavar="FILE",
                        help="hand-written ACL blocks to add at the end, as they are")
    args = parser.parse_args(argv)
    try:
        if args.benches == "-":
            text, source = sys.stdin.read(), "stdin"
        else:
            text, source = Path(args.benches).read_text(encoding="utf-8"), args.benches
        appended = args.append.read_text(encoding="utf-8") if args.append else ""
        acl = acl_text(parse_benches(text, source), args.central or ["central"],
                       args.topic_root, appended)
    except (OSError, ValueError) as exc:
        print(f"make_acl: {exc}", file=sys.stderr)
        return 2
    if args.output is None:
        sys.stdout.write(acl)
    else:
        write_atomically(args.output, acl)
    return 0


if __name__ == "__main__":
    sys.exit(main())
