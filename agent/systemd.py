"""systemd's service notification protocol (``sd_notify``), written by hand.

It is one datagram on a Unix socket, so a dependency would be larger than the code; the
``sdnotify`` package on PyPI is unmaintained since 2017. With ``NOTIFY_SOCKET`` unset
(not under systemd) every call is a no-op.
"""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger("agent.systemd")


class Notifier:
    """Sends ``READY=1``, ``WATCHDOG=1``, ``STOPPING=1`` and ``STATUS=...`` to systemd."""

    def __init__(self) -> None:
        address = os.environ.get("NOTIFY_SOCKET", "")
        if address.startswith("@"):
            address = "\0" + address[1:]  # abstract namespace socket
        self._address = address
        self._sock: socket.socket | None = None
        if address:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def watchdog_interval_s(self) -> float | None:
        """Half the ``WatchdogSec=`` systemd asked for, or ``None`` without a watchdog."""
        usec = os.environ.get("WATCHDOG_USEC")
        pid = os.environ.get("WATCHDOG_PID")
        if not usec or (pid and pid != str(os.getpid())):
            return None
        try:
            return int(usec) / 2_000_000
        except ValueError:
            log.warning("ignoring WATCHDOG_USEC=%r: not an integer", usec)
            return None

    def notify(self, *states: str) -> None:
        if self._sock is None:
            return
        try:
            self._sock.sendto("\n".join(states).encode(), self._address)
        except OSError as exc:
            log.warning("sd_notify to %s failed: %s", self._address, exc)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
