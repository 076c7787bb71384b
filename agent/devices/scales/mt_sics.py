"""Mettler Toledo MT-SICS (Standard Interface Command Set), level 0 and 1.

ASCII commands and replies, each line ended by CR LF, 9600 8N1 by default (balances
can be set to Xon/Xoff handshake: add ``?xonxoff=1``). A reply repeats the command's
name, then a status letter, then the data, separated by spaces; the weight is right
aligned in a 10-character field followed by the unit: ``S S      100.00 g``.

============  ===================================================================
request       replies
============  ===================================================================
``SI``        ``S S <w> <unit>`` stable, ``S D <w> <unit>`` dynamic (moving),
              ``S I`` busy, ``S +`` overload, ``S -`` underload
``S``         as ``SI`` but waits for stability (not used: it blocks the poll)
``Z``         ``Z A`` zeroed, ``Z I`` busy or not stable in time, ``Z +``/``Z -``
              outside the zero range
``T``         ``T S <tare> <unit>`` tared, ``T I``, ``T +``, ``T -`` refused
``TAC``       ``TAC A`` tare cleared, ``TAC I`` refused
any           ``ES`` unknown command, ``ET`` transmission error (parity, overrun),
              ``EL`` logical error (cannot be executed now)
============  ===================================================================

``Z`` and ``T`` wait until the pan is stable, up to the balance's own stability
timeout, so their reply can take seconds.
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

WEIGH = b"SI\r\n"
"""Send the weight immediately, stable or not."""
ZERO = b"Z\r\n"
TARE = b"T\r\n"
CLEAR_TARE = b"TAC\r\n"
LINE = SerialLine(9600, 8, "N", 1)

_REPLY = re.compile(r"(?P<command>S|T|Z|TAC|I\d{1,2}) +(?P<status>[A-Z+-])(?: +(?P<data>.*))?")
_VALUE = re.compile(r"(?P<value>[-+]?\s*[\d.]+) +(?P<unit>[A-Za-z]{1,4})")
_WITH_VALUE = {("S", "S"), ("S", "D"), ("T", "S")}
_STATUSES = {"S": "SDI+-", "T": "SI+-", "Z": "AI+-", "TAC": "AI"}
_ERRORS = {
    "ES": "syntax error: the balance does not know the command",
    "ET": "transmission error: the balance received a garbled command",
    "EL": "logical error: the balance cannot execute the command now",
}


@dataclass(frozen=True, slots=True)
class MtSicsReply:
    """One MT-SICS reply line. ``grams`` for ``S S``/``S D``/``T S``; ``text`` for I-replies."""

    command: str
    status: str = ""
    grams: float | None = None
    text: str | None = None


def parse(line: bytes) -> MtSicsReply:
    """Parse one reply line (with or without its CR LF).

    Raises:
        ProtocolError: not an MT-SICS reply of a known command.
    """
    body = line.rstrip(b"\r\n")
    try:
        text = body.decode("ascii")
    except UnicodeDecodeError:
        raise ProtocolError(f"expected an ASCII MT-SICS reply, got {shown(line)}") from None
    if text in _ERRORS:
        return MtSicsReply(text)
    match = _REPLY.fullmatch(text)
    if match is None or not text.isprintable():
        raise ProtocolError(f"expected an MT-SICS reply such as 'S S 100.00 g', 'Z A' or "
                            f"'ES', got {shown(line)}")
    command, status, data = match["command"], match["status"], (match["data"] or "").strip()
    if command.startswith("I"):
        return MtSicsReply(command, status, text=data.strip('"'))
    if status not in _STATUSES[command]:
        raise ProtocolError(f"expected status {' '.join(_STATUSES[command])} after "
                            f"{command!r}, got {status!r} in {shown(line)}")
    if (command, status) not in _WITH_VALUE:
        if data:
            raise ProtocolError(f"expected nothing after {command} {status}, got {data!r}")
        return MtSicsReply(command, status)
    value = _VALUE.fullmatch(data)
    if value is None:
        raise ProtocolError(f"expected '<weight> <unit>' after {command} {status}, "
                            f"got {data!r}")
    grams = to_grams(parse_number(value["value"], "the weight"), value["unit"])
    return MtSicsReply(command, status, grams)


class MtSics(ScaleProtocol[MtSicsReply]):
    """MT-SICS polled with ``SI``; zero ``Z``, tare ``T``, clear tare ``TAC``.

    The weight replies do not say gross or net: frames are marked net after a tare
    through this driver, until the tare is cleared or the balance is zeroed.
    """

    name = "mt-sics"
    line = LINE
    weigh_request = WEIGH
    requests: ClassVar[dict[Action, bytes]] = {
        "zero": ZERO, "tare": TARE, "clear_tare": CLEAR_TARE}

    def __init__(self) -> None:
        self.tared = False

    def framer(self) -> Framer:
        return Framer(b"\r\n")

    def parse(self, chunk: bytes) -> MtSicsReply:
        return parse(chunk)

    def weight(self, reply: MtSicsReply) -> ScaleFrame | None:
        if reply.command in _ERRORS:
            raise ProtocolError(f"expected a weight reply to SI, got {reply.command} "
                                f"({_ERRORS[reply.command]})")
        if reply.command != "S":
            return None
        if reply.status == "+":
            return ScaleFrame(WeightCondition.OVERLOAD, None, False)
        if reply.status == "-":
            return ScaleFrame(WeightCondition.UNDERLOAD, None, False)
        if reply.grams is None:  # S I: busy (taring, zeroing, adjusting)
            return ScaleFrame.no_value()
        return ScaleFrame.weight(reply.grams, stable=reply.status == "S", net=self.tared)

    def outcome(self, action: Action, reply: MtSicsReply) -> bool:
        command = {"zero": "Z", "tare": "T", "clear_tare": "TAC"}[action]
        if reply.command in _ERRORS:
            code = "unsupported" if reply.command == "ES" else "command_failed"
            raise DeviceError(f"{command}: {reply.command}, {_ERRORS[reply.command]}",
                              code=code)
        if reply.command != command:
            return False
        if reply.status in ("A", "S"):
            self.tared = action == "tare"
            return True
        why = {
            "I": "busy, or the pan did not settle in time",
            "+": "the weight is above the range allowed for it",
            "-": "the weight is below the range allowed for it",
        }[reply.status]
        raise DeviceError(f"the balance refused {command} ({command} {reply.status}): {why}",
                          code="command_failed")
