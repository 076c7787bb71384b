"""Logging to stdout in a form journald shows well.

Under systemd (``JOURNAL_STREAM`` set) each line starts with the kernel-style priority
prefix ``<N>`` that journald turns into the entry's priority, and carries no timestamp
(journald adds its own). Elsewhere lines carry an ISO timestamp and the level name.
"""

from __future__ import annotations

import logging
import os
import sys

# syslog priorities journald reads from a "<N>" line prefix (sd-daemon.h).
_SYSLOG_PRIORITY = {
    logging.DEBUG: 7,
    logging.INFO: 6,
    logging.WARNING: 4,
    logging.ERROR: 3,
    logging.CRITICAL: 2,
}


class _JournalFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        priority = _SYSLOG_PRIORITY.get(record.levelno, 6)
        text = super().format(record)
        # journald splits entries on newlines; keep tracebacks in one entry's lines.
        return "\n".join(f"<{priority}>{line}" for line in text.splitlines())


def setup_logging(level: str = "info", *, stream: object = None) -> None:
    """Route the package's logs (and paho's) to stdout at ``level``."""
    handler = logging.StreamHandler(stream or sys.stdout)  # type: ignore[arg-type]
    if os.environ.get("JOURNAL_STREAM"):
        handler.setFormatter(_JournalFormatter("%(name)s: %(message)s"))
    else:
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s")
        )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
