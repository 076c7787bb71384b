"""Noticing the wall clock jump: an NTP step at boot, an operator's ``date -s``, a bench
whose real-time-clock battery died and came up in 2000.

Durations in the agent run on the monotonic clock, which never jumps; wall time is what
records carry. The packing flow's timers count on the monotonic time handed to it with
each event, so a jump does not reach them. It matters to age-based retention (photos,
evidence, orders, command ids, print jobs), which a forward jump of an hour or more pauses
until the agent restarts (a clock set years ahead must not delete the evidence it would
call "old", nor forget the ids that keep a repeated command or print job from running
twice; the disk quota still applies). The
status carries a ``clock_jumped`` alarm. The comparison uses ``CLOCK_BOOTTIME``, which
counts a suspend, so waking a suspended bench is not a jump.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from agent.outbox import iso_time

log = logging.getLogger("agent.clock")

JUMP_S = 2.0
"""A difference this large between wall and monotonic time elapsed is a jump, not drift
(NTP slews a drifting clock at most 0.5 ms a second)."""
PAUSE_RETENTION_S = 3600.0
"""A forward jump at least this large pauses age-based retention until the restart."""
ALARM_S = 600.0
"""A smaller jump is shown as an alarm for this long."""


class ClockWatch:
    """Compares the wall clock with the monotonic clock once a second."""

    name = "clock"

    def __init__(self, wall: Callable[[], float] = time.time,
                 mono: Callable[[], float] = lambda: time.clock_gettime(time.CLOCK_BOOTTIME)
                 ) -> None:
        self._wall, self._mono = wall, mono
        self._last = (wall(), mono())
        self.listeners: list[Callable[[float], None]] = []
        """Called with the jump in seconds (positive: forward) right after it is seen."""
        self.last_jump: tuple[float, float] | None = None
        """``(when, seconds)`` of the latest jump (wall time after it)."""
        self.retention_paused = False

    def check(self) -> float | None:
        """The jump since the last check (seconds, forward positive), or ``None``."""
        wall, mono = self._wall(), self._mono()
        jump = (wall - self._last[0]) - (mono - self._last[1])
        self._last = (wall, mono)
        if abs(jump) < JUMP_S:
            return None
        self.last_jump = (wall, jump)
        if jump >= PAUSE_RETENTION_S:
            self.retention_paused = True
        log.warning("the wall clock jumped %+.1f s (now %s); timers keep their durations%s",
                    jump, time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(wall)),
                    "; age-based retention is paused until the agent restarts"
                    if self.retention_paused else "")
        for listener in self.listeners:
            listener(jump)
        return jump

    async def run(self, _daemon: object = None) -> None:
        while True:
            await asyncio.sleep(1.0)
            self.check()

    def alarms(self) -> list[dict[str, Any]]:
        if self.last_jump is None:
            return []
        at, jump = self.last_jump
        if not self.retention_paused and self._wall() - at > ALARM_S:
            return []
        pause = ("; age-based retention (photos, evidence, orders, command ids, print jobs) "
                 "is paused until the agent restarts" if self.retention_paused else "")
        return [{"code": "clock_jumped", "since": iso_time(at),
                 "message": f"the wall clock jumped {jump:+.0f} s: check the time "
                            f"synchronisation (NTP){pause}"}]
