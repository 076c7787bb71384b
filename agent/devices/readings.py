"""What devices tell the rest of the agent: scans, weight readings, state changes.

Drivers put these on the :class:`agent.bus.Bus`; jobs read them there and never touch a
port. All are frozen and JSON-safe through :meth:`as_dict`.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class DeviceState(StrEnum):
    """The life of a device as the agent sees it."""

    CONNECTING = "connecting"
    READY = "ready"
    FAULTED = "faulted"
    DISCONNECTED = "disconnected"


class WeightCondition(StrEnum):
    """What a scale frame says; only ``WEIGHT`` carries grams."""

    WEIGHT = "weight"
    OVERLOAD = "overload"
    UNDERLOAD = "underload"
    UNDER_ZERO = "under_zero"


class _JsonSafe:
    """``as_dict()`` for the dataclasses below: bytes as Latin-1 text, enums as values."""

    __slots__ = ()

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if isinstance(value, bytes):
                value = value.decode("latin-1")
            elif isinstance(value, StrEnum):
                value = value.value
            out[f.name] = value
        return out


@dataclass(frozen=True, slots=True)
class Scan(_JsonSafe):
    """One barcode read by a scanner or decoded from a camera frame.

    ``data`` is the barcode's content without the AIM prefix; GS1 element strings keep
    their GS (``\\x1d``) separators. ``symbology`` is the AIM identifier (``]C1``) when the
    reader sent one; ``symbology_name`` says it in words (``GS1-128``). ``gs1`` maps each
    Application Identifier to its value (``{"01": "09506000134352", "17": "201225"}``)
    and holds the helpers ``gtin`` (14 digits), ``sscc``, ``batch``, ``expiry``, ``serial``
    when present (``docs/scanners.md``).
    """

    device: str
    data: str
    symbology: str | None = None
    symbology_name: str | None = None
    gs1: dict[str, str] | None = None
    gs1_error: str | None = None
    raw: bytes = b""
    at: float = field(default_factory=time.time)
    monotonic: float = field(default_factory=time.monotonic)


@dataclass(frozen=True, slots=True)
class WeightReading(_JsonSafe):
    """One frame from a scale, normalised to grams.

    ``grams`` is ``None`` unless ``condition`` is ``WEIGHT``: an overloaded pan is never a
    weight. ``stable`` is the protocol's own stable flag; ``settled`` is set by the scale
    driver's stability rule (``docs/scales.md#the-stability-rule``) and starts a new
    parcel's reading.
    """

    device: str
    condition: WeightCondition
    grams: float | None
    stable: bool
    net: bool = False
    settled: bool = False
    raw: bytes = b""
    at: float = field(default_factory=time.time)
    monotonic: float = field(default_factory=time.monotonic)


@dataclass(frozen=True, slots=True)
class BadInput(_JsonSafe):
    """Input from a device that was thrown away, and why (the packer may need to rescan).

    ``code``: ``partial_scan`` (inter-character timeout), ``too_long``, ``protocol_error``
    (a frame that does not parse), ``unknown_key`` (a keycode the layout lacks).
    """

    device: str
    code: str
    message: str
    raw: bytes = b""
    at: float = field(default_factory=time.time)


@dataclass(frozen=True, slots=True)
class StateChange(_JsonSafe):
    """A device changed state; ``code`` and ``message`` explain a fault or disconnect."""

    device: str
    kind: str
    state: DeviceState
    code: str | None
    message: str | None
    at: float = field(default_factory=time.time)
