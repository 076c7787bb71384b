"""The clock watch (agent/clock.py) on its own, with the wall and boot clocks handed in.

tests/test_faults.py jumps a running agent's wall clock with libfaketime; these pin the
thresholds: what counts as a jump, when retention pauses, how long the alarm shows, and
what the pause keeps (with the real store).
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path

from agent.bus import Bus
from agent.clock import ALARM_S, JUMP_S, PAUSE_RETENTION_S, ClockWatch
from agent.commands import CommandChannel
from agent.config import PrintJobsConfig
from agent.devices.manager import DeviceManager
from agent.jobs import print_store
from agent.jobs.print_model import JobState, PrintJob
from agent.jobs.print_service import PrintService
from agent.outbox import Outbox
from agent.store import Store
from agent.topics import Topics
from tests.test_pack_report import _no_report


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


def test_command_ids_and_print_jobs_are_kept_while_retention_is_paused(tmp_path: Path) -> None:
    """Both were stored before the clock stepped two hours ahead, so by the new time they are
    past a one-hour retention. While paused, neither is forgotten: a command delivered again
    is still known as done, and a print.submit repeated with the job's id is still a
    duplicate (not a second label). The agent's restart ends the pause."""
    before_jump = time.time() - 7200

    async def scenario() -> None:
        store = Store(tmp_path / "agent.db")
        await store.open()
        outbox = Outbox(store, site="s", bench="b", event_topic=lambda kind: kind,
                        max_events=100, max_bytes=1 << 20)
        await outbox.load()
        clocks = Clocks()
        watch, _ = clocks.watch()
        channel = CommandChannel(store, outbox, Topics("benchagent/v1", "s", "b"),
                                 max_bytes=1 << 16, retention_s=3600, ack=lambda _m: None,
                                 clock=watch)
        printing = PrintService(PrintJobsConfig(keep_data_s=0, retention_s=3600),
                                DeviceManager({}, Bus(), _no_report), store, outbox, channel,
                                watch)

        def old_records(db: sqlite3.Connection) -> None:
            db.execute("INSERT INTO commands (id, name, received_at, args, reply_topic, state, "
                       "reply) VALUES ('cmd-1', 'status.get', ?, '{}', 'r', 'done', '{}')",
                       (before_jump,))
            print_store.insert(db, PrintJob(
                id="SO-1-waybill", printer="label", document="zpl", copies=1, size=9,
                labels=1, summary="", received_at=before_jump, state=JobState.PRINTED,
                updated_at=before_jump), b"^XA^FO^XZ")

        def remembered(db: sqlite3.Connection) -> tuple[bool, bool, bool]:
            command = db.execute("SELECT 1 FROM commands WHERE id = 'cmd-1'").fetchone()
            return (command is not None, print_store.get(db, "SO-1-waybill") is not None,
                    print_store.has_data(db, "SO-1-waybill"))

        await store.run(old_records)
        clocks.run(1.0)
        clocks.wall += 7200
        assert watch.check() and watch.retention_paused
        await channel._prune()
        assert await printing.prune(time.time()) == 0
        assert await store.run(remembered) == (True, True, True)

        watch.retention_paused = False  # what a restart does
        await channel._prune()
        assert await printing.prune(time.time()) == 1
        assert await store.run(remembered) == (False, False, False)
        await store.close()

    asyncio.run(scenario())
