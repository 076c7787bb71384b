"""A serial port made of a pseudo-terminal, for device simulators.

The driver under test opens :attr:`PtyPort.path` exactly as it would open
``/dev/serial/by-id/...``: ``path`` is a symlink to the pty's slave side, like udev's
by-id links. The simulator reads and writes the master side. :meth:`unplug` closes the
master, so the driver's next read fails with EIO as with a pulled USB adapter, and the
link disappears; :meth:`replug` makes a new pty and points the same link at it.
"""

from __future__ import annotations

import os
import select
import termios
import tty
from pathlib import Path


class PtyPort:
    """One simulated serial port. Not thread-safe: one simulator thread drives it."""

    def __init__(self, link: str | Path) -> None:
        self.path = Path(link)
        self.master = -1
        self.replug()

    def replug(self) -> None:
        """(Re)create the pty and point :attr:`path` at its slave side."""
        if self.master >= 0:
            self.unplug()
        master, slave = os.openpty()
        tty.setraw(master)  # no echo, no CR/LF translation on the simulator's side
        # Non-blocking: a read after select must not hang if the driver reopens meanwhile.
        os.set_blocking(master, False)
        attrs = termios.tcgetattr(slave)
        attrs[3] &= ~(termios.ECHO | termios.ICANON)
        termios.tcsetattr(slave, termios.TCSANOW, attrs)
        slave_name = os.ttyname(slave)
        # Keep no slave fd open here: closing the master then gives the driver EIO/EOF.
        os.close(slave)
        self.master = master
        tmp = self.path.with_name(self.path.name + ".new")
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(slave_name)
        tmp.replace(self.path)

    def unplug(self) -> None:
        """The cable is pulled: the driver sees EIO and the by-id link is gone."""
        self.path.unlink(missing_ok=True)
        if self.master >= 0:
            os.close(self.master)
            self.master = -1

    @property
    def plugged(self) -> bool:
        return self.master >= 0

    def write(self, data: bytes) -> None:
        """Send ``data`` to the driver (dropped when unplugged, like a dead cable)."""
        view = memoryview(data)
        while view and self.master >= 0:
            try:
                view = view[os.write(self.master, view):]
            except BlockingIOError:
                select.select([], [self.master], [], 1.0)

    def read(self, timeout_s: float) -> bytes:
        """Bytes the driver sent, or ``b""`` after ``timeout_s`` (or when unplugged).

        Until the driver opens the slave side the master may report EIO; that is
        "nothing yet", not an error.
        """
        if self.master < 0:
            return b""
        ready, _, _ = select.select([self.master], [], [], timeout_s)
        if not ready:
            return b""
        try:
            return os.read(self.master, 4096)
        except OSError:
            return b""

    def close(self) -> None:
        self.unplug()
