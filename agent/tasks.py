"""Fire-and-forget asyncio tasks that are kept alive and whose failures are logged."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Coroutine
from typing import Any

log = logging.getLogger("agent.tasks")

_background: set[asyncio.Task[Any]] = set()
_prefix = ""


def set_prefix(prefix: str) -> None:
    """Name every task after its bench (``bench[site/id].what``); the daemon sets it."""
    global _prefix
    _prefix = prefix


def task_name(what: str) -> str:
    return f"{_prefix}.{what}" if _prefix else what


def spawn(coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
    """Start ``coro`` as a named task; keep a reference so it is not garbage-collected."""
    task = asyncio.get_running_loop().create_task(coro, name=task_name(name))
    _background.add(task)
    task.add_done_callback(_finished)
    return task


def _finished(task: asyncio.Task[Any]) -> None:
    _background.discard(task)
    if not task.cancelled() and task.exception() is not None:
        log.error("background task %s failed", task.get_name(), exc_info=task.exception())


def jittered_backoff_s(attempt: int, min_s: float, max_s: float) -> float:
    """Equal-jitter exponential backoff for retry ``attempt`` (1, 2, ...).

    Half the ceiling is kept, the other half is random, so a fleet of benches that lost
    the same broker or a bench with several unplugged devices do not retry in step.
    """
    ceiling = min(max_s, min_s * 2 ** min(max(attempt, 1) - 1, 20))
    return random.uniform(ceiling / 2, ceiling)
