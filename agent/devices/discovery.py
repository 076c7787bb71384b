"""Discovery: the candidate hardware on this bench, for installation day and the CLI.

Lists serial ports with their stable ``/dev/serial/by-id`` names, USB devices that are
known scales or printers by VID:PID (or by their USB interface class), evdev input
devices that look like barcode scanners, and video devices. Each entry carries a
suggested ``connection`` string ready to paste into ``[devices.NAME]``. Discovery only
reads (sysfs, ``/dev`` links, USB descriptors); it opens no serial port and grabs nothing,
so it is safe while the agent runs.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import evdev
from serial.tools import list_ports

from agent.devices.usb import find_devices

KNOWN_USB: dict[tuple[int, int | None], tuple[str, str]] = {
    # HID POS scales (usage page 0x8D)
    (0x0922, 0x8003): ("scale", "Dymo M10 postal scale (HID POS)"),
    (0x0922, 0x8004): ("scale", "Dymo M25 postal scale (HID POS)"),
    (0x0922, 0x8009): ("scale", "Dymo S250 shipping scale (HID POS)"),
    (0x1446, 0x6A73): ("scale", "Stamps.com postal scale (HID POS)"),
    (0x1446, 0x6A74): ("scale", "Stamps.com postal scale (HID POS)"),
    (0x0EB8, 0xF000): ("scale", "Mettler Toledo PS60 class scale (HID POS)"),
    (0x0B67, 0x555E): ("scale", "Fairbanks SCB-R9000 scale (HID POS)"),
    # Label and receipt printers: a whole vendor when all its devices are printers.
    (0x0A5F, None): ("printer", "Zebra label printer (ZPL)"),
    (0x1203, None): ("printer", "TSC label printer (TSPL)"),
    (0x0922, 0x0020): ("printer", "Dymo LabelWriter 450"),
    (0x04B8, 0x0202): ("printer", "Epson TM receipt printer (ESC/POS)"),
    (0x04B8, 0x0E15): ("printer", "Epson TM-T20II receipt printer (ESC/POS)"),
    (0x0416, 0x5011): ("printer", "Winbond-based receipt printer (ESC/POS)"),
    (0x0483, 0x5743): ("printer", "Xprinter receipt printer (ESC/POS)"),
    (0x28E9, 0x0289): ("printer", "Xprinter label printer (TSPL)"),
    (0x1FC9, 0x2016): ("printer", "Xprinter receipt printer (ESC/POS)"),
}
"""VID:PID -> (kind, what it is). ``None`` as PID matches every product of the vendor."""

_SCANNER_WORDS = ("scanner", "barcode", "honeywell", "symbol", "zebra", "datalogic",
                  "newland", "opticon", "metrologic", "hand held", "code reader", "netum")
_USB_PRINTER_CLASS = 0x07


def _by_id_links(folder: Path) -> dict[str, str]:
    """Real device path -> its stable link in ``folder`` (``/dev/serial/by-id``...)."""
    links: dict[str, str] = {}
    try:
        entries = sorted(folder.iterdir())
    except OSError:
        return links
    for link in entries:
        links.setdefault(os.path.realpath(link), str(link))
    return links


def serial_ports(dev_root: Path = Path("/dev")) -> list[dict[str, Any]]:
    """Serial ports (USB serial adapters, USB-CDC scanners, on-board UARTs in use)."""
    by_id = _by_id_links(dev_root / "serial" / "by-id")
    ports = []
    for port in sorted(list_ports.comports(), key=lambda p: p.device):
        stable = by_id.get(os.path.realpath(port.device), port.device)
        ports.append({
            "kind": None,
            "what": port.description if port.description != "n/a" else "serial port",
            "path": port.device,
            "stable_path": stable,
            "usb": f"{port.vid:04x}:{port.pid:04x}" if port.vid is not None else None,
            "serial_number": port.serial_number,
            "connection": f"serial://{stable}?baud=9600",
        })
    return ports


def usb_devices() -> list[dict[str, Any]]:
    """USB devices recognised as scales or printers by VID:PID or interface class."""
    found = []
    for device in find_devices():
        vid, pid = int(device.idVendor), int(device.idProduct)
        kind, what = KNOWN_USB.get((vid, pid)) or KNOWN_USB.get((vid, None)) or (None, "")
        if kind is None and _has_printer_interface(device):
            kind, what = "printer", "USB printer-class device"
        if kind is None:
            continue
        serial = _string(device, "serial_number")
        query = f"?serial={serial}" if serial else ""
        found.append({
            "kind": kind,
            "what": what,
            "usb": f"{vid:04x}:{pid:04x}",
            "serial_number": serial,
            "product": _string(device, "product"),
            "connection": f"usb://{vid:04x}:{pid:04x}{query}",
        })
    return found


def _string(device: Any, attribute: str) -> str | None:
    """A string descriptor; ``None`` when the agent may not read it (no udev rule yet)."""
    try:
        value = getattr(device, attribute)
    except (ValueError, OSError, NotImplementedError):
        return None
    return str(value) if value else None


def _has_printer_interface(device: Any) -> bool:
    try:
        return any(interface.bInterfaceClass == _USB_PRINTER_CLASS
                   for config in device for interface in config)
    except (ValueError, OSError):
        return False


def input_devices(dev_root: Path = Path("/dev")) -> list[dict[str, Any]]:
    """evdev keyboards whose name or vendor looks like a barcode scanner."""
    by_id = _by_id_links(dev_root / "input" / "by-id")
    found = []
    for path in evdev.list_devices(str(dev_root / "input")):
        try:
            device = evdev.InputDevice(path)
        except OSError:
            continue  # no permission or gone: the udev rule gives the agent's group access
        try:
            keys = device.capabilities().get(evdev.ecodes.EV_KEY, [])
            name, vendor, product = device.name, device.info.vendor, device.info.product
        finally:
            device.close()
        if evdev.ecodes.KEY_ENTER not in keys or evdev.ecodes.KEY_1 not in keys:
            continue
        looks_like_scanner = any(word in name.lower() for word in _SCANNER_WORDS)
        stable = by_id.get(os.path.realpath(path), path)
        found.append({
            "kind": "scanner" if looks_like_scanner else None,
            "what": name if looks_like_scanner else f"keyboard: {name}",
            "path": path,
            "stable_path": stable,
            "usb": f"{vendor:04x}:{product:04x}",
            "connection": f"evdev://{stable}",
        })
    return found


def video_devices(sys_root: Path = Path("/sys"), dev_root: Path = Path("/dev")
                  ) -> list[dict[str, Any]]:
    """Video capture devices with their names from sysfs and stable ``/dev/v4l`` links."""
    by_id = _by_id_links(dev_root / "v4l" / "by-id")
    found: list[dict[str, Any]] = []
    folder = sys_root / "class" / "video4linux"
    try:
        entries = sorted(folder.iterdir())
    except OSError:
        return found
    for entry in entries:
        try:
            name = (entry / "name").read_text(encoding="utf-8", errors="replace").strip()
            index = (entry / "index").read_text(encoding="ascii").strip()
        except OSError:
            name, index = "video device", "0"
        if index != "0":
            continue  # one camera registers several nodes; index 0 is the capture node
        path = str(dev_root / entry.name)
        stable = by_id.get(os.path.realpath(path), path)
        found.append({"kind": "camera", "what": name, "path": path, "stable_path": stable,
                      "connection": stable})
    return found


def discover(dev_root: Path = Path("/dev"), sys_root: Path = Path("/sys")) -> dict[str, Any]:
    """Everything discovery finds, grouped by what it is."""
    return {
        "serial": serial_ports(dev_root),
        "usb": usb_devices(),
        "input": input_devices(dev_root),
        "video": video_devices(sys_root, dev_root),
    }
