"""The ``[devices.NAME]`` config sections, one model per device kind.

Part of the config loader (:mod:`agent.config`): validated once at startup, frozen, and
an unknown key or a bad value names the device and the key. ``kind`` picks the model.
"""

from __future__ import annotations

import functools
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from agent.devices.connection import Connection, parse_connection

DEVICE_KINDS = ("scanner", "scale", "printer", "camera", "signal")
SCALE_PROTOCOLS = ("mt-sics", "toledo-8217", "scp-01", "continuous", "hid-pos")
PRINTER_LANGUAGES = ("zpl", "tspl", "epl", "escpos")
PYZBAR_CANNOT_READ = frozenset({"datamatrix", "aztec", "pdf417"})
"""Formats zbar has no reader for (zxing-cpp reads them all)."""
BARCODE_FORMATS = (
    "ean13", "ean8", "upca", "upce", "code128", "code39", "code93", "codabar", "itf",
    "databar", "databar_expanded", "qrcode", "datamatrix", "pdf417", "aztec",
)


class DeviceSettingsBase(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    connection: str
    """Where the device is; see ``docs/devices.md`` for the forms."""
    role: str | None = None
    """What the bench uses it for (``label``, ``slip``, ``packing``...); jobs find it by role."""
    enabled: bool = True
    reconnect_min_s: Annotated[float, Field(gt=0, le=60)] = 1.0
    reconnect_max_s: Annotated[float, Field(gt=0, le=600)] = 30.0

    @field_validator("connection")
    @classmethod
    def _connection_parses(cls, value: str) -> str:
        parse_connection(cls._kind(), value)
        return value

    @classmethod
    def _kind(cls) -> str:
        kind: str = cls.model_fields["kind"].default
        return kind

    @model_validator(mode="after")
    def _reconnect_bounds(self) -> DeviceSettingsBase:
        if self.reconnect_max_s < self.reconnect_min_s:
            raise ValueError("reconnect_max_s must be at least reconnect_min_s")
        return self

    @property
    def kind_name(self) -> str:
        return self._kind()

    @functools.cached_property
    def conn(self) -> Connection:
        """The parsed ``connection`` (parsed once; the field validator checked it)."""
        return parse_connection(self._kind(), self.connection)


class ScannerSettings(DeviceSettingsBase):
    """A barcode scanner: keyboard wedge (``evdev://``) or serial/USB-CDC (``serial://``)."""

    kind: Literal["scanner"] = "scanner"
    layout: Literal["us", "de", "fr"] = "us"
    """Keyboard layout the wedge scanner is set to (its "country"): picks the keymap."""
    terminator: Literal["enter", "tab", "either"] = "either"
    """Key that ends a wedge scan."""
    framing: Literal["cr", "lf", "crlf", "any"] = "any"
    """Line ending of a serial scanner; ``any`` takes CR, LF or CRLF."""
    inter_char_timeout_ms: Annotated[int, Field(ge=5, le=5000)] = 100
    """A partial scan with no key or byte for this long is discarded (and reported)."""
    grab: bool = True
    """Grab the input device exclusively so scans never reach a console or login prompt."""
    aim_ids: bool = True
    """The scanner prefixes AIM symbology identifiers (``]C1``): strip and report them."""
    max_length: Annotated[int, Field(ge=8, le=65536)] = 4096


class ScaleSettings(DeviceSettingsBase):
    """A scale: serial protocol by name, or a USB HID POS scale (``usb://VID:PID``)."""

    kind: Literal["scale"] = "scale"
    protocol: Literal["mt-sics", "toledo-8217", "scp-01", "continuous", "hid-pos"]
    poll_interval_ms: Annotated[int, Field(ge=20, le=10_000)] = 200
    """How often a polled scale is asked for its weight."""
    reply_timeout_ms: Annotated[int, Field(ge=50, le=30_000)] = 1000
    stable_count: Annotated[int, Field(ge=1, le=100)] = 3
    """Stability rule: this many stable readings in a row, equal within ``stable_band_g``."""
    stable_band_g: Annotated[float, Field(ge=0, le=10_000)] = 0.0
    empty_below_g: Annotated[float, Field(ge=0, le=100_000)] = 5.0
    """A reading below this means the pan is empty: the next settled weight is a new parcel."""

    @model_validator(mode="after")
    def _protocol_matches_connection(self) -> ScaleSettings:
        usb = self.conn.scheme == "usb"
        if usb != (self.protocol == "hid-pos"):
            raise ValueError("protocol hid-pos goes with a usb://VID:PID connection, and "
                             "the serial protocols with serial:// or tcp://")
        return self


class PrinterSettings(DeviceSettingsBase):
    """A label or receipt printer; ``language`` is what it speaks."""

    kind: Literal["printer"] = "printer"
    language: Literal["zpl", "tspl", "epl", "escpos"]
    status_interval_s: Annotated[float, Field(ge=0.2, le=3600)] = 10.0
    """How often the printer is asked for its status while idle."""
    status_timeout_ms: Annotated[int, Field(ge=50, le=30_000)] = 2000
    """A printer that does not answer its status request in time is ``status_unknown``."""
    dpi: Literal[152, 200, 203, 300, 600] = 203
    width_mm: Annotated[float, Field(gt=0, le=300)] = 100.0
    escpos_profile: str | None = None
    """python-escpos capability profile (``TM-T88V``...); none means the generic one."""
    text_encoding: Literal["auto", "gb18030"] = "auto"
    """ESC/POS text (packing slips): ``auto`` encodes each character in a code page of
    the printer's profile (python-escpos); ``gb18030`` switches the printer to Chinese
    mode (``FS &``) and sends GB18030 bytes, for printers with a Chinese font."""
    zpl_graphics: Literal["acs", "z64", "hex"] = "acs"
    """ZPL ``^GF`` encoding of rendered images: ``acs`` (ASCII hex with Zebra's run-length
    compression, every ZPL printer), ``z64`` (deflate + base64, firmware x.14 and later)
    or ``hex`` (plain ASCII hex, largest)."""

    @property
    def width_dots(self) -> int:
        """The printable width in dots, a whole number of bytes (8 dots each)."""
        return int(self.width_mm * self.dpi / 25.4) // 8 * 8

    @field_validator("escpos_profile")
    @classmethod
    def _known_profile(cls, value: str | None) -> str | None:
        # Imported here: python-escpos loads its capability database on import.
        from agent.devices.printers.escpos import check_profile

        check_profile(value)
        return value


class CameraSettings(DeviceSettingsBase):
    """A camera: any source OpenCV opens."""

    kind: Literal["camera"] = "camera"
    decoder: Literal["zxing", "pyzbar"] = "zxing"
    formats: tuple[str, ...] = ("ean13", "ean8", "upca", "upce", "code128", "qrcode",
                                "datamatrix")
    width: Annotated[int, Field(ge=16, le=8192)] | None = None
    height: Annotated[int, Field(ge=16, le=8192)] | None = None
    fps: Annotated[float, Field(gt=0, le=240)] | None = None
    jpeg_quality: Annotated[int, Field(ge=10, le=100)] = 90
    frame_timeout_ms: Annotated[int, Field(ge=100, le=60_000)] = 5000
    """No new frame for this long means the camera is gone."""

    @model_validator(mode="after")
    def _decoder_reads_formats(self) -> CameraSettings:
        # Without `formats` in the file, pyzbar reads the default formats it can.
        if self.decoder == "pyzbar" and "formats" in self.model_fields_set:
            missing = sorted(PYZBAR_CANNOT_READ.intersection(self.formats))
            if missing:
                raise ValueError(f"decoder pyzbar cannot read {', '.join(missing)}; use "
                                 f'decoder = "zxing" or remove them from formats')
        return self

    @field_validator("formats", mode="before")
    @classmethod
    def _formats(cls, value: object) -> object:
        if isinstance(value, list):
            value = tuple(value)
        if isinstance(value, tuple):
            unknown = [v for v in value if v not in BARCODE_FORMATS]
            if unknown:
                raise ValueError(f"unknown barcode formats {unknown}; allowed: "
                                 f"{', '.join(BARCODE_FORMATS)}")
            if not value:
                raise ValueError("formats must name at least one barcode format")
        return value


def _hex_bytes(value: str) -> bytes:
    try:
        return bytes.fromhex(value)
    except ValueError as exc:
        raise ValueError(f"{value!r} is not hex bytes such as \"A0 01 01 A2\"") from exc


class SignalPattern(BaseModel):
    """What one signal sends: ``on`` bytes, then after ``ms`` the ``off`` bytes."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    on: str
    """Hex bytes that switch the light/buzzer on (``"A0 01 01 A2"``: LCUS relay 1 on)."""
    off: str = ""
    """Hex bytes sent after ``ms`` (none: the device times out by itself)."""
    ms: Annotated[int, Field(ge=0, le=60_000)] = 600

    @field_validator("on", "off")
    @classmethod
    def _hex(cls, value: str) -> str:
        _hex_bytes(value)
        return value

    @property
    def on_bytes(self) -> bytes:
        return _hex_bytes(self.on)

    @property
    def off_bytes(self) -> bytes:
        return _hex_bytes(self.off)


class SignalSettings(DeviceSettingsBase):
    """A stack light or buzzer behind a serial or network relay (driven by the pack job).

    Each signal the packing flow gives (``good``, ``bad``, ``intercept``) is a pattern of
    bytes the relay board understands; a signal without a pattern is not shown.
    """

    kind: Literal["signal"] = "signal"
    good: SignalPattern | None = None
    bad: SignalPattern | None = None
    intercept: SignalPattern | None = None


DeviceSettings = Annotated[
    ScannerSettings | ScaleSettings | PrinterSettings | CameraSettings | SignalSettings,
    Field(discriminator="kind"),
]
SETTINGS_BY_KIND: dict[str, type[DeviceSettingsBase]] = {
    "scanner": ScannerSettings,
    "scale": ScaleSettings,
    "printer": PrinterSettings,
    "camera": CameraSettings,
    "signal": SignalSettings,
}
