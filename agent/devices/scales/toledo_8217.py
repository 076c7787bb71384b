"""Mettler Toledo 8217 (the "Toledo" protocol of POS scales and scanner-scales).

9600 baud, 7 data bits, even parity, 1 stop bit. Requests are single ASCII characters
with no terminator: ``W`` weight, ``Z`` zero, ``T`` tare, ``C`` clear tare.

* Weight record, sent only for a stable weight in range: ``<STX>`` weight ``<CR>``, for
  example ``\\x02 1.250\\r``; many emulations (Brecknell, Rice Lake) append the unit
  (``\\x02 1.250kg\\r``). Without a unit the scale's configured unit applies:
  :data:`DEFAULT_UNIT`.
* Status record, sent instead while the pan moves, under zero or over capacity, and in
  answer to ``Z``, ``T``, ``C``: ``<STX>?<status><CR>``. Status byte bits: 0 motion,
  1 over capacity, 2 under zero, 3 outside the zero capture range, 4 centre of zero,
  5 and 6 always 1, 7 parity. So ``?a`` (0x61) is "moving", ``?d`` (0x64) "under zero",
  ``?b`` (0x62) "over capacity", ``?p`` (0x70) "at the centre of zero".

The scale ignores ``Z`` while moving, over capacity or outside its zero range, and ``T``
while moving or out of range, answering with the status record either way: the driver
reads a refusal from the status bits.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import ClassVar

from agent.devices.readings import WeightCondition
from agent.devices.scales import (
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

WEIGH = b"W"
ZERO = b"Z"
TARE = b"T"
CLEAR_TARE = b"C"
STX = b"\x02"
CR = b"\r"
LINE = SerialLine(9600, 7, "E", 1)
DEFAULT_UNIT = "kg"
"""Unit of weight records that carry none (the 8217 sends the displayed digits only)."""

MOTION = 0x01
OVER_CAPACITY = 0x02
UNDER_ZERO = 0x04
OUTSIDE_ZERO_RANGE = 0x08
CENTRE_OF_ZERO = 0x10
_ALWAYS_SET = 0x60

_WEIGHT = re.compile(rb"(?P<value>[-+]?[ \d.]+?) *(?P<unit>lb|kg|oz|g|LB|KG|OZ|G)?")


@dataclass(frozen=True, slots=True)
class Toledo8217Record:
    """A weight record (``grams``) or a status record (``status``, parity bit dropped)."""

    grams: float | None = None
    status: int | None = None

    def flags(self) -> list[str]:
        """The status bits that are set, in words."""
        names = {MOTION: "motion", OVER_CAPACITY: "over capacity", UNDER_ZERO: "under zero",
                 OUTSIDE_ZERO_RANGE: "outside zero capture range",
                 CENTRE_OF_ZERO: "centre of zero"}
        return [name for bit, name in names.items() if (self.status or 0) & bit]


def parse(frame: bytes) -> Toledo8217Record:
    """Parse one ``<STX>...<CR>`` record.

    Raises:
        ProtocolError: not an 8217 weight or status record.
    """
    if not frame.startswith(STX) or not frame.endswith(CR):
        raise ProtocolError(f"expected an 8217 record <STX>...<CR>, got {shown(frame)}")
    body = frame[1:-1]
    if body.startswith(b"?"):
        if len(body) != 2 or body[1] & _ALWAYS_SET != _ALWAYS_SET:
            raise ProtocolError(f"expected an 8217 status record <STX>?<status><CR> with "
                                f"bits 5 and 6 set, got {shown(frame)}")
        return Toledo8217Record(status=body[1] & 0x7F)
    match = _WEIGHT.fullmatch(body)
    if match is None or not re.search(rb"\d", body):
        raise ProtocolError(f"expected an 8217 weight record such as <STX> 1.250<CR>, "
                            f"got {shown(frame)}")
    value = parse_number(match["value"].decode("ascii").strip(), "the weight")
    unit = (match["unit"] or DEFAULT_UNIT.encode()).decode("ascii")
    return Toledo8217Record(grams=to_grams(value, unit))


class Toledo8217(ScaleProtocol[Toledo8217Record]):
    """The 8217 protocol, polled with ``W``."""

    name = "toledo-8217"
    line = LINE
    weigh_request = WEIGH
    requests: ClassVar[dict[Action, bytes]] = {
        "zero": ZERO, "tare": TARE, "clear_tare": CLEAR_TARE}

    def framer(self) -> Framer:
        return Framer(CR, STX, restart=True)

    def parse(self, chunk: bytes) -> Toledo8217Record:
        return parse(chunk)

    def weight(self, reply: Toledo8217Record) -> ScaleFrame | None:
        if reply.grams is not None:
            return ScaleFrame.weight(reply.grams, stable=True)
        status = reply.status or 0
        if status & OVER_CAPACITY:
            return ScaleFrame(WeightCondition.OVERLOAD, None, False)
        if status & UNDER_ZERO:
            return ScaleFrame(WeightCondition.UNDER_ZERO, None, False)
        if status & OUTSIDE_ZERO_RANGE and not status & MOTION:
            return ScaleFrame.no_value(fault="the scale is outside its zero capture range: "
                                             "empty the pan and zero it")
        return ScaleFrame.no_value()

    def outcome(self, action: Action, reply: Toledo8217Record) -> bool:
        if reply.status is None:
            return False  # a weight record (the scale's print key): not the answer
        refusing = {
            "zero": MOTION | OVER_CAPACITY | OUTSIDE_ZERO_RANGE,
            "tare": MOTION | OVER_CAPACITY | UNDER_ZERO,
            "clear_tare": 0,
        }[action]
        if reply.status & refusing:
            flags = ", ".join(reply.flags())
            raise DeviceError(f"the scale ignored {action.replace('_', ' ')} ({flags})",
                              code="command_failed")
        return True
