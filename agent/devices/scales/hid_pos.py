"""USB HID point-of-sale scales (HID usage page 0x8D "Scales"): Dymo M10/M25/S250,
Stamps.com, Mettler Toledo PS60 and the like, read through pyusb.

The scale sends a 6-byte Scale Data Report on its interrupt IN endpoint whenever the
reading changes (so silence is normal)::

    byte 0  report id, 3 (Scale Data Report)
    byte 1  status: 1 fault, 2 stable at zero, 3 in motion, 4 stable weight,
            5 under zero, 6 over weight, 7 needs calibration, 8 needs re-zeroing
    byte 2  unit: 1 mg, 2 g, 3 kg, 4 carat, 5 tael, 6 grain, 7 pennyweight,
            8 metric ton, 9 avoirdupois ton, 10 troy ounce, 11 ounce, 12 pound
    byte 3  data scaling: signed power of ten (Dymo in ounce mode: 0xFF, tenths)
    byte 4  weight, low byte
    byte 5  weight, high byte (unsigned 16-bit little-endian)

``03 04 0B FF 2B 00`` is a stable 4.3 oz; ``03 04 02 00 E8 03`` a stable 1000 g. Zero
and tare are buttons on the scale: there are no commands for them over USB.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from agent.devices.readings import WeightCondition
from agent.devices.scales import Framer, ScaleFrame, ScaleProtocol, shown, to_grams
from agent.errors import ProtocolError

if TYPE_CHECKING:
    from agent.devices.connection import Connection
    from agent.devices.transport import Transport

REPORT_ID = 3
REPORT_BYTES = 6

FAULT, STABLE_AT_ZERO, IN_MOTION, STABLE, UNDER_ZERO, OVER_WEIGHT, NEEDS_CALIBRATION, \
    NEEDS_REZEROING = range(1, 9)

UNITS: dict[int, tuple[str, float]] = {
    1: ("mg", 1), 2: ("g", 1), 3: ("kg", 1), 4: ("ct", 1), 6: ("gr", 1), 7: ("dwt", 1),
    8: ("t", 1), 9: ("lb", 2000), 10: ("ozt", 1), 11: ("oz", 1), 12: ("lb", 1),
}
"""HID unit code -> (unit, multiplier). Taels (5) are left out: the HID tables do not
say which tael (mainland 50 g, Hong Kong 37.8 g, Taiwan 37.5 g)."""

_FAULTS = {
    FAULT: "the scale reports a fault",
    NEEDS_CALIBRATION: "the scale needs calibration",
    NEEDS_REZEROING: "the scale needs re-zeroing: empty the pan and press zero",
}


@dataclass(frozen=True, slots=True)
class HidScaleReport:
    """The fields of one Scale Data Report."""

    status: int
    unit: int
    exponent: int
    raw_weight: int

    def grams(self) -> float:
        """The weight in grams.

        Raises:
            ProtocolError: the unit code is unknown or ambiguous.
        """
        if self.unit not in UNITS:
            raise ProtocolError(f"expected a HID weight unit ({', '.join(map(str, UNITS))}), "
                                f"got {self.unit}")
        unit, multiplier = UNITS[self.unit]
        return to_grams(self.raw_weight * multiplier * 10.0 ** self.exponent, unit)


def parse(report: bytes) -> HidScaleReport:
    """Parse one 6-byte Scale Data Report (longer packets: the first 6 bytes count).

    Raises:
        ProtocolError: not a Scale Data Report.
    """
    if len(report) < REPORT_BYTES or report[0] != REPORT_ID:
        raise ProtocolError(f"expected a {REPORT_BYTES}-byte HID scale report starting "
                            f"with report id {REPORT_ID}, got {shown(report)}")
    status, unit, scaling = report[1], report[2], report[3]
    if not FAULT <= status <= NEEDS_REZEROING:
        raise ProtocolError(f"expected a HID scale status 1 to 8, got {status} in "
                            f"{shown(report)}")
    exponent = scaling - 256 if scaling > 127 else scaling
    return HidScaleReport(status, unit, exponent, int.from_bytes(report[4:6], "little"))


def frame(report: HidScaleReport) -> ScaleFrame:
    """The weight frame a report stands for.

    Raises:
        ProtocolError: a weight in an unknown unit.
    """
    if report.status in _FAULTS:
        return ScaleFrame.no_value(fault=_FAULTS[report.status])
    if report.status == UNDER_ZERO:
        return ScaleFrame(WeightCondition.UNDER_ZERO, None, False)
    if report.status == OVER_WEIGHT:
        return ScaleFrame(WeightCondition.OVERLOAD, None, False)
    return ScaleFrame.weight(report.grams(), stable=report.status != IN_MOTION)


class ReportFramer(Framer):
    """Cuts the interrupt endpoint's bytes into 6-byte reports.

    Zero bytes between reports are padding (8-byte packets) and dropped; other bytes
    before a report id are junk, handed on so that the parser reports them.
    """

    def __init__(self) -> None:
        super().__init__(b"")
        self._pending = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        self._pending += data
        out: list[bytes] = []
        while self._pending:
            if self._pending[0] == 0:
                del self._pending[0]
                continue
            if self._pending[0] != REPORT_ID:
                cut = self._pending.find(REPORT_ID)
                cut = len(self._pending) if cut < 0 else cut
                out.append(bytes(self._pending[:cut]))
                del self._pending[:cut]
                continue
            if len(self._pending) < REPORT_BYTES:
                break
            out.append(bytes(self._pending[:REPORT_BYTES]))
            del self._pending[:REPORT_BYTES]
        return out


class HidPos(ScaleProtocol[HidScaleReport]):
    """HID POS scale reports from a USB interrupt endpoint; no commands."""

    name = "hid-pos"
    reports_on_change = True

    def framer(self) -> Framer:
        return ReportFramer()

    def parse(self, chunk: bytes) -> HidScaleReport:
        return parse(chunk)

    def weight(self, reply: HidScaleReport) -> ScaleFrame:
        return frame(reply)

    async def open(self, conn: Connection, timeout_s: float) -> Transport:
        from agent.devices.usb import open_usb  # pyusb is only loaded for USB scales

        return await open_usb(conn, endpoint="interrupt")
