"""A pyusb backend with simulated USB devices: real pyusb, no hardware.

pyusb talks to USB through a backend object (``usb.backend.IBackend``, normally libusb1).
:class:`SimBackend` implements that interface for devices made of Python objects, so a
test or demo exercises the agent's real pyusb code: ``usb.core.find``, kernel-driver
detach, ``set_configuration``, ``claim_interface``, string descriptors (serial numbers),
bulk and interrupt transfers, timeouts and ``ENODEV`` after an unplug.

Install it with ``agent.devices.usb.use_backend(SimBackend([...]))``.
"""

from __future__ import annotations

import errno
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import usb.backend
import usb.core

_LIBUSB_ERROR_TIMEOUT = -7
_LIBUSB_ERROR_NO_DEVICE = -4


@dataclass
class SimUsbDevice:
    """One simulated device with one interface: an IN and optionally an OUT endpoint.

    ``feed`` queues bytes the host reads from the IN endpoint; ``written`` collects what
    the host sent to the OUT endpoint; ``on_write`` lets a simulator answer.
    """

    vid: int
    pid: int
    serial: str = "SIM0001"
    product: str = "Simulated device"
    interface_class: int = 0x07  # printer class; a HID scale uses 0x03
    endpoint_type: int = 2  # 2 = bulk, 3 = interrupt (bmAttributes & 3)
    has_out: bool = True
    max_packet: int = 64
    on_write: Callable[[bytes], None] | None = None
    written: list[bytes] = field(default_factory=list)
    plugged: bool = True
    kernel_driver: bool = True
    _in: queue.Queue[bytes] = field(default_factory=queue.Queue)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def feed(self, data: bytes) -> None:
        self._in.put(bytes(data))

    def unplug(self) -> None:
        self.plugged = False
        self._in.put(b"")  # wakes a blocked read, which then fails with ENODEV

    def replug(self) -> None:
        self._in = queue.Queue()
        self.kernel_driver = True
        self.plugged = True


def _fill(buffer: Any, data: bytes) -> None:
    """Copy into the ``array('B')`` pyusb passes for an IN transfer."""
    for index, byte in enumerate(data):
        buffer[index] = byte


def _gone() -> usb.core.USBError:
    return usb.core.USBError("No such device (it may have been disconnected)",
                             _LIBUSB_ERROR_NO_DEVICE, errno.ENODEV)


class SimBackend(usb.backend.IBackend):  # type: ignore[misc]
    """The backend: enumerates the plugged simulated devices and performs transfers."""

    def __init__(self, devices: list[SimUsbDevice]) -> None:
        self.devices = devices
        self._configured: dict[int, int] = {}

    # -- enumeration and descriptors
    def enumerate_devices(self) -> list[SimUsbDevice]:
        return [d for d in self.devices if d.plugged]

    def get_device_descriptor(self, dev: SimUsbDevice) -> Any:
        index = self.devices.index(dev)
        return SimpleNamespace(
            bLength=18, bDescriptorType=1, bcdUSB=0x0200, bDeviceClass=0, bDeviceSubClass=0,
            bDeviceProtocol=0, bMaxPacketSize0=64, idVendor=dev.vid, idProduct=dev.pid,
            bcdDevice=0x0100, iManufacturer=1, iProduct=2, iSerialNumber=3,
            bNumConfigurations=1, address=index + 2, bus=1, port_number=index + 1,
            port_numbers=(index + 1,), speed=2)

    def get_configuration_descriptor(self, dev: SimUsbDevice, config: int) -> Any:
        return SimpleNamespace(
            bLength=9, bDescriptorType=2, wTotalLength=32, bNumInterfaces=1,
            bConfigurationValue=1, iConfiguration=0, bmAttributes=0x80, bMaxPower=50,
            extra_descriptors=[])

    def get_interface_descriptor(self, dev: SimUsbDevice, intf: int, alt: int,
                                 config: int) -> Any:
        if intf != 0 or alt != 0:
            raise IndexError("no such interface")
        return SimpleNamespace(
            bLength=9, bDescriptorType=4, bInterfaceNumber=0, bAlternateSetting=0,
            bNumEndpoints=2 if dev.has_out else 1, bInterfaceClass=dev.interface_class,
            bInterfaceSubClass=0, bInterfaceProtocol=0, iInterface=0, extra_descriptors=[])

    def get_endpoint_descriptor(self, dev: SimUsbDevice, ep: int, intf: int, alt: int,
                                config: int) -> Any:
        address = 0x81 if ep == 0 else 0x02
        if ep > (1 if dev.has_out else 0):
            raise IndexError("no such endpoint")
        return SimpleNamespace(
            bLength=7, bDescriptorType=5, bEndpointAddress=address,
            bmAttributes=dev.endpoint_type, wMaxPacketSize=dev.max_packet, bInterval=10,
            bRefresh=0, bSynchAddress=0, extra_descriptors=[])

    def get_parent(self, dev: SimUsbDevice) -> None:
        return None

    # -- handles and configuration
    def open_device(self, dev: SimUsbDevice) -> SimUsbDevice:
        if not dev.plugged:
            raise _gone()
        return dev

    def close_device(self, dev_handle: SimUsbDevice) -> None:
        return None

    def set_configuration(self, dev_handle: SimUsbDevice, config_value: int) -> None:
        self._configured[id(dev_handle)] = config_value

    def get_configuration(self, dev_handle: SimUsbDevice) -> int:
        return self._configured.get(id(dev_handle), 0)

    def set_interface_altsetting(self, dev_handle: SimUsbDevice, intf: int, alt: int) -> None:
        return None

    def claim_interface(self, dev_handle: SimUsbDevice, intf: int) -> None:
        if not dev_handle.plugged:
            raise _gone()
        if dev_handle.kernel_driver:
            raise usb.core.USBError("Resource busy", -6, errno.EBUSY)

    def release_interface(self, dev_handle: SimUsbDevice, intf: int) -> None:
        return None

    def is_kernel_driver_active(self, dev_handle: SimUsbDevice, intf: int) -> bool:
        return dev_handle.kernel_driver

    def detach_kernel_driver(self, dev_handle: SimUsbDevice, intf: int) -> None:
        dev_handle.kernel_driver = False

    def attach_kernel_driver(self, dev_handle: SimUsbDevice, intf: int) -> None:
        dev_handle.kernel_driver = True

    def reset_device(self, dev_handle: SimUsbDevice) -> None:
        return None

    def clear_halt(self, dev_handle: SimUsbDevice, ep: int) -> None:
        return None

    # -- transfers
    def ctrl_transfer(self, dev_handle: SimUsbDevice, bmRequestType: int, bRequest: int,
                      wValue: int, wIndex: int, data: Any, timeout: int) -> int:
        if not dev_handle.plugged:
            raise _gone()
        if bRequest == 6 and wValue >> 8 == 3:  # GET_DESCRIPTOR, string
            index = wValue & 0xFF
            if index == 0:
                body = (0x0409).to_bytes(2, "little")  # language: English (US)
            else:
                text = {1: "bench-agent simulators", 2: dev_handle.product,
                        3: dev_handle.serial}.get(index, "")
                body = text.encode("utf-16-le")
            payload = bytes([2 + len(body), 3]) + body
            count = min(len(payload), len(data))
            _fill(data, payload[:count])
            return count
        return 0

    def _write(self, dev_handle: SimUsbDevice, data: Any) -> int:
        if not dev_handle.plugged:
            raise _gone()
        chunk = bytes(data)
        dev_handle.written.append(chunk)
        if dev_handle.on_write is not None:
            dev_handle.on_write(chunk)
        return len(chunk)

    def _read(self, dev_handle: SimUsbDevice, buff: Any, timeout: int) -> int:
        if not dev_handle.plugged:
            raise _gone()
        try:
            chunk = dev_handle._in.get(timeout=max(timeout, 1) / 1000)
        except queue.Empty:
            raise usb.core.USBTimeoutError("Operation timed out", _LIBUSB_ERROR_TIMEOUT,
                                           errno.ETIMEDOUT) from None
        if not dev_handle.plugged:
            raise _gone()
        count = min(len(chunk), len(buff))
        _fill(buff, chunk[:count])
        return count

    def bulk_write(self, dev_handle: SimUsbDevice, ep: int, intf: int, data: Any,
                   timeout: int) -> int:
        return self._write(dev_handle, data)

    def bulk_read(self, dev_handle: SimUsbDevice, ep: int, intf: int, buff: Any,
                  timeout: int) -> int:
        return self._read(dev_handle, buff, timeout)

    def intr_write(self, dev_handle: SimUsbDevice, ep: int, intf: int, data: Any,
                   timeout: int) -> int:
        return self._write(dev_handle, data)

    def intr_read(self, dev_handle: SimUsbDevice, ep: int, intf: int, buff: Any,
                  timeout: int) -> int:
        return self._read(dev_handle, buff, timeout)
