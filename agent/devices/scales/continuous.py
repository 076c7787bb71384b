"""Continuous-output scales (CAS and A&D style): the scale sends a line on its own, often
10 to 20 times a second, and takes no commands.

9600 8N1 by default; lines end with CR LF (a lone CR or LF is accepted too). A line is a
status header, an optional gross/net header, the signed weight and the unit::

    ST,GS,+  1.234kg      CAS: stable, gross
    US,NT,-  0.020kg      CAS: unstable, net
    ST,+00123.45  g       A&D: stable (no gross/net header)
    OL,GS,+  9.999kg      over the range (a "-" sign: under the range)

First header: ``ST`` stable, ``US`` unstable, ``OL`` out of range. Second header:
``GS``/``GW`` gross, ``NT``/``NW`` net. A&D counting (``QT``) and other headers are
not weights and are reported as bad frames. Units: kg, g, lb, oz, t.
"""

from __future__ import annotations

import re

from agent.devices.readings import WeightCondition
from agent.devices.scales import Framer, ScaleFrame, ScaleProtocol, parse_number, shown, to_grams
from agent.devices.transport import SerialLine
from agent.errors import ProtocolError

LINE = SerialLine(9600, 8, "N", 1)

_LINE = re.compile(
    r"\s*(?P<state>ST|US|OL)\s*,\s*(?:(?P<mode>GS|GW|NT|NW)\s*,\s*)?"
    r"(?P<value>[-+]?\s*[\d.]+)?\s*(?P<unit>kg|g|lb|oz|t)?\s*", re.IGNORECASE)


def parse(line: bytes) -> ScaleFrame:
    """Parse one line (with or without its CR LF) into a weight frame.

    Raises:
        ProtocolError: not a continuous-output weight line.
    """
    try:
        text = line.rstrip(b"\r\n").decode("ascii")
    except UnicodeDecodeError:
        raise ProtocolError(f"expected an ASCII weight line such as 'ST,GS,+  1.234kg', "
                            f"got {shown(line)}") from None
    match = _LINE.fullmatch(text)
    if match is None or not text.isprintable():
        raise ProtocolError(f"expected a weight line such as 'ST,GS,+  1.234kg', "
                            f"got {shown(line)}")
    state = match["state"].upper()
    net = (match["mode"] or "").upper() in ("NT", "NW")
    value = match["value"]
    if state == "OL":
        negative = value is not None and value.lstrip().startswith("-")
        condition = WeightCondition.UNDERLOAD if negative else WeightCondition.OVERLOAD
        return ScaleFrame(condition, None, False, net)
    if value is None or match["unit"] is None:
        raise ProtocolError(f"expected a signed weight and a unit after {state}, "
                            f"got {shown(line)}")
    grams = to_grams(parse_number(value, "the weight"), match["unit"])
    return ScaleFrame.weight(grams, stable=state == "ST", net=net)


class Continuous(ScaleProtocol[ScaleFrame]):
    """A scale that streams weight lines; no zero or tare over the line."""

    name = "continuous"
    line = LINE

    def framer(self) -> Framer:
        return Framer(b"\r\n")

    def parse(self, chunk: bytes) -> ScaleFrame:
        return parse(chunk)

    def weight(self, reply: ScaleFrame) -> ScaleFrame:
        return reply
