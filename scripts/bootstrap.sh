#!/usr/bin/env bash
# Installs what bench-agent needs, idempotently: Debian packages (mosquitto, systemd's
# tools, a Python 3.11+ with venv, libzbar0 for pyzbar, a C compiler and headers for
# evdev's extension) via apt-get when missing, then the virtualenv .venv with the project
# and its dev tools. Safe to run again; it does nothing when all is in place.
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

apt_packages=()
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || apt_packages+=(mosquitto)
command -v mosquitto_pub >/dev/null 2>&1 || apt_packages+=(mosquitto-clients)
# tests/test_systemd.py checks systemd/ with systemd's own tools (systemd-analyze,
# systemd-sysusers, its udev rules) and libseccomp, which come with the package.
command -v systemd-analyze >/dev/null 2>&1 || apt_packages+=(systemd)
# tests/test_faults.py moves the agent's wall clock with libfaketime (LD_PRELOAD).
ls /usr/lib/*/faketime/libfaketimeMT.so.1 >/dev/null 2>&1 || apt_packages+=(libfaketime)

python=""
for candidate in python3.13 python3.12 python3.11 python3; do
    if command -v "$candidate" >/dev/null 2>&1 &&
        "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
        python="$candidate"
        break
    fi
done
if [ -z "$python" ]; then
    apt_packages+=(python3.11 python3.11-venv)
    python=python3.11
elif ! "$python" -c 'import ensurepip, venv' >/dev/null 2>&1; then
    apt_packages+=("$(basename "$python")-venv")
fi

# pyzbar loads libzbar.so.0 at import; evdev builds a C extension against the kernel's
# input headers and the chosen Python's headers.
ldconfig -p 2>/dev/null | grep -q 'libzbar\.so\.0' || apt_packages+=(libzbar0)
command -v gcc >/dev/null 2>&1 || apt_packages+=(gcc)
[ -f /usr/include/linux/input.h ] || apt_packages+=(linux-libc-dev)
has_headers='import os, sys, sysconfig
sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))'
if [ "$python" = python3.11 ] && ! command -v python3.11 >/dev/null 2>&1; then
    apt_packages+=(python3.11-dev)
elif ! "$python" -c "$has_headers" 2>/dev/null; then
    apt_packages+=("$(basename "$python")-dev")
fi

if [ ${#apt_packages[@]} -gt 0 ]; then
    echo "bootstrap: installing Debian packages: ${apt_packages[*]}"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${apt_packages[@]}" >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
    echo "bootstrap: creating .venv with $python"
    "$python" -m venv .venv
fi
stamp=.venv/.bench-agent-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    echo "bootstrap: installing bench-agent and its Python packages into .venv"
    .venv/bin/python -m pip install -q --upgrade pip
    .venv/bin/python -m pip install -q -e '.[dev]'
    touch "$stamp"
fi
