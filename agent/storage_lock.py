"""One bench-agent at a time on a storage folder: an exclusive ``flock`` on
``{storage.dir}/agent.lock``.

The daemon holds it for its whole run, a CLI ``--direct`` check while it drives the
devices. A second daemon on the same folder, or a ``--direct`` check while the daemon
runs, is refused instead of fighting the first over the database, the serial ports and
the grabbed scanner. The kernel releases the lock when its holder exits, also after
``kill -9``, so there is never a stale lock to remove. The file holds the holder's pid and
role (``daemon`` or ``direct``) for the refusal's message; it is never deleted (unlinking a
lock file races with the next one to open it).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path
from types import TracebackType

from agent.errors import AgentError

LOCK_FILE = "agent.lock"


class StorageLocked(AgentError):
    """Another bench-agent (the daemon, or a ``--direct`` check) holds the storage lock."""

    code = "storage_locked"

    def __init__(self, message: str, *, holder: str, role: str) -> None:
        super().__init__(message)
        self.holder = holder
        """Who holds it, in words: ``the bench-agent daemon (pid 4242)``."""
        self.role = role
        """``daemon``, ``direct``, or empty when the file does not say."""


class StorageLock:
    """The lock of one storage folder, held from :meth:`acquire` to :meth:`release` (or
    for a ``with`` block).

    Args:
        folder: ``storage.dir``.
        role: ``daemon`` or ``direct``, written to the file with the pid.
        create: make the folder and the file when missing (the daemon). Without it (the
            CLI) a missing file means no daemon ever ran there: nothing to lock.
    """

    def __init__(self, folder: Path, role: str, *, create: bool = True) -> None:
        self.path = folder / LOCK_FILE
        self.role = role
        self._create = create
        self._fd: int | None = None

    def __enter__(self) -> StorageLock:
        self.acquire()
        return self

    def __exit__(self, _type: type[BaseException] | None, _exc: BaseException | None,
                 _tb: TracebackType | None) -> None:
        self.release()

    def acquire(self) -> None:
        """Take the lock, without waiting.

        Raises:
            StorageLocked: another process holds it; the message names it.
            AgentError: ``permission_denied`` when the file cannot be opened, so it cannot
                be told whether another holds it.
        """
        fd = self._open()
        if fd is None:
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder, role = _holder(fd)
            os.close(fd)
            advice = ("stop it first, or give this daemon its own storage.dir"
                      if self.role == "daemon" else "")
            raise StorageLocked(f"{holder} runs on {self.path.parent} (it holds {self.path})"
                                + (f"; {advice}" if advice else ""), holder=holder,
                                role=role) from None
        except BaseException:
            os.close(fd)
            raise
        with contextlib.suppress(OSError):  # opened read-only: the pid stays unwritten
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()} {self.role}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def _open(self) -> int | None:
        try:
            if self._create:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            try:
                return os.open(self.path, os.O_RDWR | os.O_CLOEXEC
                               | (os.O_CREAT if self._create else 0), 0o644)
            except PermissionError:  # flock needs no write access
                return os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            if not self._create:
                return None
            raise AgentError(f"cannot create {self.path}", code="storage_error") from None
        except OSError as exc:
            code = "permission_denied" if isinstance(exc, PermissionError) else "storage_error"
            why = (f"the agent's user must be able to write to {self.path.parent}"
                   if self._create else f"cannot tell whether a bench-agent runs on "
                   f"{self.path.parent}; run as root or as the agent's user")
            raise AgentError(f"cannot open {self.path} ({exc.strerror}): {why}",
                             code=code) from exc


def _holder(fd: int) -> tuple[str, str]:
    """``the bench-agent daemon (pid 4242)`` and its role, from what the holder wrote."""
    try:
        pid, _, role = os.pread(fd, 64, 0).decode("ascii").strip().partition(" ")
    except (OSError, UnicodeDecodeError):
        pid, role = "", ""
    who = {"daemon": "the bench-agent daemon", "direct": "a bench-agent --direct check"
           }.get(role, "another bench-agent")
    return (f"{who} (pid {pid})" if pid.isdigit() else who), role
