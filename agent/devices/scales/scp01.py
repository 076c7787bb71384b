"""Avery Weigh-Tronix / NCI standard protocol SCP-01 (NCI bench and parcel scales).

Factory default 9600 baud, 7 data bits, even parity, 1 stop bit on the parcel scales
(some POS models use 8N1: ``?bytesize=8&parity=N``). Requests end with CR; the NCI
standard set is ``W`` weight, ``S`` status, ``Z`` zero (plus ``H`` ten-times weight,
``U`` change units, ``M`` raw counts). There is no tare command.

Every reply starts with LF and ends with CR ETX:

* weight: ``<LF>  1.25kg<CR><LF><hh...><CR><ETX>``; lb-oz scales send
  ``<LF>2lb 3.5oz<CR>...``; a non-weight display (``^^^^^^`` over capacity, ``______``
  under capacity, ``------`` zero error, a menu) comes in place of the weight.
* status only: ``<LF><hh...><CR><ETX>`` in answer to ``S`` and ``Z``, and to ``W`` on
  models that send no weight while it is below zero, moving or out of range (some
  models put an ``S`` before the status bytes).
* unknown command: ``<LF>?<CR><ETX>``.

Status bytes (bit 7 parity, bits 4 and 5 always 1):

====  ======================  ==========================  ============================
bit   byte 1                  byte 2                      byte 3 (optional)
====  ======================  ==========================  ============================
0     motion                  under capacity              range (with bit 1)
1     at zero                 over capacity
2     RAM error               ROM error                   net weight
3     EEPROM error            faulty calibration          initial zero error
6     always 0                another byte follows        another byte follows
====  ======================  ==========================  ============================
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import ClassVar

from agent.devices.readings import WeightCondition
from agent.devices.scales import (
    GRAMS_PER_UNIT,
    Action,
    Framer,
    ScaleFrame,
    ScaleProtocol,
    parse_number,
    shown,
    to_grams,
)
from agent.devices.transport import SerialLine
from agent.errors import DeviceError, ProtocolError

WEIGH = b"W\r"
STATUS = b"S\r"
ZERO = b"Z\r"
LF = b"\n"
ETX = b"\x03"
LINE = SerialLine(9600, 7, "E", 1)

_WEIGHT = re.compile(r"\s*(?P<value>-?\s*[\d.]+)\s*(?P<unit>lb|kg|oz|g)\s*", re.IGNORECASE)
_LB_OZ = re.compile(r"\s*(?P<sign>-?)\s*(?P<lb>\d+)\s*lb\s+(?P<oz>[\d.]+)\s*oz\s*",
                    re.IGNORECASE)
_MAX_STATUS_BYTES = 4


@dataclass(frozen=True, slots=True)
class Scp01Reply:
    """One reply: status bytes (parity dropped) and the line before them, if any."""

    status: bytes = b""
    grams: float | None = None
    display: str | None = None
    unrecognized: bool = False

    def bit(self, byte: int, bit: int) -> bool:
        return len(self.status) > byte and bool(self.status[byte] & (1 << bit))

    @property
    def motion(self) -> bool:
        return self.bit(0, 0)

    @property
    def under_capacity(self) -> bool:
        return self.bit(1, 0)

    @property
    def over_capacity(self) -> bool:
        return self.bit(1, 1)

    @property
    def net(self) -> bool:
        return self.bit(2, 2)

    def fault(self) -> str | None:
        """The scale's own errors in words, or ``None``."""
        errors = [name for present, name in (
            (self.bit(0, 2), "RAM error"), (self.bit(0, 3), "EEPROM error"),
            (self.bit(1, 2), "ROM error"), (self.bit(1, 3), "faulty calibration"),
            (self.bit(2, 3), "initial zero error: empty the pan and zero it"),
        ) if present]
        return "; ".join(errors) or None


def _status(raw: bytes, frame: bytes) -> bytes:
    if raw.startswith(b"S") and len(raw) > 2:
        raw = raw[1:]
    status = bytes(b & 0x7F for b in raw)
    valid = 2 <= len(status) <= _MAX_STATUS_BYTES and status[0] & 0x70 == 0x30 and all(
        b & 0x30 == 0x30 and bool(b & 0x40) == (i < len(status) - 1)
        for i, b in enumerate(status[1:], start=1))
    if not valid:
        raise ProtocolError(f"expected SCP-01 status bytes (2 to {_MAX_STATUS_BYTES}, bits 4 "
                            f"and 5 set, bit 6 chaining the bytes), got {shown(raw)} in "
                            f"{shown(frame)}")
    return status


def _line(text: str) -> tuple[float | None, str | None]:
    """The weight line as grams, or as display text when it holds no weight."""
    if match := _LB_OZ.fullmatch(text):
        ounces = int(match["lb"]) * 16 + parse_number(match["oz"], "the ounces")
        return to_grams(-ounces if match["sign"] else ounces, "oz"), None
    if match := _WEIGHT.fullmatch(text):
        return to_grams(parse_number(match["value"], "the weight"), match["unit"]), None
    if any(c.isdigit() for c in text) and text.strip().lower().endswith(
            tuple(GRAMS_PER_UNIT)):
        raise ProtocolError(f"expected an SCP-01 weight such as '  1.25kg', got {text!r}")
    return None, text


def parse(frame: bytes) -> Scp01Reply:
    """Parse one ``<LF>...<CR><ETX>`` reply.

    Raises:
        ProtocolError: not an SCP-01 reply.
    """
    if not frame.startswith(LF) or not frame.endswith(b"\r" + ETX):
        raise ProtocolError(f"expected an SCP-01 reply <LF>...<CR><ETX>, got {shown(frame)}")
    body = frame[1:-2]
    if body == b"?":
        return Scp01Reply(unrecognized=True)
    parts = body.split(b"\r\n")
    if len(parts) > 2:
        raise ProtocolError(f"expected at most a weight line and a status line, got "
                            f"{shown(frame)}")
    status = _status(parts[-1], frame)
    if len(parts) == 1:
        return Scp01Reply(status)
    try:
        text = parts[0].decode("ascii")
    except UnicodeDecodeError:
        text = ""
    if not text or not text.isprintable():
        raise ProtocolError(f"expected an SCP-01 weight or display line, got "
                            f"{shown(parts[0])}")
    grams, display = _line(text)
    return Scp01Reply(status, grams, display)


class ReplyFramer(Framer):
    """``<LF>`` to ``<ETX>``; an LF not preceded by CR starts a new reply (junk before)."""

    def __init__(self) -> None:
        super().__init__(ETX, LF)

    def restarts(self) -> bool:
        return not self._buffer.endswith(b"\r")


class Scp01(ScaleProtocol[Scp01Reply]):
    """SCP-01 polled with ``W<CR>``; zero with ``Z<CR>``; no tare commands."""

    name = "scp-01"
    line = LINE
    weigh_request = WEIGH
    requests: ClassVar[dict[Action, bytes]] = {"zero": ZERO}

    def framer(self) -> Framer:
        return ReplyFramer()

    def parse(self, chunk: bytes) -> Scp01Reply:
        return parse(chunk)

    def weight(self, reply: Scp01Reply) -> ScaleFrame | None:
        if reply.unrecognized:
            raise ProtocolError("expected a weight reply to W, got <LF>?<CR><ETX> "
                                "(the scale does not know the command)")
        fault = reply.fault()
        if reply.over_capacity:
            return ScaleFrame(WeightCondition.OVERLOAD, None, False, reply.net, fault)
        if reply.under_capacity:
            return ScaleFrame(WeightCondition.UNDERLOAD, None, False, reply.net, fault)
        if reply.grams is not None:
            return ScaleFrame.weight(reply.grams, stable=not reply.motion, net=reply.net,
                                     fault=fault)
        if reply.display is None and not reply.motion and fault is None:
            # Status only, not moving, in range: the weight is below zero.
            return ScaleFrame(WeightCondition.UNDER_ZERO, None, False, reply.net)
        return ScaleFrame.no_value(fault=fault)

    def outcome(self, action: Action, reply: Scp01Reply) -> bool:
        if reply.unrecognized:
            raise DeviceError(f"the scale does not know {action.replace('_', ' ')} "
                              "(<LF>?<CR><ETX>)", code="unsupported")
        if reply.grams is not None or reply.display is not None:
            return False  # a weight reply: not the answer
        if reply.motion or reply.over_capacity or reply.under_capacity:
            why = ", ".join(name for present, name in (
                (reply.motion, "motion"), (reply.over_capacity, "over capacity"),
                (reply.under_capacity, "under capacity")) if present)
            raise DeviceError(f"the scale did not zero ({why})", code="command_failed")
        return True
