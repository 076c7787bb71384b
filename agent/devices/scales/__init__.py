"""Scale protocols: one module each, pure (bytes in, meaning out), no I/O.

Each protocol module holds its request bytes, its framing, its serial line defaults and
a parser that turns one frame into the protocol's reply or raises :class:`ProtocolError`
saying what was expected and what arrived. :class:`ScaleProtocol` is what the scale
driver (:mod:`agent.devices.scale`) needs from a protocol; :class:`ScaleFrame` is a
weight frame normalised to grams, before the driver's stability rule.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Generic, Literal, TypeVar

from agent.devices.readings import WeightCondition
from agent.devices.transport import SerialLine, Transport, open_transport
from agent.errors import DeviceError, ProtocolError

if TYPE_CHECKING:
    from agent.devices.connection import Connection

Action = Literal["zero", "tare", "clear_tare"]
"""Commands a scale may accept besides weighing."""

R = TypeVar("R")

GRAMS_PER_UNIT: dict[str, float] = {
    "mg": 0.001,
    "g": 1.0,
    "kg": 1000.0,
    "t": 1_000_000.0,
    "ct": 0.2,  # metric carat
    "lb": 453.59237,
    "oz": 28.349523125,
    "ozt": 31.1034768,  # troy ounce
    "dwt": 1.55517384,  # pennyweight
    "gr": 0.06479891,  # grain
}
"""Exact factors (the pound is defined as 0.45359237 kg)."""

MAX_FRAME_BYTES = 128
"""Longest scale frame accepted; longer runs without a terminator are reported as bad."""


def to_grams(value: float, unit: str) -> float:
    """``value`` in ``unit`` (case-insensitive: ``kg``, ``LB``...) as grams, to 1 mg.

    Raises:
        ProtocolError: the unit is not a mass unit this agent knows.
    """
    factor = GRAMS_PER_UNIT.get(unit.lower())
    if factor is None:
        raise ProtocolError(f"expected a mass unit ({', '.join(GRAMS_PER_UNIT)}), "
                            f"got {unit!r}")
    grams = round(value * factor, 3)
    return 0.0 if grams == 0 else grams  # no "-0.0 g"


_NUMBER = re.compile(r"[-+]?\s*(\d+\.?\d*|\.\d+)")


def parse_number(text: str, what: str) -> float:
    """A decimal number as scales print it (``-  1.250``, ``0012.5``), spaces after the sign.

    Raises:
        ProtocolError: naming ``what`` and the text that arrived.
    """
    if not _NUMBER.fullmatch(text) or len(text) > 20:
        raise ProtocolError(f"expected {what} as a decimal number, got {text!r}")
    return float(text.replace(" ", ""))


def shown(raw: bytes, limit: int = 40) -> str:
    """``raw`` for an error message: a ``repr`` cut to ``limit`` bytes."""
    return repr(raw[:limit]) + ("..." if len(raw) > limit else "")


@dataclass(frozen=True, slots=True)
class ScaleFrame:
    """One weight frame in grams, as the protocol said it.

    ``grams`` is ``None`` unless ``condition`` is ``WEIGHT``; a ``WEIGHT`` frame without
    grams means the scale is weighing but sent no value (in motion, busy). ``fault`` is a
    device fault the frame reports (RAM error, calibration needed), else ``None``.
    """

    condition: WeightCondition
    grams: float | None
    stable: bool
    net: bool = False
    fault: str | None = None

    @classmethod
    def weight(cls, grams: float, *, stable: bool, net: bool = False,
               fault: str | None = None) -> ScaleFrame:
        """A weight; a negative one is ``UNDER_ZERO`` (never a parcel's weight)."""
        if grams < 0:
            return cls(WeightCondition.UNDER_ZERO, None, stable, net, fault)
        return cls(WeightCondition.WEIGHT, grams, stable, net, fault)

    @classmethod
    def no_value(cls, *, fault: str | None = None) -> ScaleFrame:
        """Weighing, but no value this time (moving, busy or faulted)."""
        return cls(WeightCondition.WEIGHT, None, False, fault=fault)


class Framer:
    """Cuts a byte stream into frames and junk, both handed on to the parser.

    A frame runs from ``start`` (if the protocol has a start byte) to one of ``ends``.
    Bytes outside a frame come out as their own chunk so that the parser reports them;
    a frame longer than ``max_bytes`` comes out as it is. Empty lines are skipped.
    """

    def __init__(self, ends: bytes, start: bytes | None = None, *,
                 restart: bool = False, max_bytes: int = MAX_FRAME_BYTES) -> None:
        self._ends = ends
        self._start = start
        self._restart = restart
        self._max = max_bytes
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        """The frames and junk chunks completed by ``data``, in arrival order."""
        out: list[bytes] = []
        start = self._start
        for byte in data:
            one = bytes((byte,))
            if start is not None and one == start and (
                    self.restarts() or not self._buffer.startswith(start)):
                self._flush(out)  # junk, or a frame cut short by a new start byte
                self._buffer += one
                continue
            self._buffer += one
            if one in self._ends or len(self._buffer) >= self._max:
                self._flush(out)
        if start is not None and self._buffer and not self._buffer.startswith(start):
            self._flush(out)  # junk outside a frame is reported at once
        return out

    def restarts(self) -> bool:
        """Whether a start byte inside a frame begins a new frame (the old one is junk)."""
        return self._restart

    def _flush(self, out: list[bytes]) -> None:
        chunk = bytes(self._buffer)
        self._buffer.clear()
        if chunk.strip(b"\r\n"):
            out.append(chunk)


class ScaleProtocol(ABC, Generic[R]):
    """What the scale driver needs from a protocol. ``R`` is the protocol's reply type."""

    name: ClassVar[str]
    line: ClassVar[SerialLine] = SerialLine()
    """Serial line defaults; ``?baud=...`` in the connection string overrides them."""
    weigh_request: ClassVar[bytes | None] = None
    """Bytes that ask for one weight; ``None`` when the scale sends on its own."""
    requests: ClassVar[dict[Action, bytes]] = {}
    """Bytes of the commands the protocol has (zero, tare, clear tare)."""
    reports_on_change: ClassVar[bool] = False
    """The scale sends only when something changes, so silence is not a fault."""

    @abstractmethod
    def framer(self) -> Framer:
        """A fresh framer for one connection."""

    @abstractmethod
    def parse(self, chunk: bytes) -> R:
        """One frame as the protocol's reply.

        Raises:
            ProtocolError: the bytes are not a frame of this protocol.
        """

    @abstractmethod
    def weight(self, reply: R) -> ScaleFrame | None:
        """The weight frame ``reply`` carries, or ``None`` when it is no weight reply.

        Raises:
            ProtocolError: ``reply`` is an error reply where a weight was asked for.
        """

    def outcome(self, action: Action, reply: R) -> bool:
        """Whether ``reply`` answers ``action``: ``True`` done, ``False`` not its answer.

        Raises:
            DeviceError: ``command_failed`` when the scale refused, ``unsupported`` when
                it does not know the command.
        """
        return False

    def request(self, action: Action) -> bytes:
        """The bytes of ``action``.

        Raises:
            DeviceError: ``unsupported`` when the protocol has no such command.
        """
        try:
            return self.requests[action]
        except KeyError:
            raise DeviceError(f"the {self.name} protocol has no {action.replace('_', ' ')} "
                              "command", code="unsupported") from None

    async def open(self, conn: Connection, timeout_s: float) -> Transport:
        """Open the byte transport (serial or TCP with this protocol's line defaults)."""
        return await open_transport(conn, line=self.line, connect_timeout_s=timeout_s)
