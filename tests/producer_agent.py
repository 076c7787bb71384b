"""Runs the real daemon plus a producer service that reports numbered events.

The producer stands in for the jobs that will report pack results: it enqueues
``--count`` events of kind ``test.tick`` through the production outbox, one every
``--interval`` seconds, and writes how many it stored to ``--progress`` so a test knows
what must arrive. Usage: ``python -m tests.producer_agent CONFIG --count N``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import select
import sys
import time
from pathlib import Path

from agent.config import load_config
from agent.daemon import Daemon
from agent.logs import setup_logging
from agent.outbox import Priority


class Producer:
    name = "test.producer"

    def __init__(self, count: int, interval_s: float, size: int, progress: Path | None,
                 priority: Priority) -> None:
        self.count, self.interval_s, self.size = count, interval_s, size
        self.progress, self.priority = progress, priority

    async def run(self, daemon: Daemon) -> None:
        for n in range(1, self.count + 1):
            await daemon.outbox.enqueue("test.tick", {"n": n, "pad": "x" * self.size},
                                        priority=self.priority)
            if self.progress is not None:
                self.progress.write_text(str(n))
            await asyncio.sleep(self.interval_s)
        await asyncio.Event().wait()


def relative_sleeps_under_libfaketime() -> None:
    """libfaketime 0.9.10 (Debian 12's) fails ``clock_nanosleep(CLOCK_MONOTONIC,
    TIMER_ABSTIME)`` with EINVAL when FAKETIME_DONT_FAKE_MONOTONIC is set, and CPython's
    ``time.sleep`` is exactly that call: under it paho's reconnect wait raises OSError. A real
    clock step breaks no sleep, so the clock test's agent sleeps with ``select`` (a relative
    timeout, which libfaketime passes through unchanged)."""
    if "faketime" in os.environ.get("LD_PRELOAD", ""):
        time.sleep = lambda seconds: select.select([], [], [], seconds) and None


def main() -> int:
    relative_sleeps_under_libfaketime()
    parser = argparse.ArgumentParser()
    parser.add_argument("config")
    parser.add_argument("--count", type=int, default=0)
    parser.add_argument("--interval", type=float, default=0.0)
    parser.add_argument("--size", type=int, default=0)
    parser.add_argument("--progress", type=Path)
    parser.add_argument("--priority", default="CRITICAL", choices=[p.name for p in Priority])
    args = parser.parse_args()
    config = load_config(args.config)
    setup_logging(config.log.level)
    services = []
    if args.count:
        services.append(Producer(args.count, args.interval, args.size, args.progress,
                                 Priority[args.priority]))
    return asyncio.run(Daemon(config, services).run())


if __name__ == "__main__":
    sys.exit(main())
