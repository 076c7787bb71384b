"""Scale simulators: a pan with a scriptable weight behind each serial protocol, on a pty.

Each simulator answers the real request bytes with the real reply frames of its
protocol (see ``agent/devices/scales/``) on a :class:`PtyPort`, from its own thread:

* :class:`MtSicsSimulator` (``SI``, ``S``, ``Z``, ``T``, ``TAC``, ``I2``, ``I4``, ``@``),
* :class:`Toledo8217Simulator` (``W``, ``Z``, ``T``, ``C``),
* :class:`Scp01Simulator` (``W<CR>``, ``S<CR>``, ``Z<CR>``),
* :class:`ContinuousSimulator` (CAS ``ST,GS,+  1.234kg`` or A&D ``ST,+0001.234 kg`` lines).

Script one from Python (``sim.set_weight(1250)``, ``sim.set_motion(True)``,
``sim.overload()``, ``sim.inject(b"junk")``, ``sim.unplug()``...) or run one as a process
and type the same commands on stdin::

    python -m simulators.scale --protocol mt-sics --link /tmp/scale0
    weight 1250        motion on|off      overload | underload | under-zero | normal
    tare 300 | tare off                   garbage [HEX]       silent on|off
    unplug | replug    status             help | quit

USB HID POS scales have no pty: :func:`hid_report`, :func:`hid_weight_report` and
:func:`hid_report_for` build their 6-byte reports for tests and the USB backend.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import queue
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

from simulators.console import serve_stdin
from simulators.ptyport import PtyPort

Condition = Literal["normal", "overload", "underload", "under_zero"]
UNDER_ZERO_SHOWN_G = -20.0
"""What the display shows when told to be under zero without a negative weight."""
GRAMS_PER = {"g": 1.0, "kg": 1000.0, "lb": 453.59237, "oz": 28.349523125}


@dataclass
class Pan:
    """The simulated weighing: load, zero offset, tare, motion and forced conditions."""

    load_g: float = 0.0
    zero_g: float = 0.0
    tare_g: float = 0.0
    motion: bool = False
    condition: Condition = "normal"
    capacity_g: float = 30_000.0
    zero_range_g: float = 600.0  # 2 % of capacity, a usual zero-key range

    @property
    def gross_g(self) -> float:
        return self.load_g - self.zero_g

    @property
    def shown_g(self) -> float:
        """The displayed weight: net while a tare is set."""
        if self.condition == "under_zero":
            return min(self.gross_g - self.tare_g, UNDER_ZERO_SHOWN_G)
        return self.gross_g - self.tare_g

    @property
    def state(self) -> Condition:
        if self.condition != "normal":
            return self.condition
        if self.gross_g > self.capacity_g:
            return "overload"
        return "under_zero" if self.shown_g < 0 else "normal"

    def zero(self) -> str:
        """Zero as the key does: ``ok``, ``motion``, ``over`` or ``under`` (out of range)."""
        if self.motion:
            return "motion"
        if self.state in ("overload", "underload") or self.gross_g > self.zero_range_g:
            return "over"
        if self.gross_g < -self.zero_range_g:
            return "under"
        self.zero_g, self.tare_g = self.load_g, 0.0
        if self.condition == "under_zero":
            self.condition = "normal"
        return "ok"

    def tare(self) -> str:
        """Tare: ``ok``, ``motion``, ``over`` or ``under`` (nothing to tare)."""
        if self.motion:
            return "motion"
        if self.state in ("overload", "underload"):
            return "over"
        if self.gross_g <= 0 or self.state == "under_zero":
            return "under"
        self.tare_g = self.gross_g
        return "ok"


class ScaleSimulator:
    """One simulated serial scale on a pty; subclasses speak the protocols."""

    protocol: ClassVar[str]
    request_end: ClassVar[bytes] = b"\r"
    """What ends a request (the 8217 has single-character requests: no terminator)."""

    def __init__(self, link: str | Path, *, unit: str = "g") -> None:
        self.port = PtyPort(link)
        self.path = self.port.path
        self.pan = Pan()
        self.unit = unit
        self.silent = False
        self.requests: list[bytes] = []
        """Every request received, exact bytes, in order (tests assert on it)."""
        self._lock = threading.Lock()
        self._ops: queue.Queue[tuple[Callable[[], None], threading.Event]] = queue.Queue()
        self._buffer = bytearray()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True,
                                        name=f"sim-scale-{self.protocol}")

    # ------------------------------------------------------------ lifecycle
    def start(self) -> ScaleSimulator:
        self._nonblocking()
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)
        self.port.close()

    def __enter__(self) -> ScaleSimulator:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------ scripting
    def set_weight(self, grams: float) -> None:
        """Put ``grams`` (gross, before zero offset) on the pan; clears forced conditions."""
        with self._lock:
            self.pan.load_g = grams
            self.pan.condition = "normal"

    def set_motion(self, moving: bool) -> None:
        with self._lock:
            self.pan.motion = moving

    def overload(self) -> None:
        self._force("overload")

    def underload(self) -> None:
        self._force("underload")

    def under_zero(self) -> None:
        self._force("under_zero")

    def normal(self) -> None:
        self._force("normal")

    def set_tare(self, grams: float) -> None:
        with self._lock:
            self.pan.tare_g = grams

    def set_silent(self, silent: bool) -> None:
        """Stop answering (a scale switched to another mode, a broken TX wire)."""
        with self._lock:
            self.silent = silent

    def inject(self, data: bytes) -> None:
        """Send ``data`` now, as line noise or a confused scale would."""
        self._on_thread(lambda: self._send(data))

    def unplug(self) -> None:
        """Pull the cable: the driver sees EIO and the link disappears."""
        self._on_thread(self.port.unplug)

    def replug(self) -> None:
        """Plug it back: the same link, a new pty."""
        def replug() -> None:
            self._buffer.clear()
            self.port.replug()
            self._nonblocking()
        self._on_thread(replug)

    def requests_seen(self, request: bytes) -> int:
        """How many times ``request`` arrived."""
        with self._lock:
            return self.requests.count(request)

    def _force(self, condition: Condition) -> None:
        with self._lock:
            self.pan.condition = condition

    def _on_thread(self, op: Callable[[], None]) -> None:
        """Run ``op`` on the simulator thread (the only one touching the pty) and wait."""
        if not self._thread.is_alive():
            op()
            return
        done = threading.Event()
        self._ops.put((op, done))
        done.wait(5)

    # ------------------------------------------------------------ the thread
    def _run(self) -> None:
        while not self._stop.is_set():
            while not self._ops.empty():
                op, done = self._ops.get_nowait()
                op()
                done.set()
            started = time.monotonic()
            data = self.port.read(0.01)
            if data:
                self._buffer += data
                for request in self._split():
                    with self._lock:
                        self.requests.append(request)
                        reply = None if self.silent else self.answer(request)
                    if reply:
                        self._send(reply)
            elif time.monotonic() - started < 0.005:
                time.sleep(0.01)  # unplugged, or the driver has not opened the port
            self.tick()

    def _nonblocking(self) -> None:
        # A pty master select()s readable while no one holds the slave (EIO); if the
        # driver opens the slave right then, a blocking read would wait for its bytes.
        if self.port.master >= 0:
            os.set_blocking(self.port.master, False)

    def _send(self, data: bytes) -> None:
        # A full pty buffer means nobody reads the port: the bytes are lost, as on a line.
        with contextlib.suppress(BlockingIOError):
            self.port.write(data)

    def _split(self) -> list[bytes]:
        """Complete requests out of the input buffer (CR LF or CR terminated lines)."""
        out: list[bytes] = []
        while (end := self._buffer.find(self.request_end)) >= 0:
            cut = end + len(self.request_end)
            out.append(bytes(self._buffer[:cut]))
            del self._buffer[:cut]
        return out

    def answer(self, request: bytes) -> bytes | None:
        """The reply to ``request`` (called with the state locked)."""
        return None

    def tick(self) -> None:
        """Called about every 10 ms on the simulator thread (streaming scales send here)."""

    def describe(self) -> str:
        with self._lock:
            pan = self.pan
            return (f"{self.protocol} on {self.path}: load {pan.load_g:g} g, zero "
                    f"{pan.zero_g:g} g, tare {pan.tare_g:g} g, shown {pan.shown_g:g} g, "
                    f"{pan.state}, {'moving' if pan.motion else 'still'}"
                    f"{', silent' if self.silent else ''}"
                    f"{'' if self.port.plugged else ', unplugged'}")

    def _in_unit(self, grams: float) -> float:
        return grams / GRAMS_PER[self.unit]


class MtSicsSimulator(ScaleSimulator):
    """A Mettler Toledo balance speaking MT-SICS (replies end with CR LF)."""

    protocol = "mt-sics"
    request_end = b"\n"

    def _value(self, grams: float) -> str:
        decimals = 2 if self.unit == "g" else 3
        return f"{self._in_unit(grams):>10.{decimals}f} {self.unit}"

    def answer(self, request: bytes) -> bytes:
        command = request.strip().decode("ascii", "replace")
        pan = self.pan
        if command in ("SI", "S"):
            state = pan.state
            if state == "overload":
                line = "S +"
            elif state == "underload":
                line = "S -"
            elif pan.motion:
                line = "S I" if command == "S" else f"S D {self._value(pan.shown_g)}"
            else:
                line = f"S S {self._value(pan.shown_g)}"
        elif command == "Z":
            line = {"ok": "Z A", "motion": "Z I", "over": "Z +", "under": "Z -"}[pan.zero()]
        elif command == "T":
            result = pan.tare()
            line = f"T S {self._value(pan.tare_g)}" if result == "ok" else \
                {"motion": "T I", "over": "T +", "under": "T -"}[result]
        elif command == "TAC":
            pan.tare_g = 0.0
            line = "TAC A"
        elif command == "I2":
            line = f'I2 A "bench-agent MT-SICS simulator {pan.capacity_g:g} g"'
        elif command in ("I4", "@"):
            pan.tare_g = 0.0 if command == "@" else pan.tare_g
            line = 'I4 A "SIM0001"'
        else:
            line = "ES"
        return line.encode("ascii") + b"\r\n"


class Toledo8217Simulator(ScaleSimulator):
    """A POS scale speaking the Mettler Toledo 8217 protocol (single-character requests)."""

    protocol = "toledo-8217"

    def __init__(self, link: str | Path, *, unit: str = "kg", with_unit: bool = False) -> None:
        super().__init__(link, unit=unit)
        self.with_unit = with_unit

    def _split(self) -> list[bytes]:
        out = [bytes((b,)) for b in self._buffer]
        self._buffer.clear()
        return out

    def _status(self, extra: int = 0) -> bytes:
        pan, bits = self.pan, 0x60 | extra
        state = pan.state
        bits |= 0x01 if pan.motion else 0
        bits |= 0x02 if state in ("overload", "underload") else 0
        bits |= 0x04 if state == "under_zero" else 0
        bits |= 0x10 if state == "normal" and pan.shown_g == 0 else 0
        return b"\x02?" + bytes((bits,)) + b"\r"

    def answer(self, request: bytes) -> bytes:
        pan = self.pan
        if request == b"W":
            if pan.motion or pan.state != "normal":
                return self._status()
            value = f"{self._in_unit(pan.shown_g):06.3f}"
            return b"\x02" + value.encode() + (self.unit.encode() if self.with_unit else b"") \
                + b"\r"
        if request == b"Z":
            return self._status(0x08 if pan.zero() in ("over", "under") else 0)
        if request == b"T":
            pan.tare()
            return self._status()
        if request == b"C":
            pan.tare_g = 0.0
            return self._status()
        return self._status()


class Scp01Simulator(ScaleSimulator):
    """A Weigh-Tronix / NCI scale speaking SCP-01 (CR-terminated requests)."""

    protocol = "scp-01"

    def __init__(self, link: str | Path, *, unit: str = "kg") -> None:
        super().__init__(link, unit=unit)

    def _status(self) -> bytes:
        pan = self.pan
        state = pan.state
        first = 0x30 | (0x01 if pan.motion else 0) | (
            0x02 if state == "normal" and pan.shown_g == 0 else 0)
        second = 0x30 | (0x01 if state == "underload" else 0) | (
            0x02 if state == "overload" else 0)
        return bytes((first, second))

    def answer(self, request: bytes) -> bytes:
        command = request.strip()
        pan = self.pan
        if command == b"W":
            state = pan.state
            if state == "overload":
                line = "^^^^^^^" + self.unit
            elif state == "underload":
                line = "_______" + self.unit
            else:
                line = f"{self._in_unit(pan.shown_g):7.{3 if self.unit == 'kg' else 2}f}" \
                       f"{self.unit}"
            return b"\n" + line.encode() + b"\r\n" + self._status() + b"\r\x03"
        if command == b"Z":
            pan.zero()
            return b"\n" + self._status() + b"\r\x03"
        if command == b"S":
            return b"\n" + self._status() + b"\r\x03"
        return b"\n?\r\x03"


class ContinuousSimulator(ScaleSimulator):
    """A scale that streams weight lines every ``interval_s`` (CAS or A&D style)."""

    protocol = "continuous"

    def __init__(self, link: str | Path, *, unit: str = "kg", interval_s: float = 0.05,
                 style: Literal["cas", "and"] = "cas") -> None:
        super().__init__(link, unit=unit)
        self.interval_s = interval_s
        self.style = style
        self._next_s = 0.0

    def line(self) -> bytes:
        """The line the scale sends now (called with the state locked)."""
        pan = self.pan
        state = pan.state
        header = "OL" if state in ("overload", "underload") else "US" if pan.motion else "ST"
        value = self._in_unit(pan.shown_g)
        if state == "overload":
            value = 99.999
        elif state == "underload":
            value = -99.999
        sign = "-" if value < 0 else "+"
        if self.style == "and":
            return f"{header},{sign}{abs(value):08.3f} {self.unit:>2}\r\n".encode()
        mode = "NT" if pan.tare_g else "GS"
        return f"{header},{mode},{sign}{abs(value):7.3f}{self.unit}\r\n".encode()

    def tick(self) -> None:
        now = time.monotonic()
        if now < self._next_s:
            return
        self._next_s = now + self.interval_s
        with self._lock:
            data = None if self.silent else self.line()
        if data:
            self._send(data)


SIMULATORS: dict[str, type[ScaleSimulator]] = {
    "mt-sics": MtSicsSimulator,
    "toledo-8217": Toledo8217Simulator,
    "scp-01": Scp01Simulator,
    "continuous": ContinuousSimulator,
}

# ---------------------------------------------------------------- HID POS reports
HID_UNITS = {"mg": 1, "g": 2, "kg": 3, "ct": 4, "ozt": 10, "oz": 11, "lb": 12}
HID_STATUS = {"fault": 1, "zero": 2, "motion": 3, "stable": 4, "under_zero": 5,
              "overload": 6, "calibrate": 7, "rezero": 8}


def hid_report(status: int, unit: int, exponent: int, raw_weight: int) -> bytes:
    """One 6-byte Scale Data Report: id 3, status, unit, signed exponent, weight LE."""
    return bytes((3, status, unit, exponent & 0xFF)) + raw_weight.to_bytes(2, "little")


def hid_weight_report(grams: float, *, stable: bool = True, unit: str = "g") -> bytes:
    """The report a Dymo-like scale sends for ``grams`` shown in ``unit``.

    Grams and kilograms go as whole grams (exponent 0), ounces in tenths (exponent -1,
    as the Dymo M10 does), pounds in hundredths (exponent -2).
    """
    exponent = {"g": 0, "kg": 0, "oz": -1, "lb": -2}[unit]
    code = HID_UNITS["g" if unit == "kg" else unit]
    raw = round(grams / GRAMS_PER["g" if unit == "kg" else unit] / 10.0 ** exponent)
    status = HID_STATUS["motion"] if not stable else HID_STATUS["zero"] if raw == 0 \
        else HID_STATUS["stable"]
    return hid_report(status, code, exponent, raw)


def hid_report_for(pan: Pan, unit: str = "g") -> bytes:
    """The report for the pan's current state (for the USB backend of a demo)."""
    state = pan.state
    if state == "overload":
        return hid_report(HID_STATUS["overload"], HID_UNITS["g"], 0, 0)
    if state in ("under_zero", "underload"):
        return hid_report(HID_STATUS["under_zero"], HID_UNITS["g"], 0, 0)
    return hid_weight_report(pan.shown_g, stable=not pan.motion, unit=unit)


# ---------------------------------------------------------------- process
_HELP = """commands:
  weight GRAMS          put GRAMS on the pan (gross)
  motion on|off         the pan moves / settles
  overload | underload | under-zero | normal
  tare GRAMS | tare off set or clear the tare
  garbage [HEX]         send junk bytes (default: 15 fe 23 40 0d 0a)
  silent on|off         stop / resume answering
  unplug | replug       pull / plug the cable
  status | help | quit"""


def control(sim: ScaleSimulator, line: str) -> str:
    """Apply one stdin command to ``sim``; the answer to print."""
    words = line.split()
    if not words:
        return ""
    command, args = words[0].lower(), words[1:]
    on = bool(args) and args[0].lower() in ("on", "1", "yes", "true")
    try:
        if command == "weight":
            sim.set_weight(float(args[0]))
        elif command == "motion":
            sim.set_motion(on)
        elif command in ("overload", "underload", "under-zero", "under_zero", "normal"):
            {"overload": sim.overload, "underload": sim.underload, "normal": sim.normal,
             "under-zero": sim.under_zero, "under_zero": sim.under_zero}[command]()
        elif command == "tare":
            sim.set_tare(0.0 if args[0].lower() in ("off", "clear") else float(args[0]))
        elif command == "garbage":
            sim.inject(bytes.fromhex("".join(args)) if args else b"\x15\xfe#@\r\n")
        elif command == "silent":
            sim.set_silent(on)
        elif command == "unplug":
            sim.unplug()
        elif command == "replug":
            sim.replug()
        elif command == "status":
            pass
        elif command == "help":
            return _HELP
        else:
            return f"unknown command {command!r}; type help"
    except (IndexError, ValueError) as exc:
        return f"bad arguments for {command}: {exc}"
    return sim.describe()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m simulators.scale",
        description="A scale on a pseudo-terminal; control it with commands on stdin.",
        epilog=_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--protocol", choices=sorted(SIMULATORS), required=True)
    parser.add_argument("--link", required=True, help="symlink to create for the port, "
                        "e.g. /tmp/scale0 (use it as serial:///tmp/scale0)")
    parser.add_argument("--unit", choices=sorted(GRAMS_PER), help="unit the scale shows")
    parser.add_argument("--weight", type=float, default=0.0, help="initial load in grams")
    parser.add_argument("--interval-ms", type=int, default=100,
                        help="continuous: milliseconds between lines")
    args = parser.parse_args(argv)
    cls = SIMULATORS[args.protocol]
    options: dict[str, Any] = {}
    if args.unit:
        options["unit"] = args.unit
    if cls is ContinuousSimulator:
        options["interval_s"] = args.interval_ms / 1000
    sim = cls(args.link, **options)
    sim.set_weight(args.weight)
    sim.start()
    print(sim.describe(), flush=True)
    try:
        serve_stdin(lambda line: control(sim, line))
    finally:
        sim.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
