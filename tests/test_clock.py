"""The clock watch (agent/clock.py) on its own, with the wall and boot clocks handed in.

tests/test_faults.py jumps a running agent's wall clock with libfaketime; these pin the
thresholds: what counts as a jump, when retention pauses, how long the alarm shows.
"""

from __future__ import annotations

from agent.clock import ALARM_S, JUMP_S, PAUSE_RETENTION_S, ClockWatch


class Clocks:
    """A wall clock that can be stepped and a boot clock that only runs."""

    def __init__(self) -> None:
        self.wall = 1_790_000_000.0
        self.boot = 5_000.0

    def run(self, seconds: float) -> None:
        self.wall += seconds
        self.boot += seconds

    def watch(self) -> tuple[ClockWatch, list[float]]:
        watch = ClockWatch(wall=lambda: self.wall, mono=lambda: self.boot)
        heard: list[float] = []
        watch.listeners.append(heard.append)
        return watch, heard


def test_drift_and_a_late_check_are_not_jumps() -> None:
    clocks = Clocks()
    watch, heard = clocks.watch()
    clocks.run(1.0)
    clocks.wall += JUMP_S * 0.9  # NTP slewing, or a step too small to matter
    assert watch.check() is None
    clocks.run(3600.0)  # a suspended bench or a starved loop: both clocks moved together
    assert watch.check() is None
    assert heard == [] and watch.alarms() == [] and not watch.retention_paused


def test_a_forward_jump_of_an_hour_pauses_retention_and_keeps_its_alarm() -> None:
    clocks = Clocks()
    watch, heard = clocks.watch()
    clocks.run(1.0)
    clocks.wall += PAUSE_RETENTION_S + 5
    jump = watch.check()
    assert jump is not None and abs(jump - (PAUSE_RETENTION_S + 5)) < 1e-6
    assert heard == [jump] and watch.retention_paused
    clocks.run(ALARM_S * 10)
    [alarm] = watch.alarms()
    assert alarm["code"] == "clock_jumped"
    assert "+3605 s" in alarm["message"] and "paused until the agent restarts" in \
        alarm["message"]
    assert watch.check() is None, "one jump is reported once"


def test_a_small_or_backward_jump_is_shown_for_a_while_and_pauses_nothing() -> None:
    clocks = Clocks()
    watch, heard = clocks.watch()
    clocks.run(1.0)
    clocks.wall -= 300.0  # an operator's date -s into the past
    assert watch.check() == -300.0
    assert not watch.retention_paused
    [alarm] = watch.alarms()
    assert "-300 s" in alarm["message"] and "paused" not in alarm["message"]
    clocks.run(ALARM_S + 1)
    assert watch.alarms() == [], "a small jump's alarm goes away after ALARM_S"
    clocks.run(1.0)
    clocks.wall += 600.0  # forward, but less than an hour
    assert watch.check() == 600.0 and not watch.retention_paused
    assert heard == [-300.0, 600.0]
