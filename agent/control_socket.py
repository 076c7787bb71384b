"""The control socket's file: made with its mode and group before anyone can connect, a
stale one (left by a daemon that was killed) replaced, a live one left alone.

The protocol on it is :mod:`agent.control`'s.
"""

from __future__ import annotations

import grp
import logging
import os
import socket
import stat
from pathlib import Path

from agent.errors import AgentError

log = logging.getLogger("agent.control")

MAX_CONNECTIONS = 8
"""The listen backlog, and the connections the server serves at once."""
_PROBE_TIMEOUT_S = 1.0


class ControlError(AgentError):
    """The control socket cannot be created, or a request on it is refused."""

    code = "control_error"


def bind_socket(path: Path, group: str | None) -> socket.socket:
    """A listening, non-blocking Unix socket at ``path`` with its mode (and group) set.

    Blocking (a group lookup may ask NSS, the stale-socket probe connects): call it in a
    thread.

    Raises:
        ControlError: saying why, in words a technician can act on.
    """
    gid = None
    if group is not None:
        try:
            gid = grp.getgrnam(group).gr_gid
        except KeyError:
            raise ControlError(f"diagnostics.socket_group: there is no group {group!r} on this "
                               f"computer (create it, or leave the key out for mode 0600)"
                               ) from None
    _make_parent(path.parent)
    _remove_stale(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        try:
            sock.bind(str(path))
        except OSError as exc:
            raise ControlError(f"cannot create the control socket {path}: {exc.strerror}"
                               ) from exc
        try:
            if gid is not None:
                if os.stat(path).st_gid != gid:  # under systemd it is born with Group=
                    os.chown(path, -1, gid)
                os.chmod(path, 0o660)
            else:
                os.chmod(path, 0o600)
        except OSError as exc:
            path.unlink(missing_ok=True)
            raise ControlError(f"cannot give the control socket {path} to group {group!r}: "
                               f"{exc.strerror} (the agent's user must belong to that group)"
                               ) from exc
        sock.listen(MAX_CONNECTIONS)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def _make_parent(folder: Path) -> None:
    if folder.is_dir():
        return
    try:
        folder.mkdir(parents=True, mode=0o755)
        folder.chmod(0o755)  # mkdir's mode passes through the umask
    except FileExistsError:
        return
    except OSError as exc:
        raise ControlError(f"cannot create the folder {folder} of the control socket: "
                           f"{exc.strerror}") from exc


def _remove_stale(path: Path) -> None:
    """Unlink a socket file nobody listens on; refuse anything else that is there."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    except OSError as exc:
        raise ControlError(f"cannot look at {path}: {exc.strerror}") from exc
    if not stat.S_ISSOCK(mode):
        raise ControlError(f"{path} exists and is not a socket; remove it or set another "
                           f"diagnostics.socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(_PROBE_TIMEOUT_S)
    try:
        probe.connect(str(path))
    except ConnectionRefusedError:
        log.info("removing the stale control socket %s (nobody listens on it)", path)
        path.unlink(missing_ok=True)
        return
    except OSError as exc:
        raise ControlError(f"{path} exists and cannot be probed ({exc}); remove it if no "
                           f"other bench-agent runs") from exc
    finally:
        probe.close()
    raise ControlError(f"another process (a second bench-agent?) is listening on {path}; stop "
                       f"it, or give this daemon its own diagnostics.socket")


