"""Run a command under the seccomp filters of a systemd unit file, without systemd.

    python -m tests.unit_sandbox UNIT_FILE COMMAND [ARG...]

CI has no systemd to start ``bench-agent.service``, but the unit's seccomp filters can be
installed by hand, as systemd 252 installs them, before the command is executed:

* ``SystemCallFilter=`` (allow list first, ``~`` lines remove) with the groups as
  ``systemd-analyze syscall-filter`` lists them, and ``SystemCallErrorNumber=`` (else a
  call outside the list kills the process, as systemd does);
* ``MemoryDenyWriteExecute=yes``: ``mmap`` with both PROT_WRITE and PROT_EXEC,
  ``mprotect``/``pkey_mprotect`` adding PROT_EXEC, ``shmat`` with SHM_EXEC fail with EPERM;
* ``RestrictAddressFamilies=``: ``socket()`` of any other family fails with EAFNOSUPPORT;
* ``SystemCallArchitectures=native`` (libseccomp's default), ``NoNewPrivileges=yes``
  (always: seccomp needs it) and ``UMask=``.

Mount namespaces, devices, users and credentials are systemd's own work and not shown
here. The filters come from libseccomp (``libseccomp.so.2``, which systemd itself needs).
"""

from __future__ import annotations

import ctypes
import errno
import os
import socket
import subprocess
import sys
from pathlib import Path

_ACT_KILL_PROCESS = 0x80000000
_ACT_ALLOW = 0x7FFF0000
_CMP_EQ, _CMP_GT, _CMP_MASKED_EQ = 4, 6, 7
_PROT_WRITE, _PROT_EXEC, _SHM_EXEC = 0x2, 0x4, 0o100000
_PR_SET_NO_NEW_PRIVS = 38
_AF_MAX = 64  # above every family Linux has (46 in 6.x)


def _errno_action(number: int) -> int:
    return 0x00050000 | (number & 0xFFFF)


class _ArgCmp(ctypes.Structure):
    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int),
                ("datum_a", ctypes.c_uint64), ("datum_b", ctypes.c_uint64)]


def service_settings(unit: Path) -> dict[str, list[str]]:
    """The ``[Service]`` section: each key with its values in order (keys repeat)."""
    settings: dict[str, list[str]] = {}
    section = ""
    for raw in unit.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line
        elif section == "[Service]":
            key, _, value = line.partition("=")
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def syscall_groups() -> dict[str, list[str]]:
    """``@group`` -> its members (system calls and other groups), from systemd-analyze."""
    listing = subprocess.run(["systemd-analyze", "syscall-filter", "--no-pager"],
                             capture_output=True, text=True, check=True).stdout
    groups: dict[str, list[str]] = {}
    members: list[str] | None = None
    for line in listing.splitlines():
        if line.startswith("@"):
            members = groups.setdefault(line.strip(), [])
        elif line.startswith("    ") and members is not None and not line.strip().startswith("#"):
            members.append(line.strip())
        elif not line.strip():
            members = None
    return groups


def _expand(names: list[str], groups: dict[str, list[str]]) -> set[str]:
    calls: set[str] = set()
    for name in names:
        calls |= _expand(groups[name], groups) if name.startswith("@") else {name}
    return calls


def allowed_syscalls(filters: list[str], groups: dict[str, list[str]]) -> set[str]:
    """The allow list that systemd builds from the unit's ``SystemCallFilter=`` lines."""
    if not filters or filters[0].startswith("~"):
        raise ValueError("SystemCallFilter= must start with an allow list")
    allowed: set[str] = set()
    for line in filters:
        names = _expand(line.removeprefix("~").split(), groups)
        allowed = allowed - names if line.startswith("~") else allowed | names
    return allowed


class _Seccomp:
    def __init__(self) -> None:
        self.lib = ctypes.CDLL("libseccomp.so.2", use_errno=True)
        self.lib.seccomp_init.restype = ctypes.c_void_p
        self.lib.seccomp_init.argtypes = [ctypes.c_uint32]
        self.lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
        self.lib.seccomp_rule_add_array.argtypes = [
            ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint,
            ctypes.POINTER(_ArgCmp)]
        self.lib.seccomp_load.argtypes = [ctypes.c_void_p]
        self.lib.seccomp_release.argtypes = [ctypes.c_void_p]

    def install(self, default: int, rules: list[tuple[int, str, list[_ArgCmp]]]) -> None:
        """One filter: ``default`` for every call no rule (action, call, conditions) names.
        Calls this machine's libseccomp does not know are left out, as systemd does."""
        ctx = self.lib.seccomp_init(default)
        try:
            for action, name, conditions in rules:
                number = self.lib.seccomp_syscall_resolve_name(name.encode())
                if number < 0:
                    continue
                array = (_ArgCmp * max(1, len(conditions)))(*conditions)
                result = self.lib.seccomp_rule_add_array(ctx, action, number,
                                                         len(conditions), array)
                if result < 0:
                    raise OSError(-result, f"seccomp rule for {name}: {os.strerror(-result)}")
            result = self.lib.seccomp_load(ctx)
            if result < 0:
                raise OSError(-result, f"seccomp_load: {os.strerror(-result)}")
        finally:
            self.lib.seccomp_release(ctx)


def confine(unit: Path) -> None:
    """Install the unit's filters on this process (and so on what it executes)."""
    settings = service_settings(unit)
    seccomp = _Seccomp()
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS)")
    if "UMask" in settings:
        os.umask(int(settings["UMask"][-1], 8))
    families = settings.get("RestrictAddressFamilies")
    if families:
        keep = {int(getattr(socket, name)) for line in families for name in line.split()}
        refuse = _errno_action(errno.EAFNOSUPPORT)
        rules = [(refuse, "socket", [_ArgCmp(0, _CMP_EQ, family, 0)])
                 for family in range(_AF_MAX) if family not in keep]
        rules.append((refuse, "socket", [_ArgCmp(0, _CMP_GT, _AF_MAX - 1, 0)]))
        seccomp.install(_ACT_ALLOW, rules)
    if settings.get("MemoryDenyWriteExecute", ["no"])[-1] == "yes":
        deny = _errno_action(errno.EPERM)
        both = _PROT_WRITE | _PROT_EXEC
        seccomp.install(_ACT_ALLOW, [
            (deny, "mmap", [_ArgCmp(2, _CMP_MASKED_EQ, both, both)]),
            (deny, "mmap2", [_ArgCmp(2, _CMP_MASKED_EQ, both, both)]),
            (deny, "mprotect", [_ArgCmp(2, _CMP_MASKED_EQ, _PROT_EXEC, _PROT_EXEC)]),
            (deny, "pkey_mprotect", [_ArgCmp(2, _CMP_MASKED_EQ, _PROT_EXEC, _PROT_EXEC)]),
            (deny, "shmat", [_ArgCmp(2, _CMP_MASKED_EQ, _SHM_EXEC, _SHM_EXEC)]),
        ])
    filters = settings.get("SystemCallFilter")
    if filters:
        error = settings.get("SystemCallErrorNumber", ["kill"])[-1]
        default = _ACT_KILL_PROCESS if error == "kill" else _errno_action(getattr(errno, error))
        allowed = allowed_syscalls(filters, syscall_groups())
        seccomp.install(default, [(_ACT_ALLOW, name, []) for name in sorted(allowed)])


def main(argv: list[str]) -> None:
    if len(argv) < 2:
        raise SystemExit(__doc__)
    confine(Path(argv[0]))
    os.execvp(argv[1], argv[1:])


if __name__ == "__main__":
    main(sys.argv[1:])
