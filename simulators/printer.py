"""Printer simulators: a label printer (ZPL, TSPL, EPL) and an ESC/POS receipt printer.

Both are raw TCP peers like a printer's JetDirect port 9100 (one connection served at a
time; a second one waits, as on real print servers), store every byte and every job they
receive, and answer status requests from their state:

* :class:`LabelPrinterSim`: ZPL ``~HS`` (three ``<STX>..<ETX><CR><LF>`` lines) and
  ``~HQES``; TSPL ``<ESC>!?`` (one byte); EPL ``^ee`` (``00<CR><LF>``). Jobs are split
  (ZPL ``^XA``..``^XZ``, TSPL up to ``PRINT``, EPL up to ``P``) and labels are printed
  one every ``label_time_s`` while no fault stops the printer, so ``labels_remaining``
  counts down as on a real printer. The binary rows of TSPL ``BITMAP`` and EPL ``GW``
  are read by count, as the printers do (they may hold CR, LF or ``<ESC>!?``), and every
  picture received (``^GFA`` hex, compressed or Z64, ``BITMAP``, ``GW``) is decoded
  into :attr:`LabelPrinterSim.graphics`, so tests see what would print.
* :class:`EscposPrinterSim`: ``DLE EOT 1/2/3/4`` real-time status bytes.

Faults are switched on and off (``paper_out``, ``head_open``...), and so are the ways a
printer fails on the wire: ``no_reply`` (connected but silent), ``garbage`` (a reply that
does not parse), ``refuse`` (port closed: connection refused), ``drop`` (connections cut),
``power off`` (both). Tests import the classes; technicians and the demo run::

    python -m simulators.printer --language zpl --port 9100

and type lines on stdin: ``paper_out on``, ``head_open off``, ``no_reply on``,
``refuse on``, ``drop``, ``power off``, ``jobs``, ``status``, ``help``, ``quit`` (with
stdin closed, in the background, it serves until killed).
``--pty PATH`` serves the printer on a pseudo-terminal instead (a serial printer, or a
stand-in for ``/dev/usb/lp0``).
"""

from __future__ import annotations

import argparse
import base64
import binascii
import contextlib
import re
import select
import socket
import threading
import time
import zlib
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from simulators.console import serve_stdin
from simulators.ptyport import PtyPort

FAULTS = ("paper_out", "head_open", "ribbon_out", "paused", "paper_near_end",
          "cutter_error", "overheated", "paper_jam", "offline")
"""Conditions a simulator can be put in (each language reports those it can)."""
STOPPING = frozenset({"paper_out", "head_open", "ribbon_out", "paused", "cutter_error",
                      "overheated", "paper_jam", "offline"})
"""Conditions that stop printing."""
DEFAULT_GARBAGE = b"\xffGARBAGE\x00\r\n"


class PrinterSim:
    """State, switches and the TCP server shared by both simulators. Thread-safe."""

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host = host
        self.port = port
        self.faults: set[str] = set()
        self.no_reply = False
        self.garbage: bytes | None = None
        self.chunk_size: int | None = None
        """Send replies in pieces of this many bytes (TCP fragmentation)."""
        self.chunk_delay_s = 0.005
        self.raw = bytearray()
        """Every byte received, status requests included."""
        self.status_requests = 0
        self.connections = 0
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._listener: socket.socket | None = None
        self._conn: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()

    # ------------------------------------------------------------ protocol
    def _handle(self, data: bytes) -> bytes:  # pragma: no cover - overridden
        raise NotImplementedError

    def receive(self, data: bytes) -> bytes:
        """Bytes from the host, as if they came over the wire; returns the reply bytes."""
        with self._lock:
            self.raw += data
            reply = self._handle(data)
            self._changed.notify_all()
            return reply

    def _status_reply(self, reply: bytes) -> bytes:
        self.status_requests += 1
        if self.no_reply:
            return b""
        return self.garbage if self.garbage is not None else reply

    def set_fault(self, name: str, on: bool = True) -> None:
        """Switch a condition from :data:`FAULTS` on or off."""
        if name not in FAULTS:
            raise ValueError(f"unknown fault {name!r}; known: {', '.join(FAULTS)}")
        with self._lock:
            self._before_change()
            if on:
                self.faults.add(name)
            else:
                self.faults.discard(name)
            self._changed.notify_all()

    def _before_change(self) -> None:
        """Hook: settle time-dependent state before a fault changes."""

    def wait_for(self, predicate: Callable[[], bool], timeout_s: float = 5.0) -> bool:
        """Wait until ``predicate()`` (called under the lock) is true; ``False`` on timeout."""
        deadline = time.monotonic() + timeout_s
        with self._changed:
            while not predicate():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._changed.wait(min(remaining, 0.02))
            return True

    # ------------------------------------------------------------ TCP server
    def start(self) -> PrinterSim:
        """Listen (port 0 picks a free port, kept for :meth:`refuse` and power cycles)."""
        self._listen()
        self._thread = threading.Thread(target=self._serve, daemon=True,
                                        name=f"printer-sim-{self.port}")
        self._thread.start()
        return self

    def _listen(self) -> None:
        with self._lock:
            if self._listener is not None:
                return
            listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind((self.host, self.port))
            listener.listen(4)
            self.port = listener.getsockname()[1]
            self._listener = listener

    def refuse(self, on: bool = True) -> None:
        """Stop listening (connections are refused) or listen again on the same port."""
        if not on:
            self._listen()
            return
        with self._lock:
            listener, self._listener = self._listener, None
        if listener is not None:
            listener.close()

    def drop_connections(self) -> None:
        """Cut the connection being served (a reboot or a pulled cable)."""
        with self._lock:
            conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()

    def push(self, data: bytes) -> None:
        """Send bytes nobody asked for on the current connection (stale or stray output)."""
        with self._lock:
            conn = self._conn
        if conn is not None:
            conn.sendall(data)

    def power(self, on: bool) -> None:
        """Switch off (drop connections and refuse new ones) or on again."""
        if on:
            self.refuse(False)
        else:
            self.refuse(True)
            self.drop_connections()

    def stop(self) -> None:
        """Stop serving and release the port."""
        self._stopping.set()
        self.power(False)
        if self._thread is not None:
            self._thread.join(5)

    def _serve(self) -> None:
        while not self._stopping.is_set():
            listener = self._listener
            if listener is None:
                time.sleep(0.02)
                continue
            try:
                ready, _, _ = select.select([listener], [], [], 0.05)
                if not ready:
                    continue
                conn, _ = listener.accept()
            except (OSError, ValueError):
                continue  # the listener was closed by refuse()
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self._conn = conn
                self.connections += 1
                self._changed.notify_all()
            self._serve_connection(conn)

    def _serve_connection(self, conn: socket.socket) -> None:
        try:
            while not self._stopping.is_set() and self._conn is conn:
                ready, _, _ = select.select([conn], [], [], 0.05)
                if not ready:
                    continue
                data = conn.recv(65536)
                if not data:
                    break
                self._send(conn, self.receive(data))
        except (OSError, ValueError):
            pass
        finally:
            with self._lock:
                if self._conn is conn:
                    self._conn = None
            conn.close()

    def _send(self, conn: socket.socket, reply: bytes) -> None:
        size = self.chunk_size or len(reply) or 1
        for start in range(0, len(reply), size):
            conn.sendall(reply[start:start + size])
            if self.chunk_size:
                time.sleep(self.chunk_delay_s)

    # ------------------------------------------------------------ control lines
    def command(self, line: str) -> str:
        """Apply one control line (``paper_out on``, ``refuse on``, ``drop``...)."""
        words = line.split()
        if not words:
            return ""
        name, arg = words[0].lower(), (words[1].lower() if len(words) > 1 else "on")
        on = arg in ("on", "1", "yes", "true")
        if name == "cover_open":
            name = "head_open"
        if name in FAULTS:
            self.set_fault(name, on)
        elif name == "no_reply":
            self.no_reply = on
        elif name == "garbage":
            self.garbage = DEFAULT_GARBAGE if on else None
        elif name == "refuse":
            self.refuse(on)
        elif name == "drop":
            self.drop_connections()
        elif name == "power":
            self.power(on)
        elif name in ("status", "jobs"):
            return self.describe(name)
        else:
            return f"unknown command {line.strip()!r}; try help"
        return "ok"

    def describe(self, what: str) -> str:
        with self._lock:
            return (f"faults={sorted(self.faults)} no_reply={self.no_reply} "
                    f"garbage={self.garbage is not None} listening={self._listener is not None} "
                    f"connections={self.connections} status_requests={self.status_requests}")


class LabelPrinterSim(PrinterSim):
    """A ZPL, TSPL or EPL label printer.

    Args:
        language: ``zpl``, ``tspl`` or ``epl``.
        label_time_s: time to print one label (0: at once).
        silent_in_fault: ZPL: do not answer ``~HS`` while media or ribbon is out, the
            head is open or too hot (as many Zebra printers do); ``~HQES`` still answers.
        extended_status: ZPL: answer ``~HQES`` (older firmware does not).
    """

    def __init__(self, language: str = "zpl", *, host: str = "127.0.0.1", port: int = 0,
                 label_time_s: float = 0.0, silent_in_fault: bool = False,
                 extended_status: bool = True) -> None:
        if language not in ("zpl", "tspl", "epl"):
            raise ValueError(f"language must be zpl, tspl or epl, not {language!r}")
        super().__init__(host=host, port=port)
        self.language = language
        self.label_time_s = label_time_s
        self.silent_in_fault = silent_in_fault
        self.extended_status = extended_status
        self.jobs: list[bytes] = []
        """Every complete job, in order, as received (status requests removed)."""
        self.graphics: list[Graphic] = []
        """Every picture received (``^GF``, ``BITMAP``, ``GW``), decoded, in order."""
        self.graphic_errors: list[str] = []
        """Why a ``^GF`` picture did not decode (a real printer would print garbage)."""
        self.labels_printed = 0
        self.label_length_dots = 1218
        self._pending = bytearray()
        self._job_lines = bytearray()
        self._binary_left = 0
        self._binary: tuple[int, int, str] | None = None
        self._binary_rows = bytearray()
        self._batches: deque[int] = deque()
        self._current = 0
        self._clock = time.monotonic()

    # ------------------------------------------------------------ print engine
    def _advance(self) -> None:
        now = time.monotonic()
        if self.faults & STOPPING:
            self._clock = now
            return
        while True:
            if self._current == 0:
                if not self._batches:
                    self._clock = now
                    return
                self._current = self._batches.popleft()
            if self.label_time_s <= 0:
                self.labels_printed += self._current
                self._current = 0
                continue
            if now - self._clock < self.label_time_s:
                return
            self._clock += self.label_time_s
            self._current -= 1
            self.labels_printed += 1

    def _before_change(self) -> None:
        self._advance()

    def _job(self, job: bytes, labels: int) -> None:
        self._advance()
        self.jobs.append(job)
        if labels:
            if self._current == 0 and not self._batches:
                self._clock = time.monotonic()
            self._batches.append(labels)
            self._advance()

    @property
    def labels_remaining(self) -> int:
        """Labels of the batch being printed still to print."""
        with self._lock:
            self._advance()
            return self._current

    @property
    def formats_in_buffer(self) -> int:
        """Jobs received and not started yet."""
        with self._lock:
            self._advance()
            return len(self._batches)

    def printed(self) -> int:
        """Labels printed so far."""
        with self._lock:
            self._advance()
            return self.labels_printed

    # ------------------------------------------------------------ protocol
    def _handle(self, data: bytes) -> bytes:
        self._pending += data
        handler = {"zpl": self._zpl, "tspl": self._tspl, "epl": self._epl}[self.language]
        return handler()

    def _zpl(self) -> bytes:
        out = bytearray()
        buf = self._pending
        while True:
            tilde = min(((buf.find(cmd), cmd) for cmd in (b"~HS", b"~HQES")
                         if buf.find(cmd) >= 0), default=None)
            start = buf.find(b"^XA")
            if start >= 0 and (tilde is None or start < tilde[0]):
                end = buf.find(b"^XZ", start)
                if end >= 0:
                    job = bytes(buf[start:end + 3])
                    del buf[:end + 3]
                    self._job(job, _zpl_labels(job))
                    self._zpl_graphics(job)
                    continue
            if tilde is None:
                if start < 0:
                    del buf[:-4]  # keep what may be the start of a command
                return bytes(out)
            position, command = tilde
            del buf[position:position + len(command)]
            out += self._zpl_reply(command)

    def _zpl_reply(self, command: bytes) -> bytes:
        self._advance()
        if command == b"~HQES":
            if not self.extended_status:
                return b""
            return self._status_reply(self._hqes())
        if self.silent_in_fault and self.faults & {"paper_out", "ribbon_out", "head_open",
                                                   "overheated"}:
            self.status_requests += 1
            return b""
        return self._status_reply(self._hs())

    def _hs(self) -> bytes:
        f = self.faults

        def flag(name: str) -> int:
            return int(name in f)

        # 030: 9600 baud (a2..a0 = 110), 8 data bits (a3), 1 stop bit (a4), no parity.
        one = (f"030,{flag('paper_out')},{flag('paused')},{self.label_length_dots:04d},"
               f"{len(self._batches):03d},0,0,0,000,0,0,{flag('overheated')}")
        two = (f"001,0,{flag('head_open')},{flag('ribbon_out')},1,2,6,0,"
               f"{self._current:08d},1,000")
        three = "1234,0"
        return b"".join(b"\x02" + line.encode() + b"\x03\r\n" for line in (one, two, three))

    def _hqes(self) -> bytes:
        errors = sum(bit for name, bit in (("paper_out", 0x1), ("ribbon_out", 0x2),
                                           ("head_open", 0x4), ("cutter_error", 0x8),
                                           ("overheated", 0x10), ("paper_jam", 0x4000),
                                           ("paused", 0x10000)) if name in self.faults)
        warnings = 0x8 if "paper_near_end" in self.faults else 0
        return (b"\x02\r\n PRINTER STATUS\r\n"
                + f"   ERRORS:         {int(bool(errors))} 00000000 {errors:08X}\r\n".encode()
                + f"   WARNINGS:       {int(bool(warnings))} 00000000 {warnings:08X}\r\n"
                  .encode()
                + b"\x03\r\n")

    def _zpl_graphics(self, job: bytes) -> None:
        for match in _ZPL_GF.finditer(job):
            kind, total, per_row = match[1].upper(), int(match[3]), int(match[4])
            try:
                if kind != b"A":
                    raise ValueError(f"^GF{kind.decode()} is not simulated (only A)")
                rows = decode_zpl_graphic(match[5], total, per_row)
            except (ValueError, zlib.error) as exc:
                self.graphic_errors.append(f"{match[0][:40]!r}: {exc}")
                continue
            self.graphics.append(Graphic(per_row * 8, total // per_row, rows, "^GF"))

    def _binary_start(self, buf: bytearray, header: re.Match[bytes], command: str) -> None:
        """A ``BITMAP``/``GW`` header: its width (bytes) x height rows follow, raw."""
        width, height = int(header[1]), int(header[2])
        self._job_lines += header[0]
        del buf[:header.end()]  # the match reads buf: take its groups first
        self._binary, self._binary_left = (width, height, command), width * height
        self._binary_rows.clear()
        self._binary_take(buf)

    def _binary_take(self, buf: bytearray) -> None:
        chunk = bytes(buf[:self._binary_left])
        del buf[:len(chunk)]
        self._job_lines += chunk
        self._binary_rows += chunk
        self._binary_left -= len(chunk)
        if not self._binary_left and self._binary is not None:
            width, height, command = self._binary
            # TSPL BITMAP and EPL GW print a dot for a 0 bit: store 1 = black.
            rows = bytes(255 - byte for byte in self._binary_rows)
            self.graphics.append(Graphic(width * 8, height, rows, command))
            self._binary = None

    def _tspl(self) -> bytes:
        out = bytearray()
        buf = self._pending
        while True:
            if self._binary_left:  # BITMAP rows: any byte, even CR, LF or ESC ! ?
                if not buf:
                    return bytes(out)
                self._binary_take(buf)
                continue
            header = _TSPL_BITMAP.match(buf)
            if header is not None:
                self._binary_start(buf, header, "BITMAP")
                continue
            status, newline = buf.find(b"\x1b!?"), buf.find(b"\n")
            if status >= 0 and (newline < 0 or status < newline):
                del buf[status:status + 3]
                out += self._status_reply(bytes([self._tspl_status()]))
                continue
            if newline < 0:
                return bytes(out)
            line = bytes(buf[:newline + 1])
            del buf[:newline + 1]
            self._job_lines += line
            match = re.match(rb"\s*PRINT\s+(\d+)(?:\s*,\s*(\d+))?", line)
            if match:
                job = bytes(self._job_lines)
                self._job_lines.clear()
                self._job(job, int(match[1]) * int(match[2] or 1))

    def _tspl_status(self) -> int:
        self._advance()
        bits = (("head_open", 0x01), ("paper_jam", 0x02), ("paper_out", 0x04),
                ("ribbon_out", 0x08), ("paused", 0x10))
        byte = sum(bit for name, bit in bits if name in self.faults)
        if self._current or self._batches:
            byte |= 0x20
        return byte

    def _epl(self) -> bytes:
        out = bytearray()
        buf = self._pending
        while True:
            if self._binary_left:  # GW rows: any byte, even CR, LF or ^ee
                if not buf:
                    break
                self._binary_take(buf)
                continue
            header = _EPL_GW.match(buf)
            if header is not None:
                self._binary_start(buf, header, "GW")
                continue
            newline = buf.find(b"\n")
            if newline < 0:
                break
            line = bytes(buf[:newline + 1])
            del buf[:newline + 1]
            if line.strip() == b"^ee":
                out += self._status_reply(self._epl_status())
                continue
            self._job_lines += line
            match = re.fullmatch(rb"P(\d+)(?:,(\d+))?", line.strip())
            if match:
                job = bytes(self._job_lines)
                self._job_lines.clear()
                self._job(job, int(match[1]) * int(match[2] or 1))
        return bytes(out)

    def _epl_status(self) -> bytes:
        self._advance()
        codes = [code for name, code in (("paper_out", "07"), ("ribbon_out", "07"),
                                         ("head_open", "11"), ("overheated", "62"),
                                         ("cutter_error", "81"), ("paused", "92"))
                 if name in self.faults]
        return (",".join(dict.fromkeys(codes)) or "00").encode() + b"\r\n"

    def describe(self, what: str) -> str:
        with self._lock:
            self._advance()
            if what == "jobs":
                lines = [f"{len(self.jobs)} jobs, {self.labels_printed} labels printed, "
                         f"{self._current} remaining, {len(self._batches)} queued, "
                         f"{len(self.graphics)} pictures"]
                lines += [f"  {i}: {job[:120]!r}" for i, job in enumerate(self.jobs, 1)]
                return "\n".join(lines)
            return f"{self.language} {super().describe(what)}"


_TSPL_BITMAP = re.compile(rb"[ \t]*BITMAP[ \t]*\d+[ \t]*,[ \t]*\d+[ \t]*,[ \t]*(\d+)[ \t]*,"
                          rb"[ \t]*(\d+)[ \t]*,[ \t]*\d+[ \t]*,")
"""``BITMAP x,y,width_bytes,height,mode,`` at the start of a TSPL line (TSPL/TSPL2 manual)."""
_EPL_GW = re.compile(rb"GW\d+,\d+,(\d+),(\d+),")
"""``GWp1,p2,p3,p4,`` at the start of an EPL2 line: p3 bytes per row, p4 rows."""
_ZPL_GF = re.compile(rb"\^GF([A-Za-z]),(\d+),(\d+),(\d+),([^^~]*)")
"""``^GFa,b,c,d,DATA``; the data of type A runs to the next command."""


@dataclass(frozen=True)
class Graphic:
    """A picture a simulated printer received: ``height`` rows of ``width // 8`` bytes,
    leftmost dot in bit 7, 1 = black; ``command`` is ``^GF``, ``BITMAP`` or ``GW``."""

    width: int
    height: int
    rows: bytes
    command: str


def crc16_ccitt(data: bytes) -> int:
    """CRC-16/CCITT as ZPL's Z64 uses it: polynomial 0x1021, initial 0, bit by bit."""
    crc = 0
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
            crc &= 0xFFFF
    return crc


def decode_zpl_graphic(data: bytes, total: int, bytes_per_row: int) -> bytes:
    """The rows of a ``^GFA`` picture: plain hex, Zebra's compressed hex, ``:B64:`` or
    ``:Z64:`` (ZPL II Programming Guide: "Alternative Data Compression Scheme", "ZB64
    Encoding"). Raises ``ValueError`` for data a printer would not read as ``total`` bytes.
    """
    text = re.sub(rb"\s+", b"", data).decode("ascii")
    if text.startswith((":Z64:", ":B64:")):
        encoded, _, crc = text[5:].rpartition(":")
        if not re.fullmatch(r"[0-9A-Fa-f]{4}", crc) or int(crc, 16) != crc16_ccitt(
                encoded.encode("ascii")):
            raise ValueError(f"CRC {crc!r} does not match {crc16_ccitt(encoded.encode()):04X}")
        try:
            rows = base64.b64decode(encoded, validate=True)
        except binascii.Error as exc:
            raise ValueError(f"bad base64: {exc}") from exc
        if text.startswith(":Z64:"):
            rows = zlib.decompress(rows)
    else:
        rows = _zpl_hex_rows(text, bytes_per_row)
    if len(rows) != total:
        raise ValueError(f"{len(rows)} bytes of picture, ^GF says {total}")
    return rows


def _zpl_hex_rows(text: str, bytes_per_row: int) -> bytes:
    digits_per_row = 2 * bytes_per_row
    rows: list[str] = []
    row, count = "", 0
    for char in text:
        if "G" <= char <= "Y":
            count += ord(char) - ord("G") + 1
        elif "g" <= char <= "z":
            count += (ord(char) - ord("g") + 1) * 20
        elif char in "0123456789ABCDEFabcdef":
            row += char.upper() * (count or 1)
            count = 0
        elif char in ",!" and not count:
            row += ("0" if char == "," else "F") * (digits_per_row - len(row))
        elif char == ":" and not count and not row and rows:
            row = rows[-1]
        else:
            raise ValueError(f"unexpected {char!r} in ^GF data after {len(rows)} rows")
        if len(row) > digits_per_row:
            raise ValueError(f"row {len(rows) + 1} is longer than {bytes_per_row} bytes")
        if len(row) == digits_per_row:
            rows.append(row)
            row = ""
    if row or count:
        raise ValueError(f"^GF data ends inside row {len(rows) + 1}")
    return bytes.fromhex("".join(rows))


def _zpl_labels(job: bytes) -> int:
    """Labels one ZPL format prints: 0 for set-up only formats, else its ^PQ quantity."""
    if not re.search(rb"\^(FO|FT|FD|GB|GF|XG)", job):
        return 0
    quantity = re.search(rb"\^PQ(\d+)", job)
    return int(quantity[1]) if quantity else 1


class EscposPrinterSim(PrinterSim):
    """An ESC/POS receipt printer answering ``DLE EOT n`` from its state.

    ``head_open`` is the cover; ``offline`` is the printer's offline state, which cover
    open, paper end and errors also cause.
    """

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0) -> None:
        super().__init__(host=host, port=port)
        self.received = bytearray()
        """Every byte received except the DLE EOT n status requests."""
        self._pending = bytearray()

    def _handle(self, data: bytes) -> bytes:
        buf = self._pending + data
        self._pending = bytearray()
        out = bytearray()
        job = bytearray()
        i = 0
        while i < len(buf):
            if buf[i] == 0x10:
                rest = buf[i:i + 3]
                if bytes(rest) in (b"\x10", b"\x10\x04"):
                    self._pending = bytearray(rest)
                    break
                if rest[1] == 0x04 and rest[2] in (1, 2, 3, 4):
                    out += self._status_reply(bytes([self._dle_eot(rest[2])]))
                    i += 3
                    continue
            job.append(buf[i])
            i += 1
        self.received += job
        return bytes(out)

    def _dle_eot(self, n: int) -> int:
        f = self.faults
        errors = f & {"cutter_error", "overheated", "paper_jam"}
        if n == 1:
            offline = bool(f & {"offline", "head_open", "paper_out"} or errors)
            return 0x12 | (0x08 if offline else 0)
        if n == 2:
            return (0x12 | (0x04 if "head_open" in f else 0)
                    | (0x20 if "paper_out" in f else 0) | (0x40 if errors else 0))
        if n == 3:
            return (0x12 | (0x04 if "paper_jam" in f else 0)
                    | (0x08 if "cutter_error" in f else 0) | (0x40 if "overheated" in f else 0))
        return (0x12 | (0x0C if "paper_near_end" in f else 0)
                | (0x60 if "paper_out" in f else 0))

    def describe(self, what: str) -> str:
        with self._lock:
            if what == "jobs":
                return f"{len(self.received)} bytes received: {bytes(self.received[-200:])!r}"
            return f"escpos {super().describe(what)}"


class PtyLink:
    """Serve a simulator on a pseudo-terminal whose slave is reachable at ``link``."""

    def __init__(self, sim: PrinterSim, link: str | Path) -> None:
        self.sim = sim
        self.port = PtyPort(link)
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._relay, daemon=True, name="printer-pty")
        self._thread.start()

    def _relay(self) -> None:
        while not self._stopping.is_set():
            data = self.port.read(0.05)
            if data:
                reply = self.sim.receive(data)
                if reply:
                    self.port.write(reply)

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join(5)
        self.port.close()


HELP = """commands:
  FAULT on|off     FAULT is one of: """ + ", ".join(FAULTS) + """ (cover_open = head_open)
  no_reply on|off  stay connected but answer no status request
  garbage on|off   answer status requests with bytes that do not parse
  refuse on|off    stop/start listening (connection refused)
  drop             cut the current connection
  power off|on     switch off (drop and refuse) or on
  jobs | status    show received jobs / the state
  quit"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--language", choices=("zpl", "tspl", "epl", "escpos"), default="zpl")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9100, help="TCP port (0: any free port)")
    parser.add_argument("--pty", help="serve on a pseudo-terminal linked at this path instead")
    parser.add_argument("--label-time-s", type=float, default=0.2,
                        help="seconds to print one label")
    parser.add_argument("--silent-in-fault", action="store_true",
                        help="ZPL: no ~HS reply while media/ribbon out or head open")
    parser.add_argument("--no-extended-status", action="store_true",
                        help="ZPL: ignore ~HQES like older firmware")
    args = parser.parse_args()
    sim: PrinterSim
    if args.language == "escpos":
        sim = EscposPrinterSim(host=args.host, port=args.port)
    else:
        sim = LabelPrinterSim(args.language, host=args.host, port=args.port,
                              label_time_s=args.label_time_s,
                              silent_in_fault=args.silent_in_fault,
                              extended_status=not args.no_extended_status)
    link = None
    if args.pty:
        link = PtyLink(sim, args.pty)
        print(f"{args.language} printer simulator on {args.pty}", flush=True)
    else:
        sim.start()
        print(f"{args.language} printer simulator listening on {sim.host}:{sim.port}",
              flush=True)
    try:
        serve_stdin(sim.command, help_text=HELP)
    finally:
        if link is not None:
            link.stop()
        sim.stop()


if __name__ == "__main__":
    main()
