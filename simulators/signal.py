"""A USB-serial relay board (CH340 "LCUS" type) on a pseudo-terminal, driving a stack light.

Frames are four bytes: ``A0``, the relay number (1..8), ``01`` on / ``00`` off, and the
checksum (the low byte of the sum of the first three): ``A0 01 01 A2`` switches relay 1
on. The board answers nothing. The simulator keeps every byte, every decoded frame with
its time, and each relay's state, so tests see what the packer would have seen.
Garbage (a bad start byte or checksum) is kept in ``bad_frames`` and skipped byte by
byte, as the boards resynchronise.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path

from simulators.ptyport import PtyPort


@dataclass(frozen=True)
class RelayFrame:
    relay: int
    on: bool
    at: float


def lcus_frame(relay: int, on: bool) -> bytes:
    """The four bytes that switch ``relay`` on or off."""
    head = bytes([0xA0, relay, 1 if on else 0])
    return head + bytes([sum(head) & 0xFF])


class RelayBoardSim:
    """An LCUS relay board reached through ``link`` (a pty)."""

    def __init__(self, link: str | Path, relays: int = 4) -> None:
        self.port = PtyPort(link)
        self.raw = bytearray()
        self.frames: list[RelayFrame] = []
        self.bad_frames = 0
        self.relays = [False] * (relays + 1)  # index 0 unused: relays count from 1
        self._pending = bytearray()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="relay-sim", daemon=True)

    @property
    def path(self) -> Path:
        return self.port.path

    def start(self) -> RelayBoardSim:
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            data = self.port.read(0.05)
            if not data:
                time.sleep(0.005)  # nobody has the port open yet: the pty reports hang-up
            else:
                with self._lock:
                    self.raw += data
                    self._pending += data
                    self._decode()

    def _decode(self) -> None:
        buf = self._pending
        while len(buf) >= 4:
            if buf[0] != 0xA0 or sum(buf[:3]) & 0xFF != buf[3] or not 1 <= buf[1] < len(
                    self.relays) or buf[2] > 1:
                self.bad_frames += 1
                del buf[:1]
                continue
            relay, on = buf[1], buf[2] == 1
            self.relays[relay] = on
            self.frames.append(RelayFrame(relay, on, time.monotonic()))
            del buf[:4]

    def switched(self) -> list[tuple[int, bool]]:
        """Every (relay, on) switch so far, in order."""
        with self._lock:
            return [(f.relay, f.on) for f in self.frames]

    def wait_for(self, count: int, timeout_s: float = 5.0) -> bool:
        """Wait until at least ``count`` frames arrived."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self._lock:
                if len(self.frames) >= count:
                    return True
            time.sleep(0.01)
        return False

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.port.close()
