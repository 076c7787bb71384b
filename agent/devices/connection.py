"""Connection strings: which transport a device uses, picked by URL like pyserial's.

Forms (``docs/devices.md`` has the full table):

* ``serial:///dev/serial/by-id/usb-FTDI_...-if00-port0?baud=9600&bytesize=7&parity=E``
  (also ``stopbits``, ``rtscts``, ``xonxoff``); a bare ``/dev/ttyUSB0``, ``/dev/ttyACM0``
  or ``/dev/ttyS0`` path means serial too.
* ``tcp://10.0.0.5:9100`` (raw TCP, the label printers' JetDirect port).
* ``usb://0922:8003`` with optional ``?serial=ABC123&interface=0`` (pyusb).
* ``file:///dev/usb/lp0`` or a bare ``/dev/usb/lp0``: a printer's device file.
* ``evdev:///dev/input/by-id/usb-...-event-kbd``: a keyboard-wedge scanner.
* cameras: ``/dev/video0``, ``video:0`` (device index), ``file:///srv/clip.mp4``, an
  image sequence ``images:///srv/frames/frame_%03d.png``, ``rtsp://...``, ``http(s)://``.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, urlsplit

SERIAL_PARAMS = {"baud", "bytesize", "parity", "stopbits", "rtscts", "xonxoff"}
USB_PARAMS = {"serial", "interface"}
_SCHEMES_BY_KIND: dict[str, tuple[str, ...]] = {
    "scanner": ("serial", "evdev", "tcp"),
    "scale": ("serial", "usb", "tcp"),
    "printer": ("tcp", "usb", "file", "serial"),
    "camera": ("camera",),
    "signal": ("serial", "usb", "tcp"),
}
_SERIAL_PATH = re.compile(r"^/dev/(tty\w+|serial/.+|pts/\d+)$")


@dataclass(frozen=True)
class Connection:
    """A parsed connection string. ``resource`` identifies the port one driver owns."""

    raw: str
    scheme: str
    path: str = ""
    host: str = ""
    port: int = 0
    vid: int = 0
    pid: int = 0
    params: dict[str, str] = field(default_factory=dict)

    @property
    def resource(self) -> str:
        """The same for two strings that reach the same port (used to refuse sharing)."""
        if self.scheme in ("serial", "file", "evdev") or (
            self.scheme == "camera" and self.path.startswith("/dev/")
        ):
            return f"dev:{os.path.realpath(self.path)}"
        if self.scheme == "tcp":
            return f"tcp:{self.host.lower()}:{self.port}"
        if self.scheme == "usb":
            return f"usb:{self.vid:04x}:{self.pid:04x}:{self.params.get('serial', '')}"
        return f"{self.scheme}:{self.path}"

    def describe(self) -> str:
        """Human text for logs and status (no credentials of an RTSP URL)."""
        if self.scheme == "camera" and "@" in self.path:
            split = urlsplit(self.path)
            return split._replace(netloc=split.netloc.rsplit("@", 1)[1]).geturl()
        return self.raw


def parse_connection(kind: str, raw: str) -> Connection:
    """Parse ``raw`` for a device of ``kind``.

    Raises:
        ValueError: saying what is wrong and which forms the kind accepts.
    """
    allowed = _SCHEMES_BY_KIND[kind]
    text = raw.strip()
    if not text:
        raise ValueError("connection is empty")
    if kind == "camera":
        return _camera(text)
    if text.startswith("/"):
        if text.startswith("/dev/usb/lp") and "file" in allowed:
            text = "file://" + text
        elif _SERIAL_PATH.match(text) and "serial" in allowed:
            text = "serial://" + text
        else:
            raise ValueError(f"{raw!r}: a bare path must be a serial port (/dev/tty*, "
                             f"/dev/serial/by-id/...) or a printer's /dev/usb/lp*; "
                             f"use one of {_forms(allowed)}")
    split = urlsplit(text)
    scheme = split.scheme
    if scheme not in allowed:
        raise ValueError(f"{raw!r}: a {kind} connects by {_forms(allowed)}, not {scheme!r}")
    params = dict(parse_qsl(split.query, keep_blank_values=True))
    if scheme in ("serial", "file", "evdev"):
        if split.netloc or not split.path.startswith("/"):
            raise ValueError(f"{raw!r}: expected {scheme}:///absolute/path (three slashes)")
        known = SERIAL_PARAMS if scheme == "serial" else set()
        _known_params(raw, params, known)
        if scheme == "serial":
            _check_serial(raw, params)
        return Connection(raw, scheme, path=split.path, params=params)
    if scheme == "tcp":
        try:
            port = split.port
        except ValueError as exc:
            raise ValueError(f"{raw!r}: port must be 1-65535") from exc
        if not split.hostname or port is None:
            raise ValueError(f"{raw!r}: expected tcp://HOST:PORT, for example tcp://10.0.0.5:9100")
        _known_params(raw, params, set())
        return Connection(raw, scheme, host=split.hostname, port=port)
    # usb://VID:PID
    match = re.fullmatch(r"([0-9A-Fa-f]{4}):([0-9A-Fa-f]{4})", split.netloc)
    if not match or split.path not in ("", "/"):
        raise ValueError(f"{raw!r}: expected usb://VID:PID with 4 hex digits each, "
                         "for example usb://0922:8003")
    _known_params(raw, params, USB_PARAMS)
    if "interface" in params and not params["interface"].isdigit():
        raise ValueError(f"{raw!r}: interface must be a number")
    return Connection(raw, scheme, vid=int(match[1], 16), pid=int(match[2], 16), params=params)


def _camera(text: str) -> Connection:
    if re.fullmatch(r"video:\d{1,3}", text):
        return Connection(text, "camera", path=text, params={"index": text[6:]})
    if text.startswith("/"):
        return Connection(text, "camera", path=text)
    split = urlsplit(text)
    if split.scheme in ("file", "images"):
        if split.netloc or not split.path.startswith("/"):
            raise ValueError(f"{text!r}: expected {split.scheme}:///absolute/path")
        return Connection(text, "camera", path=split.path,
                          params={"sequence": "1"} if split.scheme == "images" else {})
    if split.scheme in ("rtsp", "rtsps", "http", "https") and split.hostname:
        return Connection(text, "camera", path=text)
    raise ValueError(f"{text!r}: a camera is /dev/videoN, video:N, file:///path, "
                     "images:///path/frame_%03d.png, rtsp://host/... or http(s)://host/...")


def _forms(schemes: tuple[str, ...]) -> str:
    examples = {
        "serial": "serial:///dev/ttyUSB0?baud=9600",
        "tcp": "tcp://HOST:PORT",
        "usb": "usb://VID:PID",
        "file": "file:///dev/usb/lp0",
        "evdev": "evdev:///dev/input/by-id/...-event-kbd",
    }
    return ", ".join(examples[s] for s in schemes)


def _known_params(raw: str, params: dict[str, str], known: set[str]) -> None:
    unknown = sorted(set(params) - known)
    if unknown:
        allowed = ", ".join(sorted(known)) or "none"
        raise ValueError(f"{raw!r}: unknown option {', '.join(unknown)}; allowed: {allowed}")


def _check_serial(raw: str, params: dict[str, str]) -> None:
    rules = {
        "baud": r"\d{3,7}",
        "bytesize": r"[5-8]",
        "parity": r"[NEOMS]",
        "stopbits": r"1|1\.5|2",
        "rtscts": r"[01]",
        "xonxoff": r"[01]",
    }
    for key, value in params.items():
        if not re.fullmatch(rules[key], value):
            raise ValueError(f"{raw!r}: {key}={value!r} is not valid (expected {rules[key]})")
